//! SentencePiece models (`spiece.model`) without a `tokenizer.json`, as the hub's SigLIP v1
//! repositories ship them.
//!
//! [`SpmModel::read`] parses the protobuf (pieces, scores, types, trainer and normalizer specs)
//! with a small wire-format reader; [`SiglipSpm`] rebuilds transformers' `SiglipTokenizer`
//! (`models/siglip/tokenization_siglip.py`) on the `tokenizers` crate:
//!
//! 1. `"▁" + text` (any `▁` in the text becomes a space), split at special tokens (`</s>`,
//!    `<unk>`, ...; whitespace next to them is stripped);
//! 2. each other chunk canonicalised as big_vision does: lower-cased (`do_lower_case`), ASCII
//!    punctuation removed, whitespace runs collapsed to one space, stripped;
//! 3. SentencePiece's own encoding of `"<unk>" + chunk` with the first pieces (those of `"<unk>"`
//!    alone) dropped: the model's precompiled normaliser, extra whitespace removed, the dummy `▁`
//!    prefix, spaces as `▁`, words split before each `▁`, Unigram Viterbi over the pieces
//!    (control and unknown pieces never match text, as in SentencePiece);
//! 4. a leading lone `▁` before a special token dropped, `</s>` appended.

use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Precompiled, Prepend, Replace, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{NormalizerWrapper, Tokenizer};

/// What a piece is (SentencePiece's `ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// Text.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<s>`, `</s>`, `<pad>`): never produced from text.
    Control,
    /// Matched verbatim in text.
    UserDefined,
    /// Not used.
    Unused,
    /// A byte-fallback piece `<0xNN>`.
    Byte,
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (`▁` marks a word start).
    pub piece: String,
    /// Its log-probability (Unigram) or merge rank (BPE).
    pub score: f32,
    /// Its kind.
    pub kind: PieceType,
}

/// The parts of a `spiece.model` that decide the ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 Unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `TrainerSpec.byte_fallback`.
    pub byte_fallback: bool,
    /// `NormalizerSpec.name` (`nmt_nfkc`, `identity`, ...).
    pub normalizer_name: String,
    /// `NormalizerSpec.precompiled_charsmap`: the normalisation rules (empty: none).
    pub precompiled_charsmap: Vec<u8>,
    /// `NormalizerSpec.add_dummy_prefix` (default true).
    pub add_dummy_prefix: bool,
    /// `NormalizerSpec.remove_extra_whitespaces` (default true).
    pub remove_extra_whitespaces: bool,
}

/// A protobuf wire-format reader over one message.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// One field of a message.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            format!(
                "a field of {n} bytes at offset {} runs past the end ({} bytes)",
                self.pos,
                self.buf.len()
            )
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn next(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Varint(0)
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            t => return Err(format!("wire type {t} at offset {} (not a SentencePiece model?)", self.pos)),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn text(b: &[u8], what: &str) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

impl SpmModel {
    /// Reads and checks a `spiece.model` / `tokenizer.model` file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| NnError::io(path, e))?;
        Self::parse(&bytes).map_err(|reason| NnError::Tokenizer {
            path: path.to_path_buf(),
            reason: format!("not a valid SentencePiece model: {reason}"),
        })
    }

    /// Parses the serialised `ModelProto`.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut m = SpmModel {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            normalizer_name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
        };
        let mut w = Wire::new(bytes);
        while let Some((field, value)) = w.next()? {
            match (field, value) {
                (1, Value::Bytes(b)) => m.pieces.push(Self::piece(b)?),
                (2, Value::Bytes(b)) => {
                    let mut t = Wire::new(b);
                    while let Some((f, v)) = t.next()? {
                        match (f, v) {
                            (3, Value::Varint(v)) => m.model_type = v,
                            (35, Value::Varint(v)) => m.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b)) => {
                    let mut n = Wire::new(b);
                    while let Some((f, v)) = n.next()? {
                        match (f, v) {
                            (1, Value::Bytes(s)) => m.normalizer_name = text(s, "normalizer name")?,
                            (2, Value::Bytes(s)) => m.precompiled_charsmap = s.to_vec(),
                            (3, Value::Varint(v)) => m.add_dummy_prefix = v != 0,
                            (4, Value::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                (1..=3, _) => return Err(format!("field {field} has the wrong wire type")),
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces".into());
        }
        Ok(m)
    }

    fn piece(b: &[u8]) -> std::result::Result<Piece, String> {
        let mut p = Piece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
        let mut w = Wire::new(b);
        while let Some((f, v)) = w.next()? {
            match (f, v) {
                (1, Value::Bytes(s)) => p.piece = text(s, "a piece")?,
                (2, Value::Fixed32(s)) => p.score = f32::from_bits(s),
                (3, Value::Varint(t)) => {
                    p.kind = match t {
                        1 => PieceType::Normal,
                        2 => PieceType::Unknown,
                        3 => PieceType::Control,
                        4 => PieceType::UserDefined,
                        5 => PieceType::Unused,
                        6 => PieceType::Byte,
                        t => return Err(format!("piece type {t}")),
                    }
                }
                _ => {}
            }
        }
        Ok(p)
    }

    /// The id of the unknown piece.
    pub fn unk_id(&self) -> Option<usize> {
        self.pieces.iter().position(|p| p.kind == PieceType::Unknown)
    }

    /// The id of a piece.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.pieces.iter().position(|p| p.piece == piece).map(|i| i as u32)
    }

    /// SentencePiece's `encode(text, out_type=str)` as a `tokenizers` pipeline: normaliser,
    /// dummy prefix, `▁` for spaces, words split before each `▁`, Unigram Viterbi.
    pub fn sentencepiece_tokenizer(&self) -> std::result::Result<Tokenizer, String> {
        if self.model_type != 1 {
            return Err(format!(
                "model_type {} (only Unigram models, type 1, are supported; BPE/word/char are not)",
                self.model_type
            ));
        }
        let unk_id = self.unk_id().ok_or("no unknown piece")?;
        // Control and unknown pieces never match text in SentencePiece: give them strings no
        // normalised input contains (a NUL cannot survive the normaliser), keeping their ids.
        let vocab = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| match p.kind {
                PieceType::Control | PieceType::Unknown | PieceType::Unused => (format!("\0{i}\0"), 0.0),
                _ => (p.piece.clone(), f64::from(p.score)),
            })
            .collect();
        let model = Unigram::from(vocab, Some(unk_id), self.byte_fallback).map_err(|e| e.to_string())?;
        let mut norms: Vec<NormalizerWrapper> = Vec::new();
        if !self.precompiled_charsmap.is_empty() {
            let p = Precompiled::from(&self.precompiled_charsmap)
                .map_err(|e| format!("precompiled_charsmap: {e:?}"))?;
            norms.push(p.into());
        }
        let re = |p: &str, to: &str| -> std::result::Result<NormalizerWrapper, String> {
            Ok(Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(p.into()), to)
                .map_err(|e| e.to_string())?
                .into())
        };
        if self.remove_extra_whitespaces {
            norms.push(re("^ +| +$", "")?);
            norms.push(re(" {2,}", " ")?);
        }
        if self.add_dummy_prefix {
            norms.push(Prepend::new(" ".into()).into());
        }
        norms.push(re(" ", "\u{2581}")?);
        let mut tok = Tokenizer::new(model);
        tok.with_normalizer(Some(Sequence::new(norms)));
        tok.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', PrependScheme::Never, true)));
        Ok(tok)
    }
}

/// transformers' `SiglipTokenizer` on a SentencePiece model (see the module docs).
#[derive(Clone)]
pub struct SiglipSpm {
    sp: Tokenizer,
    model: SpmModel,
    path: PathBuf,
    /// Special token strings and ids, longest first (matched verbatim in the raw text).
    specials: Vec<(String, u32)>,
    unk_token: String,
    unk_len: usize,
    eos_id: u32,
    do_lower_case: bool,
}

impl std::fmt::Debug for SiglipSpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiglipSpm")
            .field("path", &self.path)
            .field("pieces", &self.model.pieces.len())
            .finish()
    }
}

impl SiglipSpm {
    /// Builds the tokenizer from `spiece.model` and the special tokens of tokenizer_config.json.
    pub fn new(
        path: &Path,
        eos: &str,
        unk: &str,
        pad: &str,
        extra: &[String],
        do_lower_case: bool,
    ) -> Result<Self> {
        let model = SpmModel::read(path)?;
        let err = |reason: String| NnError::Tokenizer { path: path.to_path_buf(), reason };
        let sp = model.sentencepiece_tokenizer().map_err(err)?;
        let id = |t: &str| {
            model
                .piece_to_id(t)
                .ok_or_else(|| err(format!("special token {t:?} is not a piece of the model")))
        };
        let mut specials: Vec<(String, u32)> = Vec::new();
        for t in [eos, unk, pad].into_iter().chain(extra.iter().map(String::as_str)) {
            if !specials.iter().any(|(s, _)| s == t) {
                specials.push((t.to_string(), id(t)?));
            }
        }
        specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let mut me = Self {
            eos_id: id(eos)?,
            sp,
            model,
            path: path.to_path_buf(),
            specials,
            unk_token: unk.to_string(),
            unk_len: 0,
            do_lower_case,
        };
        me.unk_len = me.sp_pieces(unk)?.len();
        Ok(me)
    }

    /// The SentencePiece pipeline (no special tokens, no `</s>`).
    pub fn sentencepiece(&self) -> &Tokenizer {
        &self.sp
    }

    /// Pieces in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.model.pieces.len()
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sp_pieces(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.sp.encode(text, false).map_err(|e| NnError::Tokenizer {
            path: self.path.clone(),
            reason: format!("encoding {text:?}: {e}"),
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `SiglipTokenizer.canonicalize_text`: lower-case, no ASCII punctuation, single spaces, stripped.
    pub fn canonicalize(&self, text: &str) -> String {
        let lower = if self.do_lower_case { text.to_lowercase() } else { text.to_string() };
        let kept: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
        let mut out = String::with_capacity(kept.len());
        let mut space = false;
        for c in kept.chars() {
            if is_py_space(c) {
                space = true;
            } else {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push(c);
            }
        }
        out
    }

    /// Splits at special tokens, stripping the whitespace next to each (they are added with
    /// `lstrip` and `rstrip`): `(chunk, Some(id))` for a special token.
    fn split_specials<'t>(&self, text: &'t str) -> Vec<(&'t str, Option<u32>)> {
        let mut parts: Vec<(&str, Option<u32>)> = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            if let Some((s, id)) = self.specials.iter().find(|(s, _)| text[i..].starts_with(s.as_str())) {
                parts.push((&text[start..i], None));
                parts.push((&text[i..i + s.len()], Some(*id)));
                i += s.len();
                start = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        parts.push((&text[start..], None));
        for k in 0..parts.len() {
            if parts[k].1.is_some() {
                if k > 0 {
                    parts[k - 1].0 = parts[k - 1].0.trim_end_matches(is_py_space);
                }
                if k + 1 < parts.len() {
                    parts[k + 1].0 = parts[k + 1].0.trim_start_matches(is_py_space);
                }
            }
        }
        parts.into_iter().filter(|(s, _)| !s.is_empty()).collect()
    }

    /// The ids `SiglipTokenizer` gives `text`, `</s>` appended (no padding, no truncation).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let text = format!("\u{2581}{}", text.replace('\u{2581}', " "));
        // (id, came from a special token in the text)
        let mut ids: Vec<(u32, bool)> = Vec::new();
        for (chunk, special) in self.split_specials(&text) {
            if let Some(id) = special {
                ids.push((id, true));
                continue;
            }
            let canonical = self.canonicalize(chunk);
            let pieces = self.sp_pieces(&format!("{}{canonical}", self.unk_token))?;
            let pieces = if pieces.len() >= self.unk_len { &pieces[self.unk_len..] } else { &pieces[..] };
            ids.extend(pieces.iter().map(|&p| (p, false)));
        }
        // `tokenize` drops a lone leading `▁` piece when a special token follows it.
        let lone_prefix = |&(id, special): &(u32, bool)| {
            !special && self.model.pieces.get(id as usize).is_some_and(|p| p.piece == "\u{2581}")
        };
        if ids.len() > 1 && lone_prefix(&ids[0]) && ids[1].1 {
            ids.remove(0);
        }
        let mut ids: Vec<u32> = ids.into_iter().map(|(id, _)| id).collect();
        if ids.last() != Some(&self.eos_id) {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }

    /// Decodes ids (special pieces skipped; `▁` back to spaces).
    pub fn decode(&self, ids: &[u32]) -> String {
        let text: String = ids
            .iter()
            .filter_map(|&i| self.model.pieces.get(i as usize))
            .filter(|p| matches!(p.kind, PieceType::Normal | PieceType::UserDefined))
            .map(|p| p.piece.as_str())
            .collect();
        text.replace('\u{2581}', " ").trim_start().to_string()
    }
}

/// Python's `str.isspace`: Unicode whitespace plus the ASCII separators `\x1c`-`\x1f`.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_models_are_named_errors() {
        for (bytes, needle) in [
            (&b""[..], "no pieces"),
            (&[0x0a, 0x05, 0x0a][..], "runs past the end"),
            (&[0x0f][..], "wire type"),
            (&[0x80, 0x80][..], "truncated varint"),
        ] {
            let e = SpmModel::parse(bytes).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn canonicalisation_as_big_vision() {
        let dir = tempfile::tempdir().unwrap();
        // A hand-written model: pieces <pad> (control), </s> (control), <unk>, ▁, ▁a, b.
        let piece = |s: &str, score: f32, t: u8| {
            let mut p = vec![0x0a, s.len() as u8];
            p.extend(s.as_bytes());
            p.push(0x15);
            p.extend(score.to_le_bytes());
            p.extend([0x18, t]);
            let mut m = vec![0x0a, p.len() as u8];
            m.extend(p);
            m
        };
        let mut bytes = Vec::new();
        for (s, score, t) in [
            ("<pad>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<unk>", 0.0, 2),
            ("\u{2581}", -2.0, 1),
            ("\u{2581}a", -1.0, 1),
            ("b", -1.5, 1),
        ] {
            bytes.extend(piece(s, score, t));
        }
        let path = dir.path().join("spiece.model");
        std::fs::write(&path, &bytes).unwrap();
        let tok = SiglipSpm::new(&path, "</s>", "<unk>", "</s>", &[], true).unwrap();
        assert_eq!(tok.canonicalize("  A,  b!\tB. "), "a b b");
        // "▁a ▁b ▁b": ▁a, then ▁ + b twice, then </s>.
        assert_eq!(tok.encode("A, b! B.").unwrap(), vec![4, 3, 5, 3, 5, 1]);
        // Unknown characters become <unk>; a special token in the text is kept as itself.
        assert_eq!(tok.encode("a c </s> b").unwrap(), vec![4, 3, 2, 1, 5, 1]);
        assert_eq!(tok.decode(&[4, 3, 5, 1]), "a b");
    }

    #[test]
    fn corpus_ids_equal_transformers_siglip_tokenizer() {
        // tests/fixtures/hub-siglip-base: a hub-shaped folder with spiece.model and no
        // tokenizer.json; the ids are SiglipTokenizer's (scripts/make_hub_fixtures.py).
        let dir = crate::testing::fixture("hub-siglip-base");
        let corpus: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_corpus.json")).unwrap())
                .unwrap();
        let tok = crate::TextTokenizer::from_dir(&dir).unwrap();
        let spm = tok.spm.as_ref().expect("read from spiece.model");
        let texts = corpus["texts"].as_array().unwrap();
        let mut same = 0;
        for (text, want) in texts.iter().zip(corpus["ids"].as_array().unwrap()) {
            let want: Vec<u32> =
                want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let got = spm.encode(text.as_str().unwrap()).unwrap();
            assert_eq!(got, want, "{text}");
            same += 1;
        }
        println!("{same} of {} corpus texts tokenised exactly as transformers' SiglipTokenizer", texts.len());
    }
}
