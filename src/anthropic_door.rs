//! The Anthropic-compatible HTTP door: `POST /v1/messages` (JSON and server-sent events), so
//! Anthropic SDK users can point at triage; it parses, calls the core and converts.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{Piece, Triage};
use crate::error::{Error, RequestError};
use crate::http::DECISION_HEADER;
use crate::proto::v1 as pb;

/// The Messages API body: Anthropic's fields plus triage's knobs as extra fields.
#[derive(Deserialize)]
pub struct MessagesBody {
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<Value>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    tools: Vec<WireTool>,
    tool_choice: Option<Value>,
    #[serde(flatten)]
    knobs: crate::http::Knobs,
    /// Every other field; anything but `metadata` is refused, naming it.
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct WireTool {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    input_schema: Option<Value>,
}

/// Anthropic's error shape, with the status from the one error table.
pub(crate) fn error(e: &Error) -> Response {
    let a = e.answer();
    let status = StatusCode::from_u16(a.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match a.http {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        502..=504 => "overloaded_error",
        _ => "api_error",
    };
    crate::http::with_retry_after(
        e,
        (
            status,
            Json(json!({"type": "error", "error": {"type": kind, "message": e.public_message()}})),
        )
            .into_response(),
    )
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Anthropic messages (content blocks) as triage messages: text joins, `tool_use` blocks become
/// an assistant's calls, `tool_result` blocks become tool messages.
fn messages(body: &MessagesBody) -> Result<Vec<pb::Message>, Error> {
    let mut out = Vec::new();
    if let Some(system) = &body.system {
        out.push(pb::Message {
            role: "system".into(),
            content: text_of(system),
            ..Default::default()
        });
    }
    for (i, m) in body.messages.iter().enumerate() {
        if m.role != "user" && m.role != "assistant" {
            return Err(RequestError::invalid(
                format!("messages[{i}].role"),
                format!("{:?} (expected user or assistant)", m.role),
            )
            .into());
        }
        let blocks: Vec<Value> = match &m.content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b.clone(),
            _ => {
                return Err(RequestError::invalid(
                    format!("messages[{i}].content"),
                    "expected a string or an array of content blocks",
                )
                .into());
            }
        };
        let mut text = Vec::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            match b["type"].as_str() {
                Some("text") => text.push(b["text"].as_str().unwrap_or_default().to_string()),
                Some("tool_use") => calls.push(pb::ToolCall {
                    id: b["id"].as_str().unwrap_or_default().into(),
                    name: b["name"].as_str().unwrap_or_default().into(),
                    arguments_json: b["input"].to_string(),
                }),
                Some("tool_result") => out.push(pb::Message {
                    role: "tool".into(),
                    content: text_of(&b["content"]),
                    tool_call_id: b["tool_use_id"].as_str().unwrap_or_default().into(),
                    ..Default::default()
                }),
                other => {
                    return Err(RequestError::invalid(
                        format!("messages[{i}].content[{j}].type"),
                        format!("{other:?} is not supported (text, tool_use, tool_result)"),
                    )
                    .into());
                }
            }
        }
        if !text.is_empty() || !calls.is_empty() {
            out.push(pb::Message {
                role: m.role.clone(),
                content: text.join("\n"),
                tool_calls: calls,
                ..Default::default()
            });
        }
    }
    Ok(out)
}

fn complete_request(body: MessagesBody) -> Result<pb::CompleteRequest, Error> {
    crate::http::refuse_unknown(&body.rest, &["metadata", "service_tier"])?;
    let tool_choice = match &body.tool_choice {
        None => None,
        Some(v) => Some(match v["type"].as_str() {
            Some("auto") => pb::ToolChoice {
                mode: "auto".into(),
                function: String::new(),
            },
            Some("any") => pb::ToolChoice {
                mode: "required".into(),
                function: String::new(),
            },
            Some("none") => pb::ToolChoice {
                mode: "none".into(),
                function: String::new(),
            },
            Some("tool") => pb::ToolChoice {
                mode: "function".into(),
                function: v["name"].as_str().unwrap_or_default().into(),
            },
            _ => {
                return Err(RequestError::invalid(
                    "tool_choice.type",
                    "expected auto, any, none or tool",
                )
                .into());
            }
        }),
    };
    let messages = messages(&body)?;
    Ok(pb::CompleteRequest {
        tools: body
            .tools
            .iter()
            .map(|t| pb::Tool {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters_json: t
                    .input_schema
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_default(),
            })
            .collect(),
        tool_choice,
        route: Some(body.knobs.route(&body.model, messages)?),
        temperature: body.temperature,
        top_p: body.top_p,
        max_tokens: body.max_tokens,
        stop: body.stop_sequences,
    })
}

fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" | "max_tokens" => "max_tokens",
        "tool_calls" | "tool_use" => "tool_use",
        "stop_sequence" => "stop_sequence",
        _ => "end_turn",
    }
}

fn tool_block(c: &crate::providers::ToolCall) -> Value {
    let input: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input})
}

/// `POST /v1/messages`.
pub(crate) async fn messages_handler(
    State(core): State<Triage>,
    caller: Option<axum::Extension<crate::http::Caller>>,
    body: Result<Json<MessagesBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return error(&crate::http::rejection(&e)),
    };
    let stream = body.stream;
    let model = body.model.clone();
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
        return stream_response(core, input, chat, deadline, model).await;
    }
    let c = match core.complete(input, chat, deadline, None).await {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let mut content = Vec::new();
    if !c.response.text.is_empty() {
        content.push(json!({"type": "text", "text": c.response.text}));
    }
    content.extend(c.response.tool_calls.iter().map(tool_block));
    let id = c.decision.decision_id.to_string();
    let mut resp = Json(json!({
        "id": format!("msg_{}", id.replace('-', "")),
        "type": "message",
        "role": "assistant",
        "model": c.model,
        "content": content,
        "stop_reason": if c.response.tool_calls.is_empty() { stop_reason(&c.response.finish_reason) } else { "tool_use" },
        "stop_sequence": null,
        "usage": {"input_tokens": c.response.input_tokens, "output_tokens": c.response.output_tokens},
        "triage": {"decision_id": id, "tier": c.decision.tier_name, "provider": c.provider,
                   "reason": c.decision.reason, "cost_usd": c.cost_usd},
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(DECISION_HEADER, v);
    }
    resp
}

async fn stream_response(
    core: Triage,
    input: crate::engine::RouteInput,
    chat: crate::providers::ChatRequest,
    deadline: std::time::Instant,
    model: String,
) -> Response {
    let (decision, mut pieces) = match core.complete_stream(input, chat, deadline, None).await {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let id = decision.decision_id.to_string();
    let msg_id = format!("msg_{}", id.replace('-', ""));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let ev = |name: &str, data: Value| Event::default().event(name).data(data.to_string());
        let start = json!({"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}}});
        if tx.send(Ok(ev("message_start", start))).await.is_err() {
            return;
        }
        let mut text_open = false;
        let mut index = 0usize;
        while let Some(piece) = pieces.recv().await {
            match piece {
                Piece::Text(t) => {
                    if !text_open {
                        text_open = true;
                        let b = json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}});
                        if tx.send(Ok(ev("content_block_start", b))).await.is_err() {
                            return;
                        }
                    }
                    let d = json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}});
                    if tx.send(Ok(ev("content_block_delta", d))).await.is_err() {
                        // The client went away: dropping `pieces` cancels the upstream call.
                        return;
                    }
                }
                Piece::Done(d) => {
                    let mut out = Vec::new();
                    if text_open {
                        out.push(ev(
                            "content_block_stop",
                            json!({"type": "content_block_stop", "index": index}),
                        ));
                        index += 1;
                    }
                    for c in &d.tool_calls {
                        let mut block = tool_block(c);
                        let input = block["input"].take();
                        block["input"] = json!({});
                        out.push(ev("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": block})));
                        out.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": input.to_string()}})));
                        out.push(ev(
                            "content_block_stop",
                            json!({"type": "content_block_stop", "index": index}),
                        ));
                        index += 1;
                    }
                    let reason = if d.tool_calls.is_empty() {
                        stop_reason(&d.finish_reason)
                    } else {
                        "tool_use"
                    };
                    out.push(ev(
                        "message_delta",
                        json!({"type": "message_delta",
                        "delta": {"stop_reason": reason, "stop_sequence": null},
                        "usage": {"output_tokens": d.output_tokens}}),
                    ));
                    out.push(ev("message_stop", json!({"type": "message_stop"})));
                    for e in out {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Piece::Failed(e) => {
                    // Anthropic clients raise on an `error` event.
                    let _ = tx
                        .send(Ok(ev(
                            "error",
                            json!({"type": "error", "error": {"type": "api_error", "message": e.public_message()}}),
                        )))
                        .await;
                    return;
                }
            }
        }
    });
    let mut resp = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(DECISION_HEADER, v);
    }
    resp
}
