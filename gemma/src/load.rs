//! Gemma checkpoints into modules.
//!
//! Key table: checkpoint keys are the module paths (`model.embed_tokens.weight`,
//! `model.layers.N.self_attn.q_proj.weight`, `model.norm.weight`, `lm_head.weight`). With tied
//! embeddings (the default) the model has no `lm_head`; a saved copy of it is ignored.

use crate::config::GemmaConfig;
use crate::model::GemmaForCausalLM;
use burn::prelude::*;
use std::path::Path;
use zoo_nn::{Checkpoint, KeyMap, Result};

/// The Gemma key table for checkpoint keys under `prefix` (e.g. `language_model.`).
pub fn key_map(prefix: &str, tied: bool) -> KeyMap {
    let keys = KeyMap::new().strip_prefix(prefix);
    if tied { keys.allow_unused(r"^lm_head\.") } else { keys }
}

/// Loads a `GemmaForCausalLM` / `Gemma2ForCausalLM` folder as `dtype` (a dtype, or packed weights for CPU inference: [`zoo_nn::LoadSpec`]).
pub fn load_gemma(
    dir: &Path,
    dtype: impl Into<zoo_nn::LoadSpec>,
    device: &Device,
) -> Result<(GemmaForCausalLM, GemmaConfig)> {
    let ckpt = Checkpoint::open(dir)?;
    let config = GemmaConfig::from_value(ckpt.read_json("config.json")?)
        .map_err(|e| zoo_nn::NnError::Config(format!("{}: {e}", dir.join("config.json").display())))?;
    let mut model = GemmaForCausalLM::new(&config, device);
    ckpt.load_into(&mut model, &key_map("", config.tie_word_embeddings), dtype)?;
    Ok((model, config))
}
