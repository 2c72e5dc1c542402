//! Production hardening: honest feedback, refused unknown fields, authentication, overload,
//! slow clients, health and metrics. Every case here backs a row of docs/failure-behaviour.md.

use std::sync::Arc;

use serde_json::{Value, json};
use triage::feedback::{Feedback, FeedbackLimits};
use triage::proto::v1::{OutcomeRequest, OutcomeSource};
use wiremock::MockServer;

use crate::common::{Server, config};
use crate::gateway::{gateway_config, http_server};

fn feedback(dir: &std::path::Path) -> Arc<Feedback> {
    let limits = FeedbackLimits {
        decision_queue: 64,
        outcome_queue: 64,
        batch: 8,
    };
    Feedback::start(dir, limits, false).unwrap()
}

fn stored_outcomes(fb: &Feedback) -> Vec<Value> {
    let mut out = Vec::new();
    fb.store().export(None, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .flat_map(|l| l["outcomes"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_misspelt_feedback_field_is_refused_and_never_shadows_the_real_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let fb = feedback(dir.path());
    let (base, _stop) = http_server(config(), Some(fb.clone())).await;
    let http = reqwest::Client::new();
    let id = uuid::Uuid::now_v7().to_string();
    let r = http
        .post(format!("{base}/feedback"))
        .json(&json!({"decision_id": id, "qualty": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("unknown field `qualty`"), "{msg}");
    // Latency first (no verdict), then the user's verdict: the verdict is stored, not refused.
    for (body, duplicate) in [
        (json!({"decision_id": id, "latency_ms": 812}), false),
        (
            json!({"decision_id": id, "quality": 0.25, "success": false}),
            false,
        ),
        (json!({"decision_id": id, "quality": 1.0}), true),
    ] {
        let v: Value = http
            .post(format!("{base}/feedback"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["duplicate"], duplicate, "{body} -> {v}");
    }
    let stored = stored_outcomes(&fb);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let o = &stored[0];
    assert_eq!(
        (o["quality"].as_f64(), o["latency_ms"].as_u64()),
        (Some(0.25), Some(812)),
        "{o}"
    );
}

#[tokio::test]
async fn a_verdict_less_grpc_outcome_does_not_block_the_later_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let fb = feedback(dir.path());
    let server = Server::start_with(config(), Some(fb.clone())).await;
    let mut c = server.client().await;
    let d = c
        .route(triage::proto::v1::RouteRequest {
            messages: vec![triage::proto::v1::Message {
                role: "user".into(),
                content: "How are you?".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = OutcomeRequest {
        decision_id: d.decision_id.clone(),
        source: OutcomeSource::User as i32,
        latency_ms: Some(300),
        ..Default::default()
    };
    assert!(
        !c.record_outcome(first)
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    let verdict = OutcomeRequest {
        decision_id: d.decision_id.clone(),
        source: OutcomeSource::User as i32,
        success: Some(true),
        quality: Some(0.8),
        ..Default::default()
    };
    assert!(
        !c.record_outcome(verdict.clone())
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    assert!(
        c.record_outcome(verdict)
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
}

#[tokio::test]
async fn unsupported_chat_fields_are_refused_naming_them_and_harmless_ones_pass() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    let (base, _stop) = http_server(gateway_config(&a.uri(), &b.uri()), None).await;
    let http = reqwest::Client::new();
    let msgs = json!([{"role": "user", "content": "Hello there"}]);
    for (extra, status, want) in [
        (json!({"n": 3}), 400, "n: must be 1"),
        (json!({"logprobs": true}), 400, "logprobs: is not supported"),
        (
            json!({"frobnicate": 1, "seed": 4}),
            400,
            "frobnicate, seed: are not supported",
        ),
    ] {
        let mut body = json!({"model": "triage", "messages": msgs});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = http
            .post(format!("{base}/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{extra}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{extra}: {e}"
        );
        assert!(a.received_requests().await.unwrap().is_empty());
    }
    // triage's own knobs and OpenAI's no-op fields are not "unknown": the request goes on to
    // the (empty) mock, which answers 404, so it fails upstream, not at parsing.
    let r = http
        .post(format!("{base}/chat/completions"))
        .json(
            &json!({"model": "triage", "messages": msgs, "min_tier": "standard",
                      "user": "u-1", "n": 1, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 400, "{}", r.text().await.unwrap());
    // The Anthropic door refuses what it does not implement too.
    let r = http
        .post(format!("{base}/messages"))
        .json(&json!({"model": "triage", "max_tokens": 10, "messages": msgs, "top_k": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("top_k"),
        "{e}"
    );
}
