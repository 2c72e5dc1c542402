//! The OpenAI-compatible HTTP front door: `/v1/chat/completions` (JSON and server-sent events),
//! `/v1/models` and `/v1/feedback`; it parses, calls the core ([`crate::app`]) and converts.

use std::convert::Infallible;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as Http};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::app::{Piece, Triage};
use crate::error::{Error, RequestError};
use crate::proto::v1 as pb;
use crate::providers::ToolCall;

/// Header carrying the decision id, for later feedback.
pub const DECISION_HEADER: &str = "x-triage-decision-id";

/// Who called, as the auth layer found it (`None` when no tokens are configured).
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Option<crate::auth::Identity>);

impl Caller {
    /// Attributes `input` to the caller's token.
    pub(crate) fn attribute(&self, input: &mut crate::engine::RouteInput) {
        input.attribute(self.0.as_ref());
    }
}

/// The routes, over the core. Unknown paths and methods answer in OpenAI's error shape too.
/// `/healthz` and `/readyz` are open; `/metrics` needs an admin token and `/v1/*` a client
/// token once any token is configured.
pub fn router(core: Triage, limits: &crate::config::ServerConfig) -> Http {
    Http::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/feedback", post(feedback))
        .route("/v1/messages", post(crate::anthropic_door::messages_handler))
        .route("/metrics", get(metrics))
        .route("/v1/admin/export", get(export_log))
        .fallback(|| async {
            error(&Error::NotFound(
                "no such route; this server answers POST /v1/chat/completions, POST /v1/messages, GET /v1/models, POST /v1/feedback, GET /metrics, GET /v1/admin/export, /healthz, /readyz".into(),
            ))
        })
        .method_not_allowed_fallback(|| async {
            let mut r = error(&Error::Request(RequestError::invalid(
                "method",
                "not allowed on this route",
            )));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .layer(axum::middleware::from_fn_with_state(core.clone(), authenticate))
        // Health answers before authentication: balancers and kubelets carry no token.
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(limits.max_request_bytes))
        // A body trickled slower than this is cut off (408), freeing the connection.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_timeout,
        ))
        .with_state(core)
}

/// Checks the bearer token (or the Anthropic SDK's `x-api-key`) for the route's scope and
/// hands the caller's identity to the handler; refusals come in the door's error shape.
async fn authenticate(
    State(core): State<Triage>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let scope = if path == "/metrics" || path.starts_with("/v1/admin/") {
        crate::auth::Scope::Admin
    } else {
        crate::auth::Scope::Client
    };
    let anthropic = path.starts_with("/v1/messages");
    let token = {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        crate::auth::bearer(header("authorization"), header("x-api-key"))
    };
    match core.authorize(token.as_deref(), scope) {
        Ok(who) => {
            req.extensions_mut().insert(Caller(who));
            next.run(req).await
        }
        Err(e) if anthropic => crate::anthropic_door::error(&e),
        Err(e) => {
            let mut r = error(&e);
            if matches!(e, Error::Auth(crate::auth::AuthError::Unauthenticated)) {
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            r
        }
    }
}

async fn readyz(State(core): State<Triage>) -> Response {
    if core.ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    }
}

/// `GET /v1/admin/export[?since_ms=N]`: the live decision log as JSON Lines (admin scope).
async fn export_log(
    State(core): State<Triage>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let mut since = None;
    for (k, v) in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
    {
        match (k, v.parse::<u64>()) {
            ("since_ms", Ok(ms)) => since = Some(ms),
            ("since_ms", Err(_)) => {
                return error(&Error::Request(crate::error::RequestError::invalid(
                    "since_ms",
                    format!("must be milliseconds since the Unix epoch, got {v:?}"),
                )));
            }
            _ => {
                return error(&Error::Request(crate::error::RequestError::invalid(
                    k,
                    "unknown query parameter (this endpoint takes since_ms)",
                )));
            }
        }
    }
    match core.export_log(since) {
        Ok(rx) => (
            [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
            axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
            .into_response(),
        Err(e) => error(&e),
    }
}

async fn metrics(State(core): State<Triage>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics_text(),
    )
        .into_response()
}

/// OpenAI's error shape, with the status from the one error table ([`Error::answer`]).
pub fn error(e: &Error) -> Response {
    let a = e.answer();
    let status = StatusCode::from_u16(a.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    with_retry_after(
        e,
        (
            status,
            Json(json!({"error": {"message": e.public_message(), "type": a.kind, "code": format!("{:?}", a.grpc)}})),
        )
            .into_response(),
    )
}

/// Adds `Retry-After` to an overload refusal (both HTTP doors' error shapes).
pub(crate) fn with_retry_after(e: &Error, mut r: Response) -> Response {
    if let Error::Overloaded { retry_after_s, .. } = e {
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(*retry_after_s),
        );
    }
    r
}

/// A body that did not parse: too large, or not the expected JSON, naming the problem.
pub(crate) fn rejection(e: &axum::extract::rejection::JsonRejection) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge(e.body_text())
    } else {
        Error::Request(RequestError::invalid("body", e.body_text()))
    }
}

/// Refuses body fields this door does not implement, naming them, instead of dropping them
/// silently; `ignored` are the wire format's fields that change nothing about the answer
/// (a caller's `user` tag, say) and are accepted as such.
pub(crate) fn refuse_unknown(
    rest: &std::collections::BTreeMap<String, Value>,
    ignored: &[&str],
) -> Result<(), RequestError> {
    let unknown: Vec<&str> = rest
        .keys()
        .map(String::as_str)
        .filter(|k| !ignored.contains(k))
        .collect();
    match unknown.as_slice() {
        [] => Ok(()),
        [one] => Err(RequestError::invalid(
            *one,
            "is not supported by triage; leave it out",
        )),
        many => Err(RequestError::invalid(
            many.join(", "),
            "are not supported by triage; leave them out",
        )),
    }
}

/// triage's knobs, riding along as extra body fields on every HTTP door.
#[derive(Deserialize)]
pub(crate) struct Knobs {
    min_tier: Option<String>,
    max_tier: Option<String>,
    max_cost_usd: Option<f64>,
    quality_target: Option<f64>,
    #[serde(default)]
    latency_sensitive: bool,
    request_id: Option<String>,
    tenant: Option<String>,
}

impl Knobs {
    /// The route request for `messages`: `model` is `triage` (routed) or `triage:<tier>`
    /// (pinned to that tier); any other name is not served here.
    pub(crate) fn route(
        self,
        model: &str,
        messages: Vec<pb::Message>,
    ) -> Result<pb::RouteRequest, Error> {
        let (mut min_tier, mut max_tier) = (self.min_tier, self.max_tier);
        if model != "triage" {
            match model.strip_prefix("triage:") {
                Some(tier) if !tier.is_empty() => {
                    min_tier = Some(tier.to_string());
                    max_tier = Some(tier.to_string());
                }
                _ => {
                    return Err(Error::NotFound(format!(
                        "model: {model:?} is not served here; use \"triage\" (routed) or \"triage:<tier>\" (pinned)"
                    )));
                }
            }
        }
        Ok(pb::RouteRequest {
            messages,
            request_id: self.request_id,
            min_tier,
            max_tier,
            max_cost_usd: self.max_cost_usd,
            latency_sensitive: self.latency_sensitive,
            quality_target: self.quality_target,
            tenant: self.tenant,
            labels: Default::default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

/// A tool call in OpenAI's shape, in an assistant message or an answer.
#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunctionCall,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

/// A tool definition in OpenAI's shape.
#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Option<Value>,
}

fn function_type() -> String {
    "function".into()
}

/// The chat-completions body: OpenAI's fields plus triage's knobs as extra fields. Other
/// OpenAI fields (n, user, seed, ...) are accepted and ignored.
#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<ChatMessage>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    knobs: Knobs,
    #[serde(default)]
    tools: Vec<WireTool>,
    tool_choice: Option<Value>,
    /// OpenAI's deprecated function-calling fields: refused rather than silently dropped.
    functions: Option<Value>,
    function_call: Option<Value>,
    /// How many choices: triage answers one.
    n: Option<u32>,
    /// Every other field; anything not in [`CHAT_IGNORED`] is refused.
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, Value>,
}

/// OpenAI chat fields accepted and ignored because they do not change the answer.
const CHAT_IGNORED: &[&str] = &[
    "user",
    "stream_options",
    "metadata",
    "store",
    "parallel_tool_calls",
    "service_tier",
];

/// OpenAI's `tool_choice`: a mode string or `{"type": "function", "function": {"name": ...}}`.
fn tool_choice(v: &Value) -> Result<pb::ToolChoice, RequestError> {
    match v {
        Value::String(mode) if mode != "function" => Ok(pb::ToolChoice {
            mode: mode.clone(),
            function: String::new(),
        }),
        Value::Object(_) => match v["function"]["name"].as_str() {
            Some(name) if v["type"] == "function" => Ok(pb::ToolChoice {
                mode: "function".into(),
                function: name.to_string(),
            }),
            _ => Err(RequestError::invalid(
                "tool_choice",
                "expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )),
        },
        _ => Err(RequestError::invalid(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or a function object",
        )),
    }
}

fn tools(wire: Vec<WireTool>) -> Result<Vec<pb::Tool>, RequestError> {
    wire.into_iter()
        .enumerate()
        .map(|(i, t)| match (t.kind.as_str(), t.function) {
            ("function", Some(f)) => Ok(pb::Tool {
                name: f.name,
                description: f.description,
                parameters_json: f.parameters.map(|p| p.to_string()).unwrap_or_default(),
            }),
            ("function", None) => Err(RequestError::invalid(
                format!("tools[{i}].function"),
                "missing",
            )),
            (other, _) => Err(RequestError::invalid(
                format!("tools[{i}].type"),
                format!("{other:?} is not supported (only \"function\")"),
            )),
        })
        .collect()
}

fn tool_calls_to_wire(calls: &[ToolCall]) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// Text of a message: a string, or the text parts of a content array.
fn text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn complete_request(body: ChatBody) -> Result<pb::CompleteRequest, Error> {
    refuse_unknown(&body.rest, CHAT_IGNORED)?;
    if let Some(n) = body.n.filter(|n| *n != 1) {
        return Err(RequestError::invalid(
            "n",
            format!("must be 1 (triage answers one choice), got {n}"),
        )
        .into());
    }
    if body.functions.is_some() || body.function_call.is_some() {
        let field = if body.functions.is_some() {
            "functions"
        } else {
            "function_call"
        };
        return Err(RequestError::invalid(
            field,
            "the deprecated function-calling fields are not supported; use tools and tool_choice",
        )
        .into());
    }
    let tool_choice = body.tool_choice.as_ref().map(tool_choice).transpose()?;
    let tools = tools(body.tools)?;
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let mut calls = Vec::with_capacity(m.tool_calls.len());
        for (j, c) in m.tool_calls.into_iter().enumerate() {
            if c.kind != "function" {
                return Err(RequestError::invalid(
                    format!("messages[{i}].tool_calls[{j}].type"),
                    format!("{:?} is not supported (only \"function\")", c.kind),
                )
                .into());
            }
            calls.push(pb::ToolCall {
                id: c.id,
                name: c.function.name,
                arguments_json: c.function.arguments,
            });
        }
        messages.push(pb::Message {
            content: text(&m.content),
            role: m.role,
            tool_call_id: m.tool_call_id.unwrap_or_default(),
            tool_calls: calls,
        });
    }
    Ok(pb::CompleteRequest {
        tools,
        tool_choice,
        route: Some(body.knobs.route(&body.model, messages)?),
        temperature: body.temperature,
        top_p: body.top_p,
        max_tokens: body.max_completion_tokens.or(body.max_tokens),
        stop: match body.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
    })
}

fn now_s() -> u64 {
    crate::feedback::now_ms() / 1000
}

/// triage's own field on every completion: which decision answered and what it cost.
#[derive(Serialize)]
struct TriageExtra<'a> {
    decision_id: String,
    tier: &'a str,
    provider: &'a str,
    reason: &'a str,
    model_version: &'a str,
    cost_usd: f64,
}

fn triage_extra<'a>(
    d: &'a crate::engine::Decision,
    provider: &'a str,
    cost: f64,
) -> TriageExtra<'a> {
    TriageExtra {
        decision_id: d.decision_id.to_string(),
        tier: &d.tier_name,
        provider,
        reason: &d.reason,
        model_version: &d.model_version,
        cost_usd: cost,
    }
}

/// A `chat.completion` as OpenAI's API answers it, serialized straight from the completion
/// (no intermediate JSON tree on the hot path).
#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: Usage,
    triage: TriageExtra<'a>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    /// `null` when the answer is tool calls only, as OpenAI sends it.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<Value>>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

async fn chat(
    State(core): State<Triage>,
    caller: Option<axum::Extension<Caller>>,
    body: Result<Json<ChatBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return error(&rejection(&e)),
    };
    let stream = body.stream;
    let parsed = complete_request(body)
        .and_then(|req| crate::service::parse_complete(req, core.config()).map_err(Error::from));
    let (mut input, chat) = match parsed {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    if let Some(axum::Extension(c)) = caller {
        c.attribute(&mut input);
    }
    let deadline = core.call_deadline(None);
    if stream {
        return chat_stream(core, input, chat, deadline).await;
    }
    let c = match core.complete(input, chat, deadline, None).await {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let r = &c.response;
    let tools = !r.tool_calls.is_empty();
    let id = c.decision.decision_id.to_string();
    let mut resp = Json(ChatCompletion {
        id: format!("chatcmpl-{id}"),
        object: "chat.completion",
        created: now_s(),
        model: &c.model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (!(tools && r.text.is_empty())).then_some(r.text.as_str()),
                tool_calls: tools.then(|| tool_calls_to_wire(&r.tool_calls)),
            },
            finish_reason: &r.finish_reason,
        }],
        usage: Usage {
            prompt_tokens: r.input_tokens,
            completion_tokens: r.output_tokens,
            total_tokens: r.input_tokens + r.output_tokens,
        },
        triage: triage_extra(&c.decision, &c.provider, c.cost_usd),
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(DECISION_HEADER, v);
    }
    resp
}

async fn chat_stream(
    core: Triage,
    input: crate::engine::RouteInput,
    chat: crate::providers::ChatRequest,
    deadline: std::time::Instant,
) -> Response {
    let (decision, mut pieces) = match core.complete_stream(input, chat, deadline, None).await {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let decision_id = decision.decision_id.to_string();
    let id = format!("chatcmpl-{decision_id}");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let created = now_s();
        let chunk = |delta: Value, finish: Option<&str>, extra: Option<Value>| {
            let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": "triage",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            if let Some(e) = extra {
                v["triage"] = e;
            }
            Event::default().data(v.to_string())
        };
        let mut first = true;
        while let Some(piece) = pieces.recv().await {
            let event = match piece {
                Piece::Text(t) => {
                    let delta = if first {
                        json!({"role": "assistant", "content": t})
                    } else {
                        json!({"content": t})
                    };
                    first = false;
                    chunk(delta, None, None)
                }
                Piece::Done(d) => {
                    let extra = json!(triage_extra(&decision, &d.provider, d.cost_usd));
                    if !d.tool_calls.is_empty() {
                        // Calls arrive whole, so they go out as one delta.
                        let mut delta = json!({"tool_calls": tool_calls_to_wire(&d.tool_calls)});
                        if first {
                            delta["role"] = json!("assistant");
                        }
                        let _ = tx.send(Ok(chunk(delta, None, None))).await;
                    }
                    let _ = tx
                        .send(Ok(chunk(json!({}), Some(&d.finish_reason), Some(extra))))
                        .await;
                    let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
                    return;
                }
                Piece::Failed(e) => {
                    // OpenAI clients raise on an `error` payload: the caller learns the stream broke.
                    let a = e.answer();
                    let _ = tx.send(Ok(Event::default().data(json!({"error": {"message": e.public_message(), "type": "stream_error", "code": format!("{:?}", a.grpc)}}).to_string()))).await;
                    return;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
                // The client went away: dropping `pieces` cancels the upstream call.
                return;
            }
        }
    });
    let mut resp = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    if let Ok(v) = HeaderValue::from_str(&decision_id) {
        resp.headers_mut().insert(DECISION_HEADER, v);
    }
    resp
}

async fn models(State(core): State<Triage>) -> Response {
    let mut data =
        vec![json!({"id": "triage", "object": "model", "created": 0, "owned_by": "triage"})];
    for t in core.config().tier_names() {
        data.push(json!({"id": format!("triage:{t}"), "object": "model", "created": 0, "owned_by": "triage"}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// A misspelt field (`qualty`) is refused, not stored as an empty outcome.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    decision_id: String,
    #[serde(default)]
    source: Option<String>,
    success: Option<bool>,
    quality: Option<f64>,
    latency_ms: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cost_usd: Option<f64>,
    error_class: Option<String>,
    observed_at_unix_ms: Option<i64>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

async fn feedback(
    State(core): State<Triage>,
    body: Result<Json<FeedbackBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => return error(&rejection(&e)),
    };
    let source = match b.source.as_deref().unwrap_or("user") {
        "user" => pb::OutcomeSource::User,
        "judge" => pb::OutcomeSource::Judge,
        "validator" => pb::OutcomeSource::Validator,
        "escalation" => pb::OutcomeSource::Escalation,
        other => {
            return error(&Error::Request(RequestError::invalid(
                "source",
                format!("{other:?} (use user, judge, validator or escalation)"),
            )));
        }
    };
    let req = pb::OutcomeRequest {
        decision_id: b.decision_id,
        source: source as i32,
        success: b.success,
        quality: b.quality,
        latency_ms: b.latency_ms,
        input_tokens: b.input_tokens,
        output_tokens: b.output_tokens,
        cost_usd: b.cost_usd,
        error_class: b.error_class,
        labels: b.labels,
        observed_at_unix_ms: b.observed_at_unix_ms,
    };
    let record =
        match crate::service::validate_outcome(req, core.config(), crate::feedback::now_ms()) {
            Ok(r) => r,
            Err(e) => return error(&e.into()),
        };
    match core.record_outcome(record, None).await {
        Ok(a) => Json(json!({"duplicate": a.duplicate, "orphan": a.orphan})).into_response(),
        Err(e) => error(&e),
    }
}
