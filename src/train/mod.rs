//! Offline training and evaluation: dataset loading, cross-validated fitting, metrics, and the
//! model file, all on the serving featurizer.

pub mod dataset;
pub mod eval;
pub mod fit;
pub mod logs;
pub mod repeated;
pub mod tune;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::classifier::{Classifier, HeadsKind, MODEL_FORMAT, ModelFile, SchemaRef};
use crate::error::TrainError;
use crate::features::{Conversation, Featurizer};
use crate::prototypes::Prototypes;
use dataset::{Row, TierMap, ordinal_labels};
use eval::Operating;
pub use fit::FitOptions;

/// Rows turned into features, tier scores and ordinal labels.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The rows, in input order.
    pub rows: Vec<Row>,
    /// Feature vectors.
    pub x: Vec<Vec<f32>>,
    /// Prompt token counts.
    pub tokens: Vec<u32>,
    /// Per-tier scores (None where the row has no outcome for that tier).
    pub scores: Vec<Vec<Option<f64>>>,
    /// Per-head ordinal labels.
    pub labels: Vec<Vec<Option<bool>>>,
    /// Which dataset models stood in for the tiers on each row (`model|model|…`, `-` where a
    /// tier has none): rows of different files can mean different models by the same tier.
    pub stand_ins: Vec<String>,
}

/// Featurizes rows with the serving featurizer (in parallel; the result is in input order).
pub fn prepare(
    featurizer: &Featurizer,
    rows: Vec<Row>,
    tiers: &TierMap,
    progress: bool,
) -> Result<Prepared, TrainError> {
    let bar = if progress {
        indicatif::ProgressBar::new(rows.len() as u64).with_message("featurizing")
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
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
    let stand_ins = rows.iter().map(|r| tiers.stand_ins(r)).collect();
    Ok(Prepared {
        rows,
        x,
        tokens,
        scores,
        labels,
        stand_ins,
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
}

/// Settings for `triage train` / `triage eval`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Optimizer settings.
    pub fit: FitOptions,
    /// Cross-validation folds (>= 2).
    pub folds: usize,
    /// Seed for the fold assignment.
    pub seed: u64,
    /// Price of one request per tier, for cost figures and threshold tuning.
    pub prices: Option<Vec<f64>>,
    /// Quality to keep, as a share of always-dearest quality, when tuning thresholds.
    pub target_quality: f64,
    /// Topic prototypes: k-means centres over the embedding; 0 disables them.
    pub prototypes: usize,
    /// Add one prototype per (source, category) of the training rows: the mean embedding of
    /// its prompts.
    pub category_prototypes: bool,
    /// Base features (by name) multiplied by every prototype membership.
    pub interact: Vec<String>,
    /// Softmax temperature of prototype memberships.
    pub temperature: f32,
    /// Replace cosine prototypes by a multinomial topic classifier fitted on the rows'
    /// (source, category); its posteriors become the memberships.
    pub topic_classifier: bool,
    /// L2 penalty of the topic classifier.
    pub topic_alpha: f64,
    /// Weight of the embedding columns relative to the others (< 1 penalizes them more), so
    /// 256 embedding dimensions cannot drown a handful of strong scalar features.
    pub embedding_weight: f32,
    /// What the heads estimate; see [`HeadsKind`].
    pub heads: HeadsKind,
    /// While fitting, give each group of rows with other stand-in models (see
    /// [`Prepared::stand_ins`]) its own intercept, and serve the reference group's: the one of
    /// the first training row that has every tier's outcome.
    pub source_offsets: bool,
    /// Weight of the word-problem cue columns (`wp_*`) in the shared heads, like
    /// `embedding_weight`; 0 leaves them to the experts.
    pub cue_weight: f32,
    /// Topic experts to fit.
    pub experts: ExpertOptions,
}

/// Settings for topic experts (see [`crate::classifier::Expert`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertOptions {
    /// Topics (`source/category` of the rows) that get an expert; empty for none. Needs the
    /// topic classifier, whose posterior gates each expert.
    pub topics: Vec<String>,
    /// Base features an expert reads, by name.
    pub features: Vec<String>,
    /// L2 penalty of the experts' heads. Experts see a few hundred rows, not thousands, so
    /// they need their own.
    pub alpha: f64,
    /// Topic posterior at or above which an expert scores a prompt (of a shape its rows had:
    /// see [`crate::classifier::Expert::options_range`]).
    pub gate: f32,
    /// With gain heads, fit each pair of an expert's heads only on the rows where the two
    /// tiers' outcomes differ, and store the share of such rows (see
    /// [`crate::classifier::Expert::differ_rates`]); otherwise on every row.
    pub on_differences: bool,
    /// Leading principal components of the prompt embedding (over the topic's training rows)
    /// that an expert reads besides `features`; 0 for none. They are folded back into weights
    /// on the embedding's own dimensions, so serving needs nothing new.
    pub components: usize,
    /// Column weight of those components (see [`fit::fit_heads`]): below 1 penalizes them
    /// harder than the hand-made features.
    pub component_weight: f32,
}

impl Default for ExpertOptions {
    /// No experts; when some are asked for, they read the prompt's length and the word-problem
    /// cues, with the penalty and gate that cross-validated best on GSM8K (see the model card).
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            features: std::iter::once("log_prompt_tokens")
                .chain(crate::features::CUE_FEATURES)
                .map(String::from)
                .collect(),
            alpha: 3.0,
            gate: 0.5,
            on_differences: true,
            components: 16,
            component_weight: 0.5,
        }
    }
}

/// Quality labels: whether each tier's model answered well (score at least 0.5).
fn quality_labels(data: &Prepared) -> Vec<Vec<Option<bool>>> {
    data.scores
        .iter()
        .map(|s| s.iter().map(|v| v.map(|v| v >= 0.5)).collect())
        .collect()
}

/// Gain labels: for every tier but the dearest, whether the dearest scored higher, then
/// whether this tier did (`None` where either outcome is missing).
fn gain_labels(data: &Prepared) -> Vec<Vec<Option<bool>>> {
    data.scores
        .iter()
        .map(|s| {
            let top = s.last().copied().flatten();
            s[..s.len().saturating_sub(1)]
                .iter()
                .flat_map(|v| match (*v, top) {
                    (Some(v), Some(t)) => [Some(t > v + 1e-9), Some(v > t + 1e-9)],
                    _ => [None, None],
                })
                .collect()
        })
        .collect()
}

/// A fitted model before it becomes a file.
struct Fitted {
    kind: HeadsKind,
    prototypes: Option<Prototypes>,
    experts: Vec<crate::classifier::Expert>,
    scaling: crate::classifier::Scaling,
    heads: Vec<crate::classifier::Head>,
}

/// Fits prototypes (if asked) and heads on `rows` only, so cross-validation never sees the
/// held-out fold, not even through the cluster centres.
fn fit_on(
    featurizer: &Featurizer,
    data: &Prepared,
    rows: &[usize],
    tiers: &[String],
    opts: &TrainOptions,
) -> Result<Fitted, TrainError> {
    let names = &featurizer.schema().names;
    let base_weights: Vec<f32> = names
        .iter()
        .map(|n| {
            if n.starts_with("emb_") {
                opts.embedding_weight
            } else if n.starts_with("wp_") {
                opts.cue_weight
            } else {
                1.0
            }
        })
        .collect();
    let kind = opts.heads;
    let relabelled;
    let (labels, head_tiers): (&[Vec<Option<bool>>], Vec<String>) = match kind {
        HeadsKind::Sufficiency => (&data.labels, tiers[..tiers.len() - 1].to_vec()),
        HeadsKind::Quality => {
            relabelled = quality_labels(data);
            (&relabelled, tiers.to_vec())
        }
        HeadsKind::Gain => {
            relabelled = gain_labels(data);
            let names = tiers[..tiers.len() - 1]
                .iter()
                .flat_map(|t| [t.clone(), t.clone()])
                .collect();
            (&relabelled, names)
        }
    };
    let (prototypes, topics) = fit_prototypes(names, data, rows, opts)?;
    let expanded: Vec<Vec<f32>>;
    let x = match &prototypes {
        Some(p) => {
            expanded = data.x.iter().map(|v| p.expand(v)).collect();
            &expanded
        }
        None => &data.x,
    };
    let (scaling, heads) = if opts.source_offsets {
        fit_with_offsets(data, x, labels, rows, &head_tiers, opts.fit, base_weights)?
    } else {
        fit::fit_heads(x, labels, rows, &head_tiers, opts.fit, &base_weights)?
    };
    let experts = opts
        .experts
        .topics
        .iter()
        .map(|t| fit_expert(names, data, labels, rows, &head_tiers, &topics, t, opts))
        .collect::<Result<_, _>>()?;
    Ok(Fitted {
        kind,
        prototypes,
        experts,
        scaling,
        heads,
    })
}

/// The (source, category) topic of a row, as the topic classifier names it.
fn topic_of(row: &Row) -> String {
    format!(
        "{}/{}",
        row.source.as_deref().unwrap_or(""),
        row.category.as_deref().unwrap_or("")
    )
}

/// Fits one topic's expert on the training rows of that topic.
#[allow(clippy::too_many_arguments)]
fn fit_expert(
    names: &[String],
    data: &Prepared,
    labels: &[Vec<Option<bool>>],
    rows: &[usize],
    head_tiers: &[String],
    topics: &[String],
    topic: &str,
    opts: &TrainOptions,
) -> Result<crate::classifier::Expert, TrainError> {
    let membership = topics.iter().position(|t| t == topic).ok_or_else(|| {
        TrainError::Data(format!(
            "--expert {topic:?}: no training row has that source/category{}",
            if opts.topic_classifier {
                ""
            } else {
                " (experts also need --topic-classifier)"
            }
        ))
    })?;
    let features = opts
        .experts
        .features
        .iter()
        .map(|f| {
            names.iter().position(|n| n == f).ok_or_else(|| {
                TrainError::Data(format!("--expert-features: no feature named {f:?}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mine: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|&r| topic_of(&data.rows[r]) == topic)
        .collect();
    let embedding: Vec<usize> = (0..names.len())
        .filter(|&j| names[j].starts_with("emb_"))
        .collect();
    let pca = match opts.experts.components {
        0 => None,
        k => Some(fit::principal_components(&data.x, &mine, &embedding, k)?),
    };
    let x: Vec<Vec<f32>> = data
        .x
        .iter()
        .map(|v| {
            let mut row: Vec<f32> = features.iter().map(|&j| v[j]).collect();
            if let Some(p) = &pca {
                row.extend(p.project(v));
            }
            row
        })
        .collect();
    let column_weight: Vec<f32> = features
        .iter()
        .map(|_| 1.0)
        .chain(
            pca.iter()
                .flat_map(|p| p.components.iter().map(|_| opts.experts.component_weight)),
        )
        .collect();
    let fit = FitOptions {
        alpha: opts.experts.alpha,
        ..opts.fit
    };
    let on_differences = opts.experts.on_differences && opts.heads == HeadsKind::Gain;
    let (labels, differ_rates) = if on_differences {
        differences_only(labels, &mine)
    } else {
        (labels.to_vec(), Vec::new())
    };
    let (mut scaling, mut heads) =
        fit::fit_labelled_heads(&x, &labels, &mine, head_tiers, fit, &column_weight)?;
    let mut expert_features = opts.experts.features.clone();
    if let Some(p) = &pca {
        // Serve the components as weights on the embedding dimensions they combine.
        (scaling, heads) = p.fold_into(scaling, heads, features.len());
        expert_features.extend(embedding.iter().map(|&j| names[j].clone()));
    }
    let options_range = names
        .iter()
        .position(|n| n == crate::classifier::OPTIONS_FEATURE)
        .map(|j| {
            mine.iter()
                .fold([f32::INFINITY, f32::NEG_INFINITY], |[lo, hi], &r| {
                    let v = data.x[r][j];
                    [lo.min(v), hi.max(v)]
                })
        })
        .filter(|[lo, hi]| lo <= hi);
    Ok(crate::classifier::Expert {
        topic: topic.to_string(),
        membership,
        gate: opts.experts.gate,
        features: expert_features,
        scaling,
        heads,
        options_range,
        differ_rates,
    })
}

/// Gain labels kept only where the pair of tiers differ (one of the pair's two labels is
/// true), and for each head the share of `rows` with both outcomes where they did. A pair
/// keeps every row, at rate 1, where the differences all go one way (or there are none):
/// given a difference there is then nothing to rank by, and whether they differ is the only
/// signal left. Empty rates when every pair kept every row.
fn differences_only(
    labels: &[Vec<Option<bool>>],
    rows: &[usize],
) -> (Vec<Vec<Option<bool>>>, Vec<f32>) {
    let pairs = rows.first().map_or(0, |&r| labels[r].len()) / 2;
    // Per pair: rows with both outcomes, rows where the dearest won, where the cheaper won.
    let mut counts = vec![[0usize; 3]; pairs];
    for &r in rows {
        for (t, pair) in labels[r].chunks(2).enumerate().take(pairs) {
            if let [Some(dearer), Some(cheaper)] = *pair {
                counts[t][0] += 1;
                counts[t][1] += usize::from(dearer);
                counts[t][2] += usize::from(cheaper);
            }
        }
    }
    let conditional: Vec<bool> = counts.iter().map(|c| c[1] > 0 && c[2] > 0).collect();
    if !conditional.contains(&true) {
        return (labels.to_vec(), Vec::new());
    }
    let mut kept = labels.to_vec();
    for &r in rows {
        for (t, pair) in kept[r].chunks_mut(2).enumerate().take(pairs) {
            if conditional[t] && *pair == [Some(false), Some(false)] {
                pair.fill(None);
            }
        }
    }
    let rates = counts
        .iter()
        .zip(&conditional)
        .flat_map(|(c, &on)| {
            let rate = if on {
                (c[1] + c[2]) as f32 / c[0] as f32
            } else {
                1.0
            };
            [rate, rate]
        })
        .collect();
    (kept, rates)
}

/// Fits the heads with one extra indicator column per non-reference stand-in group, then
/// drops those columns, folding the reference group's value (0) into the intercepts. The
/// slopes are shared by every group; the served intercept is the reference group's, whose
/// tier mapping the thresholds are tuned on.
fn fit_with_offsets(
    data: &Prepared,
    x: &[Vec<f32>],
    labels: &[Vec<Option<bool>>],
    rows: &[usize],
    head_tiers: &[String],
    fit: FitOptions,
    mut column_weight: Vec<f32>,
) -> Result<(crate::classifier::Scaling, Vec<crate::classifier::Head>), TrainError> {
    let reference = rows
        .iter()
        .find(|&&r| data.scores[r].iter().all(Option::is_some))
        .or(rows.first())
        .map(|&r| data.stand_ins[r].as_str());
    let mut others: Vec<&str> = Vec::new();
    for &r in rows {
        let g = data.stand_ins[r].as_str();
        if Some(g) != reference && !others.contains(&g) {
            others.push(g);
        }
    }
    if others.is_empty() {
        return fit::fit_heads(x, labels, rows, head_tiers, fit, &column_weight);
    }
    let d = x.first().map_or(0, Vec::len);
    let wide: Vec<Vec<f32>> = x
        .iter()
        .zip(&data.stand_ins)
        .map(|(v, group)| {
            let mut v = v.clone();
            v.extend(others.iter().map(|g| f32::from(u8::from(group == g))));
            v
        })
        .collect();
    column_weight.resize(d, 1.0);
    column_weight.resize(d + others.len(), 1.0);
    let (mut scaling, mut heads) =
        fit::fit_heads(&wide, labels, rows, head_tiers, fit, &column_weight)?;
    for h in &mut heads {
        for j in d..h.weights.len() {
            h.intercept -= h.weights[j] * scaling.mean[j] / scaling.std[j];
        }
        h.weights.truncate(d);
    }
    scaling.mean.truncate(d);
    scaling.std.truncate(d);
    Ok((scaling, heads))
}

/// Topic prototypes or the topic classifier, fitted on `rows` only; `None` when the recipe
/// asks for neither. With the topic classifier, also its topics in membership order.
fn fit_prototypes(
    names: &[String],
    data: &Prepared,
    rows: &[usize],
    opts: &TrainOptions,
) -> Result<(Option<Prototypes>, Vec<String>), TrainError> {
    if opts.prototypes == 0 && !opts.category_prototypes && !opts.topic_classifier {
        return Ok((None, Vec::new()));
    }
    let offset = names
        .iter()
        .position(|n| n.starts_with("emb_"))
        .ok_or_else(|| {
            TrainError::Data("the featurizer has no embedding features for prototypes".into())
        })?;
    // The embedding is one contiguous block; other features may follow it.
    let dim = names.iter().filter(|n| n.starts_with("emb_")).count();
    let points: Vec<&[f32]> = rows
        .iter()
        .map(|&r| &data.x[r][offset..offset + dim])
        .collect();
    let groups: Vec<String> = rows.iter().map(|&r| topic_of(&data.rows[r])).collect();
    let mut topics = Vec::new();
    let (centroids, bias, temperature) = if opts.topic_classifier {
        let (c, b) = fit::topic_classifier(&points, &groups, opts.topic_alpha)?;
        // The classifier's classes are the distinct topics in sorted order.
        topics = groups.clone();
        topics.sort_unstable();
        topics.dedup();
        if topics.len() != c.len() {
            return Err(TrainError::Data(format!(
                "the topic classifier has {} classes for {} topics",
                c.len(),
                topics.len()
            )));
        }
        (c, b, 1.0)
    } else {
        let mut c = crate::prototypes::kmeans(&points, opts.prototypes, 10, opts.seed);
        if opts.category_prototypes {
            c.extend(crate::prototypes::group_means(
                groups
                    .iter()
                    .map(String::as_str)
                    .zip(points.iter().copied()),
            ));
        }
        (c, Vec::new(), opts.temperature)
    };
    let interact =
        opts.interact
            .iter()
            .map(|name| {
                names.iter().position(|n| n == name).ok_or_else(|| {
                    TrainError::Data(format!("--interact: no feature named {name:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
    Ok((
        Some(Prototypes {
            offset,
            centroids,
            temperature,
            bias,
            interact,
        }),
        topics,
    ))
}

/// Cross-validated figures for two tiers on one group of rows.
#[derive(Debug, Clone, Serialize)]
pub struct TwoTier {
    /// `all` or a source name.
    pub group: String,
    /// Rows in the group.
    pub rows: usize,
    /// Mean score of the cheap and the dear tier.
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
    /// Router, thresholds tuned on the other folds' out-of-fold predictions.
    pub router: Option<Operating>,
    /// Router, cheapest grid point reaching the target on all out-of-fold predictions.
    pub router_best: Option<Operating>,
    /// Prompt-length baseline, tuned like the router.
    pub length_baseline: Option<Operating>,
    /// Cheapest random mix of tiers reaching the target.
    pub random_baseline: Option<Operating>,
}

/// Everything `triage train` and `triage eval` measure.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Rows with a score for the dearest tier.
    pub rows: usize,
    /// Folds (0 when a fixed model was evaluated).
    pub folds: usize,
    /// Per head: (tier, rows labelled good enough, rows labelled).
    pub labels: Vec<(String, usize, usize)>,
    /// Two-tier figures (cheapest vs dearest), overall and per source.
    pub two_tier: Vec<TwoTier>,
    /// N-tier cost figures (needs prices).
    pub cost: Option<CostAtQuality>,
    /// Per head: (tier, expected calibration error over 10 equal-width bins).
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

/// Assigns each usable row to one of `k` folds, reproducibly.
pub fn fold_assignment(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut fold = vec![0; n];
    for (i, r) in idx.into_iter().enumerate() {
        fold[r] = i % k;
    }
    fold
}

fn model_file(
    schema: &crate::features::Schema,
    tiers: &[String],
    fitted: Fitted,
    thresholds: Vec<f64>,
    training: serde_json::Value,
) -> ModelFile {
    let mut file = ModelFile {
        format: MODEL_FORMAT.into(),
        version: String::new(),
        schema: SchemaRef {
            version: schema.version.clone(),
            fingerprint: schema.fingerprint.clone(),
            n_features: schema.names.len(),
        },
        tiers: tiers.to_vec(),
        scaling: fitted.scaling,
        heads_kind: fitted.kind,
        heads: fitted.heads,
        thresholds,
        prototypes: fitted.prototypes,
        experts: fitted.experts,
        training,
    };
    // The version is a hash of the content, so the same data and settings give the same file.
    let body = serde_json::to_vec(&file).unwrap_or_default();
    let digest = Sha256::digest(&body);
    file.version = format!(
        "{}-{}",
        tiers.join("-"),
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    file
}

/// A copy of `file` with new thresholds and a version that identifies the new content.
pub fn with_thresholds(
    file: &ModelFile,
    thresholds: Vec<f64>,
    note: serde_json::Value,
) -> ModelFile {
    let mut f = file.clone();
    f.thresholds = thresholds;
    if let serde_json::Value::Object(m) = &mut f.training {
        m.insert("tuned".into(), note);
    }
    f.version = String::new();
    let digest = Sha256::digest(serde_json::to_vec(&f).unwrap_or_default());
    f.version = format!(
        "{}-{}",
        f.tiers.join("-"),
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    f
}

/// A progress bar on stderr when it is a terminal (hidden otherwise, e.g. in CI and tests).
pub fn progress_bar(len: u64, msg: &'static str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len).with_message(msg);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Out-of-fold probabilities for every row (rows without labels get the dearest tier only).
pub fn cross_validate(
    featurizer: &Featurizer,
    data: &Prepared,
    tiers: &[String],
    opts: &TrainOptions,
    fold: &[usize],
) -> Result<Vec<Vec<f64>>, TrainError> {
    let mut p = vec![Vec::new(); data.rows.len()];
    let bar = progress_bar(opts.folds as u64, "cross-validating (folds)");
    for f in 0..opts.folds {
        let train_rows: Vec<usize> = (0..data.rows.len()).filter(|&r| fold[r] != f).collect();
        let fitted = fit_on(featurizer, data, &train_rows, tiers, opts)?;
        bar.inc(1);
        let file = model_file(
            featurizer.schema(),
            tiers,
            fitted,
            vec![0.5; tiers.len()],
            serde_json::Value::Null,
        );
        let c = Classifier::new(file, featurizer.schema()).map_err(TrainError::Data)?;
        for r in (0..data.rows.len()).filter(|&r| fold[r] == f) {
            p[r] = c.score(&data.x[r]);
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
fn length_p(data: &Prepared, n_tiers: usize) -> Vec<Vec<f64>> {
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

/// Measures probabilities `p` (out-of-fold, or from a fixed model when `fold` is None).
pub fn report(
    data: &Prepared,
    tiers: &[String],
    p: &[Vec<f64>],
    fold: Option<&[usize]>,
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
        .filter(|&r| data.scores[r][top].is_some())
        .collect();
    let lp = length_p(data, tiers.len());

    // Two tiers: the cheapest against the dearest, overall and per source.
    let pair: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&r| data.scores[r][0].is_some())
        .collect();
    let mut groups: Vec<String> = pair
        .iter()
        .filter_map(|&r| data.rows[r].source.clone())
        .collect();
    groups.sort();
    groups.dedup();
    if groups.len() != 1 {
        groups.insert(0, "all".into());
    }
    let two_tier = groups
        .into_iter()
        .map(|g| {
            let rows: Vec<usize> = pair
                .iter()
                .copied()
                .filter(|&r| g == "all" || data.rows[r].source.as_deref() == Some(g.as_str()))
                .collect();
            let weak: Vec<f64> = rows
                .iter()
                .map(|&r| data.scores[r][0].unwrap_or(0.0))
                .collect();
            let strong: Vec<f64> = rows
                .iter()
                .map(|&r| data.scores[r][top].unwrap_or(0.0))
                .collect();
            let need: Vec<f64> = rows.iter().map(|&r| 1.0 - p[r][0]).collect();
            let need_len: Vec<f64> = rows.iter().map(|&r| 1.0 - lp[r][0]).collect();
            let n = rows.len().max(1) as f64;
            TwoTier {
                group: g,
                rows: rows.len(),
                cheap_quality: weak.iter().sum::<f64>() / n,
                dear_quality: strong.iter().sum::<f64>() / n,
                router: curve(&weak, &strong, &need),
                length_baseline: curve(&weak, &strong, &need_len),
                random_baseline: curve(&weak, &strong, &vec![0.0; rows.len()]),
            }
        })
        .collect();

    let cost = opts.prices.as_ref().map(|prices| {
        // Every complete row has the dearest score, so it is also usable.
        let (complete, scores) = data.complete();
        let n = complete.len().max(1) as f64;
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
                None,
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
        Some(prices) => {
            let (complete, scores) = data.complete();
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
        None => Vec::new(),
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

/// Cross-validates, reports, tunes thresholds on the out-of-fold predictions, then fits the
/// final model on every row. `sources` describes the datasets for the model card.
pub fn train(
    featurizer: &Featurizer,
    data: &Prepared,
    tiers: &TierMap,
    opts: &TrainOptions,
    sources: serde_json::Value,
) -> Result<(ModelFile, Report), TrainError> {
    if opts.folds < 2 {
        return Err(TrainError::Data(format!(
            "--folds must be at least 2, got {}",
            opts.folds
        )));
    }
    let names = tiers.names();
    let top = names.len() - 1;
    let usable: Vec<usize> = (0..data.rows.len())
        .filter(|&r| data.labels[r].iter().any(Option::is_some))
        .collect();
    if usable.len() < opts.folds * 2 {
        return Err(TrainError::Data(format!(
            "only {} rows have outcomes for the dearest tier {:?} and another tier; need at least {}",
            usable.len(),
            names[top],
            opts.folds * 2
        )));
    }
    let fold = fold_assignment(data.rows.len(), opts.folds, opts.seed);
    let p = cross_validate(featurizer, data, &names, opts, &fold)?;
    let rep = report(data, &names, &p, Some(&fold), opts);
    let thresholds = match &opts.prices {
        Some(prices) => {
            let (complete, scores) = data.complete();
            let q_top = complete.iter().map(|&r| scores[r][top]).sum::<f64>()
                / complete.len().max(1) as f64;
            eval::cheapest_thresholds(&p, &scores, prices, &complete, opts.target_quality * q_top)
                .map(|(t, _)| t)
                .unwrap_or_else(|| vec![0.5; names.len()])
        }
        None => vec![0.5; names.len()],
    };
    let fitted = fit_on(featurizer, data, &usable, &names, opts)?;
    let training = serde_json::json!({
        "datasets": sources,
        "tiers": tiers.tiers.iter().map(|(n, m)| serde_json::json!({"tier": n, "models": m})).collect::<Vec<_>>(),
        "rows": usable.len(),
        "alpha": opts.fit.alpha,
        "max_iterations": opts.fit.max_iterations,
        "prototypes": opts.prototypes,
        "category_prototypes": opts.category_prototypes,
        "interact": opts.interact,
        "temperature": opts.temperature,
        "embedding_weight": opts.embedding_weight,
        "topic_classifier": opts.topic_classifier,
        "topic_alpha": opts.topic_alpha,
        "source_offsets": opts.source_offsets,
        "cue_weight": opts.cue_weight,
        "experts": {"topics": opts.experts.topics, "alpha": opts.experts.alpha, "gate": opts.experts.gate, "on_differences": opts.experts.on_differences, "components": opts.experts.components, "component_weight": opts.experts.component_weight},
        "seed": opts.seed,
        "prices": opts.prices,
        "target_quality": opts.target_quality,
        "cross_validation": rep,
    });
    Ok((
        model_file(featurizer.schema(), &names, fitted, thresholds, training),
        rep,
    ))
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
    pub logs: logs::LogStats,
    /// Per head: (tier, rows labelled good enough, rows labelled) over logged rows.
    pub labels: Vec<(String, usize, usize)>,
    /// Time-split comparison, when there are enough rows.
    pub holdout: Option<Holdout>,
}

fn head_metrics(c: &Classifier, rows: &[&logs::LoggedRow], tiers: &[String]) -> Vec<HeadMetrics> {
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

/// Appends logged rows to `data`, each repeated round(weight) times (at least once): linfa's
/// logistic regression takes no sample weights, and repetition is the same objective.
fn append_logged(data: &mut Prepared, rows: &[&logs::LoggedRow], tiers: usize) {
    for r in rows {
        let copies = r.weight.round().max(1.0) as usize;
        for _ in 0..copies {
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
            data.labels.push(r.labels.clone());
            data.stand_ins.push("log".into());
        }
    }
}

/// Fits a model on logged traffic (plus optional labelled data), after measuring the recipe on
/// a time split against the current model. Thresholds are kept from `current` when its tiers
/// match (tune them with `triage tune`), else 0.5.
pub fn train_from_logs(
    featurizer: &Featurizer,
    logged: &[logs::LoggedRow],
    stats: logs::LogStats,
    extra: Option<&Prepared>,
    tiers: &[String],
    opts: &TrainOptions,
    current: Option<&Classifier>,
) -> Result<(ModelFile, LogReport), TrainError> {
    if opts.heads != HeadsKind::Sufficiency {
        return Err(TrainError::Data(
            "--heads quality|gain cannot learn from logs yet: a logged outcome is only known for the tier that answered; train on --dataset rows".into(),
        ));
    }
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
    let empty = || Prepared {
        rows: Vec::new(),
        x: Vec::new(),
        tokens: Vec::new(),
        scores: Vec::new(),
        labels: Vec::new(),
        stand_ins: Vec::new(),
    };
    let base = extra.cloned().unwrap_or_else(empty);
    let cut = logged.len() * 4 / 5;
    let holdout = if cut >= 10 && logged.len() - cut >= 5 {
        let mut data = base.clone();
        let older: Vec<&logs::LoggedRow> = logged[..cut].iter().collect();
        append_logged(&mut data, &older, tiers.len());
        let all: Vec<usize> = (0..data.rows.len()).collect();
        match fit_on(featurizer, &data, &all, tiers, opts) {
            Ok(fitted) => {
                let file = model_file(
                    featurizer.schema(),
                    tiers,
                    fitted,
                    vec![0.5; tiers.len()],
                    serde_json::Value::Null,
                );
                let c = Classifier::new(file, featurizer.schema()).map_err(TrainError::Data)?;
                let newest: Vec<&logs::LoggedRow> = logged[cut..].iter().collect();
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
    let all_logged: Vec<&logs::LoggedRow> = logged.iter().collect();
    append_logged(&mut data, &all_logged, tiers.len());
    if data.rows.is_empty() {
        return Err(TrainError::Data(
            "no usable rows: no logged decision has an outcome, and no --dataset was given".into(),
        ));
    }
    let all: Vec<usize> = (0..data.rows.len()).collect();
    let fitted = fit_on(featurizer, &data, &all, tiers, opts)?;
    // Thresholds mean something else for another kind of head: they carry over only between
    // models of one kind (retune with `triage tune` otherwise).
    let thresholds = current
        .filter(|c| c.tiers() == tiers && c.file().heads_kind == fitted.kind)
        .map_or_else(|| vec![0.5; tiers.len()], |c| c.file().thresholds.clone());
    let report = LogReport {
        logs: stats,
        labels,
        holdout,
    };
    let training = serde_json::json!({
        "logs": report,
        "dataset_rows": extra.map_or(0, |e| e.rows.len()),
        "alpha": opts.fit.alpha,
        "embedding_weight": opts.embedding_weight,
        "seed": opts.seed,
    });
    Ok((
        model_file(featurizer.schema(), tiers, fitted, thresholds, training),
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(scores: Vec<Vec<Option<f64>>>) -> Prepared {
        Prepared {
            rows: Vec::new(),
            x: Vec::new(),
            tokens: Vec::new(),
            labels: Vec::new(),
            stand_ins: Vec::new(),
            scores,
        }
    }

    /// fast / standard / frontier outcomes covering each case a pair of tiers can be in.
    fn mixed_outcomes() -> Vec<Vec<Option<f64>>> {
        vec![
            // fast wrong, standard right, frontier right.
            vec![Some(0.0), Some(1.0), Some(1.0)],
            // fast right where frontier is wrong; standard ties it.
            vec![Some(1.0), Some(0.0), Some(0.0)],
            // No fast outcome; a judge score below the frontier's.
            vec![None, Some(0.6), Some(0.7)],
            // No frontier outcome: nothing to compare with.
            vec![Some(1.0), Some(1.0), None],
        ]
    }

    #[test]
    fn gain_labels_say_which_of_the_pair_scored_higher() {
        let data = prepared(mixed_outcomes());
        let labels = gain_labels(&data);
        let (t, f) = (Some(true), Some(false));
        assert_eq!(labels[0], vec![t, f, f, f]);
        assert_eq!(labels[1], vec![f, t, f, f]);
        assert_eq!(labels[2], vec![None, None, t, f]);
        assert_eq!(labels[3], vec![None; 4]);
    }

    #[test]
    fn differences_only_drops_ties_and_counts_the_share_that_differ() {
        let mut outcomes = mixed_outcomes();
        // Every tier ties.
        outcomes.push(vec![Some(1.0), Some(1.0), Some(1.0)]);
        let data = prepared(outcomes);
        let labels = gain_labels(&data);
        let (kept, rates) = differences_only(&labels, &[0, 1, 2, 3, 4]);
        let (t, f) = (Some(true), Some(false));
        // fast and frontier differ on rows 0 and 1 (one win each) of their 3 labelled rows,
        // so the fast pair keeps only those; standard differs only on row 2, a win for
        // frontier, so it keeps every row at rate 1.
        assert_eq!(kept[0], vec![t, f, f, f]);
        assert_eq!(kept[1], vec![f, t, f, f]);
        assert_eq!(kept[2], vec![None, None, t, f]);
        assert_eq!(kept[3], vec![None; 4]);
        assert_eq!(kept[4], vec![None, None, f, f]);
        assert_eq!(rates, vec![2.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
        // Rows left out of the fold count for nothing: without row 1 only frontier ever wins,
        // no pair is conditional, and there are no rates.
        let (kept, rates) = differences_only(&labels, &[0, 2, 3, 4]);
        assert_eq!(kept, labels);
        assert!(rates.is_empty(), "{rates:?}");
    }
}
