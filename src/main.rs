//! The `vlm-zoo` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
        /// cpu (the default CPU backend), ndarray, flex, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
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
    if let Err(e) = run(Cli::parse()) {
        // Library errors carry the file, key and expectation in their own message.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::ZeroShot {
            model,
            images,
            texts,
            json,
            device,
        } => {
            let device = vlm_zoo::nn::parse_device(&device)?;
            let out = vlm_zoo::zero_shot::zero_shot(&model, &images, &texts, &device)?;
            for note in &out.notes {
                eprintln!("note: {note}");
            }
            if json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                let kind = if out.model_type == "siglip" {
                    "sigmoid"
                } else {
                    "softmax over texts"
                };
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
            device,
        } => {
            let device = vlm_zoo::nn::parse_device(&device)?;
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
            if json {
                let v = if out.len() == 1 {
                    serde_json::to_value(&out[0])?
                } else {
                    serde_json::to_value(&out)?
                };
                println!("{v}");
            } else if stream {
                println!();
            } else {
                for (p, o) in prompts.iter().zip(&out) {
                    println!("{p}\n  -> {}", o.text);
                }
            }
        }
        Command::Inspect { model, json } => {
            let s = vlm_zoo::inspect::inspect(&model)?;
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
