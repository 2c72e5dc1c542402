//! The gRPC door: parse each request at the edge, call the core ([`crate::app`]), convert back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::app::{Completion, Piece, Triage};
use crate::auth::Scope;
use crate::config::Config;
use crate::engine::{Decision, RouteInput};
use crate::error::{Error, RequestError};
use crate::feedback::{OutcomeRecord, now_ms};
use crate::policy::Knobs;
use crate::proto::v1 as pb;
use crate::proto::v1::router_server::Router;
use crate::providers::{ChatRequest, Role};

/// The `triage.v1.Router` service: parses each request, calls the core, converts back.
#[derive(Debug, Clone)]
pub struct RouterService {
    core: Triage,
}

impl RouterService {
    /// The gRPC door over the core.
    pub fn new(core: Triage) -> Self {
        Self { core }
    }

    /// The caller's identity for a call of `scope`, from the `authorization` metadata.
    fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        scope: crate::auth::Scope,
    ) -> Result<Option<crate::auth::Identity>, Error> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.core
            .authorize(crate::auth::bearer(header, None).as_deref(), scope)
    }

    /// The non-gateway RPCs' deadline (`server.request_timeout_ms`), answered with
    /// `DEADLINE_EXCEEDED` rather than a bare cancellation.
    async fn within<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let limit = self.core.config().server.request_timeout;
        tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
            Err(Error::DeadlineExceeded(format!(
                "no answer within server.request_timeout_ms ({} ms)",
                limit.as_millis()
            )))
        })
    }
}

/// The slot [`crate::admission::AdmitLayer`] took before the body was read; `None` when the
/// service runs without the layer, and the core admits the call itself.
fn admitted<T>(request: &Request<T>) -> Option<crate::admission::Permit> {
    request
        .extensions()
        .get::<crate::admission::Admitted>()
        .and_then(crate::admission::Admitted::take)
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), less a
/// little, so the core answers `DEADLINE_EXCEEDED` before the transport cancels the call.
pub fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.mul_f64(0.98).saturating_sub(Duration::from_millis(5)))
}

/// A `CompleteRequest` parsed into the core's inputs.
pub fn parse_complete(
    req: pb::CompleteRequest,
    config: &Config,
) -> Result<(RouteInput, ChatRequest), RequestError> {
    let route = req.route.clone().unwrap_or_default();
    let chat = chat_request(&req, &route.messages, config)?;
    Ok((validate_route(route, config)?, chat))
}

fn json_object(field: &str, text: &str) -> Result<serde_json::Value, RequestError> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(RequestError::invalid(field, "must be a JSON object")),
        Err(e) => Err(RequestError::invalid(
            field,
            format!("is not valid JSON: {e}"),
        )),
    }
}

/// Both OpenAI and Anthropic accept function names of this shape and no others.
fn check_tool_name(field: &str, name: &str) -> Result<(), RequestError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RequestError::invalid(
            field,
            format!("{name:?} must be 1 to 64 characters of a-z, A-Z, 0-9, _ or -"),
        ))
    }
}

/// Checks the tool definitions and the tool choice of a `CompleteRequest`.
fn tools(
    req: &pb::CompleteRequest,
    max_tools: usize,
) -> Result<
    (
        Vec<crate::providers::ToolDef>,
        Option<crate::providers::ToolChoice>,
    ),
    RequestError,
> {
    use crate::providers::{ToolChoice, ToolDef};
    if req.tools.len() > max_tools {
        return Err(RequestError::invalid(
            "tools",
            format!(
                "{} tools exceed the limit of {max_tools} (server.max_tools)",
                req.tools.len()
            ),
        ));
    }
    let mut defs = Vec::with_capacity(req.tools.len());
    for (i, t) in req.tools.iter().enumerate() {
        check_tool_name(&format!("tools[{i}].name"), &t.name)?;
        if req.tools[..i].iter().any(|u| u.name == t.name) {
            return Err(RequestError::invalid(
                format!("tools[{i}].name"),
                format!("{:?} is defined twice", t.name),
            ));
        }
        let mut parameters =
            json_object(&format!("tools[{i}].parameters_json"), &t.parameters_json)?;
        // An empty schema still has to say it describes an object for both providers.
        if parameters.get("type").is_none() {
            parameters["type"] = serde_json::json!("object");
        }
        defs.push(ToolDef {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters,
        });
    }
    let choice = match &req.tool_choice {
        None => None,
        Some(c) => Some(match c.mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            "function" => {
                if !req.tools.iter().any(|t| t.name == c.function) {
                    return Err(RequestError::invalid(
                        "tool_choice.function",
                        format!("{:?} is not one of the request's tools", c.function),
                    ));
                }
                ToolChoice::Function(c.function.clone())
            }
            other => {
                return Err(RequestError::invalid(
                    "tool_choice.mode",
                    format!("unknown mode {other:?} (expected auto, none, required or function)"),
                ));
            }
        }),
    };
    if matches!(choice, Some(ToolChoice::Required)) && defs.is_empty() {
        return Err(RequestError::invalid(
            "tool_choice.mode",
            "\"required\" needs at least one tool in tools",
        ));
    }
    Ok((defs, choice))
}

/// A message's role, parsed once; `developer` (OpenAI's newer name) is a system message.
fn parse_role(i: usize, name: &str) -> Result<Role, RequestError> {
    Role::parse(name).ok_or_else(|| {
        RequestError::invalid(
            format!("messages[{i}].role"),
            format!(
                "unknown role {name:?} (expected one of {})",
                Role::NAMES.join(", ")
            ),
        )
    })
}

/// Checks a conversation's tool turns: results name their call, calls are well formed.
fn chat_messages(
    messages: &[pb::Message],
) -> Result<Vec<crate::providers::ChatMessage>, RequestError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = parse_role(i, &m.role)?;
        if role == Role::Tool && m.tool_call_id.is_empty() {
            return Err(RequestError::invalid(
                format!("messages[{i}].tool_call_id"),
                "is required for role \"tool\" (the id of the call it answers)",
            ));
        }
        if !m.tool_calls.is_empty() && role != Role::Assistant {
            return Err(RequestError::invalid(
                format!("messages[{i}].tool_calls"),
                format!("only assistant messages carry tool calls, not {:?}", m.role),
            ));
        }
        let mut calls = Vec::with_capacity(m.tool_calls.len());
        for (j, c) in m.tool_calls.iter().enumerate() {
            let field = format!("messages[{i}].tool_calls[{j}]");
            if c.id.is_empty() {
                return Err(RequestError::invalid(
                    format!("{field}.id"),
                    "must not be empty",
                ));
            }
            check_tool_name(&format!("{field}.name"), &c.name)?;
            json_object(&format!("{field}.arguments_json"), &c.arguments_json)?;
            // Passed on as written (only checked), so nothing about the call changes.
            let arguments = if c.arguments_json.trim().is_empty() {
                "{}".to_string()
            } else {
                c.arguments_json.clone()
            };
            calls.push(crate::providers::ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments,
            });
        }
        out.push(crate::providers::ChatMessage {
            role,
            content: m.content.clone(),
            tool_call_id: (!m.tool_call_id.is_empty()).then(|| m.tool_call_id.clone()),
            tool_calls: calls,
        });
    }
    Ok(out)
}

/// Checks the sampling parameters and tools of a `CompleteRequest`.
fn chat_request(
    req: &pb::CompleteRequest,
    messages: &[pb::Message],
    config: &Config,
) -> Result<crate::providers::ChatRequest, RequestError> {
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(RequestError::invalid(
            "temperature",
            format!("must be in [0, 2], got {t}"),
        ));
    }
    if let Some(p) = req.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(RequestError::invalid(
            "top_p",
            format!("must be in (0, 1], got {p}"),
        ));
    }
    if req.max_tokens == Some(0) {
        return Err(RequestError::invalid("max_tokens", "must be at least 1"));
    }
    let (tools, tool_choice) = tools(req, config.server.max_tools)?;
    Ok(crate::providers::ChatRequest {
        messages: chat_messages(messages)?,
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        stop: req.stop.clone(),
        tools,
        tool_choice,
    })
}

/// Checks labels (and any extra named strings) against the feedback limits.
fn check_labels(
    config: &Config,
    field: &str,
    labels: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>, RequestError> {
    let f = &config.feedback;
    if labels.len() > f.max_labels {
        return Err(RequestError::invalid(
            field,
            format!(
                "{} labels exceed the limit of {} (feedback.max_labels)",
                labels.len(),
                f.max_labels
            ),
        ));
    }
    for (k, v) in labels {
        if k.len() > f.max_label_bytes || v.len() > f.max_label_bytes {
            return Err(RequestError::invalid(
                format!("{field}[{k:?}]"),
                format!(
                    "keys and values are limited to {} bytes (feedback.max_label_bytes)",
                    f.max_label_bytes
                ),
            ));
        }
    }
    Ok(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn check_short(config: &Config, field: &str, value: Option<&str>) -> Result<(), RequestError> {
    let limit = config.feedback.max_label_bytes;
    match value {
        Some(v) if v.len() > limit => Err(RequestError::invalid(
            field,
            format!(
                "{} bytes exceed the limit of {limit} bytes (feedback.max_label_bytes)",
                v.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether `text` has a character a reader would see: not whitespace, not a control, and not
/// an invisible format character (zero-width space and joiners, word joiner, BOM, bidi marks),
/// which would otherwise route an effectively empty prompt.
pub fn has_visible_text(text: &str) -> bool {
    text.chars().any(|c| {
        !c.is_whitespace()
            && !c.is_control()
            && !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}')
    })
}

/// Checks an `OutcomeRequest` and turns it into a record.
pub fn validate_outcome(
    req: pb::OutcomeRequest,
    config: &Config,
    now_ms: u64,
) -> Result<OutcomeRecord, RequestError> {
    let id = uuid::Uuid::parse_str(&req.decision_id).map_err(|_| {
        RequestError::invalid(
            "decision_id",
            format!("{:?} is not a decision id (a UUID)", req.decision_id),
        )
    })?;
    let source = match pb::OutcomeSource::try_from(req.source) {
        Ok(pb::OutcomeSource::User) => "user",
        Ok(pb::OutcomeSource::Judge) => "judge",
        Ok(pb::OutcomeSource::Validator) => "validator",
        Ok(pb::OutcomeSource::Escalation) => "escalation",
        _ => {
            return Err(RequestError::invalid(
                "source",
                "is required: OUTCOME_SOURCE_USER, _JUDGE, _VALIDATOR or _ESCALATION",
            ));
        }
    };
    if let Some(q) = req.quality
        && !(0.0..=1.0).contains(&q)
    {
        return Err(RequestError::invalid(
            "quality",
            format!("must be in [0, 1], got {q}"),
        ));
    }
    if let Some(c) = req.cost_usd
        && !(c.is_finite() && c >= 0.0)
    {
        return Err(RequestError::invalid(
            "cost_usd",
            format!("must be a finite number >= 0, got {c}"),
        ));
    }
    let skew = u64::try_from(config.feedback.max_clock_skew.as_millis()).unwrap_or(u64::MAX);
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let observed = req.observed_at_unix_ms.unwrap_or(now);
    if observed > now.saturating_add(i64::try_from(skew).unwrap_or(i64::MAX)) {
        return Err(RequestError::invalid(
            "observed_at_unix_ms",
            format!(
                "{observed} is {} ms in the future; the limit is {skew} ms (feedback.max_clock_skew_ms)",
                observed - now
            ),
        ));
    }
    if observed < 0 {
        return Err(RequestError::invalid(
            "observed_at_unix_ms",
            format!("must not be negative, got {observed}"),
        ));
    }
    check_short(config, "error_class", req.error_class.as_deref())?;
    let labels = check_labels(config, "labels", &req.labels)?;
    Ok(OutcomeRecord {
        decision_id: id.to_string(),
        source: source.into(),
        success: req.success,
        quality: req.quality,
        latency_ms: req.latency_ms,
        input_tokens: req.input_tokens,
        output_tokens: req.output_tokens,
        cost_usd: req.cost_usd,
        error_class: req.error_class,
        labels,
        observed_at_unix_ms: observed,
        recorded_at_unix_ms: now_ms,
        orphan: false,
    })
}

fn tier_knob(
    config: &Config,
    field: &str,
    name: Option<&str>,
) -> Result<Option<usize>, RequestError> {
    let Some(name) = name else { return Ok(None) };
    config.tier_index(name).map(Some).ok_or_else(|| {
        RequestError::invalid(
            field,
            format!(
                "unknown tier {name:?} (tiers: {})",
                config.tier_names().join(", ")
            ),
        )
    })
}

/// Checks a `RouteRequest` against the config's limits and turns it into an engine input.
pub fn validate_route(req: pb::RouteRequest, config: &Config) -> Result<RouteInput, RequestError> {
    let limits = &config.server;
    if req.messages.len() > limits.max_messages {
        return Err(RequestError::invalid(
            "messages",
            format!(
                "{} messages exceed the limit of {} (server.max_messages)",
                req.messages.len(),
                limits.max_messages
            ),
        ));
    }
    if let Some(id) = &req.request_id
        && id.len() > limits.max_request_id_bytes
    {
        return Err(RequestError::invalid(
            "request_id",
            format!(
                "{} bytes exceed the limit of {} bytes (server.max_request_id_bytes)",
                id.len(),
                limits.max_request_id_bytes
            ),
        ));
    }
    let roles: Vec<Role> = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| parse_role(i, &m.role))
        .collect::<Result<_, _>>()?;
    let Some(last_user) = roles.iter().rposition(|r| *r == Role::User) else {
        return Err(RequestError::invalid(
            "messages",
            if req.messages.is_empty() {
                "is empty; send at least one message with role \"user\"".to_string()
            } else {
                "has no message with role \"user\" to route".to_string()
            },
        ));
    };
    let prompt = &req.messages[last_user].content;
    let field = format!("messages[{last_user}].content");
    if !has_visible_text(prompt) {
        return Err(RequestError::invalid(
            field,
            "the routed user message is empty, or only whitespace and invisible characters",
        ));
    }
    if prompt.len() > limits.max_prompt_bytes {
        return Err(RequestError::invalid(
            field,
            format!(
                "{} bytes exceed the limit of {} bytes (server.max_prompt_bytes)",
                prompt.len(),
                limits.max_prompt_bytes
            ),
        ));
    }
    check_short(config, "tenant", req.tenant.as_deref())?;
    let labels = check_labels(config, "labels", &req.labels)?;
    let min_tier = tier_knob(config, "min_tier", req.min_tier.as_deref())?;
    let max_tier = tier_knob(config, "max_tier", req.max_tier.as_deref())?;
    if let (Some(lo), Some(hi)) = (min_tier, max_tier)
        && lo > hi
    {
        return Err(RequestError::invalid(
            "min_tier",
            format!(
                "{:?} is dearer than max_tier {:?}",
                config.tiers[lo].name, config.tiers[hi].name
            ),
        ));
    }
    if let Some(c) = req.max_cost_usd
        && !(c.is_finite() && c >= 0.0)
    {
        return Err(RequestError::invalid(
            "max_cost_usd",
            format!("must be a finite number >= 0, got {c}"),
        ));
    }
    if let Some(q) = req.quality_target
        && !(0.0..=1.0).contains(&q)
    {
        return Err(RequestError::invalid(
            "quality_target",
            format!("must be in [0, 1], got {q}"),
        ));
    }
    let prior_turns = roles[..last_user].iter().filter(|r| r.is_turn()).count();
    let mut messages = req.messages;
    let prompt = std::mem::take(&mut messages[last_user].content);
    let context = messages
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != last_user)
        .map(|(_, m)| m.content)
        .collect();
    Ok(RouteInput {
        prompt,
        context,
        prior_turns: u32::try_from(prior_turns).unwrap_or(u32::MAX),
        knobs: Knobs {
            min_tier,
            max_tier,
            max_cost_usd: req.max_cost_usd,
            latency_sensitive: req.latency_sensitive,
            quality_target: req.quality_target,
        },
        tenant: req.tenant,
        labels,
    })
}

/// Converts an engine decision to its protobuf form.
pub fn decision_to_proto(d: Decision, request_id: Option<String>) -> pb::RouteDecision {
    pb::RouteDecision {
        decision_id: d.decision_id.to_string(),
        tier: d.tier_name,
        chain: d
            .chain
            .into_iter()
            .map(|m| pb::ModelRef {
                provider: m.provider,
                model: m.model,
            })
            .collect(),
        estimated_cost_usd: d.estimated_cost_usd,
        tiers: d
            .tiers
            .into_iter()
            .map(|(tier, v)| pb::TierEstimate {
                tier,
                p_sufficient: v.p_sufficient,
                threshold: v.threshold,
                estimated_cost_usd: v.cost_usd,
                eligible: v.eligible,
            })
            .collect(),
        features: Some(pb::FeatureSummary {
            prompt_tokens: d.prompt_tokens,
            context_tokens: d.context_tokens,
            markers: d.markers.names().into_iter().map(String::from).collect(),
        }),
        model_version: d.model_version,
        reason: d.reason,
        request_id,
        explored: d.explored,
        propensity: d.propensity,
    }
}

fn tool_calls_to_proto(calls: Vec<crate::providers::ToolCall>) -> Vec<pb::ToolCall> {
    calls
        .into_iter()
        .map(|c| pb::ToolCall {
            id: c.id,
            name: c.name,
            arguments_json: c.arguments,
        })
        .collect()
}

fn attempts_to_proto(a: &[crate::chain::Attempt]) -> Vec<pb::Attempt> {
    a.iter()
        .map(|a| pb::Attempt {
            provider: a.provider.clone(),
            model: a.model.clone(),
            outcome: a.outcome.clone(),
            latency_ms: a.latency_ms,
        })
        .collect()
}

fn completion_to_proto(c: Completion, request_id: Option<String>) -> pb::CompleteResponse {
    pb::CompleteResponse {
        provider: c.provider,
        model: c.model,
        text: c.response.text,
        finish_reason: c.response.finish_reason,
        input_tokens: c.response.input_tokens,
        output_tokens: c.response.output_tokens,
        cost_usd: c.cost_usd,
        attempts: attempts_to_proto(&c.attempts),
        tool_calls: tool_calls_to_proto(c.response.tool_calls),
        decision: Some(decision_to_proto(c.decision, request_id)),
    }
}

fn piece_to_proto(p: Piece) -> Result<pb::CompleteChunk, Status> {
    use pb::complete_chunk::Kind;
    match p {
        Piece::Text(t) => Ok(pb::CompleteChunk {
            kind: Some(Kind::Delta(t)),
        }),
        Piece::Done(d) => Ok(pb::CompleteChunk {
            kind: Some(Kind::Done(pb::CompleteDone {
                provider: d.provider,
                model: d.model,
                finish_reason: d.finish_reason,
                input_tokens: d.input_tokens,
                output_tokens: d.output_tokens,
                cost_usd: d.cost_usd,
                attempts: attempts_to_proto(&d.attempts),
                tool_calls: tool_calls_to_proto(d.tool_calls),
            })),
        }),
        Piece::Failed(e) => Err(e.into()),
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    type CompleteStreamStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::CompleteChunk, Status>> + Send + 'static>,
    >;

    async fn complete_stream(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<Self::CompleteStreamStream>, Status> {
        use tokio_stream::StreamExt;
        let who = self.caller(request.metadata(), Scope::Client)?;
        let deadline = self.core.call_deadline(caller_deadline(request.metadata()));
        let slot = admitted(&request);
        let req = request.into_inner();
        let request_id = req.route.as_ref().and_then(|r| r.request_id.clone());
        let (mut input, chat) = parse_complete(req, self.core.config()).map_err(Error::from)?;
        input.attribute(who.as_ref());
        let (decision, pieces) = self
            .core
            .complete_stream(input, chat, deadline, slot)
            .await?;
        let first = pb::CompleteChunk {
            kind: Some(pb::complete_chunk::Kind::Decision(decision_to_proto(
                decision, request_id,
            ))),
        };
        let rest = tokio_stream::wrappers::ReceiverStream::new(pieces).map(piece_to_proto);
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(first)).chain(rest),
        )))
    }

    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteDecision>, Status> {
        let who = self.caller(request.metadata(), Scope::Client)?;
        let slot = admitted(&request);
        let req = request.into_inner();
        let request_id = req.request_id.clone();
        let mut input = validate_route(req, self.core.config()).map_err(Error::from)?;
        input.attribute(who.as_ref());
        let (decision, _) = self.within(self.core.route(input, slot)).await?;
        Ok(Response::new(decision_to_proto(decision, request_id)))
    }

    async fn record_outcome(
        &self,
        request: Request<pb::OutcomeRequest>,
    ) -> Result<Response<pb::OutcomeAck>, Status> {
        self.caller(request.metadata(), Scope::Client)?;
        let slot = admitted(&request);
        let record = validate_outcome(request.into_inner(), self.core.config(), now_ms())
            .map_err(Error::from)?;
        let stored = self.within(self.core.record_outcome(record, slot)).await?;
        Ok(Response::new(pb::OutcomeAck {
            duplicate: stored.duplicate,
            orphan: stored.orphan,
        }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let who = self.caller(request.metadata(), Scope::Client)?;
        let deadline = self.core.call_deadline(caller_deadline(request.metadata()));
        let slot = admitted(&request);
        let req = request.into_inner();
        let request_id = req.route.as_ref().and_then(|r| r.request_id.clone());
        let (mut input, chat) = parse_complete(req, self.core.config()).map_err(Error::from)?;
        input.attribute(who.as_ref());
        let c = self.core.complete(input, chat, deadline, slot).await?;
        Ok(Response::new(completion_to_proto(c, request_id)))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.caller(request.metadata(), Scope::Admin)?;
        let s = self.core.stats();
        let mut r = pb::StatsResponse {
            model_version: s.model_version,
            providers: s
                .providers
                .into_iter()
                .map(|h| pb::ProviderHealth {
                    provider: h.provider,
                    model: h.model,
                    latency_ms: h.latency_ms.unwrap_or(0.0),
                    samples: h.samples,
                    breaker: h.breaker.name().into(),
                    recent_failures: u64::try_from(h.recent_failures).unwrap_or(u64::MAX),
                })
                .collect(),
            ..Default::default()
        };
        if let Some(c) = s.feedback {
            r.feedback_enabled = true;
            r.decisions_written = c.decisions_written;
            r.decisions_dropped = c.decisions_dropped;
            r.outcomes_stored = c.outcomes_stored;
            r.outcomes_duplicate = c.outcomes_duplicate;
            r.outcomes_orphan = c.outcomes_orphan;
            r.write_errors = c.write_errors;
            r.out_of_space = c.out_of_space;
            r.decisions_capped = c.decisions_capped;
        }
        Ok(Response::new(r))
    }

    async fn reload_model(
        &self,
        request: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        self.caller(request.metadata(), Scope::Admin)?;
        let req = request.into_inner();
        let path = (!req.path.is_empty()).then(|| std::path::PathBuf::from(req.path));
        let version = self.core.reload(path).await?;
        Ok(Response::new(pb::ReloadModelResponse {
            model_version: version,
        }))
    }
}

#[cfg(test)]
mod tests;
