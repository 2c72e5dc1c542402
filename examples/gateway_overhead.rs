//! Added latency of triage in front of a provider: a local mock OpenAI-compatible server
//! (wiremock on 127.0.0.1) called directly with reqwest, then through triage's Complete
//! (routing, chain, decision log and automatic outcome), at the same fixed concurrency.
//!
//! cargo run --release --example gateway_overhead -- [REQUESTS=3000] [CONCURRENCY=16]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use triage::chain::Gateway;
use triage::config::{Config, ModelRef};
use triage::engine::Engine;
use triage::feedback::{Feedback, FeedbackLimits};
use triage::model_store::ModelStore;
use triage::proto::v1::router_client::RouterClient;
use triage::proto::v1::{CompleteRequest, Message, RouteRequest};
use triage::providers::{Kind, Provider};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const PROMPT: &str = "Summarize in one sentence: the committee met on Tuesday to review the budget, \
agreed to delay the vote until the auditors report, and asked staff for three options.";

fn pct(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |x: f64| v[((v.len() as f64 * x) as usize).min(v.len() - 1)];
    (q(0.5), q(0.99))
}

async fn run<F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = n / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                f().await;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let n = args.first().copied().unwrap_or(3000).min(100_000);
    let concurrency = args.get(1).copied().unwrap_or(16).max(1);
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "choices": [{"message": {"role": "assistant", "content": "The committee postponed the vote."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 8}
        })))
        .mount(&mock)
        .await;

    triage::providers::install_tls_provider();
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.uri());
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 50});
    let direct = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        move || {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            async move {
                let r = http.post(&url).json(&body).send().await.unwrap();
                let _: serde_json::Value = r.json().await.unwrap();
            }
        }
    };
    run(n / 10, concurrency, direct.clone()).await;
    let d = pct(run(n, concurrency, direct).await);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::shipped().unwrap();
    config.model.embeddings = root.join("models/embeddings");
    config.model.classifier = root.join("models/classifier.json");
    config.model.watch_interval = None;
    config.exploration_rate = 0.0;
    config.providers = vec![Provider {
        name: "mock".into(),
        kind: Kind::Openai,
        base_url: mock.uri(),
        api_key_env: None,
    }];
    for t in &mut config.tiers {
        t.chain = vec![ModelRef {
            provider: "mock".into(),
            model: "m".into(),
        }];
    }
    let dir = tempfile::tempdir().unwrap();
    let fb = Feedback::start(
        dir.path(),
        FeedbackLimits {
            decision_queue: 65_536,
            outcome_queue: 65_536,
            batch: 1_024,
            max_store_bytes: None,
        },
        Default::default(),
        false,
    )
    .unwrap();
    let gateway = Gateway::from_config(&config).unwrap().map(Arc::new);
    let engine = Arc::new(Engine::new(
        Arc::new(config.clone()),
        ModelStore::open(&config).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(triage::server::serve(
        engine,
        Some(fb),
        gateway,
        listener,
        None,
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let client = RouterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let req = CompleteRequest {
        route: Some(RouteRequest {
            messages: vec![Message {
                tool_call_id: String::new(),
                tool_calls: vec![],
                role: "user".into(),
                content: PROMPT.into(),
            }],
            ..Default::default()
        }),
        max_tokens: Some(50),
        ..Default::default()
    };
    let via = {
        let (client, req) = (client.clone(), req.clone());
        move || {
            let (mut client, req) = (client.clone(), req.clone());
            async move {
                client.complete(req).await.unwrap();
            }
        }
    };
    run(n / 10, concurrency, via.clone()).await;
    let v = pct(run(n, concurrency, via).await);
    println!("requests {n}, concurrency {concurrency}");
    println!(
        "direct to mock:      p50 {:>8.0} us   p99 {:>8.0} us",
        d.0, d.1
    );
    println!(
        "through triage:      p50 {:>8.0} us   p99 {:>8.0} us",
        v.0, v.1
    );
    println!(
        "added by triage:     p50 {:>8.0} us   p99 {:>8.0} us",
        v.0 - d.0,
        v.1 - d.1
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
