//! AMX-BF16 tiles (`tdpbf16ps`). The panels' pair layout is AMX's own weight layout: a panel's
//! pair `t` is one 64-byte tile row (16 outputs x 2 k), so 16 consecutive pairs of a panel are
//! one 16 x 32 weight tile read in place. Activations are bf16 rows (k padded to 32 with
//! zeros), 16 rows a tile. One step multiplies two activation tiles by two weight tiles into
//! four f32 accumulator tiles: 32 rows x 32 outputs.
//!
//! AMX-INT8 (`tdpbssd`, int8 x int8 into int32) runs int8 weights ([`accumulate_i8`]): a
//! weight tile row is 16 outputs x 4 k (two pair rows interleaved when a panel is staged), an
//! activation tile 16 rows of 64 int8; one step is 32 rows x 32 outputs x 64 k, twice the
//! products of a bf16 step for the same four tile loads.

use std::arch::asm;

/// Pairs of k in one tile (32 k).
pub const PAIRS: usize = 16;
/// Rows of one step (two activation tiles).
pub const ROWS: usize = 32;

/// Whether the CPU has AMX-TILE, AMX-BF16 and AMX-INT8 and the OS lets this process use the tile data
/// (Linux grants it per process on request: `arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`; until then the first tile instruction faults).
pub fn usable() -> bool {
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that can run this code.
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    let (amx_bf16, amx_tile, amx_int8) =
        (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
    if !(amx_bf16 && amx_tile && amx_int8) {
        return false;
    }
    request_tile_data()
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this code only changes the process's permitted XSAVE features;
    // it reads no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Palette 1 with tiles 0..8 all 16 rows x 64 bytes: `tmm0..3` accumulators, `tmm4, 5`
/// activations, `tmm6, 7` weights.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile configuration on this thread; [`release`] undoes it.
///
/// # Safety
/// [`usable`] returned true in this process.
pub unsafe fn configure() {
    let mut config =
        TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for t in 0..8 {
        config.colsb[t] = 64;
        config.rows[t] = 16;
    }
    // SAFETY: the configuration is 64 valid bytes, and the caller checked AMX is usable.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
}

/// Returns the tiles to their initial state (so context switches do not save them).
///
/// # Safety
/// As [`configure`].
pub unsafe fn release() {
    // SAFETY: valid whenever AMX is usable.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Zeroes the four accumulator tiles.
///
/// # Safety
/// [`configure`] ran on this thread.
pub unsafe fn zero() {
    // SAFETY: tile instructions on the caller's configured tiles.
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem))
    };
}

/// Accumulates `A · B` over `blocks` of 32 k: `a` points to 32 bf16 rows `lda` elements apart,
/// `b0` and `b1` to two panels' runs of `blocks * 16` pairs (64 bytes a pair).
///
/// # Safety
/// [`configure`] ran on this thread; the pointers cover what is described above.
pub unsafe fn accumulate(a: *const u16, lda: usize, b0: *const u16, b1: *const u16, blocks: usize) {
    // SAFETY: the caller's contract.
    unsafe { bf16_steps::<true>(a.cast(), lda * 2, b0.cast(), b1.cast(), blocks) }
}

/// [`accumulate`] for 16 rows or fewer: the first activation tile only, into the first two
/// accumulators (half the products; the last two are left as they were).
///
/// # Safety
/// As [`accumulate`], for 16 rows from `a`.
pub unsafe fn accumulate_16(a: *const u16, lda: usize, b0: *const u16, b1: *const u16, blocks: usize) {
    // SAFETY: the caller's contract.
    unsafe { bf16_steps::<false>(a.cast(), lda * 2, b0.cast(), b1.cast(), blocks) }
}

/// Accumulates `A · B` in int32 over `blocks` of 64 k: `a` points to 32 int8 rows `lda` bytes
/// apart, `b0` and `b1` to two panels' runs of `blocks * 16` quad rows (64 bytes: 16 outputs x
/// 4 k).
///
/// # Safety
/// [`configure`] ran on this thread; the pointers cover what is described above.
pub unsafe fn accumulate_i8(a: *const i8, lda: usize, b0: *const i8, b1: *const i8, blocks: usize) {
    // SAFETY: the caller's contract.
    unsafe { int8_steps::<true>(a.cast(), lda, b0.cast(), b1.cast(), blocks) }
}

/// [`accumulate_i8`] for 16 rows or fewer (as [`accumulate_16`]).
///
/// # Safety
/// As [`accumulate_i8`], for 16 rows from `a`.
pub unsafe fn accumulate_i8_16(a: *const i8, lda: usize, b0: *const i8, b1: *const i8, blocks: usize) {
    // SAFETY: the caller's contract.
    unsafe { int8_steps::<false>(a.cast(), lda, b0.cast(), b1.cast(), blocks) }
}

/// One tile loop, `$tdp` the product instruction (`tdpbf16ps` or `tdpbssd`): over `blocks`
/// steps, two activation tiles (16 rows each, `lda` bytes apart; the second only with `BOTH`)
/// and two weight tiles (64-byte rows) into four accumulators (two without `BOTH`). A step
/// reads 64 bytes of each activation row and 1 KiB of each weight run, in either format.
macro_rules! tile_loop {
    ($name:ident, $tdp:literal) => {
        /// # Safety
        /// [`configure`] ran on this thread; the pointers cover `blocks` steps as described.
        unsafe fn $name<const BOTH: bool>(a: *const u8, lda: usize, b0: *const u8, b1: *const u8, blocks: usize) {
            for kb in 0..blocks {
                // SAFETY: tile loads and products on the caller's configured tiles, reading the
                // ranges the caller vouches for.
                unsafe {
                    let (a0, w0, w1) = (a.add(kb * 64), b0.add(kb * 1024), b1.add(kb * 1024));
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{w0} + {sb}*1]",
                        concat!($tdp, " tmm0, tmm4, tmm6"),
                        "tileloadd tmm7, [{w1} + {sb}*1]",
                        concat!($tdp, " tmm1, tmm4, tmm7"),
                        a0 = in(reg) a0,
                        w0 = in(reg) w0,
                        w1 = in(reg) w1,
                        sa = in(reg) lda,
                        sb = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                    if BOTH {
                        asm!(
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            concat!($tdp, " tmm2, tmm5, tmm6"),
                            concat!($tdp, " tmm3, tmm5, tmm7"),
                            a1 = in(reg) a0.add(16 * lda),
                            sa = in(reg) lda,
                            options(nostack, readonly),
                        );
                    }
                }
            }
        }
    };
}

tile_loop!(bf16_steps, "tdpbf16ps");
tile_loop!(int8_steps, "tdpbssd");

/// Stores the accumulators to `out`: 32 rows of 32 f32.
///
/// # Safety
/// [`configure`] ran on this thread.
pub unsafe fn store(out: &mut [f32; ROWS * 32]) {
    // SAFETY: `out` is valid for the block's writes.
    unsafe { store_to(out.as_mut_ptr()) }
}

/// [`store`] into memory that need not be initialised (a block's scratch, written whole).
///
/// # Safety
/// [`configure`] ran on this thread; `out` is valid for `ROWS * 32` f32 writes.
pub unsafe fn store_to(out: *mut f32) {
    // SAFETY: the caller's contract: 32 rows of 32 f32.
    unsafe { store_rows(out, 32) }
}

/// Stores the accumulators straight into 32 rows of 32 f32 at `out`, rows `ldc` f32 apart
/// (a block of a product's output; after [`accumulate_i8`] the 4-byte values are int32).
///
/// # Safety
/// [`configure`] ran on this thread; `out` is valid for those writes.
pub unsafe fn store_rows(out: *mut f32, ldc: usize) {
    // SAFETY: four 16 x 16 f32 tiles into the four quarters of the block, `ldc` f32 a row.
    unsafe {
        asm!(
            "tilestored [{o0} + {s}*1], tmm0",
            "tilestored [{o1} + {s}*1], tmm1",
            "tilestored [{o2} + {s}*1], tmm2",
            "tilestored [{o3} + {s}*1], tmm3",
            o0 = in(reg) out,
            o1 = in(reg) out.add(16),
            o2 = in(reg) out.add(16 * ldc),
            o3 = in(reg) out.add(16 * ldc + 16),
            s = in(reg) ldc * 4,
            options(nostack),
        );
    }
}

/// Asks for the lines of a 32 x 32 f32 output block at `out` (rows `ldc` f32 apart) in a
/// writable state ahead of its store (`prefetchw`), as the block's tile products start: a
/// store of the tiles to lines that are not in the cache holds up the next block's products
/// while they are fetched. Measured on SigLIP-B/16's products at batch 8 (2 cores, bf16):
/// 1-5% faster, 14% on one core with the output not in L2. (Prefetching the task's next
/// weight pair into L2 the same way was 10% slower.) `out` is only used as an address: a
/// prefetch never faults.
pub fn prefetch_block_for_write(out: *const f32, ldc: usize) {
    for r in 0..ROWS {
        let row = out.wrapping_add(r * ldc);
        // SAFETY: prefetches do not fault or change memory, whatever the address.
        unsafe {
            asm!(
                "prefetchw [{0}]",
                "prefetchw [{1}]",
                in(reg) row,
                in(reg) row.wrapping_add(31),
                options(nostack, readonly, preserves_flags)
            )
        };
    }
}

/// Loads the accumulators from `c` (as [`store`] left them), to go on accumulating.
///
/// # Safety
/// [`configure`] ran on this thread.
pub unsafe fn load(c: &[f32; ROWS * 32]) {
    let c = c.as_ptr();
    // SAFETY: four 16 x 16 f32 tiles from the four quarters of `c`, 128 bytes a row.
    unsafe {
        asm!(
            "tileloadd tmm0, [{o0} + {s}*1]",
            "tileloadd tmm1, [{o1} + {s}*1]",
            "tileloadd tmm2, [{o2} + {s}*1]",
            "tileloadd tmm3, [{o3} + {s}*1]",
            o0 = in(reg) c,
            o1 = in(reg) c.add(16),
            o2 = in(reg) c.add(16 * 32),
            o3 = in(reg) c.add(16 * 32 + 16),
            s = in(reg) 32usize * 4,
            options(nostack, readonly),
        );
    }
}

/// Operations per second of this core's tiles (a multiply-add counts two), measured over
/// `steps` 32 x 32 steps of 32 k (bf16, `tdpbf16ps`) or 64 k (`int8`, `tdpbssd`): with
/// `with_loads`, each step loads its two activation and two weight tiles from buffers in L1
/// first ([`accumulate`] / [`accumulate_i8`], the products' inner loops); without, the four
/// tile products run on tiles already loaded (the units' peak).
///
/// # Safety
/// [`usable`] returned true in this process.
pub unsafe fn throughput(with_loads: bool, int8: bool, steps: usize) -> f64 {
    // bf16 1.0 / int8 1 everywhere; eight k blocks of 32 activation rows (rows as the products
    // lay them out: 64 bytes more than the blocks apart) and of two weight panels.
    let lda = 8 * 64 + 64;
    let a = vec![if int8 { 0x0101u16 } else { 0x3f80 }; 32 * lda / 2];
    let b = vec![if int8 { 0x0101u16 } else { 0x3f80 }; 2 * 8 * 1024 / 2];
    let mut sink = [0f32; ROWS * 32];
    let start = std::time::Instant::now();
    // SAFETY: the caller's contract; the pointers stay inside `a` and `b`.
    unsafe {
        configure();
        zero();
        for s in 0..steps {
            let kb = s % 8;
            match (with_loads, int8) {
                (true, false) => {
                    let w = b.as_ptr().add(kb * 512);
                    accumulate(a.as_ptr().add(kb * 32), lda / 2, w, w.add(8 * 512), 1);
                }
                (true, true) => {
                    let (a, w) = (a.as_ptr().cast::<i8>(), b.as_ptr().cast::<i8>().add(kb * 1024));
                    accumulate_i8(a.add(kb * 64), lda, w, w.add(8 * 1024), 1);
                }
                (false, false) => asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                ),
                (false, true) => asm!(
                    "tdpbssd tmm0, tmm4, tmm6",
                    "tdpbssd tmm1, tmm4, tmm7",
                    "tdpbssd tmm2, tmm5, tmm6",
                    "tdpbssd tmm3, tmm5, tmm7",
                    options(nostack, nomem)
                ),
            }
        }
        store(&mut sink);
        release();
    }
    std::hint::black_box(&sink);
    let k = if int8 { 64 } else { 32 };
    (steps * 4 * 16 * 16 * k * 2) as f64 / start.elapsed().as_secs_f64()
}
