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
