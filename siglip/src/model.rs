//! SigLIP: the ViT vision tower (with its MAP attention-pooling head), the text tower, and
//! `SiglipModel` with sigmoid scores. Follows transformers' `models/siglip/modeling_siglip.py`;
//! field names are the checkpoint's keys (`out_proj` is mapped to `o_proj` by the key table).
//!
//! Axis letters: `B` batch, `N` patch tokens, `L` text tokens, `C` width, `P` projection width.

use crate::config::{SiglipConfig, SiglipTextConfig, SiglipVisionConfig};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use zoo_nn::layers::embed::{add_positions, embed_patches, patch_embedding, position_embedding};
use zoo_nn::{
    ContrastiveModel, Encoder, EncoderConfig, MaskSpec, Mlp, Norm, NormConfig, NormKind, Padding, TextBatch,
    l2_normalize, scaled_dot_product_attention,
};

/// Patch embedding (conv with bias) + learned positions.
#[derive(Module, Debug)]
pub struct SiglipVisionEmbeddings {
    /// `[C, channels, p, p]` conv, stride p.
    pub patch_embedding: Conv2d,
    /// `[N, C]`.
    pub position_embedding: Embedding,
}

impl SiglipVisionEmbeddings {
    /// # Shapes
    /// - `pixels`: `[B, channels, H, W]`; output `[B, N, C]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        add_positions(embed_patches(&self.patch_embedding, pixels), &self.position_embedding)
    }
}

/// `torch.nn.MultiheadAttention` as the MAP head holds it: packed q/k/v projection.
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    /// `[3C, C]`, PyTorch layout (rows: q, then k, then v).
    pub in_proj_weight: Param<Tensor<2>>,
    /// `[3C]`.
    pub in_proj_bias: Param<Tensor<1>>,
    /// `C -> C`.
    pub out_proj: Linear,
    /// Heads.
    pub num_heads: usize,
}

impl MultiheadAttention {
    fn new(c: usize, heads: usize, device: &Device) -> Self {
        Self {
            in_proj_weight: Initializer::XavierUniform { gain: 1.0 }.init_with(
                [3 * c, c],
                Some(c),
                Some(c),
                device,
            ),
            in_proj_bias: Initializer::Zeros.init([3 * c], device),
            out_proj: LinearConfig::new(c, c).init(device),
            num_heads: heads,
        }
    }

    /// # Shapes
    /// - `query`: `[B, Q, C]`; `kv`: `[B, N, C]`; `mask`: `bool[B, 1, Q, N]`, true = hidden;
    ///   output `[B, Q, C]`
    pub fn forward(&self, query: Tensor<3>, kv: Tensor<3>, mask: Option<&Tensor<4, Bool>>) -> Tensor<3> {
        let [b, q_len, c] = query.dims();
        let n = kv.dims()[1];
        let (h, d) = (self.num_heads, c / self.num_heads);
        let w = self.in_proj_weight.val();
        let bias = self.in_proj_bias.val();
        let project = |x: Tensor<3>, i: usize, len: usize| {
            let wi = w.clone().slice([i * c..(i + 1) * c, 0..c]).transpose(); // (C, C) as [in, out]
            let bi = bias.clone().narrow(0, i * c, c);
            zoo_nn::kernels::fused::bias_add(zoo_nn::kernels::fused::matmul(x, wi.unsqueeze::<3>()), bi)
                .reshape([b, len, h, d])
                .swap_dims(1, 2)
        };
        let (q, k, v) = if zoo_nn::packed::contains(&self.in_proj_weight.id) {
            // Packed (`--dtype bf16|q8`): q, k and v of each row in one product on the host
            // kernels (the tokens' q is not needed: a third of a small product).
            let all = |x| zoo_nn::packed::weight_product(&self.in_proj_weight, Some(&self.in_proj_bias), x);
            let heads = |t: Tensor<3>, len| t.reshape([b, len, h, d]).swap_dims(1, 2);
            let (q, kv) = (all(query), all(kv));
            (
                heads(q.narrow(2, 0, c), q_len),
                heads(kv.clone().narrow(2, c, c), n),
                heads(kv.narrow(2, 2 * c, c), n),
            )
        } else {
            (project(query, 0, q_len), project(kv.clone(), 1, n), project(kv, 2, n)) // (B, h, Q|N, d)
        };
        let out = scaled_dot_product_attention(q, k, v, mask, (d as f64).powf(-0.5), None);
        zoo_nn::packed::linear(&self.out_proj, out.swap_dims(1, 2).reshape([b, q_len, c]))
    }
}

/// Multihead attention pooling: a learned probe attends over all tokens, then a residual MLP.
#[derive(Module, Debug)]
pub struct SiglipMultiheadAttentionPoolingHead {
    /// `[1, 1, C]`.
    pub probe: Param<Tensor<3>>,
    /// Probe-over-tokens attention.
    pub attention: MultiheadAttention,
    /// Norm before the MLP.
    pub layernorm: Norm,
    /// Residual MLP.
    pub mlp: Mlp,
}

impl SiglipMultiheadAttentionPoolingHead {
    /// # Shapes
    /// - `x`: `[B, N, C]`; output `[B, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        self.forward_masked(x, None)
    }

    /// [`forward`](Self::forward) over the valid tokens only (`valid`: `[B][N]`, NaFlex padding).
    pub fn forward_masked(&self, x: Tensor<3>, valid: Option<&[Vec<bool>]>) -> Tensor<2> {
        let [b, n, c] = x.dims();
        let mask =
            valid.and_then(|v| MaskSpec::none().with_key_valid(v.to_vec()).build(b, 1, n, &x.device()));
        let probe = self.probe.val().expand([b, 1, c]);
        let h = self.attention.forward(probe, x, mask.as_ref());
        let h = h.clone() + self.mlp.forward(self.layernorm.forward(h));
        h.reshape([b, c])
    }
}

/// What the vision tower returns.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `[B, N, C]`, after `post_layernorm`.
    pub last_hidden_state: Tensor<3>,
    /// `[B, C]`, the MAP head's output (when the tower has one).
    pub pooler_output: Option<Tensor<2>>,
}

/// The SigLIP ViT (`SiglipVisionTransformer`, `vision_model` in checkpoints).
#[derive(Module, Debug)]
pub struct SiglipVisionTransformer {
    /// Patches + positions.
    pub embeddings: SiglipVisionEmbeddings,
    /// Transformer layers.
    pub encoder: Encoder,
    /// Final norm.
    pub post_layernorm: Norm,
    /// MAP head (`vision_use_head`).
    pub head: Option<SiglipMultiheadAttentionPoolingHead>,
}

fn norm(kind: NormKind, dim: usize, eps: f64) -> NormConfig {
    NormConfig::new(kind, dim, eps)
}

impl SiglipVisionTransformer {
    /// A randomly initialised tower for `config`.
    pub fn new(config: &SiglipVisionConfig, device: &Device) -> Self {
        let c = config.hidden_size;
        let n = norm(config.norm, c, config.layer_norm_eps);
        Self {
            embeddings: SiglipVisionEmbeddings {
                patch_embedding: patch_embedding(config.num_channels, c, config.patch_size, true, device),
                position_embedding: position_embedding(config.num_patches(), c, device),
            },
            encoder: EncoderConfig {
                hidden: c,
                heads: config.num_attention_heads,
                intermediate: config.intermediate_size,
                layers: config.num_hidden_layers,
                act: config.hidden_act,
                norm: n,
            }
            .init(device),
            post_layernorm: n.init(device),
            head: config.vision_use_head.then(|| SiglipMultiheadAttentionPoolingHead {
                probe: Initializer::Normal { mean: 0.0, std: 1.0 }.init([1, 1, c], device),
                attention: MultiheadAttention::new(c, config.num_attention_heads, device),
                layernorm: n.init(device),
                mlp: Mlp::init(c, config.intermediate_size, config.hidden_act, device),
            }),
        }
    }

    /// # Shapes
    /// - `pixels`: `[B, channels, H, W]` with `H = W = image_size`
    pub fn forward(&self, pixels: Tensor<4>) -> VisionOutput {
        let x = self.embeddings.forward(pixels);
        let x = self.post_layernorm.forward(self.encoder.forward(x, None));
        VisionOutput { pooler_output: self.head.as_ref().map(|h| h.forward(x.clone())), last_hidden_state: x }
    }
}

/// Token + learned position embeddings.
#[derive(Module, Debug)]
pub struct SiglipTextEmbeddings {
    /// `[vocab, C]`.
    pub token_embedding: Embedding,
    /// `[max_positions, C]`.
    pub position_embedding: Embedding,
}

/// What the text tower returns.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// `[B, L, C]`, after `final_layer_norm`.
    pub last_hidden_state: Tensor<3>,
    /// `[B, P]`: the last position through `head`.
    pub pooler_output: Tensor<2>,
}

/// The SigLIP text tower (`text_model` in checkpoints): bidirectional, no attention mask.
#[derive(Module, Debug)]
pub struct SiglipTextTransformer {
    /// Tokens + positions.
    pub embeddings: SiglipTextEmbeddings,
    /// Transformer layers.
    pub encoder: Encoder,
    /// Final norm.
    pub final_layer_norm: Norm,
    /// `C -> P` on the last position.
    pub head: Linear,
}

impl SiglipTextTransformer {
    /// A randomly initialised tower for `config`.
    pub fn new(config: &SiglipTextConfig, device: &Device) -> Self {
        let c = config.hidden_size;
        let n = norm(config.norm, c, config.layer_norm_eps);
        Self {
            embeddings: SiglipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(config.vocab_size, c).init(device),
                position_embedding: EmbeddingConfig::new(config.max_position_embeddings, c).init(device),
            },
            encoder: EncoderConfig {
                hidden: c,
                heads: config.num_attention_heads,
                intermediate: config.intermediate_size,
                layers: config.num_hidden_layers,
                act: config.hidden_act,
                norm: n,
            }
            .init(device),
            final_layer_norm: n.init(device),
            head: LinearConfig::new(c, config.projection_size()).init(device),
        }
    }

    /// # Shapes
    /// - `input_ids`: `int[B, L]` with `L <= max_position_embeddings`
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> TextOutput {
        self.forward_masked(input_ids, None)
    }

    /// Pooled features of a tokenised batch, the padding mask applied when the tokenizer hands
    /// one on ([`TextBatch::attention_mask`]).
    pub fn encode(&self, text: &TextBatch) -> Tensor<2> {
        let valid = text.attention_mask.then_some(text.mask.as_slice());
        self.forward_masked(text.input_ids.clone(), valid).pooler_output
    }

    /// [`forward`](Self::forward) with padding keys hidden (`valid`: `[B][L]`), as transformers
    /// does when the tokenizer returns an `attention_mask` (SigLIP 2's Gemma tokenizers).
    pub fn forward_masked(&self, input_ids: Tensor<2, Int>, valid: Option<&[Vec<bool>]>) -> TextOutput {
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        let x = self.embeddings.token_embedding.forward(input_ids);
        let x = add_positions(x, &self.embeddings.position_embedding);
        let mask = valid.and_then(|v| MaskSpec::none().with_key_valid(v.to_vec()).build(b, l, l, &device));
        let x = self.final_layer_norm.forward(self.encoder.forward(x, mask.as_ref()));
        let c = x.dims()[2];
        let last = x.clone().slice([0..b, l - 1..l, 0..c]).reshape([b, c]);
        TextOutput { pooler_output: zoo_nn::packed::linear(&self.head, last), last_hidden_state: x }
    }
}

/// Image-text scores of a batch.
#[derive(Debug, Clone)]
pub struct SiglipOutput {
    /// `[B_img, P]`, L2-normalised.
    pub image_embeds: Tensor<2>,
    /// `[B_txt, P]`, L2-normalised.
    pub text_embeds: Tensor<2>,
    /// `[B_img, B_txt]`: `img · txt * exp(logit_scale) + logit_bias`.
    pub logits_per_image: Tensor<2>,
}

impl SiglipOutput {
    /// Sigmoid probabilities, `[B_img, B_txt]`.
    pub fn probs(&self) -> Tensor<2> {
        burn::tensor::activation::sigmoid(self.logits_per_image.clone())
    }
}

/// SigLIP: both towers and the learned temperature and bias.
#[derive(Module, Debug)]
pub struct SiglipModel {
    /// Text tower.
    pub text_model: SiglipTextTransformer,
    /// Vision tower.
    pub vision_model: SiglipVisionTransformer,
    /// `[1]`, log temperature (init ln 10).
    pub logit_scale: Param<Tensor<1>>,
    /// `[1]`, bias (init -10).
    pub logit_bias: Param<Tensor<1>>,
}

impl SiglipModel {
    /// A randomly initialised model (logit scale ln 10, bias -10, as SigLIP trains from).
    pub fn new(config: &SiglipConfig, device: &Device) -> Self {
        Self {
            text_model: SiglipTextTransformer::new(&config.text_config, device),
            vision_model: SiglipVisionTransformer::new(&config.vision_config, device),
            logit_scale: Param::from_tensor(Tensor::from_floats([10f32.ln()], device)),
            logit_bias: Param::from_tensor(Tensor::from_floats([-10f32], device)),
        }
    }

    /// Pooled image features (before normalisation), `[B, P]`.
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        let out = self.vision_model.forward(pixels);
        out.pooler_output.expect("SiglipModel's vision tower has a head (checked at construction)")
    }

    /// Pooled text features (before normalisation), `[B, P]`.
    pub fn text_features(&self, input_ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_model.forward(input_ids).pooler_output
    }

    /// Scores every image against every text.
    pub fn scores(&self, image_features: Tensor<2>, text_features: Tensor<2>) -> SiglipOutput {
        let image_embeds = l2_normalize(image_features);
        let text_embeds = l2_normalize(text_features);
        let scale = self.logit_scale.val().exp().unsqueeze::<2>();
        let bias = self.logit_bias.val().unsqueeze::<2>();
        let logits_per_image = image_embeds.clone().matmul(text_embeds.clone().transpose()) * scale + bias;
        SiglipOutput { image_embeds, text_embeds, logits_per_image }
    }

    /// # Shapes
    /// - `pixels`: `[B_img, 3, H, W]`; `input_ids`: `int[B_txt, L]`
    pub fn forward(&self, pixels: Tensor<4>, input_ids: Tensor<2, Int>) -> SiglipOutput {
        self.scores(self.image_features(pixels), self.text_features(input_ids))
    }
}

impl ContrastiveModel for SiglipModel {
    fn text_padding(&self) -> Padding {
        Padding::MaxLength(self.text_model.embeddings.position_embedding.weight.dims()[0])
    }

    fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.image_features(pixels)
    }

    fn encode_text(&self, text: &TextBatch) -> Tensor<2> {
        self.text_model.encode(text)
    }

    fn logits(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        SigmoidHead { scale: &self.logit_scale, bias: &self.logit_bias }.logits(image_embeds, text_embeds)
    }

    fn probs(&self, logits_per_image: Tensor<2>) -> Tensor<2> {
        burn::tensor::activation::sigmoid(logits_per_image)
    }

    fn loss(&self, img: Tensor<2>, txt: Tensor<2>, chunk: Option<usize>) -> Tensor<1> {
        SigmoidHead { scale: &self.logit_scale, bias: &self.logit_bias }.loss(img, txt, chunk)
    }
}

/// SigLIP's scoring of L2-normalised embeddings by a learned temperature and bias, shared by
/// SigLIP and SigLIP 2 NaFlex.
pub struct SigmoidHead<'a> {
    /// `[1]`, log temperature.
    pub scale: &'a Param<Tensor<1>>,
    /// `[1]`, bias.
    pub bias: &'a Param<Tensor<1>>,
}

impl SigmoidHead<'_> {
    /// `exp(t) * img · txtᵀ + b`, `[N, M]`.
    pub fn logits(&self, img: Tensor<2>, txt: Tensor<2>) -> Tensor<2> {
        zoo_nn::train::loss::contrastive_logits(img, txt, self.scale.val(), Some(self.bias.val()))
    }

    /// The sigmoid loss of matching pairs (`chunk`: texts scored in blocks).
    pub fn loss(&self, img: Tensor<2>, txt: Tensor<2>, chunk: Option<usize>) -> Tensor<1> {
        let (scale, bias) = (self.scale.val(), self.bias.val());
        match chunk {
            Some(c) => zoo_nn::train::loss::siglip_loss_chunked(img, txt, scale, bias, c, 0),
            None => zoo_nn::train::loss::siglip_loss(img, txt, scale, bias),
        }
    }
}
