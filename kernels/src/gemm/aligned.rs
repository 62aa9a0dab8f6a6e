//! Buffers that start on a cache line, for what AMX tiles load: a tile row that straddles two
//! cache lines loads at 0.45x, and while mimalloc (the CLI's allocator) gives large blocks
//! 64-byte alignment, the system allocator places them 16 bytes past a page, so a program that
//! links these kernels without mimalloc would run its AMX products at about half speed.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// 64 bytes on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub [u8; 64]);

/// Element types an [`Aligned`] holds: plain integers, every bit pattern valid, alignment at
/// most 64.
pub(super) trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for i8 {}

/// `len` values of `T` from the start of a run of cache lines (the rest of the last line
/// zero).
pub(super) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Aligned<T> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let lines = vec![Line([0; 64]); (len * size_of::<T>()).div_ceil(64)];
        Self { lines, len, _t: PhantomData }
    }

    /// `len` values, each written by `fill` (which must write every one of them).
    pub fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Self {
        let count = (len * size_of::<T>()).div_ceil(64);
        let mut lines: Vec<Line> = Vec::with_capacity(count);
        let spare = lines.spare_capacity_mut().as_mut_ptr();
        // SAFETY: the spare capacity holds `count * 64 >= len * size_of::<T>()` bytes, aligned
        // to 64 (more than `T` needs); `MaybeUninit<T>` has no validity requirement.
        let values = unsafe { std::slice::from_raw_parts_mut(spare.cast::<MaybeUninit<T>>(), len) };
        fill(values);
        let used = len * size_of::<T>();
        // SAFETY: the bytes past the values, up to the end of the last line, inside the capacity.
        unsafe { std::ptr::write_bytes(spare.cast::<u8>().add(used), 0, count * 64 - used) };
        // SAFETY: `fill` wrote the `len` values (its contract) and the rest was zeroed just now:
        // all `count` lines are initialised bytes.
        unsafe { lines.set_len(count) };
        Self { lines, len, _t: PhantomData }
    }

    /// Makes it `len` zeros unless it already holds `len` values (which are kept).
    pub fn reset(&mut self, len: usize) {
        if self.len != len {
            *self = Self::zeroed(len);
        }
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` initialised `T` (every bit pattern valid), and
        // their start is 64-byte aligned.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> Default for Aligned<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}
