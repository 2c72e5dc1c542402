//! Measuring a router on labelled rows: out-of-fold predictions, the figures `train` and
//! `eval` print (two-tier APGR per source, cost at a quality target, calibration, the Pareto
//! front), and the baselines measured in the same run.

use serde::Serialize;

use super::eval::{self, Operating};
use super::prepare::Prepared;
use super::recipe::{self, Recipe};
use super::{TrainOptions, fit, tune};
use crate::classifier::{Classifier, finish};
use crate::error::TrainError;
use crate::features::Schema;

/// Cross-validated figures for two tiers on one group of rows.
#[derive(Debug, Clone, Serialize)]
pub struct TwoTier {
    /// `all` or a source name.
    pub group: String,
    /// Rows in the group.
    pub rows: usize,
    /// The cheap tier of the pair: the cheapest with an outcome on every row of the group.
    pub cheap_tier: String,
    /// Mean score of the cheap tier.
    pub cheap_quality: f64,
    /// Mean score of the dearest tier.
    pub dear_quality: f64,
    /// The router: (APGR, CPT(50 %), CPT(80 %)).
    pub router: Curve,
    /// Longer prompts go to the dear tier first.
    pub length_baseline: Curve,
    /// Random routing (a constant score).
    pub random_baseline: Curve,
}

/// Summary of one PGR curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Curve {
    /// Area under PGR vs strong-call share.
    pub apgr: f64,
    /// Strong-call share where PGR reaches 50 %.
    pub cpt50: Option<f64>,
    /// Strong-call share where PGR reaches 80 %.
    pub cpt80: Option<f64>,
}

/// Cost at a quality target for N tiers.
#[derive(Debug, Clone, Serialize)]
pub struct CostAtQuality {
    /// Rows with a score for every tier.
    pub rows: usize,
    /// Required quality = target share × always-dearest quality.
    pub min_quality: f64,
    /// Always-dearest operating point.
    pub dearest: Operating,
    /// Mean score per tier.
    pub tier_quality: Vec<f64>,
    /// Router, thresholds tuned on rows other than the ones measured: the other folds'
    /// out-of-fold predictions, or for a fixed model its own thresholds.
    pub router: Option<Operating>,
    /// Router, cheapest grid point reaching the target on these rows.
    pub router_best: Option<Operating>,
    /// Prompt-length baseline, tuned like the router.
    pub length_baseline: Option<Operating>,
    /// Cheapest random mix of tiers reaching the target.
    pub random_baseline: Option<Operating>,
}

impl CostAtQuality {
    /// Share of the always-dearest cost an operating point saves (0 when it is missing: the
    /// router then sends everything to the dearest tier).
    pub fn saved(&self, op: Option<Operating>) -> f64 {
        op.map_or(0.0, |o| 1.0 - o.cost / self.dearest.cost.max(1e-12))
    }
}

/// Everything `triage train` and `triage eval` measure.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Rows with a score for the dearest tier.
    pub rows: usize,
    /// Folds (0 when a fixed model was evaluated).
    pub folds: usize,
    /// Per cheaper tier: (tier, rows labelled good enough, rows labelled).
    pub labels: Vec<(String, usize, usize)>,
    /// Two-tier figures (each source's cheapest tier vs the dearest), overall and per source.
    pub two_tier: Vec<TwoTier>,
    /// N-tier cost figures (needs prices).
    pub cost: Option<CostAtQuality>,
    /// Per cheaper tier: (tier, expected calibration error over 10 equal-width bins) of its
    /// served probability against "scores as well as the dearest".
    pub calibration: Vec<(String, f64)>,
    /// Cost–quality Pareto front of the policy's thresholds (needs prices; cost is the mean
    /// price per request).
    pub pareto: Vec<tune::Point>,
}

/// Expected calibration error: the row-weighted mean gap between predicted probability and
/// observed frequency over `bins` equal-width bins.
pub fn ece(pairs: &[(f64, bool)], bins: usize) -> f64 {
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut n = vec![0usize; bins];
    for &(p, y) in pairs {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sum_p[b] += p;
        sum_y[b] += f64::from(u8::from(y));
        n[b] += 1;
    }
    let total = pairs.len().max(1) as f64;
    (0..bins)
        .filter(|&b| n[b] > 0)
        .map(|b| n[b] as f64 / total * ((sum_p[b] - sum_y[b]) / n[b] as f64).abs())
        .sum()
}

/// Assigns each row to one of `k` folds, reproducibly.
pub fn fold_assignment(n: usize, k: usize, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut fold = vec![0; n];
    for (i, r) in idx.into_iter().enumerate() {
        fold[r] = i % k;
    }
    fold
}

/// Rows a model can learn from: an outcome for the dearest tier and for another tier.
pub fn usable_rows(data: &Prepared) -> Vec<usize> {
    (0..data.rows.len())
        .filter(|&r| data.labels[r].iter().any(Option::is_some))
        .collect()
}

/// Out-of-fold raw scores (before calibration) for every row, fitted on `fold`'s other folds
/// (`None` for rows outside `rows`).
pub fn out_of_fold_raw(
    schema: &Schema,
    data: &Prepared,
    tiers: &[String],
    recipe: &Recipe,
    rows: &[usize],
    fold: &[usize],
    folds: usize,
) -> Result<Vec<Option<Vec<f64>>>, TrainError> {
    let mut raw = vec![None; data.rows.len()];
    let bar = super::progress_bar(folds as u64, "cross-validating (folds)");
    for f in 0..folds {
        let train: Vec<usize> = rows.iter().copied().filter(|&r| fold[r] != f).collect();
        let fitted = recipe::fit(&schema.names, data, &train, tiers, recipe)?;
        bar.inc(1);
        let c = super::scorer(schema, tiers, fitted)?;
        for &r in rows.iter().filter(|&&r| fold[r] == f) {
            raw[r] = Some(c.raw_scores(&data.x[r]));
        }
    }
    bar.finish_and_clear();
    Ok(raw)
}

/// Platt maps, one per cheaper tier, fitted on raw scores of `rows` against the rows' labels.
///
/// One slope shared by every tier and group, and one intercept per (group, tier), of which each
/// tier's map keeps the mean. The heads' scores rank prompts within a group and say nothing of
/// a group's base rate (see [`super::recipe::Recipe::group_offsets`]): pooling groups with
/// different base rates would teach the map that a higher score means less often good
/// enough, and a tier whose outcomes come from one odd benchmark could flatten its map to a
/// constant. Empty (raw scores served) when the slope does not come out positive.
pub fn calibration_maps(
    raw: &[Option<Vec<f64>>],
    data: &Prepared,
    rows: &[usize],
    tiers: usize,
) -> Result<Vec<[f32; 2]>, TrainError> {
    let cells: Vec<String> = (0..tiers - 1)
        .flat_map(|k| rows.iter().map(move |&r| (k, r)))
        .map(|(k, r)| format!("{k}|{}", data.groups[r]))
        .collect();
    let pairs: Vec<(f64, bool, &str)> = (0..tiers - 1)
        .flat_map(|k| rows.iter().map(move |&r| (k, r)))
        .zip(&cells)
        .filter_map(|((k, r), cell)| Some((raw[r].as_ref()?[k], data.labels[r][k]?, cell.as_str())))
        .collect();
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let (slope, intercepts) = fit::platt_by_group(&pairs)?;
    if slope.is_nan() || slope <= 0.0 {
        return Ok(Vec::new());
    }
    let overall = intercepts.iter().map(|(_, b)| b).sum::<f64>() / intercepts.len().max(1) as f64;
    Ok((0..tiers - 1)
        .map(|k| {
            let prefix = format!("{k}|");
            let own: Vec<f64> = intercepts
                .iter()
                .filter(|(c, _)| c.starts_with(&prefix))
                .map(|(_, b)| *b)
                .collect();
            let b = if own.is_empty() {
                overall
            } else {
                own.iter().sum::<f64>() / own.len() as f64
            };
            [slope as f32, b as f32]
        })
        .collect())
}

/// Served probabilities of out-of-fold raw scores: each fold's through calibration maps
/// fitted on the other folds' scores (so the measured calibration is itself out of sample),
/// or uncalibrated. Rows without raw scores get the dearest tier only.
pub fn served_out_of_fold(
    raw: &[Option<Vec<f64>>],
    data: &Prepared,
    rows: &[usize],
    fold: &[usize],
    folds: usize,
    tiers: usize,
    calibrate: bool,
) -> Result<Vec<Vec<f64>>, TrainError> {
    let mut p: Vec<Vec<f64>> = vec![finish(vec![0.0; tiers - 1], &[]); data.rows.len()];
    for f in 0..folds {
        let maps = if calibrate {
            let others: Vec<usize> = rows.iter().copied().filter(|&r| fold[r] != f).collect();
            calibration_maps(raw, data, &others, tiers)?
        } else {
            Vec::new()
        };
        for &r in rows.iter().filter(|&&r| fold[r] == f) {
            if let Some(s) = &raw[r] {
                p[r] = finish(s.clone(), &maps);
            }
        }
    }
    Ok(p)
}

fn curve(weak: &[f64], strong: &[f64], need: &[f64]) -> Curve {
    let c = eval::pgr_curve(weak, strong, need);
    Curve {
        apgr: eval::apgr(&c),
        cpt50: eval::cpt(&c, 0.5),
        cpt80: eval::cpt(&c, 0.8),
    }
}

/// Length-baseline probabilities: the longer the prompt, the less likely a cheap tier suffices.
pub fn length_p(data: &Prepared, n_tiers: usize) -> Vec<Vec<f64>> {
    let n = data.tokens.len().max(1) as f64;
    let mut order: Vec<usize> = (0..data.tokens.len()).collect();
    order.sort_by_key(|&r| data.tokens[r]);
    let mut rank = vec![0.0; data.tokens.len()];
    for (i, r) in order.into_iter().enumerate() {
        rank[r] = i as f64 / n;
    }
    // Equal lengths must tie, so take the rank of the first row of each length.
    let mut first: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for (r, t) in data.tokens.iter().enumerate() {
        let e = first.entry(*t).or_insert(rank[r]);
        *e = e.min(rank[r]);
    }
    data.tokens
        .iter()
        .map(|t| {
            let mut v = vec![1.0 - first[t]; n_tiers - 1];
            v.push(1.0);
            v
        })
        .collect()
}

/// Thresholds tuned on the other folds, applied to each fold; `None` if some fold's target is
/// out of reach.
fn tuned_by_fold(
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    prices: &[f64],
    rows: &[usize],
    fold: &[usize],
    folds: usize,
    ratio: f64,
) -> Option<Operating> {
    let top = prices.len() - 1;
    let mut choice = vec![top; p.len()];
    for f in 0..folds {
        let others: Vec<usize> = rows.iter().copied().filter(|&r| fold[r] != f).collect();
        let q_top =
            others.iter().map(|&r| scores[r][top]).sum::<f64>() / others.len().max(1) as f64;
        let (t, _) = eval::cheapest_thresholds(p, scores, prices, &others, ratio * q_top)?;
        for &r in rows.iter().filter(|&&r| fold[r] == f) {
            choice[r] = crate::policy::cheapest_sufficient(&p[r], &t, 0, top).unwrap_or(top);
        }
    }
    Some(eval::operating(&choice, scores, prices, rows))
}

/// The cheapest tier with an outcome on every one of `rows` (other than the dearest).
fn cheapest_common(data: &Prepared, rows: &[usize], top: usize) -> Option<usize> {
    (0..top).find(|&k| rows.iter().all(|&r| data.scores[r][k].is_some()))
}

/// Measures probabilities `p` (out-of-fold, or from a fixed model when `fold` is None, which
/// then measures the model's own `thresholds` if given).
pub fn report(
    data: &Prepared,
    tiers: &[String],
    p: &[Vec<f64>],
    fold: Option<&[usize]>,
    thresholds: Option<&[f64]>,
    opts: &TrainOptions,
) -> Report {
    let top = tiers.len() - 1;
    let labels = (0..top)
        .map(|k| {
            let ys: Vec<bool> = data.labels.iter().filter_map(|l| l[k]).collect();
            (
                tiers[k].clone(),
                ys.iter().filter(|y| **y).count(),
                ys.len(),
            )
        })
        .collect();
    let usable: Vec<usize> = (0..data.rows.len())
        .filter(|&r| {
            data.scores[r][top].is_some() && data.scores[r][..top].iter().any(Option::is_some)
        })
        .collect();
    let lp = length_p(data, tiers.len());

    // Two tiers: each source's cheapest tier against the dearest, and all rows together when
    // they share a cheapest tier.
    let mut groups: Vec<String> = usable
        .iter()
        .map(|&r| data.rows[r].source.clone().unwrap_or_default())
        .collect();
    groups.sort();
    groups.dedup();
    if groups.len() != 1 {
        groups.insert(0, "all".into());
    }
    let two_tier = groups
        .into_iter()
        .filter_map(|g| {
            let rows: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|&r| g == "all" || data.rows[r].source.as_deref().unwrap_or("") == g)
                .collect();
            let cheap = cheapest_common(data, &rows, top)?;
            let weak: Vec<f64> = rows
                .iter()
                .map(|&r| data.scores[r][cheap].unwrap_or(0.0))
                .collect();
            let strong: Vec<f64> = rows
                .iter()
                .map(|&r| data.scores[r][top].unwrap_or(0.0))
                .collect();
            let need: Vec<f64> = rows.iter().map(|&r| 1.0 - p[r][cheap]).collect();
            let need_len: Vec<f64> = rows.iter().map(|&r| 1.0 - lp[r][cheap]).collect();
            let n = rows.len().max(1) as f64;
            Some(TwoTier {
                group: g,
                rows: rows.len(),
                cheap_tier: tiers[cheap].clone(),
                cheap_quality: weak.iter().sum::<f64>() / n,
                dear_quality: strong.iter().sum::<f64>() / n,
                router: curve(&weak, &strong, &need),
                length_baseline: curve(&weak, &strong, &need_len),
                random_baseline: curve(&weak, &strong, &vec![0.0; rows.len()]),
            })
        })
        .collect();

    let (complete, scores) = data.complete();
    let cost = opts
        .prices
        .as_ref()
        .filter(|_| !complete.is_empty())
        .map(|prices| {
            let n = complete.len() as f64;
            let tier_quality: Vec<f64> = (0..tiers.len())
                .map(|k| complete.iter().map(|&r| scores[r][k]).sum::<f64>() / n)
                .collect();
            let min_quality = opts.target_quality * tier_quality[top];
            let always_top = vec![top; data.rows.len()];
            let (router, length_baseline) = match fold {
                Some(fold) => (
                    tuned_by_fold(
                        p,
                        &scores,
                        prices,
                        &complete,
                        fold,
                        opts.folds,
                        opts.target_quality,
                    ),
                    tuned_by_fold(
                        &lp,
                        &scores,
                        prices,
                        &complete,
                        fold,
                        opts.folds,
                        opts.target_quality,
                    ),
                ),
                None => (
                    thresholds.map(|t| {
                        eval::operating(&eval::route_all(p, t), &scores, prices, &complete)
                    }),
                    eval::cheapest_thresholds(&lp, &scores, prices, &complete, min_quality)
                        .map(|x| x.1),
                ),
            };
            CostAtQuality {
                rows: complete.len(),
                min_quality,
                dearest: eval::operating(&always_top, &scores, prices, &complete),
                tier_quality,
                router,
                router_best: eval::cheapest_thresholds(p, &scores, prices, &complete, min_quality)
                    .map(|x| x.1),
                length_baseline,
                random_baseline: eval::random_mix(&scores, prices, &complete, min_quality),
            }
        });
    let calibration = (0..top)
        .map(|k| {
            let pairs: Vec<(f64, bool)> = (0..data.rows.len())
                .filter_map(|r| data.labels[r][k].map(|y| (p[r][k], y)))
                .collect();
            (tiers[k].clone(), ece(&pairs, 10))
        })
        .collect();
    let pareto = match &opts.prices {
        Some(prices) if !complete.is_empty() => {
            // Per-request prices; the sweep reports cost per 1,000 requests.
            let costs: Vec<Vec<f64>> = vec![prices.clone(); data.rows.len()];
            let pts = tune::sweep(
                p,
                &scores,
                &costs,
                &complete,
                tiers.len(),
                &indicatif::ProgressBar::hidden(),
            );
            tune::pareto(&pts)
        }
        _ => Vec::new(),
    };
    Report {
        rows: usable.len(),
        folds: if fold.is_some() { opts.folds } else { 0 },
        labels,
        two_tier,
        cost,
        calibration,
        pareto,
    }
}

/// Cross-validates the recipe on one fold assignment: served out-of-fold probabilities and
/// their report.
pub fn cross_validate(
    schema: &Schema,
    data: &Prepared,
    tiers: &[String],
    opts: &TrainOptions,
    fold: &[usize],
) -> Result<(Vec<Vec<f64>>, Report), TrainError> {
    let rows = usable_rows(data);
    let raw = out_of_fold_raw(schema, data, tiers, &opts.recipe, &rows, fold, opts.folds)?;
    let p = served_out_of_fold(
        &raw,
        data,
        &rows,
        fold,
        opts.folds,
        tiers.len(),
        opts.recipe.calibrate,
    )?;
    let rep = report(data, tiers, &p, Some(fold), None, opts);
    Ok((p, rep))
}

/// Scores every row with a fixed model.
pub fn score_all(c: &Classifier, data: &Prepared) -> Vec<Vec<f64>> {
    data.x.iter().map(|x| c.score(x)).collect()
}
