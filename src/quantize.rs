//! `vlm-zoo quantize`: a checkpoint's Linear weights (and Gemma's embeddings) quantised to int8
//! once and saved next to it (`model.q8.safetensors` + `model.q8.json`), so `--dtype q8` loads
//! them in place instead of quantising at every load. The file is derived data: made again when
//! the checkpoint's files change (their sizes and times are recorded).

use crate::args::ModelArgs;
use std::path::PathBuf;
use zoo_nn::kernels::gemm::WeightFormat;
use zoo_nn::{LoadSpec, NnError, Result};

/// `vlm-zoo quantize`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// The checkpoint (its folder must be writable).
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What [`quantize`] did.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Whether an up-to-date file was already there (nothing was written).
    pub existed: bool,
}

/// Quantises the checkpoint and saves the result beside it.
pub fn quantize(args: &QuantizeArgs) -> Result<Quantized> {
    let dir = args.model.model.resolve()?;
    let path = dir.join(zoo_nn::load::Q8_FILE);
    let before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let spec = LoadSpec { save_q8: true, ..LoadSpec::packed(WeightFormat::Q8) };
    let device = zoo_nn::parse_device("cpu")?;
    match zoo_nn::model_type(&dir)?.as_str() {
        "gemma" | "gemma2" => drop(zoo_gemma::load_gemma(&dir, spec, &device)?),
        "paligemma" => drop(zoo_paligemma::load_paligemma(&dir, spec, &device)?),
        "siglip" | "clip" => drop(crate::models::Towers::load(&dir, spec, &device)?),
        "siglip2" => drop(zoo_siglip::naflex::load_siglip2(&dir, spec, &device)?),
        other => {
            return Err(NnError::Config(format!(
                "{}: model_type '{other}' has no q8 weights",
                dir.display()
            )));
        }
    }
    let meta = std::fs::metadata(&path).map_err(|e| NnError::io(&path, e))?;
    let existed = before.is_some() && before == meta.modified().ok();
    Ok(Quantized { path, bytes: meta.len(), existed })
}
