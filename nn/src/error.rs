//! The error type of zoo-nn: every message names the file, key or value and what was expected.

use std::path::PathBuf;

/// Errors from loading checkpoints, reading configs and building blocks.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint folder lacks a file every checkpoint has.
    #[error("{dir}: no {what} found (expected {expected})")]
    MissingFile {
        /// The checkpoint folder.
        dir: PathBuf,
        /// What was looked for.
        what: String,
        /// The file names that would have been accepted.
        expected: String,
    },
    /// A JSON file did not parse or did not fit the expected schema.
    #[error("{path}: invalid JSON{}: {source}", at_key(key))]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// Where in the document (`text_config.hidden_size`), when the value is the problem.
        key: String,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is malformed (bad header, offsets outside the file, ...).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor in a checkpoint has a shape the model does not expect.
    #[error("{path}: tensor '{key}' has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A tensor in a checkpoint has a dtype that cannot be loaded.
    #[error("{path}: tensor '{key}' has dtype {actual}, expected one of {expected}")]
    Dtype {
        /// The file holding the tensor.
        path: PathBuf,
        /// The checkpoint key.
        key: String,
        /// Accepted dtypes.
        expected: String,
        /// The dtype in the file.
        actual: String,
    },
    /// The model needs weights the checkpoint does not have.
    #[error("{dir}: checkpoint is missing {} weight(s) the model needs: {}", keys.len(), preview(keys))]
    MissingKeys {
        /// The checkpoint folder or file.
        dir: PathBuf,
        /// Checkpoint keys (after the remap table) that were not found.
        keys: Vec<String>,
    },
    /// The checkpoint has weights the model has no place for.
    #[error("{dir}: checkpoint has {} weight(s) the model does not use: {}", keys.len(), preview(keys))]
    UnusedKeys {
        /// The checkpoint folder or file.
        dir: PathBuf,
        /// Checkpoint keys that matched nothing.
        keys: Vec<String>,
    },
    /// Applying the weights to the module failed for another reason.
    #[error("{path}: {reason}")]
    Load {
        /// The file being loaded.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Writing a file (an export, a checkpoint, an image) failed.
    #[error("{path}: cannot save: {reason}")]
    Save {
        /// The file being written.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot read image: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        reason: String,
    },
    /// A tokenizer could not be loaded or used.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// A device string could not be parsed or the backend is not compiled in.
    #[error("device '{0}': {1}")]
    Device(String, String),
}

fn at_key(key: &str) -> String {
    if key.is_empty() || key == "." { String::new() } else { format!(" at key '{key}'") }
}

/// A short list of keys for an error message: the first few and a count of the rest.
fn preview(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", ... ({} more)", keys.len() - SHOWN));
    }
    s
}

/// The result type of zoo-nn.
pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
