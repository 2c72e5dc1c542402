//! Running a tier's chain of models in order: per-attempt deadlines, bounded retries with
//! backoff and jitter, Retry-After, and every attempt's outcome collected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::health::{Breaker, BreakerState, Ewma};

use crate::config::{Config, RawGateway, RawModelRef};
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
    #[error("all {} attempts failed: {}", .0.len(), .0.iter().map(|a| format!("{}/{}: {} after {} ms", a.provider, a.model, a.outcome, a.latency_ms)).collect::<Vec<_>>().join("; "))]
    Exhausted(Vec<Attempt>),
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
    settings: RawGateway,
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
                    Duration::from_millis(g.breaker_cooldown_ms),
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
    fn order(&self, chain: &[RawModelRef], latency_sensitive: bool) -> Vec<usize> {
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
            return (ms <= self.settings.max_retry_after_ms).then(|| Duration::from_millis(ms));
        }
        let base = self
            .settings
            .backoff_initial_ms
            .saturating_mul(1u64 << retry.min(20))
            .min(self.settings.backoff_max_ms);
        // Jitter in [base/2, base] so synchronized clients spread out.
        let jittered = base / 2 + (rand::random::<f64>() * (base - base / 2) as f64) as u64;
        Some(Duration::from_millis(jittered))
    }

    /// The members to try, in order: breaker-admitted ones (skipped ones are recorded as
    /// attempts), or the least recently failed one when every breaker is open.
    fn admit(
        &self,
        chain: &[RawModelRef],
        latency_sensitive: bool,
        attempts: &mut Vec<Attempt>,
    ) -> Vec<usize> {
        let order = self.order(chain, latency_sensitive);
        let now = Instant::now();
        let mut allowed: Vec<usize> = {
            let mut b = self.breakers();
            order
                .iter()
                .copied()
                .filter(|&i| b.get_mut(&chain[i].provider).is_none_or(|br| br.allow(now)))
                .collect()
        };
        for &i in order.iter().filter(|i| !allowed.contains(i)) {
            attempts.push(Attempt {
                provider: chain[i].provider.clone(),
                model: chain[i].model.clone(),
                outcome: "skipped: circuit open".into(),
                latency_ms: 0,
            });
        }
        if allowed.is_empty() && !order.is_empty() {
            let b = self.breakers();
            let least_recent = order
                .iter()
                .copied()
                .min_by_key(|&i| b.get(&chain[i].provider).and_then(|br| br.last_failure));
            allowed.extend(least_recent);
        }
        allowed
    }

    fn record(&self, provider: &str, model: &str, ok: bool, invalid: bool, elapsed: Duration) {
        // The caller's own bad request says nothing about the provider's health.
        if !invalid && let Some(b) = self.breakers().get_mut(provider) {
            b.record(ok, Instant::now());
        }
        if ok {
            self.latencies()
                .entry((provider.to_string(), model.to_string()))
                .or_default()
                .add(
                    elapsed.as_secs_f64() * 1e3,
                    self.settings.latency_ewma_alpha,
                );
        }
    }

    /// Streams `chain` into `out` (text pieces). Falls back to the next member while nothing
    /// has been sent; after the first piece, a failure ends the run with `Interrupted`.
    pub async fn run_stream(
        &self,
        chain: &[RawModelRef],
        req: &ChatRequest,
        latency_sensitive: bool,
        out: &tokio::sync::mpsc::Sender<String>,
    ) -> Result<Streamed, StreamError> {
        use crate::providers::StreamEvent;
        let timeout = Duration::from_millis(self.settings.attempt_timeout_ms);
        let mut attempts = Vec::new();
        for member in self.admit(chain, latency_sensitive, &mut attempts) {
            let m = &chain[member];
            let Some(provider) = self.providers.get(&m.provider) else {
                attempts.push(Attempt {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    outcome: "provider not configured".into(),
                    latency_ms: 0,
                });
                continue;
            };
            let mut retry = 0;
            loop {
                let start = Instant::now();
                let mut delivered = 0u64;
                let mut first_piece: Option<Duration> = None;
                let result: Result<Streamed, ProviderError> = async {
                    let mut events = provider.stream(&self.http, &m.model, req, timeout).await?;
                    while let Some(ev) = events.recv().await {
                        match ev? {
                            StreamEvent::Delta(t) => {
                                delivered += 1;
                                first_piece.get_or_insert_with(|| start.elapsed());
                                if out.send(t).await.is_err() {
                                    // The caller went away: stop reading, nothing more to deliver.
                                    return Err(ProviderError::Interrupted);
                                }
                            }
                            StreamEvent::Done {
                                finish_reason,
                                input_tokens,
                                output_tokens,
                                tool_calls,
                            } => {
                                return Ok(Streamed {
                                    member,
                                    finish_reason,
                                    input_tokens,
                                    output_tokens,
                                    tool_calls,
                                    attempts: Vec::new(),
                                });
                            }
                        }
                    }
                    Err(ProviderError::Interrupted)
                }
                .await;
                let elapsed = start.elapsed();
                let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                let outcome = match &result {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                attempts.push(Attempt {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    outcome,
                    latency_ms,
                });
                let invalid = matches!(&result, Err(e) if e.is_final());
                // For streams the latency that matters is time to the first piece.
                self.record(
                    &m.provider,
                    &m.model,
                    result.is_ok(),
                    invalid,
                    first_piece.unwrap_or(elapsed),
                );
                match result {
                    Ok(mut s) => {
                        s.attempts = attempts;
                        return Ok(s);
                    }
                    Err(error) if delivered > 0 => {
                        return Err(StreamError::Interrupted {
                            delivered,
                            provider: m.provider.clone(),
                            model: m.model.clone(),
                            error,
                            attempts,
                        });
                    }
                    Err(error) if error.is_final() => {
                        return Err(ChainError::Invalid {
                            provider: m.provider.clone(),
                            model: m.model.clone(),
                            error,
                            attempts,
                        }
                        .into());
                    }
                    Err(e)
                        if e.is_retryable()
                            && retry < self.settings.max_retries
                            && !self.is_open(&m.provider) =>
                    {
                        let Some(wait) = self.backoff(retry, &e) else {
                            break;
                        };
                        tokio::time::sleep(wait).await;
                        retry += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        Err(ChainError::Exhausted(attempts).into())
    }

    /// Tries `chain` until a member answers, skipping providers whose breaker is open; when
    /// every member is cooling down, the least recently failed one is tried anyway.
    pub async fn run(
        &self,
        chain: &[RawModelRef],
        req: &ChatRequest,
        latency_sensitive: bool,
    ) -> Result<Answered, ChainError> {
        let timeout = Duration::from_millis(self.settings.attempt_timeout_ms);
        let mut attempts = Vec::new();
        let allowed = self.admit(chain, latency_sensitive, &mut attempts);
        for member in allowed {
            let m = &chain[member];
            let Some(provider) = self.providers.get(&m.provider) else {
                attempts.push(Attempt {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    outcome: "provider not configured".into(),
                    latency_ms: 0,
                });
                continue;
            };
            let mut retry = 0;
            loop {
                let start = Instant::now();
                let result = provider.complete(&self.http, &m.model, req, timeout).await;
                let elapsed = start.elapsed();
                let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                let outcome = match &result {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                attempts.push(Attempt {
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    outcome,
                    latency_ms,
                });
                self.record(
                    &m.provider,
                    &m.model,
                    result.is_ok(),
                    matches!(&result, Err(e) if e.is_final()),
                    elapsed,
                );
                match result {
                    Ok(response) => {
                        return Ok(Answered {
                            response,
                            member,
                            attempts,
                        });
                    }
                    Err(e) if e.is_final() => {
                        return Err(ChainError::Invalid {
                            provider: m.provider.clone(),
                            model: m.model.clone(),
                            error: e,
                            attempts,
                        });
                    }
                    Err(e)
                        if e.is_retryable()
                            && retry < self.settings.max_retries
                            && !self.is_open(&m.provider) =>
                    {
                        let Some(wait) = self.backoff(retry, &e) else {
                            break;
                        };
                        tracing::debug!(provider = %m.provider, model = %m.model, error = %e, ?wait, "retrying");
                        tokio::time::sleep(wait).await;
                        retry += 1;
                    }
                    Err(e) => {
                        tracing::warn!(provider = %m.provider, model = %m.model, error = %e, "moving on to the next member");
                        break;
                    }
                }
            }
        }
        Err(ChainError::Exhausted(attempts))
    }
}
