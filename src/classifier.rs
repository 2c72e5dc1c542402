//! The classifier model file (weights, scaling, thresholds, schema fingerprint) and scoring.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::features::Schema;
use crate::prototypes::Prototypes;

/// The model file format this build reads and writes.
pub const MODEL_FORMAT: &str = "triage-model/2";

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
    /// Per tier except the dearest, a Platt map `[a, b]`: the served probability is
    /// `sigmoid(a · s + b)` of the heads' raw score `s`, fitted on out-of-fold predictions so
    /// that `p_sufficient` means what it says (`a >= 0`, so the map never reverses the
    /// ranking). Empty: the raw scores are served, clamped to [0, 1].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<[f32; 2]>,
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

    /// How many heads a model of this kind has for `tiers` tiers.
    pub fn count(self, tiers: usize) -> usize {
        match self {
            Self::Sufficiency => tiers.saturating_sub(1),
            Self::Quality => tiers,
            Self::Gain => 2 * tiers.saturating_sub(1),
        }
    }

    /// The tier each head is for, in file order.
    pub fn head_tiers(self, tiers: &[String]) -> Vec<String> {
        let cheaper = &tiers[..tiers.len().saturating_sub(1)];
        match self {
            Self::Sufficiency => cheaper.to_vec(),
            Self::Quality => tiers.to_vec(),
            Self::Gain => cheaper
                .iter()
                .flat_map(|t| [t.clone(), t.clone()])
                .collect(),
        }
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

/// Folds `(x - mean) / std` into a head's weights and intercept, so it applies to raw features.
pub(crate) fn fold(h: &Head, scaling: &Scaling, i: &str) -> Result<(Vec<f32>, f32), String> {
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

/// Largest model file the command-line tools read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Classifier {
    /// Reads and validates a model file against the featurizer's schema. Only a regular file
    /// of at most [`MAX_FILE_BYTES`] is read (the server applies `model.max_model_bytes`).
    pub fn load(path: &Path, schema: &Schema) -> Result<Self, LoadError> {
        let bytes =
            crate::files::read_regular(path, MAX_FILE_BYTES).map_err(|e| LoadError::io(path, e))?;
        Self::from_bytes(&bytes, schema).map_err(|m| LoadError::invalid(path, m))
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
        let want = file.heads_kind.count(file.tiers.len());
        let which = match file.heads_kind {
            HeadsKind::Sufficiency => "one per tier except the dearest",
            HeadsKind::Quality => "one per tier",
            HeadsKind::Gain => "two per tier except the dearest",
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
        if !file.calibration.is_empty() && file.calibration.len() != file.tiers.len() - 1 {
            return Err(format!(
                "model has {} calibration maps for {} tiers (want one per tier except the dearest, or none)",
                file.calibration.len(),
                file.tiers.len()
            ));
        }
        if let Some((i, [a, b])) = file
            .calibration
            .iter()
            .enumerate()
            .find(|(_, [a, b])| !(a.is_finite() && b.is_finite() && *a >= 0.0))
        {
            return Err(format!(
                "calibration[{i}] = [{a}, {b}]: the slope must be finite and >= 0 and the intercept finite"
            ));
        }
        let tiers_of = file.heads_kind.head_tiers(&file.tiers);
        let mut folded = Vec::with_capacity(file.heads.len());
        for (i, (h, tier)) in file.heads.iter().zip(&tiers_of).enumerate() {
            if h.tier != *tier {
                return Err(format!(
                    "heads[{i}] is for tier {:?}, expected {tier:?}",
                    h.tier
                ));
            }
            folded.push(fold(h, &file.scaling, &format!("heads[{i}]"))?);
        }
        Ok(Self { file, folded })
    }

    /// Reads a model from JSON bytes (a reload's payload, a test's fixture).
    pub fn from_bytes(bytes: &[u8], schema: &Schema) -> Result<Self, String> {
        let file: ModelFile = serde_json::from_slice(bytes).map_err(|e| {
            // A file of another format fails on its first unknown field; name the format
            // instead, which says what to do.
            #[derive(Deserialize)]
            struct Format {
                format: String,
            }
            match serde_json::from_slice::<Format>(bytes) {
                Ok(f) if f.format != MODEL_FORMAT => format!(
                    "format is {:?}, this build reads {MODEL_FORMAT:?}; retrain with `triage train`",
                    f.format
                ),
                _ => format!("not a triage model file: {e}"),
            }
        })?;
        Self::new(file, schema)
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
    /// probability is at least the one before it, and the dearest is 1.
    pub fn score(&self, x: &[f32]) -> Vec<f64> {
        finish(self.raw_scores(x), &self.file.calibration)
    }

    /// The vector the heads read: the base features, then prototype memberships if any.
    fn expand<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        match &self.file.prototypes {
            Some(p) => std::borrow::Cow::Owned(p.expand(x)),
            None => std::borrow::Cow::Borrowed(x),
        }
    }

    /// The heads' score per tier except the dearest, before calibration: for sufficiency heads
    /// the probability itself; for quality heads 1 - the expected quality shortfall against
    /// the dearest tier (a tier may fall back on the best cheaper tier's quality); for gain
    /// heads 1 - (P(dearest scores higher) - P(this tier scores higher)).
    pub fn raw_scores(&self, x: &[f32]) -> Vec<f64> {
        let x = self.expand(x);
        let mut out: Vec<f64> = self
            .folded
            .iter()
            .map(|(w, b)| sigmoid(f64::from(crate::prototypes::dot(w, &x) + b)))
            .collect();
        match self.file.heads_kind {
            HeadsKind::Sufficiency => {}
            HeadsKind::Quality => {
                for k in 1..out.len() {
                    out[k] = out[k].max(out[k - 1]);
                }
                let top = out.pop().unwrap_or(1.0);
                out.iter_mut().for_each(|q| *q = 1.0 - (top - *q));
            }
            HeadsKind::Gain => {
                for k in 0..out.len() / 2 {
                    out[k] = 1.0 - (out[2 * k] - out[2 * k + 1]);
                }
                out.truncate(out.len() / 2);
            }
        }
        out
    }

    /// The `k` features that pushed the cheapest tier's score the most, as (name, logit units
    /// towards the dearer tier; negative leans cheap), largest first. The embedding's
    /// dimensions mean nothing one by one, so they count as one driver, `embedding`.
    /// Contributions are measured against the training mean of each feature.
    pub fn drivers(&self, x: &[f32], names: &[String], k: usize) -> Vec<(String, f64)> {
        let x = self.expand(x);
        let heads = &self.file.heads;
        // (head, sign towards "needs the dearer tier")
        let pick: Vec<(usize, f64)> = match self.file.heads_kind {
            HeadsKind::Sufficiency => vec![(0, -1.0)],
            HeadsKind::Quality => vec![(heads.len().saturating_sub(1), 1.0), (0, -1.0)],
            HeadsKind::Gain => vec![(0, 1.0), (1, -1.0)],
        };
        let s = &self.file.scaling;
        let mut by_name: Vec<(String, f64)> = Vec::new();
        let mut embedding = 0.0;
        for (j, ((xj, mean), std)) in x.iter().zip(&s.mean).zip(&s.std).enumerate() {
            let z = f64::from((xj - mean) / std);
            let c: f64 = pick
                .iter()
                .filter_map(|&(h, sign)| Some(sign * f64::from(*heads.get(h)?.weights.get(j)?)))
                .sum::<f64>()
                * z;
            let name = names.get(j).map_or("membership", String::as_str);
            if name.starts_with("emb_") {
                embedding += c;
            } else if c != 0.0 {
                by_name.push((name.to_string(), c));
            }
        }
        if embedding != 0.0 {
            by_name.push(("embedding".into(), embedding));
        }
        by_name.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        by_name.truncate(k);
        by_name
    }
}

/// The largest probability served for a tier cheaper than the dearest. Why: it is an estimate
/// against the dearest tier, never a certainty, so a caller's `quality_target` of 1 always
/// means the dearest tier, however confident the heads are.
pub const MAX_CHEAPER_P: f64 = 1.0 - 1e-6;

/// Served per-tier probabilities from raw scores: each tier's Platt map when there are maps,
/// then clamped to [0, [`MAX_CHEAPER_P`]], floored so that a dearer tier is never less likely
/// to suffice than a cheaper one, and the dearest tier's 1 appended. Serving and training
/// share it.
pub fn finish(mut raw: Vec<f64>, calibration: &[[f32; 2]]) -> Vec<f64> {
    if !calibration.is_empty() {
        for (v, [a, b]) in raw.iter_mut().zip(calibration) {
            *v = sigmoid(f64::from(*a) * *v + f64::from(*b));
        }
    }
    let mut floor = 0.0f64;
    for v in &mut raw {
        floor = floor.max(v.clamp(0.0, MAX_CHEAPER_P));
        *v = floor;
    }
    raw.push(1.0);
    raw
}

#[cfg(test)]
mod tests;
