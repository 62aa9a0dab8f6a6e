//! Incremental detokenisation for streaming.

/// Incremental detokenisation for streaming: emits only complete text, holding back a piece
/// that ends inside a multi-byte character until the next token completes it.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Adds a token; returns the new text that is ready to print.
    pub fn push(&mut self, id: u32, decode: impl Fn(&[u32]) -> Option<String>) -> String {
        self.ids.push(id);
        let Some(text) = decode(&self.ids) else {
            return String::new();
        };
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        new
    }

    /// At the end of generation: whatever is still held back (undecodable bytes included).
    pub fn finish(&mut self, decode: impl Fn(&[u32]) -> Option<String>) -> String {
        let text = decode(&self.ids).unwrap_or_default();
        let rest = if text.len() > self.emitted && text.is_char_boundary(self.emitted) {
            text[self.emitted..].to_string()
        } else {
            String::new()
        };
        self.emitted = text.len();
        rest
    }
}
