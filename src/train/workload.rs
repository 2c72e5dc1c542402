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
    /// Per quality floor (a share of always-dearest quality): the router's cheapest
    /// thresholds, or why none reaches it, and the baselines' savings there.
    pub floors: Vec<Floor>,
}

/// The cheapest routing of each kind that keeps one quality floor.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Share of always-dearest quality to keep.
    pub floor: f64,
    /// The router's cheapest thresholds (the `tune` choice), or why none reaches the floor.
    pub router: Result<Point, String>,
    /// Share of the always-dearest cost saved by prompt length at its best cut points.
    pub length_saved: Option<f64>,
    /// Share saved by the cheapest random mix of tiers.
    pub random_saved: Option<f64>,
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
/// `costs[r]` per-tier USD, `length[r]` the length baseline's probabilities
/// ([`super::report::length_p`]), `groups[r]` the category of each row;
/// `rows` those with every tier's outcome.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    tiers: &[String],
    thresholds: &[f64],
    p: &[Vec<f64>],
    scores: &[Vec<f64>],
    costs: &[Vec<f64>],
    length: &[Vec<f64>],
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
    let length = tune::pareto(&tune::sweep(
        length,
        scores,
        costs,
        rows,
        t,
        &indicatif::ProgressBar::hidden(),
    ));
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
    let dear = &single[t - 1];
    let saved = |cost_per_1k: f64| 1.0 - cost_per_1k / dear.cost_per_1k.max(1e-12);
    let mean_cost: Vec<f64> = single.iter().map(|p| p.cost_per_1k).collect();
    let floors = floors
        .iter()
        .map(|&f| {
            let targets = Targets {
                min_quality: Some(f * dear.quality),
                ..Targets::default()
            };
            Floor {
                floor: f,
                router: tune::choose(&front, &targets, tiers),
                length_saved: tune::choose(&length, &targets, tiers)
                    .ok()
                    .map(|p| saved(p.cost_per_1k)),
                // Random mixing costs each tier's mean cost per request, whatever the rows.
                random_saved: super::eval::random_mix(scores, &mean_cost, rows, f * dear.quality)
                    .map(|o| saved(o.cost)),
            }
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
        floors,
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
    let cell = |v: Option<f64>| v.map_or("not reachable".to_string(), pct);
    for f in &w.floors {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            pct(f.floor),
            cell(f.router.as_ref().ok().map(|p| saved(w, p))),
            cell(f.length_saved),
            cell(f.random_saved)
        );
    }
    let _ = writeln!(s, "\n## Suggested thresholds\n");
    for Floor {
        floor: f,
        router: r,
        ..
    } in &w.floors
    {
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
    use tune::Series;
    let mut singles = w.single.clone();
    singles.sort_by(|a, b| a.cost_per_1k.total_cmp(&b.cost_per_1k));
    tune::draw(
        path,
        "triage report: quality against cost",
        &[
            Series::Line(&w.front, "router", (0, 0, 255), 2),
            Series::Line(&w.length, "prompt length", (0, 255, 0), 2),
            Series::Line(&singles, "random mix of tiers", (150, 150, 150), 1),
            Series::Markers(&w.single, "always one tier", (0, 0, 0), 5),
            Series::Markers(
                std::slice::from_ref(&w.current),
                "current thresholds",
                (255, 0, 0),
                7,
            ),
        ],
    )
}
