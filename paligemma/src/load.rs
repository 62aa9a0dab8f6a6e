//! PaliGemma checkpoints into modules.
//!
//! Key table (rules apply in order; every layout below loads):
//!
//! | checkpoint key                                | module path                     |
//! |-----------------------------------------------|---------------------------------|
//! | `model.vision_tower.vision_model.*`           | `vision_tower.*`                |
//! | `model.vision_tower.*` (5.x `model.` saves)   | `vision_tower.*`                |
//! | `vision_tower.vision_model.*` (hub files)     | `vision_tower.*`                |
//! | `vision_tower.*` (fresh 5.x saves)            | `vision_tower.*`                |
//! | `model.multi_modal_projector.*`               | `multi_modal_projector.*`       |
//! | `model.language_model.*`                      | `language_model.model.*`        |
//! | `language_model.model.*`                      | the same                        |
//! | `lm_head.*`                                   | `language_model.lm_head.*`      |
//! | `*.self_attn.out_proj.*` (vision)             | `*.self_attn.o_proj.*`          |
//!
//! With tied embeddings a saved `lm_head` is ignored.

use crate::config::PaliGemmaConfig;
use crate::model::PaliGemmaForConditionalGeneration;
use burn::prelude::*;
use std::path::Path;
use zoo_nn::{Checkpoint, KeyMap, NnError, Result};

/// The PaliGemma key table.
pub fn key_map(tied: bool) -> KeyMap {
    let keys = KeyMap::new()
        .rename(r"^model\.vision_tower\.vision_model\.", "vision_tower.")
        .rename(r"^model\.vision_tower\.", "vision_tower.")
        .rename(r"^vision_tower\.vision_model\.", "vision_tower.")
        .rename(r"^model\.multi_modal_projector\.", "multi_modal_projector.")
        .rename(r"^model\.language_model\.", "language_model.model.")
        .rename(r"^lm_head\.", "language_model.lm_head.")
        .rename(r"\.self_attn\.out_proj\.", ".self_attn.o_proj.")
        .allow_unused(r"\.position_ids$");
    if tied { keys.allow_unused(r"^language_model\.lm_head\.") } else { keys }
}

/// Reads a PaliGemma folder's config.json.
pub fn read_config(dir: &Path) -> Result<PaliGemmaConfig> {
    let path = dir.join("config.json");
    PaliGemmaConfig::from_value(zoo_nn::read_json(&path)?)
        .map_err(|e| NnError::Config(format!("{}: {e}", path.display())))
}

/// Loads a `PaliGemmaForConditionalGeneration` folder (single file or shards; F32/BF16/F16) as `dtype` (a dtype, or packed weights for CPU inference: [`zoo_nn::LoadSpec`]).
pub fn load_paligemma(
    dir: &Path,
    dtype: impl Into<zoo_nn::LoadSpec>,
    device: &Device,
) -> Result<(PaliGemmaForConditionalGeneration, PaliGemmaConfig)> {
    let config = read_config(dir)?;
    let ckpt = Checkpoint::open(dir)?;
    let mut model = PaliGemmaForConditionalGeneration::new(&config, device);
    ckpt.load_into(&mut model, &key_map(config.text_config.tie_word_embeddings), dtype)?;
    Ok((model, config))
}
