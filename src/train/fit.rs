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

/// Fits one head per entry of `head_tiers` (the tier each head belongs to, in head order).
/// `labels[r][k]` is row r's label for head k.
///
/// `column_weight[j]` (1 when absent) shrinks feature j's standardized column before fitting,
/// which is the same as a heavier L2 penalty on it; it is folded into the stored `std`, so the
/// model file needs nothing new to serve it. A weight of 0 leaves the feature out: its
/// column is zeroed, so its fitted weight stays 0.
pub fn fit_heads(
    x: &[Vec<f32>],
    labels: &[Vec<Option<bool>>],
    rows: &[usize],
    head_tiers: &[String],
    opts: FitOptions,
    column_weight: &[f32],
) -> Result<(Scaling, Vec<Head>), TrainError> {
    let (sc, heads) = fit_labelled_heads(x, labels, rows, head_tiers, opts, column_weight)?;
    let heads = heads
        .into_iter()
        .zip(head_tiers)
        .map(|(h, tier)| {
            h.ok_or_else(|| {
                TrainError::Data(format!(
                    "tier {tier:?}: no row has the outcomes this head learns from"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((sc, heads))
}

/// [`fit_heads`], except that a head none of `rows` has a label for is `None` instead of an
/// error (a topic expert keeps the shared head there).
pub fn fit_labelled_heads(
    x: &[Vec<f32>],
    labels: &[Vec<Option<bool>>],
    rows: &[usize],
    head_tiers: &[String],
    opts: FitOptions,
    column_weight: &[f32],
) -> Result<(Scaling, Vec<Option<Head>>), TrainError> {
    let mut sc = scaling(x, rows);
    for (s, w) in sc.std.iter_mut().zip(column_weight) {
        if *w > 0.0 {
            *s /= *w;
        }
    }
    let d = sc.mean.len();
    let active: Vec<bool> = (0..d)
        .map(|j| column_weight.get(j).is_none_or(|w| *w != 0.0))
        .collect();
    let mut heads = Vec::with_capacity(head_tiers.len());
    for (k, tier) in head_tiers.iter().enumerate() {
        let used: Vec<(usize, bool)> = rows
            .iter()
            .filter_map(|&r| labels[r].get(k).copied().flatten().map(|y| (r, y)))
            .collect();
        if used.is_empty() {
            heads.push(None);
            continue;
        }
        let positives = used.iter().filter(|(_, y)| *y).count();
        if positives == 0 || positives == used.len() {
            // One class only: a constant head at the smoothed base rate.
            let rate = (positives as f64 + 0.5) / (used.len() as f64 + 1.0);
            heads.push(Some(Head {
                tier: tier.clone(),
                weights: vec![0.0; d],
                intercept: (rate / (1.0 - rate)).ln() as f32,
            }));
            continue;
        }
        let mut xs = Array2::<f64>::zeros((used.len(), d));
        for (i, (r, _)) in used.iter().enumerate() {
            for j in (0..d).filter(|&j| active[j]) {
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
        // linfa's "positive" class is whichever label its data shows first, not `true`; flip
        // the head when needed so that it always scores "good enough".
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        heads.push(Some(Head {
            tier: tier.clone(),
            weights: fitted.params().iter().map(|w| (sign * w) as f32).collect(),
            intercept: (sign * fitted.intercept()) as f32,
        }));
    }
    Ok((sc, heads))
}

/// Fits a multinomial logistic classifier from unit embeddings to topic labels and returns it
/// as (centres, biases) over the raw embedding: its standardization is folded in, so
/// softmax(centre · x + bias) is the posterior of each topic.
pub fn topic_classifier(
    points: &[&[f32]],
    labels: &[String],
    alpha: f64,
) -> Result<(Vec<Vec<f32>>, Vec<f32>), TrainError> {
    let rows: Vec<usize> = (0..points.len()).collect();
    let owned: Vec<Vec<f32>> = points.iter().map(|p| p.to_vec()).collect();
    let sc = scaling(&owned, &rows);
    let d = sc.mean.len();
    let mut xs = Array2::<f64>::zeros((points.len(), d));
    for (i, p) in points.iter().enumerate() {
        for j in 0..d {
            xs[[i, j]] = (f64::from(p[j]) - f64::from(sc.mean[j])) / f64::from(sc.std[j]);
        }
    }
    let ys: Array1<String> = labels.iter().cloned().collect();
    let fitted = linfa_logistic::MultiLogisticRegression::default()
        .alpha(alpha)
        .max_iterations(100)
        .fit(&Dataset::new(xs, ys))
        .map_err(|e| TrainError::Fit {
            tier: "topic classifier".into(),
            message: e.to_string(),
        })?;
    let params = fitted.params();
    let mut centres = Vec::with_capacity(params.ncols());
    let mut biases = Vec::with_capacity(params.ncols());
    for k in 0..params.ncols() {
        let mut b = fitted.intercept()[k];
        let c: Vec<f32> = (0..d)
            .map(|j| {
                let w = params[[j, k]] / f64::from(sc.std[j]);
                b -= w * f64::from(sc.mean[j]);
                w as f32
            })
            .collect();
        centres.push(c);
        biases.push(b as f32);
    }
    Ok((centres, biases))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_one(first_label: bool) -> Head {
        // Feature 0 separates the classes; the first row's label decides linfa's "positive" class.
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for i in 0..40 {
            let y = if i == 0 { first_label } else { i % 2 == 0 };
            x.push(vec![if y { 1.0 } else { -1.0 } + (i as f32) * 0.001, 0.5]);
            labels.push(vec![Some(y)]);
        }
        let rows: Vec<usize> = (0..40).collect();
        let tiers = ["cheap".to_string()];
        let opts = FitOptions {
            alpha: 0.1,
            max_iterations: 100,
        };
        fit_heads(&x, &labels, &rows, &tiers, opts, &[])
            .unwrap()
            .1
            .remove(0)
    }

    #[test]
    fn heads_score_good_enough_whatever_label_comes_first() {
        for first in [true, false] {
            let h = fit_one(first);
            assert!(h.weights[0] > 0.0, "first label {first}: {h:?}");
        }
    }

    #[test]
    fn single_class_heads_are_constant_at_the_base_rate() {
        let x = vec![vec![1.0f32]; 4];
        let labels = vec![vec![Some(true)]; 4];
        let tiers = ["a".to_string()];
        let (_, heads) = fit_heads(
            &x,
            &labels,
            &[0, 1, 2, 3],
            &tiers,
            FitOptions::default(),
            &[],
        )
        .unwrap();
        assert_eq!(heads[0].weights, vec![0.0]);
        assert!((heads[0].intercept - (4.5f32 / 0.5).ln()).abs() < 1e-5);
    }

    #[test]
    fn a_column_weight_below_one_shrinks_that_feature() {
        // Two equally informative features; weighting the second by 0.1 penalizes it harder.
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let y = i % 2 == 0;
            let v = if y { 1.0 } else { -1.0 } + (i % 7) as f32 * 0.05;
            x.push(vec![v, v]);
            labels.push(vec![Some(y)]);
        }
        let rows: Vec<usize> = (0..60).collect();
        let tiers = ["a".to_string()];
        let opts = FitOptions {
            alpha: 5.0,
            max_iterations: 100,
        };
        let (sc, heads) = fit_heads(&x, &labels, &rows, &tiers, opts, &[1.0, 0.1]).unwrap();
        // Effective weight on the raw feature is weight / std; the stored std carries the 0.1.
        let raw = |j: usize| heads[0].weights[j] / sc.std[j];
        assert!(raw(0) > 5.0 * raw(1), "{heads:?} {sc:?}");
        assert!(raw(1) > 0.0);
    }

    #[test]
    fn topic_classifier_posteriors_pick_the_right_topic() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let points: Vec<&[f32]> = (0..20)
            .map(|i| if i % 2 == 0 { &a[..] } else { &b[..] })
            .collect();
        let labels: Vec<String> = (0..20)
            .map(|i| if i % 2 == 0 { "x".into() } else { "y".into() })
            .collect();
        let (centres, bias) = topic_classifier(&points, &labels, 0.1).unwrap();
        let p = crate::prototypes::Prototypes {
            offset: 0,
            centroids: centres,
            temperature: 1.0,
            bias,
            interact: vec![],
        };
        let m = p.expand(&a);
        // Classes are sorted, so "x" is the first membership.
        assert!(m[2] > 0.9, "{m:?}");
    }

    #[test]
    fn constant_features_get_unit_scale() {
        let s = scaling(&[vec![2.0, 1.0], vec![2.0, 3.0]], &[0, 1]);
        assert_eq!(s.mean, vec![2.0, 2.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
    }
}
