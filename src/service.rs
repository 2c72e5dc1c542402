//! The tonic handlers: validate the request, call the engine, convert to protobuf. No decisions here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::engine::{Decision, Engine, RouteInput};
use crate::error::{Error, RequestError};
use crate::policy::Knobs;
use crate::proto::v1 as pb;
use crate::proto::v1::router_server::Router;

/// Roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The `triage.v1.Router` service.
#[derive(Debug, Clone)]
pub struct RouterService {
    engine: Arc<Engine>,
}

impl RouterService {
    /// A service over an engine.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
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
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteDecision>, Status> {
        let req = request.into_inner();
        let request_id = req.request_id.clone();
        let input = validate_route(req, self.engine.config()).map_err(Error::from)?;
        let bytes = input.prompt.len() + input.context.iter().map(String::len).sum::<usize>();
        // Featurizing is CPU work proportional to the text: large requests go to the blocking
        // pool so they cannot stall the async workers that serve everyone else.
        let decision = if bytes >= self.engine.config().server.blocking_threshold_bytes {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || engine.route(&input))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
        } else {
            self.engine.route(&input)
        }?;
        tracing::debug!(
            decision_id = %decision.decision_id,
            tier = %decision.tier_name,
            prompt_tokens = decision.prompt_tokens,
            "routed"
        );
        Ok(Response::new(decision_to_proto(decision, request_id)))
    }
}
