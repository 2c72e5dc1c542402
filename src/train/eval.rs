//! Routing metrics: PGR/APGR/CPT for two tiers (and their bootstrap spread), cost at a
//! quality target for N tiers, and the threshold search shared by evaluation and training.

use serde::Serialize;

use crate::policy::cheapest_sufficient;

/// One point of a PGR curve: share of calls sent to the strong model, and the PGR there.
pub type CurvePoint = (f64, f64);

/// PGR against the strong-call share when rows are sent to the strong model in decreasing
/// order of `need_strong`. Ties are one group whose rows go together, so a constant score is
/// exactly random routing. `weak`/`strong` are per-row scores.
pub fn pgr_curve(weak: &[f64], strong: &[f64], need_strong: &[f64]) -> Vec<CurvePoint> {
    let n = weak.len();
    let qw = weak.iter().sum::<f64>() / n as f64;
    let qs = strong.iter().sum::<f64>() / n as f64;
    let gap = qs - qw;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| need_strong[b].total_cmp(&need_strong[a]));
    let mut points = vec![(0.0, 0.0)];
    let mut gain = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && need_strong[order[j]] == need_strong[order[i]] {
            gain += strong[order[j]] - weak[order[j]];
            j += 1;
        }
        let pgr = if gap.abs() < 1e-12 {
            0.0
        } else {
            gain / n as f64 / gap
        };
        points.push((j as f64 / n as f64, pgr));
        i = j;
    }
    points
}

/// Area under a PGR curve (trapezoids; linear within tie groups).
pub fn apgr(curve: &[CurvePoint]) -> f64 {
    curve
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

/// APGR of several routings of the same rows on `resamples` bootstrap resamples of the rows
/// (`[routing][resample]`). Every routing is scored on the same resamples, so differences
/// between them are paired: two routers scored on one benchmark share its hard and easy rows,
/// and the spread of their difference is far narrower than that of either figure alone. The
/// same seed gives the same resamples.
pub fn bootstrap_apgr(
    weak: &[f64],
    strong: &[f64],
    needs: &[&[f64]],
    resamples: usize,
    seed: u64,
) -> Vec<Vec<f64>> {
    use rand::{Rng, SeedableRng};
    let n = weak.len();
    let gains: Vec<f64> = (0..n).map(|r| strong[r] - weak[r]).collect();
    let groups: Vec<Vec<Vec<usize>>> = needs.iter().map(|need| tie_groups(need)).collect();
    let mut out = vec![Vec::with_capacity(resamples); needs.len()];
    if n == 0 {
        return out;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut times = vec![0u32; n];
    for _ in 0..resamples {
        times.fill(0);
        for _ in 0..n {
            times[rng.gen_range(0..n)] += 1;
        }
        for (k, g) in groups.iter().enumerate() {
            out[k].push(weighted_apgr(g, &gains, &times));
        }
    }
    out
}

/// Row indices in decreasing order of `need`, rows of equal need together (as in
/// [`pgr_curve`]).
fn tie_groups(need: &[f64]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..need.len()).collect();
    order.sort_by(|&a, &b| need[b].total_cmp(&need[a]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for r in order {
        match groups.last_mut() {
            Some(g) if need[g[0]] == need[r] => g.push(r),
            _ => groups.push(vec![r]),
        }
    }
    groups
}

/// [`apgr`] of [`pgr_curve`] with row r counted `times[r]` times.
fn weighted_apgr(groups: &[Vec<usize>], gains: &[f64], times: &[u32]) -> f64 {
    let total: f64 = times.iter().map(|&t| f64::from(t)).sum();
    let gain: f64 = gains
        .iter()
        .zip(times)
        .map(|(g, &t)| g * f64::from(t))
        .sum();
    if total == 0.0 || (gain / total).abs() < 1e-12 {
        return 0.0;
    }
    let (mut x, mut y, mut area) = (0.0, 0.0, 0.0);
    for g in groups {
        let dx: f64 = g.iter().map(|&r| f64::from(times[r])).sum::<f64>() / total;
        let dy: f64 = g
            .iter()
            .map(|&r| gains[r] * f64::from(times[r]))
            .sum::<f64>()
            / gain;
        area += dx * (2.0 * y + dy) / 2.0;
        x += dx;
        y += dy;
    }
    debug_assert!((x - 1.0).abs() < 1e-9);
    area
}

/// The central 95 % of `values` (percentile interval; `[NaN, NaN]` when empty).
pub fn interval95(values: &[f64]) -> [f64; 2] {
    if values.is_empty() {
        return [f64::NAN; 2];
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.025), at(0.975)]
}

/// Smallest strong-call share at which PGR reaches `target` (linear within tie groups).
pub fn cpt(curve: &[CurvePoint], target: f64) -> Option<f64> {
    curve.windows(2).find_map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        (y1 >= target).then(|| {
            if y0 >= target || (y1 - y0).abs() < 1e-12 {
                x0
            } else {
                x0 + (x1 - x0) * (target - y0) / (y1 - y0)
            }
        })
    })
}

/// Mean quality and mean cost of a routing.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Operating {
    /// Mean score of the chosen tiers.
    pub quality: f64,
    /// Mean price of the chosen tiers.
    pub cost: f64,
}

/// Quality and cost when row r goes to tier `choice[r]`; `scores[r][k]` must be present.
pub fn operating(
    choice: &[usize],
    scores: &[Vec<f64>],
    prices: &[f64],
    rows: &[usize],
) -> Operating {
    let n = rows.len().max(1) as f64;
    let (mut q, mut c) = (0.0, 0.0);
    for &r in rows {
        q += scores[r][choice[r]];
        c += prices[choice[r]];
    }
    Operating {
        quality: q / n,
        cost: c / n,
    }
}

/// Candidate thresholds per head: `steps + 1` quantiles of the head's probabilities over
/// `rows`, so the grid is fine where the rows are, plus `steps + 1` evenly spaced values in
/// [0, 1], which resolve regions where probabilities are sparse. Why both: calibrated
/// probabilities can sit in a narrow band (0.55–0.7), where an even grid alone has two or
/// three points and misses the cheap operating points entirely.
pub fn threshold_candidates(
    p: &[Vec<f64>],
    rows: &[usize],
    heads: usize,
    steps: usize,
) -> Vec<Vec<f64>> {
    (0..heads)
        .map(|k| {
            let mut v: Vec<f64> = rows.iter().filter_map(|&r| p[r].get(k).copied()).collect();
            v.sort_by(f64::total_cmp);
            let steps = steps.max(1);
            let mut c: Vec<f64> = (0..=steps)
                .filter_map(|i| v.get(i * v.len().saturating_sub(1) / steps).copied())
                .collect();
            c.extend((0..=steps).map(|i| i as f64 / steps as f64));
            c.retain(|t| (0.0..=1.0).contains(t));
            c.sort_by(f64::total_cmp);
            c.dedup();
            c
        })
        .collect()
}

/// Every combination of one candidate per head.
fn grid(cands: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new()];
    for axis in cands {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                axis.iter().map(move |t| {
                    let mut v = prefix.clone();
                    v.push(*t);
                    v
                })
            })
            .collect();
    }
    out
}

/// Routes every row with `thresholds` (one per tier; the dearest always qualifies).
pub fn route_all(p: &[Vec<f64>], thresholds: &[f64]) -> Vec<usize> {
    p.iter()
        .map(|pr| cheapest_sufficient(pr, thresholds, 0, pr.len() - 1).unwrap_or(pr.len() - 1))
        .collect()
}

/// The cheapest thresholds on `rows` whose quality reaches `min_quality`, with their operating
/// point; `None` if no grid point reaches it.
pub fn cheapest_thresholds(
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    prices: &[f64],
    rows: &[usize],
    min_quality: f64,
) -> Option<(Vec<f64>, Operating)> {
    cheapest_thresholds_where(p, scores, prices, rows, |_, op| {
        op.quality + 1e-12 >= min_quality
    })
}

/// The cheapest thresholds whose routing keeps `target` of the dearest tier's quality with a
/// margin of `z` standard errors of the per-row shortfall `quality(choice) − target ·
/// quality(dearest)`: paired, so rows routed to the dearest add no noise, and the margin
/// shrinks as the rows grow. z = 0 is [`cheapest_thresholds`] at `target` of the dearest's
/// mean quality.
pub fn cheapest_thresholds_with_margin(
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    prices: &[f64],
    rows: &[usize],
    target: f64,
    z: f64,
) -> Option<(Vec<f64>, Operating)> {
    let top = prices.len() - 1;
    let n = rows.len().max(1) as f64;
    cheapest_thresholds_where(p, scores, prices, rows, |choice, _| {
        let d: Vec<f64> = rows
            .iter()
            .map(|&r| scores[r][choice[r]] - target * scores[r][top])
            .collect();
        let mean = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        mean - z * (var / n).sqrt() + 1e-12 >= 0.0
    })
}

fn cheapest_thresholds_where(
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    prices: &[f64],
    rows: &[usize],
    keeps: impl Fn(&[usize], &Operating) -> bool,
) -> Option<(Vec<f64>, Operating)> {
    let heads = prices.len() - 1;
    let steps: usize = match heads {
        0 | 1 => 100,
        2 => 40,
        3 => 16,
        _ => 6,
    };
    let mut best: Option<(Vec<f64>, Operating)> = None;
    for mut t in grid(&threshold_candidates(p, rows, heads, steps)) {
        t.push(0.0);
        let choice = route_all(p, &t);
        let op = operating(&choice, scores, prices, rows);
        if keeps(&choice, &op)
            && best.as_ref().is_none_or(|(_, b)| {
                op.cost < b.cost || (op.cost == b.cost && op.quality > b.quality)
            })
        {
            best = Some((t, op));
        }
    }
    best
}

/// The cheapest mix of tiers chosen at random (shares on a 1 % grid) whose expected quality
/// reaches `min_quality`: the random-routing baseline for N tiers.
pub fn random_mix(
    scores: &[Vec<f64>],
    prices: &[f64],
    rows: &[usize],
    min_quality: f64,
) -> Option<Operating> {
    let k = prices.len();
    let n = rows.len().max(1) as f64;
    let mean_q: Vec<f64> = (0..k)
        .map(|t| rows.iter().map(|&r| scores[r][t]).sum::<f64>() / n)
        .collect();
    let mut best: Option<Operating> = None;
    let mut shares = vec![0usize; k];
    fn rec(
        i: usize,
        left: usize,
        shares: &mut Vec<usize>,
        mean_q: &[f64],
        prices: &[f64],
        min_quality: f64,
        best: &mut Option<Operating>,
    ) {
        if i + 1 == shares.len() {
            shares[i] = left;
            let q: f64 = shares
                .iter()
                .zip(mean_q)
                .map(|(s, q)| *s as f64 / 100.0 * q)
                .sum();
            let c: f64 = shares
                .iter()
                .zip(prices)
                .map(|(s, p)| *s as f64 / 100.0 * p)
                .sum();
            if q + 1e-12 >= min_quality && best.is_none_or(|b| c < b.cost) {
                *best = Some(Operating {
                    quality: q,
                    cost: c,
                });
            }
            return;
        }
        for s in 0..=left {
            shares[i] = s;
            rec(i + 1, left - s, shares, mean_q, prices, min_quality, best);
        }
    }
    rec(0, 100, &mut shares, &mean_q, prices, min_quality, &mut best);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_score_is_random_routing() {
        let weak = [1.0, 0.0, 0.0, 1.0];
        let strong = [1.0, 1.0, 1.0, 0.0];
        let c = pgr_curve(&weak, &strong, &[0.5; 4]);
        assert!((apgr(&c) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_perfect_router_beats_random_and_reaches_50_percent_early() {
        // Strong helps on rows 1 and 2 only.
        let weak = [1.0, 0.0, 0.0, 1.0];
        let strong = [1.0, 1.0, 1.0, 1.0];
        let c = pgr_curve(&weak, &strong, &[0.0, 1.0, 0.9, 0.1]);
        assert_eq!(c[2], (0.5, 1.0));
        // Points (0,0) (.25,.5) (.5,1) (.75,1) (1,1): area .0625 + .1875 + .25 + .25.
        assert!((apgr(&c) - 0.75).abs() < 1e-12, "{}", apgr(&c));
        assert!((cpt(&c, 0.5).unwrap() - 0.25).abs() < 1e-12);
        assert!((cpt(&c, 0.75).unwrap() - 0.375).abs() < 1e-12);
        // The reversed router is worse than random.
        let bad = pgr_curve(&weak, &strong, &[1.0, 0.0, 0.1, 0.9]);
        assert!(apgr(&bad) < 0.5);
    }

    #[test]
    fn bootstrap_resamples_are_paired_and_centred_on_the_figure() {
        // 200 rows; strong helps on every fifth. The oracle knows which, a noisy router half
        // knows, the length-like routing does not know at all.
        let n = 200;
        let weak: Vec<f64> = (0..n).map(|r| if r % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let strong = vec![1.0; n];
        let oracle: Vec<f64> = (0..n).map(|r| if r % 5 == 0 { 1.0 } else { 0.0 }).collect();
        let noisy: Vec<f64> = (0..n)
            .map(|r| {
                if r % 5 == 0 || r % 7 == 0 {
                    1.0
                } else {
                    (r % 3) as f64 / 3.0
                }
            })
            .collect();
        let constant = vec![0.0; n];
        let runs = bootstrap_apgr(&weak, &strong, &[&oracle, &noisy, &constant], 500, 3);
        assert_eq!(runs.len(), 3);
        assert!(runs.iter().all(|r| r.len() == 500));
        // A constant score is random routing on every resample.
        assert!(runs[2].iter().all(|a| (a - 0.5).abs() < 1e-12));
        // Each interval holds the figure on all the rows.
        for (k, need) in [&oracle, &noisy].into_iter().enumerate() {
            let full = apgr(&pgr_curve(&weak, &strong, need));
            let [lo, hi] = interval95(&runs[k]);
            assert!(lo <= full && full <= hi, "{k}: {full} not in [{lo}, {hi}]");
            assert!(hi - lo > 1e-3, "resamples differ");
        }
        // Paired: the oracle beats the noisy router on every resample, by a spread narrower
        // than the noisy router's own.
        let diff: Vec<f64> = runs[0].iter().zip(&runs[1]).map(|(a, b)| a - b).collect();
        assert!(diff.iter().all(|d| *d > 0.0));
        let width = |v: &[f64]| {
            let [lo, hi] = interval95(v);
            hi - lo
        };
        assert!(
            width(&diff) < width(&runs[1]),
            "{} vs {}",
            width(&diff),
            width(&runs[1])
        );
        // The same seed gives the same resamples; another seed others.
        assert_eq!(
            bootstrap_apgr(&weak, &strong, &[&noisy], 50, 3)[0],
            runs[1][..50]
        );
        assert_ne!(
            bootstrap_apgr(&weak, &strong, &[&noisy], 50, 4)[0],
            runs[1][..50]
        );
        assert!(bootstrap_apgr(&[], &[], &[&[]], 10, 3)[0].is_empty());
    }

    #[test]
    fn counting_every_row_once_is_the_plain_figure() {
        let weak = [1.0, 0.0, 0.0, 1.0, 0.5];
        let strong = [1.0, 1.0, 1.0, 0.0, 1.0];
        let need = [0.2, 0.9, 0.9, 0.1, 0.5];
        let plain = apgr(&pgr_curve(&weak, &strong, &need));
        let gains: Vec<f64> = weak.iter().zip(&strong).map(|(w, s)| s - w).collect();
        let once = weighted_apgr(&tie_groups(&need), &gains, &[1; 5]);
        assert!((plain - once).abs() < 1e-12, "{plain} vs {once}");
        // Counting a row twice is the plain figure on rows with that row repeated.
        let twice = weighted_apgr(&tie_groups(&need), &gains, &[2, 1, 1, 1, 1]);
        let w2 = [1.0, 1.0, 0.0, 0.0, 1.0, 0.5];
        let s2 = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let n2 = [0.2, 0.2, 0.9, 0.9, 0.1, 0.5];
        assert!((apgr(&pgr_curve(&w2, &s2, &n2)) - twice).abs() < 1e-12);
        assert_eq!(interval95(&[]).map(f64::is_nan), [true, true]);
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(interval95(&v), [3.0, 98.0]);
    }

    #[test]
    fn thresholds_meet_the_quality_target_at_least_cost() {
        // Two tiers; p says row 0 is fine on the cheap tier, row 1 is not.
        let p = vec![vec![0.9, 1.0], vec![0.1, 1.0]];
        let scores = vec![vec![1.0, 1.0], vec![0.0, 1.0]];
        let prices = [1.0, 10.0];
        let (t, op) = cheapest_thresholds(&p, &scores, &prices, &[0, 1], 1.0).unwrap();
        assert_eq!(route_all(&p, &t), vec![0, 1]);
        assert_eq!(
            op,
            Operating {
                quality: 1.0,
                cost: 5.5
            }
        );
        assert!(cheapest_thresholds(&p, &scores, &prices, &[0, 1], 1.1).is_none());
    }

    #[test]
    fn a_margin_asks_for_evidence_in_proportion_to_the_noise() {
        // Two tiers, 40 rows: the cheap tier is right on 36 of the 38 rows the frontier gets
        // right. Sending everything cheap keeps 36/38 = 94.7 % of the frontier's quality.
        let n = 40;
        let scores: Vec<Vec<f64>> = (0..n)
            .map(|r| match r {
                0 | 1 => vec![0.0, 0.0],
                2 | 3 => vec![0.0, 1.0],
                _ => vec![1.0, 1.0],
            })
            .collect();
        // The router knows rows 2 and 3 need the frontier but ranks them among the rest.
        let p: Vec<Vec<f64>> = (0..n)
            .map(|r| vec![if r < 4 { 0.2 } else { 0.8 }, 1.0])
            .collect();
        let rows: Vec<usize> = (0..n).collect();
        let prices = [1.0, 10.0];
        let exact = cheapest_thresholds_with_margin(&p, &scores, &prices, &rows, 0.9, 0.0).unwrap();
        let plain = cheapest_thresholds(&p, &scores, &prices, &rows, 0.9 * 38.0 / 40.0).unwrap();
        assert_eq!(exact, plain, "z = 0 is the plain tuner at target x mean");
        // Everything cheap keeps 94.7 % >= 90 %, but only by about one standard error of the
        // per-row shortfall: two standard errors ask for the four doubtful rows to go dear.
        assert_eq!(route_all(&p, &exact.0), vec![0; n]);
        let strict =
            cheapest_thresholds_with_margin(&p, &scores, &prices, &rows, 0.9, 2.0).unwrap();
        assert_eq!(route_all(&p, &strict.0)[..4], [1, 1, 1, 1]);
        assert!(strict.1.cost > exact.1.cost && strict.1.quality > exact.1.quality);
    }

    #[test]
    fn ece_is_zero_when_calibrated_and_large_when_not() {
        use crate::train::report::ece;
        let calibrated: Vec<(f64, bool)> = (0..10).map(|i| (0.75, i < 8)).collect();
        // 8 of 10 true at p = 0.75 gives a gap of 0.05.
        assert!((ece(&calibrated, 10) - 0.05).abs() < 1e-12);
        let wrong: Vec<(f64, bool)> = (0..10).map(|_| (0.95, false)).collect();
        assert!((ece(&wrong, 10) - 0.95).abs() < 1e-12);
        assert_eq!(ece(&[], 10), 0.0);
    }

    #[test]
    fn random_mix_is_linear_in_shares() {
        let scores = vec![vec![0.0, 1.0], vec![1.0, 1.0]];
        let op = random_mix(&scores, &[1.0, 3.0], &[0, 1], 0.75).unwrap();
        // cheap quality 0.5, dear 1.0: half and half reaches 0.75 at cost 2.
        assert!(
            (op.quality - 0.75).abs() < 1e-9 && (op.cost - 2.0).abs() < 1e-9,
            "{op:?}"
        );
    }
}
