//! The shape of a multiple-choice prompt: its question stem and its lettered options.
//!
//! Why these exist: on exam-style prompts the embedding says which subject a question is
//! about, not how hard it is. What separates questions a cheap model gets wrong from those it
//! gets right is largely structural: a long stem against short options, numeric options, a
//! negated stem ("which is NOT…"), paired true/false statements. Cross-validated on the
//! RouteLLM MMLU rows they took the quality-heads recipe from 0.666 to 0.671 APGR (see the
//! model card). On prompts without options only the stem's own values are set.

/// Names of the values [`choice_stats`] returns, in schema order.
pub const CHOICE_FEATURES: [&str; 12] = [
    "log_options",
    "log_stem_chars",
    "log_option_chars",
    "option_len_spread",
    "option_digit_share",
    "stem_digit_ratio",
    "stem_lines",
    "stem_question_mark",
    "stem_negation",
    "statement_pair",
    "which_of_the_following",
    "of_the_above",
];

/// Option letters recognised; MMLU-Pro goes up to J.
const MAX_OPTION: u8 = b'J';

/// How an option label is written: `A.`, `A)`, `A:` or `(A)`, and in which case. Every label
/// of one list is written alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    parenthesised: bool,
    close: u8,
    lower: bool,
}

/// The option label opening `line` (after any indentation) and followed by a space or tab:
/// which option it is (0 for A), how it is written, and the byte where its text starts.
fn label(line: &str) -> Option<(usize, Style, usize)> {
    let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
    let (parenthesised, letter, close, next) = match &line.as_bytes()[indent..] {
        [b'(', l, b')', n, ..] => (true, *l, b')', *n),
        [l, c @ (b'.' | b')' | b':'), n, ..] => (false, *l, *c, *n),
        _ => return None,
    };
    if next != b' ' && next != b'\t' {
        return None;
    }
    let (lower, index) = match letter {
        b'A'..=MAX_OPTION => (false, letter - b'A'),
        l if (b'a'..=MAX_OPTION.to_ascii_lowercase()).contains(&l) => (true, l - b'a'),
        _ => return None,
    };
    let style = Style {
        parenthesised,
        close,
        lower,
    };
    Some((
        usize::from(index),
        style,
        indent + if parenthesised { 3 } else { 2 },
    ))
}

/// Options one to a line: lines labelled `A`, `B`, … in sequence, in one [`Style`], at least
/// two of them (a lone `A:` is as likely the answer of a "Q: … A: …" exchange). Where the text
/// holds several such lists, the last one: options close a question, and what comes before
/// them (a key labelled `A:` to `E:`, sub-questions `(a)` and `(b)`, worked examples with
/// their own options) is part of its stem. Returns where the stem ends and the options'
/// texts. Each candidate list ends at the next line labelled `A` in its style, so every line
/// is read at most once per style: linear however many lists a hostile prompt holds.
fn line_options(text: &str) -> Option<(usize, Vec<&str>)> {
    let mut found = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let Some((0, style, _)) = label(line) else {
            continue;
        };
        let mut bodies = Vec::new();
        for later in text[start..].lines() {
            match label(later) {
                Some((i, s, at)) if s == style && i == bodies.len() => {
                    bodies.push(later[at..].trim());
                }
                // A second list in this style starts: this one is over.
                Some((0, s, _)) if s == style => break,
                _ => {}
            }
        }
        if bodies.len() >= 2 {
            found = Some((start, bodies));
        }
    }
    found
}

/// Options on one line, `(A) … (B) …` (as in "Answer Choices: (A) 8 (B) 2"), the last such
/// list in the text: the stem ends at its `(A)`, each option runs to the next label in
/// sequence, the last to the end of its line. Each candidate ends at the next `(A)` or at
/// the end of its line, which keeps the search linear.
fn inline_options(text: &str) -> Option<(usize, Vec<&str>)> {
    for first in [b'A', b'a'] {
        let label = |i: u8| format!("({}) ", char::from(first + i));
        let starts: Vec<usize> = text.match_indices(&label(0)).map(|(at, _)| at).collect();
        let mut found = None;
        for (k, &stem_end) in starts.iter().enumerate() {
            let mut from = stem_end + 4;
            let line_end = text[from..].find('\n').map_or(text.len(), |e| from + e);
            let end = starts
                .get(k + 1)
                .map_or(line_end, |&next| next.min(line_end));
            let mut bodies = Vec::new();
            for i in 1..=(MAX_OPTION - b'A') {
                let Some(at) = text[from..end].find(&label(i)) else {
                    break;
                };
                bodies.push(text[from..from + at].trim());
                from += at + 4;
            }
            bodies.push(text[from..end].trim());
            if bodies.len() >= 2 {
                found = Some((stem_end, bodies));
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Words that turn a stem around ("all of these EXCEPT…"); matched whole, any case.
const NEGATIONS: [&str; 5] = ["except", "not", "false", "incorrect", "least"];

/// Phrases searched in every prompt: [`NEGATIONS`], then the three phrase flags.
const PHRASES: [&str; 8] = [
    NEGATIONS[0],
    NEGATIONS[1],
    NEGATIONS[2],
    NEGATIONS[3],
    NEGATIONS[4],
    "statement 1",
    "which of the following",
    " of the above",
];

/// The searchers of [`PHRASES`], built once: building one costs about as much as running it
/// on a short prompt.
static FINDERS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 8]> =
    std::sync::LazyLock::new(|| PHRASES.map(memchr::memmem::Finder::new));

/// Whether the phrase of `finder` occurs in `hay` with no ASCII letter on either side.
fn has_word(hay: &[u8], finder: &memchr::memmem::Finder<'_>) -> bool {
    let len = finder.needle().len();
    let not_letter = |c: Option<&u8>| c.is_none_or(|c| !c.is_ascii_alphabetic());
    finder.find_iter(hay).any(|i| {
        not_letter(i.checked_sub(1).and_then(|j| hay.get(j))) && not_letter(hay.get(i + len))
    })
}

/// The [`CHOICE_FEATURES`] of `text`.
///
/// The options are a list of lettered lines ([`line_options`]: `A.`, `A)`, `A:` or `(A)`,
/// upper or lower case, up to `J`) or, failing that, labels `(A) … (B) …` on one line
/// ([`inline_options`]); the stem is everything before the first option, or the whole text
/// when there are none. Why several writings: one question must get the same features however
/// its options are written, or its route depends on the benchmark's template rather than on
/// the question. Lengths are in bytes and go through `ln(1 + x)`.
pub fn choice_stats(text: &str) -> [f32; 12] {
    let (stem_end, bodies) = line_options(text)
        .or_else(|| inline_options(text))
        .unwrap_or((text.len(), Vec::new()));
    let stem = &text[..stem_end];
    let count = bodies.len();
    let lens: Vec<f32> = bodies.iter().map(|b| b.len() as f32).collect();
    let with_digit = bodies
        .iter()
        .filter(|b| b.bytes().any(|c| c.is_ascii_digit()))
        .count();
    let n = count as f32;
    let (mean, spread, digit_share) = if count == 0 {
        (0.0, 0.0, 0.0)
    } else {
        let mean = lens.iter().sum::<f32>() / n;
        let var = lens.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / n;
        (mean, var.sqrt() / (mean + 1.0), with_digit as f32 / n)
    };
    let stem_digits = stem.bytes().filter(u8::is_ascii_digit).count() as f32;
    // One lower-cased copy and SIMD substring search: a naive case-insensitive scan per
    // phrase cost 0.2 ms on an 8k-token prompt; a prebuilt case-insensitive Aho-Corasick
    // pass, which avoids the copy, measured no faster.
    let lower = text.to_ascii_lowercase();
    let lower = lower.as_bytes();
    let lower_stem = &lower[..stem_end];
    let finders = &*FINDERS;
    let negated = finders[..NEGATIONS.len()]
        .iter()
        .any(|f| has_word(lower_stem, f));
    let contains = |i: usize| finders[i].find(lower).is_some();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [
        n.ln_1p(),
        (stem.len() as f32).ln_1p(),
        mean.ln_1p(),
        spread,
        digit_share,
        stem_digits / (stem.len() as f32 + 1.0),
        (memchr::memchr_iter(b'\n', stem.as_bytes()).count() as f32).ln_1p(),
        flag(stem.contains('?')),
        flag(negated),
        flag(contains(5)),
        flag(contains(6)),
        flag(contains(7)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(v: &[f32; 12], name: &str) -> f32 {
        let i = CHOICE_FEATURES.iter().position(|n| *n == name).unwrap();
        v[i]
    }

    #[test]
    fn splits_stem_and_options() {
        let p = "Which of the following is NOT prime?\nA. 2\nB. 9\nC. 13\nD. 17\nAnswer:";
        let v = choice_stats(p);
        assert!((get(&v, "log_options") - 4f32.ln_1p()).abs() < 1e-6);
        assert!((get(&v, "log_stem_chars") - 37f32.ln_1p()).abs() < 1e-6);
        // Option bodies of 1, 1, 2 and 2 bytes.
        assert!((get(&v, "log_option_chars") - 1.5f32.ln_1p()).abs() < 1e-6);
        assert!((get(&v, "option_len_spread") - 0.5 / 2.5).abs() < 1e-6);
        assert_eq!(get(&v, "option_digit_share"), 1.0);
        assert_eq!(get(&v, "stem_question_mark"), 1.0);
        assert_eq!(get(&v, "stem_negation"), 1.0);
        assert_eq!(get(&v, "which_of_the_following"), 1.0);
        assert_eq!(get(&v, "statement_pair"), 0.0);
        assert_eq!(get(&v, "stem_lines"), 1f32.ln_1p());
    }

    #[test]
    fn statement_pairs_and_above_options() {
        let p = "Statement 1 | Every group is abelian. Statement 2 | Z is a ring.\nA) True, True\nB) None of the above";
        let v = choice_stats(p);
        assert_eq!(get(&v, "statement_pair"), 1.0);
        assert_eq!(get(&v, "of_the_above"), 1.0);
        assert_eq!(get(&v, "option_digit_share"), 0.0);
        assert_eq!(get(&v, "stem_negation"), 0.0);
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
    }

    #[test]
    fn plain_prompts_only_have_a_stem() {
        let p = "Write a haiku about 3 cats.\nI. mean it";
        let v = choice_stats(p);
        assert_eq!(get(&v, "log_options"), 0.0);
        assert_eq!(get(&v, "log_option_chars"), 0.0);
        assert_eq!(get(&v, "option_digit_share"), 0.0);
        assert!((get(&v, "log_stem_chars") - (p.len() as f32).ln_1p()).abs() < 1e-6);
        assert!((get(&v, "stem_digit_ratio") - 1.0 / (p.len() as f32 + 1.0)).abs() < 1e-6);
        // "nothing" holds "not" but not as a word.
        assert_eq!(get(&choice_stats("nothing to see"), "stem_negation"), 0.0);
        assert_eq!(get(&choice_stats("Not so."), "stem_negation"), 1.0);
        assert_eq!(get(&choice_stats("a knot, or NOT?"), "stem_negation"), 1.0);
        assert_eq!(get(&choice_stats("éNOTé"), "stem_negation"), 1.0);
        assert_eq!(choice_stats(""), [0.0; 12]);
    }

    #[test]
    fn letters_out_of_sequence_are_not_options() {
        // A second "A." block or a letter that skips ahead is prose, not an option list.
        let p = "Q\nA. one\nB. two\nD. four\nA. again";
        let v = choice_stats(p);
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
    }

    #[test]
    fn one_question_has_the_same_shape_however_its_options_are_written() {
        let stem = "Which of the following is NOT prime?";
        let options = ["2", "9", "13", "17"];
        let lines = |label: &dyn Fn(char) -> String| -> String {
            let mut p = stem.to_string();
            for (i, o) in options.iter().enumerate() {
                p.push_str(&format!("\n{} {o}", label(char::from(b'A' + i as u8))));
            }
            p + "\nAnswer:"
        };
        let reference = choice_stats(&lines(&|l| format!("{l}.")));
        assert!((get(&reference, "log_options") - 4f32.ln_1p()).abs() < 1e-6);
        let writings = [
            lines(&|l| format!("{l})")),
            lines(&|l| format!("{l}:")),
            lines(&|l| format!("({l})")),
            lines(&|l| format!("{}.", l.to_ascii_lowercase())),
            lines(&|l| format!("({})", l.to_ascii_lowercase())),
            lines(&|l| format!("   {l}.")),
            format!("{stem}\n(A) 2 (B) 9 (C) 13 (D) 17\nAnswer:"),
            format!("{stem}\n(a) 2 (b) 9 (c) 13 (d) 17"),
        ];
        for w in &writings {
            let v = choice_stats(w);
            for name in CHOICE_FEATURES {
                assert!(
                    (get(&v, name) - get(&reference, name)).abs() < 1e-6,
                    "{name} differs for {w:?}: {} vs {}",
                    get(&v, name),
                    get(&reference, name)
                );
            }
        }
    }

    #[test]
    fn a_lone_label_or_a_dialogue_is_not_a_list() {
        // "A:" answering "Q:" is one label, not options.
        let v = choice_stats("Q: what is 2 + 2?\nA: 4\nQ: and 3 + 3?\nA:");
        assert_eq!(get(&v, "log_options"), 0.0);
        let v = choice_stats("Rate it.\nA. it is fine");
        assert_eq!(get(&v, "log_options"), 0.0);
        // Mixed writings do not make one list.
        let v = choice_stats("Q\nA. x\n(B) y\n(A) one\n(B) two\n(C) three");
        assert!((get(&v, "log_options") - 3f32.ln_1p()).abs() < 1e-6);
        // A key labelled A: to C: before the options belongs to the stem.
        let p = "Use the key.\nA: Ann reads.\nB: Bo plays.\nC: Cy sings.\n~A\nA. Ann does not read.\nB. Bo plays.\nAnswer:";
        let v = choice_stats(p);
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
        assert!((get(&v, "log_stem_chars") - (p.find("A. ").unwrap() as f32).ln_1p()).abs() < 1e-6);
        // Worked examples with their own options: the last question's options count.
        let p = "Q1?\n(A) a (B) b\nAnswer: A\nQ2?\n(A) one (B) two (C) three\nAnswer:";
        let v = choice_stats(p);
        assert!((get(&v, "log_options") - 3f32.ln_1p()).abs() < 1e-6);
        // "(A)" alone inline is not a list either; all ten inline labels are.
        assert_eq!(get(&choice_stats("see (A) above"), "log_options"), 0.0);
        let ten: String = (0..10u8)
            .map(|i| format!("({}) o{i} ", char::from(b'A' + i)))
            .collect();
        let v = choice_stats(&format!("Pick:\n{ten}"));
        assert!((get(&v, "log_options") - 10f32.ln_1p()).abs() < 1e-6);
        assert!((get(&v, "log_option_chars") - 2f32.ln_1p()).abs() < 1e-6);
    }

    #[test]
    fn many_list_starts_stay_linear() {
        // Hostile input: thousands of lines labelled A, none followed by B; lists in every
        // style interleaved; one line of inline labels. Each finishes at once (a quadratic
        // search would take minutes on these).
        let p = "A. x\n".repeat(20_000);
        let v = choice_stats(&p);
        assert_eq!(get(&v, "log_options"), 0.0);
        assert!((get(&v, "log_stem_chars") - (p.len() as f32).ln_1p()).abs() < 1e-6);
        let p = "A. x\n(a) y\nA: z\nb: w\n".repeat(5_000) + "A. last\nB. list";
        let v = choice_stats(&p);
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
        let p = "(A) x ".repeat(20_000) + "(B) y";
        let v = choice_stats(&p);
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        let v = choice_stats("é?\nA. ü\nB. 東京");
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
    }
}
