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

    /// Whether a call may go out now; in half-open state only one probe at a time.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.probing => false,
            BreakerState::HalfOpen => {
                self.probing = true;
                true
            }
        }
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
        assert!(!b.allow(t0 + Duration::from_secs(5)));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.allow(later), "one probe");
        assert!(!b.allow(later), "only one probe at a time");
        b.record(false, later);
        assert_eq!(b.state(later), BreakerState::Open, "a failed probe reopens");
        let again = later + Duration::from_secs(11);
        assert!(b.allow(again));
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
