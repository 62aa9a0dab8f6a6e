//! Trains a tiny CLIP on synthetic coloured shapes and prints held-out recall rising far above
//! chance: `cargo run --release --example train_contrastive [-- --quick] [--out DIR]`. With
//! `--out` the run's folder (the HF export, losses.csv, metrics.csv, metrics.png) is kept there.
use vlm_zoo::models::Arch;
use vlm_zoo::train::TrainArgs;

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
    let dir = tempfile::tempdir()?;
    let (n, epochs) = if quick { (300, 2) } else { (2000, 12) };
    let data = vlm_zoo::synthetic::write_dataset(&dir.path().join("data"), n, 32, 1)?;
    let out = keep.clone().unwrap_or_else(|| dir.path().join("clip"));
    let report = vlm_zoo::train::train(&TrainArgs {
        arch: Arch::Clip,
        data,
        out,
        epochs,
        batch_size: 64,
        lr: 2e-3,
        warmup_steps: 20,
        val_fraction: 0.1,
        vocab_size: 300,
        progress: !quick,
        ..Default::default()
    })?;
    // Chance for image->text R@1 is 1/held-out size.
    let held_out = (n as f64 * 0.1).round();
    println!("chance R@1 = {:.3}", 1.0 / held_out);
    for (e, r) in report.recall.iter().enumerate() {
        println!("epoch {:>2}: image->text R@1 {:.3}  R@5 {:.3}", e + 1, r.i2t[0], r.i2t[1]);
    }
    if let Some(out) = keep {
        println!("plot: {}", out.join("metrics.png").display());
    }
    Ok(())
}
