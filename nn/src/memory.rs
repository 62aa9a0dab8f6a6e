//! A memory budget checked before a model is built: the weights a config asks for against the
//! memory the machine has, so an absurd config (`num_hidden_layers: 1000000000`) is a clear error
//! naming its key instead of an allocation abort or an OOM kill.

use crate::error::{NnError, Result};

/// `MemAvailable` of /proc/meminfo (Linux); `None` elsewhere.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Bytes per parameter assumed by the check: the smallest form weights load in (int8, `--dtype
/// q8` on the CPU), so only configs that cannot fit in any supported dtype are refused.
pub const MIN_BYTES_PER_PARAM: f64 = 1.0;

/// Refuses a config whose weights (`parts`: config key -> parameters it accounts for) cannot
/// fit in the available memory; `what` names the config.
pub fn check_weights(what: &str, parts: &[(String, f64)]) -> Result<()> {
    let params: f64 = parts.iter().map(|(_, n)| n).sum();
    let bytes = params * MIN_BYTES_PER_PARAM;
    let available = available_bytes().map_or(f64::INFINITY, |b| b as f64);
    // Beyond 2^50 bytes nothing fits anywhere, whatever /proc says.
    if bytes.is_finite() && bytes <= available && bytes < (1u64 << 50) as f64 {
        return Ok(());
    }
    let (key, _) = parts
        .iter()
        .fold((String::new(), -1.0), |(bk, bn), (k, n)| if *n > bn { (k.clone(), *n) } else { (bk, bn) });
    Err(NnError::Config(format!(
        "{what}: the config asks for about {:.3e} parameters ({:.1} GB even in int8; {key} accounts for most), more than the {} of memory available",
        params,
        bytes / 1e9,
        if available.is_finite() { format!("{:.1} GB", available / 1e9) } else { "machine's".into() }
    )))
}

/// Parameters of `layers` pre-norm transformer layers of width `h` and MLP width `i`.
pub fn encoder_params(layers: usize, h: usize, i: usize) -> f64 {
    let (l, h, i) = (layers as f64, h as f64, i as f64);
    l * (4.0 * h * h + 2.0 * h * i + 9.0 * h + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused_naming_the_key() {
        assert!(check_weights("tiny", &[("num_hidden_layers".into(), encoder_params(2, 32, 64))]).is_ok());
        let e = check_weights(
            "config.json",
            &[
                ("vocab_size".into(), 1000.0),
                ("num_hidden_layers".into(), encoder_params(1_000_000_000, 768, 3072)),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("config.json") && e.contains("num_hidden_layers accounts for most"), "{e}");
    }
}
