//! [`KeyMap`]: how checkpoint keys become module paths (ordered regex rewrites), and which
//! missing or unused keys are expected.

use crate::error::{NnError, Result};
use regex::Regex;

/// How checkpoint keys become module paths, and which differences are expected.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    pub(super) renames: Vec<(String, String)>,
    pub(super) allow_missing: Vec<String>,
    pub(super) allow_unused: Vec<String>,
}

impl KeyMap {
    /// An identity map (checkpoint keys are the module paths).
    pub fn new() -> Self {
        Self::default()
    }

    /// Rewrites keys matching regex `from` to `to` (`$1`-style groups allowed). Rules apply in
    /// order, each to the result of the previous ones.
    pub fn rename(mut self, from: &str, to: &str) -> Self {
        self.renames.push((from.to_string(), to.to_string()));
        self
    }

    /// Strips a literal prefix (e.g. `vision_tower.`) from checkpoint keys.
    pub fn strip_prefix(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.rename(&format!("^{}", regex::escape(prefix)), "")
    }

    /// Module paths matching this regex may be absent from the checkpoint (they keep their
    /// initial value, e.g. a tied `lm_head`).
    pub fn allow_missing(mut self, pattern: &str) -> Self {
        self.allow_missing.push(pattern.to_string());
        self
    }

    /// Checkpoint keys (after renaming) matching this regex may go unused.
    pub fn allow_unused(mut self, pattern: &str) -> Self {
        self.allow_unused.push(pattern.to_string());
        self
    }

    pub(super) fn compiled(&self) -> Result<Vec<(Regex, String)>> {
        self.renames
            .iter()
            .map(|(f, t)| {
                Regex::new(f)
                    .map(|r| (r, t.clone()))
                    .map_err(|e| NnError::Config(format!("key map pattern '{f}': {e}")))
            })
            .collect()
    }

    /// The module path a checkpoint key maps to.
    pub fn map_key(&self, key: &str) -> Result<String> {
        let mut k = key.to_string();
        for (re, to) in self.compiled()? {
            k = re.replace_all(&k, to.as_str()).into_owned();
        }
        Ok(k)
    }

    pub(super) fn matcher(patterns: &[String]) -> Result<Option<Regex>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let joined = patterns.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|");
        Regex::new(&joined).map(Some).map_err(|e| NnError::Config(format!("key map allow-list: {e}")))
    }
}
