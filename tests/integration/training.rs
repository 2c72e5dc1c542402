//! Training on a fixture the test builds: determinism, quality on a clear signal, load checks.

use triage::classifier::Classifier;
use triage::features::Featurizer;
use triage::model_store::ModelStore;
use triage::train;
use triage::train::dataset::TierMap;

use crate::common::{
    TIERS, config, featurizer, fixture_rows, model_path, options, scored_row, scores_of,
    workload_row, write_model,
};

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
    for h in file["heads"].as_array_mut().unwrap() {
        if h["tier"] == "standard" {
            h["tier"] = "medium".into();
        }
    }
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
fn every_kind_of_head_learns_the_fixture_with_and_without_shared_tiers() {
    use triage::classifier::HeadsKind;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    for (kind, n_heads) in [
        (HeadsKind::Sufficiency, 2),
        (HeadsKind::Quality, 3),
        (HeadsKind::Gain, 4),
    ] {
        for share in [true, false] {
            let mut opts = options();
            opts.recipe.heads = kind;
            opts.recipe.share_tiers = share;
            let (file, rep) =
                train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();
            assert_eq!(file.heads_kind, kind);
            assert_eq!(file.heads.len(), n_heads, "{kind:?}");
            assert_eq!(file.training["recipe"]["share_tiers"], share);
            let all = rep.two_tier.iter().find(|g| g.group == "all").unwrap();
            assert!(
                all.router.apgr > 0.95 * (2.0 / 3.0),
                "{kind:?} share {share}: {:?}",
                all.router
            );
            let c = Classifier::new(file.clone(), f.schema()).unwrap();
            let score = |text: &str| scores_of(&c, text);
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
                chat[0] > proof[0] + 0.3 && chat[1] > proof[1] + 0.3,
                "{kind:?} share {share}: {chat:?} {proof:?}"
            );
        }
    }
}

#[test]
fn logs_train_quality_heads_whatever_the_recipe_asks() {
    use triage::classifier::HeadsKind;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let mut opts = options();
    opts.recipe.heads = HeadsKind::Gain;
    // A logged outcome is only known for the tier that answered: gain heads cannot learn
    // from it, so the logs' model has one success head per tier and no calibration.
    let (file, _) = train::logs::train_from_logs(
        &f,
        &[],
        Default::default(),
        Some(&data),
        &tiers.names(),
        &opts,
        None,
    )
    .unwrap();
    assert_eq!(file.heads_kind, HeadsKind::Quality);
    assert_eq!(file.heads.len(), 3);
    assert!(file.calibration.is_empty());
    assert_eq!(file.training["recipe"]["heads"], "quality");
    let err = train::logs::train_from_logs(
        &f,
        &[],
        Default::default(),
        None,
        &tiers.names(),
        &opts,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no usable rows"), "{err}");
}

/// Logged traffic in which one kind of prompt fails on every tier and another succeeds only on
/// the dearest: the first gains nothing from the dearest tier, so it must not be learnt as a
/// prompt for it (which is what treating a failure as "a dearer tier was needed" teaches).
#[test]
fn prompts_every_tier_fails_are_not_learnt_as_prompts_for_the_dearest() {
    let f = featurizer();
    let tiers: Vec<String> = ["fast", "standard", "frontier"].map(String::from).to_vec();
    let hopeless = |i: usize| {
        format!(
            "Recite word for word page {i} of the unpublished diary my grandmother kept in 1952."
        )
    };
    let hard = |i: usize| {
        format!(
            "Solve step by step: a train leaves at {i}:00 at 80 km/h, a second follows at 120 km/h; when does it catch up?"
        )
    };
    let mut rows = Vec::new();
    for i in 0..90 {
        for (family, text) in [(0, hopeless(i)), (1, hard(i))] {
            let tier = i % 3;
            let v = f
                .featurize(triage::features::Conversation::single(&text))
                .unwrap();
            let success = family == 1 && tier == 2;
            rows.push(train::logs::LoggedRow {
                decision_id: format!("{family}-{i}"),
                time_unix_ms: (2 * i + family) as u64,
                features: v.vector,
                prompt_tokens: v.prompt_tokens,
                labels: train::logs::monotone_labels(success, tier, 2),
                weight: 3.0,
                tier,
                success,
            });
        }
    }
    let (file, _) = train::logs::train_from_logs(
        &f,
        &rows,
        Default::default(),
        None,
        &tiers,
        &options(),
        None,
    )
    .unwrap();
    let c = Classifier::new(file, f.schema()).unwrap();
    let score = |text: &str| scores_of(&c, text);
    let (a, b) = (score(&hopeless(500)), score(&hard(500)));
    assert!(
        a[0] > b[0] + 0.3 && a[1] > b[1] + 0.3,
        "hopeless {a:?} vs hard {b:?}"
    );
}

/// The fixture, plus the same prompts judged by a harsh judge (another source, other models
/// standing in): its standard model never matches its frontier one.
fn rows_with_a_harsh_judge() -> Vec<triage::train::dataset::Row> {
    let mut rows = fixture_rows();
    for (i, r) in fixture_rows().into_iter().enumerate() {
        rows.push(triage::train::dataset::Row {
            id: format!("harsh-{i}"),
            source: Some("harsh".into()),
            outcomes: [("medium-2".to_string(), 0.0), ("large-2".to_string(), 1.0)]
                .into_iter()
                .collect(),
            ..r
        });
    }
    rows
}

#[test]
fn group_offsets_keep_a_harsh_source_from_flattening_what_the_prompts_say() {
    let tiers: TierMap = "fast=small,standard=medium|medium-2,frontier=large|large-2"
        .parse()
        .unwrap();
    let f = featurizer();
    let data = train::prepare(&f, rows_with_a_harsh_judge(), &tiers, false).unwrap();
    assert_eq!(data.groups[0], "chat|small|medium|large");
    assert_eq!(data.groups.last().unwrap(), "harsh|-|medium-2|large-2");
    let vector = |text: &str| {
        f.featurize(triage::features::Conversation::single(text))
            .unwrap()
            .vector
    };
    let translate = vector("Translate into French: I would like to talk about lunch tomorrow.");
    let proof = vector(
        "Prove rigorously, step by step, that the integral of a convergent series related to music is bounded; derive every lemma.",
    );
    let gap = |offsets: bool| {
        let mut opts = options();
        opts.recipe.group_offsets = offsets;
        opts.recipe.calibrate = false;
        let (file, _) = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();
        // Group intercepts are fitted and then folded into one: the file has the usual shape.
        assert_eq!(file.scaling.mean.len(), file.heads[0].weights.len());
        let c = Classifier::new(file, f.schema()).unwrap();
        c.raw_scores(&translate)[1] - c.raw_scores(&proof)[1]
    };
    let (pooled, offset) = (gap(false), gap(true));
    // Pooled, half the translations' standard outcomes are the harsh judge's failures, which
    // the slopes must explain; with an intercept of its own the harsh source's base rate is
    // set apart and the slopes keep the fixture's contrast.
    assert!(
        offset > pooled + 0.05,
        "with offsets {offset}, pooled {pooled}"
    );
    assert!(offset > 0.3, "with offsets {offset}");
}

/// The fixture split into two sources, each holding every kind of prompt.
fn rows_in_two_sources() -> Vec<triage::train::dataset::Row> {
    fixture_rows()
        .into_iter()
        .enumerate()
        .map(|(i, r)| triage::train::dataset::Row {
            category: r.source.clone(),
            source: Some(if i < 30 { "a" } else { "b" }.into()),
            ..r
        })
        .collect()
}

#[test]
fn leave_one_out_trains_without_each_group_and_measures_it() {
    use triage::train::transfer::{GroupBy, leave_one_out};
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, rows_in_two_sources(), &tiers, false).unwrap();
    let t = leave_one_out(&f, &data, &tiers, &options(), GroupBy::Source, 200).unwrap();
    let groups: Vec<&str> = t.held_out.iter().map(|h| h.group.as_str()).collect();
    assert_eq!(groups, ["a", "b"]);
    for h in &t.held_out {
        assert_eq!(h.train_rows, 30);
        assert_eq!(h.report.rows, 30);
        let two = &h.report.two_tier[0];
        assert_eq!(two.cheap_tier, "fast");
        // The other source has the same kinds of prompts: the signal transfers.
        assert!(
            two.router.apgr > two.length_baseline.apgr && two.router.apgr > 0.6,
            "{}: {:?}",
            h.group,
            two
        );
        assert!(h.report.cost.is_some());
        // The bootstrap intervals hold the figures measured on all the group's rows.
        let s = h.spread.as_ref().unwrap();
        assert_eq!(s.resamples, 200);
        let within = |[lo, hi]: [f64; 2], x: f64| lo <= x && x <= hi && lo < hi;
        assert!(within(s.router, two.router.apgr), "{s:?}");
        assert!(
            within(s.minus_length, two.router.apgr - two.length_baseline.apgr),
            "{s:?}"
        );
        assert!(within(s.minus_random, two.router.apgr - 0.5), "{s:?}");
    }
    assert_eq!(t.means.groups, 2);
    assert_eq!(t.means.groups_beating_both, 2);
    let mean = t
        .held_out
        .iter()
        .map(|h| h.report.two_tier[0].router.apgr)
        .sum::<f64>()
        / 2.0;
    assert!((t.means.router_apgr - mean).abs() < 1e-12);
    let [router, length, random] = t.means.pooled.unwrap();
    assert!(router > length && router > random, "{:?}", t.means.pooled);
    let [lo, hi] = t.means.spread.as_ref().unwrap().router;
    assert!(lo <= t.means.router_apgr && t.means.router_apgr <= hi);
    let [lo, hi] = t.means.pooled_spread.as_ref().unwrap().minus_length;
    assert!(lo <= router - length && router - length <= hi);

    // By category: six groups (source/kind), each trained on the other 50 rows.
    let t = leave_one_out(&f, &data, &tiers, &options(), GroupBy::Category, 0).unwrap();
    assert_eq!(t.held_out.len(), 6);
    assert_eq!(t.held_out[0].group, "a/chat");
    assert!(t.held_out.iter().all(|h| h.train_rows == 50));
    // No resamples asked for, no intervals.
    assert!(t.held_out.iter().all(|h| h.spread.is_none()));
    assert!(t.means.spread.is_none() && t.means.pooled_spread.is_none());

    // One group cannot be left out of itself.
    let one = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let chat: Vec<usize> = (0..one.rows.len())
        .filter(|&r| one.rows[r].source.as_deref() == Some("chat"))
        .collect();
    let single = one.subset(&chat);
    let err = leave_one_out(&f, &single, &tiers, &options(), GroupBy::Source, 0).unwrap_err();
    assert!(err.to_string().contains("at least two groups"), "{err}");
}

#[test]
fn repeated_cross_validation_reports_every_seed_and_their_mean() {
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let names = tiers.names();
    let rep =
        train::repeated::cross_validate(f.schema(), &data, &names, &options(), &[3, 4]).unwrap();
    assert_eq!(rep.seeds, vec![3, 4]);
    assert_eq!(rep.reports.len(), 2);
    // Each repeat is the plain cross-validation with that seed's folds.
    let fold = train::report::fold_assignment(data.rows.len(), options().folds, 4);
    let (_, single) =
        train::report::cross_validate(f.schema(), &data, &names, &options(), &fold).unwrap();
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

/// A workload where the base's lean on length is wrong: long prompts (pasted text to act on)
/// are easy, short ones hard. Eighty rows are enough for the adapted model to turn it round.
#[test]
fn adapting_learns_that_length_leans_the_other_way_on_a_workload() {
    use triage::train::dataset::Row;
    use triage::train::recipe::Base;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let (base_file, _) =
        train::train(&f, &data, &tiers, &options(), serde_json::Value::Null).unwrap();
    let filler = "the meeting moved to thursday and everyone agreed to bring the reports ";
    let prompt = |i: usize, long: bool| {
        let body = if long {
            filler.repeat(6)
        } else {
            String::new()
        };
        format!("Item {i}: please handle this. {body}")
    };
    let rows: Vec<Row> = (0..80)
        .map(|i| {
            let long = i % 2 == 0;
            let cheap = if long { 1.0 } else { 0.0 };
            workload_row(format!("w-{i}"), "workload", prompt(i, long), cheap)
        })
        .collect();
    let few = train::prepare(&f, rows, &tiers, false).unwrap();
    let mut adapt = options();
    adapt.recipe.base = Some(Base::from_model(&base_file, f.schema(), &tiers.names()).unwrap());
    let (file, _) = train::train(&f, &few, &tiers, &adapt, serde_json::Value::Null).unwrap();
    let score = |c: &Classifier, t: &str| scores_of(c, t)[0];
    let base = Classifier::new(base_file, f.schema()).unwrap();
    let adapted = Classifier::new(file, f.schema()).unwrap();
    let (long, short) = (prompt(999, true), prompt(999, false));
    assert!(
        score(&base, &long) < score(&base, &short),
        "the base leans long prompts dear"
    );
    assert!(
        score(&adapted, &long) > score(&adapted, &short) + 0.2,
        "adapted: long {} short {}",
        score(&adapted, &long),
        score(&adapted, &short)
    );
}

#[test]
fn a_base_model_is_adapted_from_few_rows_and_fills_in_a_tier_they_lack() {
    use triage::train::recipe::Base;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let data = train::prepare(&f, fixture_rows(), &tiers, false).unwrap();
    let (base_file, _) =
        train::train(&f, &data, &tiers, &options(), serde_json::Value::Null).unwrap();
    let base = Base::from_model(&base_file, f.schema(), &tiers.names()).unwrap();

    // Twelve rows of a new workload with no outcome for `fast`: plain training cannot fit
    // the fast head; adapting keeps the base's for it.
    let few_rows: Vec<_> = fixture_rows()
        .into_iter()
        .step_by(5)
        .map(|mut r| {
            r.outcomes.remove("small");
            r
        })
        .collect();
    assert_eq!(few_rows.len(), 12);
    let few = train::prepare(&f, few_rows, &tiers, false).unwrap();
    let err = train::train(&f, &few, &tiers, &options(), serde_json::Value::Null).unwrap_err();
    assert!(err.to_string().contains("\"fast\""), "{err}");
    let mut adapt = options();
    adapt.recipe.base = Some(base.clone());
    let (file, _) = train::train(&f, &few, &tiers, &adapt, serde_json::Value::Null).unwrap();
    // The fast head has no row to tune on: never chosen (threshold 1), but it still ranks.
    assert_eq!(file.thresholds[0], 1.0);
    let c = Classifier::new(file.clone(), f.schema()).unwrap();
    let score = |t: &str| scores_of(&c, t);
    let chat = score("Hi! How are you? Let's chat about the weather.");
    let proof = score(
        "Prove rigorously, step by step, that the integral of a convergent series related to music is bounded; derive every lemma.",
    );
    assert!(
        chat[0] > proof[0] && chat[1] > proof[1],
        "chat {chat:?} proof {proof:?}"
    );

    // The adapted slopes stay nearer the base's than a plain fit of the same rows does
    // (with every tier present, so that plain training works).
    let few_all = data.subset(&(0..60).step_by(5).collect::<Vec<_>>());
    let (plain, _) =
        train::train(&f, &few_all, &tiers, &options(), serde_json::Value::Null).unwrap();
    let (adapted, _) = train::train(&f, &few_all, &tiers, &adapt, serde_json::Value::Null).unwrap();
    let distance = |m: &triage::classifier::ModelFile| {
        let b = Base::from_model(m, f.schema(), &tiers.names()).unwrap();
        b.slopes[0]
            .iter()
            .zip(&base.slopes[0])
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
    };
    assert!(
        distance(&adapted) < distance(&plain),
        "{} vs {}",
        distance(&adapted),
        distance(&plain)
    );

    // A base for other tiers is refused, naming both.
    let other: TierMap = "fast=small,frontier=large".parse().unwrap();
    let err = Base::from_model(&base_file, f.schema(), &other.names()).unwrap_err();
    assert!(err.contains("tiers") && err.contains("standard"), "{err}");
}

/// Exam questions whose outcomes say nothing about length: the length prior alone decides how
/// length counts, and it counts the question stem as well as the tokens. A long question with
/// short options leans dearer than a short question with longer options (more tokens in all);
/// with the prior on tokens alone it does not.
#[test]
fn the_length_prior_counts_the_question_stem_as_well_as_the_tokens() {
    use triage::train::dataset::Row;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let clause = "the committee reviewed the annual budget report ";
    let option = "a carefully worded answer about the budget ";
    let mc = |stem: usize, opt: usize, i: usize| {
        let options: String = ["A", "B", "C", "D"]
            .iter()
            .map(|l| format!("\n{l}. {}{i}", option.repeat(opt)))
            .collect();
        format!(
            "Question {i}: {}which is right?{options}\nAnswer:",
            clause.repeat(stem)
        )
    };
    let rows: Vec<Row> = (0..120)
        .map(|i| {
            // Half the rows need the frontier, in a pattern unrelated to either length.
            let cheap = if (i * 7) % 4 < 2 { 1.0 } else { 0.0 };
            workload_row(
                format!("q-{i}"),
                "exam",
                mc(1 + i % 5, 1 + (i / 5) % 5, i),
                cheap,
            )
        })
        .collect();
    let data = train::prepare(&f, rows, &tiers, false).unwrap();
    let lean = |opts: &triage::train::TrainOptions| {
        let (file, _) = train::train(&f, &data, &tiers, opts, serde_json::Value::Null).unwrap();
        let c = Classifier::new(file, f.schema()).unwrap();
        let score = |t: &str| scores_of(&c, t)[0];
        // Long stem, short options against short stem, long options: > 0 when the long
        // question leans dearer (a lower `fast` score).
        let (long_stem, long_options) = (mc(6, 1, 999), mc(1, 3, 999));
        score(&long_options) - score(&long_stem)
    };
    let mut tokens_only = options();
    tokens_only
        .recipe
        .set("length-features=log_prompt_tokens")
        .unwrap();
    let (shipped, tokens) = (lean(&options()), lean(&tokens_only));
    assert!(shipped > 0.15, "shipped prior: lean {shipped}");
    assert!(
        shipped > tokens + 0.15,
        "shipped {shipped}, tokens only {tokens}"
    );
}

/// A judged workload where the cheap tiers never reach the frontier's score: on translations
/// they come close (0.8 against 0.9), on proofs they do not (0.1). Whether a tier *reaches* the
/// dearest says nothing here (every label is "no"); the graded targets the shipped recipe fits
/// on say which prompts the cheap tier nearly handles, so translations lean cheaper than
/// proofs. Marker priors are off, so only what is fitted can tell the two apart.
#[test]
fn graded_outcomes_teach_what_reaching_the_dearest_cannot() {
    use triage::train::dataset::Row;
    let f = featurizer();
    let tiers: TierMap = TIERS.parse().unwrap();
    let topics = [
        "the river",
        "a garden",
        "the market",
        "my brother",
        "a long winter",
    ];
    let rows: Vec<Row> = (0..120)
        .map(|i| {
            let topic = topics[i % topics.len()];
            let (prompt, cheap) = if i % 2 == 0 {
                (
                    format!("Translate into French: I walked along {topic} ({i})."),
                    0.8,
                )
            } else {
                (
                    format!("Prove that the sum of two odd numbers about {topic} is even ({i})."),
                    0.1,
                )
            };
            scored_row(format!("j-{i}"), "judged", prompt, cheap, 0.9)
        })
        .collect();
    let data = train::prepare(&f, rows, &tiers, false).unwrap();
    let lean = |graded: bool| {
        let mut opts = options();
        opts.recipe.set("marker-priors=none").unwrap();
        opts.recipe.set(&format!("graded-labels={graded}")).unwrap();
        let (file, _) = train::train(&f, &data, &tiers, &opts, serde_json::Value::Null).unwrap();
        let c = Classifier::new(file, f.schema()).unwrap();
        let score = |t: &str| scores_of(&c, t)[0];
        // > 0 when an unseen translation gets a higher `fast` score than an unseen proof.
        score("Translate into French: I walked along the old bridge (500).")
            - score("Prove that the sum of two odd numbers about the old bridge is even (500).")
    };
    assert!(
        train::recipe::Recipe::default().graded_labels,
        "the shipped recipe fits graded targets"
    );
    let (graded, reached) = (lean(true), lean(false));
    assert!(graded > 0.1, "graded targets: lean {graded}");
    assert!(reached.abs() < 1e-6, "every label says no: lean {reached}");
}
