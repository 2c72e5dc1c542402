//! `triage report`: one workload's cost–quality picture before switching — the router against
//! every single tier, prompt length and random mixing, the current thresholds' operating point,
//! per-category shares, and suggested thresholds — as Markdown and an SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::tune::{self, Point, Targets};

/// A workload measured with one model.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Tier names, cheapest first.
    pub tiers: Vec<String>,
    /// Rows with every tier's outcome (the only ones measured).
    pub rows: usize,
    /// Always one tier, per tier.
    pub single: Vec<Point>,
    /// The model's current thresholds.
    pub current: Point,
    /// The router's cost–quality Pareto front over threshold settings.
    pub front: Vec<Point>,
    /// Prompt length as the router (shorter prompts to cheaper tiers), its Pareto front.
    pub length: Vec<Point>,
    /// Per category at the current thresholds.
    pub categories: Vec<Category>,
    /// Thresholds that keep a share of always-dearest quality at least cost.
    pub suggestions: Vec<(f64, Result<Point, String>)>,
}

/// One category at the current thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct Category {
    /// `source/category` (or `-`).
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Share per tier.
    pub shares: Vec<f64>,
    /// Mean quality routed.
    pub quality: f64,
    /// Mean quality always on the dearest tier.
    pub dearest_quality: f64,
}

/// Every row routed to the tier `choice(r)`, as an operating point.
fn point(
    rows: &[usize],
    scores: &[Vec<f64>],
    costs: &[Vec<f64>],
    tiers: usize,
    thresholds: Vec<f64>,
    choice: impl Fn(usize) -> usize,
) -> Point {
    let n = rows.len().max(1) as f64;
    let (mut q, mut c) = (0.0, 0.0);
    let mut counts = vec![0usize; tiers];
    for &r in rows {
        let k = choice(r);
        q += scores[r][k];
        c += costs[r][k];
        counts[k] += 1;
    }
    Point {
        thresholds,
        quality: q / n,
        cost_per_1k: 1000.0 * c / n,
        shares: counts.iter().map(|&k| k as f64 / n).collect(),
    }
}

/// Measures the workload. `p[r]` are the model's probabilities, `scores[r]` per-tier scores,
/// `costs[r]` per-tier USD, `tokens[r]` prompt tokens, `groups[r]` the category of each row;
/// `rows` those with every tier's outcome.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    tiers: &[String],
    thresholds: &[f64],
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    costs: &[Vec<f64>],
    tokens: &[u32],
    groups: &[String],
    rows: &[usize],
    floors: &[f64],
) -> Workload {
    let t = tiers.len();
    let route =
        |r: usize| crate::policy::cheapest_sufficient(&p[r], thresholds, 0, t - 1).unwrap_or(t - 1);
    let single: Vec<Point> = (0..t)
        .map(|k| point(rows, scores, costs, t, Vec::new(), |_| k))
        .collect();
    let current = point(rows, scores, costs, t, thresholds.to_vec(), route);
    let points = tune::sweep(p, scores, costs, rows, t, &indicatif::ProgressBar::hidden());
    let front = tune::pareto(&points);
    // Length: cut points on the length ranks (a 20-step grid per cut), shortest to the cheapest.
    let mut order: Vec<usize> = rows.to_vec();
    order.sort_by_key(|&r| tokens[r]);
    let rank: std::collections::HashMap<usize, f64> = order
        .iter()
        .enumerate()
        .map(|(i, &r)| (r, i as f64 / order.len().max(1) as f64))
        .collect();
    let steps = 20;
    let mut cuts: Vec<Vec<f64>> = vec![Vec::new()];
    for _ in 0..t - 1 {
        cuts = cuts
            .into_iter()
            .flat_map(|prefix| {
                let lo = prefix.last().copied().unwrap_or(0.0);
                (0..=steps)
                    .map(move |i| i as f64 / steps as f64)
                    .filter(move |c| *c >= lo)
                    .map(move |c| {
                        let mut v = prefix.clone();
                        v.push(c);
                        v
                    })
            })
            .collect();
    }
    let length_points: Vec<Point> = cuts
        .into_iter()
        .map(|c| {
            let choice = |r: usize| c.iter().position(|&cut| rank[&r] < cut).unwrap_or(t - 1);
            point(rows, scores, costs, t, c.clone(), choice)
        })
        .collect();
    let length = tune::pareto(&length_points);
    let mut names: Vec<&String> = rows.iter().map(|&r| &groups[r]).collect();
    names.sort();
    names.dedup();
    let categories = names
        .into_iter()
        .map(|g| {
            let own: Vec<usize> = rows.iter().copied().filter(|&r| groups[r] == *g).collect();
            let at = point(&own, scores, costs, t, Vec::new(), route);
            Category {
                name: g.clone(),
                rows: own.len(),
                shares: at.shares,
                quality: at.quality,
                dearest_quality: point(&own, scores, costs, t, Vec::new(), |_| t - 1).quality,
            }
        })
        .collect();
    let suggestions = floors
        .iter()
        .map(|&f| {
            let targets = Targets {
                min_quality: Some(f * single[t - 1].quality),
                ..Targets::default()
            };
            (f, tune::choose(&front, &targets, tiers))
        })
        .collect();
    Workload {
        tiers: tiers.to_vec(),
        rows: rows.len(),
        single,
        current,
        front,
        length,
        categories,
        suggestions,
    }
}

/// Share of the always-dearest cost a point saves.
fn saved(w: &Workload, pt: &Point) -> f64 {
    let dear = w.single.last().map_or(0.0, |s| s.cost_per_1k);
    if dear > 0.0 {
        1.0 - pt.cost_per_1k / dear
    } else {
        0.0
    }
}

/// The cheapest point of a front that keeps `floor` of always-dearest quality.
fn cheapest_at(w: &Workload, front: &[Point], floor: f64) -> Option<Point> {
    let q = floor * w.single.last().map_or(0.0, |s| s.quality);
    front
        .iter()
        .filter(|p| p.quality + 1e-12 >= q)
        .min_by(|a, b| a.cost_per_1k.total_cmp(&b.cost_per_1k))
        .cloned()
}

/// Cheapest random mix of two adjacent tiers that keeps `floor` (mixing is linear in both).
fn random_at(w: &Workload, floor: f64) -> Option<Point> {
    let q = floor * w.single.last().map_or(0.0, |s| s.quality);
    let mut best: Option<Point> = None;
    for a in &w.single {
        for b in &w.single {
            for i in 0..=100 {
                let s = f64::from(i) / 100.0;
                let pt = Point {
                    thresholds: Vec::new(),
                    quality: (1.0 - s) * a.quality + s * b.quality,
                    cost_per_1k: (1.0 - s) * a.cost_per_1k + s * b.cost_per_1k,
                    shares: Vec::new(),
                };
                if pt.quality + 1e-12 >= q
                    && best.as_ref().is_none_or(|x| pt.cost_per_1k < x.cost_per_1k)
                {
                    best = Some(pt);
                }
            }
        }
    }
    best
}

/// The Markdown summary; `plot` is the SVG's file name, linked from it.
pub fn markdown(w: &Workload, model: &str, plot: Option<&str>) -> String {
    let mut s = String::new();
    let pct = |v: f64| format!("{:.1} %", 100.0 * v);
    let shares = |v: &[f64]| {
        v.iter()
            .zip(&w.tiers)
            .map(|(s, t)| format!("{t} {:.0} %", 100.0 * s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "# Workload report\n");
    let _ = writeln!(
        s,
        "Model `{model}`, {} rows with every tier's outcome. Quality is the mean score; cost is per 1,000 requests (the config's prices, each prompt's tokens, the assumed output length).\n",
        w.rows
    );
    if let Some(p) = plot {
        let _ = writeln!(s, "![cost against quality]({p})\n");
    }
    let _ = writeln!(
        s,
        "| routing | quality | share of always-dearest quality | USD per 1k | saved | shares |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    let dear_q = w.single.last().map_or(0.0, |d| d.quality);
    let row = |s: &mut String, name: &str, pt: &Point| {
        let _ = writeln!(
            s,
            "| {name} | {:.4} | {} | {:.4} | {} | {} |",
            pt.quality,
            pct(pt.quality / dear_q.max(1e-12)),
            pt.cost_per_1k,
            pct(saved(w, pt)),
            shares(&pt.shares)
        );
    };
    for (t, pt) in w.tiers.iter().zip(&w.single) {
        row(&mut s, &format!("always {t}"), pt);
    }
    let th: Vec<String> = w.current.thresholds[..w.tiers.len() - 1]
        .iter()
        .map(|t| format!("{t:.3}"))
        .collect();
    row(
        &mut s,
        &format!("**router, current thresholds** ({})", th.join(", ")),
        &w.current,
    );
    let _ = writeln!(s, "\n## Cost saved at a quality floor\n");
    let _ = writeln!(
        s,
        "| floor (share of always-dearest quality) | router | prompt length | random mix |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    let cell = |p: Option<Point>| p.map_or("not reachable".to_string(), |p| pct(saved(w, &p)));
    for (f, _) in &w.suggestions {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            pct(*f),
            cell(cheapest_at(w, &w.front, *f)),
            cell(cheapest_at(w, &w.length, *f)),
            cell(random_at(w, *f))
        );
    }
    let _ = writeln!(s, "\n## Suggested thresholds\n");
    for (f, r) in &w.suggestions {
        match r {
            Ok(pt) => {
                let th: Vec<String> = pt.thresholds[..w.tiers.len() - 1]
                    .iter()
                    .map(|t| format!("{t:.3}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "- keep {}: thresholds `{}` — quality {:.4}, {:.4} USD per 1k ({} saved), {}; `triage tune --min-quality {:.4}` on these rows writes them",
                    pct(*f),
                    th.join(","),
                    pt.quality,
                    pt.cost_per_1k,
                    pct(saved(w, pt)),
                    shares(&pt.shares),
                    pt.quality
                );
            }
            Err(e) => {
                let _ = writeln!(s, "- keep {}: {e}", pct(*f));
            }
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "## Per category, current thresholds\n");
    let _ = writeln!(s, "| category | rows | shares | quality | always dearest |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    for c in &w.categories {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.4} |",
            c.name,
            c.rows,
            shares(&c.shares),
            c.quality,
            c.dearest_quality
        );
    }
    s
}

/// The SVG: the router's front, the length baseline's, single tiers, random mixing between
/// them, and the current operating point.
pub fn plot(path: &Path, w: &Workload) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let all: Vec<&Point> = w
        .front
        .iter()
        .chain(&w.length)
        .chain(&w.single)
        .chain([&w.current])
        .collect();
    let (c0, c1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(p.cost_per_1k), b.max(p.cost_per_1k))
    });
    let (q0, q1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(p.quality), b.max(p.quality))
    });
    let pad = |lo: f64, hi: f64| {
        let d = ((hi - lo) * 0.05).max(1e-6);
        (lo - d)..(hi + d)
    };
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("triage report: quality against cost", ("sans-serif", 22))
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
    let line = |pts: &[Point]| {
        pts.iter()
            .map(|p| (p.cost_per_1k, p.quality))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(line(&w.front), BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("router")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(line(&w.length), GREEN.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("prompt length")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    let mut singles = w.single.clone();
    singles.sort_by(|a, b| a.cost_per_1k.total_cmp(&b.cost_per_1k));
    chart
        .draw_series(LineSeries::new(
            line(&singles),
            RGBColor(150, 150, 150).stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("random mix of tiers")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(150, 150, 150)));
    chart
        .draw_series(
            w.single
                .iter()
                .map(|p| Circle::new((p.cost_per_1k, p.quality), 5, BLACK.filled())),
        )
        .map_err(|e| err(&e))?
        .label("always one tier")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
    chart
        .draw_series(std::iter::once(Circle::new(
            (w.current.cost_per_1k, w.current.quality),
            7,
            RED.filled(),
        )))
        .map_err(|e| err(&e))?
        .label("current thresholds")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
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
