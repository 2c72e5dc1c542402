//! Bytes on disk per logged decision, and start-up with a full store: logs N decisions with
//! the shipped featurizer's real vectors through the same writer the server uses, then reopens.
//!
//! cargo run --release --example store_size -- [DECISIONS=100000] [MAX_STORE_BYTES=0] [KEEP_DIR]
//!
//! With KEEP_DIR the store is written there and kept (to time `triage serve --data-dir` on it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use triage::feedback::{
    DecisionRecord, Feedback, FeedbackLimits, KnobsRecord, Store, StoreOptions, now_ms,
};

fn du(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() { du(&e.path()) } else { m.len() }
        })
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map_or(100_000, |a| a.parse().unwrap());
    let cap: u64 = args.get(1).map_or(0, |a| a.parse().unwrap());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let featurizer = triage::features::Featurizer::load(&root.join("models/embeddings")).unwrap();
    let words = [
        "explain",
        "the",
        "difference",
        "between",
        "prove",
        "that",
        "there",
        "are",
        "infinitely",
        "many",
        "primes",
        "translate",
        "into",
        "French",
        "summarize",
        "this",
        "email",
        "about",
        "quarterly",
        "results",
        "write",
        "a",
        "function",
        "in",
        "Rust",
        "which",
        "sorts",
        "numbers",
        "what",
        "is",
        "capital",
        "of",
        "design",
        "system",
        "for",
        "chat",
        "messages",
        "at",
        "scale",
    ];
    // A thousand distinct prompts' vectors, reused round-robin: featurizing is not what is measured.
    let vectors: Vec<(Vec<f32>, u32)> = (0..1_000)
        .map(|i: usize| {
            let len = 5 + (i * 7) % 60;
            let prompt: Vec<&str> = (0..len)
                .map(|j| words[(i * 31 + j * 17) % words.len()])
                .collect();
            let text = prompt.join(" ");
            let f = featurizer
                .featurize(triage::features::Conversation::single(&text))
                .unwrap();
            (f.vector, f.prompt_tokens)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = args
        .get(2)
        .map_or_else(|| dir.path().join("store"), std::path::PathBuf::from);
    let limits = FeedbackLimits {
        decision_queue: 65_536,
        outcome_queue: 1_024,
        batch: 1_024,
        max_store_bytes: (cap > 0).then_some(cap),
    };
    let options = StoreOptions {
        embedding_dim: featurizer.embedding_dim(),
        ..Default::default()
    };
    let fb = Feedback::start(&path, limits, options, false).unwrap();
    let tiers: Vec<String> = ["fast", "standard", "frontier"].map(String::from).to_vec();
    let started = Instant::now();
    for i in 0..n {
        let (features, tokens) = vectors[i % vectors.len()].clone();
        let record = DecisionRecord {
            decision_id: uuid::Uuid::now_v7().to_string(),
            time_unix_ms: now_ms(),
            model_version: "fast-standard-frontier-3eb31752e74d".into(),
            tiers: tiers.clone(),
            tier: tiers[i % 3].clone(),
            p_sufficient: vec![0.42, 0.77, 1.0],
            propensity: 1.0,
            schema_fingerprint: featurizer.schema().fingerprint.clone(),
            knobs: KnobsRecord::default(),
            tenant: None,
            labels: Default::default(),
            features,
            prompt_tokens: tokens,
            context_tokens: 0,
            estimated_cost_usd: 0.000_42,
            prompt_sha256: format!("{:064x}", i),
            prompt: None,
        };
        // Like the server: never wait on the writer; back off only so nothing is dropped here.
        while fb
            .counters()
            .decisions_written
            .load(std::sync::atomic::Ordering::Relaxed)
            + 60_000
            < i as u64
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        fb.log_decision(record);
    }
    let c = fb.counters();
    let ord = std::sync::atomic::Ordering::Relaxed;
    while c.decisions_written.load(ord) + c.decisions_dropped.load(ord) + c.write_errors.load(ord)
        < n as u64
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    fb.store().flush().unwrap();
    let wrote = started.elapsed();
    let (written, dropped, capped) = (
        c.decisions_written.load(ord),
        c.decisions_dropped.load(ord),
        c.decisions_capped.load(ord),
    );
    drop(fb);
    // The writer threads hold the store until their queues close; give sled's lock a moment.
    std::thread::sleep(Duration::from_millis(500));
    let bytes = du(&path);
    let t = Instant::now();
    let store = Store::open(&path).unwrap();
    let reopened = t.elapsed();
    let (kept, _) = store.counts();
    println!(
        "decisions logged {written} (dropped {dropped}) in {:.2} s; on disk {bytes} bytes = {:.0} bytes per logged decision; reopened in {:.0} ms; kept {kept} (removed by the cap {capped})",
        wrote.as_secs_f64(),
        bytes as f64 / written.max(1) as f64,
        reopened.as_secs_f64() * 1e3,
    );
}
