//! Fitting logistic models: standardization, a penalized Newton solver, and Platt maps.
//!
//! Why our own solver: the recipe needs a penalty per column (embedding dimensions heavier
//! than scalar features, group intercepts almost free), sample weights (inverse propensities
//! of logged decisions) and fixed offsets (priors the heads fit around); linfa-logistic has
//! one penalty for all columns and neither weights nor offsets. The objective is the same as
//! linfa's for one penalty (a test checks it against linfa).

use ndarray::{Array1, Array2, ArrayView1};

use crate::classifier::Scaling;
use crate::error::TrainError;

/// The smallest standard deviation a 0/1 feature is scaled by. Why: a marker seen on a few
/// training rows has a tiny std, so its standardized column takes huge values on the rows
/// that carry it, and one L2 penalty then lets it take a large logit for very little cost;
/// scaled as if it were at least a half-and-half feature, its slope costs what any other does.
pub const BINARY_SCALE: f32 = 0.5;

/// Per-feature mean and standard deviation over `rows`; constant features get std 1, and
/// features that only take the values 0 and 1 at least [`BINARY_SCALE`].
pub fn scaling(x: &[Vec<f32>], rows: &[usize]) -> Scaling {
    let d = x.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    let mut binary = vec![true; d];
    for &r in rows {
        for ((m, v), b) in mean.iter_mut().zip(&x[r]).zip(binary.iter_mut()) {
            *m += f64::from(*v);
            *b &= *v == 0.0 || *v == 1.0;
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
            .zip(&binary)
            .map(|(s, b)| {
                let sd = (s / n).sqrt() as f32;
                if sd <= 1e-6 {
                    1.0
                } else if *b {
                    sd.max(BINARY_SCALE)
                } else {
                    sd
                }
            })
            .collect(),
    }
}

/// The standardized features of `rows`, one matrix row per entry.
pub fn design(x: &[Vec<f32>], rows: &[usize], scaling: &Scaling) -> Array2<f64> {
    let d = scaling.mean.len();
    let mut z = Array2::<f64>::zeros((rows.len(), d));
    for (i, &r) in rows.iter().enumerate() {
        for j in 0..d {
            z[[i, j]] =
                (f64::from(x[r][j]) - f64::from(scaling.mean[j])) / f64::from(scaling.std[j]);
        }
    }
    z
}

/// What one fit is asked to do besides the data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec<'a> {
    /// L2 penalty per column (the intercept is never penalized).
    pub penalty: &'a [f64],
    /// The weights the penalty pulls towards (0 when absent): a base model's, when adapting.
    pub prior: Option<&'a [f64]>,
    /// Weight of each row's log-loss (1 when absent).
    pub sample_weight: Option<&'a [f64]>,
    /// A fixed logit added to each row's (a prior the fit works around).
    pub offset: Option<&'a [f64]>,
}

/// A fitted logistic model: `P(y) = sigmoid(weights · x + intercept + offset)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    /// One weight per column.
    pub weights: Vec<f64>,
    /// The unpenalized intercept.
    pub intercept: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// log(1 + e^z) without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// Rows per block when the Hessian is accumulated.
const HESSIAN_BLOCK: usize = 4_096;

/// Minimizes `Σ wᵢ·logloss(yᵢ, xᵢ·β + b + offsetᵢ) + ½ Σⱼ penaltyⱼ (βⱼ - priorⱼ)²` by Newton's
/// method with a backtracking line search (the objective is convex; with every penalty > 0
/// it is strictly convex, so the minimum is unique).
pub fn fit_logistic(x: &Array2<f64>, y: &[bool], spec: &Spec<'_>) -> Result<Logistic, String> {
    let (n, d) = x.dim();
    if y.len() != n || spec.penalty.len() != d {
        return Err(format!(
            "{n} rows, {} labels, {d} columns, {} penalties",
            y.len(),
            spec.penalty.len()
        ));
    }
    if n == 0 {
        return Err("no rows to fit".into());
    }
    let weight = |i: usize| spec.sample_weight.map_or(1.0, |w| w[i]);
    let offset = |i: usize| spec.offset.map_or(0.0, |o| o[i]);
    let prior = |j: usize| spec.prior.map_or(0.0, |p| p[j]);
    if spec.penalty.iter().any(|p| !(p.is_finite() && *p >= 0.0))
        || (0..n).any(|i| !(weight(i).is_finite() && weight(i) >= 0.0 && offset(i).is_finite()))
    {
        return Err("penalties, sample weights and offsets must be finite and >= 0".into());
    }
    // Parameters: d weights, then the intercept.
    let mut theta = Array1::<f64>::zeros(d + 1);
    for j in 0..d {
        theta[j] = prior(j);
    }
    let objective = |theta: &Array1<f64>| -> f64 {
        let beta = theta.slice(ndarray::s![..d]);
        let eta = x.dot(&beta);
        let mut f = 0.0;
        for i in 0..n {
            let z = eta[i] + theta[d] + offset(i);
            f += weight(i) * (softplus(z) - if y[i] { z } else { 0.0 });
        }
        f + 0.5
            * (0..d)
                .map(|j| spec.penalty[j] * (theta[j] - prior(j)).powi(2))
                .sum::<f64>()
    };
    let mut f = objective(&theta);
    for _ in 0..100 {
        let beta: ArrayView1<f64> = theta.slice(ndarray::s![..d]);
        let eta = x.dot(&beta);
        let mut r = Array1::<f64>::zeros(n);
        let mut h = Array1::<f64>::zeros(n);
        for i in 0..n {
            let p = sigmoid(eta[i] + theta[d] + offset(i));
            r[i] = weight(i) * (p - if y[i] { 1.0 } else { 0.0 });
            h[i] = weight(i) * (p * (1.0 - p)).max(1e-12);
        }
        let mut grad = Array1::<f64>::zeros(d + 1);
        grad.slice_mut(ndarray::s![..d]).assign(&x.t().dot(&r));
        grad[d] = r.sum();
        for j in 0..d {
            grad[j] += spec.penalty[j] * (theta[j] - prior(j));
        }
        // Hessian [[Xᵀ H X + P, Xᵀ h], [hᵀ X, Σ h]], from the rows scaled by √h, a block of
        // rows at a time: a copy of the whole design would double the memory a fit takes.
        let mut hess = Array2::<f64>::zeros((d + 1, d + 1));
        for start in (0..n).step_by(HESSIAN_BLOCK) {
            let end = (start + HESSIAN_BLOCK).min(n);
            let mut xs = x.slice(ndarray::s![start..end, ..]).to_owned();
            for (i, mut row) in xs.rows_mut().into_iter().enumerate() {
                row *= h[start + i].sqrt();
            }
            let mut top = hess.slice_mut(ndarray::s![..d, ..d]);
            top += &xs.t().dot(&xs);
        }
        let xh = x.t().dot(&h);
        for j in 0..d {
            hess[[j, j]] += spec.penalty[j];
            hess[[j, d]] = xh[j];
            hess[[d, j]] = xh[j];
        }
        hess[[d, d]] = h.sum();
        let step = solve_spd(hess, &grad)?;
        let mut t = 1.0;
        let mut improved = false;
        for _ in 0..30 {
            let next = &theta - &(&step * t);
            let fn_next = objective(&next);
            if fn_next.is_finite() && fn_next <= f {
                let done = (f - fn_next) <= 1e-10 * f.abs().max(1.0);
                theta = next;
                f = fn_next;
                improved = true;
                if done {
                    return finish(theta, d);
                }
                break;
            }
            t *= 0.5;
        }
        if !improved || step.iter().map(|s| s.abs()).fold(0.0, f64::max) * t < 1e-9 {
            break;
        }
    }
    finish(theta, d)
}

fn finish(theta: Array1<f64>, d: usize) -> Result<Logistic, String> {
    if theta.iter().any(|v| !v.is_finite()) {
        return Err("the fit diverged (non-finite weights)".into());
    }
    Ok(Logistic {
        weights: theta.slice(ndarray::s![..d]).to_vec(),
        intercept: theta[d],
    })
}

/// Solves `a · x = b` for a symmetric positive definite `a` by Cholesky, adding a small ridge
/// when rounding makes a nearly singular matrix fail.
fn solve_spd(a: Array2<f64>, b: &Array1<f64>) -> Result<Array1<f64>, String> {
    let n = b.len();
    for ridge in [0.0, 1e-9, 1e-6, 1e-3] {
        let mut l = a.clone();
        for i in 0..n {
            l[[i, i]] += ridge * a[[i, i]].abs().max(1.0);
        }
        if cholesky_in_place(&mut l) {
            // L y = b, then Lᵀ x = y.
            let mut x = b.clone();
            for i in 0..n {
                let s: f64 = (0..i).map(|k| l[[i, k]] * x[k]).sum();
                x[i] = (x[i] - s) / l[[i, i]];
            }
            for i in (0..n).rev() {
                let s: f64 = (i + 1..n).map(|k| l[[k, i]] * x[k]).sum();
                x[i] = (x[i] - s) / l[[i, i]];
            }
            return Ok(x);
        }
    }
    Err("the Hessian is not positive definite (collinear unpenalized columns?)".into())
}

/// Lower-triangular Cholesky factor in place (upper part left as garbage); false if `a` is
/// not positive definite.
fn cholesky_in_place(a: &mut Array2<f64>) -> bool {
    let n = a.nrows();
    for j in 0..n {
        let s: f64 = (0..j).map(|k| a[[j, k]] * a[[j, k]]).sum();
        let diag = a[[j, j]] - s;
        if !(diag.is_finite() && diag > 0.0) {
            return false;
        }
        let dj = diag.sqrt();
        a[[j, j]] = dj;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| a[[i, k]] * a[[j, k]]).sum();
            a[[i, j]] = (a[[i, j]] - s) / dj;
        }
    }
    true
}

/// Penalty on the intercept columns of a Platt fit: enough to keep a cell seen on a handful
/// of rows near the others, too little to matter on hundreds.
const PLATT_CELL_PENALTY: f64 = 1.0;

/// Platt scaling with one slope shared by every cell and an intercept per cell: returns the
/// slope and each cell's intercept, cells in sorted order.
pub fn platt_by_group(
    pairs: &[(f64, bool, &str)],
) -> Result<(f64, Vec<(String, f64)>), TrainError> {
    let mut cells: Vec<&str> = pairs.iter().map(|p| p.2).collect();
    cells.sort_unstable();
    cells.dedup();
    let extra = if cells.len() > 1 { cells.len() } else { 0 };
    let mut x = Array2::<f64>::zeros((pairs.len(), 1 + extra));
    for (i, (s, _, c)) in pairs.iter().enumerate() {
        x[[i, 0]] = *s;
        if extra > 0 {
            x[[i, 1 + cells.binary_search(c).unwrap_or_default()]] = 1.0;
        }
    }
    let y: Vec<bool> = pairs.iter().map(|p| p.1).collect();
    let mut penalty = vec![PLATT_CELL_PENALTY; 1 + extra];
    // The slope is free: the score's own scale is arbitrary.
    penalty[0] = 1e-6;
    let fitted = fit_logistic(
        &x,
        &y,
        &Spec {
            penalty: &penalty,
            ..Spec::default()
        },
    )
    .map_err(|message| TrainError::Fit {
        tier: "calibration".into(),
        message,
    })?;
    let intercepts = cells
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let own = if extra > 0 {
                fitted.weights[1 + c]
            } else {
                0.0
            };
            (name.to_string(), fitted.intercept + own)
        })
        .collect();
    Ok((fitted.weights[0], intercepts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::prelude::*;

    /// Two noisy features, the first informative, the second weakly.
    fn data(n: usize) -> (Array2<f64>, Vec<bool>) {
        let mut x = Array2::<f64>::zeros((n, 2));
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let a = ((i * 37) % 101) as f64 / 50.0 - 1.0;
            let b = ((i * 53) % 97) as f64 / 48.0 - 1.0;
            x[[i, 0]] = a;
            x[[i, 1]] = b;
            y.push(2.0 * a + 0.3 * b + (((i * 17) % 13) as f64 / 6.0 - 1.0) > 0.2);
        }
        (x, y)
    }

    #[test]
    fn matches_linfa_for_one_penalty() {
        let (x, y) = data(300);
        let ours = fit_logistic(
            &x,
            &y,
            &Spec {
                penalty: &[2.0, 2.0],
                ..Spec::default()
            },
        )
        .unwrap();
        let theirs = linfa_logistic::LogisticRegression::default()
            .alpha(2.0)
            .max_iterations(1000)
            .gradient_tolerance(1e-10)
            .fit(&Dataset::new(x.clone(), Array1::from(y.clone())))
            .unwrap();
        let sign = if theirs.labels().pos.class { 1.0 } else { -1.0 };
        for j in 0..2 {
            let t = sign * theirs.params()[j];
            assert!((ours.weights[j] - t).abs() < 1e-3, "{ours:?} vs {t}");
        }
        assert!((ours.intercept - sign * theirs.intercept()).abs() < 1e-3);
        assert!(ours.weights[0] > 3.0 * ours.weights[1].abs());
    }

    #[test]
    fn a_heavier_penalty_shrinks_its_column_and_a_prior_pulls_towards_itself() {
        let (x, y) = data(300);
        let fit = |penalty: &[f64], prior: Option<&[f64]>| {
            fit_logistic(
                &x,
                &y,
                &Spec {
                    penalty,
                    prior,
                    ..Spec::default()
                },
            )
            .unwrap()
        };
        let free = fit(&[0.1, 0.1], None);
        let heavy = fit(&[1e4, 0.1], None);
        assert!(
            heavy.weights[0].abs() < 0.1 * free.weights[0].abs(),
            "{heavy:?}"
        );
        let pulled = fit(&[1e4, 0.1], Some(&[-3.0, 0.0]));
        assert!((pulled.weights[0] + 3.0).abs() < 0.2, "{pulled:?}");
    }

    #[test]
    fn offsets_and_weights_enter_the_objective() {
        let (x, y) = data(200);
        let pen = [1.0, 1.0];
        let base = fit_logistic(
            &x,
            &y,
            &Spec {
                penalty: &pen,
                ..Spec::default()
            },
        )
        .unwrap();
        // An offset carrying the first column's slope leaves less for the weight to learn.
        let off: Vec<f64> = x.column(0).iter().map(|a| 2.0 * a).collect();
        let with = fit_logistic(
            &x,
            &y,
            &Spec {
                penalty: &pen,
                offset: Some(&off),
                ..Spec::default()
            },
        )
        .unwrap();
        assert!(
            (with.weights[0] - (base.weights[0] - 2.0)).abs() < 0.5,
            "{with:?} {base:?}"
        );
        // Weight 2 on every row is the same as each row twice.
        let w = vec![2.0; 200];
        let weighted = fit_logistic(
            &x,
            &y,
            &Spec {
                penalty: &pen,
                sample_weight: Some(&w),
                ..Spec::default()
            },
        )
        .unwrap();
        let doubled_x = ndarray::concatenate(ndarray::Axis(0), &[x.view(), x.view()]).unwrap();
        let doubled_y: Vec<bool> = y.iter().chain(&y).copied().collect();
        let doubled = fit_logistic(
            &doubled_x,
            &doubled_y,
            &Spec {
                penalty: &pen,
                ..Spec::default()
            },
        )
        .unwrap();
        for j in 0..2 {
            assert!((weighted.weights[j] - doubled.weights[j]).abs() < 1e-6);
        }
        let err = fit_logistic(
            &x,
            &y[..3],
            &Spec {
                penalty: &pen,
                ..Spec::default()
            },
        );
        assert!(err.unwrap_err().contains("3 labels"));
    }

    #[test]
    fn separable_data_stays_finite_under_a_penalty() {
        let x = Array2::from_shape_vec((4, 1), vec![-1.0, -0.5, 0.5, 1.0]).unwrap();
        let y = [false, false, true, true];
        let f = fit_logistic(
            &x,
            &y,
            &Spec {
                penalty: &[0.01],
                ..Spec::default()
            },
        )
        .unwrap();
        assert!(f.weights[0].is_finite() && f.weights[0] > 1.0, "{f:?}");
    }

    #[test]
    fn binary_features_are_scaled_at_least_by_half() {
        let x: Vec<Vec<f32>> = (0..100)
            .map(|i| vec![if i == 0 { 1.0 } else { 0.0 }, i as f32, 3.0])
            .collect();
        let rows: Vec<usize> = (0..100).collect();
        let s = scaling(&x, &rows);
        assert_eq!(s.std[0], BINARY_SCALE);
        assert!((s.std[1] - 28.866).abs() < 0.01, "{s:?}");
        assert_eq!(s.std[2], 1.0);
        let z = design(&x, &[0], &s);
        assert!((z[[0, 0]] - (1.0 - 0.01) / 0.5).abs() < 1e-6);
    }

    #[test]
    fn platt_cells_share_a_slope_and_keep_their_base_rates() {
        // Two cells with the same ranking but different base rates.
        let mut pairs = Vec::new();
        for i in 0..400 {
            let s = (i % 20) as f64 / 20.0;
            let cell = if i % 2 == 0 { "a" } else { "b" };
            let cut = if cell == "a" { 0.3 } else { 0.7 };
            pairs.push((s, s > cut, cell));
        }
        let (slope, cells) = platt_by_group(&pairs).unwrap();
        assert!(slope > 5.0, "{slope}");
        assert_eq!(cells[0].0, "a");
        assert!(cells[0].1 > cells[1].1, "{cells:?}");
    }
}
