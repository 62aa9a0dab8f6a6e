//! Fine-tunes the tiny PaliGemma fixture (random weights, 28-pixel images) on a synthetic
//! detection task, `detect circle` -> `<loc..>x4 circle`, with the shape in one of four corners,
//! and prints held-out exact match rising from 0: full fine-tuning of the decoder, then LoRA.
//!
//!     cargo run --release --example finetune_detection [-- --quick] [--out DIR]
//!
//! With `--out` the two runs' folders (fine-tuned HF folder, losses, metrics.png) are kept there.
use vlm_zoo::finetune::{FinetuneArgs, Trainable};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let keep =
        args.iter().position(|a| a == "--out").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    if let Some(out) = &keep
        && out.exists()
    {
        anyhow::bail!("{}: already exists (give a new folder)", out.display());
    }
    let tmp = tempfile::tempdir()?;
    let root = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paligemma-a");
    let (n, epochs) = if quick { (96, 2) } else { (400, 8) };
    let data = vlm_zoo::synthetic::write_detection_dataset(&root.join("data"), n, 56, 7)?;
    let runs = [
        (
            "full (--train decoder)",
            FinetuneArgs { train: Trainable::Decoder, lr: Some(3e-3), ..Default::default() },
        ),
        (
            "LoRA (rank 8 on q,k,v,o,gate,up,down)",
            FinetuneArgs {
                lora_rank: Some(8),
                lora_alpha: Some(16.0),
                lora_targets: vlm_zoo::finetune::LORA_TARGETS.map(String::from).to_vec(),
                lr: Some(1e-2),
                ..Default::default()
            },
        ),
    ];
    for (i, (name, base)) in runs.into_iter().enumerate() {
        println!("== {name}");
        let args = FinetuneArgs {
            model: model.clone().into(),
            data: data.clone(),
            out: root.join(format!("run-{i}")),
            epochs,
            batch_size: 16,
            warmup_steps: 10,
            samples: 5,
            progress: false,
            ..base
        };
        let report = vlm_zoo::finetune::finetune(&args, |line| println!("{line}"))?;
        println!(
            "{name}: held-out exact match {:.1}% after {} steps; {} trainable parameters; model in {}",
            100.0 * report.exact_match.last().copied().unwrap_or(0.0),
            report.steps,
            report.trainable_params,
            report.export.display()
        );
    }
    Ok(())
}
