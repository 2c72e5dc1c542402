//! Durable-outcome throughput: an in-process server on 127.0.0.1:0 with a fresh store, and
//! concurrent gRPC clients calling RecordOutcome for a fixed time. Every counted outcome was
//! acknowledged, i.e. flushed to disk.
//!
//! cargo run --release --example feedback_load -- [SECONDS=5] [CONCURRENCY=128] [CHANNELS=4]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use triage::config::Config;
use triage::engine::Engine;
use triage::feedback::{Feedback, FeedbackLimits};
use triage::model_store::ModelStore;
use triage::proto::v1::router_client::RouterClient;
use triage::proto::v1::{OutcomeRequest, OutcomeSource};

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let seconds = args.first().copied().unwrap_or(5).min(60);
    let concurrency = args.get(1).copied().unwrap_or(128) as usize;
    let channels = args.get(2).copied().unwrap_or(4).max(1) as usize;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::shipped().unwrap();
    config.model.embeddings = root.join("models/embeddings");
    config.model.classifier = root.join("models/classifier.json");
    config.model.watch_interval = None;
    let dir = tempfile::tempdir().unwrap();
    let limits = FeedbackLimits {
        decision_queue: 65_536,
        outcome_queue: 65_536,
        batch: 1_024,
        max_store_bytes: None,
    };
    let fb = Feedback::start(dir.path(), limits, Default::default(), false).unwrap();
    let store = ModelStore::open(&config).unwrap();
    let engine = Arc::new(Engine::new(Arc::new(config), store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(triage::server::serve(
        engine,
        Some(fb.clone()),
        None,
        listener,
        None,
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut clients = Vec::new();
    for _ in 0..channels {
        clients.push(
            RouterClient::connect(format!("http://{addr}"))
                .await
                .unwrap(),
        );
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut c = clients[i % channels].clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = OutcomeRequest {
                    decision_id: uuid::Uuid::now_v7().to_string(),
                    source: OutcomeSource::Judge as i32,
                    quality: Some(0.5),
                    ..Default::default()
                };
                c.record_outcome(r).await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                done.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |x: f64| lat[((lat.len() as f64 * x) as usize).min(lat.len() - 1)];
    let n = done.load(Ordering::Relaxed);
    println!(
        "{n} outcomes acknowledged durably in {elapsed:.1} s: {:.0}/s  (concurrency {concurrency}, {channels} HTTP/2 connections; ack latency p50 {:.2} ms, p99 {:.2} ms)",
        n as f64 / elapsed,
        q(0.5),
        q(0.99)
    );
    let (_, stored) = fb.store().counts();
    println!("outcomes in the store: {stored}");
    let _ = stop_tx.send(());
    let _ = server.await;
}
