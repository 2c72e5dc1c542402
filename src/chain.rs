//! Running a tier's chain of models: one attempt loop for unary and streamed calls, owning
//! admission, breakers, deadlines, retries with backoff and Retry-After, latency estimates
//! and every attempt's outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::health::{Admission, Breaker, BreakerState, Ewma};

use crate::config::{Config, GatewayConfig, ModelRef};
use crate::providers::{ChatRequest, ChatResponse, Provider, ProviderError};

/// One call to one member.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Provider name.
    pub provider: String,
    /// Model.
    pub model: String,
    /// `ok`, or the error (never a key or a provider's body).
    pub outcome: String,
    /// A short, bounded class of the outcome (`ok`, `timeout`, `skipped`, ...), for metrics.
    pub class: &'static str,
    /// How long it took.
    pub latency_ms: u64,
}

/// Why a chain produced no answer. Both variants carry every attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    /// A provider called the request itself invalid; the others would too.
    #[error(
        "the request was rejected as invalid by {provider}/{model} ({error}); not retried elsewhere"
    )]
    Invalid {
        /// Who rejected it.
        provider: String,
        /// Which model.
        model: String,
        /// What it said (status only).
        error: ProviderError,
        /// Attempts made.
        attempts: Vec<Attempt>,
    },
    /// Every member failed.
    #[error("all {} attempts failed: {}", .0.len(), describe(.0))]
    Exhausted(Vec<Attempt>),
    /// The call's deadline passed before a member answered.
    #[error("no answer within the call's deadline; attempts: {}", describe(.0))]
    DeadlineExceeded(Vec<Attempt>),
    /// The caller went away; nothing more was tried.
    #[error("the caller went away")]
    Cancelled(Vec<Attempt>),
}

fn describe(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "none".into();
    }
    attempts
        .iter()
        .map(|a| {
            format!(
                "{}/{}: {} after {} ms",
                a.provider, a.model, a.outcome, a.latency_ms
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ChainError {
    /// Every attempt made.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            Self::Invalid { attempts, .. }
            | Self::Exhausted(attempts)
            | Self::DeadlineExceeded(attempts)
            | Self::Cancelled(attempts) => attempts,
        }
    }

    /// A short class for outcomes and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_request",
            Self::Exhausted(_) => "all_providers_failed",
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            Self::Cancelled(_) => "cancelled",
        }
    }
}

/// How a streamed chain run ended badly.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    /// No member produced a first token (or the request was invalid).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A member failed after tokens had been sent; they are not resumed elsewhere, because
    /// another model would not continue the same text seamlessly.
    #[error(
        "stream interrupted after {delivered} tokens from {provider}/{model} ({error}); not resumed elsewhere"
    )]
    Interrupted {
        /// Stream chunks already sent to the caller.
        delivered: u64,
        /// Who was streaming.
        provider: String,
        /// Which model.
        model: String,
        /// What went wrong.
        error: ProviderError,
        /// Attempts made.
        attempts: Vec<Attempt>,
    },
}

/// A streamed chain run that finished.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Index of the member that answered.
    pub member: usize,
    /// stop, length, ...
    pub finish_reason: String,
    /// Input tokens as reported.
    pub input_tokens: u64,
    /// Output tokens as reported.
    pub output_tokens: u64,
    /// Tool calls the model made, whole.
    pub tool_calls: Vec<crate::providers::ToolCall>,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
}

/// A successful chain run.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The answer.
    pub response: ChatResponse,
    /// Index of the member that answered.
    pub member: usize,
    /// Every attempt, the successful one last.
    pub attempts: Vec<Attempt>,
}

/// What `Stats` shows for one provider/model.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberHealth {
    /// Provider name.
    pub provider: String,
    /// Model (empty when no call has been timed yet).
    pub model: String,
    /// Moving average latency of successful calls, ms.
    pub latency_ms: Option<f64>,
    /// Calls timed.
    pub samples: u64,
    /// The provider's breaker.
    pub breaker: BreakerState,
    /// Failures among the breaker's recent calls.
    pub recent_failures: usize,
}

/// Calls providers for chains, with a breaker per provider and a latency estimate per model.
#[derive(Debug)]
pub struct Gateway {
    http: reqwest::Client,
    providers: HashMap<String, Provider>,
    settings: GatewayConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
    latency: Mutex<HashMap<(String, String), Ewma>>,
}

impl Gateway {
    /// A gateway for the config's providers; `None` when none are configured.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        if config.providers.is_empty() {
            return Ok(None);
        }
        crate::providers::install_tls_provider();
        // Said once at start rather than discovered per call; the variable may still be set
        // later by a restart, so this is a warning, not a refusal.
        for p in &config.providers {
            if let Some(var) = &p.api_key_env
                && std::env::var(var).map_or(true, |v| v.trim().is_empty())
            {
                tracing::warn!(provider = %p.name, variable = %var, "provider key variable is not set; calls to this provider will fail with missing_key");
            }
        }
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let g = &config.gateway;
        let breakers = config
            .providers
            .iter()
            .map(|p| {
                let b = Breaker::new(
                    g.breaker_window,
                    g.breaker_min_calls,
                    g.breaker_failure_rate,
                    g.breaker_cooldown,
                );
                (p.name.clone(), b)
            })
            .collect();
        Ok(Some(Self {
            http,
            providers: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            settings: config.gateway.clone(),
            breakers: Mutex::new(breakers),
            latency: Mutex::new(HashMap::new()),
        }))
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        // A panic while holding the lock cannot leave a breaker half-updated in a harmful way.
        self.breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn latencies(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Ewma>> {
        self.latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the provider's breaker is open now (then retrying it would only add load).
    fn is_open(&self, provider: &str) -> bool {
        self.breakers()
            .get(provider)
            .is_some_and(|b| b.state(Instant::now()) == BreakerState::Open)
    }

    /// Breaker states and latency estimates, for `Stats`.
    pub fn health(&self) -> Vec<MemberHealth> {
        let now = Instant::now();
        let breakers = self.breakers();
        let lat = self.latencies();
        let mut out: Vec<MemberHealth> = lat
            .iter()
            .map(|((p, m), e)| MemberHealth {
                provider: p.clone(),
                model: m.clone(),
                latency_ms: e.value,
                samples: e.samples,
                breaker: breakers
                    .get(p)
                    .map_or(BreakerState::Closed, |b| b.state(now)),
                recent_failures: breakers.get(p).map_or(0, Breaker::failures),
            })
            .collect();
        for (p, b) in breakers.iter() {
            if !lat.keys().any(|(lp, _)| lp == p) {
                out.push(MemberHealth {
                    provider: p.clone(),
                    model: String::new(),
                    latency_ms: None,
                    samples: 0,
                    breaker: b.state(now),
                    recent_failures: b.failures(),
                });
            }
        }
        out.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        out
    }

    /// The order to try `chain` in: the configured order, or for latency-sensitive requests
    /// the members with the lowest latency estimate first (untimed ones after, in order).
    fn order(&self, chain: &[ModelRef], latency_sensitive: bool) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..chain.len()).collect();
        if latency_sensitive {
            let lat = self.latencies();
            let est = |i: usize| {
                lat.get(&(chain[i].provider.clone(), chain[i].model.clone()))
                    .and_then(|e| e.value)
            };
            idx.sort_by(|&a, &b| match (est(a), est(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.cmp(&b),
            });
        }
        idx
    }

    fn backoff(&self, retry: u32, error: &ProviderError) -> Option<Duration> {
        if let ProviderError::RateLimited(Some(secs)) = error {
            let ms = secs.saturating_mul(1000);
            // A long Retry-After means this provider is out for a while: try the next one.
            let wait = Duration::from_millis(ms);
            return (wait <= self.settings.max_retry_after).then_some(wait);
        }
        let base = u64::try_from(self.settings.backoff_initial.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(1u64 << retry.min(20))
            .min(u64::try_from(self.settings.backoff_max.as_millis()).unwrap_or(u64::MAX));
        // Jitter in [base/2, base] so synchronized clients spread out.
        let jittered = base / 2 + (rand::random::<f64>() * (base - base / 2) as f64) as u64;
        Some(Duration::from_millis(jittered))
    }

    /// The members to try, in order: those whose breaker is not open (skipped ones are
    /// recorded as attempts), or the least recently failed one when every breaker is open.
    /// Nothing is claimed here: a half-open provider's probe is claimed by [`Self::begin`]
    /// right before its attempt, so a member never reached never holds a probe.
    fn members(
        &self,
        chain: &[ModelRef],
        latency_sensitive: bool,
        attempts: &mut Vec<Attempt>,
    ) -> Vec<(usize, bool)> {
        let order = self.order(chain, latency_sensitive);
        let now = Instant::now();
        let b = self.breakers();
        let mut allowed: Vec<(usize, bool)> = order
            .iter()
            .copied()
            .filter(|&i| {
                b.get(&chain[i].provider)
                    .is_none_or(|br| br.state(now) != BreakerState::Open)
            })
            .map(|i| (i, false))
            .collect();
        for &i in order.iter().filter(|i| !allowed.iter().any(|a| a.0 == **i)) {
            attempts.push(Attempt {
                provider: chain[i].provider.clone(),
                model: chain[i].model.clone(),
                outcome: "skipped: circuit open".into(),
                class: "skipped",
                latency_ms: 0,
            });
        }
        if allowed.is_empty() {
            let least_recent = order
                .iter()
                .copied()
                .min_by_key(|&i| b.get(&chain[i].provider).and_then(|br| br.last_failure));
            // Forced: tried although its breaker is open, which nothing else would try.
            allowed.extend(least_recent.map(|i| (i, true)));
        }
        allowed
    }

    /// Admits one attempt on `provider`: `None` when its breaker refuses (open, or another
    /// call is probing), else a ticket that must carry the attempt's verdict back.
    fn begin(&self, provider: &str, forced: bool) -> Option<Ticket<'_>> {
        let probe = match self
            .breakers()
            .get_mut(provider)
            .map(|b| b.admit(Instant::now()))
        {
            None | Some(Admission::Call) => false,
            Some(Admission::Probe) => true,
            Some(Admission::Refused) if forced => false,
            Some(Admission::Refused) => return None,
        };
        Some(Ticket {
            gateway: self,
            provider: provider.to_string(),
            probe,
        })
    }

    fn record_latency(&self, provider: &str, model: &str, elapsed: Duration) {
        self.latencies()
            .entry((provider.to_string(), model.to_string()))
            .or_default()
            .add(
                elapsed.as_secs_f64() * 1e3,
                self.settings.latency_ewma_alpha,
            );
    }

    /// The one attempt loop. Tries the members of `chain` in order (with retries of the same
    /// member for retryable failures) until `attempt` succeeds, fails finally, the caller
    /// goes away or `deadline` passes. Each attempt gets at most `attempt_timeout_ms` and at
    /// most an equal share of the time left for the members not yet tried, so one hanging
    /// member cannot use up the call. `attempt` returns its value and the latency to record
    /// (total time for unary calls, time to first content for streams).
    async fn attempts<T, F, Fut>(
        &self,
        chain: &[ModelRef],
        latency_sensitive: bool,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<(usize, T, Vec<Attempt>), ChainError>
    where
        F: FnMut(&Provider, String, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Duration), ProviderError>>,
    {
        let mut attempts = Vec::new();
        let members = self.members(chain, latency_sensitive, &mut attempts);
        let max_attempt = self.settings.attempt_timeout;
        let mut deadline_hit = false;
        for (position, &(member, forced)) in members.iter().enumerate() {
            let m = &chain[member];
            let Some(provider) = self.providers.get(&m.provider) else {
                attempts.push(Attempt {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    outcome: "provider not configured".into(),
                    class: "not_configured",
                    latency_ms: 0,
                });
                continue;
            };
            let mut retry = 0;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    deadline_hit = true;
                    break;
                }
                let Some(ticket) = self.begin(&m.provider, forced) else {
                    attempts.push(Attempt {
                        provider: m.provider.clone(),
                        model: m.model.clone(),
                        outcome: "skipped: circuit open".into(),
                        class: "skipped",
                        latency_ms: 0,
                    });
                    break;
                };
                let untried = u32::try_from(members.len() - position).unwrap_or(u32::MAX);
                let budget = max_attempt
                    .min(left / untried.max(1))
                    .max(Duration::from_millis(1));
                let start = Instant::now();
                let result =
                    match tokio::time::timeout(budget, attempt(provider, m.model.clone(), budget))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(ProviderError::Timeout(
                            u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                        )),
                    };
                let elapsed = start.elapsed();
                attempts.push(Attempt {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    outcome: match &result {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e.to_string(),
                    },
                    class: match &result {
                        Ok(_) => "ok",
                        Err(e) => e.class(),
                    },
                    latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                });
                match result {
                    Ok((value, latency)) => {
                        ticket.settle(Verdict::Ok);
                        self.record_latency(&m.provider, &m.model, latency);
                        return Ok((member, value, attempts));
                    }
                    Err(ProviderError::Cancelled) => {
                        ticket.settle(Verdict::Neutral);
                        return Err(ChainError::Cancelled(attempts));
                    }
                    Err(error) if error.is_final() => {
                        // The caller's own bad request says nothing about the provider.
                        ticket.settle(Verdict::Neutral);
                        return Err(ChainError::Invalid {
                            provider: m.provider.clone(),
                            model: m.model.clone(),
                            error,
                            attempts,
                        });
                    }
                    Err(e) => {
                        ticket.settle(Verdict::Failed);
                        let wait = (e.is_retryable()
                            && retry < self.settings.max_retries
                            && !self.is_open(&m.provider))
                        .then(|| self.backoff(retry, &e))
                        .flatten()
                        .filter(|w| Instant::now() + *w < deadline);
                        let Some(wait) = wait else {
                            tracing::warn!(provider = %m.provider, model = %m.model, error = %e, "moving on to the next member");
                            break;
                        };
                        tracing::debug!(provider = %m.provider, model = %m.model, error = %e, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                        retry += 1;
                    }
                }
            }
            if deadline_hit {
                break;
            }
        }
        if deadline_hit || Instant::now() >= deadline {
            Err(ChainError::DeadlineExceeded(attempts))
        } else {
            Err(ChainError::Exhausted(attempts))
        }
    }

    /// Tries `chain` until a member answers or `deadline` passes.
    pub async fn run(
        &self,
        chain: &[ModelRef],
        req: &ChatRequest,
        latency_sensitive: bool,
        deadline: Instant,
    ) -> Result<Answered, ChainError> {
        let http = &self.http;
        let (member, response, attempts) = self
            .attempts(
                chain,
                latency_sensitive,
                deadline,
                move |provider, model, budget| {
                    let provider = provider.clone();
                    async move {
                        let start = Instant::now();
                        let r = provider.complete(http, &model, req, budget).await?;
                        Ok((r, start.elapsed()))
                    }
                },
            )
            .await?;
        Ok(Answered {
            response,
            member,
            attempts,
        })
    }

    /// Streams `chain` into `out` (text pieces). A member is committed to only once it sends
    /// content (text, or a finished answer) within `first_content_timeout_ms`; until then a
    /// failure or silence moves on to the next member. After that, a failure ends the run with
    /// `Interrupted`. The upstream request is dropped as soon as `out`'s receiver is, and the
    /// whole stream ends at `deadline`.
    pub async fn run_stream(
        &self,
        chain: &[ModelRef],
        req: &ChatRequest,
        latency_sensitive: bool,
        deadline: Instant,
        out: &tokio::sync::mpsc::Sender<String>,
    ) -> Result<Streamed, StreamError> {
        use crate::providers::StreamEvent;
        let http = &self.http;
        let first_content = self.settings.first_content_timeout;
        let (member, (first, mut events), mut attempts) = self
            .attempts(chain, latency_sensitive, deadline, move |provider, model, budget| {
                let provider = provider.clone();
                async move {
                    let start = Instant::now();
                    let opened = async {
                        let mut events = provider.stream(http, &model, req, budget).await?;
                        loop {
                            match events.recv().await {
                                Some(Ok(StreamEvent::Delta(t))) if t.is_empty() => continue,
                                Some(Ok(ev)) => return Ok((ev, events)),
                                Some(Err(e)) => return Err(e),
                                None => return Err(ProviderError::Interrupted),
                            }
                        }
                    };
                    tokio::select! {
                        r = tokio::time::timeout(first_content.min(budget), opened) => match r {
                            Ok(Ok(first)) => Ok((first, start.elapsed())),
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(ProviderError::Timeout(
                                u64::try_from(first_content.min(budget).as_millis()).unwrap_or(u64::MAX),
                            )),
                        },
                        () = out.closed() => Err(ProviderError::Cancelled),
                    }
                }
            })
            .await?;
        let m = &chain[member];
        let mut delivered = 0u64;
        let mut next = Some(Ok(first));
        loop {
            let ev = match next.take() {
                Some(ev) => Some(ev),
                None => tokio::select! {
                    ev = events.recv() => ev,
                    () = out.closed() => Some(Err(ProviderError::Cancelled)),
                    () = tokio::time::sleep_until(deadline.into()) => Some(Err(ProviderError::Timeout(
                        u64::try_from(self.settings.call_timeout.as_millis()).unwrap_or(u64::MAX),
                    ))),
                },
            };
            let error = match ev {
                Some(Ok(StreamEvent::Delta(t))) => {
                    if t.is_empty() {
                        continue;
                    }
                    if out.send(t).await.is_err() {
                        ProviderError::Cancelled
                    } else {
                        delivered += 1;
                        continue;
                    }
                }
                Some(Ok(StreamEvent::Done {
                    finish_reason,
                    input_tokens,
                    output_tokens,
                    tool_calls,
                })) => {
                    return Ok(Streamed {
                        member,
                        finish_reason,
                        input_tokens,
                        output_tokens,
                        tool_calls,
                        attempts,
                    });
                }
                Some(Err(e)) => e,
                None => ProviderError::Interrupted,
            };
            if error != ProviderError::Cancelled
                && let Some(b) = self.breakers().get_mut(&m.provider)
            {
                b.record(false, Instant::now());
            }
            if let Some(last) = attempts.last_mut() {
                last.outcome = format!("failed after {delivered} pieces: {error}");
            }
            return Err(StreamError::Interrupted {
                delivered,
                provider: m.provider.clone(),
                model: m.model.clone(),
                error,
                attempts,
            });
        }
    }
}

/// What an attempt says about its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Failed,
    /// Nothing: the caller's own bad request, or the caller went away.
    Neutral,
}

/// One admitted attempt. Dropped without a verdict (the call was cancelled mid-attempt) it
/// releases a probe it holds, so a half-open breaker always gets another probe.
struct Ticket<'a> {
    gateway: &'a Gateway,
    provider: String,
    probe: bool,
}

impl Ticket<'_> {
    fn settle(mut self, verdict: Verdict) {
        if let Some(b) = self.gateway.breakers().get_mut(&self.provider) {
            match verdict {
                Verdict::Ok => b.record(true, Instant::now()),
                Verdict::Failed => b.record(false, Instant::now()),
                Verdict::Neutral if self.probe => b.release_probe(),
                Verdict::Neutral => {}
            }
        }
        // Resolved: nothing left for `drop` to release.
        self.probe = false;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe
            && let Some(b) = self.gateway.breakers().get_mut(&self.provider)
        {
            b.release_probe();
        }
    }
}
