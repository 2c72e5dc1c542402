//! Labelled routing data: JSON Lines of prompts with per-model outcomes, and the tier map.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::classifier::HeadsKind;
use crate::error::LoadError;

/// One line of a dataset file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Row {
    /// Row id (line number when the file has none).
    #[serde(default)]
    pub id: String,
    /// Benchmark or traffic source, if known (e.g. `mmlu`, `gsm8k`).
    #[serde(default)]
    pub source: Option<String>,
    /// Topic within the source (e.g. an MMLU subject), if known. Training may use it to place
    /// topic prototypes; serving never needs it.
    #[serde(default)]
    pub category: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// Model name → score in [0, 1]; empty for unlabelled `{"id","prompt"}` lines.
    #[serde(default)]
    pub outcomes: BTreeMap<String, f64>,
}

/// Reads a JSON Lines file; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>, LoadError> {
    let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| LoadError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut row: Row = serde_json::from_str(&line)
            .map_err(|e| LoadError::invalid(path, format!("line {}: {e}", i + 1)))?;
        if row.id.is_empty() {
            row.id = format!("{}", i + 1);
        }
        if let Some((m, s)) = row.outcomes.iter().find(|(_, s)| !(0.0..=1.0).contains(*s)) {
            return Err(LoadError::invalid(
                path,
                format!(
                    "line {}: outcome for {m:?} is {s}, expected a score in [0, 1]",
                    i + 1
                ),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Which dataset model stands for which tier, cheapest tier first.
///
/// Written `NAME=MODEL[|MODEL…],NAME=…`: a tier may name alternatives, the first one present
/// in a row is used, so datasets with different model sets can train one classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierMap {
    /// (tier name, models standing for it).
    pub tiers: Vec<(String, Vec<String>)>,
}

impl std::str::FromStr for TierMap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut tiers: Vec<(String, Vec<String>)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // A bare NAME is NAME=NAME: rows whose outcomes are keyed by tier (`collect`).
            let (name, models) = part.split_once('=').unwrap_or((part, part));
            let name = name.trim().to_string();
            let models: Vec<String> = models
                .split('|')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            if name.is_empty() || models.is_empty() {
                return Err(format!("--tiers: {part:?} needs a tier name and a model"));
            }
            if tiers.iter().any(|(n, _)| *n == name) {
                return Err(format!("--tiers: tier {name:?} appears twice"));
            }
            tiers.push((name, models));
        }
        if tiers.len() < 2 {
            return Err(format!(
                "--tiers: at least 2 tiers are needed, got {}",
                tiers.len()
            ));
        }
        Ok(Self { tiers })
    }
}

impl TierMap {
    /// Tier names, cheapest first.
    pub fn names(&self) -> Vec<String> {
        self.tiers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The models standing in for each tier on this row, `|`-joined (`-` where none has an
    /// outcome).
    pub fn stand_ins(&self, row: &Row) -> String {
        self.tiers
            .iter()
            .map(|(_, models)| {
                models
                    .iter()
                    .find(|m| row.outcomes.contains_key(*m))
                    .map_or("-", String::as_str)
            })
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The row's score for each tier (None where no standing model has an outcome).
    pub fn scores(&self, row: &Row) -> Vec<Option<f64>> {
        self.tiers
            .iter()
            .map(|(_, models)| models.iter().find_map(|m| row.outcomes.get(m).copied()))
            .collect()
    }
}

/// Ordinal labels for one row: for every tier but the dearest, whether it is good enough,
/// i.e. whether it or a cheaper tier scores at least as well as the dearest tier. `None` where
/// the row cannot say (a score is missing).
pub fn ordinal_labels(scores: &[Option<f64>]) -> Vec<Option<bool>> {
    ordinal_targets(scores)
        .into_iter()
        .map(|t| t.map(|t| t >= 1.0))
        .collect()
}

/// Graded ordinal targets for one row: for every tier but the dearest, the share of the
/// dearest tier's score that it (or a cheaper tier) keeps, capped at 1. On 0/1 outcomes this is
/// [`ordinal_labels`] as 0 or 1; on graded ones (a judge's score) it keeps what the threshold
/// throws away: a cheap answer judged 0.45 against the frontier's 0.5 is nearly good enough,
/// one judged 0.02 is not, and the quality a router keeps is the sum of those scores.
pub fn ordinal_targets(scores: &[Option<f64>]) -> Vec<Option<f64>> {
    let n = scores.len();
    let Some(top) = scores.last().copied().flatten() else {
        return vec![None; n.saturating_sub(1)];
    };
    let mut best_so_far: Option<f64> = None;
    (0..n - 1)
        .map(|k| {
            if let Some(s) = scores[k] {
                best_so_far = Some(best_so_far.map_or(s, |b: f64| b.max(s)));
            }
            scores[k].and(best_so_far).map(|b| {
                if b + 1e-9 >= top {
                    1.0
                } else {
                    (b / top).clamp(0.0, 1.0)
                }
            })
        })
        .collect()
}

/// Per row, the label of every head of a model of `kind` (`None` where an outcome it needs is
/// missing): sufficiency heads read [`ordinal_labels`]; quality heads whether each tier's model
/// answered well (score at least 0.5); gain heads, for every tier but the dearest, whether the
/// dearest scored higher, then whether this tier did.
pub fn head_labels(kind: HeadsKind, scores: &[Vec<Option<f64>>]) -> Vec<Vec<Option<bool>>> {
    scores
        .iter()
        .map(|s| match kind {
            HeadsKind::Sufficiency => ordinal_labels(s),
            HeadsKind::Quality => s.iter().map(|v| v.map(|v| v >= 0.5)).collect(),
            HeadsKind::Gain => {
                let top = s.last().copied().flatten();
                s[..s.len().saturating_sub(1)]
                    .iter()
                    .flat_map(|v| match (*v, top) {
                        (Some(v), Some(t)) => [Some(t > v + 1e-9), Some(v > t + 1e-9)],
                        _ => [None, None],
                    })
                    .collect()
            }
        })
        .collect()
}

/// Per head of a model of `kind` over `tiers` tiers, which way a positive label leans: +1 when
/// it means the prompt needs the dearer tier, -1 when it means a cheaper tier will do, 0 when
/// neither (the dearest tier's own quality head). Priors on "needs the dearer tier" enter
/// each head with its sign.
pub fn need_sign(kind: HeadsKind, tiers: usize) -> Vec<f64> {
    match kind {
        HeadsKind::Sufficiency => vec![-1.0; tiers.saturating_sub(1)],
        HeadsKind::Quality => (0..tiers)
            .map(|k| if k + 1 == tiers { 0.0 } else { -1.0 })
            .collect(),
        HeadsKind::Gain => (0..2 * tiers.saturating_sub(1))
            .map(|h| if h % 2 == 0 { 1.0 } else { -1.0 })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_map_parses_alternatives_and_refuses_nonsense() {
        let m: TierMap = "fast=a|b, frontier=c".parse().unwrap();
        assert_eq!(m.names(), vec!["fast", "frontier"]);
        assert_eq!(m.tiers[0].1, vec!["a", "b"]);
        assert!(
            "fast=a"
                .parse::<TierMap>()
                .unwrap_err()
                .contains("at least 2")
        );
        assert!(
            "fast=a,fast=b"
                .parse::<TierMap>()
                .unwrap_err()
                .contains("twice")
        );
        // A bare name stands for itself (outcomes keyed by tier, as `collect` writes them).
        let bare: TierMap = "fast,x=b".parse().unwrap();
        assert_eq!(
            bare.tiers[0],
            ("fast".to_string(), vec!["fast".to_string()])
        );
        assert!(
            "=a,b"
                .parse::<TierMap>()
                .unwrap_err()
                .contains("needs a tier name")
        );
    }

    #[test]
    fn scores_take_the_first_model_present() {
        let m: TierMap = "fast=a|b,frontier=c".parse().unwrap();
        let row = Row {
            id: "1".into(),
            source: None,
            category: None,
            prompt: "p".into(),
            outcomes: [("b".to_string(), 1.0), ("c".to_string(), 0.0)]
                .into_iter()
                .collect(),
        };
        assert_eq!(m.scores(&row), vec![Some(1.0), Some(0.0)]);
    }

    #[test]
    fn graded_targets_keep_the_share_of_the_dearest_score_and_agree_with_0_1_labels() {
        for scores in [
            [Some(1.0), Some(0.0), Some(1.0)],
            [Some(0.0), Some(1.0), Some(1.0)],
            [Some(0.0), Some(0.0), Some(0.0)],
            [Some(0.0), Some(0.0), Some(1.0)],
        ] {
            let hard: Vec<Option<f64>> = ordinal_labels(&scores)
                .iter()
                .map(|l| l.map(|b| if b { 1.0 } else { 0.0 }))
                .collect();
            assert_eq!(ordinal_targets(&scores), hard, "{scores:?}");
        }
        // A judge's scores: the cheap tier keeps a fifth of the frontier's, the middle one
        // (or the cheap one, whichever is better) 0.4 / 0.5.
        assert_eq!(
            ordinal_targets(&[Some(0.1), Some(0.4), Some(0.5)]),
            vec![Some(0.2), Some(0.8)]
        );
        assert_eq!(
            ordinal_targets(&[Some(0.3), None, Some(0.2)]),
            vec![Some(1.0), None]
        );
        assert_eq!(ordinal_targets(&[Some(0.3), None]), vec![None]);
    }

    #[test]
    fn ordinal_labels_are_monotone() {
        // cheap right, middle wrong, top right: cheap suffices, so the middle does too.
        assert_eq!(
            ordinal_labels(&[Some(1.0), Some(0.0), Some(1.0)]),
            vec![Some(true), Some(true)]
        );
        assert_eq!(
            ordinal_labels(&[Some(0.0), Some(1.0), Some(1.0)]),
            vec![Some(false), Some(true)]
        );
        // top wrong: everything is as good as the top.
        assert_eq!(
            ordinal_labels(&[Some(0.0), Some(0.0), Some(0.0)]),
            vec![Some(true), Some(true)]
        );
        assert_eq!(
            ordinal_labels(&[None, Some(0.0), Some(1.0)]),
            vec![None, Some(false)]
        );
        assert_eq!(ordinal_labels(&[Some(1.0), None]), vec![None]);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"prompt\":\"a\"}\n{\"prompt\": 3}\n").unwrap();
        let err = read_jsonl(&p).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(&p, "{\"prompt\":\"a\",\"outcomes\":{\"m\":2.0}}\n").unwrap();
        assert!(read_jsonl(&p).unwrap_err().to_string().contains("[0, 1]"));
        std::fs::write(&p, "{\"prompt\":\"a\"}\n\n").unwrap();
        assert_eq!(read_jsonl(&p).unwrap()[0].id, "1");
    }

    #[test]
    fn gain_labels_say_which_of_the_pair_scored_higher() {
        let scores = vec![
            // fast wrong, standard right, frontier right.
            vec![Some(0.0), Some(1.0), Some(1.0)],
            // fast right where frontier is wrong; standard ties it.
            vec![Some(1.0), Some(0.0), Some(0.0)],
            // No fast outcome; a judge score below the frontier's.
            vec![None, Some(0.6), Some(0.7)],
            // No frontier outcome: nothing to compare with.
            vec![Some(1.0), Some(1.0), None],
        ];
        let labels = head_labels(HeadsKind::Gain, &scores);
        let (t, f) = (Some(true), Some(false));
        assert_eq!(labels[0], vec![t, f, f, f]);
        assert_eq!(labels[1], vec![f, t, f, f]);
        assert_eq!(labels[2], vec![None, None, t, f]);
        assert_eq!(labels[3], vec![None; 4]);
        assert_eq!(
            head_labels(HeadsKind::Quality, &scores)[2],
            vec![None, t, t]
        );
        assert_eq!(head_labels(HeadsKind::Sufficiency, &scores)[1], vec![t, t]);
        assert_eq!(need_sign(HeadsKind::Gain, 3), vec![1.0, -1.0, 1.0, -1.0]);
        assert_eq!(need_sign(HeadsKind::Quality, 3), vec![-1.0, -1.0, 0.0]);
        for kind in [HeadsKind::Gain, HeadsKind::Quality, HeadsKind::Sufficiency] {
            assert_eq!(need_sign(kind, 3).len(), kind.count(3));
            assert_eq!(head_labels(kind, &scores)[0].len(), kind.count(3));
        }
    }
}
