//! Threshold tuning: sweep tier thresholds on labelled rows, keep the cost–quality Pareto front,
//! pick the point that meets an operator's target, and draw the curve.

use std::path::Path;

use serde::Serialize;

use crate::policy::cheapest_sufficient;

/// One operating point of the policy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// One threshold per tier (the dearest is unused).
    pub thresholds: Vec<f64>,
    /// Mean score of the chosen tiers.
    pub quality: f64,
    /// Realized cost per 1,000 requests, USD.
    pub cost_per_1k: f64,
    /// Share of requests per tier.
    pub shares: Vec<f64>,
}

/// What the operator asks for; every given constraint must hold.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Spend at most this per 1,000 requests (then: best quality).
    pub max_cost_per_1k: Option<f64>,
    /// At most this share of requests on a tier (then: best quality).
    pub max_share: Vec<(usize, f64)>,
    /// At least this mean quality (then, if nothing else is asked: least cost).
    pub min_quality: Option<f64>,
}

fn axis_steps(heads: usize) -> usize {
    match heads {
        0 | 1 => 2000,
        2 => 150,
        3 => 30,
        _ => 8,
    }
}

/// Every grid point's operating point on `rows`. `p[r]` are a row's probabilities, `scores[r]`
/// its per-tier scores and `costs[r]` its per-tier cost in USD.
pub fn sweep(
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    costs: &[Vec<f64>],
    rows: &[usize],
    tiers: usize,
    progress: &indicatif::ProgressBar,
) -> Vec<Point> {
    let heads = tiers - 1;
    let steps = axis_steps(heads);
    // Plus a value above 1, which sends nothing to that tier.
    let mut cands = super::eval::threshold_candidates(p, rows, heads, steps);
    cands.iter_mut().for_each(|c| c.push(1.0 + 1e-9));
    let total: usize = cands.iter().map(Vec::len).product();
    progress.set_length(total as u64);
    let n = rows.len().max(1) as f64;
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; heads];
    for _ in 0..total {
        let mut t: Vec<f64> = idx.iter().zip(&cands).map(|(&i, c)| c[i]).collect();
        t.push(0.0);
        let (mut q, mut c) = (0.0, 0.0);
        let mut counts = vec![0usize; tiers];
        for &r in rows {
            let k = cheapest_sufficient(&p[r], &t, 0, tiers - 1).unwrap_or(tiers - 1);
            q += scores[r][k];
            c += costs[r][k];
            counts[k] += 1;
        }
        out.push(Point {
            thresholds: t,
            quality: q / n,
            cost_per_1k: 1000.0 * c / n,
            shares: counts.iter().map(|&k| k as f64 / n).collect(),
        });
        progress.inc(1);
        for (d, c) in idx.iter_mut().zip(&cands) {
            *d += 1;
            if *d < c.len() {
                break;
            }
            *d = 0;
        }
    }
    out
}

/// The points no other point beats on both cost and quality, cheapest first.
pub fn pareto(points: &[Point]) -> Vec<Point> {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by(|a, b| {
        a.cost_per_1k
            .total_cmp(&b.cost_per_1k)
            .then(b.quality.total_cmp(&a.quality))
    });
    let mut front: Vec<Point> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|l| p.quality > l.quality + 1e-12) {
            front.push(p.clone());
        }
    }
    front
}

/// The point meeting `targets`: best quality under cost or share limits (then least cost), or
/// least cost at a quality floor. The error says why no point meets them.
pub fn choose(points: &[Point], targets: &Targets, tier_names: &[String]) -> Result<Point, String> {
    let ok = |p: &Point| {
        targets
            .max_cost_per_1k
            .is_none_or(|m| p.cost_per_1k <= m + 1e-12)
            && targets.min_quality.is_none_or(|q| p.quality + 1e-12 >= q)
            && targets
                .max_share
                .iter()
                .all(|&(k, s)| p.shares[k] <= s + 1e-12)
    };
    let feasible: Vec<&Point> = points.iter().filter(|p| ok(p)).collect();
    let quality_first = targets.max_cost_per_1k.is_some() || !targets.max_share.is_empty();
    let best = feasible.into_iter().min_by(|a, b| {
        if quality_first {
            b.quality
                .total_cmp(&a.quality)
                .then(a.cost_per_1k.total_cmp(&b.cost_per_1k))
        } else {
            a.cost_per_1k
                .total_cmp(&b.cost_per_1k)
                .then(b.quality.total_cmp(&a.quality))
        }
    });
    best.cloned().ok_or_else(|| {
        let cheapest = points
            .iter()
            .min_by(|a, b| a.cost_per_1k.total_cmp(&b.cost_per_1k));
        let best_q = points.iter().max_by(|a, b| a.quality.total_cmp(&b.quality));
        let mut why = Vec::new();
        if let (Some(m), Some(c)) = (targets.max_cost_per_1k, cheapest)
            && c.cost_per_1k > m
        {
            why.push(format!(
                "the cheapest policy (everything on {}) costs {:.4} USD per 1k requests, above {m}",
                tier_names[0], c.cost_per_1k
            ));
        }
        if let (Some(q), Some(b)) = (targets.min_quality, best_q)
            && b.quality < q
        {
            why.push(format!(
                "the best reachable quality is {:.4}, below {q}",
                b.quality
            ));
        }
        if why.is_empty() {
            why.push("no single threshold setting meets all the targets at once".into());
        }
        format!("target unreachable on this data: {}", why.join("; "))
    })
}

/// Draws quality against cost per 1,000 requests: all points, the Pareto front, the choice.
pub fn plot(path: &Path, points: &[Point], front: &[Point], chosen: &Point) -> Result<(), String> {
    draw(
        path,
        "triage tune: quality vs cost",
        &[
            Series::Cloud(points),
            Series::Line(front, "Pareto front", (0, 0, 255), 2),
            Series::Markers(
                std::slice::from_ref(chosen),
                "chosen thresholds",
                (255, 0, 0),
                7,
            ),
        ],
    )
}

/// One thing drawn on a quality-against-cost chart. Colours are RGB.
#[derive(Debug, Clone, Copy)]
pub enum Series<'a> {
    /// Small grey dots, not in the legend.
    Cloud(&'a [Point]),
    /// A line through the points in order: label, colour, stroke width.
    Line(&'a [Point], &'static str, (u8, u8, u8), u32),
    /// Filled circles: label, colour, radius.
    Markers(&'a [Point], &'static str, (u8, u8, u8), u32),
}

/// Draws quality against cost per 1,000 requests as an SVG, the axes fitted to every series.
pub fn draw(path: &Path, caption: &str, series: &[Series<'_>]) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let all = series.iter().flat_map(|s| match s {
        Series::Cloud(p) | Series::Line(p, ..) | Series::Markers(p, ..) => p.iter(),
    });
    let (mut c0, mut c1, mut q0, mut q1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in all {
        (c0, c1) = (c0.min(p.cost_per_1k), c1.max(p.cost_per_1k));
        (q0, q1) = (q0.min(p.quality), q1.max(p.quality));
    }
    let pad = |lo: f64, hi: f64| {
        let d = ((hi - lo) * 0.05).max(1e-6);
        (lo - d)..(hi + d)
    };
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(pad(c0, c1), pad(q0, q1))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("cost per 1,000 requests (USD)")
        .y_desc("mean quality")
        .draw()
        .map_err(|e| err(&e))?;
    let xy = |p: &Point| (p.cost_per_1k, p.quality);
    for s in series {
        match *s {
            Series::Cloud(points) => {
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|p| Circle::new(xy(p), 1, RGBColor(180, 180, 180).filled())),
                    )
                    .map_err(|e| err(&e))?;
            }
            Series::Line(points, label, (r, g, b), width) => {
                let colour = RGBColor(r, g, b);
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(xy),
                        colour.stroke_width(width),
                    ))
                    .map_err(|e| err(&e))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            }
            Series::Markers(points, label, (r, g, b), radius) => {
                let colour = RGBColor(r, g, b);
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|p| Circle::new(xy(p), radius, colour.filled())),
                    )
                    .map_err(|e| err(&e))?
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(c: f64, q: f64, shares: Vec<f64>) -> Point {
        Point {
            thresholds: vec![0.5, 0.0],
            quality: q,
            cost_per_1k: c,
            shares,
        }
    }

    #[test]
    fn pareto_keeps_only_undominated_points() {
        let pts = vec![
            pt(1.0, 0.5, vec![1.0, 0.0]),
            pt(2.0, 0.4, vec![0.5, 0.5]),
            pt(3.0, 0.9, vec![0.0, 1.0]),
            pt(1.0, 0.6, vec![1.0, 0.0]),
        ];
        let f = pareto(&pts);
        assert_eq!(
            f.iter()
                .map(|p| (p.cost_per_1k, p.quality))
                .collect::<Vec<_>>(),
            vec![(1.0, 0.6), (3.0, 0.9)]
        );
    }

    #[test]
    fn choose_meets_each_kind_of_target_or_says_why_not() {
        let names = vec!["cheap".to_string(), "dear".to_string()];
        let pts = vec![
            pt(1.0, 0.5, vec![1.0, 0.0]),
            pt(2.0, 0.7, vec![0.5, 0.5]),
            pt(3.0, 0.9, vec![0.0, 1.0]),
        ];
        let t = Targets {
            max_cost_per_1k: Some(2.5),
            ..Targets::default()
        };
        assert_eq!(choose(&pts, &t, &names).unwrap().quality, 0.7);
        let t = Targets {
            min_quality: Some(0.6),
            ..Targets::default()
        };
        assert_eq!(choose(&pts, &t, &names).unwrap().cost_per_1k, 2.0);
        let t = Targets {
            max_share: vec![(1, 0.0)],
            ..Targets::default()
        };
        assert_eq!(choose(&pts, &t, &names).unwrap().cost_per_1k, 1.0);
        let t = Targets {
            max_cost_per_1k: Some(0.5),
            ..Targets::default()
        };
        let e = choose(&pts, &t, &names).unwrap_err();
        assert!(
            e.contains("everything on cheap") && e.contains("above 0.5"),
            "{e}"
        );
        let t = Targets {
            min_quality: Some(0.95),
            ..Targets::default()
        };
        assert!(
            choose(&pts, &t, &names)
                .unwrap_err()
                .contains("best reachable quality is 0.9000")
        );
    }

    #[test]
    fn sweep_covers_always_cheap_and_always_dear() {
        let p = vec![vec![0.8, 1.0], vec![0.2, 1.0]];
        let scores = vec![vec![1.0, 1.0], vec![0.0, 1.0]];
        let costs = vec![vec![0.001, 0.01]; 2];
        let bar = indicatif::ProgressBar::hidden();
        let pts = sweep(&p, &scores, &costs, &[0, 1], 2, &bar);
        assert!(
            pts.iter()
                .any(|x| (x.cost_per_1k - 1.0).abs() < 1e-9 && x.shares == vec![1.0, 0.0])
        );
        assert!(
            pts.iter()
                .any(|x| (x.cost_per_1k - 10.0).abs() < 1e-9 && x.quality == 1.0)
        );
        assert!(
            pts.iter()
                .any(|x| (x.cost_per_1k - 5.5).abs() < 1e-9 && x.quality == 1.0)
        );
    }

    #[test]
    fn the_plot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let pts = vec![pt(1.0, 0.5, vec![1.0, 0.0]), pt(3.0, 0.9, vec![0.0, 1.0])];
        plot(&path, &pts, &pts, &pts[1]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("Pareto front"));
    }
}
