//! `vlm-zoo inspect`: what a checkpoint folder holds, read from its headers only.

use crate::args::ModelArgs;
use crate::models::Family;
use std::collections::BTreeMap;
use zoo_nn::{Checkpoint, Result};

/// `vlm-zoo inspect`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// The checkpoint.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl InspectArgs {
    /// Summarises the checkpoint.
    pub fn run(&self) -> Result<Summary> {
        inspect(&self.model.model.resolve()?)
    }
}

/// A summary of a checkpoint folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// `model_type` from config.json, if any.
    pub model_type: Option<String>,
    /// The weight files.
    pub files: Vec<String>,
    /// Number of tensors.
    pub tensors: usize,
    /// Total number of elements.
    pub parameters: u64,
    /// Elements per dtype.
    pub dtypes: BTreeMap<String, u64>,
    /// Elements per top-level key prefix (up to the first numbered segment).
    pub prefixes: BTreeMap<String, u64>,
}

/// Reads the headers (no tensor data) and config.json of `dir`.
pub fn inspect(dir: &std::path::Path) -> Result<Summary> {
    let ckpt = Checkpoint::open(dir)?;
    // The config of a family vlm-zoo runs is checked as loading would check it: an invalid one
    // is an error here too. Any other model_type is summarised unchecked.
    if let Some(family) = Family::detect(dir)? {
        family.check_config(dir)?;
    }
    let config: Option<serde_json::Value> = ckpt.read_json("config.json").ok();
    let model_type =
        config.as_ref().and_then(|c| c.get("model_type")).and_then(|v| v.as_str()).map(str::to_string);
    let mut dtypes = BTreeMap::new();
    let mut prefixes = BTreeMap::new();
    let mut parameters = 0u64;
    for (key, info) in ckpt.tensors() {
        let n: u64 = info.shape.iter().map(|&d| d as u64).product();
        parameters += n;
        *dtypes.entry(info.dtype.clone()).or_default() += n;
        let prefix: Vec<&str> = key.split('.').take_while(|s| s.parse::<usize>().is_err()).take(3).collect();
        *prefixes.entry(prefix.join(".")).or_default() += n;
    }
    Ok(Summary {
        model_type,
        files: ckpt
            .files()
            .iter()
            .map(|f| f.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()))
            .collect(),
        tensors: ckpt.tensors().len(),
        parameters,
        dtypes,
        prefixes,
    })
}
