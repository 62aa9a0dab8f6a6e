//! What the benchmarks share: the CLI's allocator (so kernels pay what they pay there) and the
//! timing loop.

use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seconds per call of `f` (one warm-up call, then enough calls for ~1 s).
pub fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while n < 3 || t.elapsed().as_secs_f64() < 1.0 {
        f();
        n += 1;
    }
    t.elapsed().as_secs_f64() / n as f64
}
