//! Command-line arguments shared by several commands, as clap `Args` structs the library owns:
//! where the model comes from ([`ModelSource`]) and what computes ([`DeviceArgs`],
//! [`ComputeArgs`]). Each command's own arguments live beside the code they configure
//! (`zero_shot::ZeroShotArgs`, `generate::GenerateArgs`, `train::TrainArgs`, `demo::DemoArgs`,
//! `bench::BenchArgs`); `src/main.rs` only flattens and dispatches them.

use burn::prelude::*;
use burn::tensor::DType;
use std::path::{Path, PathBuf};
use zoo_nn::Result;

/// A checkpoint as users name it: a local folder, or a hub id (`org/name[@revision]`) found in
/// the HF cache or downloaded into it.
/// Every command resolves it the same way ([`crate::hub::resolve_model`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource(pub PathBuf);

impl ModelSource {
    /// The local folder: as given, or the (downloaded) snapshot of a hub id.
    pub fn resolve(&self) -> Result<PathBuf> {
        crate::hub::resolve_model(&self.0)
    }
}

impl std::str::FromStr for ModelSource {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self(PathBuf::from(s)))
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

impl<P: AsRef<Path>> From<P> for ModelSource {
    fn from(p: P) -> Self {
        Self(p.as_ref().to_path_buf())
    }
}

/// `--model`: the checkpoint a command runs.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The checkpoint: a folder (config.json, weights, tokenizer files) or a hub id
    /// (org/name[@revision]), downloaded into the HF cache when it is not there.
    #[arg(long)]
    pub model: ModelSource,
}

/// `--text-mask`: whether a SigLIP text tower sees the padding mask.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct TextMaskArgs {
    /// Whether SigLIP text towers see the padding mask: auto (what transformers 5's documented
    /// call does with this tokenizer: on when it returns an attention_mask, i.e. Gemma/SigLIP 2
    /// and tokenizer.json-backed tokenizers; off for SiglipTokenizer, as the google/siglip-*
    /// repositories and big_vision), on, or off. CLIP always masks.
    #[arg(long = "text-mask", value_enum, default_value_t = TextMaskArg::Auto)]
    pub text_mask: TextMaskArg,
}

/// The values of `--text-mask`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TextMaskArg {
    /// The tokenizer's own rule (transformers 5's documented call).
    #[default]
    Auto,
    /// Always mask the padding.
    On,
    /// Never mask it.
    Off,
}

impl TextMaskArgs {
    /// The library's value.
    pub fn mask(&self) -> zoo_nn::TextMask {
        match self.text_mask {
            TextMaskArg::Auto => zoo_nn::TextMask::Auto,
            TextMaskArg::On => zoo_nn::TextMask::On,
            TextMaskArg::Off => zoo_nn::TextMask::Off,
        }
    }
}

/// `--device`: where a command computes.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct DeviceArgs {
    /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        Self { device: "cpu".into() }
    }
}

impl DeviceArgs {
    /// The device (f32).
    pub fn device(&self) -> Result<Device> {
        zoo_nn::parse_device(&self.device)
    }
}

/// `--device` and `--dtype`: where and in which float type an inference command computes.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ComputeArgs {
    /// The device.
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Compute dtype: f32, bf16, f16 or q8. On the CPU, bf16 and q8 keep the Linear weights
    /// packed in bf16 or int8 (per-output scales) for the host kernels, activations in f32
    /// (rounded to bf16 at the products where the kernel measured fastest on this CPU does so:
    /// AMX, AVX512-BF16);
    /// on CUDA (and f16 on flex) bf16/f16 compute in that dtype. q8 runs on the CPU only.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl Default for ComputeArgs {
    fn default() -> Self {
        Self { device: DeviceArgs::default(), dtype: "f32".into() }
    }
}

impl ComputeArgs {
    /// The dtype.
    pub fn dtype(&self) -> Result<DType> {
        zoo_nn::parse_dtype(&self.dtype)
    }

    /// The device with the dtype as its default float type.
    pub fn device(&self) -> Result<Device> {
        zoo_nn::device_with_dtype(&self.device.device, self.dtype()?)
    }

    /// The device and, on the CPU with `bf16`/`q8`, the packed weight format.
    pub fn compute(&self) -> Result<zoo_nn::Compute> {
        zoo_nn::Compute::parse(&self.device.device, &self.dtype)
    }
}

/// Parses one command's arguments as the CLI would (for tests of the defaults).
#[cfg(test)]
pub(crate) fn parse_from<A: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> A {
    #[derive(clap::Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    <Cli<A> as clap::Parser>::parse_from(argv).args
}
