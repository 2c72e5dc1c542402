//! Deterministic answer matchers for `triage collect`: an answer against a reference, 0 or 1.

use serde::{Deserialize, Serialize};

/// How an answer is compared with its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// The whole answer equals the reference, ignoring case, surrounding whitespace and
    /// runs of inner whitespace.
    Exact,
    /// The last number in the answer equals the reference number (commas, `$` and `%`
    /// ignored; relative tolerance 1e-6), as GSM8K-style answers end.
    Number,
    /// The answer's chosen option letter (A–Z) equals the reference letter.
    Choice,
    /// The reference is a regular expression found anywhere in the answer.
    Regex,
    /// The answer contains the reference, ignoring case and runs of whitespace.
    Contains,
    /// The first JSON value in the answer (code fences allowed) equals the reference's.
    Json,
}

impl Match {
    /// The matcher a reference calls for when the row names none: one letter → `choice`, a
    /// number → `number`, a JSON object or array → `json`, other text → `contains`.
    pub fn default_for(reference: &str) -> Self {
        let r = reference.trim();
        if r.len() == 1 && r.chars().all(|c| c.is_ascii_alphabetic()) {
            Self::Choice
        } else if parse_number(r).is_some() {
            Self::Number
        } else if (r.starts_with('{') || r.starts_with('['))
            && serde_json::from_str::<serde_json::Value>(r).is_ok()
        {
            Self::Json
        } else {
            Self::Contains
        }
    }

    /// Checks a reference once, before any call is paid for: a regex must compile, a number
    /// must parse, a letter must be one letter, JSON must parse.
    pub fn check(self, reference: &str) -> Result<(), String> {
        let r = reference.trim();
        match self {
            Self::Exact | Self::Contains if r.is_empty() => Err("is empty".into()),
            Self::Number if parse_number(r).is_none() => Err(format!("{r:?} is not a number")),
            Self::Choice if !(r.len() == 1 && r.chars().all(|c| c.is_ascii_alphabetic())) => {
                Err(format!("{r:?} is not one option letter"))
            }
            Self::Regex => regex::Regex::new(reference)
                .map(|_| ())
                .map_err(|e| format!("is not a valid regex: {e}")),
            Self::Json => serde_json::from_str::<serde_json::Value>(r)
                .map(|_| ())
                .map_err(|e| format!("is not JSON: {e}")),
            _ => Ok(()),
        }
    }

    /// 1.0 when `answer` matches `reference`, else 0.0.
    pub fn score(self, answer: &str, reference: &str) -> f64 {
        let ok = match self {
            Self::Exact => squash(answer) == squash(reference),
            Self::Contains => squash(answer).contains(&squash(reference)),
            Self::Number => match (last_number(answer), parse_number(reference.trim())) {
                (Some(a), Some(r)) => (a - r).abs() <= 1e-6 * r.abs().max(1.0),
                _ => false,
            },
            Self::Choice => chosen_letter(answer).is_some_and(|c| {
                c.eq_ignore_ascii_case(&reference.trim().chars().next().unwrap_or(' '))
            }),
            Self::Regex => regex::Regex::new(reference).is_ok_and(|re| re.is_match(answer)),
            Self::Json => match (
                first_json(answer),
                serde_json::from_str::<serde_json::Value>(reference.trim()),
            ) {
                (Some(a), Ok(r)) => a == r,
                _ => false,
            },
        };
        f64::from(u8::from(ok))
    }
}

/// Lower case with whitespace runs as one space, trimmed.
fn squash(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn parse_number(s: &str) -> Option<f64> {
    let cleaned: String = s
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| !matches!(c, ',' | '$' | '%' | ' '))
        .collect();
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The last number written in `s` (`-1,234.5`, `$40`, `12%`).
fn last_number(s: &str) -> Option<f64> {
    let bytes = s.as_bytes();
    let mut end = bytes.len();
    while end > 0 {
        // Find the last digit at or before `end`.
        let last = bytes[..end].iter().rposition(u8::is_ascii_digit)?;
        let mut start = last;
        while start > 0
            && (bytes[start - 1].is_ascii_digit() || matches!(bytes[start - 1], b',' | b'.'))
        {
            start -= 1;
        }
        if start > 0 && bytes[start - 1] == b'-' {
            start -= 1;
        }
        if let Some(v) = parse_number(&s[start..=last]) {
            return Some(v);
        }
        end = start;
    }
    None
}

/// The option letter an answer settles on: "answer is (C)", "Answer: C", "**C**", or an
/// answer that is one letter (with optional brackets or a full stop). None when unclear.
fn chosen_letter(answer: &str) -> Option<char> {
    static PATTERNS: std::sync::OnceLock<Vec<regex::Regex>> = std::sync::OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        [
            r"(?i)answer\s*(?:is|:)?\s*:?\s*\(?\**\s*([A-Z])\b",
            r"(?i)^\s*\(?\**([A-Z])\**\)?[.:)]?\s*$",
            r"(?i)^\s*\(?([A-Z])[.):]\s",
        ]
        .iter()
        .filter_map(|p| regex::Regex::new(p).ok())
        .collect()
    });
    patterns.iter().find_map(|re| {
        re.captures_iter(answer)
            .last()
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().chars().next())
            .map(|c| c.to_ascii_uppercase())
    })
}

/// The first JSON object or array in `s`, inside a code fence or not.
fn first_json(s: &str) -> Option<serde_json::Value> {
    let start = s.find(['{', '['])?;
    let mut de = serde_json::Deserializer::from_str(&s[start..]).into_iter::<serde_json::Value>();
    de.next()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_matcher_accepts_what_it_should_and_refuses_the_rest() {
        let cases: &[(Match, &str, &str, f64)] = &[
            (Match::Exact, "  Paris\n", "paris", 1.0),
            (Match::Exact, "Paris, France", "paris", 0.0),
            (Match::Contains, "The capital is   Paris.", "paris", 1.0),
            (Match::Contains, "Lyon", "paris", 0.0),
            (
                Match::Number,
                "So she has 1,234 apples.\n#### 1234",
                "1234",
                1.0,
            ),
            (Match::Number, "It costs $40.", "40", 1.0),
            (Match::Number, "Answer: -3.5", "-3.5", 1.0),
            (Match::Number, "I think 12, no wait, 13", "12", 0.0),
            (Match::Number, "no idea", "12", 0.0),
            (Match::Choice, "The answer is (C).", "C", 1.0),
            (Match::Choice, "Answer: b", "B", 1.0),
            (Match::Choice, "D", "D", 1.0),
            (Match::Choice, "(A) because ...", "A", 1.0),
            (Match::Choice, "The answer is (C).", "D", 0.0),
            (Match::Choice, "It depends.", "D", 0.0),
            (Match::Regex, "result: 42 units", r"\b42\b", 1.0),
            (Match::Regex, "result: 420 units", r"\b42\b", 0.0),
            (
                Match::Json,
                "```json\n{\"a\": [1, 2]}\n```",
                r#"{"a":[1,2]}"#,
                1.0,
            ),
            (Match::Json, "{\"a\": [2, 1]}", r#"{"a":[1,2]}"#, 0.0),
            (Match::Json, "not json", r#"{"a":1}"#, 0.0),
        ];
        for (m, answer, reference, want) in cases {
            assert_eq!(
                m.score(answer, reference),
                *want,
                "{m:?} {answer:?} vs {reference:?}"
            );
        }
    }

    #[test]
    fn the_default_follows_what_the_reference_looks_like() {
        assert_eq!(Match::default_for("C"), Match::Choice);
        assert_eq!(Match::default_for("1,234"), Match::Number);
        assert_eq!(Match::default_for(r#"{"x": 1}"#), Match::Json);
        assert_eq!(Match::default_for("Paris"), Match::Contains);
    }

    #[test]
    fn bad_references_are_refused_before_any_call() {
        assert!(
            Match::Regex
                .check("(unclosed")
                .unwrap_err()
                .contains("regex")
        );
        assert!(
            Match::Number
                .check("twelve")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(Match::Choice.check("AB").is_err());
        assert!(Match::Json.check("{").is_err());
        assert!(Match::Exact.check("  ").is_err());
        assert!(Match::Contains.check("x").is_ok());
    }
}
