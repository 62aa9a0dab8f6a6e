//! SigLIP checkpoints into modules.
//!
//! Key table (checkpoint key -> module path):
//!
//! | checkpoint                              | module                       |
//! |-----------------------------------------|------------------------------|
//! | `*.self_attn.out_proj.*`                | `*.self_attn.o_proj.*`       |
//! | `*.embeddings.position_ids` (old saves) | ignored                      |
//! | everything else                         | the same path                |
//!
//! A `SiglipModel` checkpoint holds `vision_model.*`, `text_model.*`, `logit_scale`,
//! `logit_bias`; a `SiglipVisionModel` checkpoint `vision_model.*` only.

use crate::config::{SiglipConfig, SiglipVisionConfig};
use crate::model::{SiglipModel, SiglipVisionTransformer};
use burn::prelude::*;
use std::path::Path;
use zoo_nn::{Checkpoint, KeyMap, NnError, Result, model_type};

/// The SigLIP key table, with `prefix` (e.g. `vision_tower.`) stripped from checkpoint keys.
pub fn key_map(prefix: &str) -> KeyMap {
    KeyMap::new()
        .strip_prefix(prefix)
        .rename(r"\.self_attn\.out_proj\.", ".self_attn.o_proj.")
        .allow_unused(r"\.position_ids$")
}

/// Loads a `SiglipModel` folder (config.json + weights) as `dtype` (a dtype, or packed weights for CPU inference: [`zoo_nn::LoadSpec`]).
pub fn load_siglip(
    dir: &Path,
    dtype: impl Into<zoo_nn::LoadSpec>,
    device: &Device,
) -> Result<(SiglipModel, SiglipConfig)> {
    let ckpt = Checkpoint::open(dir)?;
    let config: SiglipConfig = ckpt.read_json("config.json")?;
    config.validate()?;
    let mut model = SiglipModel::new(&config, device);
    ckpt.load_into(&mut model, &key_map(""), dtype)?;
    Ok((model, config))
}

/// Loads the vision tower alone from a `SiglipVisionModel` or `SiglipModel` folder.
pub fn load_siglip_vision(
    dir: &Path,
    dtype: impl Into<zoo_nn::LoadSpec>,
    device: &Device,
) -> Result<(SiglipVisionTransformer, SiglipVisionConfig)> {
    let ckpt = Checkpoint::open(dir)?;
    let kind = model_type(dir)?;
    let config: SiglipVisionConfig = match kind.as_str() {
        "siglip_vision_model" => ckpt.read_json("config.json")?,
        "siglip" => ckpt.read_json::<SiglipConfig>("config.json")?.vision_config,
        other => {
            return Err(NnError::Config(format!(
                "{}: model_type '{other}' is not a SigLIP checkpoint (expected siglip or siglip_vision_model)",
                dir.display()
            )));
        }
    };
    config.validate()?;
    let mut tower = SiglipVisionTransformer::new(&config, device);
    let keys = key_map("vision_model.").allow_unused(r"^(text_model\.|logit_)");
    ckpt.load_into(&mut tower, &keys, dtype)?;
    Ok((tower, config))
}
