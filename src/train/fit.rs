//! Fitting the per-tier logistic heads with linfa-logistic on standardized features.

use linfa::prelude::*;
use linfa_linalg::eigh::EighInto;
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

/// Leading principal components of some columns of the feature vectors, over some rows.
#[derive(Debug, Clone)]
pub struct Components {
    /// The columns they combine.
    pub dims: Vec<usize>,
    /// Those columns' means over the rows.
    pub mean: Vec<f64>,
    /// Unit directions over `dims`, largest variance first.
    pub components: Vec<Vec<f64>>,
}

/// The `k` leading principal components of columns `dims` of `x` over `rows` (fewer when
/// there are fewer columns). Deterministic: a symmetric eigendecomposition of the covariance,
/// no random start.
pub fn principal_components(
    x: &[Vec<f32>],
    rows: &[usize],
    dims: &[usize],
    k: usize,
) -> Result<Components, TrainError> {
    let failed = |message: String| TrainError::Fit {
        tier: "expert components".into(),
        message,
    };
    if rows.is_empty() || dims.is_empty() {
        return Err(failed(format!(
            "need rows and columns, got {} rows and {} columns",
            rows.len(),
            dims.len()
        )));
    }
    let n = rows.len() as f64;
    let mean: Vec<f64> = dims
        .iter()
        .map(|&j| rows.iter().map(|&r| f64::from(x[r][j])).sum::<f64>() / n)
        .collect();
    let centred = Array2::from_shape_fn((rows.len(), dims.len()), |(i, c)| {
        f64::from(x[rows[i]][dims[c]]) - mean[c]
    });
    let covariance = centred.t().dot(&centred) / n;
    let (values, vectors) = covariance.eigh_into().map_err(|e| failed(e.to_string()))?;
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let components = order
        .into_iter()
        .take(k)
        .map(|c| vectors.column(c).to_vec())
        .collect();
    Ok(Components {
        dims: dims.to_vec(),
        mean,
        components,
    })
}

impl Components {
    /// The coordinates of feature vector `v` along the components.
    pub fn project(&self, v: &[f32]) -> Vec<f32> {
        self.components
            .iter()
            .map(|u| {
                u.iter()
                    .zip(&self.dims)
                    .zip(&self.mean)
                    .map(|((u, &j), m)| u * (f64::from(v[j]) - m))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// Rewrites heads fitted on `base` features followed by these components' coordinates as
    /// heads on the `base` features followed by the columns the components combine (unscaled:
    /// mean 0, std 1), giving the same score on every vector: the projection is linear.
    pub fn fold_into(
        &self,
        scaling: Scaling,
        heads: Vec<Option<Head>>,
        base: usize,
    ) -> (Scaling, Vec<Option<Head>>) {
        let heads = heads
            .into_iter()
            .map(|h| {
                h.map(|h| {
                    // Weight of component c on its raw coordinate.
                    let per_component: Vec<f64> = (0..self.components.len())
                        .map(|c| f64::from(h.weights[base + c]) / f64::from(scaling.std[base + c]))
                        .collect();
                    let on_dims: Vec<f64> = (0..self.dims.len())
                        .map(|i| {
                            self.components
                                .iter()
                                .zip(&per_component)
                                .map(|(u, w)| w * u[i])
                                .sum()
                        })
                        .collect();
                    let intercept = f64::from(h.intercept)
                        - per_component
                            .iter()
                            .enumerate()
                            .map(|(c, w)| w * f64::from(scaling.mean[base + c]))
                            .sum::<f64>()
                        - on_dims
                            .iter()
                            .zip(&self.mean)
                            .map(|(w, m)| w * m)
                            .sum::<f64>();
                    Head {
                        tier: h.tier,
                        weights: h.weights[..base]
                            .iter()
                            .copied()
                            .chain(on_dims.iter().map(|w| *w as f32))
                            .collect(),
                        intercept: intercept as f32,
                    }
                })
            })
            .collect();
        let dims = self.dims.len();
        let scaling = Scaling {
            mean: scaling.mean[..base]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, dims))
                .collect(),
            std: scaling.std[..base]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(1.0, dims))
                .collect(),
        };
        (scaling, heads)
    }
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
    fn principal_components_find_the_direction_of_largest_spread_and_fold_exactly() {
        // Column 1 and 2 move together with a large spread, column 0 is small noise; column 3
        // is a feature the components do not read.
        let x: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                let t = (i as f32 - 25.0) / 5.0;
                let noise = ((i * 7) % 5) as f32 * 0.01;
                vec![noise, t, t + noise, (i % 3) as f32]
            })
            .collect();
        let rows: Vec<usize> = (0..50).collect();
        let p = principal_components(&x, &rows, &[0, 1, 2], 1).unwrap();
        let u = &p.components[0];
        assert!((u.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(
            u[1].abs() > 0.7 && u[2].abs() > 0.7 && u[0].abs() < 0.1,
            "{u:?}"
        );
        // A head over [column 3, component] folds into one over [column 3, columns 0-2].
        let head = Head {
            tier: "a".into(),
            weights: vec![0.3, -1.2],
            intercept: 0.4,
        };
        let scaling = Scaling {
            mean: vec![1.0, 0.2],
            std: vec![0.8, 2.5],
        };
        let before = |v: &[f32]| {
            let z = [f64::from(v[3]), f64::from(p.project(v)[0])];
            (0..2)
                .map(|j| {
                    f64::from(head.weights[j]) * (z[j] - f64::from(scaling.mean[j]))
                        / f64::from(scaling.std[j])
                })
                .sum::<f64>()
                + f64::from(head.intercept)
        };
        let (sc, heads) = p.fold_into(scaling.clone(), vec![Some(head.clone()), None], 1);
        assert!(heads[1].is_none());
        let folded = heads[0].as_ref().unwrap();
        assert_eq!(folded.weights.len(), 4);
        assert_eq!(sc.mean.len(), 4);
        for v in &x {
            let raw = [v[3], v[0], v[1], v[2]];
            let after = (0..4)
                .map(|j| {
                    f64::from(folded.weights[j]) * (f64::from(raw[j]) - f64::from(sc.mean[j]))
                        / f64::from(sc.std[j])
                })
                .sum::<f64>()
                + f64::from(folded.intercept);
            assert!((after - before(v)).abs() < 1e-4, "{after} vs {}", before(v));
        }
    }

    #[test]
    fn principal_components_refuse_an_empty_sample() {
        let err = principal_components(&[vec![1.0]], &[], &[0], 1).unwrap_err();
        assert!(err.to_string().contains("0 rows"), "{err}");
    }

    #[test]
    fn constant_features_get_unit_scale() {
        let s = scaling(&[vec![2.0, 1.0], vec![2.0, 3.0]], &[0, 1]);
        assert_eq!(s.mean, vec![2.0, 2.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
    }
}
