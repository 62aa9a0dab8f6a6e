//! OpenCLIP hub exports (`open_clip_config.json` + `open_clip_model.safetensors` or
//! `open_clip_pytorch_model.bin`, as laion/*, apple/DFN* and the `save_for_hf` of open_clip
//! write them) mapped onto [`ClipModel`]: the ViT-CLIP models (`open_clip/model.py`'s `CLIP`
//! with a `VisionTransformer` and the default text transformer).
//!
//! | open_clip key                                  | CLIPModel key                                   |
//! |------------------------------------------------|-------------------------------------------------|
//! | `visual.class_embedding`                       | `vision_model.embeddings.class_embedding`       |
//! | `visual.conv1.weight`                          | `vision_model.embeddings.patch_embedding.weight`|
//! | `visual.positional_embedding`                  | `vision_model.embeddings.position_embedding.weight` |
//! | `visual.ln_pre` / `visual.ln_post`             | `vision_model.pre_layrnorm` / `post_layernorm`  |
//! | `visual.proj` `[C, E]` (x @ proj)              | `visual_projection.weight` `[E, C]`             |
//! | `token_embedding`, `positional_embedding`      | `text_model.embeddings.{token,position}_embedding` |
//! | `ln_final`                                     | `text_model.final_layer_norm`                   |
//! | `text_projection` `[C, E]`                     | `text_projection.weight` `[E, C]`               |
//! | `*transformer.resblocks.N.ln_1` / `ln_2`       | `*encoder.layers.N.layer_norm1` / `layer_norm2` |
//! | `*.attn.in_proj_{weight,bias}` (packed q/k/v)  | `*.self_attn.{q,k,v}_proj.*`                    |
//! | `*.attn.out_proj`, `*.mlp.c_fc`, `*.mlp.c_proj`| `*.self_attn.out_proj`, `*.mlp.fc1`, `*.mlp.fc2`|
//!
//! Config: heads = width / `head_width` (64), MLP width = width x `mlp_ratio` (4), LayerNorm eps
//! 1e-5, GELU (QuickGELU with `quick_gelu`), text pooled at the largest id (`pool_type` argmax,
//! the CLIP tokenizer's end-of-text being its last id). Preprocessing from `preprocess_cfg`:
//! shortest-edge resize + centre crop rounded as torchvision rounds it.

use crate::config::ClipConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use zoo_nn::data::image::{ChannelValues, SizeSpec};
use zoo_nn::load::raw::{RawTensor, read_safetensors, write_safetensors};
use zoo_nn::{Checkpoint, NnError, PreprocessorConfig, Result};

/// The config file of an OpenCLIP export.
pub const CONFIG_FILE: &str = "open_clip_config.json";

#[derive(Debug, Deserialize)]
struct File {
    model_cfg: ModelCfg,
    #[serde(default)]
    preprocess_cfg: PreprocessCfg,
}

#[derive(Debug, Deserialize)]
struct ModelCfg {
    embed_dim: usize,
    #[serde(default)]
    quick_gelu: bool,
    vision_cfg: VisionCfg,
    text_cfg: TextCfg,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

fn d64() -> usize {
    64
}
fn d4() -> f64 {
    4.0
}
fn d77() -> usize {
    77
}
fn d49408() -> usize {
    49408
}
fn d512() -> usize {
    512
}
fn d8() -> usize {
    8
}
fn d12() -> usize {
    12
}

#[derive(Debug, Deserialize)]
struct VisionCfg {
    image_size: serde_json::Value,
    layers: serde_json::Value,
    width: usize,
    #[serde(default = "d64")]
    head_width: usize,
    #[serde(default = "d4")]
    mlp_ratio: f64,
    patch_size: usize,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct TextCfg {
    #[serde(default = "d77")]
    context_length: usize,
    #[serde(default = "d49408")]
    vocab_size: usize,
    #[serde(default = "d512")]
    width: usize,
    #[serde(default = "d8")]
    heads: usize,
    #[serde(default = "d12")]
    layers: usize,
    #[serde(default = "d4")]
    mlp_ratio: f64,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct PreprocessCfg {
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
    interpolation: Option<String>,
    resize_mode: Option<String>,
}

/// Whether `dir` is an OpenCLIP export (and not an HF folder).
pub fn is_open_clip(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() && !dir.join("config.json").is_file()
}

fn read(dir: &Path) -> Result<(File, PathBuf)> {
    let path = dir.join(CONFIG_FILE);
    Ok((zoo_nn::read_json(&path)?, path))
}

/// The [`ClipConfig`] of an OpenCLIP export; variants vlm-zoo does not map are named errors.
fn config(file: &File, path: &Path) -> Result<ClipConfig> {
    let m = &file.model_cfg;
    let bad = |what: String| {
        NnError::Config(format!("{}: {what} (vlm-zoo maps the ViT CLIP models of OpenCLIP)", path.display()))
    };
    let set = |map: &serde_json::Map<String, serde_json::Value>, k: &str| {
        map.get(k).is_some_and(|v| !v.is_null() && v != &serde_json::json!(false))
    };
    for k in ["timm_model_name", "attentional_pool", "no_ln_pre", "final_ln_after_pool", "ls_init_value"] {
        if set(&m.vision_cfg.other, k) {
            return Err(bad(format!("vision_cfg.{k} is not supported")));
        }
    }
    for k in
        ["hf_model_name", "no_causal_mask", "embed_cls", "final_ln_after_pool", "proj_bias", "ls_init_value"]
    {
        if set(&m.text_cfg.other, k) {
            return Err(bad(format!("text_cfg.{k} is not supported")));
        }
    }
    if let Some(p) = m.text_cfg.other.get("pool_type").and_then(|v| v.as_str())
        && p != "argmax"
    {
        return Err(bad(format!("text_cfg.pool_type {p:?} is not supported (argmax)")));
    }
    if set(&m.other, "init_logit_bias") {
        return Err(bad("a SigLIP-style export (init_logit_bias) is not supported".into()));
    }
    let layers = m
        .vision_cfg
        .layers
        .as_u64()
        .ok_or_else(|| bad("vision_cfg.layers is not a number (a ResNet tower)".into()))?;
    let image_size = match &m.vision_cfg.image_size {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_u64().unwrap_or(0),
        other => return Err(bad(format!("vision_cfg.image_size {other} (a square size is supported)"))),
    };
    let (v, t) = (&m.vision_cfg, &m.text_cfg);
    if v.head_width == 0 || !v.width.is_multiple_of(v.head_width) {
        return Err(bad(format!(
            "vision width {} is not a multiple of head_width {}",
            v.width, v.head_width
        )));
    }
    let act = if m.quick_gelu { "quick_gelu" } else { "gelu" };
    let json = serde_json::json!({
        "projection_dim": m.embed_dim,
        "vision_config": {
            "hidden_size": v.width, "intermediate_size": (v.width as f64 * v.mlp_ratio) as usize,
            "num_hidden_layers": layers, "num_attention_heads": v.width / v.head_width,
            "image_size": image_size, "patch_size": v.patch_size, "hidden_act": act, "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "vocab_size": t.vocab_size, "hidden_size": t.width,
            "intermediate_size": (t.width as f64 * t.mlp_ratio) as usize, "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "max_position_embeddings": t.context_length, "hidden_act": act,
            "layer_norm_eps": 1e-5, "eos_token_id": 2, "pad_token_id": 0,
        },
    });
    let config: ClipConfig = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// The image preprocessing `preprocess_cfg` describes.
pub fn preprocessor(dir: &Path) -> Result<PreprocessorConfig> {
    let (file, path) = read(dir)?;
    let size = config(&file, &path)?.vision_config.image_size as u32;
    let p = &file.preprocess_cfg;
    let mut c = PreprocessorConfig::square(size);
    c.resample = match p.interpolation.as_deref().unwrap_or("bicubic") {
        "bicubic" => 3,
        "bilinear" => 2,
        other => {
            return Err(NnError::Config(format!(
                "{}: preprocess_cfg.interpolation {other:?} (expected bicubic or bilinear)",
                path.display()
            )));
        }
    };
    match p.resize_mode.as_deref().unwrap_or("shortest") {
        "shortest" => {
            c.size = Some(SizeSpec::ShortestEdge { shortest_edge: size });
            c.do_center_crop = true;
            c.crop_size = Some(SizeSpec::Exact { height: size, width: size });
            c.crop_round_half_even = true;
        }
        "squash" => {}
        other => {
            return Err(NnError::Config(format!(
                "{}: preprocess_cfg.resize_mode {other:?} (expected shortest or squash)",
                path.display()
            )));
        }
    }
    let openai_mean = vec![0.481_454_66, 0.457_827_5, 0.408_210_73];
    let openai_std = vec![0.268_629_54, 0.261_302_6, 0.275_777_1];
    c.image_mean = Some(ChannelValues::Each(p.mean.clone().unwrap_or(openai_mean)));
    c.image_std = Some(ChannelValues::Each(p.std.clone().unwrap_or(openai_std)));
    Ok(c)
}

/// open_clip key -> CLIPModel key(s), with the tensor rearranged.
fn convert(t: RawTensor) -> Result<Vec<RawTensor>> {
    let name = t.name.clone();
    let block = |rest: &str| -> String {
        rest.replace("ln_1.", "layer_norm1.")
            .replace("ln_2.", "layer_norm2.")
            .replace("attn.out_proj.", "self_attn.out_proj.")
            .replace("mlp.c_fc.", "mlp.fc1.")
            .replace("mlp.c_proj.", "mlp.fc2.")
    };
    let tower = |prefix: &str, key: &str| -> Option<String> {
        key.strip_prefix("transformer.resblocks.")
            .map(|rest| format!("{prefix}.encoder.layers.{}", block(rest)))
    };
    let renamed = |n: &str| RawTensor { name: n.into(), ..t.clone() };
    let (prefix, key) = match name.strip_prefix("visual.") {
        Some(k) => ("vision_model", k),
        None => ("text_model", name.as_str()),
    };
    if let Some(mapped) = tower(prefix, key) {
        // Packed q/k/v of nn.MultiheadAttention.
        for (packed, leaf) in [(".attn.in_proj_weight", "weight"), (".attn.in_proj_bias", "bias")] {
            if let Some(layer) = mapped.strip_suffix(packed.trim_start_matches('.')) {
                let names: Vec<String> =
                    ["q", "k", "v"].iter().map(|q| format!("{layer}self_attn.{q}_proj.{leaf}")).collect();
                return t.split_rows(&names);
            }
        }
        return Ok(vec![renamed(&mapped)]);
    }
    Ok(vec![match (prefix, key) {
        ("vision_model", "class_embedding") => renamed("vision_model.embeddings.class_embedding"),
        ("vision_model", "conv1.weight") => renamed("vision_model.embeddings.patch_embedding.weight"),
        ("vision_model", "positional_embedding") => {
            renamed("vision_model.embeddings.position_embedding.weight")
        }
        ("vision_model", "ln_pre.weight") => renamed("vision_model.pre_layrnorm.weight"),
        ("vision_model", "ln_pre.bias") => renamed("vision_model.pre_layrnorm.bias"),
        ("vision_model", "ln_post.weight") => renamed("vision_model.post_layernorm.weight"),
        ("vision_model", "ln_post.bias") => renamed("vision_model.post_layernorm.bias"),
        ("vision_model", "proj") => t.transposed("visual_projection.weight")?,
        ("text_model", "token_embedding.weight") => renamed("text_model.embeddings.token_embedding.weight"),
        ("text_model", "positional_embedding") => renamed("text_model.embeddings.position_embedding.weight"),
        ("text_model", "ln_final.weight") => renamed("text_model.final_layer_norm.weight"),
        ("text_model", "ln_final.bias") => renamed("text_model.final_layer_norm.bias"),
        ("text_model", "text_projection") => t.transposed("text_projection.weight")?,
        ("text_model", "logit_scale") => renamed("logit_scale"),
        _ => return Ok(vec![t]), // reported as an unused key by the loader
    }])
}

/// Reads an OpenCLIP export: its [`ClipConfig`] and its weights converted to CLIPModel's keys.
pub fn open(dir: &Path) -> Result<(ClipConfig, Checkpoint)> {
    let (file, path) = read(dir)?;
    let config = config(&file, &path)?;
    let st = dir.join("open_clip_model.safetensors");
    let bin = dir.join("open_clip_pytorch_model.bin");
    let (weights, tensors) = if st.is_file() {
        (st.clone(), read_safetensors(&st)?)
    } else if bin.is_file() {
        let bytes = zoo_nn::load::pytorch::bin_to_safetensors(&bin)?;
        let tmp = zoo_nn::load::raw::read_safetensors_bytes(&bin, bytes)?;
        (bin.clone(), tmp)
    } else {
        return Err(NnError::MissingFile {
            dir: dir.to_path_buf(),
            what: "OpenCLIP weights".into(),
            expected: "open_clip_model.safetensors or open_clip_pytorch_model.bin".into(),
        });
    };
    let mut out = Vec::with_capacity(tensors.len() + 32);
    for t in tensors.into_iter().filter(|t| t.name != "attn_mask") {
        out.extend(convert(t)?);
    }
    let ckpt = Checkpoint::from_safetensors_bytes(dir, weights, write_safetensors(&out))?;
    Ok((config, ckpt))
}
