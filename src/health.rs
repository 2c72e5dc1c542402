//! Provider health: a circuit breaker per provider and a moving latency estimate per model.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are skipped until the cooldown ends.
    Open,
    /// The cooldown ended: one probe call decides.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name for APIs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What a breaker says to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: call.
    Call,
    /// The breaker is half-open and this call is its one probe.
    Probe,
    /// Open, or a probe is already out: skip this provider.
    Refused,
}

/// A failure-rate circuit breaker over the last `window` calls.
#[derive(Debug, Clone)]
pub struct Breaker {
    recent: VecDeque<bool>,
    window: usize,
    min_calls: usize,
    failure_rate: f64,
    cooldown: Duration,
    open_until: Option<Instant>,
    probing: bool,
    /// When this provider last failed (to pick the least recently failed when all are open).
    pub last_failure: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(window: usize, min_calls: usize, failure_rate: f64, cooldown: Duration) -> Self {
        Self {
            recent: VecDeque::with_capacity(window),
            window,
            min_calls,
            failure_rate,
            cooldown,
            open_until: None,
            probing: false,
            last_failure: None,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go out now; in half-open state only one probe at a time. A probe
    /// must be resolved: by [`Self::record`] with its verdict, or by [`Self::release_probe`]
    /// when it says nothing of the provider (the caller's own bad request, a cancelled call),
    /// else the breaker would stay half-open with nobody allowed to probe.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Call,
            BreakerState::Open => Admission::Refused,
            BreakerState::HalfOpen if self.probing => Admission::Refused,
            BreakerState::HalfOpen => {
                self.probing = true;
                Admission::Probe
            }
        }
    }

    /// Ends a probe without a verdict: the next call after it may probe again.
    pub fn release_probe(&mut self) {
        self.probing = false;
    }

    /// Records a call's result.
    pub fn record(&mut self, ok: bool, now: Instant) {
        if !ok {
            self.last_failure = Some(now);
        }
        if self.open_until.is_some() {
            // The probe's verdict: close and forget, or open for another cooldown.
            self.probing = false;
            if ok {
                self.open_until = None;
                self.recent.clear();
            } else {
                self.open_until = Some(now + self.cooldown);
            }
            return;
        }
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(ok);
        let failures = self.recent.iter().filter(|r| !**r).count();
        if self.recent.len() >= self.min_calls
            && failures as f64 >= self.failure_rate * self.recent.len() as f64
        {
            self.open_until = Some(now + self.cooldown);
            self.recent.clear();
        }
    }

    /// Failures among the calls in the window.
    pub fn failures(&self) -> usize {
        self.recent.iter().filter(|r| !**r).count()
    }
}

/// An exponentially weighted moving average of latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    /// Current estimate in milliseconds (None before the first sample).
    pub value: Option<f64>,
    /// Samples seen.
    pub samples: u64,
}

impl Ewma {
    /// Adds a sample with weight `alpha` for the newest one.
    pub fn add(&mut self, ms: f64, alpha: f64) {
        self.value = Some(match self.value {
            None => ms,
            Some(v) => alpha * ms + (1.0 - alpha) * v,
        });
        self.samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_failure_rate_cools_down_and_probes_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(4, 4, 0.5, Duration::from_secs(10));
        for ok in [true, false, true] {
            b.record(ok, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "3 calls < min_calls 4");
        b.record(false, t0);
        assert_eq!(b.state(t0), BreakerState::Open, "2 of 4 failed");
        assert_eq!(b.admit(t0 + Duration::from_secs(5)), Admission::Refused);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe, "one probe");
        assert_eq!(
            b.admit(later),
            Admission::Refused,
            "only one probe at a time"
        );
        // A probe that says nothing (a 400, a cancelled call) lets the next call probe.
        b.release_probe();
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(false, later);
        assert_eq!(b.state(later), BreakerState::Open, "a failed probe reopens");
        let again = later + Duration::from_secs(11);
        assert_eq!(b.admit(again), Admission::Probe);
        b.record(true, again);
        assert_eq!(b.state(again), BreakerState::Closed, "a good probe closes");
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn the_window_forgets_old_calls() {
        let t = Instant::now();
        let mut b = Breaker::new(4, 2, 0.75, Duration::from_secs(1));
        b.record(false, t);
        for _ in 0..4 {
            b.record(true, t);
        }
        assert_eq!(b.failures(), 0);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn ewma_starts_at_the_first_sample_then_moves_by_alpha() {
        let mut e = Ewma::default();
        e.add(100.0, 0.5);
        assert_eq!(e.value, Some(100.0));
        e.add(200.0, 0.5);
        assert_eq!(e.value, Some(150.0));
        assert_eq!(e.samples, 2);
    }
}
