//! Mixed precision for training: the forward pass on a half-precision view of the model whose
//! weights are the f32 master weights cast on the autodiff graph, so gradients arrive on the f32
//! masters in f32 (what PyTorch's autocast does per op, here per step). The optimiser state stays
//! f32; the caller computes the loss in f32.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;

struct Cast(DType);

impl ModuleMapper for Cast {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value) = (param.id, param.val());
        // A differentiable cast of the (tracked) master weight: same id, so gradients found
        // through the view are looked up as the master's.
        Param::initialized(id, zoo_kernels::fused::cast(value, self.0))
    }
}

/// The model with every float parameter cast to `dtype` on the graph (the masters untouched).
pub fn autocast<M: Module>(model: &M, dtype: DType) -> M {
    model.clone().map(&mut Cast(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::optim::GradientsParams;

    #[test]
    fn gradients_reach_the_f32_masters() {
        let dev = crate::testing::device().autodiff();
        let lin = LinearConfig::new(4, 3).init(&dev);
        let x = Tensor::<2>::ones([2, 4], &dev);
        let half = autocast(&lin, DType::BF16);
        assert_eq!(half.weight.val().dtype(), DType::BF16);
        let y = half.forward(x.cast(DType::BF16)).cast(DType::F32).sum();
        let grads = GradientsParams::from_grads(y.backward(), &lin);
        let g = grads.get::<2>(lin.weight.id).expect("a gradient for the master weight");
        assert_eq!(g.dtype(), DType::F32);
        // d(sum(x W + b))/dW = 2 for every element (two rows of ones).
        assert!(crate::testing::to_vec(g).iter().all(|v| (v - 2.0).abs() < 1e-2));
        assert_eq!(lin.weight.val().dtype(), DType::F32);
    }
}
