//! Training on a fixture the test builds: determinism, quality on a clear signal, load checks.

use triage::classifier::Classifier;
use triage::features::Featurizer;
use triage::model_store::ModelStore;
use triage::train;
use triage::train::dataset::TierMap;

use crate::common::{TIERS, config, featurizer, fixture_rows, model_path, options, write_model};

#[test]
fn the_same_data_gives_the_same_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    write_model(&a);
    write_model(&b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn cross_validation_finds_a_clear_signal_and_beats_the_baselines() {
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let (file, rep) = train::train(&f, &data, &tiers, &options(), serde_json::Value::Null).unwrap();
    let all = rep.two_tier.iter().find(|g| g.group == "all").unwrap();
    // 40 of 60 rows gain from the dear tier, so perfect routing climbs to PGR 1 at share 2/3
    // and stays: APGR = 2/3 * 1/2 + 1/3 = 2/3.
    assert!(all.router.apgr > 0.95 * (2.0 / 3.0), "{:?}", all.router);
    assert!(
        all.router.apgr > all.length_baseline.apgr
            && all.router.apgr > all.random_baseline.apgr + 0.1
    );
    assert!((all.random_baseline.apgr - 0.5).abs() < 1e-9);
    let cost = rep.cost.as_ref().unwrap();
    let router = cost.router.expect("the target is reachable");
    assert!(
        router.quality >= cost.min_quality - 0.05,
        "{router:?} vs {}",
        cost.min_quality
    );
    assert!(router.cost < 0.8 * cost.dearest.cost, "{router:?}");
    assert_eq!(rep.labels[0], ("fast".to_string(), 20, 60));
    assert_eq!(file.thresholds.len(), 3);
    assert!(file.training["cross_validation"]["two_tier"].is_array());
}

#[test]
fn a_model_for_other_embeddings_is_refused_at_start() {
    let path = model_path();
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["schema"]["fingerprint"] = "0123456789abcdef".into();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&file).unwrap()).unwrap();
    let err = ModelStore::with_featurizer(&config(), featurizer(), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("feature schema mismatch")
            && err.contains("0123456789abcdef")
            && err.contains("bad.json"),
        "{err}"
    );
}

#[test]
fn a_model_with_other_tiers_is_refused_and_reload_keeps_the_old_one() {
    let cfg = config();
    let store = ModelStore::with_featurizer(&cfg, featurizer(), &model_path()).unwrap();
    let before = store.current().classifier.version().to_string();
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model_path()).unwrap()).unwrap();
    file["tiers"][1] = "medium".into();
    file["heads"][1]["tier"] = "medium".into();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tiers.json");
    std::fs::write(&bad, serde_json::to_vec(&file).unwrap()).unwrap();
    let err = store.reload(&cfg, &bad).unwrap_err().to_string();
    assert!(err.contains("differ from the config's tiers"), "{err}");
    assert_eq!(store.current().classifier.version(), before);
    std::fs::write(&bad, b"{not json").unwrap();
    assert!(
        store
            .reload(&cfg, &bad)
            .unwrap_err()
            .to_string()
            .contains("not a triage model file")
    );
}

#[test]
fn shipped_model_matches_the_shipped_featurizer_and_config() {
    let f = Featurizer::load(&crate::common::embeddings()).unwrap();
    let c = Classifier::load(
        &crate::common::repo().join("models/classifier.json"),
        f.schema(),
    )
    .unwrap();
    assert_eq!(c.tiers(), ["fast", "standard", "frontier"]);
}

#[test]
fn the_ascii_fast_path_tokenizes_exactly_like_the_tokenizers_crate() {
    let f = featurizer();
    let mut texts: Vec<String> = vec![
        "Hello, World! It's 3:45pm -- e.g. x^2+y^2=z^2 (Pythagoras).".into(),
        "Let p = (1, 2, 5, 4)(2, 3) in S_5 . Find the index of <p> in S_5.\nA. 8\nB. 2".into(),
        "tabs\tand\r\nnewlines\x0bvertical\x0cfeed\x07bell\x00nul\x7fdel".into(),
        format!("{} short", "a".repeat(101)),
        format!("{} edge", "b".repeat(100)),
        "qzxqzxqj unaffable antidisestablishmentarianism supercalifragilistic".into(),
        "email me at someone@example.com or visit https://example.org/a_b?c=d&e=f#g".into(),
        "   leading and trailing spaces   ".into(),
        "".into(),
        "!!!???...,,,;;;".into(),
        "CamelCaseWords and snake_case_words and kebab-case-words, UPPER LOWER MiXeD".into(),
        "def f(x):\n    return {'a': (1, 2)}  # comment ~ `tick` | pipe \\ backslash".into(),
    ];
    for row in crate::common::fixture_rows() {
        texts.push(row.prompt);
    }
    for t in &texts {
        assert!(triage::features::AsciiWordPiece::handles(t), "{t:?}");
        assert_eq!(
            f.token_ids(t).unwrap(),
            f.slow_token_ids(t).unwrap(),
            "{t:?}"
        );
    }
    // Text the fast path does not take still tokenizes (through the tokenizers crate).
    for t in ["café au lait", "[CLS] special", "日本語のテキスト"] {
        assert!(!triage::features::AsciiWordPiece::handles(t));
        assert_eq!(f.token_ids(t).unwrap(), f.slow_token_ids(t).unwrap());
    }
}

#[test]
fn quality_and_gain_heads_learn_the_fixture_and_route_it_as_well() {
    use triage::classifier::HeadsKind;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    // Quality: one head per tier, the dearest included; gain: a pair per cheaper tier.
    for (kind, n_heads) in [(HeadsKind::Quality, 3), (HeadsKind::Gain, 4)] {
        let mut opts = options();
        opts.heads = kind;
        let (file, rep) = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();
        assert_eq!(file.heads_kind, kind);
        assert_eq!(file.heads.len(), n_heads, "{kind:?}");
        let all = rep.two_tier.iter().find(|g| g.group == "all").unwrap();
        assert!(
            all.router.apgr > 0.95 * (2.0 / 3.0),
            "{kind:?}: {:?}",
            all.router
        );
        let c = Classifier::new(file.clone(), f.schema()).unwrap();
        let score = |text: &str| {
            c.score(
                &f.featurize(triage::features::Conversation::single(text))
                    .unwrap()
                    .vector,
            )
        };
        let chat = score("Hi! How are you? Let's chat about the weather.");
        let proof = score(
            "Prove rigorously, step by step, that the integral of a convergent series related to music is bounded; derive every lemma.",
        );
        for p in [&chat, &proof] {
            assert!(
                p.windows(2).all(|w| w[0] <= w[1]) && p[2] == 1.0,
                "{kind:?}: {p:?}"
            );
        }
        assert!(
            chat[0] > 0.8 && proof[0] < chat[0] - 0.3,
            "{kind:?}: {chat:?} {proof:?}"
        );
        // Logs cannot train these heads (only the answering tier's outcome is known): refused.
        let stats = Default::default();
        let err = train::train_from_logs(
            &f,
            &[],
            stats,
            Some(&data),
            &["fast".into(), "standard".into(), "frontier".into()],
            &opts,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--heads quality|gain"), "{err}");
    }
}

#[test]
fn source_offsets_serve_the_reference_mapping_intercept() {
    use triage::classifier::HeadsKind;
    // The fixture (every tier mapped), plus a second "file" where other models stand in for
    // standard and frontier, and the standard one never matches the frontier one, even on the
    // translations the fixture's standard model always gets right.
    let mut rows = fixture_rows();
    for (i, r) in fixture_rows().into_iter().enumerate() {
        rows.push(triage::train::dataset::Row {
            id: format!("other-{i}"),
            outcomes: [("medium-2".to_string(), 0.0), ("large-2".to_string(), 1.0)]
                .into_iter()
                .collect(),
            ..r
        });
    }
    let tiers: TierMap = "fast=small,standard=medium|medium-2,frontier=large|large-2"
        .parse()
        .unwrap();
    let f = featurizer();
    let data = train::prepare(&f, rows, &tiers, false).unwrap();
    assert_eq!(data.stand_ins[0], "small|medium|large");
    assert_eq!(data.stand_ins.last().unwrap(), "-|medium-2|large-2");
    let translate = f
        .featurize(triage::features::Conversation::single(
            "Translate into French: I would like to talk about lunch tomorrow.",
        ))
        .unwrap()
        .vector;
    let standard = |offsets: bool| {
        let mut opts = options();
        opts.heads = HeadsKind::Gain;
        opts.source_offsets = offsets;
        let (file, _) = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();
        // Offsets are fitted and then dropped: the file has the usual shape.
        assert_eq!(file.scaling.mean.len(), file.heads[0].weights.len());
        Classifier::new(file, f.schema()).unwrap().score(&translate)[1]
    };
    let (pooled, offset) = (standard(false), standard(true));
    // Pooled, the other file's failures drag the translation's standard score down; with
    // offsets the served score is the reference mapping's, where standard is good enough.
    assert!(offset > 0.8, "with offsets {offset}");
    assert!(
        offset > pooled + 0.15,
        "with offsets {offset}, pooled {pooled}"
    );
}

#[test]
fn repeated_cross_validation_reports_every_seed_and_their_mean() {
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let names = tiers.names();
    let rep = train::repeated::cross_validate(&f, &data, &names, &options(), &[3, 4]).unwrap();
    assert_eq!(rep.seeds, vec![3, 4]);
    assert_eq!(rep.reports.len(), 2);
    // Each repeat is the plain cross-validation with that seed's folds.
    let fold = train::fold_assignment(data.rows.len(), options().folds, 4);
    let p = train::cross_validate(&f, &data, &names, &options(), &fold).unwrap();
    let single = train::report(&data, &names, &p, Some(&fold), &options());
    let all = |r: &train::Report| r.two_tier.iter().find(|g| g.group == "all").unwrap().router;
    assert_eq!(all(&rep.reports[1]).apgr, all(&single).apgr);
    let spread = rep
        .summary
        .iter()
        .find(|s| s.figure == "all router APGR")
        .unwrap();
    let mean = (all(&rep.reports[0]).apgr + all(&rep.reports[1]).apgr) / 2.0;
    assert!((spread.mean - mean).abs() < 1e-12, "{spread:?}");
    assert!(spread.min <= spread.mean && spread.mean <= spread.max);
    assert!(
        rep.summary
            .iter()
            .any(|s| s.figure.starts_with("cost saved"))
    );
    // Only the first repeat keeps its (long) Pareto front.
    assert!(!rep.reports[0].pareto.is_empty());
    assert!(rep.reports[1].pareto.is_empty());
}

/// The fixture plus a "word problem" topic where the standard tier fails exactly when a
/// price has decimals, and which has no outcome for the fast tier.
fn rows_with_word_problems() -> Vec<triage::train::dataset::Row> {
    let mut rows = fixture_rows();
    let people = [
        "Sam", "Ana", "Lee", "Mia", "Tom", "Ivy", "Max", "Zoe", "Kai", "Eva",
    ];
    let items = ["pencils", "apples", "tickets"];
    for (i, who) in people.iter().enumerate() {
        for (j, item) in items.iter().enumerate() {
            let n = 2 + i + j;
            let decimals = (i + j) % 2 == 0;
            let price = if decimals {
                format!("{}.{}5", 1 + j, i)
            } else {
                format!("{}", 11 + i)
            };
            rows.push(triage::train::dataset::Row {
                id: format!("wp-{i}-{j}"),
                source: Some("wp".into()),
                category: Some("arith".into()),
                prompt: format!(
                    "{who} buys {n} boxes of {item} at {price} dollars each. How much does {who} spend in total?"
                ),
                outcomes: [
                    ("medium".to_string(), if decimals { 0.0 } else { 1.0 }),
                    ("large".to_string(), 1.0),
                ]
                .into_iter()
                .collect(),
            });
        }
    }
    rows
}

#[test]
fn a_topic_expert_learns_its_topic_and_leaves_the_others_alone() {
    use triage::classifier::HeadsKind;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, rows_with_word_problems(), &tiers, false).unwrap();
    let mut opts = options();
    opts.heads = HeadsKind::Gain;
    opts.topic_classifier = true;
    opts.experts.alpha = 1.0;
    let (plain, _) = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();
    opts.experts.topics = vec!["wp/arith".into()];
    let (file, _) = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();

    // The topic classifier reads the embedding only, not the features that follow it.
    let p = file.prototypes.as_ref().unwrap();
    let emb = f
        .schema()
        .names
        .iter()
        .filter(|n| n.starts_with("emb_"))
        .count();
    assert!(p.centroids.iter().all(|c| c.len() == emb));
    let x = &file.experts[0];
    assert_eq!(x.topic, "wp/arith");
    // No fast outcomes in the topic: its pair stays with the shared heads.
    assert!(
        x.heads[0].is_none() && x.heads[1].is_none(),
        "{:?}",
        x.heads
    );
    assert!(x.heads[2].is_some() && x.heads[3].is_some());
    // Every word problem of the fixture is free-form: no lettered options.
    assert_eq!(x.options_range, Some([0.0, 0.0]));
    // Here the standard tier never beats the dearest, so given a difference there is nothing
    // to rank by: the pair is fitted on every row, not only where they differ.
    assert!(x.differ_rates.is_empty(), "{:?}", x.differ_rates);
    // The embedding's leading components are served as weights on its own dimensions.
    let base = train::ExpertOptions::default().features.len();
    assert_eq!(x.features.len(), base + emb);
    assert!(x.features[base..].iter().all(|n| n.starts_with("emb_")));
    assert_eq!(
        x.heads[2].as_ref().map(|h| h.weights.len()),
        Some(base + emb)
    );

    let with = Classifier::new(file.clone(), f.schema()).unwrap();
    let without = Classifier::new(plain, f.schema()).unwrap();
    let score = |c: &Classifier, text: &str| {
        c.score(
            &f.featurize(triage::features::Conversation::single(text))
                .unwrap()
                .vector,
        )
    };
    let hard = "Noa buys 6 boxes of pens at 2.75 dollars each. How much does Noa spend in total?";
    let easy = "Noa buys 6 boxes of pens at 14 dollars each. How much does Noa spend in total?";
    let (h, e) = (score(&with, hard)[1], score(&with, easy)[1]);
    assert!(h < 0.4 && e > 0.7, "standard: decimals {h}, integers {e}");
    // The same problem with lettered options is a shape the expert never saw: whatever the
    // topic posterior, the shared heads score it.
    let choices = format!("{hard}\nA. 16.50\nB. 18.00\nC. 16.00\nD. 15.50\nAnswer:");
    let v = f
        .featurize(triage::features::Conversation::single(&choices))
        .unwrap()
        .vector;
    assert_eq!(with.score_explained(&v).1, None);
    assert_eq!(with.score(&v), without.score(&v));
    // ...and it is the shape that keeps it away: without the range the expert claims it.
    let mut shapeless = file.clone();
    shapeless.experts[0].options_range = None;
    let shapeless = Classifier::new(shapeless, f.schema()).unwrap();
    assert_eq!(shapeless.score_explained(&v).1, Some("wp/arith"));
    let v = f
        .featurize(triage::features::Conversation::single(hard))
        .unwrap()
        .vector;
    assert_eq!(with.score_explained(&v).1, Some("wp/arith"));
    // Elsewhere the shared heads score, and they are the same as without the expert.
    for text in [
        "Hi! How are you? Let's chat about the beach.",
        "Prove rigorously that every bounded monotone sequence converges.",
    ] {
        assert_eq!(score(&with, text), score(&without, text), "{text}");
    }

    opts.experts.topics = vec!["wp/geometry".into()];
    let err = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap_err();
    assert!(err.to_string().contains("\"wp/geometry\""), "{err}");
}
