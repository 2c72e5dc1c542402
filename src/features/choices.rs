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

/// Words that turn a stem around ("all of these EXCEPT…"); matched whole, any case.
const NEGATIONS: [&str; 5] = ["except", "not", "false", "incorrect", "least"];

/// Whether `line` opens with an option label `X.` or `X)` followed by a space, and which letter.
fn option_letter(line: &str) -> Option<u8> {
    let b = line.as_bytes();
    match b {
        [l, p, b' ', ..] if (b'A'..=MAX_OPTION).contains(l) && (*p == b'.' || *p == b')') => {
            Some(*l)
        }
        _ => None,
    }
}

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
/// The options are the line labelled `A.` (or `A)`) and the later lines that carry the next
/// label in sequence, up to `J.`; the stem is everything before the `A.` line, or the whole
/// text when there is none.
/// Lengths are in bytes and go through `ln(1 + x)`.
pub fn choice_stats(text: &str) -> [f32; 12] {
    let mut stem_end = text.len();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if option_letter(line) == Some(b'A') {
            stem_end = offset;
            break;
        }
        offset += line.len();
    }
    let stem = &text[..stem_end];
    let mut all_lens = [0.0f32; (MAX_OPTION - b'A' + 1) as usize];
    let mut count = 0;
    let mut with_digit = 0u32;
    for line in text[stem_end..].lines() {
        if let Some(l) = option_letter(line) {
            // Only the next letter in sequence continues the list.
            if usize::from(l - b'A') != count {
                continue;
            }
            let body = line[3..].trim();
            all_lens[count] = body.len() as f32;
            count += 1;
            with_digit += u32::from(body.bytes().any(|c| c.is_ascii_digit()));
        }
    }
    let lens = &all_lens[..count];
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
    fn multibyte_text_never_splits_a_character() {
        let v = choice_stats("é?\nA. ü\nB. 東京");
        assert!((get(&v, "log_options") - 2f32.ln_1p()).abs() < 1e-6);
    }
}
