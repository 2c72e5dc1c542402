//! Training rows from logged traffic: decisions joined with outcomes across stores, monotone
//! labels, inverse-propensity weights, and the per-tier success heads fitted on them.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::dataset::Row;
use super::prepare::Prepared;
use super::{TrainOptions, model_file, recipe, scorer};
use crate::classifier::{Classifier, HeadsKind, ModelFile};
use crate::error::{LoadError, TrainError};
use crate::features::{Conversation, Featurizer};
use crate::feedback::{DecisionRecord, OutcomeRecord, Store};

/// Settings for turning logs into rows.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// An outcome counts as a success at or above this quality.
    pub success_threshold: f64,
    /// Inverse-propensity weights are clipped here, so one lucky exploration cannot dominate.
    pub max_weight: f64,
    /// Keep at most this many joined rows, the newest (0: all). Why: a logistic model over a
    /// few hundred features has learnt what it can long before a million rows, while memory
    /// and time grow with every row kept; the newest rows are the traffic the model will see.
    pub max_rows: usize,
}

/// One joined, labelled decision.
#[derive(Debug, Clone)]
pub struct LoggedRow {
    /// Decision id.
    pub decision_id: String,
    /// When it was decided.
    pub time_unix_ms: u64,
    /// Feature vector (current schema).
    pub features: Vec<f32>,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Per-head labels: success at tier k says tiers >= k are good enough; failure says
    /// tiers <= k are not.
    pub labels: Vec<Option<bool>>,
    /// Clipped 1 / propensity.
    pub weight: f64,
    /// Index of the tier that served it.
    pub tier: usize,
    /// Whether it succeeded.
    pub success: bool,
}

/// What reading the logs found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogStats {
    /// Decisions read (all sources, deduplicated).
    pub decisions: usize,
    /// Outcomes read.
    pub outcomes: usize,
    /// Outcomes whose decision was found only in another store.
    pub orphans_joined: usize,
    /// Outcomes whose decision was found nowhere.
    pub orphans_unmatched: usize,
    /// Decisions without a usable outcome (no quality and no success).
    pub without_outcome: usize,
    /// Decisions whose features follow another schema and carry no prompt to recompute them.
    pub other_schema: usize,
    /// Decisions re-featurized from their stored prompt.
    pub refeaturized: usize,
    /// Decisions whose tiers differ from the training tiers.
    pub other_tiers: usize,
    /// Joined rows left out because `max_rows` newer ones were kept.
    pub beyond_cap: usize,
    /// Rows produced.
    pub rows: usize,
}

/// Labels for `heads` heads from one outcome at `tier`: a success there means that tier and
/// every dearer one are good enough; a failure means that tier and every cheaper one are not.
pub fn monotone_labels(success: bool, tier: usize, heads: usize) -> Vec<Option<bool>> {
    (0..heads)
        .map(|j| match success {
            true if j >= tier => Some(true),
            false if j <= tier => Some(false),
            _ => None,
        })
        .collect()
}

/// Calls `each` with every line of a `triage logs export` file: its decision, if any, and its
/// outcomes. Streams, so an export larger than memory can be read.
fn each_export_line(
    path: &Path,
    mut each: impl FnMut(Option<DecisionRecord>, Vec<OutcomeRecord>) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| LoadError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| LoadError::invalid(path, format!("line {}: {e}", i + 1)))?;
        let decision =
            match v["decision"].take() {
                serde_json::Value::Null => None,
                d => Some(serde_json::from_value(d).map_err(|e| {
                    LoadError::invalid(path, format!("line {}: decision: {e}", i + 1))
                })?),
            };
        let outcomes: Vec<OutcomeRecord> = serde_json::from_value(v["outcomes"].take())
            .map_err(|e| LoadError::invalid(path, format!("line {}: outcomes: {e}", i + 1)))?;
        each(decision, outcomes)?;
    }
    Ok(())
}

/// Calls `each` with every decision of a store or export.
fn each_decision(
    path: &Path,
    mut each: impl FnMut(DecisionRecord) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    if path.is_dir() {
        let store = Store::open(path)?;
        for d in store.decisions() {
            each(d.map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?)?;
        }
        Ok(())
    } else {
        each_export_line(path, |d, _| d.map_or(Ok(()), &mut each))
    }
}

/// Calls `each` with every outcome of a store or export.
fn each_outcome(path: &Path, mut each: impl FnMut(OutcomeRecord)) -> Result<(), TrainError> {
    if path.is_dir() {
        let store = Store::open(path)?;
        for o in store.outcomes() {
            each(o.map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?);
        }
        Ok(())
    } else {
        each_export_line(path, |_, outs| {
            outs.into_iter().for_each(&mut each);
            Ok(())
        })
    }
}

/// What the outcomes say about one decision.
#[derive(Default)]
struct Verdicts {
    /// Sum and count of the outcomes' qualities (a success counts 1, a failure 0).
    sum: f64,
    n: usize,
    /// Outcome records, and how many of them were stored before their decision.
    records: usize,
    orphans: usize,
    /// Whether the decision was found.
    matched: bool,
}

/// A logged row ordered by time, oldest first, so a min-heap of them drops the oldest.
struct ByTime(LoggedRow);

impl ByTime {
    fn key(&self) -> (u64, &str) {
        (self.0.time_unix_ms, &self.0.decision_id)
    }
}

impl PartialEq for ByTime {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for ByTime {}
impl PartialOrd for ByTime {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByTime {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Reads stores (directories) and exports (`triage logs export` files) and joins them. Reads
/// twice, outcomes then decisions, so only the verdicts and the rows kept are ever in memory:
/// with `max_rows` set, the newest that many joined rows (older ones are counted in
/// [`LogStats::beyond_cap`]).
pub fn read_logs(
    paths: &[PathBuf],
    featurizer: &Featurizer,
    tiers: &[String],
    opts: LogOptions,
) -> Result<(Vec<LoggedRow>, LogStats), TrainError> {
    let mut stats = LogStats::default();
    // Scores per decision: the mean over its outcomes (one per source).
    let mut verdicts: HashMap<String, Verdicts> = HashMap::new();
    for p in paths {
        each_outcome(p, |o| {
            stats.outcomes += 1;
            let v = verdicts.entry(o.decision_id).or_default();
            v.records += 1;
            v.orphans += usize::from(o.orphan);
            if let Some(q) = o.quality.or(o.success.map(|s| if s { 1.0 } else { 0.0 })) {
                v.sum += q;
                v.n += 1;
            }
        })?;
    }
    let fingerprint = &featurizer.schema().fingerprint;
    let top = tiers.len() - 1;
    let cap = if opts.max_rows == 0 {
        usize::MAX
    } else {
        opts.max_rows
    };
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut kept: std::collections::BinaryHeap<std::cmp::Reverse<ByTime>> =
        std::collections::BinaryHeap::new();
    for p in paths {
        each_decision(p, |d| {
            // The first copy of a decision wins (replicas' exports may overlap).
            if !seen.insert(d.decision_id.clone()) {
                return Ok(());
            }
            let id = &d.decision_id;
            let Some(v) = verdicts.get_mut(id) else {
                stats.without_outcome += 1;
                return Ok(());
            };
            v.matched = true;
            if v.n == 0 {
                stats.without_outcome += 1;
                return Ok(());
            }
            if d.tiers != tiers {
                stats.other_tiers += 1;
                return Ok(());
            }
            let Some(tier) = tiers.iter().position(|t| *t == d.tier) else {
                stats.other_tiers += 1;
                return Ok(());
            };
            // A row older than every kept one when the buffer is full would be dropped at once.
            if kept.len() >= cap
                && kept
                    .peek()
                    .is_some_and(|o| (d.time_unix_ms, id.as_str()) < o.0.key())
            {
                stats.beyond_cap += 1;
                return Ok(());
            }
            let success = v.sum / v.n as f64 >= opts.success_threshold;
            let (features, prompt_tokens) = if &d.schema_fingerprint == fingerprint {
                (d.features, d.prompt_tokens)
            } else if let Some(p) = &d.prompt {
                let f = featurizer
                    .featurize(Conversation::single(p))
                    .map_err(|e| TrainError::Data(format!("decision {id}: {e}")))?;
                stats.refeaturized += 1;
                (f.vector, f.prompt_tokens)
            } else {
                stats.other_schema += 1;
                return Ok(());
            };
            let propensity = if d.propensity > 0.0 {
                d.propensity
            } else {
                1.0
            };
            kept.push(std::cmp::Reverse(ByTime(LoggedRow {
                decision_id: d.decision_id,
                time_unix_ms: d.time_unix_ms,
                features,
                prompt_tokens,
                labels: monotone_labels(success, tier, top),
                weight: (1.0 / propensity).min(opts.max_weight),
                tier,
                success,
            })));
            if kept.len() > cap {
                kept.pop();
                stats.beyond_cap += 1;
            }
            Ok(())
        })?;
    }
    stats.decisions = seen.len();
    for v in verdicts.values() {
        if v.matched {
            stats.orphans_joined += v.orphans;
        } else {
            stats.orphans_unmatched += v.records;
        }
    }
    let mut rows: Vec<LoggedRow> = kept.into_iter().map(|r| r.0.0).collect();
    rows.sort_by(|a, b| {
        a.time_unix_ms
            .cmp(&b.time_unix_ms)
            .then_with(|| a.decision_id.cmp(&b.decision_id))
    });
    stats.rows = rows.len();
    Ok((rows, stats))
}

/// Log-loss and accuracy of one head on held-out logged rows, weighted by inverse propensity.
#[derive(Debug, Clone, Serialize)]
pub struct HeadMetrics {
    /// The head's tier.
    pub tier: String,
    /// Labelled held-out rows.
    pub rows: usize,
    /// Weighted mean log-loss (lower is better).
    pub log_loss: f64,
    /// Weighted accuracy at p = 0.5.
    pub accuracy: f64,
}

/// A time split of the logs: fit on the older rows, measure on the newest ones.
#[derive(Debug, Clone, Serialize)]
pub struct Holdout {
    /// Logged rows fitted on.
    pub train_rows: usize,
    /// Logged rows held out (the newest).
    pub test_rows: usize,
    /// The new recipe fitted on the older rows.
    pub new_model: Vec<HeadMetrics>,
    /// The current model on the same rows.
    pub current_model: Option<Vec<HeadMetrics>>,
}

/// What `triage train --log` reports.
#[derive(Debug, Clone, Serialize)]
pub struct LogReport {
    /// Reading and joining.
    pub logs: LogStats,
    /// Per head: (tier, rows labelled good enough, rows labelled) over logged rows.
    pub labels: Vec<(String, usize, usize)>,
    /// Time-split comparison, when there are enough rows.
    pub holdout: Option<Holdout>,
}

fn head_metrics(c: &Classifier, rows: &[&LoggedRow], tiers: &[String]) -> Vec<HeadMetrics> {
    (0..tiers.len() - 1)
        .map(|k| {
            let (mut w, mut ll, mut acc, mut n) = (0.0, 0.0, 0.0, 0);
            for r in rows {
                let Some(y) = r.labels[k] else { continue };
                let p = c.score(&r.features)[k].clamp(1e-6, 1.0 - 1e-6);
                ll += r.weight * if y { -p.ln() } else { -(1.0 - p).ln() };
                acc += r.weight * f64::from(u8::from((p >= 0.5) == y));
                w += r.weight;
                n += 1;
            }
            HeadMetrics {
                tier: tiers[k].clone(),
                rows: n,
                log_loss: ll / w.max(1e-12),
                accuracy: acc / w.max(1e-12),
            }
        })
        .collect()
}

/// Appends logged rows to `data`, each weighted by its clipped inverse propensity, in one
/// intercept group of their own (`log`), labelled for quality heads (one per tier): a success
/// at tier k says every dearer tier would have succeeded too, a failure that every cheaper
/// one would have failed.
fn append_logged(data: &mut Prepared, rows: &[&LoggedRow], tiers: usize) {
    for r in rows {
        data.rows.push(Row {
            id: r.decision_id.clone(),
            source: Some("log".into()),
            category: None,
            prompt: String::new(),
            outcomes: Default::default(),
        });
        data.x.push(r.features.clone());
        data.tokens.push(r.prompt_tokens);
        data.scores.push(vec![None; tiers]);
        data.labels.push(monotone_labels(r.success, r.tier, tiers));
        data.groups.push("log".into());
        data.weight.push(r.weight);
    }
}

/// Fits a model on logged traffic (plus optional labelled data), after measuring the recipe on
/// a time split against the current model. A logged outcome is known only for the tier that
/// answered, so the heads are quality heads whatever the recipe says: each tier's chance of
/// success, fitted on the (inverse-propensity weighted) outcomes of that tier and the ones
/// monotonicity implies, and a tier's score is 1 minus its expected shortfall against the
/// dearest tier's estimate. Why not sufficiency heads: a failure at the tier used says that
/// tier was not good enough but not that the dearest would have done better, so prompts every
/// tier fails would be learnt as prompts for the dearest (the replay example measured the
/// difference, see `docs/feedback-loop.md`). Uncalibrated (there are no out-of-fold scores to calibrate
/// on). Thresholds are kept from `current` when its tiers match (every kind of head scores the
/// chance that a tier does as well as the dearest, so they keep their meaning; retune with
/// `triage tune`), else 0.5.
pub fn train_from_logs(
    featurizer: &Featurizer,
    logged: &[LoggedRow],
    stats: LogStats,
    extra: Option<&Prepared>,
    tiers: &[String],
    opts: &TrainOptions,
    current: Option<&Classifier>,
) -> Result<(ModelFile, LogReport), TrainError> {
    let mut recipe = opts.recipe.clone();
    recipe.heads = HeadsKind::Quality;
    recipe.calibrate = false;
    let schema = featurizer.schema();
    let heads = tiers.len() - 1;
    let labels = (0..heads)
        .map(|k| {
            let ys: Vec<bool> = logged.iter().filter_map(|r| r.labels[k]).collect();
            (
                tiers[k].clone(),
                ys.iter().filter(|y| **y).count(),
                ys.len(),
            )
        })
        .collect();
    let base = extra.cloned().unwrap_or_default();
    let cut = logged.len() * 4 / 5;
    let holdout = if cut >= 10 && logged.len() - cut >= 5 {
        let mut data = base.clone();
        let older: Vec<&LoggedRow> = logged[..cut].iter().collect();
        append_logged(&mut data, &older, tiers.len());
        let all: Vec<usize> = (0..data.rows.len()).collect();
        match recipe::fit(&schema.names, &data, &all, tiers, &recipe) {
            Ok(fitted) => {
                let c = scorer(schema, tiers, fitted)?;
                let newest: Vec<&LoggedRow> = logged[cut..].iter().collect();
                Some(Holdout {
                    train_rows: cut,
                    test_rows: newest.len(),
                    new_model: head_metrics(&c, &newest, tiers),
                    current_model: current
                        .filter(|c| c.tiers() == tiers)
                        .map(|c| head_metrics(c, &newest, tiers)),
                })
            }
            // Too few labels of one kind in the older rows: report no split rather than fail.
            Err(_) => None,
        }
    } else {
        None
    };
    let mut data = base;
    let all_logged: Vec<&LoggedRow> = logged.iter().collect();
    append_logged(&mut data, &all_logged, tiers.len());
    if data.rows.is_empty() {
        return Err(TrainError::Data(
            "no usable rows: no logged decision has an outcome, and no --dataset was given".into(),
        ));
    }
    let all: Vec<usize> = (0..data.rows.len()).collect();
    let fitted = recipe::fit(&schema.names, &data, &all, tiers, &recipe)?;
    let thresholds = current
        .filter(|c| c.tiers() == tiers)
        .map_or_else(|| vec![0.5; tiers.len()], |c| c.file().thresholds.clone());
    let report = LogReport {
        logs: stats,
        labels,
        holdout,
    };
    let training = serde_json::json!({
        "logs": report,
        "dataset_rows": extra.map_or(0, |e| e.rows.len()),
        "recipe": recipe,
    });
    Ok((
        model_file(schema, tiers, fitted, Vec::new(), thresholds, training),
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::monotone_labels;

    #[test]
    fn labels_are_monotone_in_both_directions() {
        assert_eq!(monotone_labels(true, 0, 2), vec![Some(true), Some(true)]);
        assert_eq!(monotone_labels(true, 1, 2), vec![None, Some(true)]);
        assert_eq!(monotone_labels(true, 2, 2), vec![None, None]);
        assert_eq!(monotone_labels(false, 0, 2), vec![Some(false), None]);
        assert_eq!(monotone_labels(false, 1, 2), vec![Some(false), Some(false)]);
        assert_eq!(monotone_labels(false, 2, 2), vec![Some(false), Some(false)]);
    }
}
