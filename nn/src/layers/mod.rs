//! The layers every family builds from, backend-generic Burn modules whose field names are the
//! HF checkpoint keys.

pub mod attention;
pub mod embed;
pub mod encoder;
pub mod kv_cache;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod rope;
