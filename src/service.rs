//! The tonic handlers: validate the request, call the engine, convert to protobuf. No decisions here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::engine::{Decision, Engine, RouteInput};
use crate::error::{Error, RequestError};
use crate::feedback::{DecisionRecord, Feedback, KnobsRecord, OutcomeRecord, now_ms};
use crate::policy::Knobs;
use crate::proto::v1 as pb;
use crate::proto::v1::router_server::Router;

/// Roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The `triage.v1.Router` service.
#[derive(Debug, Clone)]
pub struct RouterService {
    engine: Arc<Engine>,
    feedback: Option<Arc<Feedback>>,
    gateway: Option<Arc<crate::chain::Gateway>>,
}

impl RouterService {
    /// Tier names, cheapest first.
    pub fn tier_names(&self) -> Vec<String> {
        self.engine.config().tier_names()
    }

    /// A service over an engine; with `feedback`, decisions are logged and outcomes accepted;
    /// with `gateway`, `Complete` calls providers.
    pub fn new(
        engine: Arc<Engine>,
        feedback: Option<Arc<Feedback>>,
        gateway: Option<Arc<crate::chain::Gateway>>,
    ) -> Self {
        Self {
            engine,
            feedback,
            gateway,
        }
    }

    /// Validates, routes (off the async workers for large requests) and logs one request.
    async fn decide(&self, req: pb::RouteRequest) -> Result<(Decision, RouteInput), Error> {
        let input = validate_route(req, self.engine.config())?;
        let bytes = input.prompt.len() + input.context.iter().map(String::len).sum::<usize>();
        // Featurizing is CPU work proportional to the text: large requests go to the blocking
        // pool so they cannot stall the async workers that serve everyone else.
        let (decision, input) = if bytes >= self.engine.config().server.blocking_threshold_bytes {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || (engine.route(&input), input))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
        } else {
            (self.engine.route(&input), input)
        };
        let decision = decision?;
        if let Some(fb) = &self.feedback {
            fb.log_decision(decision_record(
                &decision,
                &input,
                self.engine.config(),
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
}

/// Parses a JSON text that must be an object; empty means `{}`.
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

/// Checks a conversation's tool turns: results name their call, calls are well formed.
fn chat_messages(
    messages: &[pb::Message],
) -> Result<Vec<crate::providers::ChatMessage>, RequestError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        if m.role == "tool" && m.tool_call_id.is_empty() {
            return Err(RequestError::invalid(
                format!("messages[{i}].tool_call_id"),
                "is required for role \"tool\" (the id of the call it answers)",
            ));
        }
        if !m.tool_calls.is_empty() && m.role != "assistant" {
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
            role: m.role.clone(),
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
    let skew = config.feedback.max_clock_skew_ms;
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

fn decision_record(
    d: &Decision,
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
        features: d.features.clone(),
        prompt_tokens: d.prompt_tokens,
        context_tokens: d.context_tokens,
        estimated_cost_usd: d.estimated_cost_usd,
        prompt_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        prompt: store_prompt.then(|| input.prompt.clone()),
    }
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
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(RequestError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "unknown role {:?} (expected one of {})",
                    m.role,
                    ROLES.join(", ")
                ),
            ));
        }
    }
    let Some(last_user) = req.messages.iter().rposition(|m| m.role == "user") else {
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
    if prompt.trim().is_empty() {
        return Err(RequestError::invalid(
            field,
            "the routed user message is empty or whitespace only",
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
    let prior_turns = req.messages[..last_user]
        .iter()
        .filter(|m| m.role == "user" || m.role == "assistant")
        .count();
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

impl RouterService {
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
        let fb = fb.clone();
        tokio::spawn(async move {
            if let Err(e) = fb.record_outcome(record).await {
                tracing::warn!(error = %e, "automatic outcome not recorded");
            }
        });
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    type CompleteStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::CompleteChunk, Status>>;

    async fn complete_stream(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<Self::CompleteStreamStream>, Status> {
        let Some(gateway) = self.gateway.clone() else {
            return Err(Error::FailedPrecondition(
                "no providers are configured on this server ([providers.NAME] in the config)"
                    .into(),
            )
            .into());
        };
        let req = request.into_inner();
        let route = req.route.clone().unwrap_or_default();
        let chat =
            chat_request(&req, &route.messages, self.engine.config()).map_err(Error::from)?;
        let request_id = route.request_id.clone();
        let (decision, input) = self.decide(route).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::CompleteChunk, Status>>(64);
        let this = self.clone();
        tokio::spawn(async move {
            use pb::complete_chunk::Kind;
            let tier = this.engine.config().tiers[decision.tier].clone();
            let chain = decision.chain.clone();
            let decision_id = decision.decision_id.to_string();
            let first = pb::CompleteChunk {
                kind: Some(Kind::Decision(decision_to_proto(decision, request_id))),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let (text_tx, mut text_rx) = tokio::sync::mpsc::channel::<String>(64);
            let forward = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(t) = text_rx.recv().await {
                        if tx
                            .send(Ok(pb::CompleteChunk {
                                kind: Some(Kind::Delta(t)),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                })
            };
            let result = gateway
                .run_stream(&chain, &chat, input.knobs.latency_sensitive, &text_tx)
                .await;
            drop(text_tx);
            let _ = forward.await;
            match result {
                Ok(s) => {
                    let cost = tier.cost_usd(s.input_tokens, s.output_tokens);
                    let latency: u64 = s.attempts.iter().map(|a| a.latency_ms).sum();
                    this.record_call(
                        decision_id,
                        latency,
                        Some((s.input_tokens, s.output_tokens)),
                        cost,
                        None,
                    );
                    let member = &chain[s.member];
                    let done = pb::CompleteDone {
                        provider: member.provider.clone(),
                        model: member.model.clone(),
                        finish_reason: s.finish_reason,
                        input_tokens: s.input_tokens,
                        output_tokens: s.output_tokens,
                        cost_usd: cost,
                        attempts: attempts_to_proto(&s.attempts),
                        tool_calls: tool_calls_to_proto(s.tool_calls),
                    };
                    let _ = tx
                        .send(Ok(pb::CompleteChunk {
                            kind: Some(Kind::Done(done)),
                        }))
                        .await;
                }
                Err(e) => {
                    let (class, status) = match &e {
                        crate::chain::StreamError::Chain(crate::chain::ChainError::Invalid {
                            ..
                        }) => ("invalid_request", Status::invalid_argument(e.to_string())),
                        crate::chain::StreamError::Chain(crate::chain::ChainError::Exhausted(
                            _,
                        )) => ("all_providers_failed", Status::unavailable(e.to_string())),
                        crate::chain::StreamError::Interrupted { .. } => {
                            ("interrupted", Status::unavailable(e.to_string()))
                        }
                    };
                    this.record_call(decision_id, 0, None, 0.0, Some(class));
                    let _ = tx.send(Err(status)).await;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteDecision>, Status> {
        let req = request.into_inner();
        let request_id = req.request_id.clone();
        let (decision, _) = self.decide(req).await?;
        Ok(Response::new(decision_to_proto(decision, request_id)))
    }

    async fn record_outcome(
        &self,
        request: Request<pb::OutcomeRequest>,
    ) -> Result<Response<pb::OutcomeAck>, Status> {
        let Some(fb) = &self.feedback else {
            return Err(Error::FailedPrecondition(
                "feedback is disabled on this server (feedback.enabled = false)".into(),
            )
            .into());
        };
        let record = validate_outcome(request.into_inner(), self.engine.config(), now_ms())
            .map_err(Error::from)?;
        let stored = fb
            .record_outcome(record)
            .await
            .map_err(|e| Error::Unavailable(format!("outcome not recorded, retry: {e}")))?;
        Ok(Response::new(pb::OutcomeAck {
            duplicate: stored.duplicate,
            orphan: stored.orphan,
        }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let Some(gateway) = &self.gateway else {
            return Err(Error::FailedPrecondition(
                "no providers are configured on this server ([providers.NAME] in the config)"
                    .into(),
            )
            .into());
        };
        let req = request.into_inner();
        let route = req.route.clone().unwrap_or_default();
        let chat =
            chat_request(&req, &route.messages, self.engine.config()).map_err(Error::from)?;
        let request_id = route.request_id.clone();
        let (decision, input) = self.decide(route).await?;
        let tier = &self.engine.config().tiers[decision.tier];
        let result = gateway
            .run(&decision.chain, &chat, input.knobs.latency_sensitive)
            .await;
        let attempts = match &result {
            Ok(a) => &a.attempts,
            Err(
                crate::chain::ChainError::Exhausted(a)
                | crate::chain::ChainError::Invalid { attempts: a, .. },
            ) => a,
        };
        let latency_ms: u64 = attempts.iter().map(|x| x.latency_ms).sum();
        let cost = result
            .as_ref()
            .map(|a| tier.cost_usd(a.response.input_tokens, a.response.output_tokens))
            .unwrap_or(0.0);
        self.record_call(
            decision.decision_id.to_string(),
            latency_ms,
            result
                .as_ref()
                .ok()
                .map(|a| (a.response.input_tokens, a.response.output_tokens)),
            cost,
            result.as_ref().err().map(|e| match e {
                crate::chain::ChainError::Invalid { .. } => "invalid_request",
                crate::chain::ChainError::Exhausted(_) => "all_providers_failed",
            }),
        );
        let answered = result.map_err(|e| match e {
            crate::chain::ChainError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            crate::chain::ChainError::Exhausted(_) => Status::unavailable(e.to_string()),
        })?;
        let member = &decision.chain[answered.member];
        let attempts = attempts_to_proto(&answered.attempts);
        Ok(Response::new(pb::CompleteResponse {
            provider: member.provider.clone(),
            model: member.model.clone(),
            text: answered.response.text,
            finish_reason: answered.response.finish_reason,
            input_tokens: answered.response.input_tokens,
            output_tokens: answered.response.output_tokens,
            cost_usd: cost,
            attempts,
            tool_calls: tool_calls_to_proto(answered.response.tool_calls),
            decision: Some(decision_to_proto(decision, request_id)),
        }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut r = pb::StatsResponse {
            model_version: self
                .engine
                .store()
                .current()
                .classifier
                .version()
                .to_string(),
            ..Default::default()
        };
        if let Some(g) = &self.gateway {
            r.providers = g
                .health()
                .into_iter()
                .map(|h| pb::ProviderHealth {
                    provider: h.provider,
                    model: h.model,
                    latency_ms: h.latency_ms.unwrap_or(0.0),
                    samples: h.samples,
                    breaker: h.breaker.name().into(),
                    recent_failures: u64::try_from(h.recent_failures).unwrap_or(u64::MAX),
                })
                .collect();
        }
        if let Some(fb) = &self.feedback {
            let c = fb.counters();
            r.feedback_enabled = true;
            r.decisions_written = c.decisions_written.load(Relaxed);
            r.decisions_dropped = c.decisions_dropped.load(Relaxed);
            r.outcomes_stored = c.outcomes_stored.load(Relaxed);
            r.outcomes_duplicate = c.outcomes_duplicate.load(Relaxed);
            r.outcomes_orphan = c.outcomes_orphan.load(Relaxed);
            r.write_errors = c.write_errors.load(Relaxed);
        }
        Ok(Response::new(r))
    }

    async fn reload_model(
        &self,
        request: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        let req = request.into_inner();
        let config = self.engine.config();
        let path = if req.path.is_empty() {
            config.model.classifier.clone()
        } else {
            std::path::PathBuf::from(req.path)
        };
        let version = self.engine.store().reload(config, &path).map_err(|e| {
            Error::FailedPrecondition(format!(
                "model not reloaded, the old one keeps serving: {e}"
            ))
        })?;
        tracing::info!(model_version = %version, path = %path.display(), "model reloaded by RPC");
        Ok(Response::new(pb::ReloadModelResponse {
            model_version: version,
        }))
    }
}
