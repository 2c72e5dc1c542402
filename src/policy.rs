//! The policy: per-tier probabilities, thresholds, costs and the request's knobs → a tier and why.

use crate::error::RequestError;

/// The per-request knobs, validated and resolved to tier indices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs {
    /// Cheapest allowed tier.
    pub min_tier: Option<usize>,
    /// Dearest allowed tier.
    pub max_tier: Option<usize>,
    /// Largest allowed estimated cost, USD (finite, >= 0).
    pub max_cost_usd: Option<f64>,
    /// Cap at the operator's latency tier, if one is configured.
    pub latency_sensitive: bool,
    /// Replaces every threshold, in [0, 1].
    pub quality_target: Option<f64>,
}

/// What the policy saw for one tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierView {
    /// Probability the tier is good enough.
    pub p_sufficient: f64,
    /// The threshold that applied.
    pub threshold: f64,
    /// Estimated cost, USD.
    pub cost_usd: f64,
    /// Whether the knobs allowed it.
    pub eligible: bool,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index of the chosen tier.
    pub tier: usize,
    /// One entry per tier.
    pub tiers: Vec<TierView>,
    /// Why this tier.
    pub reason: String,
}

/// The cheapest tier in `lo..=hi` whose probability reaches its threshold (ties reach).
/// The single rule shared by serving and by offline threshold search.
pub fn cheapest_sufficient(p: &[f64], thresholds: &[f64], lo: usize, hi: usize) -> Option<usize> {
    (lo..=hi.min(p.len().saturating_sub(1))).find(|&i| p[i] >= thresholds[i])
}

/// Picks the cheapest eligible tier whose probability reaches its threshold (ties reach).
///
/// `p`, `thresholds`, `costs` and `names` have one entry per tier, cheapest first. When no
/// eligible tier reaches its threshold the dearest eligible one is chosen: it is the best
/// quality the knobs allow. `latency_cap` is the operator's tier for latency-sensitive calls;
/// an explicit `min_tier` wins over it.
pub fn decide(
    p: &[f64],
    thresholds: &[f64],
    costs: &[f64],
    names: &[String],
    knobs: &Knobs,
    latency_cap: Option<usize>,
) -> Result<Choice, RequestError> {
    let n = p.len();
    let lo = knobs.min_tier.unwrap_or(0);
    let mut hi = knobs.max_tier.unwrap_or(n - 1).min(n - 1);
    if knobs.latency_sensitive
        && let Some(cap) = latency_cap
    {
        hi = hi.min(cap.max(lo));
    }
    let threshold_of = |i: usize| knobs.quality_target.unwrap_or(thresholds[i]);
    let tiers: Vec<TierView> = (0..n)
        .map(|i| TierView {
            p_sufficient: p[i],
            threshold: threshold_of(i),
            cost_usd: costs[i],
            eligible: i >= lo && i <= hi && knobs.max_cost_usd.is_none_or(|m| costs[i] <= m),
        })
        .collect();
    let eligible: Vec<usize> = (0..n).filter(|&i| tiers[i].eligible).collect();
    let Some(&dearest) = eligible.last() else {
        let cheapest = lo.min(n - 1);
        return Err(RequestError::NoEligibleTier(match knobs.max_cost_usd {
            Some(m) if lo <= hi => format!(
                "max_cost_usd is {m} but the cheapest allowed tier {:?} is estimated at {:.6} USD",
                names[cheapest], costs[cheapest]
            ),
            _ => format!(
                "the allowed tier range {:?}..={:?} is empty",
                names[cheapest], names[hi]
            ),
        }));
    };
    let source = if knobs.quality_target.is_some() {
        "quality_target"
    } else {
        "threshold"
    };
    let effective: Vec<f64> = tiers.iter().map(|t| t.threshold).collect();
    // Eligible tiers are contiguous except for the cost cap, which only removes dear tiers.
    let chosen = cheapest_sufficient(p, &effective, eligible[0], dearest);
    let mut reason = match chosen {
        Some(i) => {
            let skipped: Vec<String> = eligible
                .iter()
                .take_while(|&&j| j < i)
                .map(|&j| format!("{} {:.2} < {:.2}", names[j], p[j], tiers[j].threshold))
                .collect();
            let mut r = format!(
                "{}: p_sufficient {:.2} >= {source} {:.2}",
                names[i], p[i], tiers[i].threshold
            );
            if !skipped.is_empty() {
                r.push_str(&format!(
                    " (cheaper tiers fell short: {})",
                    skipped.join(", ")
                ));
            }
            r
        }
        None => format!(
            "{}: no allowed tier reaches its {source}; chose the dearest allowed tier",
            names[dearest]
        ),
    };
    let tier = chosen.unwrap_or(dearest);
    let mut limits = Vec::new();
    if lo > 0 {
        limits.push(format!("min_tier={}", names[lo]));
    }
    if hi < n - 1 {
        limits.push(format!(
            "max_tier={}{}",
            names[hi],
            if knobs.latency_sensitive && latency_cap.is_some() {
                " (latency-sensitive cap)"
            } else {
                ""
            }
        ));
    }
    if let Some(m) = knobs.max_cost_usd {
        limits.push(format!("max_cost_usd={m}"));
    }
    if !limits.is_empty() {
        reason.push_str(&format!("; limits: {}", limits.join(", ")));
    }
    Ok(Choice {
        tier,
        tiers,
        reason,
    })
}

/// Exploration: with probability `rate`, replace the policy's `choice` by a tier drawn
/// uniformly from `eligible` (which may draw the same tier). Returns the tier and the exact
/// probability with which it was chosen, for inverse-propensity weighting at training time.
/// `u` and `pick` are uniform draws in [0, 1), passed in so this stays a pure function.
pub fn explore(choice: usize, eligible: &[usize], rate: f64, u: f64, pick: f64) -> (usize, f64) {
    let n = eligible.len();
    if rate <= 0.0 || n <= 1 {
        return (choice, 1.0);
    }
    let share = rate / n as f64;
    let tier = if u < rate {
        eligible[((pick * n as f64) as usize).min(n - 1)]
    } else {
        choice
    };
    let propensity = if tier == choice {
        1.0 - rate + share
    } else {
        share
    };
    (tier, propensity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["fast".into(), "standard".into(), "frontier".into()]
    }
    const TH: [f64; 3] = [0.7, 0.6, 0.0];
    const COST: [f64; 3] = [0.001, 0.01, 0.1];

    fn pick(p: [f64; 3], knobs: Knobs) -> Result<Choice, RequestError> {
        decide(&p, &TH, &COST, &names(), &knobs, Some(1))
    }

    #[test]
    fn cheapest_tier_reaching_its_threshold_wins() {
        assert_eq!(pick([0.8, 0.9, 1.0], Knobs::default()).unwrap().tier, 0);
        let c = pick([0.5, 0.65, 1.0], Knobs::default()).unwrap();
        assert_eq!(c.tier, 1);
        assert!(c.reason.contains("fast 0.50 < 0.70"), "{}", c.reason);
        assert_eq!(pick([0.1, 0.2, 1.0], Knobs::default()).unwrap().tier, 2);
    }

    #[test]
    fn exploration_logs_exact_propensities() {
        // No exploration: the choice, with certainty.
        assert_eq!(explore(1, &[0, 1, 2], 0.0, 0.0, 0.0), (1, 1.0));
        // Not drawn (u >= rate): the choice, with probability 1 - rate + rate / 3.
        let (t, p) = explore(1, &[0, 1, 2], 0.3, 0.5, 0.0);
        assert_eq!(t, 1);
        assert!((p - (0.7 + 0.1)).abs() < 1e-12);
        // Drawn: uniform over eligible tiers; another tier has probability rate / 3.
        let (t, p) = explore(1, &[0, 1, 2], 0.3, 0.1, 0.99);
        assert_eq!(t, 2);
        assert!((p - 0.1).abs() < 1e-12);
        // Only eligible tiers are ever drawn; a single eligible tier is certain.
        assert_eq!(explore(0, &[0, 1], 1.0, 0.0, 0.999_999).0, 1);
        assert_eq!(explore(2, &[2], 1.0, 0.0, 0.0), (2, 1.0));
        // The propensities of all outcomes sum to one.
        let rate = 0.2;
        let total: f64 = (0..3)
            .map(|t| {
                if t == 1 {
                    1.0 - rate + rate / 3.0
                } else {
                    rate / 3.0
                }
            })
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_tie_with_the_threshold_reaches_it() {
        assert_eq!(pick([0.7, 0.7, 1.0], Knobs::default()).unwrap().tier, 0);
    }

    #[test]
    fn min_and_max_tier_bound_the_choice() {
        let k = Knobs {
            min_tier: Some(1),
            ..Knobs::default()
        };
        let c = pick([0.9, 0.9, 1.0], k).unwrap();
        assert_eq!(c.tier, 1);
        assert!(!c.tiers[0].eligible && c.reason.contains("min_tier=standard"));
        let k = Knobs {
            max_tier: Some(1),
            ..Knobs::default()
        };
        let c = pick([0.1, 0.2, 1.0], k).unwrap();
        assert_eq!(c.tier, 1, "falls back to the dearest allowed tier");
        assert!(c.reason.contains("no allowed tier reaches"), "{}", c.reason);
    }

    #[test]
    fn max_cost_excludes_dear_tiers_and_can_leave_none() {
        let k = Knobs {
            max_cost_usd: Some(0.01),
            ..Knobs::default()
        };
        assert_eq!(pick([0.1, 0.2, 1.0], k).unwrap().tier, 1);
        let k = Knobs {
            max_cost_usd: Some(0.0001),
            ..Knobs::default()
        };
        let err = pick([0.1, 0.2, 1.0], k).unwrap_err();
        assert!(err.to_string().contains("max_cost_usd is 0.0001"), "{err}");
    }

    #[test]
    fn quality_target_replaces_thresholds() {
        let k = Knobs {
            quality_target: Some(0.4),
            ..Knobs::default()
        };
        let c = pick([0.5, 0.6, 1.0], k).unwrap();
        assert_eq!(c.tier, 0);
        assert!(c.reason.contains("quality_target 0.40"), "{}", c.reason);
        let k = Knobs {
            quality_target: Some(0.95),
            ..Knobs::default()
        };
        assert_eq!(pick([0.8, 0.9, 1.0], k).unwrap().tier, 2);
    }

    #[test]
    fn latency_sensitive_caps_but_min_tier_wins() {
        let k = Knobs {
            latency_sensitive: true,
            ..Knobs::default()
        };
        assert_eq!(pick([0.1, 0.2, 1.0], k).unwrap().tier, 1);
        let k = Knobs {
            latency_sensitive: true,
            min_tier: Some(2),
            ..Knobs::default()
        };
        assert_eq!(pick([0.1, 0.2, 1.0], k).unwrap().tier, 2);
        // Without an operator cap the flag changes nothing.
        let k = Knobs {
            latency_sensitive: true,
            ..Knobs::default()
        };
        assert_eq!(
            decide(&[0.1, 0.2, 1.0], &TH, &COST, &names(), &k, None)
                .unwrap()
                .tier,
            2
        );
    }
}
