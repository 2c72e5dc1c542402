//! The application core: route, complete, stream, record an outcome, reload, stats. Every door
//! (gRPC, the OpenAI- and Anthropic-compatible HTTP doors) parses its input, calls one of these
//! and converts the answer; no orchestration lives anywhere else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::chain::{Attempt, Gateway, MemberHealth};
use crate::config::Config;
use crate::engine::{Decision, Engine, RouteInput};
use crate::error::Error;
use crate::feedback::{DecisionRecord, Feedback, KnobsRecord, OutcomeRecord, Stored, now_ms};
use crate::providers::{ChatRequest, ChatResponse, ToolCall};

/// The router and gateway behind every front door.
#[derive(Debug, Clone)]
pub struct Triage {
    engine: Arc<Engine>,
    feedback: Option<Arc<Feedback>>,
    gateway: Option<Arc<Gateway>>,
    /// One reload at a time: a slow one (up to `model.reload_timeout_ms`) holds it, so
    /// callers cannot pile reads up on the blocking pool.
    reloading: Arc<tokio::sync::Mutex<()>>,
    admission: Arc<crate::admission::Admission>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A completed unary call.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The routing decision behind it.
    pub decision: Decision,
    /// Who answered.
    pub provider: String,
    /// Which model.
    pub model: String,
    /// The answer.
    pub response: ChatResponse,
    /// Its cost at the tier's prices.
    pub cost_usd: f64,
    /// Every attempt, the successful one last.
    pub attempts: Vec<Attempt>,
}

/// The end of a stream that finished.
#[derive(Debug, Clone)]
pub struct StreamDone {
    /// Who answered.
    pub provider: String,
    /// Which model.
    pub model: String,
    /// stop, length, tool_calls, ...
    pub finish_reason: String,
    /// Input tokens as reported.
    pub input_tokens: u64,
    /// Output tokens as reported.
    pub output_tokens: u64,
    /// Its cost at the tier's prices.
    pub cost_usd: f64,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// Tool calls, whole.
    pub tool_calls: Vec<ToolCall>,
}

/// One piece of a streamed answer, in order: text, then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum Piece {
    /// Text to pass on.
    Text(String),
    /// The answer finished.
    Done(StreamDone),
    /// The answer could not be given or broke off.
    Failed(Error),
}

/// What `Stats` shows.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// The serving model's version.
    pub model_version: String,
    /// Breakers and latency estimates.
    pub providers: Vec<MemberHealth>,
    /// Decision log counters, when feedback is on.
    pub feedback: Option<FeedbackStats>,
}

/// Decision log counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedbackStats {
    /// Decisions written.
    pub decisions_written: u64,
    /// Decisions dropped (queue full).
    pub decisions_dropped: u64,
    /// Outcomes stored.
    pub outcomes_stored: u64,
    /// Outcomes that repeated a (decision, source) pair.
    pub outcomes_duplicate: u64,
    /// Outcomes whose decision was not found.
    pub outcomes_orphan: u64,
    /// Records that failed to write.
    pub write_errors: u64,
    /// Of those, records refused by a full (or read-only) disk.
    pub out_of_space: u64,
    /// Decisions removed to keep the store under its size cap.
    pub decisions_capped: u64,
}

impl Triage {
    /// The core over an engine; with `feedback`, decisions are logged and outcomes accepted;
    /// with `gateway`, completions call providers.
    pub fn new(
        engine: Arc<Engine>,
        feedback: Option<Arc<Feedback>>,
        gateway: Option<Arc<Gateway>>,
    ) -> Self {
        Self {
            feedback,
            gateway,
            reloading: Arc::default(),
            admission: Arc::new(crate::admission::Admission::new(&engine.config().server)),
            draining: Arc::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(&engine.config().tier_names())),
            engine,
        }
    }

    /// Checks the caller's token for a call of `scope` (every door calls this first). With no
    /// tokens configured everyone is let through and the identity is `None`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        scope: crate::auth::Scope,
    ) -> Result<Option<crate::auth::Identity>, Error> {
        self.config().auth.check(token, scope).map_err(|e| {
            tracing::info!(refused = %e, ?scope, "call refused");
            self.metrics.refused(match e {
                crate::auth::AuthError::Unauthenticated => "unauthenticated",
                crate::auth::AuthError::Forbidden => "forbidden",
            });
            Error::from(e)
        })
    }

    /// The Prometheus exposition of every metric.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self)
    }

    /// Shutdown has begun: readiness turns false so balancers stop sending new calls.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ready for traffic: a model is loaded and shutdown has not begun.
    pub fn ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The load-shedding gates (for metrics, and for the gRPC layer that admits before reading).
    pub fn admission(&self) -> &Arc<crate::admission::Admission> {
        &self.admission
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The engine (for doors that show tiers or markers).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The deadline of a completion: the caller's, capped by `gateway.call_timeout_ms`.
    pub fn call_deadline(&self, caller: Option<Duration>) -> Instant {
        let cap = self.config().gateway.call_timeout;
        Instant::now() + caller.map_or(cap, |c| c.min(cap))
    }

    /// The slot a door already took (the gRPC door admits before decoding), or one taken now.
    async fn slot(
        &self,
        class: crate::admission::Class,
        admitted: Option<crate::admission::Permit>,
    ) -> Result<crate::admission::Permit, Error> {
        match admitted {
            Some(p) => Ok(p),
            None => self.admission.gate(class).admit().await,
        }
    }

    /// Routes one request (off the async workers for large ones) and logs the decision;
    /// `admitted` is a slot the door took before reading the request, if it did.
    pub async fn route(
        &self,
        input: RouteInput,
        admitted: Option<crate::admission::Permit>,
    ) -> Result<(Decision, RouteInput), Error> {
        let _slot = self.slot(crate::admission::Class::Route, admitted).await?;
        self.route_admitted(input).await
    }

    async fn route_admitted(&self, input: RouteInput) -> Result<(Decision, RouteInput), Error> {
        let started = Instant::now();
        let bytes = input.prompt.len() + input.context.iter().map(String::len).sum::<usize>();
        // Featurizing is CPU work proportional to the text: large requests go to the blocking
        // pool so they cannot stall the async workers that serve everyone else.
        let (decision, input) = if bytes >= self.config().server.blocking_threshold_bytes {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || (engine.route(&input), input))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
        } else {
            (self.engine.route(&input), input)
        };
        let mut decision = decision?;
        self.metrics.decision(
            decision.tier,
            decision.explored,
            started.elapsed().as_secs_f64(),
        );
        if let Some(fb) = &self.feedback {
            fb.log_decision(decision_record(
                &mut decision,
                &input,
                self.config(),
                fb.store_prompts,
            ));
        }
        tracing::debug!(
            decision_id = %decision.decision_id,
            tier = %decision.tier_name,
            prompt_tokens = decision.prompt_tokens,
            "routed"
        );
        Ok((decision, input))
    }

    fn gateway(&self) -> Result<Arc<Gateway>, Error> {
        self.gateway.clone().ok_or(Error::NoGateway)
    }

    /// Routes, then calls the chosen tier's chain until a member answers or `deadline`.
    pub async fn complete(
        &self,
        input: RouteInput,
        chat: ChatRequest,
        deadline: Instant,
        admitted: Option<crate::admission::Permit>,
    ) -> Result<Completion, Error> {
        let gateway = self.gateway()?;
        let _slot = self
            .slot(crate::admission::Class::Complete, admitted)
            .await?;
        let (decision, input) = self.route_admitted(input).await?;
        let tier = &self.config().tiers[decision.tier];
        let result = gateway
            .run(
                &decision.chain,
                &chat,
                input.knobs.latency_sensitive,
                deadline,
            )
            .await;
        let id = decision.decision_id.to_string();
        match result {
            Ok(a) => {
                self.metrics.completion(&a.attempts, None);
                let cost = tier.cost_usd(a.response.input_tokens, a.response.output_tokens);
                let latency: u64 = a.attempts.iter().map(|x| x.latency_ms).sum();
                self.record_call(
                    id,
                    latency,
                    Some((a.response.input_tokens, a.response.output_tokens)),
                    cost,
                    None,
                );
                let member = &decision.chain[a.member];
                Ok(Completion {
                    provider: member.provider.clone(),
                    model: member.model.clone(),
                    response: a.response,
                    cost_usd: cost,
                    attempts: a.attempts,
                    decision,
                })
            }
            Err(e) => {
                self.metrics.completion(e.attempts(), Some(e.class()));
                let latency: u64 = e.attempts().iter().map(|x| x.latency_ms).sum();
                self.record_call(id, latency, None, 0.0, Some(e.class()));
                Err(e.into())
            }
        }
    }

    /// Routes, then streams the chosen tier's chain: the decision at once, the pieces as
    /// they come. Dropping the receiver cancels the upstream call.
    pub async fn complete_stream(
        &self,
        input: RouteInput,
        chat: ChatRequest,
        deadline: Instant,
        admitted: Option<crate::admission::Permit>,
    ) -> Result<(Decision, tokio::sync::mpsc::Receiver<Piece>), Error> {
        let gateway = self.gateway()?;
        let slot = self
            .slot(crate::admission::Class::Complete, admitted)
            .await?;
        let (decision, input) = self.route_admitted(input).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(64);
        let this = self.clone();
        let chain = decision.chain.clone();
        let tier = decision.tier;
        let id = decision.decision_id.to_string();
        tokio::spawn(async move {
            // The slot is held for as long as the stream runs.
            let _slot = slot;
            // Text goes straight to the door; the gateway sees the door leave through it.
            let (text_tx, mut text_rx) = tokio::sync::mpsc::channel::<String>(64);
            let forward = {
                let tx = tx.clone();
                async move {
                    while let Some(t) = text_rx.recv().await {
                        if tx.send(Piece::Text(t)).await.is_err() {
                            break;
                        }
                    }
                }
            };
            let run = async {
                let r = gateway
                    .run_stream(
                        &chain,
                        &chat,
                        input.knobs.latency_sensitive,
                        deadline,
                        &text_tx,
                    )
                    .await;
                drop(text_tx);
                r
            };
            let (result, ()) = tokio::join!(run, forward);
            let last = match result {
                Ok(s) => {
                    this.metrics.completion(&s.attempts, None);
                    let cost = this.config().tiers[tier].cost_usd(s.input_tokens, s.output_tokens);
                    let latency: u64 = s.attempts.iter().map(|a| a.latency_ms).sum();
                    this.record_call(
                        id,
                        latency,
                        Some((s.input_tokens, s.output_tokens)),
                        cost,
                        None,
                    );
                    let member = &chain[s.member];
                    Piece::Done(StreamDone {
                        provider: member.provider.clone(),
                        model: member.model.clone(),
                        finish_reason: s.finish_reason,
                        input_tokens: s.input_tokens,
                        output_tokens: s.output_tokens,
                        cost_usd: cost,
                        attempts: s.attempts,
                        tool_calls: s.tool_calls,
                    })
                }
                Err(e) => {
                    let e = Error::from(e);
                    this.metrics.completion(&[], Some(e.class()));
                    this.record_call(id, 0, None, 0.0, Some(e.class()));
                    Piece::Failed(e)
                }
            };
            let _ = tx.send(last).await;
        });
        Ok((decision, rx))
    }

    /// Stores a validated outcome; answers once it is durable.
    pub async fn record_outcome(
        &self,
        record: OutcomeRecord,
        admitted: Option<crate::admission::Permit>,
    ) -> Result<Stored, Error> {
        let fb = self.feedback.as_ref().ok_or(Error::FeedbackDisabled)?;
        let _slot = self.slot(crate::admission::Class::Route, admitted).await?;
        let source = record.source.clone();
        let stored = fb.record_outcome(record).await.map_err(|e| {
            Error::Unavailable(if e.out_of_space {
                "outcome not recorded: the feedback store's disk is full; retry once space returns"
                    .into()
            } else {
                format!("outcome not recorded, retry: {e}")
            })
        })?;
        let result = match (stored.duplicate, stored.orphan) {
            (true, _) => "duplicate",
            (false, true) => "orphan",
            (false, false) => "stored",
        };
        self.metrics.outcome(&source, result);
        Ok(stored)
    }

    /// Streams the decision log as `triage logs export` writes it (decisions at or after
    /// `since_ms` with their outcomes, then orphan outcomes), read from the live store on the
    /// blocking pool, so it works while the server runs. Chunks of about 64 KiB; the read
    /// stops as soon as the receiver is dropped (the caller went away).
    pub fn export_log(
        &self,
        since_ms: Option<u64>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>, Error> {
        let fb = self.feedback.clone().ok_or(Error::FeedbackDisabled)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(EXPORT_CHUNK),
            };
            let result = fb
                .store()
                .export(since_ms, &mut out)
                .map(|_| ())
                .and_then(|()| std::io::Write::flush(&mut out).map_err(Into::into));
            if let Err(e) = result {
                // The receiver may be gone already; then nobody is waiting for the error.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        Ok(rx)
    }

    /// Replaces the classifier with the file at `path` (the configured one when `None`); on
    /// any error the old model keeps serving. A caller's path must name a regular file of at
    /// most `model.max_model_bytes` inside `model.reload_dirs`; the read runs on the blocking
    /// pool and is abandoned after `model.reload_timeout_ms`.
    pub async fn reload(&self, path: Option<PathBuf>) -> Result<String, Error> {
        let guard = self.reloading.clone().try_lock_owned().map_err(|_| {
            Error::Unavailable("a model reload is already running; retry when it ends".into())
        })?;
        let model = &self.config().model;
        let limit = model.reload_timeout;
        let engine = self.engine.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let config = engine.config();
            let model = &config.model;
            let (path, bytes) = match path {
                None => {
                    let p = model.classifier.clone();
                    let bytes = crate::files::read_regular(&p, model.max_model_bytes)
                        .map_err(|e| Error::Reload(format!("{}: {e}", p.display())))?;
                    (p, bytes)
                }
                Some(p) => crate::files::read_confined(
                    &p,
                    &model.allowed_reload_dirs(),
                    model.max_model_bytes,
                )
                .map_err(|e| {
                    Error::Request(crate::error::RequestError::invalid("path", e.to_string()))
                })?,
            };
            let version = engine
                .store()
                .reload_bytes(config, &path, &bytes)
                .map_err(|e| Error::Reload(e.to_string()))?;
            tracing::info!(model_version = %version, path = %path.display(), "model reloaded");
            Ok(version)
        });
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Error::Internal(format!("reload task: {e}"))),
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "model not reloaded within model.reload_timeout_ms ({} ms); the old one keeps serving",
                limit.as_millis()
            ))),
        }
    }

    /// The serving model, the providers' health and the decision log's counters.
    pub fn stats(&self) -> Stats {
        use std::sync::atomic::Ordering::Relaxed;
        Stats {
            model_version: self
                .engine
                .store()
                .current()
                .classifier
                .version()
                .to_string(),
            providers: self
                .gateway
                .as_ref()
                .map(|g| g.health())
                .unwrap_or_default(),
            feedback: self.feedback.as_ref().map(|fb| {
                let c = fb.counters();
                FeedbackStats {
                    decisions_written: c.decisions_written.load(Relaxed),
                    decisions_dropped: c.decisions_dropped.load(Relaxed),
                    outcomes_stored: c.outcomes_stored.load(Relaxed),
                    outcomes_duplicate: c.outcomes_duplicate.load(Relaxed),
                    outcomes_orphan: c.outcomes_orphan.load(Relaxed),
                    write_errors: c.write_errors.load(Relaxed),
                    out_of_space: c.out_of_space.load(Relaxed),
                    decisions_capped: c.decisions_capped.load(Relaxed),
                }
            }),
        }
    }

    /// Records a gateway call's facts as an outcome, off the caller's path.
    fn record_call(
        &self,
        decision_id: String,
        latency_ms: u64,
        tokens: Option<(u64, u64)>,
        cost: f64,
        error_class: Option<&str>,
    ) {
        let Some(fb) = &self.feedback else { return };
        // The call's facts, not a quality judgement: success and quality stay unset so that
        // training does not mistake "answered" for "good enough".
        let record = OutcomeRecord {
            decision_id,
            source: "gateway".into(),
            latency_ms: Some(latency_ms),
            input_tokens: tokens.map(|t| t.0),
            output_tokens: tokens.map(|t| t.1),
            cost_usd: Some(cost),
            error_class: error_class.map(String::from),
            observed_at_unix_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
            recorded_at_unix_ms: now_ms(),
            ..OutcomeRecord::default()
        };
        fb.log_call(record);
    }
}

/// The decision's log record; takes the feature vector rather than copy it.
fn decision_record(
    d: &mut Decision,
    input: &RouteInput,
    config: &Config,
    store_prompt: bool,
) -> DecisionRecord {
    let name = |i: Option<usize>| i.map(|i| config.tiers[i].name.clone());
    let digest = Sha256::digest(input.prompt.as_bytes());
    DecisionRecord {
        decision_id: d.decision_id.to_string(),
        time_unix_ms: now_ms(),
        model_version: d.model_version.clone(),
        tiers: d.tiers.iter().map(|(n, _)| n.clone()).collect(),
        tier: d.tier_name.clone(),
        p_sufficient: d.tiers.iter().map(|(_, v)| v.p_sufficient).collect(),
        propensity: d.propensity,
        schema_fingerprint: d.schema_fingerprint.clone(),
        knobs: KnobsRecord {
            min_tier: name(input.knobs.min_tier),
            max_tier: name(input.knobs.max_tier),
            max_cost_usd: input.knobs.max_cost_usd,
            latency_sensitive: input.knobs.latency_sensitive,
            quality_target: input.knobs.quality_target,
        },
        tenant: input.tenant.clone(),
        labels: input.labels.clone(),
        features: std::mem::take(&mut d.features),
        prompt_tokens: d.prompt_tokens,
        context_tokens: d.context_tokens,
        estimated_cost_usd: d.estimated_cost_usd,
        prompt_sha256: crate::feedback::hex(&digest),
        prompt: store_prompt.then(|| input.prompt.clone()),
    }
}

/// Bytes per chunk of a streamed export.
const EXPORT_CHUNK: usize = 64 * 1024;

/// A blocking writer into a bounded channel: backpressure from a slow reader blocks the export
/// thread, and a dropped reader ends it with an error.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader went away")
        })
    }
}
