//! Writes the serving featurizer's vectors for a JSON Lines file as raw little-endian f32 rows
//! (`OUT.f32`) plus the feature names and token counts (`OUT.json`), for offline studies in
//! Python that must see exactly what serving sees. A developer aid, not a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: dump_features IN.jsonl OUT (writes OUT.f32 and OUT.json)");
        std::process::exit(2);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let f = triage::features::Featurizer::load(&root.join("models/embeddings")).unwrap();
    let rows = triage::train::dataset::read_jsonl(std::path::Path::new(&args[1])).unwrap();
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(format!("{}.f32", args[2])).unwrap());
    let mut tokens = Vec::with_capacity(rows.len());
    for r in &rows {
        let v = f
            .featurize(triage::features::Conversation::single(&r.prompt))
            .unwrap();
        for x in &v.vector {
            out.write_all(&x.to_le_bytes()).unwrap();
        }
        tokens.push(v.prompt_tokens);
    }
    out.flush().unwrap();
    let meta = serde_json::json!({
        "names": f.schema().names,
        "rows": rows.len(),
        "tokens": tokens,
        "ids": rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
    });
    std::fs::write(
        format!("{}.json", args[2]),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
}
