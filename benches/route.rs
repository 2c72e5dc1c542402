//! Featurize + classify latency on a ~500-token and a ~8k-token prompt, with the shipped model.
//!
//! `cargo bench --bench route` runs criterion (means with confidence intervals), then times
//! single calls on one thread and prints p50/p90/p99, which criterion does not report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::Criterion;
use triage::classifier::Classifier;
use triage::features::{Conversation, Featurizer};

const PARAGRAPH: &str = "A farmer has 17 fields and plants wheat in a third of them. Each field \
yields 2.5 tonnes per hectare, and the fields average 12 hectares. Explain step by step how much \
wheat the farmer harvests, then compare it with last year's harvest of 140 tonnes and say, in \
JSON, whether the yield rose or fell and by what percentage. Consider rainfall, soil quality and \
the price of fertilizer, which rose by 8% over the year. ";

fn prompt(featurizer: &Featurizer, tokens: usize) -> String {
    let mut p = String::new();
    while featurizer.token_ids(&p).unwrap().len() < tokens {
        p.push_str(PARAGRAPH);
    }
    p
}

fn load() -> (Featurizer, Classifier) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let f = Featurizer::load(&root.join("models/embeddings")).unwrap();
    let c = Classifier::load(&root.join("models/classifier.json"), f.schema()).unwrap();
    (f, c)
}

fn route(f: &Featurizer, c: &Classifier, p: &str) -> Vec<f64> {
    let feats = f.featurize(Conversation::single(p)).unwrap();
    c.score(&feats.vector)
}

fn percentiles(f: &Featurizer, c: &Classifier, name: &str, p: &str, n: usize) {
    for _ in 0..n / 10 {
        black_box(route(f, c, p));
    }
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            black_box(route(f, c, black_box(p)));
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let q = |x: f64| t[((t.len() as f64 * x) as usize).min(t.len() - 1)];
    println!(
        "{name:<34} n={n:<6} p50 {:>8.1} us  p90 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
        q(0.5),
        q(0.9),
        q(0.99),
        t[t.len() - 1]
    );
}

fn main() {
    let (f, c) = load();
    let short = prompt(&f, 500);
    let long = prompt(&f, 8000);
    let (ns, nl) = (
        f.token_ids(&short).unwrap().len(),
        f.token_ids(&long).unwrap().len(),
    );
    let mut crit = Criterion::default().configure_from_args();
    let mut g = crit.benchmark_group("featurize+classify");
    g.bench_function(format!("{ns} tokens"), |b| {
        b.iter(|| route(&f, &c, black_box(&short)))
    });
    g.sample_size(30);
    g.bench_function(format!("{nl} tokens"), |b| {
        b.iter(|| route(&f, &c, black_box(&long)))
    });
    g.bench_function("classify only (scoring a vector)", |b| {
        let v = f.featurize(Conversation::single(&short)).unwrap().vector;
        b.iter(|| c.score(black_box(&v)))
    });
    // What the core adds to every decision since load shedding and metrics: one slot taken
    // and freed, one tier counter, one histogram sample.
    g.bench_function("admission + metrics per decision", |b| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let gate =
            triage::admission::Gate::new("bench", 4096, 128, std::time::Duration::from_millis(200));
        let metrics = triage::metrics::Metrics::new(&["fast".into(), "standard".into()]);
        b.iter(|| {
            rt.block_on(async {
                let slot = gate.admit().await.unwrap();
                metrics.decision(black_box(1), false, 4e-5);
                drop(slot);
            })
        })
    });
    g.finish();
    crit.final_summary();
    println!("\nsingle calls, one thread:");
    percentiles(
        &f,
        &c,
        &format!("featurize+classify {ns} tokens"),
        &short,
        20_000,
    );
    percentiles(
        &f,
        &c,
        &format!("featurize+classify {nl} tokens"),
        &long,
        1_000,
    );
}
