//! Running a tier's chain of models in order: per-attempt deadlines, bounded retries with
//! backoff and jitter, Retry-After, and every attempt's outcome collected.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// Calls providers for chains.
#[derive(Debug, Clone)]
pub struct Gateway {
    http: reqwest::Client,
    providers: HashMap<String, Provider>,
    settings: RawGateway,
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
        Ok(Some(Self {
            http,
            providers: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            settings: config.gateway.clone(),
        }))
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

    /// Tries `chain` in order until a member answers.
    pub async fn run(
        &self,
        chain: &[RawModelRef],
        req: &ChatRequest,
    ) -> Result<Answered, ChainError> {
        let timeout = Duration::from_millis(self.settings.attempt_timeout_ms);
        let mut attempts = Vec::new();
        for (member, m) in chain.iter().enumerate() {
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
                let latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
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
                    Err(e) if e.is_retryable() && retry < self.settings.max_retries => {
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
