//! Offline training: the steps from labelled rows to a model file, one module per step.
//!
//! `dataset` reads and joins rows, `prepare` featurizes them with the serving featurizer,
//! `recipe` fits the heads (`fit` holds the solver), `report` cross-validates and measures,
//! `transfer` holds whole sources out, `tune` and `eval` pick thresholds, `logs` learns from
//! logged traffic, `workload` reports one workload before switching. This file ties them into [`train`] and writes the model file.

pub mod dataset;
pub mod eval;
pub mod fit;
pub mod logs;
pub mod prepare;
pub mod recipe;
pub mod repeated;
pub mod report;
pub mod transfer;
pub mod tune;
pub mod workload;

use sha2::{Digest, Sha256};

use crate::classifier::{Classifier, MODEL_FORMAT, ModelFile, SchemaRef};
use crate::error::TrainError;
use crate::features::{Featurizer, Schema};
use dataset::TierMap;
pub use prepare::{Prepared, prepare};
pub use recipe::{Fitted, Recipe};
pub use report::Report;

/// Settings for `triage train` / `triage eval`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// How the heads are fitted; the default is the shipped recipe.
    pub recipe: Recipe,
    /// Cross-validation folds (>= 2).
    pub folds: usize,
    /// Seed for the fold assignment.
    pub seed: u64,
    /// Price of one request per tier, for cost figures and threshold tuning.
    pub prices: Option<Vec<f64>>,
    /// Quality to keep, as a share of always-dearest quality, when tuning thresholds.
    pub target_quality: f64,
    /// Standard errors of margin above `target_quality` the tuned thresholds keep on the
    /// tuning rows (see [`tuned_thresholds`]); 0 tunes to the target exactly.
    pub floor_margin: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            recipe: Recipe::default(),
            folds: 5,
            seed: 7,
            prices: None,
            target_quality: 0.95,
            floor_margin: DEFAULT_FLOOR_MARGIN,
        }
    }
}

/// The model file for fitted heads: content-hashed version, so the same data and settings
/// give the same file.
pub fn model_file(
    schema: &Schema,
    tiers: &[String],
    fitted: Fitted,
    calibration: Vec<[f32; 2]>,
    thresholds: Vec<f64>,
    training: serde_json::Value,
) -> ModelFile {
    versioned(ModelFile {
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
        calibration,
        training,
    })
}

/// `file` with its version set from a hash of its content.
pub fn versioned(mut file: ModelFile) -> ModelFile {
    file.version = String::new();
    let digest = Sha256::digest(serde_json::to_vec(&file).unwrap_or_default());
    file.version = format!(
        "{}-{}",
        file.tiers.join("-"),
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
    versioned(f)
}

/// The fewest rows with every tier's outcome that thresholds are tuned on jointly; below it
/// each cheaper tier is tuned against the dearest on the rows that have both outcomes.
const MIN_COMPLETE_ROWS: usize = 50;

/// [`TrainOptions::floor_margin`] by default. Why: tuned to the target exactly on a few
/// hundred rows, thresholds land below it on the next rows about half the time (300 rows of
/// MMLU-Pro, adapted: 90 % of frontier quality kept for a 95 % target); one standard error
/// keeps it with about 84 % confidence, and costs a fraction of a point on thousands of rows.
pub const DEFAULT_FLOOR_MARGIN: f64 = 1.0;

/// The cheapest thresholds that keep `target` of the dearest tier's quality on the
/// out-of-fold probabilities `p`. Jointly on the rows with every tier's outcome when there are
/// enough; otherwise, per cheaper tier, against the dearest on the rows with both outcomes
/// (each pair kept at the target on its own). Why the fallback: pooled sources often lack a
/// tier each (RouteLLM has no `fast` model, AlpacaEval no `standard`), and thresholds of 0.5
/// for lack of complete rows sent nearly everything to the cheapest tier (the model card
/// measured 62 % of frontier quality kept). A tier no row can tune is never chosen (1.0).
pub fn tuned_thresholds(
    p: &[Vec<f64>],
    data: &Prepared,
    prices: &[f64],
    target: f64,
    margin: f64,
) -> Vec<f64> {
    let tiers = prices.len();
    let top = tiers - 1;
    let (complete, scores) = data.complete();
    if complete.len() >= MIN_COMPLETE_ROWS {
        if let Some((t, _)) =
            eval::cheapest_thresholds_with_margin(p, &scores, prices, &complete, target, margin)
        {
            return t;
        }
    }
    let mut out: Vec<f64> = (0..top)
        .map(|k| {
            let rows: Vec<usize> = (0..data.rows.len())
                .filter(|&r| data.scores[r][k].is_some() && data.scores[r][top].is_some())
                .collect();
            let pair_p: Vec<Vec<f64>> = p.iter().map(|pr| vec![pr[k], 1.0]).collect();
            let pair_s: Vec<Vec<f64>> = data
                .scores
                .iter()
                .map(|s| vec![s[k].unwrap_or(0.0), s[top].unwrap_or(0.0)])
                .collect();
            if rows.is_empty() {
                return 1.0;
            }
            eval::cheapest_thresholds_with_margin(
                &pair_p,
                &pair_s,
                &[prices[k], prices[top]],
                &rows,
                target,
                margin,
            )
            .map_or(1.0, |(t, _)| t[0])
        })
        .collect();
    out.push(0.0);
    out
}

/// A classifier over freshly fitted heads, uncalibrated, for scoring held-out rows.
pub fn scorer(schema: &Schema, tiers: &[String], fitted: Fitted) -> Result<Classifier, TrainError> {
    let file = model_file(
        schema,
        tiers,
        fitted,
        Vec::new(),
        vec![0.5; tiers.len()],
        serde_json::Value::Null,
    );
    Classifier::new(file, schema).map_err(TrainError::Data)
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

/// Cross-validates the recipe, reports, tunes thresholds and calibration on the out-of-fold
/// predictions, then fits the final model on every usable row. `sources` describes the
/// datasets for the model file.
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
    opts.recipe.validate().map_err(TrainError::Data)?;
    let schema = featurizer.schema();
    let names = tiers.names();
    let top = names.len() - 1;
    let usable = report::usable_rows(data);
    if usable.len() < opts.folds * 2 {
        return Err(TrainError::Data(format!(
            "only {} rows have outcomes for the dearest tier {:?} and another tier; need at least {}",
            usable.len(),
            names[top],
            opts.folds * 2
        )));
    }
    let fold = report::fold_assignment(data.rows.len(), opts.folds, opts.seed);
    let raw = report::out_of_fold_raw(
        schema,
        data,
        &names,
        &opts.recipe,
        &usable,
        &fold,
        opts.folds,
    )?;
    let p = report::served_out_of_fold(
        &raw,
        data,
        &usable,
        &fold,
        opts.folds,
        names.len(),
        opts.recipe.calibrate,
    )?;
    let rep = report::report(data, &names, &p, Some(&fold), None, opts);
    let thresholds = match &opts.prices {
        Some(prices) => tuned_thresholds(&p, data, prices, opts.target_quality, opts.floor_margin),
        None => vec![0.5; names.len()],
    };
    let calibration = if opts.recipe.calibrate {
        report::calibration_maps(&raw, data, &usable, names.len())?
    } else {
        Vec::new()
    };
    let fitted = recipe::fit(&schema.names, data, &usable, &names, &opts.recipe)?;
    let training = serde_json::json!({
        "datasets": sources,
        "tiers": tiers.tiers.iter().map(|(n, m)| serde_json::json!({"tier": n, "models": m})).collect::<Vec<_>>(),
        "rows": usable.len(),
        "recipe": opts.recipe,
        "folds": opts.folds,
        "seed": opts.seed,
        "prices": opts.prices,
        "target_quality": opts.target_quality,
        "floor_margin": opts.floor_margin,
        "cross_validation": rep,
    });
    Ok((
        model_file(schema, &names, fitted, calibration, thresholds, training),
        rep,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of two sources each missing one cheaper tier: `standard` has outcomes in the
    /// first half, `fast` in the second; `p` is informative (the cheap tier succeeds where
    /// its probability is high).
    fn two_partial_sources() -> (Vec<Vec<f64>>, Prepared) {
        let mut data = Prepared::default();
        let mut p = Vec::new();
        for i in 0..200 {
            let u = (i % 100) as f64 / 100.0;
            let cheap_ok = u >= 0.3;
            let s = Some(f64::from(u8::from(cheap_ok)));
            data.rows.push(dataset::Row {
                id: i.to_string(),
                source: None,
                category: None,
                prompt: String::new(),
                outcomes: Default::default(),
            });
            data.scores.push(if i < 100 {
                vec![None, s, Some(1.0)]
            } else {
                vec![s, None, Some(1.0)]
            });
            p.push(vec![u, u.max(0.5), 1.0]);
        }
        (p, data)
    }

    #[test]
    fn without_complete_rows_each_tier_is_tuned_against_the_dearest_on_its_own_rows() {
        let (p, data) = two_partial_sources();
        let t = tuned_thresholds(&p, &data, &[1.0, 2.0, 10.0], 0.95, 0.0);
        assert_eq!(t.len(), 3);
        // Each pair keeps 95 % of the dearest's quality (1.0) on its rows: a tier is chosen
        // only where p >= t, and rows with u < 0.3 fail, so at most 5 of 100 may fall below.
        for (k, rows) in [(0usize, 100..200), (1, 0..100)] {
            let q: f64 = rows
                .map(|r| {
                    if p[r][k] >= t[k] {
                        data.scores[r][k].unwrap_or(0.0)
                    } else {
                        1.0
                    }
                })
                .sum::<f64>()
                / 100.0;
            assert!(q >= 0.95, "tier {k}: threshold {} keeps {q}", t[k]);
            // And it is not the old blind 0.5, nor "never": it saves something.
            assert!(t[k] > 0.0 && t[k] < 1.0, "tier {k}: {}", t[k]);
        }
        assert!((t[0] - 0.5).abs() > 1e-9 || (t[1] - 0.5).abs() > 1e-9);
    }

    #[test]
    fn a_tier_no_row_can_tune_is_never_chosen() {
        let (p, mut data) = two_partial_sources();
        for s in &mut data.scores {
            s[0] = None;
        }
        let t = tuned_thresholds(&p, &data, &[1.0, 2.0, 10.0], 0.95, 0.0);
        assert_eq!(t[0], 1.0);
        assert!(t[1] < 1.0);
    }
}
