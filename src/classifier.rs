//! The classifier model file (weights, scaling, thresholds, schema fingerprint) and scoring.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::features::Schema;
use crate::prototypes::Prototypes;

/// The model file format this build reads and writes.
pub const MODEL_FORMAT: &str = "triage-model/1";

/// A classifier as stored on disk (JSON).
///
/// For every tier but the dearest there is one logistic head estimating the probability that
/// the tier is good enough; the dearest tier is the reference, so its probability is 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// Identifies this model in decisions (`RouteDecision.model_version`).
    pub version: String,
    /// The feature schema the weights were fitted on.
    pub schema: SchemaRef,
    /// Tier names, cheapest first.
    pub tiers: Vec<String>,
    /// Standardization applied before the heads: `(x - mean) / std`, over the base features and
    /// then the prototype memberships.
    pub scaling: Scaling,
    /// What the heads estimate; sets how many there are.
    #[serde(default, skip_serializing_if = "HeadsKind::is_sufficiency")]
    pub heads_kind: HeadsKind,
    /// In tier order: one head per tier except the last (`sufficiency`), or one per tier
    /// (`quality`).
    pub heads: Vec<Head>,
    /// Default threshold per tier (the last one is unused: the dearest tier always qualifies).
    pub thresholds: Vec<f64>,
    /// Topic prototypes whose memberships follow the base features (absent in plain models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prototypes: Option<Prototypes>,
    /// Topic experts: small heads of their own that replace the shared heads on prompts the
    /// topic classifier places in their topic (needs `prototypes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<Expert>,
    /// How the model was made (datasets, rows, seed, cross-validated figures).
    #[serde(default)]
    pub training: serde_json::Value,
}

/// What a model's heads estimate.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeadsKind {
    /// Head k: the probability that tier k scores at least as well as the dearest tier.
    #[default]
    Sufficiency,
    /// Head k: the probability that tier k's model answers well. A tier's score is then
    /// 1 - the expected quality it gives up against the dearest tier, which also credits the
    /// rows where the cheap model is right and the dear one wrong.
    Quality,
    /// Two heads per tier except the dearest, in tier order: the probability that the dearest
    /// tier scores higher than this one, then that this one scores higher than the dearest.
    /// A tier's score is 1 - (first - second): its expected shortfall against the dearest,
    /// estimated from the pair of models' outcomes on the same rows rather than from two
    /// separately fitted qualities.
    Gain,
}

impl HeadsKind {
    fn is_sufficiency(&self) -> bool {
        *self == Self::Sufficiency
    }
}

/// Heads fitted on one topic's rows over a few features of their own.
///
/// Why: a topic can have its own signs of difficulty that the shared heads, fitted across all
/// topics with a heavy penalty, cannot afford to learn (on maths word problems, how many
/// quantities and steps a problem chains). The expert scores a prompt when the topic
/// classifier's posterior for its topic reaches `gate`; otherwise the shared heads do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expert {
    /// The training rows' topic (`source/category`) it was fitted on.
    pub topic: String,
    /// Index of that topic's membership among the prototypes.
    pub membership: usize,
    /// Posterior at or above which the expert scores the prompt, in [0.5, 1] so that at most
    /// one topic can claim it.
    pub gate: f32,
    /// Base features it reads, by schema name.
    pub features: Vec<String>,
    /// Standardization of those features: `(x - mean) / std`.
    pub scaling: Scaling,
    /// One entry per shared head, in the same order: `null` where the topic's rows had no
    /// outcomes for that head, and the shared head scores instead.
    pub heads: Vec<Option<Head>>,
    /// Smallest and largest `log_options` among the topic's training rows. The expert scores
    /// only prompts in that range, whatever the posterior: fitted on free-form word problems,
    /// it knows nothing of lettered options, and the multiple-choice maths questions the topic
    /// classifier confuses with its topic are left to the shared heads, which were fitted on
    /// them. Absent (older files): any shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options_range: Option<[f32; 2]>,
    /// One entry per head when the heads were fitted only on the rows where the pair of
    /// tiers' outcomes differ (gain heads only); empty when they were fitted on every row.
    /// Such a head estimates a probability given a difference; times its rate (the share of
    /// the topic's training rows where the pair differed) it is the unconditional probability
    /// the gain score needs. Why: on a few hundred rows, most of them ties, the chance of a
    /// difference is mostly noise, and a ranking by which model wins when they differ
    /// cross-validates better (see the model card).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differ_rates: Vec<f32>,
}

/// The schema a model was trained on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaRef {
    /// Feature schema version.
    pub version: String,
    /// Feature schema fingerprint.
    pub fingerprint: String,
    /// Vector length.
    pub n_features: usize,
}

/// Per-feature standardization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Feature means.
    pub mean: Vec<f32>,
    /// Feature standard deviations (never 0).
    pub std: Vec<f32>,
}

/// One logistic head over standardized features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The tier this head scores.
    pub tier: String,
    /// One weight per feature.
    pub weights: Vec<f32>,
    /// Bias.
    pub intercept: f32,
}

/// A validated model ready to score, with the scaling folded into the weights.
#[derive(Debug, Clone)]
pub struct Classifier {
    file: ModelFile,
    // Folded heads: p = sigmoid(w · x + b) on raw features.
    folded: Vec<(Vec<f32>, f32)>,
    experts: Vec<FoldedExpert>,
}

/// An [`Expert`] resolved against the schema, with its scaling folded into the weights.
#[derive(Debug, Clone)]
struct FoldedExpert {
    /// Index of its topic's membership in the expanded vector.
    membership: usize,
    gate: f32,
    /// Index of `log_options` and the range the expert accepts, if it has one.
    options: Option<(usize, [f32; 2])>,
    /// Base feature indices it reads.
    features: Vec<usize>,
    heads: Vec<Option<(Vec<f32>, f32)>>,
    /// Factor on each head's probability: its `differ_rates` entry, else 1.
    rates: Vec<f64>,
}

/// The base feature an expert's `options_range` reads: the count of lettered options.
pub const OPTIONS_FEATURE: &str = crate::features::CHOICE_FEATURES[0];

impl FoldedExpert {
    /// Whether the expert scores the (expanded) vector `x`: its topic's posterior reaches the
    /// gate and the prompt's multiple-choice shape is one the expert was fitted on.
    fn claims(&self, x: &[f32]) -> bool {
        let shaped = self
            .options
            .is_none_or(|(j, [lo, hi])| x.get(j).is_some_and(|v| (lo..=hi).contains(v)));
        shaped && x.get(self.membership).is_some_and(|m| *m >= self.gate)
    }
}

/// Folds `(x - mean) / std` into a head's weights and intercept, so it applies to raw features.
fn fold(h: &Head, scaling: &Scaling, i: &str) -> Result<(Vec<f32>, f32), String> {
    let n = scaling.mean.len();
    if h.weights.len() != n {
        return Err(format!("{i} has {} weights, expected {n}", h.weights.len()));
    }
    let mut w = Vec::with_capacity(n);
    let mut b = f64::from(h.intercept);
    for j in 0..n {
        let s = scaling.std[j];
        if !(s.is_finite() && s > 0.0 && scaling.mean[j].is_finite()) {
            return Err(format!("scaling for feature {j} is not usable (std {s})"));
        }
        let wj = h.weights[j] / s;
        b -= f64::from(wj) * f64::from(scaling.mean[j]);
        w.push(wj);
    }
    if !(b.is_finite() && w.iter().all(|v| v.is_finite())) {
        return Err(format!("{i} has non-finite weights"));
    }
    Ok((w, b as f32))
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Classifier {
    /// Reads and validates a model file against the featurizer's schema.
    pub fn load(path: &Path, schema: &Schema) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
        let file: ModelFile = serde_json::from_slice(&bytes)
            .map_err(|e| LoadError::invalid(path, format!("not a triage model file: {e}")))?;
        Self::new(file, schema).map_err(|m| LoadError::invalid(path, m))
    }

    /// Validates a model against a schema.
    pub fn new(file: ModelFile, schema: &Schema) -> Result<Self, String> {
        if file.format != MODEL_FORMAT {
            return Err(format!(
                "format is {:?}, this build reads {MODEL_FORMAT:?}",
                file.format
            ));
        }
        if file.schema.fingerprint != schema.fingerprint || file.schema.version != schema.version {
            return Err(format!(
                "feature schema mismatch: the model was trained on {} (fingerprint {}), the featurizer is {} (fingerprint {}); retrain with `triage train` against these embeddings",
                file.schema.version, file.schema.fingerprint, schema.version, schema.fingerprint
            ));
        }
        let base = schema.names.len();
        if file.schema.n_features != base {
            return Err(format!(
                "model has {} features, the featurizer produces {base}",
                file.schema.n_features
            ));
        }
        if let Some(p) = &file.prototypes {
            let dim = p.centroids.first().map_or(0, Vec::len);
            if p.is_empty()
                || p.offset + dim > base
                || p.centroids
                    .iter()
                    .any(|c| c.len() != dim || c.iter().any(|v| !v.is_finite()))
                || !(p.temperature.is_finite() && p.temperature > 0.0)
                || p.interact.iter().any(|&i| i >= base)
                || !(p.bias.is_empty() || p.bias.len() == p.centroids.len())
                || p.bias.iter().any(|b| !b.is_finite())
            {
                return Err(format!(
                    "prototypes do not fit the feature vector (offset {}, dim {dim}, {} centres, temperature {})",
                    p.offset,
                    p.len(),
                    p.temperature
                ));
            }
        }
        let n = base + file.prototypes.as_ref().map_or(0, Prototypes::len);
        if file.scaling.mean.len() != n || file.scaling.std.len() != n {
            return Err(format!(
                "model scaling has {}/{} entries, expected {n}",
                file.scaling.mean.len(),
                file.scaling.std.len()
            ));
        }
        if file.tiers.len() < 2 {
            return Err(format!(
                "model lists {} tiers, at least 2 are needed",
                file.tiers.len()
            ));
        }
        let (want, which) = match file.heads_kind {
            HeadsKind::Sufficiency => (file.tiers.len() - 1, "one per tier except the dearest"),
            HeadsKind::Quality => (file.tiers.len(), "one per tier"),
            HeadsKind::Gain => (
                2 * (file.tiers.len() - 1),
                "two per tier except the dearest",
            ),
        };
        if file.heads.len() != want {
            return Err(format!(
                "model has {} heads for {} tiers (want {which})",
                file.heads.len(),
                file.tiers.len()
            ));
        }
        if file.thresholds.len() != file.tiers.len() {
            return Err(format!(
                "model has {} thresholds for {} tiers",
                file.thresholds.len(),
                file.tiers.len()
            ));
        }
        if let Some((i, t)) = file
            .thresholds
            .iter()
            .enumerate()
            .find(|(_, t)| !(0.0..=1.0).contains(*t))
        {
            return Err(format!("thresholds[{i}] = {t} is outside [0, 1]"));
        }
        let mut folded = Vec::with_capacity(file.heads.len());
        let per_tier = if file.heads_kind == HeadsKind::Gain {
            2
        } else {
            1
        };
        for (i, h) in file.heads.iter().enumerate() {
            let tier = &file.tiers[i / per_tier];
            if h.tier != *tier {
                return Err(format!(
                    "heads[{i}] is for tier {:?}, expected {tier:?}",
                    h.tier
                ));
            }
            folded.push(fold(h, &file.scaling, &format!("heads[{i}]"))?);
        }
        let experts = file
            .experts
            .iter()
            .enumerate()
            .map(|(e, x)| {
                Self::fold_expert(&file, schema, x).map_err(|m| format!("experts[{e}]: {m}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            file,
            folded,
            experts,
        })
    }

    /// Checks an expert against the model and the schema and folds its heads.
    fn fold_expert(file: &ModelFile, schema: &Schema, x: &Expert) -> Result<FoldedExpert, String> {
        let topics = file.prototypes.as_ref().map_or(0, |p| p.centroids.len());
        if x.membership >= topics {
            return Err(format!(
                "membership {} is not one of the model's {topics} topic memberships",
                x.membership
            ));
        }
        if !(0.5..=1.0).contains(&x.gate) {
            return Err(format!("gate {} is outside [0.5, 1]", x.gate));
        }
        let index = |f: &str| {
            schema
                .names
                .iter()
                .position(|n| n == f)
                .ok_or_else(|| format!("feature {f:?} is not in the schema"))
        };
        let features = x
            .features
            .iter()
            .map(|f| index(f))
            .collect::<Result<Vec<_>, _>>()?;
        let options = match x.options_range {
            None => None,
            Some([lo, hi]) if !(lo.is_finite() && hi.is_finite() && lo <= hi) => {
                return Err(format!("options_range [{lo}, {hi}] is not a finite range"));
            }
            Some(range) => Some((index(OPTIONS_FEATURE)?, range)),
        };
        if x.scaling.mean.len() != features.len() || x.scaling.std.len() != features.len() {
            return Err(format!(
                "scaling has {}/{} entries for {} features",
                x.scaling.mean.len(),
                x.scaling.std.len(),
                features.len()
            ));
        }
        if x.heads.len() != file.heads.len() {
            return Err(format!(
                "has {} heads, the model {} (one entry per shared head, null to keep it)",
                x.heads.len(),
                file.heads.len()
            ));
        }
        let mut heads = Vec::with_capacity(x.heads.len());
        for (i, (h, shared)) in x.heads.iter().zip(&file.heads).enumerate() {
            heads.push(match h {
                None => None,
                Some(h) if h.tier != shared.tier => {
                    return Err(format!(
                        "heads[{i}] is for tier {:?}, expected {:?}",
                        h.tier, shared.tier
                    ));
                }
                Some(h) => Some(fold(h, &x.scaling, &format!("heads[{i}]"))?),
            });
        }
        let rates = match x.differ_rates.as_slice() {
            [] => vec![1.0; heads.len()],
            _ if file.heads_kind != HeadsKind::Gain => {
                return Err("differ_rates only apply to gain heads".to_string());
            }
            r if r.len() != heads.len() => {
                return Err(format!(
                    "has {} differ_rates for {} heads",
                    r.len(),
                    heads.len()
                ));
            }
            r => match r.iter().position(|v| !(*v > 0.0 && *v <= 1.0)) {
                Some(i) => {
                    return Err(format!("differ_rates[{i}] = {} is outside (0, 1]", r[i]));
                }
                None => r.iter().map(|v| f64::from(*v)).collect(),
            },
        };
        let base = file.schema.n_features;
        Ok(FoldedExpert {
            membership: base + x.membership,
            gate: x.gate,
            options,
            features,
            heads,
            rates,
        })
    }

    /// The model as stored.
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// Model version string.
    pub fn version(&self) -> &str {
        &self.file.version
    }

    /// Tier names, cheapest first.
    pub fn tiers(&self) -> &[String] {
        &self.file.tiers
    }

    /// Per-tier probability of being good enough, cheapest first.
    ///
    /// Ordinal by construction: if a cheaper tier suffices a dearer one does too, so each
    /// probability is at least the one before it, and the dearest is 1. For quality heads the
    /// "probability" is 1 - the expected quality shortfall against the dearest tier (clamped
    /// to [0, 1]), where a tier may fall back on the best cheaper tier's quality.
    pub fn score(&self, x: &[f32]) -> Vec<f64> {
        self.score_explained(x).0
    }

    /// [`Self::score`], and the topic of the expert that scored, if one did.
    pub fn score_explained(&self, x: &[f32]) -> (Vec<f64>, Option<&str>) {
        let expanded;
        let x = match &self.file.prototypes {
            Some(p) => {
                expanded = p.expand(x);
                expanded.as_slice()
            }
            None => x,
        };
        let (expert, stored) = self
            .experts
            .iter()
            .zip(&self.file.experts)
            .find(|(e, _)| e.claims(x))
            .unzip();
        // One buffer per call: head outputs, then tier scores in place.
        let mut out = Vec::with_capacity(self.folded.len() + 1);
        out.extend(self.folded.iter().enumerate().map(|(k, (w, b))| {
            match expert.and_then(|e| e.heads.get(k)?.as_ref().map(|h| (e, h))) {
                Some((e, (ew, eb))) => {
                    let at = |j: usize| x.get(j).copied().unwrap_or(0.0);
                    let z = ew
                        .iter()
                        .zip(&e.features)
                        .map(|(w, &j)| w * at(j))
                        .sum::<f32>()
                        + eb;
                    sigmoid(f64::from(z)) * e.rates.get(k).copied().unwrap_or(1.0)
                }
                None => sigmoid(f64::from(crate::prototypes::dot(w, x) + b)),
            }
        }));
        match self.file.heads_kind {
            HeadsKind::Sufficiency => {}
            HeadsKind::Quality => {
                // Each tier may fall back on the best cheaper tier's quality.
                for k in 1..out.len() {
                    out[k] = out[k].max(out[k - 1]);
                }
                let top = out.pop().unwrap_or(1.0);
                out.iter_mut().for_each(|q| *q = 1.0 - (top - *q));
            }
            HeadsKind::Gain => {
                // Pair k (dearest higher, this tier higher) becomes tier k's score.
                for k in 0..out.len() / 2 {
                    out[k] = 1.0 - (out[2 * k] - out[2 * k + 1]);
                }
                out.truncate(out.len() / 2);
            }
        }
        if let Some(e) = expert {
            // A tier the expert's topic had no outcomes for is scored by the shared heads,
            // extrapolated to a topic they were never shown (on maths word problems the shared
            // `fast` heads send most prompts to `fast`). The expert's estimate for a dearer tier
            // is evidence, and a cheaper tier is never likelier to suffice than a dearer one, so
            // that estimate caps the borrowed score; the floor below would otherwise do the
            // opposite and lift the dearer tier to the extrapolation.
            let mut cap = 1.0f64;
            for t in (0..out.len()).rev() {
                if !self.expert_scores_tier(e, t) {
                    out[t] = out[t].min(cap);
                }
                cap = out[t].clamp(0.0, 1.0);
            }
        }
        let mut floor = 0.0f64;
        for v in &mut out {
            floor = floor.max(v.clamp(0.0, 1.0));
            *v = floor;
        }
        out.push(1.0);
        (out, stored.map(|e| e.topic.as_str()))
    }

    /// Whether every head behind tier `t`'s score is the expert's own.
    fn expert_scores_tier(&self, e: &FoldedExpert, t: usize) -> bool {
        let has = |h: usize| e.heads.get(h).is_some_and(Option::is_some);
        match self.file.heads_kind {
            HeadsKind::Sufficiency => has(t),
            // A quality score also reads the dearest tier's head.
            HeadsKind::Quality => has(t) && has(self.folded.len().saturating_sub(1)),
            HeadsKind::Gain => has(2 * t) && has(2 * t + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(n: usize) -> Schema {
        Schema {
            version: "v".into(),
            names: (0..n).map(|i| format!("f{i}")).collect(),
            fingerprint: "fp".into(),
        }
    }

    fn model() -> ModelFile {
        ModelFile {
            format: MODEL_FORMAT.into(),
            version: "m1".into(),
            schema: SchemaRef {
                version: "v".into(),
                fingerprint: "fp".into(),
                n_features: 2,
            },
            tiers: vec!["a".into(), "b".into(), "c".into()],
            scaling: Scaling {
                mean: vec![1.0, 0.0],
                std: vec![2.0, 1.0],
            },
            heads: vec![
                Head {
                    tier: "a".into(),
                    weights: vec![2.0, 0.0],
                    intercept: 0.0,
                },
                Head {
                    tier: "b".into(),
                    weights: vec![0.0, 1.0],
                    intercept: -10.0,
                },
            ],
            thresholds: vec![0.5, 0.5, 0.0],
            heads_kind: HeadsKind::Sufficiency,
            prototypes: None,
            experts: Vec::new(),
            training: serde_json::Value::Null,
        }
    }

    /// Three base features (f0, then a 2-D embedding), two topics, and an expert for topic 0
    /// that scores tier a from f0 alone: z = -0.5 * (f0 - 1) / 0.5 - 0.5.
    fn expert_model() -> ModelFile {
        let shared = |tier: &str, w: f32| Head {
            tier: tier.into(),
            weights: vec![w, 0.0, 0.0, 0.0, 0.0],
            intercept: 0.0,
        };
        ModelFile {
            schema: SchemaRef {
                version: "v".into(),
                fingerprint: "fp".into(),
                n_features: 3,
            },
            scaling: Scaling {
                mean: vec![0.0; 5],
                std: vec![1.0; 5],
            },
            heads: vec![shared("a", 1.0), shared("b", 0.5)],
            prototypes: Some(Prototypes {
                offset: 1,
                centroids: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                temperature: 0.1,
                bias: vec![0.0, 0.0],
                interact: Vec::new(),
            }),
            experts: vec![Expert {
                topic: "t0".into(),
                membership: 0,
                gate: 0.9,
                features: vec!["f0".into()],
                scaling: Scaling {
                    mean: vec![1.0],
                    std: vec![0.5],
                },
                heads: vec![
                    Some(Head {
                        tier: "a".into(),
                        weights: vec![-0.5],
                        intercept: -0.5,
                    }),
                    None,
                ],
                options_range: None,
                differ_rates: Vec::new(),
            }],
            ..model()
        }
    }

    #[test]
    fn an_expert_scores_only_prompts_its_topic_claims() {
        let c = Classifier::new(expert_model(), &schema(3)).unwrap();
        // Topic 0 (posterior ~1): the expert's head a gives z = -0.5 * (2 - 1) / 0.5 - 0.5
        // = -1.5; head b has no expert head, so the shared one scores: z = 0.5 * 2 = 1.
        let (p, topic) = c.score_explained(&[2.0, 1.0, 0.0]);
        assert_eq!(topic, Some("t0"));
        assert!((p[0] - sigmoid(-1.5)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - sigmoid(1.0)).abs() < 1e-6, "{p:?}");
        // Topic 1: the shared heads score (z = 2 for a).
        let (p, topic) = c.score_explained(&[2.0, 0.0, 1.0]);
        assert_eq!(topic, None);
        assert!((p[0] - sigmoid(2.0)).abs() < 1e-6, "{p:?}");
        // Leaning to topic 0 but below the gate (posterior 0.62): still the shared heads.
        let p = c.score(&[2.0, 0.6, 0.55]);
        assert!((p[0] - sigmoid(2.0)).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn an_expert_leaves_prompts_of_a_shape_it_never_saw_to_the_shared_heads() {
        // f0 plays `log_options`: the expert was fitted on free-form rows only (range [0, 0]).
        let mut m = expert_model();
        m.experts[0].options_range = Some([0.0, 0.0]);
        m.experts[0].features = vec![OPTIONS_FEATURE.into()];
        let mut names = schema(3);
        names.names[0] = OPTIONS_FEATURE.into();
        let c = Classifier::new(m, &names).unwrap();
        // Free-form, posterior ~1: the expert's head a, z = -0.5 * (0 - 1) / 0.5 - 0.5 = 0.5.
        let (p, topic) = c.score_explained(&[0.0, 1.0, 0.0]);
        assert_eq!(topic, Some("t0"));
        assert!((p[0] - sigmoid(0.5)).abs() < 1e-6, "{p:?}");
        // Four lettered options (log 5), same posterior: the shared head a, z = 1.609.
        let (p, topic) = c.score_explained(&[5f32.ln(), 1.0, 0.0]);
        assert_eq!(topic, None);
        assert!((p[0] - sigmoid(f64::from(5f32.ln()))).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn a_tier_the_expert_cannot_score_is_capped_by_the_expert_s_dearer_tier() {
        // The expert scores tier b (z = -0.5 * (f0 - 1) / 0.5 - 0.5) but has no head for
        // tier a, whose shared head (z = f0) is confident where the expert is not.
        let mut m = expert_model();
        let head = m.experts[0].heads[0].take().map(|h| Head {
            tier: "b".into(),
            ..h
        });
        m.experts[0].heads[1] = head;
        let c = Classifier::new(m, &schema(3)).unwrap();
        let (p, topic) = c.score_explained(&[2.0, 1.0, 0.0]);
        assert_eq!(topic, Some("t0"));
        // b is the expert's; a's shared sigmoid(2) is capped to it, not b lifted to a.
        assert!((p[1] - sigmoid(-1.5)).abs() < 1e-6, "{p:?}");
        assert!((p[0] - sigmoid(-1.5)).abs() < 1e-6, "{p:?}");
        // Where the shared head is the less confident one it stands: at f0 = 0.2, a's z = 0.2
        // and b's z = -0.5 * (0.2 - 1) / 0.5 - 0.5 = 0.3.
        let (p, _) = c.score_explained(&[0.2, 1.0, 0.0]);
        assert!((p[0] - sigmoid(0.2)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - sigmoid(0.3)).abs() < 1e-6, "{p:?}");
        // Outside the expert's topic nothing is capped: shared a z = 2, b lifted to it.
        let p = c.score(&[2.0, 0.0, 1.0]);
        assert!((p[0] - sigmoid(2.0)).abs() < 1e-6, "{p:?}");
        assert!((p[1] - p[0]).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn an_expert_fitted_where_the_pair_differs_scales_its_heads_by_the_rate() {
        // Gain heads: tier a's pair stays shared, tier b's pair is the expert's, fitted on the
        // rows where b and the dearest differ: given a difference the dearest wins 0.8 and b
        // 0.2, and a quarter of the rows differed.
        let constant = |tier: &str, p: f32| Head {
            tier: tier.into(),
            weights: vec![0.0; 5],
            intercept: (p / (1.0 - p)).ln(),
        };
        let mut m = expert_model();
        m.heads_kind = HeadsKind::Gain;
        m.heads = vec![
            constant("a", 0.3),
            constant("a", 0.1),
            constant("b", 0.3),
            constant("b", 0.1),
        ];
        let own = |tier: &str, p: f32| Head {
            weights: vec![0.0],
            ..constant(tier, p)
        };
        m.experts[0].heads = vec![None, None, Some(own("b", 0.8)), Some(own("b", 0.2))];
        m.experts[0].differ_rates = vec![1.0, 1.0, 0.25, 0.25];
        let c = Classifier::new(m.clone(), &schema(3)).unwrap();
        let (p, topic) = c.score_explained(&[2.0, 1.0, 0.0]);
        assert_eq!(topic, Some("t0"));
        // b: 1 - 0.25 * (0.8 - 0.2) = 0.85; a's shared 1 - (0.3 - 0.1) = 0.8 stays below it.
        assert!((p[1] - 0.85).abs() < 1e-6, "{p:?}");
        assert!((p[0] - 0.8).abs() < 1e-6, "{p:?}");
        // Without the rates the same heads would claim a shortfall of 0.6.
        let mut unscaled = m.clone();
        unscaled.experts[0].differ_rates.clear();
        let p = Classifier::new(unscaled, &schema(3))
            .unwrap()
            .score(&[2.0, 1.0, 0.0]);
        assert!((p[1] - 0.4).abs() < 1e-6, "{p:?}");
        // Malformed rates are refused, naming the expert and the entry.
        for (rates, want) in [
            (vec![1.0, 1.0, 0.25], "has 3 differ_rates for 4 heads"),
            (
                vec![1.0, 1.0, 0.0, 0.25],
                "differ_rates[2] = 0 is outside (0, 1]",
            ),
            (vec![1.0, f32::NAN, 1.0, 1.0], "differ_rates[1] = NaN"),
        ] {
            let mut bad = m.clone();
            bad.experts[0].differ_rates = rates;
            let err = Classifier::new(bad, &schema(3)).unwrap_err();
            assert!(
                err.starts_with("experts[0]: ") && err.contains(want),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_experts_are_refused_naming_the_expert() {
        type Break = fn(&mut Expert);
        let cases: [(Break, &str); 10] = [
            (|e| e.gate = 0.3, "gate 0.3"),
            (|e| e.membership = 2, "membership 2"),
            (
                |e| e.features = vec!["nope".into()],
                "\"nope\" is not in the schema",
            ),
            (|e| e.scaling.std.push(1.0), "scaling has 1/2 entries"),
            (
                |e| e.heads.pop().map(drop).unwrap_or(()),
                "has 1 heads, the model 2",
            ),
            (
                |e| {
                    if let Some(h) = e.heads[0].as_mut() {
                        h.tier = "b".into();
                    }
                },
                "heads[0] is for tier \"b\"",
            ),
            // The schema here has no `log_options` for a range to read.
            (
                |e| e.options_range = Some([0.0, 0.0]),
                "\"log_options\" is not in the schema",
            ),
            (
                |e| e.options_range = Some([1.0, 0.0]),
                "options_range [1, 0] is not a finite range",
            ),
            (
                |e| e.options_range = Some([0.0, f32::NAN]),
                "is not a finite range",
            ),
            // Sufficiency heads: a probability given a difference means nothing there.
            (
                |e| e.differ_rates = vec![0.5, 0.5],
                "differ_rates only apply to gain heads",
            ),
        ];
        for (break_it, want) in cases {
            let mut m = expert_model();
            break_it(&mut m.experts[0]);
            let err = Classifier::new(m, &schema(3)).unwrap_err();
            assert!(
                err.starts_with("experts[0]: ") && err.contains(want),
                "{err}"
            );
        }
        let mut m = expert_model();
        m.prototypes = None;
        m.scaling = Scaling {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        };
        for h in &mut m.heads {
            h.weights.truncate(3);
        }
        let err = Classifier::new(m, &schema(3)).unwrap_err();
        assert!(
            err.contains("not one of the model's 0 topic memberships"),
            "{err}"
        );
    }

    #[test]
    fn models_without_experts_keep_their_json_shape() {
        let json = serde_json::to_value(model()).unwrap();
        assert!(json.get("experts").is_none());
        let back: ModelFile = serde_json::from_value(json).unwrap();
        assert_eq!(back, model());
        let with = serde_json::to_string(&expert_model()).unwrap();
        assert!(with.contains("\"heads\":[{\"tier\":\"a\""), "{with}");
        assert!(with.contains("null]"), "{with}");
        assert_eq!(
            serde_json::from_str::<ModelFile>(&with).unwrap(),
            expert_model()
        );
    }

    #[test]
    fn scores_standardize_then_apply_the_logistic() {
        let c = Classifier::new(model(), &schema(2)).unwrap();
        // head a: z = 2 * (3 - 1) / 2 = 2.
        let p = c.score(&[3.0, 0.0]);
        assert!((p[0] - sigmoid(2.0)).abs() < 1e-6, "{p:?}");
        // head b alone would give sigmoid(-10); ordinal floor lifts it to head a's value.
        assert!((p[1] - p[0]).abs() < 1e-12);
        assert_eq!(p[2], 1.0);
    }

    #[test]
    fn quality_heads_score_one_minus_the_expected_shortfall() {
        let mut m = model();
        m.heads_kind = HeadsKind::Quality;
        // One head per tier now; c's head is a constant 0.9 quality.
        assert!(
            Classifier::new(m.clone(), &schema(2))
                .unwrap_err()
                .contains("want one per tier")
        );
        m.heads.push(Head {
            tier: "c".into(),
            weights: vec![0.0, 0.0],
            intercept: (0.9f32 / 0.1).ln(),
        });
        let c = Classifier::new(m, &schema(2)).unwrap();
        // a: q = sigmoid(2); b: q = sigmoid(-10), lifted to a's; c: 0.9.
        let p = c.score(&[3.0, 0.0]);
        let qa = sigmoid(2.0);
        assert!((p[0] - (1.0 - (0.9 - qa))).abs() < 1e-6, "{p:?}");
        assert!((p[1] - p[0]).abs() < 1e-12, "{p:?}");
        assert_eq!(p[2], 1.0);
        // A cheap tier predicted better than the dearest is simply good enough.
        let p = c.score(&[21.0, 0.0]);
        assert_eq!(p[0], 1.0);
    }

    #[test]
    fn gain_heads_score_one_minus_worse_plus_better() {
        let mut m = model();
        m.heads_kind = HeadsKind::Gain;
        assert!(
            Classifier::new(m.clone(), &schema(2))
                .unwrap_err()
                .contains("want two per tier except the dearest")
        );
        let constant = |tier: &str, p: f32| Head {
            tier: tier.into(),
            weights: vec![0.0, 0.0],
            intercept: (p / (1.0 - p)).ln(),
        };
        // a: dearest better 0.4, a better 0.1; b: dearest better 0.5, b better 0.1.
        m.heads = vec![
            constant("a", 0.4),
            constant("a", 0.1),
            constant("b", 0.5),
            constant("b", 0.1),
        ];
        let c = Classifier::new(m.clone(), &schema(2)).unwrap();
        let p = c.score(&[3.0, 0.0]);
        assert!((p[0] - 0.7).abs() < 1e-6, "{p:?}");
        // b alone would be 0.6; a dearer tier is never scored below a cheaper one.
        assert!((p[1] - 0.7).abs() < 1e-6, "{p:?}");
        assert_eq!(p[2], 1.0);
        // A tier expected to beat the dearest is simply good enough.
        m.heads[1] = constant("a", 0.6);
        let p = Classifier::new(m, &schema(2)).unwrap().score(&[3.0, 0.0]);
        assert_eq!(p[0], 1.0);
    }

    #[test]
    fn fingerprint_mismatch_is_refused_with_both_fingerprints() {
        let mut s = schema(2);
        s.fingerprint = "other".into();
        let err = Classifier::new(model(), &s).unwrap_err();
        assert!(
            err.contains("fingerprint fp") && err.contains("fingerprint other"),
            "{err}"
        );
    }

    #[test]
    fn malformed_models_are_refused() {
        let mut m = model();
        m.heads.pop();
        assert!(
            Classifier::new(m, &schema(2))
                .unwrap_err()
                .contains("heads")
        );
        let mut m = model();
        m.scaling.std[0] = 0.0;
        assert!(
            Classifier::new(m, &schema(2))
                .unwrap_err()
                .contains("scaling")
        );
        let mut m = model();
        m.thresholds[1] = 1.5;
        assert!(
            Classifier::new(m, &schema(2))
                .unwrap_err()
                .contains("thresholds[1]")
        );
        assert!(
            Classifier::new(model(), &schema(3))
                .unwrap_err()
                .contains("features")
        );
    }
}
