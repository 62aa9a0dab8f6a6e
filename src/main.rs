//! The `vlm-zoo` command line.
#![forbid(unsafe_code)]

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::io::Write;
use vlm_zoo::bench::BenchArgs;
use vlm_zoo::demo::DemoArgs;
use vlm_zoo::generate::GenerateArgs;
use vlm_zoo::inspect::InspectArgs;
use vlm_zoo::train::TrainArgs;
use vlm_zoo::zero_shot::ZeroShotArgs;

/// mimalloc keeps freed tensor buffers for reuse instead of unmapping them (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// PaliGemma, SigLIP, CLIP and Gemma in Rust, on Burn.
#[derive(Parser, Debug)]
#[command(name = "vlm-zoo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Each command's options are a library type (`src/args.rs` and the module the command runs).
#[derive(Subcommand, Debug)]
enum Command {
    /// Score images against texts with a SigLIP (sigmoid) or CLIP (softmax) checkpoint.
    ZeroShot(ZeroShotArgs),
    /// Generate text with a Gemma / Gemma 2 checkpoint, or with PaliGemma from --image + --prompt (streams to stdout).
    Generate(GenerateArgs),
    /// Train a CLIP or SigLIP on image-text pairs: CSV/TSV, JSONL, a folder (images + .txt, or an HF
    /// imagefolder), WebDataset tar shards or parquet files.
    Train(TrainArgs),
    /// Fine-tune PaliGemma on (image, prefix, suffix) rows (JSONL/CSV): attention, decoder, all, or LoRA.
    Finetune(vlm_zoo::finetune::FinetuneArgs),
    /// Quantise a checkpoint's weights to int8 once, saved next to it, so --dtype q8 loads them in place.
    Quantize(vlm_zoo::quantize::QuantizeArgs),
    /// Embed a dataset (any format train reads) with a SigLIP, SigLIP 2 or CLIP checkpoint into parquet
    /// files; --shard I/N takes one of N disjoint shares, a killed run resumes from its last file.
    Embed(vlm_zoo::embed::EmbedArgs),
    /// Serve a model over HTTP: OpenAI-compatible chat, generate, embeddings, zero-shot, a web page.
    Serve(vlm_zoo::serve::ServeArgs),
    /// Offline demo: train a tiny composed VLM to caption synthetic shapes, then caption held-out images.
    Demo(DemoArgs),
    /// Benchmark a folder, printing one JSON line (compare with scripts/bench_torch.py): Gemma and
    /// PaliGemma load, prefill, decode tokens/s and end-to-end time; SigLIP and CLIP image encoding
    /// (images/s per batch size) or, with --train, training steps/s.
    Bench(BenchArgs),
    /// Summarise a HuggingFace checkpoint folder (config and safetensors headers; no weights are read).
    Inspect(InspectArgs),
}

/// A line to stdout; a failed write (a closed pipe, a full disk) is returned, never a panic.
macro_rules! say {
    ($($t:tt)*) => {
        writeln!(std::io::stdout().lock(), $($t)*).map_err(write_error)?
    };
}

/// A line to stderr; if stderr itself cannot be written there is no one left to tell.
macro_rules! note {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

fn write_error(e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("cannot write to stdout")
}

fn main() {
    // mimalloc keeps freed pages too (zoo_kernels::alloc says why).
    zoo_nn::kernels::keep_freed_pages();
    if let Err(e) = run(Cli::parse()) {
        // A reader that went away (`vlm-zoo generate ... | head -1`) ends the process quietly
        // with the status SIGPIPE gives.
        if e.root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            std::process::exit(141);
        }
        // Library errors carry the file, key and expectation in their own message, most with
        // their cause in it already: a cause is added only when the message lacks it.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg = format!("{msg}: {c}");
            }
        }
        note!("error: {msg}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::ZeroShot(args) => zero_shot(&args),
        Command::Generate(args) => generate(&args),
        Command::Train(args) => train(&args),
        Command::Finetune(args) => finetune(&args),
        Command::Quantize(args) => {
            let q = vlm_zoo::quantize::quantize(&args)?;
            say!(
                "{} {} ({:.1} MB); --dtype q8 loads it in place",
                if q.existed { "up to date:" } else { "wrote" },
                q.path.display(),
                q.bytes as f64 / 1e6
            );
            Ok(())
        }
        Command::Embed(args) => embed(&args),
        Command::Serve(args) => {
            vlm_zoo::serve::serve(&args, |addr| {
                note!("serving {} on http://{addr} (Ctrl-C or SIGTERM to stop)", args.model);
            })?;
            note!("stopped");
            Ok(())
        }
        Command::Demo(args) => demo(&args),
        Command::Bench(args) => bench(&args),
        Command::Inspect(args) => inspect(&args),
    }
}

fn zero_shot(args: &ZeroShotArgs) -> Result<()> {
    let out = args.run()?;
    for note in &out.notes {
        note!("note: {note}");
    }
    if args.json {
        say!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let kind = if out.model_type == "siglip" { "sigmoid" } else { "softmax over texts" };
    say!("{} ({kind} probabilities)", out.model_type);
    for (image, probs) in args.images.iter().zip(&out.probs) {
        say!("{}", image.display());
        for (text, p) in args.texts.iter().zip(probs) {
            say!("  {p:>8.4}  {text}");
        }
    }
    Ok(())
}

fn embed(args: &vlm_zoo::embed::EmbedArgs) -> Result<()> {
    let r = args.run(|line| note!("{line}"))?;
    for note in &r.notes {
        note!("note: {note}");
    }
    let m = &r.metadata;
    if m.skipped > 0 {
        note!("note: skipped {} samples whose image did not decode or could not be read", m.skipped);
        for s in m.skipped_first.iter().take(5) {
            note!("note:   skipped {s}");
        }
    }
    let resumed =
        if r.resumed_parts > 0 { format!(", {} parts resumed", r.resumed_parts) } else { String::new() };
    say!(
        "{} rows ({} with text) in {} files{resumed}; embedded {} images in {:.1} s ({:.1} images/s); {}",
        m.count,
        m.with_text,
        m.files.len(),
        r.embedded,
        r.seconds,
        r.embedded as f64 / r.seconds.max(1e-9),
        if m.complete {
            format!("written to {}", r.dir.display())
        } else {
            format!("stopped early in {}", r.dir.display())
        }
    );
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let stream = !args.json && (args.prompts.len() == 1 || args.chat.is_some());
    let mut write_failed: Option<std::io::Error> = None;
    let out = args.run(|_, piece| {
        if stream && write_failed.is_none() {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                write_failed = Some(e);
            }
        }
    })?;
    if let Some(e) = write_failed {
        return Err(write_error(e));
    }
    for note in &out.notes {
        note!("note: {note}");
    }
    let out = out.outputs;
    for (i, o) in out.iter().enumerate() {
        let Some(path) = args.draw_path(i, out.len()) else { continue };
        let image = &args.images[i.min(args.images.len() - 1)];
        if let Some(masks) = &o.masks {
            vlm_zoo::draw::overlay::draw_masks(image, masks, &path)?;
            note!("note: wrote {}", path.display());
        } else if let Some(dets) = &o.detections {
            vlm_zoo::draw::overlay::draw_detections(image, dets, &path)?;
            note!("note: wrote {}", path.display());
        }
    }
    if args.json {
        let v = if out.len() == 1 { serde_json::to_value(&out[0])? } else { serde_json::to_value(&out)? };
        say!("{v}");
    } else if stream {
        say!();
    } else {
        for (p, o) in args.prompts.iter().zip(&out) {
            say!("{p}\n  -> {}", o.text);
        }
    }
    Ok(())
}

fn train(args: &TrainArgs) -> Result<()> {
    let report = vlm_zoo::train::train(args)?;
    if report.skipped_images + report.skipped_captions > 0 {
        note!(
            "note: skipped {} samples with missing/corrupt images and {} with empty captions",
            report.skipped_images,
            report.skipped_captions
        );
        for s in report.skipped_samples.iter().take(5) {
            note!("note:   skipped {s}");
        }
    }
    for (e, r) in report.recall.iter().enumerate() {
        say!(
            "epoch {:>3}  held-out recall i2t R@1 {:.3} R@5 {:.3}  t2i R@1 {:.3} R@5 {:.3}",
            e + 1,
            r.i2t[0],
            r.i2t[1],
            r.t2i[0],
            r.t2i[1]
        );
    }
    if let Some(acc) = report.zero_shot_accuracy {
        say!("zero-shot accuracy {acc:.3}");
    }
    say!("throughput: {}", report.throughput);
    say!(
        "{} steps, final loss {:.4}; model written to {}",
        report.steps,
        report.losses.last().copied().unwrap_or(f64::NAN),
        report.export.display()
    );
    Ok(())
}

fn finetune(args: &vlm_zoo::finetune::FinetuneArgs) -> Result<()> {
    let report = vlm_zoo::finetune::finetune(args, |line| {
        // Progress only: a failed write shows up in the summary line below.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    })?;
    if !report.skipped.is_empty() {
        note!("note: skipped {} rows whose image did not decode", report.skipped.len());
        for s in report.skipped.iter().take(5) {
            note!("note:   skipped {s}");
        }
    }
    say!(
        "{} steps, final loss {:.4}; fine-tuned model written to {}",
        report.steps,
        report.losses.last().copied().unwrap_or(f64::NAN),
        report.export.display()
    );
    Ok(())
}

fn demo(args: &DemoArgs) -> Result<()> {
    let r = vlm_zoo::demo::run(args, |e| {
        // Progress only: a failed write shows up in the summary lines below.
        let _ = writeln!(
            std::io::stdout().lock(),
            "epoch {:>2}/{}  loss {:.4}  ({:.0} s)",
            e.epoch,
            e.epochs,
            e.loss,
            e.seconds
        );
    })?;
    for (g, want) in &r.samples {
        say!("  {:<40} (truth: {want})", g);
    }
    say!(
        "held-out exact-caption accuracy: {:.1}% of {} unseen images (trained {:.0} s, final loss {:.4})",
        r.accuracy * 100.0,
        r.test_images,
        r.train_seconds,
        r.final_loss
    );
    say!(
        "model: {}  grid: {}  plot: {}",
        r.model_dir.display(),
        args.out.join("captions.png").display(),
        args.out.join("metrics.png").display()
    );
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    let r = args.run()?;
    say!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let s = args.run()?;
    if args.json {
        say!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    say!("model_type  {}", s.model_type.as_deref().unwrap_or("(none)"));
    say!("files       {}", s.files.join(", "));
    say!("tensors     {}", s.tensors);
    say!("parameters  {}", s.parameters);
    for (d, n) in &s.dtypes {
        say!("  {d:<6} {n}");
    }
    for (p, n) in &s.prefixes {
        say!("  {p:<48} {n}");
    }
    Ok(())
}
