//! Production hardening: honest feedback, refused unknown fields, authentication, overload,
//! slow clients, health and metrics. Every case here backs a row of docs/failure-behaviour.md.

use std::sync::Arc;

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use triage::auth::{Auth, Token};
use triage::feedback::{Feedback, FeedbackLimits};
use triage::proto::v1::router_client::RouterClient;
use triage::proto::v1::{Message, OutcomeRequest, OutcomeSource, ReloadModelRequest, RouteRequest};
use wiremock::MockServer;

use crate::common::{Server, config, doors};
use crate::gateway::{gateway_config, http_server};

fn feedback(dir: &std::path::Path) -> Arc<Feedback> {
    let limits = FeedbackLimits {
        decision_queue: 64,
        outcome_queue: 64,
        batch: 8,
        max_store_bytes: None,
    };
    Feedback::start(dir, limits, Default::default(), false).unwrap()
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

async fn grpc_client(url: &str) -> RouterClient<tonic::transport::Channel> {
    for _ in 0..50 {
        if let Ok(c) = RouterClient::connect(url.to_string()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no gRPC server at {url}");
}

const CLIENT: &str = "client-token-aaaaaaaa";
const ROTATED: &str = "client-token-bbbbbbbb";
const ADMIN: &str = "admin-token-cccccccccc";

fn with_tokens(mut c: triage::config::Config) -> triage::config::Config {
    c.auth = Auth {
        clients: vec![
            Token::new("team-a", CLIENT).unwrap(),
            Token::new("team-a-next", ROTATED).unwrap(),
        ],
        admins: vec![Token::new("ops", ADMIN).unwrap()],
        allow_unauthenticated: false,
    };
    c
}

fn route_req(text: &str) -> RouteRequest {
    RouteRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused_on_every_door_and_admin_calls_need_admin() {
    let dir = tempfile::tempdir().unwrap();
    let fb = feedback(dir.path());
    let mut cfg = with_tokens(config());
    cfg.providers.clear();
    let d = doors(cfg, Some(fb.clone())).await;
    let mut c = grpc_client(&d.grpc).await;
    for token in [None, Some("wrong-token-zzzzzzzzzz"), Some("")] {
        let req = match token {
            None => tonic::Request::new(route_req("hi")),
            Some(t) => with_token(route_req("hi"), t),
        };
        let err = c.route(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(err.message(), "missing or invalid bearer token");
    }
    // Both rotation tokens work; the decision is attributed to the token's name.
    let decided = c
        .route(with_token(route_req("hi"), ROTATED))
        .await
        .unwrap()
        .into_inner();
    c.route(with_token(route_req("hello"), CLIENT))
        .await
        .unwrap();
    let err = c
        .stats(with_token(triage::proto::v1::StatsRequest {}, CLIENT))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .reload_model(with_token(ReloadModelRequest::default(), CLIENT))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    c.stats(with_token(triage::proto::v1::StatsRequest {}, ADMIN))
        .await
        .unwrap();
    c.reload_model(with_token(ReloadModelRequest::default(), ADMIN))
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let chat = json!({"model": "triage", "messages": [{"role": "user", "content": "hi"}]});
    let r = http
        .post(format!("{}/v1/chat/completions", d.http))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    let r = http
        .post(format!("{}/v1/chat/completions", d.http))
        .bearer_auth("nope-nope-nope-nope-nope")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The Anthropic door: its own error shape, and the SDK's x-api-key header is accepted.
    let msg = json!({"model": "triage", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let r = http
        .post(format!("{}/v1/messages", d.http))
        .json(&msg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    let r = http
        .post(format!("{}/v1/messages", d.http))
        .header("x-api-key", CLIENT)
        .json(&msg)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        501,
        "authenticated; no providers configured here"
    );
    let r = http
        .get(format!("{}/v1/models", d.http))
        .bearer_auth(CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Metrics need an admin token; health needs none.
    let metrics = |t: &str| {
        http.get(format!("{}/metrics", d.http))
            .bearer_auth(t)
            .send()
    };
    assert_eq!(metrics(CLIENT).await.unwrap().status(), 403);
    assert_eq!(metrics(ADMIN).await.unwrap().status(), 200);
    for path in ["/healthz", "/readyz"] {
        let r = http.get(format!("{}{path}", d.http)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // The token's name is the tenant of a decision that names none.
    let id = decided.decision_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut out = Vec::new();
        fb.store().export(None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains(&id)) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["decision"]["tenant"], "team-a-next", "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "decision never logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!format!("{:?}", with_tokens(config())).contains(CLIENT));
}

#[tokio::test]
async fn a_public_address_without_tokens_refuses_to_start() {
    let engine = crate::common::engine(config());
    let public = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = triage::server::serve(engine, None, None, public, None, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("auth.allow_unauthenticated"),
        "{err}"
    );
}

fn slow_gateway(a: &MockServer, b: &MockServer) -> triage::config::Config {
    let mut c = gateway_config(&a.uri(), &b.uri());
    c.gateway.call_timeout = std::time::Duration::from_millis(20_000);
    c.gateway.attempt_timeout = std::time::Duration::from_millis(10_000);
    c.gateway.first_content_timeout = std::time::Duration::from_millis(10_000);
    c.gateway.max_retries = 0;
    c.server.max_in_flight_completions = 2;
    c.server.max_queued = 0;
    c
}

async fn in_flight_completions(http: &reqwest::Client, base: &str) -> i64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("triage_in_flight{class=\"complete\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_flood_beyond_the_bound_is_refused_at_once_while_admitted_calls_succeed() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(json!({
                    "choices": [{"message": {"role": "assistant", "content": "slow"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}
                }))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&a)
        .await;
    let d = doors(slow_gateway(&a, &b), None).await;
    let http = reqwest::Client::new();
    let chat = json!({"model": "triage", "messages": [{"role": "user", "content": "hi"}]});
    let admitted: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, body) = (
                http.clone(),
                format!("{}/v1/chat/completions", d.http),
                chat.clone(),
            );
            tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap().status() })
        })
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while in_flight_completions(&http, &d.http).await < 2 {
        assert!(
            std::time::Instant::now() < until,
            "the two calls never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Twenty more: every one refused with Retry-After, none queued behind the slow provider.
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let (http, url, body) = (
                http.clone(),
                format!("{}/v1/chat/completions", d.http),
                chat.clone(),
            );
            tokio::spawn(async move {
                let r = http.post(url).json(&body).send().await.unwrap();
                (r.status(), r.headers().get("retry-after").cloned())
            })
        })
        .collect();
    for f in flood {
        let (status, retry) = f.await.unwrap();
        assert_eq!(status, 429);
        assert_eq!(retry.unwrap(), "1");
    }
    let mut c = grpc_client(&d.grpc).await;
    let err = c.complete(crate::gateway::req()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("server.max_in_flight"),
        "{}",
        err.message()
    );
    // Routing has its own bound and is untouched by the saturated completions.
    c.route(route_req("still routing")).await.unwrap();
    for a in admitted {
        assert_eq!(a.await.unwrap(), 200);
    }
}

/// The gRPC door admits a call before reading its body: a call whose body stalls holds the
/// only slot, so the next is refused at once rather than read into memory, and the stalled
/// one is answered DEADLINE_EXCEEDED after server.body_timeout_ms, which frees the slot.
#[tokio::test]
async fn grpc_calls_are_admitted_before_their_bodies_are_read_and_stalled_bodies_time_out() {
    use tokio_stream::StreamExt;
    let mut c = config();
    c.server.max_in_flight_routes = 1;
    c.server.max_queued = 0;
    c.server.body_timeout = Duration::from_millis(1500);
    let server = Server::start(c).await;
    let mut client = server.client().await;
    // A gRPC frame header announcing 1,000 bytes, then nothing more.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&1000u32.to_be_bytes());
    let body = tokio_stream::once(Ok::<_, std::io::Error>(prefix)).chain(tokio_stream::pending());
    triage::providers::install_tls_provider();
    let raw = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let stalled = raw
        .post(format!("http://{}/triage.v1.Router/Route", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let stalled = tokio::spawn(stalled);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match client.route(route_req("hello")).await {
            Err(e) => break e,
            // The stalled call may not have been admitted yet.
            Ok(_) => assert!(
                std::time::Instant::now() < until,
                "the stalled call never held the slot"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("server.max_in_flight_routes"),
        "{}",
        refused.message()
    );
    let answer = tokio::time::timeout(Duration::from_secs(20), stalled)
        .await
        .expect("the stalled call was never answered")
        .unwrap()
        .unwrap();
    assert_eq!(answer.headers()["grpc-status"], "4", "{answer:?}");
    let message = answer.headers()["grpc-message"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("server.body_timeout_ms"), "{message}");
    // The slot is free again.
    client.route(route_req("hello again")).await.unwrap();
}

/// gRPC connections are bounded like HTTP ones: with server.max_connections = 1 a second
/// connection is not served while the first is open, and is served once it closes.
#[tokio::test]
async fn grpc_connections_beyond_the_bound_wait_until_one_closes() {
    let mut c = config();
    c.server.max_connections = 1;
    let server = Server::start(c).await;
    let mut first = server.client().await;
    first.route(route_req("hello")).await.unwrap();
    let lazy = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy();
    let mut second = RouterClient::new(lazy);
    // It cannot be answered while the first connection holds the only slot.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), second.route(route_req("hi")))
            .await
            .is_err(),
        "a second connection was served beyond server.max_connections"
    );
    drop(first);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), second.route(route_req("hi"))).await {
            Ok(Ok(_)) => break,
            _ => assert!(
                std::time::Instant::now() < until,
                "the second connection was never served after the first closed"
            ),
        }
    }
}

/// A connection that trickles its request head, or its body, is closed once
/// server.header_timeout_ms / server.body_timeout_ms pass.
#[tokio::test]
async fn slowloris_connections_are_closed_after_the_read_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config();
    c.server.header_timeout = Duration::from_millis(300);
    c.server.body_timeout = Duration::from_millis(300);
    let d = doors(c, None).await;
    let addr = d.http.trim_start_matches("http://").to_string();
    // Head never finished: the server closes the connection without a request being handled.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a trickled head kept the connection open");
    // Head complete, body trickled: 408 and closed.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"dec")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a trickled body kept the connection open");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    // Meanwhile the server still answers others.
    let r = reqwest::get(format!("{}/healthz", d.http)).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// On shutdown a hung provider call is cut at server.drain_timeout_ms, and readiness turns
/// false first.
#[tokio::test]
async fn shutdown_drains_within_the_deadline_even_with_a_hung_call() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_delay(Duration::from_secs(600)))
        .mount(&a)
        .await;
    let mut c = slow_gateway(&a, &b);
    c.server.drain_timeout = Duration::from_millis(300);
    let mut d = doors(c, None).await;
    let http = reqwest::Client::new();
    let hung = {
        let (http, url) = (http.clone(), format!("{}/v1/chat/completions", d.http));
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"model": "triage", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while in_flight_completions(&http, &d.http).await < 1 {
        assert!(std::time::Instant::now() < until, "the call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.stop.take().unwrap().send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), &mut d.done).await;
    assert!(stopped.is_ok(), "shutdown waited on the hung call");
    stopped.unwrap().unwrap().unwrap();
    // The hung caller got an answer or a closed connection, not a hang.
    let _ = tokio::time::timeout(Duration::from_secs(30), hung)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_metrics_scrape_shows_every_metric_and_no_prompt_text() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(500))
        .mount(&a)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "content": [{"type": "text", "text": "from backup"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 2}
        })))
        .mount(&b)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let fb = feedback(dir.path());
    let mut cfg = slow_gateway(&a, &b);
    cfg.server.max_in_flight_completions = 64;
    let d = doors(cfg, Some(fb)).await;
    let http = reqwest::Client::new();
    let secret_prompt = "my-very-private-prompt-text";
    let v: Value = http
        .post(format!("{}/v1/chat/completions", d.http))
        .json(&json!({"model": "triage", "messages": [{"role": "user", "content": secret_prompt}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["triage"]["decision_id"].as_str().unwrap().to_string();
    http.post(format!("{}/v1/feedback", d.http))
        .json(&json!({"decision_id": id, "quality": 1.0}))
        .send()
        .await
        .unwrap();
    let text = http
        .get(format!("{}/metrics", d.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "triage_decisions_total{",
        "triage_route_duration_seconds_bucket{",
        "triage_outcomes_total{source=\"user\"",
        "triage_provider_attempts_total{provider=\"primary\"",
        "class=\"server_error\"",
        "triage_fallbacks_total 1",
        "triage_decisions_dropped ",
        "triage_provider_latency_estimate_ms{provider=\"backup\"",
        "triage_provider_breaker{provider=\"primary\"",
        "triage_model_info{version=",
        "triage_in_flight{class=\"complete\"}",
        "triage_shed{class=\"route\"}",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(!text.contains(secret_prompt));
    assert!(text.contains("explored=\"false\""), "{text}");
}

/// The wire shape of a RouteRequest with the strings as raw bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawMessage {
    #[prost(bytes = "vec", tag = "1")]
    role: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawRoute {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<RawMessage>,
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_invalid_argument_naming_the_field() {
    let server = Server::start(config()).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let raw = RawRoute {
        messages: vec![RawMessage {
            role: b"user".to_vec(),
            content: vec![b'h', 0xff, 0xfe, b'i'],
        }],
    };
    let codec = tonic_prost::ProstCodec::<RawRoute, triage::proto::v1::RouteDecision>::default();
    let err = grpc
        .unary(
            tonic::Request::new(raw),
            "/triage.v1.Router/Route".parse().unwrap(),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("content"), "{}", err.message());
    assert!(err.message().contains("UTF-8"), "{}", err.message());
}

/// Both doors over TLS with a self-signed certificate made here; plain text is refused.
#[tokio::test]
async fn both_doors_round_trip_over_tls_with_a_self_signed_certificate() {
    triage::providers::install_tls_provider();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (made.cert.pem(), made.key_pair.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    // Through the config file, as an operator writes it; half a pair is refused.
    let shipped = triage::config::DEFAULT_CONFIG_TOML;
    let with = |lines: &str| shipped.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1);
    let cfg = triage::config::Config::from_toml(
        &with("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\""),
        &dir.path().join("t.toml"),
        Some(dir.path()),
    )
    .unwrap();
    let err = triage::config::Config::from_toml(
        &with("tls_cert = \"cert.pem\""),
        &dir.path().join("t.toml"),
        Some(dir.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("server.tls_cert, server.tls_key: set both or neither"),
        "{err}"
    );
    let err = triage::config::Config::from_toml(
        &with("tls_cert = \"key.pem\"\ntls_key = \"cert.pem\""),
        &dir.path().join("t.toml"),
        Some(dir.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.tls_"), "{err}");

    let mut c = config();
    c.server.tls = cfg.server.tls.clone();
    c.providers.clear();
    let d = doors(c, None).await;
    let https = d.http.replace("http://", "https://");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(r) = client.get(format!("{https}/healthz")).send().await {
            ok = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ok.expect("no TLS answer").status(), 200);
    let r = client
        .post(format!("{https}/v1/feedback"))
        .json(&json!({"decision_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the door itself answers over TLS");
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(reqwest::get(format!("{}/healthz", d.http)).await.is_err());

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(d.grpc.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let decided = RouterClient::new(channel)
        .route(route_req("Hello over TLS"))
        .await
        .unwrap()
        .into_inner();
    assert!(!decided.tier.is_empty());
}

/// With server.tls_client_ca, a client without a certificate signed by that CA is refused.
#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_configured() {
    triage::providers::install_tls_provider();
    let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("cert.pem", server.cert.pem()),
        ("key.pem", server.key_pair.serialize_pem()),
        ("ca.pem", ca.pem()),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let material = triage::tls::TlsMaterial::read(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        Some(&dir.path().join("ca.pem")),
    )
    .unwrap();
    let mut c = config();
    c.server.tls = Some(material);
    let d = doors(c, None).await;
    let url = d.grpc.replace("http://", "https://");
    let call = |identity: Option<(String, String)>| {
        let (url, server_ca) = (url.clone(), server.cert.pem());
        async move {
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(server_ca))
                .domain_name("localhost");
            if let Some((cert, key)) = identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            RouterClient::new(channel)
                .route(route_req("hi"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let mut admitted = Err(String::new());
    for _ in 0..50 {
        admitted = call(Some((client.pem(), client_key.serialize_pem()))).await;
        if admitted.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admitted.unwrap();
    assert!(
        call(None).await.is_err(),
        "no client certificate was accepted"
    );
    assert!(
        call(Some((
            stranger.cert.pem(),
            stranger.key_pair.serialize_pem()
        )))
        .await
        .is_err(),
        "a certificate from another CA was accepted"
    );
}

#[tokio::test]
async fn the_live_log_exports_over_http_for_admins_while_the_server_runs() {
    triage::providers::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let fb = feedback(dir.path());
    let mut cfg = with_tokens(config());
    cfg.providers.clear();
    let d = doors(cfg, Some(fb.clone())).await;
    let mut c = grpc_client(&d.grpc).await;
    let mut ids = Vec::new();
    for text in ["hi there", "Prove that sqrt(2) is irrational."] {
        let r = c
            .route(with_token(route_req(text), CLIENT))
            .await
            .unwrap()
            .into_inner();
        ids.push(r.decision_id);
    }
    let http = reqwest::Client::new();
    let get = |q: &str, token: &str| {
        http.get(format!("{}/v1/admin/export{q}", d.http))
            .bearer_auth(token)
            .send()
    };
    // Decisions reach the store through the writer thread: wait until both are exported.
    let mut lines = Vec::new();
    for _ in 0..100 {
        let r = get("", ADMIN).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let body = r.text().await.unwrap();
        lines = body
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if lines.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exported: Vec<&str> = lines
        .iter()
        .map(|l| l["decision_id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(exported.contains(&id.as_str()), "{id} not in {exported:?}");
    }
    // The store stays open and serving: the prompt text is not in the export (not stored).
    assert!(!lines.iter().any(|l| l.to_string().contains("sqrt(2)")));
    // A since in the future exports nothing; a bad one names the parameter.
    let r = get("?since_ms=99999999999999", ADMIN).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "");
    let r = get("?since_ms=yesterday", ADMIN).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("since_ms"));
    let r = get("?limit=3", ADMIN).await.unwrap();
    assert_eq!(r.status(), 400);
    // Clients may not read the log.
    assert_eq!(get("", CLIENT).await.unwrap().status(), 403);
    assert_eq!(
        http.get(format!("{}/v1/admin/export", d.http))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}
