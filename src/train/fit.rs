//! Fitting the per-tier logistic heads with linfa-logistic on standardized features.

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};

use crate::classifier::{Head, Scaling};
use crate::error::TrainError;

/// Optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// L2 penalty (linfa's `alpha`); larger means smoother, less fitted heads.
    pub alpha: f64,
    /// LBFGS iteration cap.
    pub max_iterations: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            alpha: 100.0,
            max_iterations: 200,
        }
    }
}

/// Per-feature mean and standard deviation over `rows`; constant features get std 1.
pub fn scaling(x: &[Vec<f32>], rows: &[usize]) -> Scaling {
    let d = x.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    for &r in rows {
        for (m, v) in mean.iter_mut().zip(&x[r]) {
            *m += f64::from(*v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; d];
    for &r in rows {
        for ((s, v), m) in var.iter_mut().zip(&x[r]).zip(&mean) {
            *s += (f64::from(*v) - m).powi(2);
        }
    }
    Scaling {
        mean: mean.iter().map(|m| *m as f32).collect(),
        std: var
            .iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 1e-6 { sd as f32 } else { 1.0 }
            })
            .collect(),
    }
}

/// Fits one head per tier but the dearest. `labels[r][k]` is row r's label for head k.
pub fn fit_heads(
    x: &[Vec<f32>],
    labels: &[Vec<Option<bool>>],
    rows: &[usize],
    tiers: &[String],
    opts: FitOptions,
) -> Result<(Scaling, Vec<Head>), TrainError> {
    let sc = scaling(x, rows);
    let d = sc.mean.len();
    let mut heads = Vec::with_capacity(tiers.len().saturating_sub(1));
    for (k, tier) in tiers.iter().enumerate().take(tiers.len().saturating_sub(1)) {
        let used: Vec<(usize, bool)> = rows
            .iter()
            .filter_map(|&r| labels[r].get(k).copied().flatten().map(|y| (r, y)))
            .collect();
        if used.is_empty() {
            return Err(TrainError::Data(format!(
                "tier {tier:?}: no row has outcomes for both this tier and the dearest tier"
            )));
        }
        let positives = used.iter().filter(|(_, y)| *y).count();
        if positives == 0 || positives == used.len() {
            // One class only: a constant head at the smoothed base rate.
            let rate = (positives as f64 + 0.5) / (used.len() as f64 + 1.0);
            heads.push(Head {
                tier: tier.clone(),
                weights: vec![0.0; d],
                intercept: (rate / (1.0 - rate)).ln() as f32,
            });
            continue;
        }
        let mut xs = Array2::<f64>::zeros((used.len(), d));
        for (i, (r, _)) in used.iter().enumerate() {
            for j in 0..d {
                xs[[i, j]] = (f64::from(x[*r][j]) - f64::from(sc.mean[j])) / f64::from(sc.std[j]);
            }
        }
        let ys: Array1<bool> = used.iter().map(|(_, y)| *y).collect();
        let fitted = LogisticRegression::default()
            .alpha(opts.alpha)
            .max_iterations(opts.max_iterations)
            .fit(&Dataset::new(xs, ys))
            .map_err(|e| TrainError::Fit {
                tier: tier.clone(),
                message: e.to_string(),
            })?;
        // With bool targets linfa's positive ("larger") class is `true`: good enough.
        heads.push(Head {
            tier: tier.clone(),
            weights: fitted.params().iter().map(|w| *w as f32).collect(),
            intercept: fitted.intercept() as f32,
        });
    }
    Ok((sc, heads))
}
