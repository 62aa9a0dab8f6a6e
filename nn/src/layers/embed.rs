//! Patch embedding (a strided Conv2d) and learned position embeddings, as ViT-style vision
//! towers use them.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;

/// A Conv2d of kernel = stride = `patch_size`: `[B, channels, H, W] -> [B, hidden, H/p, W/p]`.
/// PyTorch's Conv2d weight layout `[out, in, kh, kw]` is Burn's too, so checkpoints load as is.
pub fn patch_embedding(
    channels: usize,
    hidden: usize,
    patch_size: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([channels, hidden], [patch_size, patch_size])
        .with_stride([patch_size, patch_size])
        .with_bias(bias)
        .init(device)
}

/// Runs the patch convolution and flattens the grid row by row.
///
/// # Shapes
/// - `pixels`: `[B, channels, H, W]`; output: `[B, (H/p)*(W/p), hidden]`
pub fn embed_patches(conv: &Conv2d, pixels: Tensor<4>) -> Tensor<3> {
    // Packed weights (`--dtype bf16|q8` on the CPU): the product over the patches.
    let pixels = match crate::packed::patch_embedding(conv, pixels) {
        Ok(x) => return x,
        Err(pixels) => pixels,
    };
    let grid = conv.forward(pixels); // (B, C, h, w)
    let [b, c, h, w] = grid.dims();
    grid.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// A learned position table `[num_positions, hidden]` (HF `position_embedding`, an nn.Embedding).
pub fn position_embedding(num_positions: usize, hidden: usize, device: &Device) -> Embedding {
    EmbeddingConfig::new(num_positions, hidden).init(device)
}

/// Adds the first `L` rows of a position table to `x`.
///
/// # Shapes
/// - `x`: `[B, L, C]`; table `[N, C]` with `N >= L`; output `[B, L, C]`
pub fn add_positions(x: Tensor<3>, table: &Embedding) -> Tensor<3> {
    let [_, l, c] = x.dims();
    let pos = table.weight.val().slice([0..l, 0..c]);
    x + pos.unsqueeze::<3>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, device, tensor_from};
    use burn::module::Param;

    #[test]
    fn patches_flatten_row_major() {
        let dev = device();
        let mut conv = patch_embedding(1, 2, 2, true, &dev);
        // out0 = sum of the patch, out1 = top-left pixel; biases 0.5 and -1.
        let w = [1f32, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        conv.weight = Param::from_tensor(tensor_from(&w, [2, 1, 2, 2], &dev));
        conv.bias = Some(Param::from_tensor(tensor_from(&[0.5, -1.0], [2], &dev)));
        let img: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let out = embed_patches(&conv, tensor_from(&img, [1, 1, 4, 4], &dev));
        assert_eq!(out.dims(), [1, 4, 2]);
        // Patches (row-major): [0,1,4,5], [2,3,6,7], [8,9,12,13], [10,11,14,15].
        let expect = [10.5, -1.0, 18.5, 1.0, 42.5, 7.0, 50.5, 9.0];
        assert_close(out, &expect, 1e-6, "patches");
    }

    /// Packed (`--dtype bf16|q8`), the patch convolution is a product over the patches: the
    /// convolution's values within bf16's rounding, on a non-square image whose size is not a
    /// multiple of the patch (the remainder is dropped, as the convolution drops it).
    #[test]
    fn packed_patches_follow_the_convolution() {
        #[derive(Module, Debug)]
        struct Tower {
            patch_embedding: Conv2d,
        }
        let dev = device();
        let tower = Tower { patch_embedding: patch_embedding(3, 8, 4, true, &dev) };
        let img = Tensor::<4>::random([2, 3, 13, 18], burn::tensor::Distribution::Default, &dev);
        let want = crate::testing::to_vec(embed_patches(&tower.patch_embedding, img.clone()));
        let packed = crate::packed::pack(tower, zoo_kernels::gemm::WeightFormat::Bf16);
        assert!(crate::packed::contains(&packed.patch_embedding.weight.id), "packed");
        let got = embed_patches(&packed.patch_embedding, img);
        assert_eq!(got.dims(), [2, 12, 8]);
        assert_close(got, &want, 2e-2, "packed patches");
        crate::packed::release(&packed);
    }

    #[test]
    fn positions_add_by_row() {
        let dev = device();
        let mut table = position_embedding(3, 2, &dev);
        table.weight = Param::from_tensor(tensor_from(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2], &dev));
        let out = add_positions(Tensor::zeros([2, 2, 2], &dev), &table);
        assert_close(out, &[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], 0.0, "positions");
    }
}
