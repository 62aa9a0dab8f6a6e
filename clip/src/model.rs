//! CLIP: vision tower (class token, bias-free patch conv, `pre_layrnorm`, pooled
//! `post_layernorm(class token)`), causal text tower pooled at the end-of-text token, bias-free
//! projections and softmax scores. Follows transformers' `models/clip/modeling_clip.py`.
//!
//! Axis letters: `B` batch, `N` patches, `L` text tokens, `C` width, `P` projection width.

use crate::config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use zoo_nn::layers::embed::{add_positions, embed_patches, patch_embedding, position_embedding};
use zoo_nn::{
    ContrastiveModel, Encoded, Encoder, EncoderConfig, MaskSpec, Norm, NormConfig, Padding, TextBatch,
    l2_normalize,
};

/// Class token + patches + positions.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    /// `[C]`, prepended to the patches.
    pub class_embedding: Param<Tensor<1>>,
    /// Bias-free conv, stride = patch.
    pub patch_embedding: Conv2d,
    /// `[N + 1, C]`.
    pub position_embedding: Embedding,
}

impl ClipVisionEmbeddings {
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; output `[B, N + 1, C]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let patches = embed_patches(&self.patch_embedding, pixels); // (B, N, C)
        let [b, _, c] = patches.dims();
        let class = self.class_embedding.val().reshape([1, 1, c]).expand([b, 1, c]);
        add_positions(Tensor::cat(vec![class, patches], 1), &self.position_embedding)
    }
}

/// What the vision tower returns.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput {
    /// `[B, N + 1, C]`, the encoder's output (no final norm, as transformers returns it).
    pub last_hidden_state: Tensor<3>,
    /// `[B, C]`: `post_layernorm` of the class token.
    pub pooler_output: Tensor<2>,
}

/// `CLIPVisionTransformer` (`vision_model` in checkpoints).
#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    /// Class token, patches, positions.
    pub embeddings: ClipVisionEmbeddings,
    /// Norm before the encoder (sic, as the checkpoint spells it).
    pub pre_layrnorm: Norm,
    /// Transformer layers.
    pub encoder: Encoder,
    /// Norm of the pooled class token.
    pub post_layernorm: Norm,
}

impl ClipVisionTransformer {
    /// A randomly initialised tower.
    pub fn new(config: &ClipVisionConfig, device: &Device) -> Self {
        let c = config.hidden_size;
        let norm = NormConfig::new(config.norm, c, config.layer_norm_eps);
        Self {
            embeddings: ClipVisionEmbeddings {
                class_embedding: Initializer::Normal { mean: 0.0, std: (c as f64).powf(-0.5) }
                    .init([c], device),
                patch_embedding: patch_embedding(config.num_channels, c, config.patch_size, false, device),
                position_embedding: position_embedding(config.num_patches() + 1, c, device),
            },
            pre_layrnorm: norm.init(device),
            encoder: EncoderConfig {
                hidden: c,
                heads: config.num_attention_heads,
                intermediate: config.intermediate_size,
                layers: config.num_hidden_layers,
                act: config.hidden_act,
                norm,
            }
            .init(device),
            post_layernorm: norm.init(device),
        }
    }

    /// # Shapes
    /// - `pixels`: `[B, 3, image_size, image_size]`
    pub fn forward(&self, pixels: Tensor<4>) -> ClipVisionOutput {
        let x = self.pre_layrnorm.forward(self.embeddings.forward(pixels));
        let x = self.encoder.forward(x, None);
        let [b, _, c] = x.dims();
        let class = x.clone().slice([0..b, 0..1, 0..c]).reshape([b, c]);
        ClipVisionOutput { pooler_output: self.post_layernorm.forward(class), last_hidden_state: x }
    }
}

/// Token + position embeddings.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    /// `[vocab, C]`.
    pub token_embedding: Embedding,
    /// `[max_positions, C]`.
    pub position_embedding: Embedding,
}

/// What the text tower returns.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, L, C]`, after `final_layer_norm`.
    pub last_hidden_state: Tensor<3>,
    /// `[B, C]`, the hidden state at each row's end-of-text token.
    pub pooler_output: Tensor<2>,
}

/// `CLIPTextTransformer` (`text_model` in checkpoints): causal, with a padding mask.
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// Tokens and positions.
    pub embeddings: ClipTextEmbeddings,
    /// Transformer layers.
    pub encoder: Encoder,
    /// Final norm.
    pub final_layer_norm: Norm,
    /// Pooling token (`None`: no eos configured, pool at the largest id as legacy configs do).
    pub eos_token_id: Option<u32>,
}

impl ClipTextTransformer {
    /// A randomly initialised tower.
    pub fn new(config: &ClipTextConfig, device: &Device) -> Self {
        let c = config.hidden_size;
        let norm = NormConfig::new(config.norm, c, config.layer_norm_eps);
        Self {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(config.vocab_size, c).init(device),
                position_embedding: EmbeddingConfig::new(config.max_position_embeddings, c).init(device),
            },
            encoder: EncoderConfig {
                hidden: c,
                heads: config.num_attention_heads,
                intermediate: config.intermediate_size,
                layers: config.num_hidden_layers,
                act: config.hidden_act,
                norm,
            }
            .init(device),
            final_layer_norm: norm.init(device),
            // transformers: eos_token_id == 2 is the legacy "argmax of the ids" rule.
            eos_token_id: config.eos_token_id.filter(|&e| e != 2),
        }
    }

    /// Where each row is pooled: the first end-of-text token (position 0 when there is none, as
    /// transformers' argmax gives), or the largest id under the legacy rule.
    pub fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        ids.iter()
            .map(|row| match self.eos_token_id {
                Some(eos) => row.iter().position(|&t| t == eos).unwrap_or(0),
                // argmax returns the first maximum.
                None => {
                    row.iter()
                        .enumerate()
                        .fold((0, 0u32), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
                        .0
                }
            })
            .collect()
    }

    /// # Shapes
    /// - `ids`: `[B][L]` token ids; `mask`: `[B][L]`, true for real tokens
    pub fn forward(&self, ids: &[Vec<u32>], mask: &[Vec<bool>], device: &Device) -> ClipTextOutput {
        self.forward_batch(&TextBatch::new(Encoded { ids: ids.to_vec(), mask: mask.to_vec() }, device))
    }

    /// [`forward`](Self::forward) on a batch whose ids are already on the device.
    pub fn forward_batch(&self, text: &TextBatch) -> ClipTextOutput {
        let (ids, mask) = (&text.ids, &text.mask);
        let [b, l] = text.input_ids.dims();
        let device = text.input_ids.device();
        let x = self.embeddings.token_embedding.forward(text.input_ids.clone());
        let x = add_positions(x, &self.embeddings.position_embedding);
        let attn_mask = MaskSpec::causal().with_key_valid(mask.to_vec()).build(b, l, l, &device);
        let x = self.final_layer_norm.forward(self.encoder.forward(x, attn_mask.as_ref()));
        let c = x.dims()[2];
        let rows: Vec<Tensor<2>> = self
            .pool_positions(ids)
            .into_iter()
            .enumerate()
            .map(|(i, p)| x.clone().slice([i..i + 1, p..p + 1, 0..c]).reshape([1, c]))
            .collect();
        ClipTextOutput { pooler_output: Tensor::cat(rows, 0), last_hidden_state: x }
    }
}

/// Image-text scores of a batch.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `[B_img, P]`, L2-normalised.
    pub image_embeds: Tensor<2>,
    /// `[B_txt, P]`, L2-normalised.
    pub text_embeds: Tensor<2>,
    /// `[B_img, B_txt]`: `exp(logit_scale) * img · txt`.
    pub logits_per_image: Tensor<2>,
}

impl ClipOutput {
    /// Softmax over the texts, `[B_img, B_txt]`.
    pub fn probs(&self) -> Tensor<2> {
        softmax(self.logits_per_image.clone(), 1)
    }
}

/// `CLIPModel`: both towers, bias-free projections and the temperature.
#[derive(Module, Debug)]
pub struct ClipModel {
    /// Text tower.
    pub text_model: ClipTextTransformer,
    /// Vision tower.
    pub vision_model: ClipVisionTransformer,
    /// Vision width -> projection width, no bias.
    pub visual_projection: Linear,
    /// Text width -> projection width, no bias.
    pub text_projection: Linear,
    /// `[1]` (a scalar in checkpoints): log temperature.
    pub logit_scale: Param<Tensor<1>>,
}

impl ClipModel {
    /// A randomly initialised model.
    pub fn new(config: &ClipConfig, device: &Device) -> Self {
        let p = config.projection_dim;
        Self {
            text_model: ClipTextTransformer::new(&config.text_config, device),
            vision_model: ClipVisionTransformer::new(&config.vision_config, device),
            visual_projection: LinearConfig::new(config.vision_config.hidden_size, p)
                .with_bias(false)
                .init(device),
            text_projection: LinearConfig::new(config.text_config.hidden_size, p)
                .with_bias(false)
                .init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats(
                [config.logit_scale_init_value as f32],
                device,
            )),
        }
    }

    /// Projected image features (before normalisation), `[B, P]`.
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        zoo_nn::packed::linear(&self.visual_projection, self.vision_model.forward(pixels).pooler_output)
    }

    /// Projected text features (before normalisation), `[B, P]`.
    pub fn text_features(&self, ids: &[Vec<u32>], mask: &[Vec<bool>], device: &Device) -> Tensor<2> {
        zoo_nn::packed::linear(
            &self.text_projection,
            self.text_model.forward(ids, mask, device).pooler_output,
        )
    }

    /// Scores every image against every text.
    pub fn scores(&self, image_features: Tensor<2>, text_features: Tensor<2>) -> ClipOutput {
        let image_embeds = l2_normalize(image_features);
        let text_embeds = l2_normalize(text_features);
        let scale = self.logit_scale.val().exp().unsqueeze::<2>();
        ClipOutput {
            logits_per_image: image_embeds.clone().matmul(text_embeds.clone().transpose()) * scale,
            image_embeds,
            text_embeds,
        }
    }
}

impl ContrastiveModel for ClipModel {
    fn text_padding(&self) -> Padding {
        Padding::Longest(self.text_model.embeddings.position_embedding.weight.dims()[0])
    }

    fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.image_features(pixels)
    }

    fn encode_text(&self, text: &TextBatch) -> Tensor<2> {
        zoo_nn::packed::linear(&self.text_projection, self.text_model.forward_batch(text).pooler_output)
    }

    fn logits(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        zoo_nn::train::loss::contrastive_logits(image_embeds, text_embeds, self.logit_scale.val(), None)
    }

    fn probs(&self, logits_per_image: Tensor<2>) -> Tensor<2> {
        softmax(logits_per_image, 1)
    }

    fn loss(&self, img: Tensor<2>, txt: Tensor<2>, _chunk: Option<usize>) -> Tensor<1> {
        zoo_nn::train::loss::clip_loss(img, txt, self.logit_scale.val())
    }
}
