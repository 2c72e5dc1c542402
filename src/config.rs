//! The TOML configuration: raw structs as written, then a validated [`Config`] with dotted-path errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::LoadError;

/// The configuration shipped with triage and used when no `--config` is given.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../triage.toml");

/// The whole file as written. Unknown keys are refused so that typos do not pass silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`
    #[serde(default)]
    pub server: RawServer,
    /// `[model]`
    #[serde(default)]
    pub model: RawModel,
    /// `[policy]`
    #[serde(default)]
    pub policy: RawPolicy,
    /// `[feedback]`
    #[serde(default)]
    pub feedback: RawFeedback,
    /// `[[tiers]]`, cheapest first.
    #[serde(default)]
    pub tiers: Vec<RawTier>,
    /// `[providers.NAME]`: where chain members are called (needed only for `Complete`).
    #[serde(default)]
    pub providers: std::collections::BTreeMap<String, RawProvider>,
    /// `[gateway]`: timeouts and retries for provider calls.
    #[serde(default)]
    pub gateway: RawGateway,
    /// `[auth]`: bearer tokens for clients and admins.
    #[serde(default)]
    pub auth: RawAuth,
}

/// `[auth]`: who may call. With no tokens every call is let through, which is only allowed on
/// loopback addresses unless `allow_unauthenticated` says otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Tokens for route, complete and outcome calls; several allow rotation, and each one's
    /// name becomes the tenant of decisions that name none.
    pub tokens: Vec<RawToken>,
    /// Tokens for ReloadModel, Stats and `/metrics` (also accepted for client calls).
    pub admin_tokens: Vec<RawToken>,
    /// Serve a non-loopback address without tokens.
    pub allow_unauthenticated: bool,
}

/// One named token, read from an environment variable or a file (never written in the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// Shown in logs and used as the default tenant.
    pub name: String,
    /// Environment variable holding the token.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the token (a regular file of at most 4 KiB; surrounding whitespace is trimmed).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl RawAuth {
    fn validate(&self, base: Option<&Path>, errors: &mut Vec<String>) -> crate::auth::Auth {
        let load = |key: &str, list: &[RawToken], errors: &mut Vec<String>| {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let at = format!("auth.{key}[{i}]");
                if t.name.trim().is_empty() {
                    errors.push(format!("{at}.name: must not be empty"));
                }
                let secret = match (&t.env, &t.file) {
                    (Some(var), None) => match std::env::var(var) {
                        Ok(v) => v,
                        Err(_) => {
                            errors.push(format!("{at}.env: environment variable {var} is not set"));
                            continue;
                        }
                    },
                    (None, Some(file)) => {
                        let path = match base {
                            Some(b) if file.is_relative() => b.join(file),
                            _ => file.clone(),
                        };
                        match crate::files::read_regular(&path, 4096) {
                            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                            Err(e) => {
                                errors.push(format!(
                                    "{at}.file: cannot read {}: {e}",
                                    path.display()
                                ));
                                continue;
                            }
                        }
                    }
                    _ => {
                        errors.push(format!("{at}: set exactly one of env or file"));
                        continue;
                    }
                };
                match crate::auth::Token::new(t.name.trim(), &secret) {
                    Some(token) => out.push(token),
                    None => errors.push(format!(
                        "{at}: the token must be at least {} bytes",
                        crate::auth::MIN_TOKEN_BYTES
                    )),
                }
            }
            out
        };
        crate::auth::Auth {
            clients: load("tokens", &self.tokens, errors),
            admins: load("admin_tokens", &self.admin_tokens, errors),
            allow_unauthenticated: self.allow_unauthenticated,
        }
    }
}

/// `[providers.NAME]`: one provider endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Wire format: `openai` (any OpenAI-compatible API) or `anthropic`.
    pub kind: crate::providers::Kind,
    /// Base URL; `${VAR}` and `${VAR:-default}` are replaced from the environment.
    pub base_url: String,
    /// Name of the environment variable that holds the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// `[gateway]`: how chains are run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGateway {
    /// Deadline of a whole `Complete` / `CompleteStream` / HTTP completion, every attempt,
    /// retry and fallback included, in milliseconds; a caller's shorter deadline (gRPC's
    /// `grpc-timeout`) wins. For a stream it bounds the whole stream.
    pub call_timeout_ms: u64,
    /// Deadline of one provider attempt, in milliseconds (at most `call_timeout_ms`). An
    /// attempt also gets at most an equal share of what is left of the call for the members
    /// not yet tried, so a hanging member leaves time for the next one.
    pub attempt_timeout_ms: u64,
    /// A streaming attempt that has sent no content (text or a finished answer) this long
    /// after it started is abandoned for the next member; keep-alives and empty deltas do not
    /// count. Milliseconds, at most `attempt_timeout_ms`.
    pub first_content_timeout_ms: u64,
    /// Retries of the same member after a retryable failure (timeout, connection, 429, 5xx).
    pub max_retries: u32,
    /// First backoff before a retry, in milliseconds; doubles each retry, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest backoff, in milliseconds.
    pub backoff_max_ms: u64,
    /// A 429's Retry-After is honoured up to this many milliseconds; longer means move on.
    pub max_retry_after_ms: u64,
    /// A provider's breaker opens when at least this share of its recent calls failed...
    pub breaker_failure_rate: f64,
    /// ...among its last this many calls...
    pub breaker_window: usize,
    /// ...once it has seen at least this many.
    pub breaker_min_calls: usize,
    /// How long an open breaker keeps the provider out before one probe call, in milliseconds.
    pub breaker_cooldown_ms: u64,
    /// Weight of the newest latency in the per-model moving average, in (0, 1].
    pub latency_ewma_alpha: f64,
}

impl Default for RawGateway {
    fn default() -> Self {
        Self {
            call_timeout_ms: 60_000,
            attempt_timeout_ms: 20_000,
            first_content_timeout_ms: 10_000,
            max_retries: 1,
            backoff_initial_ms: 100,
            backoff_max_ms: 2_000,
            max_retry_after_ms: 5_000,
            breaker_failure_rate: 0.5,
            breaker_window: 20,
            breaker_min_calls: 5,
            breaker_cooldown_ms: 30_000,
            latency_ewma_alpha: 0.2,
        }
    }
}

/// Validated `[gateway]`, with durations as [`Duration`](std::time::Duration)s.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Deadline of a whole completion.
    pub call_timeout: std::time::Duration,
    /// Deadline of one provider attempt.
    pub attempt_timeout: std::time::Duration,
    /// A streaming attempt with no content by then is abandoned.
    pub first_content_timeout: std::time::Duration,
    /// Retries of the same member after a retryable failure.
    pub max_retries: u32,
    /// First backoff before a retry.
    pub backoff_initial: std::time::Duration,
    /// Longest backoff.
    pub backoff_max: std::time::Duration,
    /// Longest Retry-After honoured.
    pub max_retry_after: std::time::Duration,
    /// Failure share that opens a breaker, in (0, 1].
    pub breaker_failure_rate: f64,
    /// Calls a breaker remembers.
    pub breaker_window: usize,
    /// Calls a breaker needs before it may open.
    pub breaker_min_calls: usize,
    /// How long an open breaker keeps a provider out.
    pub breaker_cooldown: std::time::Duration,
    /// Weight of the newest latency, in (0, 1].
    pub latency_ewma_alpha: f64,
}

impl RawGateway {
    fn validate(&self, errors: &mut Vec<String>) -> GatewayConfig {
        let g = self;
        if g.attempt_timeout_ms == 0 {
            errors.push("gateway.attempt_timeout_ms: must be at least 1".into());
        }
        if g.attempt_timeout_ms > g.call_timeout_ms {
            errors.push(format!(
                "gateway.attempt_timeout_ms: must not exceed gateway.call_timeout_ms ({}), got {}",
                g.call_timeout_ms, g.attempt_timeout_ms
            ));
        }
        if g.first_content_timeout_ms == 0 || g.first_content_timeout_ms > g.attempt_timeout_ms {
            errors.push(format!(
                "gateway.first_content_timeout_ms: must be between 1 and gateway.attempt_timeout_ms ({}), got {}",
                g.attempt_timeout_ms, g.first_content_timeout_ms
            ));
        }
        if g.backoff_initial_ms > g.backoff_max_ms {
            errors.push(format!(
                "gateway.backoff_initial_ms: must not exceed gateway.backoff_max_ms ({}), got {}",
                g.backoff_max_ms, g.backoff_initial_ms
            ));
        }
        if !(g.breaker_failure_rate > 0.0 && g.breaker_failure_rate <= 1.0) {
            errors.push(format!(
                "gateway.breaker_failure_rate: must be in (0, 1], got {}",
                g.breaker_failure_rate
            ));
        }
        if g.breaker_window == 0
            || g.breaker_min_calls == 0
            || g.breaker_min_calls > g.breaker_window
        {
            errors.push(format!(
                "gateway.breaker_min_calls: must be between 1 and gateway.breaker_window ({}), got {}",
                g.breaker_window, g.breaker_min_calls
            ));
        }
        if !(g.latency_ewma_alpha > 0.0 && g.latency_ewma_alpha <= 1.0) {
            errors.push(format!(
                "gateway.latency_ewma_alpha: must be in (0, 1], got {}",
                g.latency_ewma_alpha
            ));
        }
        let ms = std::time::Duration::from_millis;
        GatewayConfig {
            call_timeout: ms(g.call_timeout_ms),
            attempt_timeout: ms(g.attempt_timeout_ms),
            first_content_timeout: ms(g.first_content_timeout_ms),
            max_retries: g.max_retries,
            backoff_initial: ms(g.backoff_initial_ms),
            backoff_max: ms(g.backoff_max_ms),
            max_retry_after: ms(g.max_retry_after_ms),
            breaker_failure_rate: g.breaker_failure_rate,
            breaker_window: g.breaker_window,
            breaker_min_calls: g.breaker_min_calls,
            breaker_cooldown: ms(g.breaker_cooldown_ms),
            latency_ewma_alpha: g.latency_ewma_alpha,
        }
    }
}

/// A default model path: relative to the working directory when it exists there (a checkout
/// or an install that ships `models/`), else in the source tree this binary was built from
/// (`cargo run` from anywhere), else as given, so the error names the path looked for.
pub fn shipped_path(p: &Path) -> PathBuf {
    if p.exists() {
        return p.to_path_buf();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    if built.exists() {
        built
    } else {
        p.to_path_buf()
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in `s` from the environment.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `[server]`: the listener and the request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// gRPC listen address.
    pub addr: String,
    /// Largest routed prompt (the last user message), in bytes.
    pub max_prompt_bytes: usize,
    /// Largest conversation, in messages.
    pub max_messages: usize,
    /// Most tool definitions in one `Complete` request.
    pub max_tools: usize,
    /// Largest encoded gRPC request, in bytes.
    pub max_request_bytes: usize,
    /// Largest `request_id`, in bytes.
    pub max_request_id_bytes: usize,
    /// Deadline for one request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests handled at once per connection.
    pub concurrency_limit_per_connection: usize,
    /// Prompts at least this long (bytes) are featurized on the blocking pool so that one
    /// huge prompt cannot stall the async workers.
    pub blocking_threshold_bytes: usize,
    /// Threads of that blocking pool: featurizing is CPU-bound, so more threads than cores
    /// only add memory (each holds a huge prompt's token buffers).
    pub max_blocking_threads: usize,
    /// Route and outcome calls in flight at once, over every door; beyond it (and the queue)
    /// callers get `RESOURCE_EXHAUSTED` / 429 with `Retry-After`. The gRPC door admits before
    /// reading the body, so this also bounds the request bodies held at once.
    pub max_in_flight_routes: usize,
    /// Completions (unary and streamed) in flight at once, over every door.
    pub max_in_flight_completions: usize,
    /// Calls of each kind that may wait for a slot; beyond this they are refused at once.
    pub max_queued: usize,
    /// How long a queued call waits for a slot, in milliseconds.
    pub queue_timeout_ms: u64,
    /// An HTTP connection that has not sent a whole request head this long after it opened
    /// (or after its last response, when kept alive) is closed, in milliseconds.
    pub header_timeout_ms: u64,
    /// An HTTP request body not received in full this long after its head, in milliseconds,
    /// is answered 408 and the connection closed; a bounded gRPC call's body not received this
    /// long after admission is answered `DEADLINE_EXCEEDED`.
    pub body_timeout_ms: u64,
    /// Open connections at once on each door (gRPC and HTTP counted apart); more wait in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// On SIGTERM, in-flight calls get this long to finish before the server stops anyway,
    /// in milliseconds.
    pub drain_timeout_ms: u64,
    /// PEM certificate chain: with `tls_key`, both doors speak TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate they signed.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            max_prompt_bytes: 1 << 20,
            max_messages: 1024,
            max_tools: 128,
            max_request_bytes: 4 << 20,
            max_request_id_bytes: 256,
            request_timeout_ms: 5_000,
            concurrency_limit_per_connection: 256,
            blocking_threshold_bytes: 32 << 10,
            max_blocking_threads: 8,
            max_in_flight_routes: 256,
            max_in_flight_completions: 1_024,
            max_queued: 128,
            queue_timeout_ms: 200,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 10_000,
            drain_timeout_ms: 15_000,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// `[model]`: where the classifier and the embedding model live, and how reloads are bounded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModel {
    /// The classifier model file written by `triage train`.
    pub classifier: PathBuf,
    /// Directory with `tokenizer.json`, `model.safetensors` and `config.json` (model2vec format).
    pub embeddings: PathBuf,
    /// How often `serve` checks the classifier file for changes and reloads it; 0 disables.
    pub watch_interval_ms: u64,
    /// Directories `ReloadModel` may read a model file from; empty means the classifier's own
    /// directory. A bare file name is looked up in the first one.
    pub reload_dirs: Vec<PathBuf>,
    /// Largest model file read at start or on reload, in bytes.
    pub max_model_bytes: u64,
    /// How long one reload may take (read, parse, validate), in milliseconds.
    pub reload_timeout_ms: u64,
}

impl Default for RawModel {
    fn default() -> Self {
        Self {
            classifier: PathBuf::from("models/classifier.json"),
            embeddings: PathBuf::from("models/embeddings"),
            watch_interval_ms: 2_000,
            reload_dirs: Vec::new(),
            max_model_bytes: 64 << 20,
            reload_timeout_ms: 10_000,
        }
    }
}

impl RawModel {
    fn validate(self, errors: &mut Vec<String>) -> ModelConfig {
        if self.max_model_bytes == 0 {
            errors.push("model.max_model_bytes: must be at least 1".into());
        }
        if self.reload_timeout_ms == 0 {
            errors.push("model.reload_timeout_ms: must be at least 1".into());
        }
        ModelConfig {
            classifier: self.classifier,
            embeddings: self.embeddings,
            watch_interval: (self.watch_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(self.watch_interval_ms)),
            reload_dirs: self.reload_dirs,
            max_model_bytes: self.max_model_bytes,
            reload_timeout: std::time::Duration::from_millis(self.reload_timeout_ms),
        }
    }
}

/// Validated `[model]`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The classifier model file.
    pub classifier: PathBuf,
    /// The model2vec directory.
    pub embeddings: PathBuf,
    /// How often the classifier file is checked for changes; `None` disables the watch.
    pub watch_interval: Option<std::time::Duration>,
    /// Directories reloads may read from, as configured (see [`Self::allowed_reload_dirs`]).
    pub reload_dirs: Vec<PathBuf>,
    /// Largest model file, in bytes.
    pub max_model_bytes: u64,
    /// Longest one reload may take.
    pub reload_timeout: std::time::Duration,
}

impl ModelConfig {
    /// Where `ReloadModel` may read from: the configured directories, else the classifier's.
    pub fn allowed_reload_dirs(&self) -> Vec<PathBuf> {
        if !self.reload_dirs.is_empty() {
            return self.reload_dirs.clone();
        }
        let parent = self
            .classifier
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        vec![parent.to_path_buf()]
    }
}

/// Smallest `feedback.cache_bytes`: below it sled evicts the index nodes every write needs.
const MIN_CACHE_BYTES: u64 = 1 << 20;

/// `[feedback]`: the decision log and outcomes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFeedback {
    /// Log decisions and accept `RecordOutcome`.
    pub enabled: bool,
    /// Directory of the sled store (relative to the working directory).
    pub data_dir: PathBuf,
    /// Keep the routed prompt's text in the log (otherwise only its SHA-256).
    pub store_prompts: bool,
    /// How long stored prompt texts are kept, in hours.
    pub prompt_retention_hours: u64,
    /// How long decisions (and their outcomes) are kept, in days; 0 keeps them for ever.
    pub decision_retention_days: u64,
    /// Bytes on disk beyond which the oldest decisions are removed; 0 sets no cap.
    pub max_store_bytes: u64,
    /// Memory for the store's page cache, in bytes.
    pub cache_bytes: u64,
    /// Decisions waiting to be written; beyond this they are dropped and counted.
    pub decision_queue: usize,
    /// Outcomes waiting to be written; beyond this `RecordOutcome` callers wait.
    pub outcome_queue: usize,
    /// Most records per write batch (and per flush for outcomes).
    pub batch: usize,
    /// How far in the future an outcome's `observed_at_unix_ms` may be, in milliseconds.
    pub max_clock_skew_ms: u64,
    /// Most labels on a request or an outcome.
    pub max_labels: usize,
    /// Longest label key or value, tenant or error class, in bytes.
    pub max_label_bytes: usize,
}

impl Default for RawFeedback {
    fn default() -> Self {
        Self {
            enabled: true,
            data_dir: PathBuf::from("triage-data"),
            store_prompts: false,
            prompt_retention_hours: 168,
            decision_retention_days: 0,
            max_store_bytes: 0,
            cache_bytes: crate::feedback::DEFAULT_CACHE_BYTES,
            decision_queue: 65_536,
            outcome_queue: 65_536,
            batch: 1_024,
            max_clock_skew_ms: 300_000,
            max_labels: 32,
            max_label_bytes: 256,
        }
    }
}

/// Validated `[feedback]`, with durations as [`Duration`](std::time::Duration)s.
#[derive(Debug, Clone)]
pub struct FeedbackConfig {
    /// Log decisions and accept outcomes.
    pub enabled: bool,
    /// Directory of the sled store.
    pub data_dir: PathBuf,
    /// Keep the routed prompt's text.
    pub store_prompts: bool,
    /// How long stored prompt texts are kept.
    pub prompt_retention: std::time::Duration,
    /// How long decisions and their outcomes are kept (`None`: for ever).
    pub decision_retention: Option<std::time::Duration>,
    /// Bytes on disk beyond which the oldest decisions are removed (`None`: no cap).
    pub max_store_bytes: Option<u64>,
    /// Memory for the store's page cache, in bytes.
    pub cache_bytes: u64,
    /// Decisions waiting to be written.
    pub decision_queue: usize,
    /// Outcomes waiting to be written.
    pub outcome_queue: usize,
    /// Most records per write batch.
    pub batch: usize,
    /// How far in the future an outcome may be observed.
    pub max_clock_skew: std::time::Duration,
    /// Most labels on a request or an outcome.
    pub max_labels: usize,
    /// Longest label key or value, tenant or error class, in bytes.
    pub max_label_bytes: usize,
}

impl RawFeedback {
    fn validate(&self, errors: &mut Vec<String>) -> FeedbackConfig {
        let f = self;
        for (name, value) in [
            ("feedback.decision_queue", f.decision_queue),
            ("feedback.outcome_queue", f.outcome_queue),
            ("feedback.batch", f.batch),
            ("feedback.max_label_bytes", f.max_label_bytes),
        ] {
            if value == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        if f.cache_bytes < MIN_CACHE_BYTES {
            errors.push(format!(
                "feedback.cache_bytes: must be at least {MIN_CACHE_BYTES} (1 MiB), got {}",
                f.cache_bytes
            ));
        }
        if f.store_prompts && f.prompt_retention_hours == 0 {
            errors.push("feedback.prompt_retention_hours: must be at least 1 when feedback.store_prompts is on".into());
        }
        FeedbackConfig {
            enabled: f.enabled,
            data_dir: f.data_dir.clone(),
            store_prompts: f.store_prompts,
            prompt_retention: std::time::Duration::from_secs(
                f.prompt_retention_hours.saturating_mul(3_600),
            ),
            decision_retention: (f.decision_retention_days > 0).then(|| {
                std::time::Duration::from_secs(f.decision_retention_days.saturating_mul(86_400))
            }),
            max_store_bytes: (f.max_store_bytes > 0).then_some(f.max_store_bytes),
            cache_bytes: f.cache_bytes,
            decision_queue: f.decision_queue,
            outcome_queue: f.outcome_queue,
            batch: f.batch,
            max_clock_skew: std::time::Duration::from_millis(f.max_clock_skew_ms),
            max_labels: f.max_labels,
            max_label_bytes: f.max_label_bytes,
        }
    }
}

/// `[policy]`: how probabilities and knobs become a tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    /// Output tokens assumed when estimating a request's cost.
    pub expected_output_tokens: u32,
    /// If set, `latency_sensitive` requests never go above this tier.
    pub latency_sensitive_max_tier: Option<String>,
    /// Share of requests routed to a random eligible tier so that retraining learns what other
    /// tiers would have done; 0 disables.
    pub exploration_rate: f64,
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            expected_output_tokens: 256,
            latency_sensitive_max_tier: None,
            exploration_rate: 0.02,
        }
    }
}

/// `[[tiers]]`: one cost tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Unique name, used in requests' knobs and in the model file.
    pub name: String,
    /// Price in US dollars per million input tokens.
    pub input_usd_per_mtok: f64,
    /// Price in US dollars per million output tokens.
    pub output_usd_per_mtok: f64,
    /// Overrides the model file's threshold for this tier.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// The models serving this tier, in the order to try them.
    #[serde(default)]
    pub chain: Vec<ModelRef>,
}

/// One member of a tier's chain (validated: neither name is empty).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Provider name (e.g. `openai`, `anthropic`, `groq`).
    pub provider: String,
    /// The provider's model name.
    pub model: String,
}

/// A validated configuration. Construct it with [`Config::from_toml`] or [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener and limits.
    pub server: ServerConfig,
    /// Model files, resolved against the config file's directory.
    pub model: ModelConfig,
    /// Output tokens assumed for cost estimates.
    pub expected_output_tokens: u32,
    /// Decision log and outcomes.
    pub feedback: FeedbackConfig,
    /// Providers by name, with environment references expanded.
    pub providers: Vec<crate::providers::Provider>,
    /// Chain settings.
    pub gateway: GatewayConfig,
    /// Index of the tier that caps `latency_sensitive` requests.
    pub latency_sensitive_max_tier: Option<usize>,
    /// Share of requests routed to a random eligible tier, in [0, 1].
    pub exploration_rate: f64,
    /// Tiers, cheapest first (at least two).
    pub tiers: Vec<TierConfig>,
    /// Who may call.
    pub auth: crate::auth::Auth,
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub addr: SocketAddr,
    /// Largest routed prompt, in bytes.
    pub max_prompt_bytes: usize,
    /// Largest conversation, in messages.
    pub max_messages: usize,
    /// Most tool definitions in one request.
    pub max_tools: usize,
    /// Largest encoded request, in bytes.
    pub max_request_bytes: usize,
    /// Largest `request_id`, in bytes.
    pub max_request_id_bytes: usize,
    /// Per-request deadline.
    pub request_timeout: std::time::Duration,
    /// Requests handled at once per connection.
    pub concurrency_limit_per_connection: usize,
    /// Prompts at least this long are featurized on the blocking pool.
    pub blocking_threshold_bytes: usize,
    /// Threads of the blocking pool.
    pub max_blocking_threads: usize,
    /// Route and outcome calls in flight at once.
    pub max_in_flight_routes: usize,
    /// Completions in flight at once.
    pub max_in_flight_completions: usize,
    /// Calls of each kind that may wait for a slot.
    pub max_queued: usize,
    /// How long a queued call waits.
    pub queue_timeout: std::time::Duration,
    /// Deadline for an HTTP request head.
    pub header_timeout: std::time::Duration,
    /// Deadline for a request body (HTTP) or for an admitted gRPC call's body.
    pub body_timeout: std::time::Duration,
    /// Open connections at once, per door.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight calls.
    pub drain_timeout: std::time::Duration,
    /// TLS for both doors, when configured.
    pub tls: Option<crate::tls::TlsMaterial>,
}

/// A validated tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierConfig {
    /// Unique name.
    pub name: String,
    /// USD per million input tokens.
    pub input_usd_per_mtok: f64,
    /// USD per million output tokens.
    pub output_usd_per_mtok: f64,
    /// Threshold override, in [0, 1].
    pub threshold: Option<f64>,
    /// Models to try, in order (at least one).
    pub chain: Vec<ModelRef>,
}

impl TierConfig {
    /// Estimated cost in USD of a request with these token counts on this tier.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_usd_per_mtok
            + output_tokens as f64 * self.output_usd_per_mtok)
            / 1e6
    }
}

impl Config {
    /// The shipped defaults (three tiers), with model paths relative to the working directory.
    pub fn shipped() -> Result<Self, LoadError> {
        Self::from_toml(
            DEFAULT_CONFIG_TOML,
            Path::new("<built-in triage.toml>"),
            None,
        )
    }

    /// Reads and validates a config file. Relative model paths resolve against its directory.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        Self::from_toml(&text, path, path.parent())
    }

    /// Parses and validates TOML text; `origin` names it in errors, `base` anchors relative paths.
    pub fn from_toml(text: &str, origin: &Path, base: Option<&Path>) -> Result<Self, LoadError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| LoadError::invalid(origin, e.to_string()))?;
        let mut config = raw
            .validate_in(base)
            .map_err(|errors| LoadError::invalid(origin, errors.join("; ")))?;
        // Paths the file sets resolve against its directory; paths it leaves unset are the
        // shipped models, wherever the file lives (a config kept in /etc must still find them).
        let set = |key: &str| {
            text.parse::<toml::Table>()
                .ok()
                .and_then(|t| t.get("model")?.as_table()?.get(key).cloned())
                .is_some()
        };
        let keys = [
            ("classifier", set("classifier")),
            ("embeddings", set("embeddings")),
        ];
        for ((_, is_set), p) in keys
            .iter()
            .zip([&mut config.model.classifier, &mut config.model.embeddings])
        {
            if !p.is_relative() {
                continue;
            }
            match base.filter(|b| !b.as_os_str().is_empty()) {
                Some(base) if *is_set => *p = base.join(&*p),
                _ if !*is_set => *p = shipped_path(p),
                _ => {}
            }
        }
        if let Some(base) = base.filter(|b| !b.as_os_str().is_empty()) {
            for d in &mut config.model.reload_dirs {
                if d.is_relative() {
                    *d = base.join(&*d);
                }
            }
        }
        Ok(config)
    }

    /// Position of a tier by name.
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// Tier names, cheapest first.
    pub fn tier_names(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.name.clone()).collect()
    }
}

/// Reads the TLS files named in `[server]` (relative to the config's directory) and checks
/// that they make a usable rustls config.
fn tls_material(
    s: &RawServer,
    base: Option<&Path>,
    errors: &mut Vec<String>,
) -> Option<crate::tls::TlsMaterial> {
    let resolve = |p: &Path| match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    };
    match (&s.tls_cert, &s.tls_key) {
        (None, None) => {
            if s.tls_client_ca.is_some() {
                errors
                    .push("server.tls_client_ca: needs server.tls_cert and server.tls_key".into());
            }
            None
        }
        (Some(c), Some(k)) => {
            let ca = s.tls_client_ca.as_deref().map(resolve);
            crate::tls::TlsMaterial::read(&resolve(c), &resolve(k), ca.as_deref())
                .map_err(|e| errors.push(e))
                .ok()
        }
        _ => {
            errors.push("server.tls_cert, server.tls_key: set both or neither".into());
            None
        }
    }
}

fn check_price(errors: &mut Vec<String>, path: String, value: f64) {
    if !value.is_finite() || value < 0.0 {
        errors.push(format!("{path}: must be a finite number >= 0, got {value}"));
    }
}

impl RawConfig {
    /// Checks every field and reports every problem at once, each with its dotted path.
    pub fn validate(self) -> Result<Config, Vec<String>> {
        self.validate_in(None)
    }

    /// Like [`Self::validate`]; relative token files resolve against `base`.
    fn validate_in(self, base: Option<&Path>) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let auth = self
            .auth
            .validate(base.filter(|b| !b.as_os_str().is_empty()), &mut errors);
        let s = &self.server;
        let addr = match s.addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!(
                    "server.addr: {e} (expected host:port such as 127.0.0.1:50051), got {:?}",
                    s.addr
                ));
                None
            }
        };
        for (name, value) in [
            ("server.max_prompt_bytes", s.max_prompt_bytes),
            ("server.max_messages", s.max_messages),
            ("server.max_request_bytes", s.max_request_bytes),
            (
                "server.concurrency_limit_per_connection",
                s.concurrency_limit_per_connection,
            ),
            ("server.max_in_flight_routes", s.max_in_flight_routes),
            ("server.max_blocking_threads", s.max_blocking_threads),
            (
                "server.max_in_flight_completions",
                s.max_in_flight_completions,
            ),
            ("server.max_connections", s.max_connections),
            ("server.header_timeout_ms", s.header_timeout_ms as usize),
            ("server.body_timeout_ms", s.body_timeout_ms as usize),
        ] {
            if value == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        let rate = self.policy.exploration_rate;
        if !(0.0..=1.0).contains(&rate) {
            errors.push(format!(
                "policy.exploration_rate: must be in [0, 1], got {rate}"
            ));
        }
        let feedback = self.feedback.validate(&mut errors);
        let tls = tls_material(s, base.filter(|b| !b.as_os_str().is_empty()), &mut errors);
        if s.request_timeout_ms == 0 {
            errors.push("server.request_timeout_ms: must be at least 1".into());
        }
        if s.max_request_bytes < s.max_prompt_bytes {
            errors.push(format!(
                "server.max_request_bytes: must be at least server.max_prompt_bytes ({}), got {}",
                s.max_prompt_bytes, s.max_request_bytes
            ));
        }

        if self.tiers.len() < 2 {
            errors.push(format!(
                "tiers: at least 2 tiers are required, got {}",
                self.tiers.len()
            ));
        }
        let mut previous: Option<(usize, f64, f64)> = None;
        for (i, t) in self.tiers.iter().enumerate() {
            let at = format!("tiers[{i}]");
            if t.name.trim().is_empty() {
                errors.push(format!("{at}.name: must not be empty"));
            } else if let Some(j) = self.tiers[..i].iter().position(|o| o.name == t.name) {
                errors.push(format!(
                    "{at}.name: duplicate tier name {:?} (also tiers[{j}])",
                    t.name
                ));
            }
            check_price(
                &mut errors,
                format!("{at}.input_usd_per_mtok"),
                t.input_usd_per_mtok,
            );
            check_price(
                &mut errors,
                format!("{at}.output_usd_per_mtok"),
                t.output_usd_per_mtok,
            );
            if let Some(th) = t.threshold
                && !(0.0..=1.0).contains(&th)
            {
                errors.push(format!("{at}.threshold: must be in [0, 1], got {th}"));
            }
            if t.chain.is_empty() {
                errors.push(format!("{at}.chain: must list at least one model"));
            }
            for (k, m) in t.chain.iter().enumerate() {
                if m.provider.trim().is_empty() {
                    errors.push(format!("{at}.chain[{k}].provider: must not be empty"));
                }
                if m.model.trim().is_empty() {
                    errors.push(format!("{at}.chain[{k}].model: must not be empty"));
                }
            }
            // Both prices must be non-decreasing: then a request's estimated cost never falls
            // from one tier to the next, whatever its input/output mix.
            if let Some((j, prev_in, prev_out)) = previous
                && (t.input_usd_per_mtok < prev_in || t.output_usd_per_mtok < prev_out)
            {
                errors.push(format!(
                    "{at}: is cheaper than tiers[{j}] (input {} vs {prev_in}, output {} vs {prev_out} USD/Mtok); list tiers cheapest first, with neither price falling",
                    t.input_usd_per_mtok, t.output_usd_per_mtok
                ));
            }
            previous = Some((i, t.input_usd_per_mtok, t.output_usd_per_mtok));
        }
        let latency_cap = match &self.policy.latency_sensitive_max_tier {
            None => None,
            Some(name) => match self.tiers.iter().position(|t| &t.name == name) {
                Some(i) => Some(i),
                None => {
                    errors.push(format!(
                        "policy.latency_sensitive_max_tier: unknown tier {name:?} (tiers: {})",
                        self.tiers
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    None
                }
            },
        };
        let mut providers = Vec::new();
        for (name, p) in &self.providers {
            match expand_env(&p.base_url) {
                Ok(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    providers.push(crate::providers::Provider {
                        name: name.clone(),
                        kind: p.kind,
                        base_url: url,
                        api_key_env: p.api_key_env.clone(),
                    });
                }
                Ok(url) => errors.push(format!(
                    "providers.{name}.base_url: must start with http:// or https://, got {url:?}"
                )),
                Err(e) => errors.push(format!("providers.{name}.base_url: {e}")),
            }
        }
        if !self.providers.is_empty() {
            for (i, t) in self.tiers.iter().enumerate() {
                for (k, m) in t.chain.iter().enumerate() {
                    if !m.provider.trim().is_empty() && !self.providers.contains_key(&m.provider) {
                        errors.push(format!(
                            "tiers[{i}].chain[{k}].provider: unknown provider {:?} (providers: {})",
                            m.provider,
                            self.providers
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
            }
        }
        let model = self.model.validate(&mut errors);
        let gateway = self.gateway.validate(&mut errors);
        let (Some(addr), true) = (addr, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(Config {
            auth,
            server: ServerConfig {
                addr,
                max_prompt_bytes: s.max_prompt_bytes,
                max_messages: s.max_messages,
                max_tools: s.max_tools,
                max_request_bytes: s.max_request_bytes,
                max_request_id_bytes: s.max_request_id_bytes,
                request_timeout: std::time::Duration::from_millis(s.request_timeout_ms),
                concurrency_limit_per_connection: s.concurrency_limit_per_connection,
                blocking_threshold_bytes: s.blocking_threshold_bytes,
                max_blocking_threads: s.max_blocking_threads,
                max_in_flight_routes: s.max_in_flight_routes,
                max_in_flight_completions: s.max_in_flight_completions,
                max_queued: s.max_queued,
                queue_timeout: std::time::Duration::from_millis(s.queue_timeout_ms),
                header_timeout: std::time::Duration::from_millis(s.header_timeout_ms),
                body_timeout: std::time::Duration::from_millis(s.body_timeout_ms),
                max_connections: s.max_connections,
                drain_timeout: std::time::Duration::from_millis(s.drain_timeout_ms),
                tls,
            },
            model,
            feedback,
            providers,
            gateway,
            expected_output_tokens: self.policy.expected_output_tokens,
            latency_sensitive_max_tier: latency_cap,
            exploration_rate: self.policy.exploration_rate,
            tiers: self
                .tiers
                .into_iter()
                .map(|t| TierConfig {
                    name: t.name,
                    input_usd_per_mtok: t.input_usd_per_mtok,
                    output_usd_per_mtok: t.output_usd_per_mtok,
                    threshold: t.threshold,
                    chain: t.chain,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("test.toml"), None).map_err(|e| e.to_string())
    }

    const TWO_TIERS: &str = r#"
[[tiers]]
name = "cheap"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.4
chain = [{ provider = "openai", model = "small" }]

[[tiers]]
name = "dear"
input_usd_per_mtok = 2.0
output_usd_per_mtok = 8.0
chain = [{ provider = "openai", model = "big" }]
"#;

    #[test]
    fn shipped_config_is_valid_with_three_tiers() {
        let c = Config::shipped().unwrap();
        assert_eq!(c.tiers.len(), 3);
        assert_eq!(c.server.max_prompt_bytes, 1 << 20);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(TWO_TIERS).unwrap();
        assert_eq!(c.server.addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.expected_output_tokens, 256);
        assert_eq!(c.tier_index("dear"), Some(1));
        assert!((c.tiers[1].cost_usd(1_000_000, 0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = parse(&format!("[server]\nadress = \"x\"\n{TWO_TIERS}")).unwrap_err();
        assert!(err.contains("adress"), "{err}");
    }

    #[test]
    fn one_tier_is_refused() {
        let one = TWO_TIERS.split("[[tiers]]").nth(1).unwrap();
        let err = parse(&format!("[[tiers]]{one}")).unwrap_err();
        assert!(
            err.contains("tiers: at least 2 tiers are required, got 1"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_a_dotted_path() {
        let text = r#"
[server]
addr = "nowhere"
max_messages = 0
[policy]
latency_sensitive_max_tier = "medium"
[feedback]
cache_bytes = 4096
[[tiers]]
name = "a"
input_usd_per_mtok = -1.0
output_usd_per_mtok = 1.0
threshold = 1.5
chain = []
[[tiers]]
name = "a"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
chain = [{ provider = "", model = "m" }]
"#;
        let err = parse(text).unwrap_err();
        for needle in [
            "server.addr:",
            "server.max_messages: must be at least 1",
            "tiers[0].input_usd_per_mtok: must be a finite number >= 0, got -1",
            "tiers[0].threshold: must be in [0, 1], got 1.5",
            "tiers[0].chain: must list at least one model",
            "tiers[1].name: duplicate tier name \"a\" (also tiers[0])",
            "tiers[1].chain[0].provider: must not be empty",
            "policy.latency_sensitive_max_tier: unknown tier \"medium\"",
            "feedback.cache_bytes: must be at least 1048576 (1 MiB), got 4096",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn providers_expand_the_environment_and_chains_must_name_them() {
        let text = format!(
            "{TWO_TIERS}\n[providers.openai]\nkind = \"openai\"\nbase_url = \"${{TRIAGE_TEST_UNSET_BASE:-http://127.0.0.1:9/v1}}\"\napi_key_env = \"OPENAI_API_KEY\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:9/v1");
        let bad = text.replace(
            "{ provider = \"openai\", model = \"big\" }",
            "{ provider = \"groq\", model = \"big\" }",
        );
        let err = parse(&bad).unwrap_err();
        assert!(
            err.contains(
                "tiers[1].chain[0].provider: unknown provider \"groq\" (providers: openai)"
            ),
            "{err}"
        );
        let err = parse(&format!("{TWO_TIERS}\n[providers.openai]\nkind = \"openai\"\nbase_url = \"${{TRIAGE_TEST_UNSET_BASE}}\"\n")).unwrap_err();
        assert!(
            err.contains(
                "providers.openai.base_url: environment variable TRIAGE_TEST_UNSET_BASE is not set"
            ),
            "{err}"
        );
        let err = parse(&format!(
            "{TWO_TIERS}\n[providers.openai]\nkind = \"grpc\"\nbase_url = \"http://x\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("grpc"), "{err}");
    }

    #[test]
    fn tiers_out_of_price_order_are_refused() {
        let swapped = TWO_TIERS
            .replace("0.1\noutput_usd_per_mtok = 0.4", "TMP")
            .replace(
                "2.0\noutput_usd_per_mtok = 8.0",
                "0.1\noutput_usd_per_mtok = 0.4",
            )
            .replace("TMP", "2.0\noutput_usd_per_mtok = 8.0");
        let err = parse(&swapped).unwrap_err();
        assert!(err.contains("tiers[1]: is cheaper than tiers[0]"), "{err}");
    }

    #[test]
    fn set_model_paths_resolve_against_the_config_directory_and_unset_ones_find_the_shipped_models()
    {
        let with = format!("[model]\nclassifier = \"mine.json\"\n{TWO_TIERS}");
        let c = Config::from_toml(
            &with,
            Path::new("/etc/triage/t.toml"),
            Some(Path::new("/etc/triage")),
        )
        .unwrap();
        assert_eq!(c.model.classifier, Path::new("/etc/triage/mine.json"));
        // Left unset, the embeddings are the shipped ones, not /etc/triage/models/embeddings.
        assert!(
            c.model.embeddings.join("tokenizer.json").exists(),
            "{:?}",
            c.model.embeddings
        );
        let c = Config::from_toml(
            TWO_TIERS,
            Path::new("/etc/triage/t.toml"),
            Some(Path::new("/etc/triage")),
        )
        .unwrap();
        assert!(c.model.classifier.exists(), "{:?}", c.model.classifier);
    }

    #[test]
    fn tokens_come_from_files_or_the_environment_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("admin.token"),
            "  admin-token-from-a-file\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("short.token"), "short").unwrap();
        let text = format!(
            "{TWO_TIERS}\n[auth]\nadmin_tokens = [{{ name = \"ops\", file = \"admin.token\" }}]\n"
        );
        let c = Config::from_toml(&text, &dir.path().join("t.toml"), Some(dir.path())).unwrap();
        assert!(c.auth.enabled());
        assert_eq!(
            c.auth
                .check(Some("admin-token-from-a-file"), crate::auth::Scope::Admin)
                .unwrap()
                .unwrap()
                .name,
            "ops"
        );
        let bad = format!(
            "{TWO_TIERS}\n[auth]\ntokens = [{{ name = \"a\", env = \"TRIAGE_TEST_UNSET_TOKEN\" }}, {{ name = \"b\", file = \"short.token\" }}, {{ name = \"c\" }}, {{ name = \"d\", file = \"/dev/zero\" }}]\n"
        );
        let err = Config::from_toml(&bad, &dir.path().join("t.toml"), Some(dir.path()))
            .unwrap_err()
            .to_string();
        for needle in [
            "auth.tokens[0].env: environment variable TRIAGE_TEST_UNSET_TOKEN is not set",
            "auth.tokens[1]: the token must be at least 16 bytes",
            "auth.tokens[2]: set exactly one of env or file",
            "auth.tokens[3].file: cannot read /dev/zero",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }
}
