//! The OpenAI-compatible HTTP front door: `/v1/chat/completions` (JSON and server-sent events),
//! `/v1/models` and `/v1/feedback`, answered by the same service methods as gRPC.

use std::convert::Infallible;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as Http};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

use crate::proto::v1 as pb;
use crate::proto::v1::router_server::Router;
use crate::service::RouterService;

/// Header carrying the decision id, for later feedback.
pub const DECISION_HEADER: &str = "x-triage-decision-id";

/// The routes, over one service.
pub fn router(service: RouterService, max_body_bytes: usize) -> Http {
    Http::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/feedback", post(feedback))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(service)
}

/// OpenAI's error shape, with the HTTP status that matches the gRPC code.
fn error(status: &Status) -> Response {
    let (http, kind) = match status.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    };
    (http, Json(json!({"error": {"message": status.message(), "type": kind, "code": format!("{:?}", status.code())}}))).into_response()
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
    min_tier: Option<String>,
    max_tier: Option<String>,
    max_cost_usd: Option<f64>,
    quality_target: Option<f64>,
    #[serde(default)]
    latency_sensitive: bool,
    request_id: Option<String>,
    tenant: Option<String>,
    #[serde(default)]
    tools: Vec<WireTool>,
    tool_choice: Option<Value>,
    /// OpenAI's deprecated function-calling fields: refused rather than silently dropped.
    functions: Option<Value>,
    function_call: Option<Value>,
}

/// OpenAI's `tool_choice`: a mode string or `{"type": "function", "function": {"name": ...}}`.
fn tool_choice(v: &Value) -> Result<pb::ToolChoice, Status> {
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
            _ => Err(Status::invalid_argument(
                "tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
            )),
        },
        _ => Err(Status::invalid_argument(
            "tool_choice: expected \"auto\", \"none\", \"required\" or a function object",
        )),
    }
}

fn tools(wire: Vec<WireTool>) -> Result<Vec<pb::Tool>, Status> {
    wire.into_iter()
        .enumerate()
        .map(|(i, t)| match (t.kind.as_str(), t.function) {
            ("function", Some(f)) => Ok(pb::Tool {
                name: f.name,
                description: f.description,
                parameters_json: f.parameters.map(|p| p.to_string()).unwrap_or_default(),
            }),
            ("function", None) => Err(Status::invalid_argument(format!(
                "tools[{i}].function: missing"
            ))),
            (other, _) => Err(Status::invalid_argument(format!(
                "tools[{i}].type: {other:?} is not supported (only \"function\")"
            ))),
        })
        .collect()
}

fn tool_calls_to_wire(calls: &[pb::ToolCall]) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}))
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

fn complete_request(body: ChatBody) -> Result<pb::CompleteRequest, Status> {
    let (mut min_tier, mut max_tier) = (body.min_tier, body.max_tier);
    match body.model.as_str() {
        "triage" => {}
        m => match m.strip_prefix("triage:") {
            Some(tier) if !tier.is_empty() => {
                min_tier = Some(tier.to_string());
                max_tier = Some(tier.to_string());
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "model: {m:?} is not served here; use \"triage\" (routed) or \"triage:<tier>\" (pinned)"
                )));
            }
        },
    }
    if body.functions.is_some() || body.function_call.is_some() {
        let field = if body.functions.is_some() {
            "functions"
        } else {
            "function_call"
        };
        return Err(Status::invalid_argument(format!(
            "{field}: the deprecated function-calling fields are not supported; use tools and tool_choice"
        )));
    }
    let tool_choice = body.tool_choice.as_ref().map(tool_choice).transpose()?;
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, m) in body.messages.into_iter().enumerate() {
        let mut calls = Vec::with_capacity(m.tool_calls.len());
        for (j, c) in m.tool_calls.into_iter().enumerate() {
            if c.kind != "function" {
                return Err(Status::invalid_argument(format!(
                    "messages[{i}].tool_calls[{j}].type: {:?} is not supported (only \"function\")",
                    c.kind
                )));
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
        tools: tools(body.tools)?,
        tool_choice,
        route: Some(pb::RouteRequest {
            messages,
            request_id: body.request_id,
            min_tier,
            max_tier,
            max_cost_usd: body.max_cost_usd,
            latency_sensitive: body.latency_sensitive,
            quality_target: body.quality_target,
            tenant: body.tenant,
            labels: Default::default(),
        }),
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

fn triage_extra(d: &pb::RouteDecision, provider: &str, cost: f64) -> Value {
    json!({"decision_id": d.decision_id, "tier": d.tier, "provider": provider, "reason": d.reason,
           "model_version": d.model_version, "cost_usd": cost})
}

async fn chat(
    State(svc): State<RouterService>,
    body: Result<Json<ChatBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return error(&Status::invalid_argument(format!(
                "body: {}",
                e.body_text()
            )));
        }
    };
    let stream = body.stream;
    let req = match complete_request(body) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    if stream {
        return chat_stream(svc, req).await;
    }
    let r = match svc.complete(Request::new(req)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return error(&s),
    };
    let d = r.decision.clone().unwrap_or_default();
    let mut message = json!({"role": "assistant", "content": r.text});
    if !r.tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls_to_wire(&r.tool_calls));
        if r.text.is_empty() {
            message["content"] = Value::Null;
        }
    }
    let mut resp = Json(json!({
        "id": format!("chatcmpl-{}", d.decision_id),
        "object": "chat.completion",
        "created": now_s(),
        "model": r.model,
        "choices": [{"index": 0, "message": message, "finish_reason": r.finish_reason}],
        "usage": {"prompt_tokens": r.input_tokens, "completion_tokens": r.output_tokens, "total_tokens": r.input_tokens + r.output_tokens},
        "triage": triage_extra(&d, &r.provider, r.cost_usd),
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&d.decision_id) {
        resp.headers_mut().insert(DECISION_HEADER, v);
    }
    resp
}

async fn chat_stream(svc: RouterService, req: pb::CompleteRequest) -> Response {
    use pb::complete_chunk::Kind;
    let mut chunks = match svc.complete_stream(Request::new(req)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return error(&s),
    };
    // The decision comes first; it names the stream and goes in the header.
    let decision = match tokio_stream::StreamExt::next(&mut chunks).await {
        Some(Ok(pb::CompleteChunk {
            kind: Some(Kind::Decision(d)),
        })) => d,
        Some(Err(s)) => return error(&s),
        _ => return error(&Status::internal("stream did not start with a decision")),
    };
    let id = format!("chatcmpl-{}", decision.decision_id);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    let decision_id = decision.decision_id.clone();
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
        while let Some(item) = tokio_stream::StreamExt::next(&mut chunks).await {
            let event = match item {
                Ok(pb::CompleteChunk {
                    kind: Some(Kind::Delta(t)),
                }) => {
                    let delta = if first {
                        json!({"role": "assistant", "content": t})
                    } else {
                        json!({"content": t})
                    };
                    first = false;
                    chunk(delta, None, None)
                }
                Ok(pb::CompleteChunk {
                    kind: Some(Kind::Done(d)),
                }) => {
                    let extra = triage_extra(&decision, &d.provider, d.cost_usd);
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
                Ok(_) => continue,
                Err(s) => {
                    // OpenAI clients raise on an `error` payload: the caller learns the stream broke.
                    let _ = tx.send(Ok(Event::default().data(json!({"error": {"message": s.message(), "type": "stream_error", "code": format!("{:?}", s.code())}}).to_string()))).await;
                    return;
                }
            };
            if tx.send(Ok(event)).await.is_err() {
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

async fn models(State(svc): State<RouterService>) -> Response {
    let mut data =
        vec![json!({"id": "triage", "object": "model", "created": 0, "owned_by": "triage"})];
    for t in svc.tier_names() {
        data.push(json!({"id": format!("triage:{t}"), "object": "model", "created": 0, "owned_by": "triage"}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Deserialize)]
struct FeedbackBody {
    decision_id: String,
    #[serde(default)]
    source: Option<String>,
    success: Option<bool>,
    quality: Option<f64>,
    latency_ms: Option<u64>,
    cost_usd: Option<f64>,
    error_class: Option<String>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

async fn feedback(
    State(svc): State<RouterService>,
    body: Result<Json<FeedbackBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return error(&Status::invalid_argument(format!(
                "body: {}",
                e.body_text()
            )));
        }
    };
    let source = match b.source.as_deref().unwrap_or("user") {
        "user" => pb::OutcomeSource::User,
        "judge" => pb::OutcomeSource::Judge,
        "validator" => pb::OutcomeSource::Validator,
        "escalation" => pb::OutcomeSource::Escalation,
        other => {
            return error(&Status::invalid_argument(format!(
                "source: {other:?} (use user, judge, validator or escalation)"
            )));
        }
    };
    let req = pb::OutcomeRequest {
        decision_id: b.decision_id,
        source: source as i32,
        success: b.success,
        quality: b.quality,
        latency_ms: b.latency_ms,
        cost_usd: b.cost_usd,
        error_class: b.error_class,
        labels: b.labels,
        ..Default::default()
    };
    match svc.record_outcome(Request::new(req)).await {
        Ok(r) => {
            let a = r.into_inner();
            Json(json!({"duplicate": a.duplicate, "orphan": a.orphan})).into_response()
        }
        Err(s) => error(&s),
    }
}
