//! An exact fast path for BERT WordPiece tokenization of plain ASCII text.
//!
//! The `tokenizers` crate tracks offsets and alignments we never use and costs about 1 µs per
//! token. For ASCII text the BERT pipeline (clean, lower-case, split on whitespace and
//! punctuation, greedy longest-match WordPiece) is simple enough to run directly on bytes. It
//! must give the same ids as `tokenizers`, which a test checks; anything else (non-ASCII text,
//! text that could contain special tokens such as `[CLS]`) goes to `tokenizers`.

use std::collections::HashMap;

use tokenizers::Tokenizer;

/// One side of the vocabulary (word-initial or continuing pieces). Lookups are most of the
/// tokenizer's time; with SipHash (the std default) hashing alone was an eighth of a 500-token
/// featurization, so foldhash: the keys are the shipped vocabulary, not attacker-chosen. (Keys
/// of up to 15 bytes packed into a `u128` measured 8 % slower than hashing the slice.)
type Vocab = HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>;

/// WordPiece over a BERT vocabulary, for ASCII input.
#[derive(Debug, Clone)]
pub struct AsciiWordPiece {
    /// Pieces that may start a word.
    initial: Vocab,
    /// Pieces that continue a word, stored without their `##` prefix so a lookup is a slice of
    /// the word itself, not a copy with the prefix prepended.
    continuing: Vocab,
    unk: u32,
    max_word_chars: usize,
}

impl AsciiWordPiece {
    /// Builds the fast path if `tokenizer` is the BERT pipeline it reproduces (BertNormalizer with
    /// lower-casing, BertPreTokenizer, WordPiece with `##`); `None` otherwise.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let normalizer = serde_json::to_value(tokenizer.get_normalizer()?).ok()?;
        let pre = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
        let model = serde_json::to_value(tokenizer.get_model()).ok()?;
        let is = |v: &serde_json::Value, k: &str, want: serde_json::Value| v.get(k) == Some(&want);
        let ok = is(&normalizer, "type", "BertNormalizer".into())
            && is(&normalizer, "clean_text", true.into())
            && is(&normalizer, "lowercase", true.into())
            && !is(&normalizer, "strip_accents", false.into())
            && is(&pre, "type", "BertPreTokenizer".into())
            && is(&model, "type", "WordPiece".into())
            && is(&model, "continuing_subword_prefix", "##".into());
        if !ok {
            return None;
        }
        let unk_token = model.get("unk_token")?.as_str()?;
        let max_word_chars =
            usize::try_from(model.get("max_input_chars_per_word")?.as_u64()?).ok()?;
        let (mut initial, mut continuing) = (Vocab::default(), Vocab::default());
        for (piece, id) in tokenizer.get_vocab(false) {
            match piece.strip_prefix("##") {
                Some(rest) => continuing.insert(rest.as_bytes().into(), id),
                None => initial.insert(piece.into_bytes().into_boxed_slice(), id),
            };
        }
        let unk = *initial.get(unk_token.as_bytes())?;
        Some(Self {
            initial,
            continuing,
            unk,
            max_word_chars,
        })
    }

    /// Whether [`Self::encode`] gives the same ids as the full tokenizer for `text`.
    pub fn handles(text: &str) -> bool {
        text.is_ascii() && !text.contains('[')
    }

    /// Token ids of ASCII `text`, without special tokens. Call only when [`Self::handles`].
    pub fn encode(&self, text: &str, ids: &mut Vec<u32>) {
        let mut word: Vec<u8> = Vec::with_capacity(32);
        for &b in text.as_bytes() {
            match b {
                // Control characters are dropped (tab, newline and return are whitespace).
                0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f => {}
                b' ' | b'\t' | b'\n' | b'\r' => self.flush(&mut word, ids),
                _ if b.is_ascii_punctuation() => {
                    self.flush(&mut word, ids);
                    word.push(b);
                    self.flush(&mut word, ids);
                }
                _ => word.push(b.to_ascii_lowercase()),
            }
        }
        self.flush(&mut word, ids);
    }

    fn flush(&self, word: &mut Vec<u8>, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let before = ids.len();
        if word.len() > self.max_word_chars {
            ids.push(self.unk);
            word.clear();
            return;
        }
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            let vocab = if start == 0 {
                &self.initial
            } else {
                &self.continuing
            };
            while end > start {
                if let Some(&id) = vocab.get(&word[start..end]) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    // A word with any piece missing becomes a single unknown token.
                    ids.truncate(before);
                    ids.push(self.unk);
                    break;
                }
            }
        }
        word.clear();
    }
}
