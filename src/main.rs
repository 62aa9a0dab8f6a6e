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
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
