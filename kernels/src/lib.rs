//! # zoo-kernels: the CPU kernels of vlm-zoo
//!
//! The one crate of the workspace with `unsafe` code (every other crate root has
//! `#![forbid(unsafe_code)]`): SIMD products, raw-pointer output splits, memory maps and the
//! allocator option live here, each `unsafe` block with its `// SAFETY:` argument, in the modules
//! that carry `#![allow(unsafe_code)]` (`gemm`, `matmul_f32`, `mmap`, `alloc`, `convert`); the workspace's
//! `unsafe_code = "deny"` holds everywhere else in this crate. Also here: the host-side numeric
//! kernels on f32 slices and the Burn backend extension that routes tensors to them. No layers:
//! those are zoo-nn's, built on these.
//!
//! - [`gemm`]: bf16 / int8 weights packed for inference and their SIMD products (`--dtype bf16|q8`
//!   on the CPU), kernels chosen at run time;
//! - [`matmul_f32`]: the strided f32 product of training and f32 inference on the host;
//! - [`host_ops`]: softmax, the `x * sigmoid(...)` GELUs and LayerNorm on f32 slices, each with
//!   its backward pass;
//! - [`convert`]: bf16 <-> f32 over whole slices on every core (casts, bf16 tensors);
//! - [`adamw`]: the AdamW update on f32 slices (parameter and both moments, one pass);
//! - [`fused`]: those operations as a Burn backend extension (`FusedOps`: composed fallbacks,
//!   Flex / ndarray host paths, autodiff recording), what the layers call;
//! - [`mmap`]: read-only memory maps of checkpoint files (weights used in place);
//! - [`packed`]: the process-wide table of packed Linear / embedding weights and the products
//!   the layers call through it (`linear`, `embedding`, `tied_logits`);
//! - [`alloc`]: the allocator option the CLI sets at start-up;
//! - `testing` (test builds and the `testing` feature): tensors from slices and tolerance checks.
#![warn(missing_docs)]

pub mod adamw;
pub mod alloc;
pub mod convert;
pub mod fused;
pub mod gemm;
pub mod host_ops;
pub mod matmul_f32;
pub mod mmap;
pub mod packed;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wide;

pub use adamw::AdamWStep;
pub use alloc::keep_freed_pages;
