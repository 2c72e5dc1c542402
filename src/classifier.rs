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
            if h.weights.len() != n {
                return Err(format!(
                    "heads[{i}] has {} weights, expected {n}",
                    h.weights.len()
                ));
            }
            let mut w = Vec::with_capacity(n);
            let mut b = f64::from(h.intercept);
            for j in 0..n {
                let s = file.scaling.std[j];
                if !(s.is_finite() && s > 0.0 && file.scaling.mean[j].is_finite()) {
                    return Err(format!("scaling for feature {j} is not usable (std {s})"));
                }
                let wj = h.weights[j] / s;
                b -= f64::from(wj) * f64::from(file.scaling.mean[j]);
                w.push(wj);
            }
            if !(b.is_finite() && w.iter().all(|v| v.is_finite())) {
                return Err(format!("heads[{i}] has non-finite weights"));
            }
            folded.push((w, b as f32));
        }
        Ok(Self { file, folded })
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
        let expanded;
        let x = match &self.file.prototypes {
            Some(p) => {
                expanded = p.expand(x);
                expanded.as_slice()
            }
            None => x,
        };
        // One buffer per call: head outputs, then tier scores in place.
        let mut out = Vec::with_capacity(self.folded.len() + 1);
        out.extend(
            self.folded
                .iter()
                .map(|(w, b)| sigmoid(f64::from(crate::prototypes::dot(w, x) + b))),
        );
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
        let mut floor = 0.0f64;
        for v in &mut out {
            floor = floor.max(v.clamp(0.0, 1.0));
            *v = floor;
        }
        out.push(1.0);
        out
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
            training: serde_json::Value::Null,
        }
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
