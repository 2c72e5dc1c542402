//! Task markers: cheap lexical cues about what kind of task a prompt is, each documented.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

/// A task marker. The set is closed and ordered: its order is part of the feature schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Marker {
    /// Code fences (```), or programming words: code, function, python, sql, regex, compile, `def `, `#include`...
    Code,
    /// Maths words (calculate, solve, equation, integral, probability, how many...), LaTeX, or
    /// arithmetic between numbers (`3 + 4`, `x^2`).
    Math,
    /// Requests for reasoning over several steps: step by step, prove, derive, explain why, justify...
    MultiStepReasoning,
    /// Pulling facts out of given text: extract, list all, find all, parse, pull out...
    Extraction,
    /// Condensing text: summarize/summarise, tl;dr, key points, condense...
    Summarization,
    /// Choosing among labels: classify, categorize, sentiment, true or false, which of the
    /// following, or lettered answer options (set by the featurizer from
    /// [`choice_stats`](super::choice_stats), the one parser of option lists).
    Classification,
    /// translate, "into French/English/…", "in Spanish/German/…".
    Translation,
    /// Fiction and verse: story, poem, haiku, lyrics, fiction, screenplay...
    CreativeWriting,
    /// Small talk: a short prompt (≤ 16 tokens) that opens with a greeting or thanks.
    ChitChat,
    /// A required output format: JSON, YAML, XML, CSV, "respond only with", "in the format"...
    StrictFormat,
    /// Prompt plus context of at least [`LONG_CONTEXT_TOKENS`] tokens.
    LongContext,
    /// At least one earlier user or assistant turn before the routed message.
    MultiTurn,
}

/// Total tokens (prompt + context) from which [`Marker::LongContext`] is set.
pub const LONG_CONTEXT_TOKENS: u32 = 2048;
/// Routed prompts up to this many tokens may be [`Marker::ChitChat`].
pub const CHIT_CHAT_MAX_TOKENS: u32 = 16;

impl Marker {
    /// Every marker, in schema order.
    pub const ALL: [Marker; 12] = [
        Marker::Code,
        Marker::Math,
        Marker::MultiStepReasoning,
        Marker::Extraction,
        Marker::Summarization,
        Marker::Classification,
        Marker::Translation,
        Marker::CreativeWriting,
        Marker::ChitChat,
        Marker::StrictFormat,
        Marker::LongContext,
        Marker::MultiTurn,
    ];

    /// The marker's name in APIs and schemas.
    pub fn name(self) -> &'static str {
        match self {
            Marker::Code => "code",
            Marker::Math => "math",
            Marker::MultiStepReasoning => "multi_step_reasoning",
            Marker::Extraction => "extraction",
            Marker::Summarization => "summarization",
            Marker::Classification => "classification",
            Marker::Translation => "translation",
            Marker::CreativeWriting => "creative_writing",
            Marker::ChitChat => "chit_chat",
            Marker::StrictFormat => "strict_format",
            Marker::LongContext => "long_context",
            Marker::MultiTurn => "multi_turn",
        }
    }
}

/// A set of markers as a bit mask (bit i = `Marker::ALL[i]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarkerSet(u16);

impl MarkerSet {
    /// Adds a marker.
    pub fn insert(&mut self, m: Marker) {
        self.0 |= 1 << (m as u8);
    }
    /// Whether a marker is present.
    pub fn contains(self, m: Marker) -> bool {
        self.0 & (1 << (m as u8)) != 0
    }
    /// The present markers, in schema order.
    pub fn iter(self) -> impl Iterator<Item = Marker> {
        Marker::ALL.into_iter().filter(move |m| self.contains(*m))
    }
    /// Names of the present markers, in schema order.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Marker::name).collect()
    }
}

/// How a keyword must sit in the text.
#[derive(Clone, Copy)]
enum Bound {
    /// Anywhere (symbols such as "```").
    Anywhere,
    /// At a word start; the word may continue ("summar" matches "summarize").
    Prefix,
    /// As a whole word.
    Word,
}

// The keyword table: the single place that says which words trigger which marker.
const KEYWORDS: &[(Marker, Bound, &[&str])] = &[
    (
        Marker::Code,
        Bound::Anywhere,
        &[
            "```",
            "#include",
            "console.log",
            "println!",
            "=>",
            "();",
            "){",
        ],
    ),
    (
        Marker::Code,
        Bound::Word,
        &[
            "code",
            "function",
            "python",
            "javascript",
            "typescript",
            "java",
            "rust",
            "golang",
            "c++",
            "sql",
            "regex",
            "compile",
            "compiler",
            "debug",
            "def",
            "stack trace",
            "api",
            "bash",
            "html",
            "css",
            "algorithm",
            "recursion",
            "variable",
        ],
    ),
    (
        Marker::Math,
        Bound::Anywhere,
        &["\\frac", "\\sum", "\\int", "$$", "^2", "^3", "sqrt("],
    ),
    (
        Marker::Math,
        Bound::Word,
        &[
            "calculate",
            "compute",
            "solve",
            "equation",
            "equations",
            "integral",
            "derivative",
            "probability",
            "how many",
            "how much",
            "percent",
            "percentage",
            "sum",
            "product of",
            "average",
            "ratio",
            "remainder",
            "polynomial",
            "matrix",
            "theorem",
            "mod",
        ],
    ),
    (
        Marker::MultiStepReasoning,
        Bound::Word,
        &[
            "step by step",
            "step-by-step",
            "prove",
            "derive",
            "explain why",
            "justify",
            "reasoning",
            "reason",
            "think through",
            "walk me through",
            "show your work",
            "show that",
            "first",
            "then",
            "therefore",
        ],
    ),
    (
        Marker::Extraction,
        Bound::Word,
        &[
            "extract",
            "list all",
            "find all",
            "pull out",
            "parse",
            "identify all",
            "retrieve the",
        ],
    ),
    (
        Marker::Summarization,
        Bound::Prefix,
        &[
            "summar",
            "tl;dr",
            "tldr",
            "key points",
            "condense",
            "in a nutshell",
            "recap",
        ],
    ),
    (
        Marker::Classification,
        Bound::Word,
        &[
            "classify",
            "categorize",
            "categorise",
            "sentiment",
            "true or false",
            "which of the following",
            "label",
            "which category",
            "is it positive",
        ],
    ),
    (
        Marker::Translation,
        Bound::Word,
        &[
            "translate",
            "translation",
            "into english",
            "into french",
            "into spanish",
            "into german",
            "into chinese",
            "into japanese",
            "in french",
            "in spanish",
            "in german",
            "in italian",
            "in chinese",
            "in japanese",
        ],
    ),
    (
        Marker::CreativeWriting,
        Bound::Word,
        &[
            "story",
            "poem",
            "haiku",
            "lyrics",
            "fiction",
            "screenplay",
            "limerick",
            "sonnet",
            "creative",
            "imagine",
            "fairy tale",
        ],
    ),
    (
        Marker::StrictFormat,
        Bound::Word,
        &[
            "json",
            "yaml",
            "xml",
            "csv",
            "markdown table",
            "respond only",
            "reply only",
            "answer only",
            "in the format",
            "exactly",
            "schema",
            "only output",
        ],
    ),
];

const GREETINGS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank you",
    "good morning",
    "good evening",
    "good night",
    "how are you",
    "what's up",
    "yo",
    "cheers",
    "bye",
];

/// Matches the keyword table in one pass over the text.
#[derive(Debug, Clone)]
pub struct MarkerMatcher {
    automaton: AhoCorasick,
    // For pattern i: the marker and how it must be bounded.
    patterns: Vec<(u8, u8)>,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

impl MarkerMatcher {
    /// Builds the automaton for the keyword table.
    pub fn new() -> Result<Self, aho_corasick::BuildError> {
        let mut words = Vec::new();
        let mut patterns = Vec::new();
        for (marker, bound, list) in KEYWORDS {
            for w in *list {
                words.push(*w);
                patterns.push((*marker as u8, *bound as u8));
            }
        }
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&words)?;
        Ok(Self {
            automaton,
            patterns,
        })
    }

    /// The lexical markers of `text` (every marker except the length- and turn-based ones).
    pub fn lexical(&self, text: &str, prompt_tokens: u32) -> MarkerSet {
        let bytes = text.as_bytes();
        let mut set = MarkerSet::default();
        for m in self.automaton.find_overlapping_iter(text) {
            let (marker, bound) = self.patterns[m.pattern().as_usize()];
            let before_ok = m.start() == 0 || !is_word_byte(bytes[m.start() - 1]);
            let after_ok = m.end() >= bytes.len() || !is_word_byte(bytes[m.end()]);
            let ok = match bound {
                b if b == Bound::Anywhere as u8 => true,
                b if b == Bound::Prefix as u8 => before_ok,
                _ => before_ok && after_ok,
            };
            if ok {
                set.insert(Marker::ALL[marker as usize]);
            }
        }
        if has_arithmetic(bytes) {
            set.insert(Marker::Math);
        }
        if prompt_tokens <= CHIT_CHAT_MAX_TOKENS && starts_with_greeting(text) {
            set.insert(Marker::ChitChat);
        }
        set
    }
}

fn starts_with_greeting(text: &str) -> bool {
    let t = text.trim_start().as_bytes();
    GREETINGS.iter().any(|g| {
        t.len() >= g.len()
            && t[..g.len()].eq_ignore_ascii_case(g.as_bytes())
            && (t.len() == g.len() || !is_word_byte(t[g.len()]))
    })
}

// A digit, optional spaces, an arithmetic operator, optional spaces, a digit: "3 + 4", "2*x" does
// not count, "12/4" does.
fn has_arithmetic(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut j = i + 1;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if j < b.len() && matches!(b[j], b'+' | b'-' | b'*' | b'/' | b'=' | b'^' | b'%') {
                let mut k = j + 1;
                while k < b.len() && b[k] == b' ' {
                    k += 1;
                }
                if k < b.len() && b[k].is_ascii_digit() {
                    return true;
                }
            }
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn markers(text: &str) -> Vec<&'static str> {
        MarkerMatcher::new().unwrap().lexical(text, 10).names()
    }

    #[test]
    fn each_lexical_marker_fires_on_its_trigger() {
        let cases = [
            ("Fix this ```let x = 1;```", "code"),
            ("Write a Python function to reverse a list", "code"),
            ("What is 17 * 23?", "math"),
            ("Solve the equation for x", "math"),
            (
                "Explain why the sky is blue, step by step",
                "multi_step_reasoning",
            ),
            ("Extract the dates from this email", "extraction"),
            ("Summarize the following article", "summarization"),
            ("Please give a tl;dr", "summarization"),
            ("Classify the sentiment of this review", "classification"),
            ("Translate this sentence into French", "translation"),
            ("Write a poem about autumn", "creative_writing"),
            ("Hello there!", "chit_chat"),
            ("Reply only with JSON", "strict_format"),
        ];
        for (text, want) in cases {
            assert!(
                markers(text).contains(&want),
                "{text:?} gave {:?}, want {want}",
                markers(text)
            );
        }
    }

    #[test]
    fn words_must_be_whole() {
        // "this" contains "hi", "sumo" starts with "sum", "translated" is not "translate".
        assert!(
            markers("this is a sumo wrestler").is_empty(),
            "{:?}",
            markers("this is a sumo wrestler")
        );
        assert!(!markers("the codec").contains(&"code"));
    }

    #[test]
    fn chit_chat_needs_a_short_prompt() {
        let m = MarkerMatcher::new().unwrap();
        assert!(m.lexical("hi", 1).contains(Marker::ChitChat));
        assert!(
            !m.lexical("hi", CHIT_CHAT_MAX_TOKENS + 1)
                .contains(Marker::ChitChat)
        );
    }

    #[test]
    fn plain_text_has_no_markers() {
        assert!(markers("The weather in Lisbon").is_empty());
    }

    #[test]
    fn marker_set_round_trips() {
        let mut s = MarkerSet::default();
        s.insert(Marker::MultiTurn);
        s.insert(Marker::Code);
        assert_eq!(s.names(), vec!["code", "multi_turn"]);
    }
}
