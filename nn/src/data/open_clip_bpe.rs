//! open_clip's default tokenizer, built in: the CLIP byte-level BPE (`bpe_simple_vocab_16e6`,
//! shipped in `nn/assets/open_clip/` with its MIT licence) for OpenCLIP repositories that have no
//! tokenizer.json (apple/DFN*, many laion exports): open_clip ships it inside its Python package.
//!
//! What open_clip's `SimpleTokenizer` does, as a `tokenizers` pipeline: text cleaned as
//! `basic_clean` does (the parts of ftfy's `fix_text` that change ordinary text: curly quotes,
//! Latin ligatures, full-width characters, control characters; and HTML entities unescaped
//! twice), whitespace runs collapsed, lower-cased; split by its regular expression; bytes
//! mapped to printable characters; BPE with `</w>` ending each word; `<start_of_text>` and
//! `<end_of_text>` around; truncated keeping `<end_of_text>` last. ftfy's mojibake repair
//! (text decoded in the wrong encoding) is not reproduced. Ids equal open_clip's on the corpus
//! of `tests/fixtures/open-clip-bpe/corpus.json`.

use crate::error::{NnError, Result};
use std::io::Read;
use tokenizers::Tokenizer;

/// The merges file, gzip-compressed as open_clip ships it.
const BPE_GZ: &[u8] = include_bytes!("../../assets/open_clip/bpe_simple_vocab_16e6.txt.gz");
/// Merges open_clip reads from it (lines 1 ..= 48894).
const MERGES: usize = 49152 - 256 - 2;
/// The ids of `<start_of_text>` and `<end_of_text>`.
pub const SOT: u32 = 49406;
/// See [`SOT`].
pub const EOT: u32 = 49407;
/// Vocabulary size.
pub const VOCAB: usize = 49408;

/// open_clip's `bytes_to_unicode`: every byte as a printable character.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> =
        (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).unwrap_or('?'))).collect()
}

/// The tokenizer (built once per call: ~50 ms).
pub fn tokenizer() -> Result<Tokenizer> {
    let err = |reason: String| NnError::Tokenizer { path: "bpe_simple_vocab_16e6.txt.gz".into(), reason };
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_GZ).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
    let merges: Vec<&str> = text.split('\n').skip(1).take(MERGES).collect();
    let byte_chars: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let mut vocab: Vec<String> = byte_chars.clone();
    vocab.extend(byte_chars.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.extend(["<start_of_text>".to_string(), "<end_of_text>".to_string()]);
    if vocab.len() != VOCAB {
        return Err(err(format!("{} tokens, expected {VOCAB}", vocab.len())));
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        vocab.into_iter().enumerate().map(|(i, t)| (t, serde_json::json!(i))).collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let token = |name: &str, id: u32| serde_json::json!({"id": name, "ids": [id], "tokens": [name]});
    // open_clip's expression, its special tokens first, case-insensitive.
    let pattern =
        r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(SOT, "<start_of_text>"), special(EOT, "<end_of_text>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<start_of_text>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "<end_of_text>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<start_of_text>": token("<start_of_text>", SOT),
                               "<end_of_text>": token("<end_of_text>", EOT)}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges},
    });
    json.to_string().parse::<Tokenizer>().map_err(|e| err(e.to_string()))
}

/// open_clip's `basic_clean` before the tokenizer's own normalisation: the parts of ftfy's
/// `fix_text` that change ordinary text, HTML entities unescaped twice, ends trimmed.
pub fn clean(text: &str) -> String {
    let fixed: String = text
        .chars()
        .filter_map(|c| match c {
            // ftfy.uncurl_quotes
            '\u{02bc}' | '\u{2018}'..='\u{201b}' => Some("'".to_string()),
            '\u{201c}'..='\u{201f}' => Some("\"".to_string()),
            // ftfy.fix_latin_ligatures
            '\u{fb00}' => Some("ff".into()),
            '\u{fb01}' => Some("fi".into()),
            '\u{fb02}' => Some("fl".into()),
            '\u{fb03}' => Some("ffi".into()),
            '\u{fb04}' => Some("ffl".into()),
            '\u{fb05}' | '\u{fb06}' => Some("st".into()),
            '\u{0132}' => Some("IJ".into()),
            '\u{0133}' => Some("ij".into()),
            // ftfy.fix_character_width: full-width ASCII and the ideographic space
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xff01 + 0x21).map(String::from),
            '\u{3000}' => Some(" ".into()),
            // ftfy.remove_control_chars (tabs and line breaks stay)
            '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}' => None,
            c => Some(c.to_string()),
        })
        .collect();
    unescape_html(&unescape_html(&fixed)).trim().to_string()
}

/// Python's `html.unescape` for the entities captions carry: `&amp; &lt; &gt; &quot; &apos;
/// &nbsp;` and numeric references.
fn unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => name.strip_prefix('#').and_then(|n| {
                    let v = match n.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => n.parse::<u32>().ok(),
                    };
                    v.and_then(char::from_u32)
                }),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids equal open_clip 3.3.0's `get_tokenizer("ViT-B-32")` on the corpus (mixed case,
    /// punctuation, digits, non-ASCII, curly quotes, ligatures, HTML entities, contractions,
    /// texts past the 77-token context).
    #[test]
    fn corpus_ids_equal_open_clip() {
        let path = crate::testing::fixture("open-clip-bpe").join("corpus.json");
        let corpus: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let context = corpus["context_length"].as_u64().unwrap() as usize;
        let tok = tokenizer().unwrap();
        let texts = corpus["texts"].as_array().unwrap();
        for (text, want) in texts.iter().zip(corpus["ids"].as_array().unwrap()) {
            let want: Vec<u32> =
                want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let mut got = tok.encode(clean(text.as_str().unwrap()), true).unwrap().get_ids().to_vec();
            if got.len() > context {
                got.truncate(context);
                got[context - 1] = EOT;
            }
            assert_eq!(got, want, "{text}");
        }
        assert!(texts.len() >= 20);
    }

    #[test]
    fn html_entities_unescape_as_python_does() {
        assert_eq!(
            unescape_html("a &amp; b &lt;3 &#39;x&#x27; &bogus; & end&"),
            "a & b <3 'x' &bogus; & end&"
        );
        assert_eq!(clean("  \u{201c}ﬁne\u{201d} ＡＢ &amp;amp; "), "\"fine\" AB &");
    }
}
