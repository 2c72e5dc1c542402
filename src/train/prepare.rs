//! Turning labelled rows into what fitting reads: the serving featurizer's vectors, per-tier
//! scores, and the group each row's intercept is fitted for.

use super::dataset::{Row, TierMap, ordinal_labels};
use crate::error::TrainError;
use crate::features::{Conversation, Featurizer};

/// Rows turned into features, tier scores and ordinal labels.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The rows, in input order.
    pub rows: Vec<Row>,
    /// Feature vectors.
    pub x: Vec<Vec<f32>>,
    /// Prompt token counts.
    pub tokens: Vec<u32>,
    /// Per-tier scores (None where the row has no outcome for that tier).
    pub scores: Vec<Vec<Option<f64>>>,
    /// Per cheaper tier, whether it scores at least as well as the dearest (the label
    /// calibration and the reports read, whatever the heads estimate).
    pub labels: Vec<Vec<Option<bool>>>,
    /// The row's intercept group: its source and the dataset models that stood in for the
    /// tiers (`source|model|model|…`, `-` where a tier has none). Rows of different benchmarks
    /// differ in how often a cheap model suffices for reasons no prompt feature carries; each
    /// group gets its own intercept while fitting so that the slopes learn only what differs
    /// within a group (see [`super::recipe::Recipe::group_offsets`]).
    pub groups: Vec<String>,
    /// Weight of each row's log-loss: 1 for labelled datasets, the clipped inverse propensity
    /// for logged decisions (a rare explored outcome stands for the unexplored ones like it).
    pub weight: Vec<f64>,
}

/// The intercept group of a row; see [`Prepared::groups`].
pub fn group_key(row: &Row, tiers: &TierMap) -> String {
    format!(
        "{}|{}",
        row.source.as_deref().unwrap_or("-"),
        tiers.stand_ins(row)
    )
}

/// Featurizes rows with the serving featurizer (in parallel; the result is in input order).
pub fn prepare(
    featurizer: &Featurizer,
    rows: Vec<Row>,
    tiers: &TierMap,
    progress: bool,
) -> Result<Prepared, TrainError> {
    let bar = if progress {
        super::progress_bar(rows.len() as u64, "featurizing")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = rows.len().div_ceil(threads).max(1);
    type Part = Result<Vec<(Vec<f32>, u32)>, String>;
    let results: Vec<Part> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                s.spawn(move || {
                    part.iter()
                        .map(|r| {
                            bar.inc(1);
                            featurizer
                                .featurize(Conversation::single(&r.prompt))
                                .map(|f| (f.vector, f.prompt_tokens))
                                .map_err(|e| format!("row {}: {e}", r.id))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("featurizer thread panicked".into()))
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut x = Vec::with_capacity(rows.len());
    let mut tokens = Vec::with_capacity(rows.len());
    for part in results {
        for (v, t) in part.map_err(TrainError::Data)? {
            x.push(v);
            tokens.push(t);
        }
    }
    let scores: Vec<Vec<Option<f64>>> = rows.iter().map(|r| tiers.scores(r)).collect();
    let labels = scores.iter().map(|s| ordinal_labels(s)).collect();
    let groups = rows.iter().map(|r| group_key(r, tiers)).collect();
    let weight = vec![1.0; rows.len()];
    Ok(Prepared {
        rows,
        x,
        tokens,
        scores,
        labels,
        groups,
        weight,
    })
}

impl Prepared {
    /// Rows with a score for every tier, and the score matrix (missing scores as 0, which
    /// only rows outside the first list have).
    pub fn complete(&self) -> (Vec<usize>, Vec<Vec<f64>>) {
        let rows = (0..self.rows.len())
            .filter(|&r| self.scores[r].iter().all(Option::is_some))
            .collect();
        let scores = self
            .scores
            .iter()
            .map(|s| s.iter().map(|v| v.unwrap_or(0.0)).collect())
            .collect();
        (rows, scores)
    }

    /// A subset of the rows, in the given order (for leave-one-group-out training).
    pub fn subset(&self, rows: &[usize]) -> Self {
        Self {
            rows: rows.iter().map(|&r| self.rows[r].clone()).collect(),
            x: rows.iter().map(|&r| self.x[r].clone()).collect(),
            tokens: rows.iter().map(|&r| self.tokens[r]).collect(),
            scores: rows.iter().map(|&r| self.scores[r].clone()).collect(),
            labels: rows.iter().map(|&r| self.labels[r].clone()).collect(),
            groups: rows.iter().map(|&r| self.groups[r].clone()).collect(),
            weight: rows.iter().map(|&r| self.weight[r]).collect(),
        }
    }

    /// Appends another prepared set (same tiers).
    pub fn extend(&mut self, other: Self) {
        self.rows.extend(other.rows);
        self.x.extend(other.x);
        self.tokens.extend(other.tokens);
        self.scores.extend(other.scores);
        self.labels.extend(other.labels);
        self.groups.extend(other.groups);
        self.weight.extend(other.weight);
    }
}
