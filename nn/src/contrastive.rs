//! The one interface of the contrastive image-text models (SigLIP, CLIP): zero-shot scoring,
//! training and evaluation call these methods and never branch on the family.
//!
//! A family implements [`ContrastiveModel`] in its own crate (`zoo_siglip::SiglipModel`,
//! `zoo_clip::ClipModel`); texts reach it as one [`TextBatch`] type that carries the ids on the
//! device and, for the families that use them, the host ids and padding mask.

use crate::data::text::{Padding, TextBatch};
use burn::prelude::*;

/// A two-tower image-text model scored on L2-normalised embeddings.
pub trait ContrastiveModel {
    /// How this family's processor pads texts (SigLIP: every row to its text positions; CLIP:
    /// to the longest row, truncated at its positions).
    fn text_padding(&self) -> Padding;

    /// Image features before normalisation.
    ///
    /// # Shapes
    /// - `pixels`: `[B, 3, H, W]`; output `[B, E]`
    fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2>;

    /// Text features before normalisation.
    ///
    /// # Shapes
    /// - `text`: `B` rows of `L` ids; output `[B, E]`
    fn encode_text(&self, text: &TextBatch) -> Tensor<2>;

    /// `logits_per_image` of L2-normalised embeddings.
    ///
    /// # Shapes
    /// - `image_embeds`: `[N, E]`; `text_embeds`: `[M, E]`; output `[N, M]`
    fn logits(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2>;

    /// Probabilities from `logits_per_image` (SigLIP: sigmoid; CLIP: softmax over the texts).
    fn probs(&self, logits_per_image: Tensor<2>) -> Tensor<2>;

    /// The training loss of `N` matching pairs of L2-normalised embeddings (`chunk`: score the
    /// texts in blocks of this many where the family's loss allows it).
    ///
    /// # Shapes
    /// - `img`, `txt`: `[N, E]`; output `[1]`
    fn loss(&self, img: Tensor<2>, txt: Tensor<2>, chunk: Option<usize>) -> Tensor<1>;

    /// L2-normalised image and text embeddings.
    fn embed(&self, pixels: Tensor<4>, text: &TextBatch) -> (Tensor<2>, Tensor<2>) {
        (crate::l2_normalize(self.encode_image(pixels)), crate::l2_normalize(self.encode_text(text)))
    }
}
