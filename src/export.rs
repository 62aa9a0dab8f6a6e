//! The one HuggingFace exporter: a trained model as a folder that `vlm-zoo` and transformers both
//! load (config, weights with transformers' key names and layouts, tokenizer and processor
//! files). `vlm-zoo train`, `vlm-zoo finetune` and the demo all write through [`HfFolder`]:
//! [`contrastive`] (SigLIP / CLIP), [`paligemma_like`] (a fine-tuned PaliGemma: the source
//! folder's files with new weights) and [`composed_paligemma`] (a composed SigLIP + linear +
//! Gemma saved as PaliGemma).

use crate::compose::{VisionConfig, Vlm, VlmConfig};
use crate::fs::write_atomic;
use crate::models::{ModelConfig, Towers};
use burn::module::Module;
use serde_json::json;
use std::path::{Path, PathBuf};
use zoo_nn::{NnError, PreprocessorConfig, Result};

/// PaliGemma's weights under transformers' names: the vision tower's `self_attn.o_proj` is
/// `out_proj` there (Gemma says `o_proj`). SigLIP / CLIP: `models::Towers::save_hf`.
const PALIGEMMA_RENAMES: [(&str, &str); 1] =
    [(r"^(vision_tower\..*)\.self_attn\.o_proj\.", "$1.self_attn.out_proj.")];

/// An HF folder being written: straight into an existing folder (each file atomically), or as
/// a new folder filled beside its final name and renamed into place by [`HfFolder::finish`].
#[derive(Debug)]
pub struct HfFolder {
    dir: PathBuf,
    scratch: Option<PathBuf>,
}

impl HfFolder {
    /// Writes into `dir` (created if absent) next to whatever it holds (a run folder).
    pub fn into_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
        Ok(Self { dir: dir.to_path_buf(), scratch: None })
    }

    /// A new folder at `dir`, which appears whole (replacing an earlier export) at
    /// [`HfFolder::finish`].
    pub fn new_folder(dir: &Path) -> Result<Self> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| NnError::io(&tmp, e))?;
        Ok(Self { dir: dir.to_path_buf(), scratch: Some(tmp) })
    }

    /// Where file `name` is written.
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.as_ref().unwrap_or(&self.dir).join(name)
    }

    /// Writes `name` with `bytes`.
    pub fn bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(name), bytes)
    }

    /// Writes `name` as pretty-printed JSON.
    pub fn json(&self, name: &str, value: &impl serde::Serialize) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| NnError::Config(e.to_string()))?;
        self.bytes(name, &bytes)
    }

    /// Copies `from` as `name` (nothing when it is the very file).
    pub fn copy(&self, from: &Path, name: &str) -> Result<()> {
        if from == self.path(name) {
            return Ok(());
        }
        let bytes = std::fs::read(from).map_err(|e| NnError::io(from, e))?;
        self.bytes(name, &bytes)
    }

    /// Copies every file of `src` but its weights (config, tokenizer, processor and generation
    /// configs, as the user had them) and hidden files.
    pub fn copy_all_but_weights(&self, src: &Path) -> Result<()> {
        let is_weights = |n: &str| {
            n.ends_with(".safetensors")
                || n.ends_with(".safetensors.index.json")
                || n.ends_with(".bin")
                || n.ends_with(".pt")
        };
        for entry in std::fs::read_dir(src).map_err(|e| NnError::io(src, e))?.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_file() && !is_weights(&n) && !n.starts_with('.') {
                std::fs::copy(&path, self.path(&n)).map_err(|e| NnError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Writes a model with PaliGemma's layout as `model.safetensors` (f32) with transformers'
    /// key names.
    pub fn paligemma_weights<M: Module>(&self, model: &M) -> Result<()> {
        zoo_nn::load::save_safetensors(model, &self.path("model.safetensors"), &PALIGEMMA_RENAMES, &[])
    }

    /// Puts a new folder in place (replacing an earlier one) and returns where it is.
    pub fn finish(self) -> Result<PathBuf> {
        if let Some(tmp) = &self.scratch {
            if self.dir.exists() {
                std::fs::remove_dir_all(&self.dir).map_err(|e| NnError::io(&self.dir, e))?;
            }
            std::fs::rename(tmp, &self.dir).map_err(|e| NnError::io(&self.dir, e))?;
        }
        Ok(self.dir)
    }
}

/// A trained SigLIP or CLIP into `out`: config.json, model.safetensors, the tokenizer files from
/// `tok_dir`, preprocessor_config.json and processor_config.json. A SigLIP 2 NaFlex model (only
/// trained from its folder, which is then `tok_dir`) keeps that folder's NaFlex settings
/// (`max_num_patches`, `patch_size`).
pub fn contrastive(
    out: &Path,
    model: &Towers,
    config: &ModelConfig,
    proc: &PreprocessorConfig,
    tok_dir: &Path,
) -> Result<PathBuf> {
    let folder = HfFolder::into_dir(out)?;
    model.save_hf(&folder.path("model.safetensors"))?;
    folder.json("config.json", &config.to_hf_json())?;
    let src = tok_dir.join("tokenizer.json");
    if src.is_file() {
        folder.copy(&src, "tokenizer.json")?;
    }
    // What transformers' AutoProcessor needs to give `zero-shot`'s numbers with the documented
    // calls: `model_max_length` (SigLIP pools the last of `padding="max_length"` positions),
    // right padding, the special tokens, and the processor class.
    let tc = tok_dir.join("tokenizer_config.json");
    let mut tok_config: serde_json::Value = if tc.is_file() { zoo_nn::read_json(&tc)? } else { json!({}) };
    if !tok_config.is_object() {
        tok_config = json!({});
    }
    tok_config["model_max_length"] = json!(config.text_len());
    tok_config["padding_side"] = json!("right");
    if tok_config.get("tokenizer_class").is_none() {
        tok_config["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    }
    let (processor, image_processor) = match config {
        ModelConfig::Siglip(_) => ("SiglipProcessor", "SiglipImageProcessor"),
        ModelConfig::Siglip2(_) => ("Siglip2Processor", "Siglip2ImageProcessor"),
        ModelConfig::Clip(_) => ("CLIPProcessor", "CLIPImageProcessor"),
    };
    tok_config["processor_class"] = json!(processor);
    if let ModelConfig::Siglip(_) | ModelConfig::Siglip2(_) = config {
        // SigLIP pools the last position, so the mask matters: the tokenizer returns one exactly
        // when training used it (zoo_nn::TextMask's rule), and transformers' documented call
        // then passes what vlm-zoo's zero-shot does.
        let masked = zoo_nn::TextTokenizer::from_dir(tok_dir)?.text_mask();
        tok_config["model_input_names"] =
            if masked { json!(["input_ids", "attention_mask"]) } else { json!(["input_ids"]) };
    }
    folder.json("tokenizer_config.json", &tok_config)?;
    let mut pre_json = serde_json::to_value(proc).map_err(|e| NnError::Config(e.to_string()))?;
    let src_pre = tok_dir.join("preprocessor_config.json");
    if let (ModelConfig::Siglip2(_), true) = (config, src_pre.is_file()) {
        let src: serde_json::Value = zoo_nn::read_json(&src_pre)?;
        if let (Some(obj), Some(src)) = (pre_json.as_object_mut(), src.as_object()) {
            for (key, value) in src {
                obj.entry(key.clone()).or_insert_with(|| value.clone());
                if matches!(key.as_str(), "max_num_patches" | "patch_size") {
                    obj.insert(key.clone(), value.clone());
                }
            }
        }
    }
    pre_json["image_processor_type"] = json!(image_processor);
    pre_json["processor_class"] = json!(processor);
    folder.json("preprocessor_config.json", &pre_json)?;
    folder.bytes("processor_config.json", json!({"processor_class": processor}).to_string().as_bytes())?;
    folder.finish()
}

/// A model with PaliGemma's key layout as a new HF folder at `dir`: every file of the source
/// folder `src` but its weights, and the weights as one `model.safetensors` (f32). Written beside
/// `dir` and renamed into place.
pub fn paligemma_like<M: Module>(src: &Path, dir: &Path, model: &M) -> Result<PathBuf> {
    let folder = HfFolder::new_folder(dir)?;
    folder.copy_all_but_weights(src)?;
    folder.paligemma_weights(model)?;
    folder.finish()
}

/// A SigLIP + linear + Gemma composition as an HF PaliGemma folder at `dir`, with the tokenizer
/// files of `tok_dir` and the image preprocessing `pre`.
pub fn composed_paligemma(
    model: &Vlm,
    config: &VlmConfig,
    dir: &Path,
    tok_dir: &Path,
    pre: &PreprocessorConfig,
) -> Result<PathBuf> {
    let VisionConfig::Siglip(vision) = &config.vision else {
        return Err(NnError::Config("only a SigLIP tower saves as PaliGemma".into()));
    };
    if model.multi_modal_projector.linear_2.is_some() {
        return Err(NnError::Config("only a linear projector saves as PaliGemma".into()));
    }
    let folder = HfFolder::into_dir(dir)?;
    let text = config.text_config()?;
    let mut vision_json = serde_json::to_value(vision).map_err(|e| NnError::Config(e.to_string()))?;
    vision_json["model_type"] = json!("siglip_vision_model");
    vision_json["projection_dim"] = json!(text.hidden_size);
    let cfg = json!({
        "model_type": "paligemma", "architectures": ["PaliGemmaForConditionalGeneration"],
        "vision_config": vision_json, "text_config": config.text, "image_token_index": config.image_token_index,
        "projection_dim": text.hidden_size, "hidden_size": text.hidden_size, "vocab_size": text.vocab_size,
    });
    folder.json("config.json", &cfg)?;
    folder.paligemma_weights(model)?;
    folder.json("preprocessor_config.json", pre)?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        folder.copy(&tok_dir.join(f), f)?;
    }
    let generation = json!({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0});
    folder.bytes("generation_config.json", generation.to_string().as_bytes())?;
    folder.finish()
}
