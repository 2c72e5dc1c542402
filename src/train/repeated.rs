//! Repeated cross-validation: the spread of each headline figure over several fold assignments.
//!
//! One 5-fold split of a few thousand rows moves MMLU APGR by about ±0.01 from seed to seed,
//! as much as most modelling changes; a figure quoted against a target is the mean over seeds.

use serde::Serialize;

use super::TrainOptions;
use super::prepare::Prepared;
use super::report::{self, CostAtQuality, Report};
use crate::error::TrainError;
use crate::features::Schema;

/// One headline figure over the repeats.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spread {
    /// What was measured, e.g. `mmlu router APGR`.
    pub figure: String,
    /// One value per repeat, in seed order.
    pub values: Vec<f64>,
    /// Mean of `values`.
    pub mean: f64,
    /// Sample standard deviation of `values` (0 for a single repeat).
    pub sd: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    fn new(figure: String, values: Vec<f64>) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            figure,
            values,
            mean,
            sd,
            min,
            max,
        }
    }
}

/// Cross-validation repeated with one fold assignment per seed.
#[derive(Debug, Clone, Serialize)]
pub struct Repeated {
    /// The fold-assignment seeds, one per repeat.
    pub seeds: Vec<u64>,
    /// Headline figures over the repeats.
    pub summary: Vec<Spread>,
    /// Every repeat's report, in seed order; only the first keeps its Pareto front, which is
    /// long and says little more seed after seed.
    pub reports: Vec<Report>,
}

/// Collects the router's APGR per two-tier group and, with prices, the cost saved and quality
/// kept at the quality target, from reports of the same data under different fold seeds.
pub fn summarize(seeds: Vec<u64>, reports: Vec<Report>) -> Repeated {
    let mut summary = Vec::new();
    if let Some(first) = reports.first() {
        for (g, group) in first.two_tier.iter().enumerate() {
            let values = reports
                .iter()
                .filter_map(|r| r.two_tier.get(g).map(|t| t.router.apgr))
                .collect();
            summary.push(Spread::new(format!("{} router APGR", group.group), values));
        }
        if first.cost.is_some() {
            let costs: Vec<&CostAtQuality> =
                reports.iter().filter_map(|r| r.cost.as_ref()).collect();
            summary.push(Spread::new(
                "cost saved, thresholds from other folds".into(),
                costs.iter().map(|c| c.saved(c.router)).collect(),
            ));
            summary.push(Spread::new(
                "quality kept, thresholds from other folds".into(),
                costs
                    .iter()
                    .map(|c| c.router.map_or(c.dearest.quality, |o| o.quality))
                    .collect(),
            ));
            summary.push(Spread::new(
                "cost saved, best threshold".into(),
                costs.iter().map(|c| c.saved(c.router_best)).collect(),
            ));
        }
    }
    Repeated {
        seeds,
        summary,
        reports,
    }
}

/// Cross-validates the recipe in `opts` once per seed (each seed draws its own fold
/// assignment, `opts.seed` is ignored) and summarizes the figures.
pub fn cross_validate(
    schema: &Schema,
    data: &Prepared,
    tiers: &[String],
    opts: &TrainOptions,
    seeds: &[u64],
) -> Result<Repeated, TrainError> {
    let mut reports = Vec::with_capacity(seeds.len());
    for (i, &seed) in seeds.iter().enumerate() {
        let fold = report::fold_assignment(data.rows.len(), opts.folds, seed);
        let (_, mut rep) = report::cross_validate(schema, data, tiers, opts, &fold)?;
        if i > 0 {
            rep.pareto.clear();
        }
        reports.push(rep);
    }
    Ok(summarize(seeds.to_vec(), reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::eval::Operating;
    use crate::train::report::{Curve, TwoTier};

    fn report(apgr: f64, router_cost: Option<f64>) -> Report {
        let curve = |a| Curve {
            apgr: a,
            cpt50: None,
            cpt80: None,
        };
        Report {
            rows: 10,
            folds: 5,
            labels: vec![],
            two_tier: vec![TwoTier {
                group: "mmlu".into(),
                rows: 10,
                cheap_tier: "cheap".into(),
                cheap_quality: 0.5,
                dear_quality: 0.8,
                router: curve(apgr),
                length_baseline: curve(0.55),
                random_baseline: curve(0.5),
            }],
            cost: Some(CostAtQuality {
                rows: 10,
                min_quality: 0.76,
                dearest: Operating {
                    quality: 0.8,
                    cost: 4.0,
                },
                tier_quality: vec![0.5, 0.8],
                router: router_cost.map(|cost| Operating {
                    quality: 0.77,
                    cost,
                }),
                router_best: Some(Operating {
                    quality: 0.76,
                    cost: 2.0,
                }),
                length_baseline: None,
                random_baseline: None,
            }),
            calibration: vec![],
            pareto: vec![],
        }
    }

    #[test]
    fn spreads_give_mean_sample_sd_and_range_per_figure() {
        let r = summarize(vec![7, 8], vec![report(0.6, Some(1.0)), report(0.7, None)]);
        assert_eq!(r.seeds, vec![7, 8]);
        let apgr = &r.summary[0];
        assert_eq!(apgr.figure, "mmlu router APGR");
        assert!((apgr.mean - 0.65).abs() < 1e-12);
        // Sample sd of {0.6, 0.7} is 0.1 / sqrt(2).
        assert!((apgr.sd - 0.1 / 2f64.sqrt()).abs() < 1e-12, "{apgr:?}");
        assert_eq!((apgr.min, apgr.max), (0.6, 0.7));
        // An unreachable target saves nothing and keeps the dearest quality.
        let saved = &r.summary[1];
        assert_eq!(saved.values, vec![0.75, 0.0]);
        assert_eq!(r.summary[2].values, vec![0.77, 0.8]);
        assert_eq!(r.summary[3].values, vec![0.5, 0.5]);
        assert_eq!(r.reports.len(), 2);
    }

    #[test]
    fn a_single_repeat_has_no_spread() {
        let r = summarize(vec![7], vec![report(0.6, Some(2.0))]);
        assert_eq!(r.summary[0].sd, 0.0);
        assert_eq!(r.summary[0].mean, 0.6);
    }
}
