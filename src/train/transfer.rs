//! Leave-one-group-out evaluation: for every source (or category), train on all the others
//! exactly as `triage train` would and measure the held-out group, beside its baselines.
//!
//! This is the figure to optimise. A user's traffic is never one of our benchmarks, so what
//! counts is how a router trained on some kinds of prompts ranks a kind it has never seen;
//! cross-validation inside one file rewards memorising that file's topics instead.

use serde::Serialize;

use super::dataset::TierMap;
use super::eval;
use super::prepare::Prepared;
use super::report::{self, Report};
use super::{TrainOptions, train};
use crate::classifier::Classifier;
use crate::error::TrainError;
use crate::features::Featurizer;

/// What a held-out group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The rows' `source` (a benchmark or a traffic source).
    Source,
    /// The rows' `source/category`.
    Category,
}

impl GroupBy {
    fn key(self, row: &super::dataset::Row) -> String {
        let source = row.source.as_deref().unwrap_or("-");
        match self {
            Self::Source => source.to_string(),
            Self::Category => format!("{source}/{}", row.category.as_deref().unwrap_or("-")),
        }
    }
}

/// One held-out group.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    /// The group.
    pub group: String,
    /// Rows the model was trained on (every other group's).
    pub train_rows: usize,
    /// The held-out group measured with the model trained without it: two-tier figures
    /// (its cheapest tier vs the dearest), calibration, and with prices and every tier's
    /// outcome the cost at the quality target (`router` there is the model's own thresholds,
    /// tuned on the other groups; `router_best` the best thresholds for this group).
    pub report: Report,
    /// How far the two-tier figures could move on another sample of such prompts.
    pub spread: Option<Spread>,
}

/// Paired bootstrap of the two-tier APGR: 95 % intervals over resamples of the measured rows
/// (each group's rows resampled on its own; the mean over groups takes one resample of every
/// group). Why: a held-out benchmark is one sample of its kind of prompts, and a router that
/// "beats a baseline" by less than the interval's width may not on the next sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spread {
    /// Resamples drawn.
    pub resamples: usize,
    /// The router's APGR.
    pub router: [f64; 2],
    /// The router's APGR less the length baseline's, on the same resample.
    pub minus_length: [f64; 2],
    /// The router's APGR less random routing's (0.5 on every resample with a gap).
    pub minus_random: [f64; 2],
}

impl Spread {
    fn of(runs: &[Vec<f64>]) -> Self {
        let minus = |b: &[f64]| -> Vec<f64> { runs[0].iter().zip(b).map(|(a, b)| a - b).collect() };
        Self {
            resamples: runs[0].len(),
            router: eval::interval95(&runs[0]),
            minus_length: eval::interval95(&minus(&runs[1])),
            minus_random: eval::interval95(&minus(&runs[2])),
        }
    }
}

/// Means over the held-out groups.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Means {
    /// Groups with a two-tier figure.
    pub groups: usize,
    /// Mean router APGR.
    pub router_apgr: f64,
    /// Mean length-baseline APGR.
    pub length_apgr: f64,
    /// Mean random APGR (0.5 by construction).
    pub random_apgr: f64,
    /// Groups where the router beats both baselines' APGR.
    pub groups_beating_both: usize,
    /// Mean ECE of the cheap tier of each group's pair.
    pub ece: f64,
    /// Every held-out row together, each with its own group's pair and the prediction of the
    /// model trained without its group: a mixed workload of kinds of prompts none of the
    /// models saw, which also measures whether scores compare across kinds (the router's APGR
    /// against the length baseline's and random's).
    pub pooled: Option<[f64; 3]>,
    /// Bootstrap intervals of the mean over groups.
    pub spread: Option<Spread>,
    /// Bootstrap intervals of the pooled rows' figures.
    pub pooled_spread: Option<Spread>,
}

/// Everything `triage eval --leave-one-out` measures.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// What a group is.
    pub by: GroupBy,
    /// One entry per group, in name order.
    pub held_out: Vec<HeldOut>,
    /// Means over the groups.
    pub means: Means,
}

/// Trains on every group but one, for each group, and measures the one left out, with
/// `resamples` bootstrap resamples of its rows for the figures' spread (0: none).
pub fn leave_one_out(
    featurizer: &Featurizer,
    data: &Prepared,
    tiers: &TierMap,
    opts: &TrainOptions,
    by: GroupBy,
    resamples: usize,
) -> Result<Transfer, TrainError> {
    let keys: Vec<String> = data.rows.iter().map(|r| by.key(r)).collect();
    let mut groups = keys.clone();
    groups.sort();
    groups.dedup();
    if groups.len() < 2 {
        return Err(TrainError::Data(format!(
            "leave-one-out needs at least two groups by {by:?}; the rows have {}",
            groups.len()
        )));
    }
    let names = tiers.names();
    let top = names.len() - 1;
    let mut held_out = Vec::with_capacity(groups.len());
    // (weak score, strong score, router need, prompt tokens) of every held-out row.
    let mut pooled: Vec<(f64, f64, f64, u32)> = Vec::new();
    // Per group with a pair: its bootstrap APGR runs [router, length, random][resample].
    let mut group_runs: Vec<Vec<Vec<f64>>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let train_rows: Vec<usize> = (0..keys.len()).filter(|&r| keys[r] != *g).collect();
        let test_rows: Vec<usize> = (0..keys.len()).filter(|&r| keys[r] == *g).collect();
        let train_data = data.subset(&train_rows);
        let test = data.subset(&test_rows);
        tracing::info!(group = %g, train = train_rows.len(), test = test_rows.len(), "leave-one-out");
        let (file, _) = train(
            featurizer,
            &train_data,
            tiers,
            opts,
            serde_json::Value::Null,
        )?;
        let thresholds = file.thresholds.clone();
        let c = Classifier::new(file, featurizer.schema()).map_err(TrainError::Data)?;
        let p = report::score_all(&c, &test);
        let rep = report::report(&test, &names, &p, None, Some(&thresholds), opts);
        let k = rep
            .two_tier
            .first()
            .and_then(|t| names.iter().position(|n| *n == t.cheap_tier));
        let mut spread = None;
        if let Some(k) = k {
            let from = pooled.len();
            for (r, pr) in p.iter().enumerate() {
                if let (Some(w), Some(st)) = (test.scores[r][k], test.scores[r][top]) {
                    pooled.push((w, st, 1.0 - pr[k], test.tokens[r]));
                }
            }
            if resamples > 0 {
                let runs = bootstrap(&pooled[from..], resamples, opts.seed.wrapping_add(i as u64));
                spread = Some(Spread::of(&runs));
                group_runs.push(runs);
            }
        }
        held_out.push(HeldOut {
            group: g.clone(),
            train_rows: train_rows.len(),
            report: rep,
            spread,
        });
    }
    let mut means = means(&held_out, &names);
    if !pooled.is_empty() {
        let weak: Vec<f64> = pooled.iter().map(|r| r.0).collect();
        let strong: Vec<f64> = pooled.iter().map(|r| r.1).collect();
        let need: Vec<f64> = pooled.iter().map(|r| r.2).collect();
        let length: Vec<f64> = pooled.iter().map(|r| f64::from(r.3)).collect();
        let apgr = |n: &[f64]| eval::apgr(&eval::pgr_curve(&weak, &strong, n));
        means.pooled = Some([apgr(&need), apgr(&length), apgr(&vec![0.0; weak.len()])]);
        if resamples > 0 {
            let seed = opts.seed.wrapping_add(groups.len() as u64);
            means.pooled_spread = Some(Spread::of(&bootstrap(&pooled, resamples, seed)));
        }
    }
    if let Some(first) = group_runs.first() {
        // One resample of the mean takes resample b of every group.
        let mean: Vec<Vec<f64>> = (0..first.len())
            .map(|j| {
                (0..resamples)
                    .map(|b| {
                        group_runs.iter().map(|g| g[j][b]).sum::<f64>() / group_runs.len() as f64
                    })
                    .collect()
            })
            .collect();
        means.spread = Some(Spread::of(&mean));
    }
    Ok(Transfer {
        by,
        held_out,
        means,
    })
}

fn means(held_out: &[HeldOut], tiers: &[String]) -> Means {
    let pairs: Vec<(&report::TwoTier, f64)> = held_out
        .iter()
        .filter_map(|h| {
            let t = h.report.two_tier.first()?;
            let k = tiers.iter().position(|n| *n == t.cheap_tier)?;
            let ece = h.report.calibration.get(k).map_or(0.0, |c| c.1);
            Some((t, ece))
        })
        .collect();
    let n = pairs.len().max(1) as f64;
    let mean =
        |f: &dyn Fn(&report::TwoTier) -> f64| pairs.iter().map(|(t, _)| f(t)).sum::<f64>() / n;
    Means {
        groups: pairs.len(),
        router_apgr: mean(&|t| t.router.apgr),
        length_apgr: mean(&|t| t.length_baseline.apgr),
        random_apgr: mean(&|t| t.random_baseline.apgr),
        groups_beating_both: pairs
            .iter()
            .filter(|(t, _)| {
                t.router.apgr > t.length_baseline.apgr && t.router.apgr > t.random_baseline.apgr
            })
            .count(),
        ece: pairs.iter().map(|(_, e)| e).sum::<f64>() / n,
        pooled: None,
        spread: None,
        pooled_spread: None,
    }
}

/// Bootstrap APGR runs `[router, length, random][resample]` of (weak, strong, router need,
/// prompt tokens) rows; length ranks like the report's length baseline (longer first, equal
/// lengths tied).
fn bootstrap(rows: &[(f64, f64, f64, u32)], resamples: usize, seed: u64) -> Vec<Vec<f64>> {
    let weak: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let strong: Vec<f64> = rows.iter().map(|r| r.1).collect();
    let need: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let length: Vec<f64> = rows.iter().map(|r| f64::from(r.3)).collect();
    let constant = vec![0.0; rows.len()];
    eval::bootstrap_apgr(
        &weak,
        &strong,
        &[&need, &length, &constant],
        resamples,
        seed,
    )
}

/// Two-tier and N-tier figures of one routing of the scored rows.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// APGR between the group's cheapest tier and the dearest.
    pub apgr: f64,
    /// With every tier's outcome and prices: share of the always-dearest cost saved with the
    /// model's own thresholds (tuned on the adaptation rows), and the quality kept there as a
    /// share of always-dearest quality.
    pub own_thresholds: Option<(f64, f64)>,
    /// Share saved with the best thresholds for the scored rows.
    pub best_thresholds: Option<f64>,
}

/// One group adapted to from a few of its rows.
#[derive(Debug, Clone, Serialize)]
pub struct Adapted {
    /// The group.
    pub group: String,
    /// Rows of the group the models were fitted on.
    pub adapt_rows: usize,
    /// Rows of the group measured (the rest).
    pub scored_rows: usize,
    /// The model trained on every other group, unchanged.
    pub base: Scored,
    /// That model adapted with `train --base` on the adaptation rows.
    pub adapted: Scored,
    /// Plain `train` on the adaptation rows alone (`None` when it cannot be fitted: e.g. a tier
    /// the rows have no outcome for, which only a base model can fill in).
    pub plain: Option<Scored>,
    /// Length baseline APGR and, with prices, its saving at the target.
    pub length: (f64, Option<f64>),
    /// Random routing APGR (0.5) and the cheapest random mix's saving.
    pub random: (f64, Option<f64>),
}

/// For every group: train on the other groups (the base), then fit `n` of the group's rows
/// (seeded pick) three ways — not at all, `train --base`, plain `train` — and measure each on
/// the group's other rows. This is what a user with a few hundred labelled rows of their own
/// workload gets.
pub fn adapt(
    featurizer: &Featurizer,
    data: &Prepared,
    tiers: &TierMap,
    opts: &TrainOptions,
    by: GroupBy,
    n: usize,
) -> Result<Vec<Adapted>, TrainError> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let keys: Vec<String> = data.rows.iter().map(|r| by.key(r)).collect();
    let mut groups = keys.clone();
    groups.sort();
    groups.dedup();
    let names = tiers.names();
    let schema = featurizer.schema();
    let mut out = Vec::new();
    for g in &groups {
        let mut own: Vec<usize> = (0..keys.len()).filter(|&r| keys[r] == *g).collect();
        if own.len() < n + 50 {
            tracing::warn!(group = %g, rows = own.len(), "too few rows to adapt and score; skipped");
            continue;
        }
        own.shuffle(&mut rand::rngs::StdRng::seed_from_u64(opts.seed));
        let (fit_rows, score_rows) = own.split_at(n);
        let others: Vec<usize> = (0..keys.len()).filter(|&r| keys[r] != *g).collect();
        tracing::info!(group = %g, adapt = n, score = score_rows.len(), "adapting");
        let (base_file, _) = train(
            featurizer,
            &data.subset(&others),
            tiers,
            opts,
            serde_json::Value::Null,
        )?;
        let few = data.subset(fit_rows);
        let mut with_base = opts.clone();
        with_base.recipe.base = Some(
            super::recipe::Base::from_model(&base_file, schema, &names)
                .map_err(TrainError::Data)?,
        );
        let (adapted_file, _) =
            train(featurizer, &few, tiers, &with_base, serde_json::Value::Null)?;
        let plain_file = train(featurizer, &few, tiers, opts, serde_json::Value::Null)
            .map_err(|e| tracing::warn!(group = %g, error = %e, "plain training on the adaptation rows failed"))
            .ok()
            .map(|(f, _)| f);
        let test = data.subset(score_rows);
        let measure = |file: crate::classifier::ModelFile| -> Result<(Scored, Report), TrainError> {
            let thresholds = file.thresholds.clone();
            let c = Classifier::new(file, schema).map_err(TrainError::Data)?;
            let p = report::score_all(&c, &test);
            let rep = report::report(&test, &names, &p, None, Some(&thresholds), opts);
            let apgr = rep.two_tier.first().map_or(0.0, |t| t.router.apgr);
            let (own_thresholds, best) = match &rep.cost {
                Some(c) => (
                    c.router
                        .map(|o| (c.saved(Some(o)), o.quality / c.dearest.quality.max(1e-12))),
                    Some(c.saved(c.router_best)),
                ),
                None => (None, None),
            };
            Ok((
                Scored {
                    apgr,
                    own_thresholds,
                    best_thresholds: best,
                },
                rep,
            ))
        };
        let (base, rep) = measure(base_file)?;
        let (adapted, _) = measure(adapted_file)?;
        let plain = match plain_file {
            Some(f) => Some(measure(f)?.0),
            None => None,
        };
        let two = rep.two_tier.first();
        out.push(Adapted {
            group: g.clone(),
            adapt_rows: n,
            scored_rows: score_rows.len(),
            base,
            adapted,
            plain,
            length: (
                two.map_or(0.0, |t| t.length_baseline.apgr),
                rep.cost.as_ref().map(|c| c.saved(c.length_baseline)),
            ),
            random: (
                two.map_or(0.5, |t| t.random_baseline.apgr),
                rep.cost.as_ref().map(|c| c.saved(c.random_baseline)),
            ),
        });
    }
    Ok(out)
}
