//! Writes a model file's per-tier scores for every row of a JSON Lines file as JSON Lines
//! (`{"id", "served"}`, the served probability per tier, cheapest first), for offline studies of held-out predictions. A developer aid,
//! not a test.
//!
//! cargo run --release --example score_rows -- MODEL.json IN.jsonl > OUT.jsonl
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: score_rows MODEL.json IN.jsonl > OUT.jsonl");
        std::process::exit(2);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let f = triage::features::Featurizer::load(&root.join("models/embeddings")).unwrap();
    let c =
        triage::classifier::Classifier::load(std::path::Path::new(&args[1]), f.schema()).unwrap();
    let rows = triage::train::dataset::read_jsonl(std::path::Path::new(&args[2])).unwrap();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in &rows {
        let v = f
            .featurize(triage::features::Conversation::single(&r.prompt))
            .unwrap();
        let line = serde_json::json!({
            "id": r.id,
            "served": c.score(&v.vector),
        });
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
}
