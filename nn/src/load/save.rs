//! Writing modules as HF-layout safetensors files.

use super::adapters::VectorAsScalar;
use crate::error::{NnError, Result};
use burn_store::{BurnToPyTorchAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, SafetensorsStore};
use regex::Regex;
use std::path::Path;

/// Writes a module as an HF-layout safetensors file, atomically (a scratch file renamed into
/// place, so a failed save leaves any previous file intact): Burn's `[in, out]` Linear weights
/// and norm `gamma`/`beta` go back to PyTorch's layout and names, `renames` (regex, replacement)
/// turn module paths into checkpoint keys, and `[1]` parameters whose path matches a `scalars`
/// regex are written as PyTorch scalars.
pub fn save_safetensors<M: ModuleSnapshot>(
    module: &M,
    path: &Path,
    renames: &[(&str, &str)],
    scalars: &[&str],
) -> Result<()> {
    let compile = |p: &str| Regex::new(p).map_err(|e| NnError::Config(format!("save pattern '{p}': {e}")));
    let scalars = scalars.iter().map(|p| compile(p)).collect::<Result<Vec<_>>>()?;
    let renames =
        renames.iter().map(|(f, t)| compile(f).map(|r| (r, t.to_string()))).collect::<Result<Vec<_>>>()?;
    let stem = path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let scratch = path.with_file_name(format!(".{stem}.tmp-{}.safetensors", std::process::id()));
    let mut store = SafetensorsStore::from_file(&scratch)
        .with_to_adapter(BurnToPyTorchAdapter.chain(VectorAsScalar(scalars)))
        .remap(KeyRemapper::from_compiled_patterns(renames))
        .skip_enum_variants(true)
        .overwrite(true)
        .metadata("format", "pt");
    let saved = module
        .save_into(&mut store)
        .map_err(|e| NnError::Save { path: path.to_path_buf(), reason: e.to_string() })
        .and_then(|_| std::fs::rename(&scratch, path).map_err(|e| NnError::io(path, e)));
    if saved.is_err() {
        let _ = std::fs::remove_file(&scratch);
    }
    saved
}
