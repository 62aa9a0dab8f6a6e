//! CLIP checkpoints into modules.
//!
//! Key table (checkpoint key -> module path):
//!
//! | checkpoint                              | module                       |
//! |-----------------------------------------|------------------------------|
//! | `*.self_attn.out_proj.*`                | `*.self_attn.o_proj.*`       |
//! | `logit_scale` (shape `[]`)              | `logit_scale` (shape `[1]`)  |
//! | `*.embeddings.position_ids` (old saves) | ignored                      |
//! | everything else                         | the same path                |

use crate::config::ClipConfig;
use crate::model::ClipModel;
use burn::prelude::*;
use std::path::Path;
use zoo_nn::{Checkpoint, KeyMap, NnError, Result, model_type};

/// The CLIP key table.
pub fn key_map() -> KeyMap {
    KeyMap::new().rename(r"\.self_attn\.out_proj\.", ".self_attn.o_proj.").allow_unused(r"\.position_ids$")
}

/// Loads a `CLIPModel` folder (config.json + weights), or an OpenCLIP export
/// ([`crate::open_clip`]), as `dtype` (a dtype, or packed weights for CPU inference: [`zoo_nn::LoadSpec`]).
pub fn load_clip(
    dir: &Path,
    dtype: impl Into<zoo_nn::LoadSpec>,
    device: &Device,
) -> Result<(ClipModel, ClipConfig)> {
    if crate::open_clip::is_open_clip(dir) {
        let (config, ckpt) = crate::open_clip::open(dir)?;
        let mut model = ClipModel::new(&config, device);
        ckpt.load_into(&mut model, &key_map(), dtype)?;
        return Ok((model, config));
    }
    let kind = model_type(dir)?;
    if kind != "clip" {
        return Err(NnError::Config(format!(
            "{}: model_type '{kind}' is not a CLIP checkpoint (expected clip)",
            dir.display()
        )));
    }
    let ckpt = Checkpoint::open(dir)?;
    let config: ClipConfig = ckpt.read_json("config.json")?;
    config.validate()?;
    let mut model = ClipModel::new(&config, device);
    ckpt.load_into(&mut model, &key_map(), dtype)?;
    Ok((model, config))
}
