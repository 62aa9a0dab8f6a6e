//! [`Family`]: the one `model_type` -> family dispatch, and what each family can do.

use std::path::Path;
use zoo_nn::{NnError, Result};

/// Which model is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Sigmoid loss, learnable temperature and bias.
    Siglip,
    /// Softmax (InfoNCE) loss, learnable temperature.
    Clip,
}

/// A model family vlm-zoo runs, one per `model_type` value of config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `siglip`: SigLIP (1, or 2 at a fixed resolution), sigmoid image-text scores.
    Siglip,
    /// `siglip2`: SigLIP 2 NaFlex (each image at its own aspect ratio, up to a patch budget).
    Siglip2NaFlex,
    /// `clip`: CLIP, softmax over the texts; an OpenCLIP export (`open_clip_config.json`, no
    /// config.json) is a `clip` folder too.
    Clip,
    /// `gemma`: Gemma 1, text generation.
    Gemma,
    /// `gemma2`: Gemma 2, text generation.
    Gemma2,
    /// `paligemma`: PaliGemma 1 and 2, text from an image and a prompt.
    PaliGemma,
}

impl Family {
    /// Every family, in the order error messages list them.
    pub const ALL: [Family; 6] =
        [Self::Siglip, Self::Siglip2NaFlex, Self::Clip, Self::Gemma, Self::Gemma2, Self::PaliGemma];

    /// The `model_type` value of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Siglip => "siglip",
            Self::Siglip2NaFlex => "siglip2",
            Self::Clip => "clip",
            Self::Gemma => "gemma",
            Self::Gemma2 => "gemma2",
            Self::PaliGemma => "paligemma",
        }
    }

    /// The family's name as people write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Siglip => "SigLIP",
            Self::Siglip2NaFlex => "SigLIP 2",
            Self::Clip => "CLIP",
            Self::Gemma => "Gemma",
            Self::Gemma2 => "Gemma 2",
            Self::PaliGemma => "PaliGemma",
        }
    }

    /// The family whose `model_type` is `value`, if vlm-zoo runs it.
    pub fn from_model_type(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == value)
    }

    /// The family of the checkpoint in `dir` (its config.json's `model_type`; an OpenCLIP export
    /// is [`Family::Clip`]), or `None` when vlm-zoo does not run that `model_type`. A folder
    /// without a readable `model_type` is an error.
    pub fn detect(dir: &Path) -> Result<Option<Self>> {
        Ok(Self::from_model_type(&zoo_nn::model_type(dir)?))
    }

    /// The family of the checkpoint in `dir`; a `model_type` vlm-zoo does not run is a
    /// one-line error naming the folder, the value and the supported ones.
    pub fn of(dir: &Path) -> Result<Self> {
        let value = zoo_nn::model_type(dir)?;
        Self::from_model_type(&value).ok_or_else(|| {
            NnError::Config(format!(
                "{}: model_type '{value}' is not supported (vlm-zoo runs {})",
                dir.display(),
                Self::list(|_| true)
            ))
        })
    }

    /// The family of the checkpoint in `dir` when `can` holds for it: otherwise
    /// [`Family::unsupported`]'s error.
    pub fn of_for(dir: &Path, command: &str, can: fn(Family) -> bool) -> Result<Self> {
        let family = Self::of(dir)?;
        if can(family) { Ok(family) } else { Err(family.unsupported(dir, command, can)) }
    }

    /// The one-line error of `command` refusing the folder `dir` of this family: it names the
    /// folder, the `model_type` and the families for which `can` holds (those `command` runs).
    pub fn unsupported(self, dir: &Path, command: &str, can: fn(Family) -> bool) -> NnError {
        NnError::Config(format!(
            "{}: model_type '{self}' is not supported by {command} (expected {})",
            dir.display(),
            Self::list(can)
        ))
    }

    /// `a, b or c`: the `model_type`s of the families for which `can` holds.
    pub fn list(can: fn(Family) -> bool) -> String {
        let names: Vec<&str> = Self::ALL.into_iter().filter(|&f| can(f)).map(Self::model_type).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }

    /// Generates text ([`crate::generate::Generator`]: `generate`, the server's chat and
    /// generate endpoints).
    pub fn generates(self) -> bool {
        matches!(self, Self::Gemma | Self::Gemma2 | Self::PaliGemma)
    }

    /// Generates from an image and a prompt (every request needs an image).
    pub fn needs_image(self) -> bool {
        matches!(self, Self::PaliGemma)
    }

    /// Scores images against texts and embeds both ([`crate::zero_shot::Scorer`] over
    /// [`Towers`]: `zero-shot`, `bench`'s image encoding, the server's zero-shot and
    /// embeddings endpoints).
    pub fn is_contrastive(self) -> bool {
        matches!(self, Self::Siglip | Self::Siglip2NaFlex | Self::Clip)
    }

    /// The architecture `train` trains (`train --init`, `bench --train`); `None` for the
    /// generators (which `finetune` covers for PaliGemma). SigLIP 2 NaFlex trains as `siglip`
    /// from its folder (`--init`), its images as NaFlex patches.
    pub fn arch(self) -> Option<Arch> {
        match self {
            Self::Siglip | Self::Siglip2NaFlex => Some(Arch::Siglip),
            Self::Clip => Some(Arch::Clip),
            Self::Gemma | Self::Gemma2 | Self::PaliGemma => None,
        }
    }

    /// Trains contrastively (see [`Family::arch`]).
    pub fn trains(self) -> bool {
        self.arch().is_some()
    }

    /// Trains on fixed-size image batches (`bench --train` times those steps; SigLIP 2 NaFlex
    /// trains on NaFlex patches, through `train --init` only).
    pub fn trains_fixed_size(self) -> bool {
        matches!(self, Self::Siglip | Self::Clip)
    }

    /// Checks the config of the folder `dir` of this family as loading would, without reading
    /// any weights (`inspect`).
    pub fn check_config(self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        match self {
            Self::Siglip => zoo_nn::read_json::<zoo_siglip::SiglipConfig>(&path)?.validate(),
            Self::Siglip2NaFlex => zoo_siglip::naflex::read_config(dir).map(drop),
            // An OpenCLIP export's config is checked when it loads (zoo_clip::open_clip).
            Self::Clip if zoo_clip::open_clip::is_open_clip(dir) => Ok(()),
            Self::Clip => zoo_nn::read_json::<zoo_clip::ClipConfig>(&path)?.validate(),
            Self::Gemma | Self::Gemma2 => {
                zoo_gemma::GemmaConfig::from_value(zoo_nn::read_json(&path)?).map(drop)
            }
            Self::PaliGemma => zoo_paligemma::load::read_config(dir).map(drop),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Towers;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    #[test]
    fn every_model_type_names_one_family() {
        for f in Family::ALL {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
            assert_eq!(f.to_string(), f.model_type());
        }
        assert_eq!(Family::from_model_type("siglip_vision_model"), None);
        assert_eq!(Family::list(Family::is_contrastive), "siglip, siglip2 or clip");
        assert_eq!(Family::list(Family::needs_image), "paligemma");
    }

    #[test]
    fn fixtures_are_read_as_their_family() {
        for (name, family) in [
            ("siglip-a", Family::Siglip),
            ("hub-siglip2", Family::Siglip),
            ("hub-siglip2-naflex", Family::Siglip2NaFlex),
            ("clip-a", Family::Clip),
            ("hub-open-clip", Family::Clip),
            ("gemma-gqa", Family::Gemma),
            ("gemma2-a", Family::Gemma2),
            ("paligemma-a", Family::PaliGemma),
            ("paligemma2-a", Family::PaliGemma),
        ] {
            assert_eq!(Family::of(&fixture(name)).unwrap(), family, "{name}");
            family.check_config(&fixture(name)).unwrap();
        }
        let dir = fixture("siglip-vision-nohead");
        assert_eq!(Family::detect(&dir).unwrap(), None);
        let e = Family::of(&dir).unwrap_err().to_string();
        assert!(e.contains("siglip-vision-nohead") && e.contains("'siglip_vision_model'"), "{e}");
        assert!(e.contains("siglip, siglip2, clip, gemma, gemma2 or paligemma"), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = Family::of_for(&fixture("gemma-gqa"), "zero-shot", Family::is_contrastive).unwrap_err();
        assert!(
            e.to_string()
                .contains("'gemma' is not supported by zero-shot (expected siglip, siglip2 or clip)")
        );
    }

    /// Every contrastive family's towers write the folder they were loaded from: a SigLIP 2
    /// NaFlex model saved as HF and loaded again scores as before.
    #[test]
    fn towers_write_what_they_load() {
        use zoo_nn::ContrastiveModel;
        let device = zoo_nn::parse_device("cpu").unwrap();
        for name in ["siglip-a", "hub-siglip2-naflex", "clip-a"] {
            let (towers, config) = Towers::load(&fixture(name), burn::tensor::DType::F32, &device).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            towers.save_hf(&tmp.path().join("model.safetensors")).unwrap();
            std::fs::write(tmp.path().join("config.json"), config.to_hf_json().to_string()).unwrap();
            let (again, config_again) = Towers::load(tmp.path(), burn::tensor::DType::F32, &device).unwrap();
            assert_eq!(config_again, config, "{name}");
            let s = config.image_size();
            let pixels = burn::tensor::Tensor::<4>::ones([1, 3, s, s], &device);
            let (a, b) = (towers.encode_image(pixels.clone()), again.encode_image(pixels));
            assert_eq!(zoo_nn::host::to_vec(a), zoo_nn::host::to_vec(b), "{name}");
        }
    }

    /// Each capability is what the loaders accept: a family that generates loads as a
    /// Generator and no other does; likewise contrastive families and the Scorer and Towers.
    #[test]
    fn capabilities_match_the_loaders() {
        let compute = zoo_nn::Compute::on(zoo_nn::parse_device("cpu").unwrap());
        for name in [
            "siglip-a",
            "hub-siglip2-naflex",
            "clip-a",
            "hub-open-clip",
            "gemma-gqa",
            "gemma2-a",
            "paligemma-a",
        ] {
            let dir = fixture(name);
            let family = Family::of(&dir).unwrap();
            let generator = crate::generate::Generator::load(&dir, &compute, None);
            assert_eq!(generator.is_ok(), family.generates(), "{name}");
            if let Ok(g) = generator {
                assert_eq!(g.needs_image(), family.needs_image(), "{name}");
            }
            assert_eq!(
                crate::zero_shot::Scorer::load(&dir, &compute).is_ok(),
                family.is_contrastive(),
                "{name}"
            );
            let towers = Towers::load(&dir, burn::tensor::DType::F32, &compute.device);
            assert_eq!(
                towers.map(|(_, c)| c.family()).ok(),
                family.is_contrastive().then_some(family),
                "{name}"
            );
        }
    }
}
