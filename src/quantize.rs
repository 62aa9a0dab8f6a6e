//! `vlm-zoo quantize`: a checkpoint's Linear weights (and Gemma's embeddings) quantised to int8
//! once and saved next to it (`model.q8.safetensors` + `model.q8.json`), so `--dtype q8` loads
//! them in place instead of quantising at every load. The file is derived data: made again when
//! the checkpoint's files change (their sizes and times are recorded).

use crate::args::ModelArgs;
use crate::models::{Family, Towers};
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
    // Loading with `save_q8` writes the file: every family has q8 weights.
    match Family::of(&dir)? {
        Family::Gemma | Family::Gemma2 => drop(zoo_gemma::load_gemma(&dir, spec, &device)?),
        Family::PaliGemma => drop(zoo_paligemma::load_paligemma(&dir, spec, &device)?),
        Family::Siglip | Family::Siglip2NaFlex | Family::Clip => drop(Towers::load(&dir, spec, &device)?),
    }
    let meta = std::fs::metadata(&path).map_err(|e| NnError::io(&path, e))?;
    let existed = before.is_some() && before == meta.modified().ok();
    Ok(Quantized { path, bytes: meta.len(), existed })
}
