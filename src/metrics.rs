//! Prometheus metrics: the counters the core updates, the values read at scrape time, and the
//! text exposition served at `/metrics`. Labels are tier, source, class and provider names
//! from the config, never prompt text, tenants or secrets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: String,
    explored: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    source: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: String,
    model: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    provider: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    provider: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// Everything exported. Event counters are updated where the event happens (in the core);
/// gauges mirroring state owned elsewhere are set just before each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<TierLabels, Counter>,
    /// `decisions`' counters by tier index, then explored: made once, so counting a decision
    /// allocates nothing.
    by_tier: Vec<[Counter; 2]>,
    route_seconds: Histogram,
    outcomes: Family<OutcomeLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    fallbacks: Counter,
    completion_errors: Family<ClassLabels, Counter>,
    refused: Family<ClassLabels, Counter>,
    // Mirrors, set at scrape time.
    decisions_dropped: Gauge,
    write_errors: Gauge,
    out_of_space: Gauge,
    decisions_capped: Gauge,
    latency_estimate_ms: Family<MemberLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    breaker: Family<BreakerLabels, Gauge>,
    model_version: Family<VersionLabels, Gauge>,
    in_flight: Family<ClassLabels, Gauge>,
    shed: Family<ClassLabels, Gauge>,
}

impl Metrics {
    /// A registry with every metric registered under the `triage_` prefix, for these tiers
    /// (cheapest first, as [`crate::engine::Decision::tier`] indexes them).
    pub fn new(tiers: &[String]) -> Self {
        let mut registry = Registry::with_prefix("triage");
        let decisions: Family<TierLabels, Counter> = Family::default();
        let by_tier = tiers
            .iter()
            .map(|tier| {
                [false, true].map(|explored| {
                    decisions
                        .get_or_create(&TierLabels {
                            tier: tier.clone(),
                            explored: explored.to_string(),
                        })
                        .clone()
                })
            })
            .collect();
        let m = Self {
            decisions,
            by_tier,
            // 10 µs to ~1.3 s: routing is sub-millisecond, the long tail is the blocking pool.
            route_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 18),
            ),
            outcomes: Family::default(),
            attempts: Family::default(),
            fallbacks: Counter::default(),
            completion_errors: Family::default(),
            refused: Family::default(),
            decisions_dropped: Gauge::default(),
            write_errors: Gauge::default(),
            out_of_space: Gauge::default(),
            decisions_capped: Gauge::default(),
            latency_estimate_ms: Family::default(),
            breaker: Family::default(),
            model_version: Family::default(),
            in_flight: Family::default(),
            shed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "decisions",
            "Routing decisions by tier and whether exploration chose it",
            m.decisions.clone(),
        );
        registry.register(
            "route_duration_seconds",
            "Time to featurize, score and decide one request",
            m.route_seconds.clone(),
        );
        registry.register(
            "outcomes",
            "Outcomes received, by source and result (stored, duplicate, orphan)",
            m.outcomes.clone(),
        );
        registry.register(
            "provider_attempts",
            "Provider attempts by provider, model and outcome class",
            m.attempts.clone(),
        );
        registry.register(
            "fallbacks",
            "Completions answered by a member other than the chain's first",
            m.fallbacks.clone(),
        );
        registry.register(
            "completion_errors",
            "Completions that failed, by error class",
            m.completion_errors.clone(),
        );
        registry.register(
            "refused_calls",
            "Calls refused before any work, by reason (unauthenticated, forbidden, overloaded)",
            m.refused.clone(),
        );
        registry.register(
            "decisions_dropped",
            "Decisions not logged because the decision queue was full (since start)",
            m.decisions_dropped.clone(),
        );
        registry.register(
            "log_write_errors",
            "Decision and outcome records the store failed to write (since start)",
            m.write_errors.clone(),
        );
        registry.register(
            "log_out_of_space",
            "Of those, records refused because the disk was full or read-only (since start)",
            m.out_of_space.clone(),
        );
        registry.register(
            "decisions_capped",
            "Decisions removed, oldest first, to keep the store under feedback.max_store_bytes (since start)",
            m.decisions_capped.clone(),
        );
        registry.register(
            "provider_latency_estimate_ms",
            "Moving-average latency of successful calls per provider and model",
            m.latency_estimate_ms.clone(),
        );
        registry.register(
            "provider_breaker",
            "1 for each provider's current breaker state (closed, open, half_open)",
            m.breaker.clone(),
        );
        registry.register(
            "model_info",
            "1, labelled with the serving classifier's version",
            m.model_version.clone(),
        );
        registry.register(
            "in_flight",
            "Calls running now, by kind (route, complete)",
            m.in_flight.clone(),
        );
        registry.register(
            "shed",
            "Calls refused by load shedding since start, by kind (route, complete)",
            m.shed.clone(),
        );
        Self { registry, ..m }
    }

    /// One routing decision (by tier index) and how long it took.
    pub fn decision(&self, tier: usize, explored: bool, seconds: f64) {
        if let Some(counters) = self.by_tier.get(tier) {
            counters[usize::from(explored)].inc();
        }
        self.route_seconds.observe(seconds);
    }

    /// One outcome received.
    pub fn outcome(&self, source: &str, result: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                source: source.into(),
                result: result.into(),
            })
            .inc();
    }

    /// The attempts of one completion, and whether a later member answered.
    pub fn completion(&self, attempts: &[crate::chain::Attempt], error: Option<&'static str>) {
        for a in attempts {
            self.attempts
                .get_or_create(&AttemptLabels {
                    provider: a.provider.clone(),
                    model: a.model.clone(),
                    class: a.class.into(),
                })
                .inc();
        }
        match error {
            Some(class) => {
                self.completion_errors
                    .get_or_create(&ClassLabels {
                        class: class.into(),
                    })
                    .inc();
            }
            None => {
                let first = attempts.first().map(|a| (&a.provider, &a.model));
                let last = attempts.last().map(|a| (&a.provider, &a.model));
                if first != last {
                    self.fallbacks.inc();
                }
            }
        }
    }

    /// A call refused before any work.
    pub fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&ClassLabels {
                class: reason.into(),
            })
            .inc();
    }

    /// The exposition text, after setting the mirrors from `core`'s current state.
    pub fn render(&self, core: &crate::app::Triage) -> String {
        let stats = core.stats();
        self.model_version.clear();
        self.model_version
            .get_or_create(&VersionLabels {
                version: stats.model_version.clone(),
            })
            .set(1);
        if let Some(f) = &stats.feedback {
            self.decisions_dropped
                .set(i64::try_from(f.decisions_dropped).unwrap_or(i64::MAX));
            self.write_errors
                .set(i64::try_from(f.write_errors).unwrap_or(i64::MAX));
            self.out_of_space
                .set(i64::try_from(f.out_of_space).unwrap_or(i64::MAX));
            self.decisions_capped
                .set(i64::try_from(f.decisions_capped).unwrap_or(i64::MAX));
        }
        self.breaker.clear();
        for h in &stats.providers {
            if let Some(ms) = h.latency_ms {
                self.latency_estimate_ms
                    .get_or_create(&MemberLabels {
                        provider: h.provider.clone(),
                        model: h.model.clone(),
                    })
                    .set(ms);
            }
            self.breaker
                .get_or_create(&BreakerLabels {
                    provider: h.provider.clone(),
                    state: h.breaker.name().into(),
                })
                .set(1);
        }
        for class in [
            crate::admission::Class::Route,
            crate::admission::Class::Complete,
        ] {
            let gate = core.admission().gate(class);
            let label = ClassLabels {
                class: class.name().into(),
            };
            self.in_flight
                .get_or_create(&label)
                .set(i64::try_from(gate.in_flight()).unwrap_or(i64::MAX));
            self.shed.get_or_create(&label).set(
                i64::try_from(gate.shed.load(std::sync::atomic::Ordering::Relaxed))
                    .unwrap_or(i64::MAX),
            );
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics could not be encoded");
        }
        out
    }
}
