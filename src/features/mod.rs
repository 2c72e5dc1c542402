//! The featurizer: one pure function from a conversation to a named, versioned feature vector,
//! shared by serving and training so the two can never disagree.

mod choices;
mod embedding;
mod markers;
mod wordpiece;

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

pub use choices::{CHOICE_FEATURES, choice_stats};
pub use embedding::StaticEmbeddings;
pub use markers::{CHIT_CHAT_MAX_TOKENS, LONG_CONTEXT_TOKENS, Marker, MarkerMatcher, MarkerSet};
pub use wordpiece::AsciiWordPiece;

use crate::error::LoadError;

/// Version of the feature layout. Bump it whenever a feature's meaning changes; it feeds the
/// fingerprint, so old model files are then refused instead of silently misread.
pub const SCHEMA_VERSION: &str = "triage-features/5";

/// Tokens of the routed prompt that are pooled into its embedding; later tokens still count
/// towards the token count. Bounds the cost of embedding huge prompts.
pub const MAX_EMBED_TOKENS: usize = 512;

/// The hand-made numeric features, in schema order. See [`text_stats`] for each definition;
/// they are followed by [`CHOICE_FEATURES`].
pub const DENSE_FEATURES: [&str; 10] = [
    "log_prompt_tokens",
    "log_context_tokens",
    "log_prior_turns",
    "digit_ratio",
    "symbol_ratio",
    "uppercase_ratio",
    "log_lines",
    "log_numbers",
    "mean_word_len",
    "log_question_marks",
];

/// What the featurizer reads: the routed prompt and everything else in the conversation.
#[derive(Debug, Clone, Copy)]
pub struct Conversation<'a> {
    /// The last user message.
    pub prompt: &'a str,
    /// Every other message's content, in order.
    pub context: &'a [&'a str],
    /// User or assistant turns before the routed prompt.
    pub prior_turns: u32,
}

impl<'a> Conversation<'a> {
    /// A single-turn conversation.
    pub fn single(prompt: &'a str) -> Self {
        Self {
            prompt,
            context: &[],
            prior_turns: 0,
        }
    }
}

/// The featurizer's output for one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// The vector, laid out as [`Schema::names`].
    pub vector: Vec<f32>,
    /// Tokens in the routed prompt.
    pub prompt_tokens: u32,
    /// Tokens in the rest of the conversation.
    pub context_tokens: u32,
    /// Detected task markers.
    pub markers: MarkerSet,
}

/// The feature vector's layout and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// [`SCHEMA_VERSION`].
    pub version: String,
    /// One name per vector element.
    pub names: Vec<String>,
    /// Hash of the version, the names and the tokenizer and embedding files: two featurizers
    /// with the same fingerprint produce the same vector for the same input.
    pub fingerprint: String,
}

/// Tokenizer + embeddings + marker matcher. Cheap to share behind an `Arc`; `featurize` is pure.
#[derive(Debug, Clone)]
pub struct Featurizer {
    tokenizer: Tokenizer,
    fast: Option<AsciiWordPiece>,
    embeddings: StaticEmbeddings,
    matcher: MarkerMatcher,
    schema: Schema,
}

fn names_for(dim: usize) -> Vec<String> {
    DENSE_FEATURES
        .iter()
        .map(|s| (*s).to_string())
        .chain(CHOICE_FEATURES.iter().map(|s| (*s).to_string()))
        .chain(Marker::ALL.iter().map(|m| format!("marker_{}", m.name())))
        .chain((0..dim).map(|i| format!("emb_{i:03}")))
        .collect()
}

impl Featurizer {
    /// Loads a model2vec directory (`tokenizer.json`, `model.safetensors`, optional `config.json`).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let tok_path = dir.join("tokenizer.json");
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| LoadError::io(&tok_path, e))?;
        let model_path = dir.join("model.safetensors");
        let model_bytes = std::fs::read(&model_path).map_err(|e| LoadError::io(&model_path, e))?;
        let embeddings = StaticEmbeddings::load(dir, &model_bytes)?;
        let tokenizer = Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| LoadError::invalid(&tok_path, format!("not a tokenizer: {e}")))?;
        Self::from_parts(tokenizer, &tok_bytes, embeddings, &model_bytes)
            .map_err(|m| LoadError::invalid(dir, m))
    }

    /// Assembles a featurizer; `tok_bytes` and `model_bytes` identify the files for the fingerprint.
    pub fn from_parts(
        mut tokenizer: Tokenizer,
        tok_bytes: &[u8],
        embeddings: StaticEmbeddings,
        model_bytes: &[u8],
    ) -> Result<Self, String> {
        // The MiniLM tokenizer pads and truncates to 128 by default: counts would all be 128.
        tokenizer
            .with_truncation(None)
            .map_err(|e| format!("tokenizer: {e}"))?;
        tokenizer.with_padding(None);
        if tokenizer.get_vocab_size(true) > embeddings.rows() {
            tracing::warn!(
                vocab = tokenizer.get_vocab_size(true),
                rows = embeddings.rows(),
                "tokenizer vocabulary is larger than the embedding table; extra ids are skipped"
            );
        }
        let names = names_for(embeddings.dim());
        let mut h = Sha256::new();
        h.update(SCHEMA_VERSION.as_bytes());
        for n in &names {
            h.update(n.as_bytes());
            h.update([0]);
        }
        h.update((tok_bytes.len() as u64).to_le_bytes());
        h.update(tok_bytes);
        h.update(model_bytes);
        let digest = h.finalize();
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let matcher = MarkerMatcher::new().map_err(|e| format!("marker automaton: {e}"))?;
        let fast = AsciiWordPiece::for_tokenizer(&tokenizer);
        Ok(Self {
            tokenizer,
            fast,
            embeddings,
            matcher,
            schema: Schema {
                version: SCHEMA_VERSION.into(),
                names,
                fingerprint,
            },
        })
    }

    /// How many trailing elements of every vector are the pooled embedding.
    pub fn embedding_dim(&self) -> usize {
        self.embeddings.dim()
    }

    /// The layout and identity of the vectors this featurizer produces.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Token ids of `text`, without special tokens.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, String> {
        if let Some(fast) = &self.fast
            && AsciiWordPiece::handles(text)
        {
            let mut ids = Vec::with_capacity(text.len() / 4 + 1);
            fast.encode(text, &mut ids);
            return Ok(ids);
        }
        self.slow_token_ids(text)
    }

    /// Token ids from the `tokenizers` crate itself (the reference for the fast path).
    pub fn slow_token_ids(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// The feature vector of a conversation.
    pub fn featurize(&self, conv: Conversation<'_>) -> Result<Features, String> {
        let ids = self.token_ids(conv.prompt)?;
        let prompt_tokens = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let mut context_tokens: u32 = 0;
        for c in conv.context {
            let n = self.token_ids(c)?.len();
            context_tokens = context_tokens.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let mut markers = self.matcher.lexical(conv.prompt, prompt_tokens);
        if prompt_tokens.saturating_add(context_tokens) >= LONG_CONTEXT_TOKENS {
            markers.insert(Marker::LongContext);
        }
        if conv.prior_turns > 0 {
            markers.insert(Marker::MultiTurn);
        }

        let choices = choice_stats(conv.prompt);
        if choices[0] > 0.0 {
            // Lettered options, however written: choosing among labels.
            markers.insert(Marker::Classification);
        }

        let mut vector = vec![0.0f32; self.schema.names.len()];
        let stats = text_stats(conv.prompt);
        let dense = [
            ln1p(prompt_tokens as f32),
            ln1p(context_tokens as f32),
            ln1p(conv.prior_turns as f32),
            stats.digit_ratio,
            stats.symbol_ratio,
            stats.uppercase_ratio,
            ln1p(stats.lines as f32),
            ln1p(stats.numbers as f32),
            stats.mean_word_len,
            ln1p(stats.question_marks as f32),
        ];
        vector[..dense.len()].copy_from_slice(&dense);
        let c0 = DENSE_FEATURES.len();
        vector[c0..c0 + CHOICE_FEATURES.len()].copy_from_slice(&choices);
        let m0 = c0 + CHOICE_FEATURES.len();
        for (i, m) in Marker::ALL.iter().enumerate() {
            vector[m0 + i] = if markers.contains(*m) { 1.0 } else { 0.0 };
        }
        let e0 = m0 + Marker::ALL.len();
        let pooled = &ids[..ids.len().min(MAX_EMBED_TOKENS)];
        self.embeddings.pool_into(pooled, &mut vector[e0..]);
        Ok(Features {
            vector,
            prompt_tokens,
            context_tokens,
            markers,
        })
    }
}

fn ln1p(x: f32) -> f32 {
    x.ln_1p()
}

/// Character statistics of a prompt, from one pass over its bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextStats {
    /// ASCII digits / bytes.
    pub digit_ratio: f32,
    /// ASCII punctuation and symbols / bytes.
    pub symbol_ratio: f32,
    /// ASCII upper-case letters / ASCII letters.
    pub uppercase_ratio: f32,
    /// Lines (newlines + 1; 0 for empty text).
    pub lines: u32,
    /// Maximal runs of digits.
    pub numbers: u32,
    /// Mean length in bytes of whitespace-separated words.
    pub mean_word_len: f32,
    /// `?` characters.
    pub question_marks: u32,
}

/// Computes [`TextStats`].
pub fn text_stats(text: &str) -> TextStats {
    let b = text.as_bytes();
    let (mut digits, mut symbols, mut upper, mut letters) = (0u32, 0u32, 0u32, 0u32);
    let (mut newlines, mut numbers, mut words, mut word_bytes, mut qm) =
        (0u32, 0u32, 0u32, 0u32, 0u32);
    let (mut in_number, mut in_word) = (false, false);
    // One table lookup and branch-free counts per byte: the branchy version mispredicted on
    // mixed text and cost about twice as much.
    for &c in b {
        let k = BYTE_CLASS[usize::from(c)];
        let digit = k & DIGIT != 0;
        let word = k & SPACE == 0;
        digits += u32::from(digit);
        numbers += u32::from(digit & !in_number);
        symbols += u32::from(k & PUNCT != 0);
        qm += u32::from(k & QUESTION != 0);
        letters += u32::from(k & ALPHA != 0);
        upper += u32::from(k & UPPER != 0);
        newlines += u32::from(k & NEWLINE != 0);
        words += u32::from(word & !in_word);
        word_bytes += u32::from(word);
        in_number = digit;
        in_word = word;
    }
    let n = b.len().max(1) as f32;
    TextStats {
        digit_ratio: digits as f32 / n,
        symbol_ratio: symbols as f32 / n,
        uppercase_ratio: if letters == 0 {
            0.0
        } else {
            upper as f32 / letters as f32
        },
        lines: if b.is_empty() { 0 } else { newlines + 1 },
        numbers,
        mean_word_len: if words == 0 {
            0.0
        } else {
            word_bytes as f32 / words as f32
        },
        question_marks: qm,
    }
}

const DIGIT: u8 = 1;
const PUNCT: u8 = 2;
const ALPHA: u8 = 4;
const UPPER: u8 = 8;
const SPACE: u8 = 16;
const NEWLINE: u8 = 32;
const QUESTION: u8 = 64;

/// [`text_stats`]'s classes of each byte, with the `u8::is_ascii_*` definitions (bytes of
/// non-ASCII characters are in no class, so they count as word bytes and nothing else).
const BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        let mut k = 0;
        if c.is_ascii_digit() {
            k |= DIGIT;
        }
        if c.is_ascii_punctuation() {
            k |= PUNCT;
        }
        if c.is_ascii_alphabetic() {
            k |= ALPHA;
        }
        if c.is_ascii_uppercase() {
            k |= UPPER;
        }
        if c.is_ascii_whitespace() {
            k |= SPACE;
        }
        if c == b'\n' {
            k |= NEWLINE;
        }
        if c == b'?' {
            k |= QUESTION;
        }
        t[i] = k;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;

    /// A featurizer over a five-word vocabulary with a 2-D embedding table, so every value
    /// below can be worked out by hand.
    fn tiny() -> Featurizer {
        let vocab = [
            ("[UNK]", 0),
            ("hello", 1),
            ("world", 2),
            ("solve", 3),
            ("x", 4),
        ]
        .into_iter()
        .map(|(w, i)| (w.to_string(), i))
        .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        let table = vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 3.0, 4.0, -1.0, 0.0];
        let emb = StaticEmbeddings::from_table(table, 5, 2, true).unwrap();
        Featurizer::from_parts(tok, b"tiny-tok", emb, b"tiny-emb").unwrap()
    }

    #[test]
    fn schema_names_dense_markers_then_embedding() {
        let f = tiny();
        let names = &f.schema().names;
        assert_eq!(names.len(), 10 + 12 + 12 + 2);
        assert_eq!(names[0], "log_prompt_tokens");
        assert_eq!(names[10], "log_options");
        assert_eq!(names[22], "marker_code");
        assert_eq!(names[33], "marker_multi_turn");
        assert_eq!(names[34], "emb_000");
        assert_eq!(names[35], "emb_001");
        assert_eq!(f.schema().fingerprint.len(), 16);
    }

    #[test]
    fn lettered_options_mark_classification_however_written() {
        let f = tiny();
        for p in [
            "Pick one:\nA. red\nB. blue",
            "Pick one:\n(a) red\n(b) blue",
            "Pick one: (A) red (B) blue",
        ] {
            let feats = f.featurize(Conversation::single(p)).unwrap();
            assert!(feats.markers.contains(Marker::Classification), "{p:?}");
        }
        let feats = f
            .featurize(Conversation::single("Q: hi\nA: hello"))
            .unwrap();
        assert!(!feats.markers.contains(Marker::Classification));
    }

    #[test]
    fn golden_vector_for_a_tiny_model() {
        let f = tiny();
        let feats = f.featurize(Conversation::single("hello world")).unwrap();
        assert_eq!(feats.prompt_tokens, 2);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let want: Vec<f32> = vec![
            3f32.ln(), // ln(1 + 2 tokens)
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            2f32.ln(), // one line
            0.0,
            5.0, // "hello", "world"
            0.0,
        ]
        .into_iter()
        // No options: only the stem's length (11 bytes) is set.
        .chain([
            0.0,
            12f32.ln(),
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ])
        // "hello" opens a short prompt: chit_chat (marker 8) is the only marker.
        .chain((0..12).map(|i| if i == 8 { 1.0 } else { 0.0 }))
        .chain([h, h])
        .collect();
        assert_eq!(feats.vector.len(), want.len());
        for (i, (g, w)) in feats.vector.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() < 1e-6,
                "feature {} = {g}, want {w}",
                f.schema().names[i]
            );
        }
    }

    #[test]
    fn context_and_turns_set_their_features_and_markers() {
        let f = tiny();
        let ctx = ["hello", "world hello"];
        let feats = f
            .featurize(Conversation {
                prompt: "solve x",
                context: &ctx,
                prior_turns: 2,
            })
            .unwrap();
        assert_eq!(feats.context_tokens, 3);
        assert!((feats.vector[1] - 4f32.ln()).abs() < 1e-6);
        assert!((feats.vector[2] - 3f32.ln()).abs() < 1e-6);
        assert!(feats.markers.contains(Marker::MultiTurn));
        assert!(feats.markers.contains(Marker::Math));
        // mean of (3,4) and (-1,0) = (1,2), normalized.
        let n = 5f32.sqrt();
        assert!((feats.vector[34] - 1.0 / n).abs() < 1e-6);
        assert!((feats.vector[35] - 2.0 / n).abs() < 1e-6);
    }

    #[test]
    fn long_context_marker_counts_prompt_and_context() {
        let f = tiny();
        let long = "hello ".repeat(LONG_CONTEXT_TOKENS as usize);
        let ctx = [long.as_str()];
        let feats = f
            .featurize(Conversation {
                prompt: "x",
                context: &ctx,
                prior_turns: 0,
            })
            .unwrap();
        assert!(feats.markers.contains(Marker::LongContext));
        let short = f.featurize(Conversation::single("x")).unwrap();
        assert!(!short.markers.contains(Marker::LongContext));
    }

    #[test]
    fn fingerprint_changes_with_the_model_files() {
        let a = tiny();
        let tok = a.tokenizer.clone();
        let emb = a.embeddings.clone();
        let b = Featurizer::from_parts(tok, b"tiny-tok", emb, b"other-emb").unwrap();
        assert_ne!(a.schema().fingerprint, b.schema().fingerprint);
    }

    #[test]
    fn text_stats_count_what_they_say() {
        let s = text_stats("What is 12 + 7?\nAB");
        assert_eq!(s.numbers, 2);
        assert_eq!(s.lines, 2);
        assert_eq!(s.question_marks, 1);
        assert!((s.digit_ratio - 3.0 / 18.0).abs() < 1e-6);
        // Letters W h a t i s A B, of which W A B are upper case.
        assert!((s.uppercase_ratio - 3.0 / 8.0).abs() < 1e-6);
        assert_eq!(text_stats("").lines, 0);
    }
}
