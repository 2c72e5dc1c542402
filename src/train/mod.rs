//! Offline training: the steps from labelled rows to a model file, one module per step.
//!
//! `dataset` reads and joins rows, `prepare` featurizes them with the serving featurizer,
//! `recipe` fits the heads (`fit` holds the solver), `report` cross-validates and measures,
//! `transfer` holds whole sources out, `tune` and `eval` pick thresholds, `logs` learns from
//! logged traffic. This file ties them into [`train`] and writes the model file.

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
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            recipe: Recipe::default(),
            folds: 5,
            seed: 7,
            prices: None,
            target_quality: 0.95,
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
        "cross_validation": rep,
    });
    Ok((
        model_file(schema, &names, fitted, calibration, thresholds, training),
        rep,
    ))
}
