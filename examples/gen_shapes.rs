//! Writes a synthetic captioning set: `cargo run --release --example gen_shapes -- DIR [N] [SIZE]`.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map_or("shapes", String::as_str);
    let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let size = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let jsonl = vlm_zoo::synthetic::write_dataset(std::path::Path::new(dir), n, size, 7)?;
    println!("{}", jsonl.display());
    Ok(())
}
