//! Where featurize time goes (tokenizer vs markers vs pooling); a developer aid, not a test.
#![allow(clippy::unwrap_used)]
use std::time::Instant;
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let f = triage::features::Featurizer::load(&root.join("models/embeddings")).unwrap();
    let p = "A farmer has 17 fields and plants wheat in a third of them. Each field yields 2.5 tonnes per hectare. ".repeat(25);
    let tok =
        tokenizers::Tokenizer::from_file(root.join("models/embeddings/tokenizer.json")).unwrap();
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f.token_ids(&p).unwrap());
    }
    println!(
        "token_ids: {:.1} us ({} tokens)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64,
        f.token_ids(&p).unwrap().len()
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            f.featurize(triage::features::Conversation::single(&p))
                .unwrap(),
        );
    }
    println!(
        "featurize: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tok.encode_fast(p.as_str(), false).unwrap());
    }
    println!(
        "raw tokenizer encode_fast (with its own truncation settings): {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let m = triage::features::MarkerMatcher::new().unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(m.lexical(&p, 600));
    }
    println!(
        "markers: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(triage::features::text_stats(&p));
    }
    println!(
        "text_stats: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "{:?}",
        serde_json::to_string(&tok.get_normalizer())
            .unwrap()
            .chars()
            .take(300)
            .collect::<String>()
    );
    println!(
        "{:?}",
        serde_json::to_string(&tok.get_pre_tokenizer())
            .unwrap()
            .chars()
            .take(300)
            .collect::<String>()
    );
}
