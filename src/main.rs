//! The `vlm-zoo` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc keeps freed tensor buffers for reuse instead of unmapping them (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc never to return freed pages to the OS (`mi_option_purge_delay` = -1): each
/// training step frees and reallocates the same large buffers, and with the default 10 ms
/// delay the kernel zeroed fresh pages for 24% of a SigLIP-B/16 step (perf); measured 1.29x
/// training steps/s. Peak memory is unchanged (the pages are reused, not added).
#[allow(unsafe_code)]
fn keep_freed_pages() {
    // mimalloc v2's `mi_option_e`: show_errors = 0, ..., eager_commit_delay = 14, purge_delay = 15
    // (libmimalloc-sys is pinned in Cargo.toml).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set stores one integer in mimalloc's option table; any value is valid
    // for this option and it is called once, first thing in main, before other threads exist.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// PaliGemma, SigLIP, CLIP and Gemma in Rust, on Burn.
#[derive(Parser, Debug)]
#[command(name = "vlm-zoo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score images against texts with a SigLIP (sigmoid) or CLIP (softmax) checkpoint.
    ZeroShot {
        /// The checkpoint folder (config.json, model.safetensors, tokenizer.json, ...).
        #[arg(long)]
        model: PathBuf,
        /// An image file; repeat for several.
        #[arg(long = "image", required = true)]
        images: Vec<PathBuf>,
        /// A candidate text; repeat for several.
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Compute dtype: f32, bf16 or f16 (bf16/f16 on flex or cuda; ndarray is f32 only).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Generate text with a Gemma / Gemma 2 checkpoint, or with PaliGemma from --image + --prompt (streams to stdout).
    Generate {
        /// The checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// The prompt; repeat for several (generated as one batch).
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
        /// An image, for vision-language models; repeat to pair with each prompt.
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 or absent: greedy.
        #[arg(long, allow_negative_numbers = true)]
        temperature: Option<f64>,
        /// Keep the k most likely tokens when sampling.
        #[arg(long)]
        top_k: Option<usize>,
        /// Nucleus sampling threshold in (0, 1].
        #[arg(long, allow_negative_numbers = true)]
        top_p: Option<f64>,
        /// Repetition penalty (1 = none).
        #[arg(long, allow_negative_numbers = true)]
        repeat_penalty: Option<f64>,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object per prompt (an array for several) instead of streaming text.
        #[arg(long)]
        json: bool,
        /// PaliGemma `detect` prompts: write the image with its boxes here (OUT-N.png for several pairs).
        #[arg(long)]
        draw: Option<PathBuf>,
        /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Compute dtype: f32, bf16 or f16 (bf16/f16 on flex or cuda; ndarray is f32 only).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Train a CLIP or SigLIP on image-text pairs (CSV/JSONL file or a folder of images + .txt).
    Train {
        /// siglip or clip.
        #[arg(long, value_enum)]
        arch: vlm_zoo::train::models::Arch,
        /// CSV or JSONL (`image`, `caption`) or a folder of images with same-named .txt captions.
        #[arg(long)]
        data: PathBuf,
        /// Output folder: the HF-format model, checkpoints, losses.csv, metrics.csv, metrics.png.
        #[arg(long)]
        out: PathBuf,
        /// Model size when training from scratch.
        #[arg(long, value_enum, default_value = "tiny")]
        preset: vlm_zoo::train::models::Preset,
        /// Norm of every block from scratch: layer, rms, rms_gemma or batch.
        #[arg(long, default_value = "layer")]
        norm: String,
        /// Fine-tune from this HF SigLIP/CLIP folder.
        #[arg(long)]
        init: Option<PathBuf>,
        /// Use this tokenizer.json (from scratch); without it one is trained on the captions.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Train a BPE tokenizer on the captions (the default when no tokenizer is given).
        #[arg(long)]
        train_tokenizer: bool,
        /// Vocabulary of a trained tokenizer.
        #[arg(long, default_value_t = 512)]
        vocab_size: usize,
        /// Passes over the data.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Pairs per step.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Peak learning rate (warm-up, then cosine).
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// AdamW weight decay.
        #[arg(long, default_value_t = 1e-4)]
        weight_decay: f64,
        /// Warm-up steps.
        #[arg(long, default_value_t = 20)]
        warmup_steps: usize,
        /// Clip the gradient norm (0: off).
        #[arg(long, default_value_t = 1.0)]
        grad_clip: f32,
        /// Batches per optimiser step.
        #[arg(long, default_value_t = 1)]
        grad_accum: usize,
        /// SigLIP: score texts in blocks of this many (memory O(chunk x N)).
        #[arg(long)]
        chunk_size: Option<usize>,
        /// Held-out fraction for recall@k.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Checkpoint every N steps.
        #[arg(long, default_value_t = 100)]
        checkpoint_every: usize,
        /// Continue from the latest checkpoint in --out.
        #[arg(long)]
        resume: bool,
        /// Missing/corrupt images and empty captions are errors instead of skipped.
        #[arg(long)]
        strict: bool,
        /// Random-resized-crop with this minimal area fraction.
        #[arg(long)]
        random_crop: Option<f64>,
        /// Random horizontal flips.
        #[arg(long)]
        flip: bool,
        /// Data loading threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Class names (one per line) for zero-shot accuracy on the held-out split.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Stop after this many steps.
        #[arg(long)]
        max_steps: Option<usize>,
        /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Offline demo: train a tiny composed VLM to caption synthetic shapes, then caption held-out images.
    Demo {
        /// Output folder (data, the HF PaliGemma model folder, captions.png).
        #[arg(long, default_value = "vlm-zoo-demo")]
        out: PathBuf,
        /// Training images.
        #[arg(long, default_value_t = 3000)]
        train_images: usize,
        /// Held-out images.
        #[arg(long, default_value_t = 200)]
        test_images: usize,
        /// Epochs.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Norm of every block: layer, rms, rms_gemma or batch.
        #[arg(long, default_value = "layer")]
        norm: String,
        /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Benchmark a folder, printing one JSON line (compare with scripts/bench_torch.py): Gemma and
    /// PaliGemma load, prefill, decode tokens/s and end-to-end time; SigLIP and CLIP image encoding
    /// (images/s per batch size) or, with --train, training steps/s.
    Bench {
        /// The checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// Text tokens in the prompt (Gemma, PaliGemma).
        #[arg(long, default_value_t = 64)]
        prompt_len: usize,
        /// Tokens to generate, the first included (Gemma, PaliGemma).
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Batch sizes, comma-separated (SigLIP, CLIP; the first one with --train).
        #[arg(long, default_value = "1,8", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Timed repetitions per batch size (SigLIP, CLIP).
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Measure training steps (forward, loss, backward, AdamW) instead of encoding (SigLIP, CLIP).
        #[arg(long)]
        train: bool,
        /// Timed training steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Compute dtype: f32, bf16 or f16 (inference only).
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Summarise a HuggingFace checkpoint folder (config and safetensors headers; no weights are read).
    Inspect {
        /// The checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    keep_freed_pages();
    if let Err(e) = run(Cli::parse()) {
        // Library errors carry the file, key and expectation in their own message.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::ZeroShot { model, images, texts, json, device, dtype } => {
            let device = vlm_zoo::nn::device_with_dtype(&device, vlm_zoo::nn::parse_dtype(&dtype)?)?;
            let model = vlm_zoo::hub::resolve_model(&model)?;
            let out = vlm_zoo::zero_shot::zero_shot(&model, &images, &texts, &device)?;
            for note in &out.notes {
                eprintln!("note: {note}");
            }
            if json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                let kind = if out.model_type == "siglip" { "sigmoid" } else { "softmax over texts" };
                println!("{} ({kind} probabilities)", out.model_type);
                for (image, probs) in images.iter().zip(&out.probs) {
                    println!("{}", image.display());
                    for (text, p) in texts.iter().zip(probs) {
                        println!("  {p:>8.4}  {text}");
                    }
                }
            }
        }
        Command::Generate {
            model,
            prompts,
            images,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repeat_penalty,
            seed,
            json,
            draw,
            device,
            dtype,
        } => {
            let device = vlm_zoo::nn::device_with_dtype(&device, vlm_zoo::nn::parse_dtype(&dtype)?)?;
            let model = vlm_zoo::hub::resolve_model(&model)?;
            let sampling = vlm_zoo::gemma::Sampling {
                temperature,
                top_k,
                top_p,
                repetition_penalty: repeat_penalty,
                seed,
                max_new_tokens,
            };
            let stream = !json && prompts.len() == 1;
            let out = vlm_zoo::generate::generate_text(
                &model,
                &prompts,
                &images,
                &sampling,
                &device,
                |_, piece| {
                    if stream {
                        print!("{piece}");
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    }
                },
            )?;
            if let Some(draw) = &draw {
                for (i, o) in out.iter().enumerate() {
                    let Some(dets) = &o.detections else { continue };
                    let path = if out.len() == 1 {
                        draw.clone()
                    } else {
                        let stem =
                            draw.file_stem().map_or("draw".into(), |s| s.to_string_lossy().into_owned());
                        draw.with_file_name(format!("{stem}-{i}.png"))
                    };
                    vlm_zoo::generate::draw_detections(&images[i.min(images.len() - 1)], dets, &path)?;
                    eprintln!("note: wrote {}", path.display());
                }
            }
            if json {
                let v =
                    if out.len() == 1 { serde_json::to_value(&out[0])? } else { serde_json::to_value(&out)? };
                println!("{v}");
            } else if stream {
                println!();
            } else {
                for (p, o) in prompts.iter().zip(&out) {
                    println!("{p}\n  -> {}", o.text);
                }
            }
        }
        Command::Train {
            arch,
            data,
            out,
            preset,
            norm,
            init,
            tokenizer,
            train_tokenizer,
            vocab_size,
            epochs,
            batch_size,
            lr,
            weight_decay,
            warmup_steps,
            grad_clip,
            grad_accum,
            chunk_size,
            val_fraction,
            seed,
            checkpoint_every,
            resume,
            strict,
            random_crop,
            flip,
            workers,
            labels,
            max_steps,
            device,
        } => {
            let args = vlm_zoo::train::TrainArgs {
                arch,
                data,
                out,
                preset,
                norm: norm.parse()?,
                init,
                tokenizer,
                train_tokenizer,
                vocab_size,
                epochs,
                batch_size,
                lr,
                weight_decay,
                warmup_steps,
                grad_clip: (grad_clip > 0.0).then_some(grad_clip),
                grad_accum: grad_accum.max(1),
                chunk_size,
                val_fraction,
                seed,
                checkpoint_every,
                resume,
                strict,
                augment: vlm_zoo::train::data::Augment { crop_min_scale: random_crop, flip },
                workers,
                labels,
                max_steps,
                progress: true,
                device,
            };
            let report = vlm_zoo::train::train(&args)?;
            if report.skipped_images + report.skipped_captions > 0 {
                eprintln!(
                    "note: skipped {} rows with missing/corrupt images and {} with empty captions",
                    report.skipped_images, report.skipped_captions
                );
            }
            for (e, r) in report.recall.iter().enumerate() {
                println!(
                    "epoch {:>3}  held-out recall i2t R@1 {:.3} R@5 {:.3}  t2i R@1 {:.3} R@5 {:.3}",
                    e + 1,
                    r.i2t[0],
                    r.i2t[1],
                    r.t2i[0],
                    r.t2i[1]
                );
            }
            if let Some(acc) = report.zero_shot_accuracy {
                println!("zero-shot accuracy {acc:.3}");
            }
            println!(
                "{} steps, final loss {:.4}; model written to {}",
                report.steps,
                report.losses.last().copied().unwrap_or(f64::NAN),
                report.export.display()
            );
        }
        Command::Demo { out, train_images, test_images, epochs, norm, device } => {
            let args = vlm_zoo::demo::DemoArgs {
                out,
                device,
                train_images,
                test_images,
                epochs,
                norm: norm.parse()?,
                ..Default::default()
            };
            let r = vlm_zoo::demo::run(&args)?;
            for (g, want) in &r.samples {
                println!("  {:<40} (truth: {want})", g);
            }
            println!(
                "held-out exact-caption accuracy: {:.1}% of {} unseen images (trained {:.0} s, final loss {:.4})",
                r.accuracy * 100.0,
                r.test_images,
                r.train_seconds,
                r.final_loss
            );
            println!("model: {}  grid: {}", r.model_dir.display(), args.out.join("captions.png").display());
        }
        Command::Bench { model, prompt_len, new_tokens, batch, iters, train, steps, device, dtype } => {
            let dtype = vlm_zoo::nn::parse_dtype(&dtype)?;
            let device = vlm_zoo::nn::device_with_dtype(&device, dtype)?;
            let opts = vlm_zoo::bench::BenchOptions {
                prompt_len,
                new_tokens,
                batches: batch,
                iters,
                train,
                steps,
                dtype,
            };
            let r = vlm_zoo::bench::bench(&vlm_zoo::hub::resolve_model(&model)?, &opts, &device)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Command::Inspect { model, json } => {
            let s = vlm_zoo::inspect::inspect(&vlm_zoo::hub::resolve_model(&model)?)?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("model_type  {}", s.model_type.as_deref().unwrap_or("(none)"));
                println!("files       {}", s.files.join(", "));
                println!("tensors     {}", s.tensors);
                println!("parameters  {}", s.parameters);
                for (d, n) in &s.dtypes {
                    println!("  {d:<6} {n}");
                }
                for (p, n) in &s.prefixes {
                    println!("  {p:<48} {n}");
                }
            }
        }
    }
    Ok(())
}
