//! Scoring, calibration and validation of model files.

use super::*;

fn schema(n: usize) -> Schema {
    Schema {
        version: "v".into(),
        names: (0..n).map(|i| format!("f{i}")).collect(),
        fingerprint: "fp".into(),
    }
}

fn model() -> ModelFile {
    ModelFile {
        format: MODEL_FORMAT.into(),
        version: "m1".into(),
        schema: SchemaRef {
            version: "v".into(),
            fingerprint: "fp".into(),
            n_features: 2,
        },
        tiers: vec!["a".into(), "b".into(), "c".into()],
        scaling: Scaling {
            mean: vec![1.0, 0.0],
            std: vec![2.0, 1.0],
        },
        heads: vec![
            Head {
                tier: "a".into(),
                weights: vec![2.0, 0.0],
                intercept: 0.0,
            },
            Head {
                tier: "b".into(),
                weights: vec![0.0, 1.0],
                intercept: -10.0,
            },
        ],
        thresholds: vec![0.5, 0.5, 0.0],
        heads_kind: HeadsKind::Sufficiency,
        prototypes: None,
        calibration: Vec::new(),
        training: serde_json::Value::Null,
    }
}

#[test]
fn scores_standardize_then_apply_the_logistic() {
    let c = Classifier::new(model(), &schema(2)).unwrap();
    // head a: z = 2 * (3 - 1) / 2 = 2.
    let p = c.score(&[3.0, 0.0]);
    assert!((p[0] - sigmoid(2.0)).abs() < 1e-6, "{p:?}");
    // head b alone would give sigmoid(-10); ordinal floor lifts it to head a's value.
    assert!((p[1] - p[0]).abs() < 1e-12);
    assert_eq!(p[2], 1.0);
}

#[test]
fn quality_heads_score_one_minus_the_expected_shortfall() {
    let mut m = model();
    m.heads_kind = HeadsKind::Quality;
    // One head per tier now; c's head is a constant 0.9 quality.
    assert!(
        Classifier::new(m.clone(), &schema(2))
            .unwrap_err()
            .contains("want one per tier")
    );
    m.heads.push(Head {
        tier: "c".into(),
        weights: vec![0.0, 0.0],
        intercept: (0.9f32 / 0.1).ln(),
    });
    let c = Classifier::new(m, &schema(2)).unwrap();
    // a: q = sigmoid(2); b: q = sigmoid(-10), lifted to a's; c: 0.9.
    let p = c.score(&[3.0, 0.0]);
    let qa = sigmoid(2.0);
    assert!((p[0] - (1.0 - (0.9 - qa))).abs() < 1e-6, "{p:?}");
    assert!((p[1] - p[0]).abs() < 1e-12, "{p:?}");
    assert_eq!(p[2], 1.0);
    // A cheap tier predicted better than the dearest is simply good enough.
    let p = c.score(&[21.0, 0.0]);
    assert_eq!(p[0], MAX_CHEAPER_P);
}

#[test]
fn gain_heads_score_one_minus_worse_plus_better() {
    let mut m = model();
    m.heads_kind = HeadsKind::Gain;
    assert!(
        Classifier::new(m.clone(), &schema(2))
            .unwrap_err()
            .contains("want two per tier except the dearest")
    );
    let constant = |tier: &str, p: f32| Head {
        tier: tier.into(),
        weights: vec![0.0, 0.0],
        intercept: (p / (1.0 - p)).ln(),
    };
    // a: dearest better 0.4, a better 0.1; b: dearest better 0.5, b better 0.1.
    m.heads = vec![
        constant("a", 0.4),
        constant("a", 0.1),
        constant("b", 0.5),
        constant("b", 0.1),
    ];
    let c = Classifier::new(m.clone(), &schema(2)).unwrap();
    let p = c.score(&[3.0, 0.0]);
    assert!((p[0] - 0.7).abs() < 1e-6, "{p:?}");
    // b alone would be 0.6; a dearer tier is never scored below a cheaper one.
    assert!((p[1] - 0.7).abs() < 1e-6, "{p:?}");
    assert_eq!(p[2], 1.0);
    // A tier expected to beat the dearest is simply good enough.
    m.heads[1] = constant("a", 0.6);
    let p = Classifier::new(m, &schema(2)).unwrap().score(&[3.0, 0.0]);
    assert_eq!(p[0], MAX_CHEAPER_P);
}

#[test]
fn fingerprint_mismatch_is_refused_with_both_fingerprints() {
    let mut s = schema(2);
    s.fingerprint = "other".into();
    let err = Classifier::new(model(), &s).unwrap_err();
    assert!(
        err.contains("fingerprint fp") && err.contains("fingerprint other"),
        "{err}"
    );
}

#[test]
fn malformed_models_are_refused() {
    let mut m = model();
    m.heads.pop();
    assert!(
        Classifier::new(m, &schema(2))
            .unwrap_err()
            .contains("heads")
    );
    let mut m = model();
    m.scaling.std[0] = 0.0;
    assert!(
        Classifier::new(m, &schema(2))
            .unwrap_err()
            .contains("scaling")
    );
    let mut m = model();
    m.thresholds[1] = 1.5;
    assert!(
        Classifier::new(m, &schema(2))
            .unwrap_err()
            .contains("thresholds[1]")
    );
    assert!(
        Classifier::new(model(), &schema(3))
            .unwrap_err()
            .contains("features")
    );
}

#[test]
fn calibration_maps_raw_scores_before_the_ordinal_floor() {
    let mut m = model();
    // Raw a: sigmoid(2) ≈ 0.88; map a: sigmoid(-10·s + …) would reverse, so it is refused.
    m.calibration = vec![[-1.0, 0.0], [1.0, 0.0]];
    let err = Classifier::new(m.clone(), &schema(2)).unwrap_err();
    assert!(
        err.contains("calibration[0]") && err.contains(">= 0"),
        "{err}"
    );
    m.calibration = vec![[1.0, 0.0]];
    let err = Classifier::new(m.clone(), &schema(2)).unwrap_err();
    assert!(err.contains("1 calibration maps for 3 tiers"), "{err}");
    // a: sigmoid(4 · raw - 4); b: constant sigmoid(3) (slope 0 is allowed).
    m.calibration = vec![[4.0, -4.0], [0.0, 3.0]];
    let c = Classifier::new(m, &schema(2)).unwrap();
    let raw = c.raw_scores(&[3.0, 0.0]);
    assert!((raw[0] - sigmoid(2.0)).abs() < 1e-6, "{raw:?}");
    let p = c.score(&[3.0, 0.0]);
    assert!(
        (p[0] - sigmoid(4.0 * sigmoid(2.0) - 4.0)).abs() < 1e-6,
        "{p:?}"
    );
    assert!((p[1] - sigmoid(3.0)).abs() < 1e-6, "{p:?}");
    assert_eq!(p[2], 1.0);
    // The floor applies after the maps: a map above the next tier's lifts that tier.
    let p = finish(vec![0.9, 0.1], &[[0.0, 2.0], [0.0, -2.0]]);
    assert!((p[1] - sigmoid(2.0)).abs() < 1e-12, "{p:?}");
}

#[test]
fn files_of_another_format_are_refused_by_name() {
    let mut m = model();
    m.format = "triage-model/1".into();
    let err = Classifier::new(m, &schema(2)).unwrap_err();
    assert!(
        err.contains("triage-model/1") && err.contains(MODEL_FORMAT),
        "{err}"
    );
    let json = serde_json::to_vec(&model()).unwrap();
    assert!(Classifier::from_bytes(&json, &schema(2)).is_ok());
    let err = Classifier::from_bytes(b"{\"format\": 3}", &schema(2)).unwrap_err();
    assert!(err.starts_with("not a triage model file"), "{err}");
}

#[test]
fn drivers_are_logit_contributions_towards_the_dearer_tier() {
    let mut s = schema(2);
    s.names = vec!["log_prompt_tokens".into(), "emb_000".into()];
    let mut m = model();
    m.heads[0].weights = vec![2.0, -1.0];
    let c = Classifier::new(m, &s).unwrap();
    // z = ((3 - 1) / 2, 4 / 1) = (1, 4); sufficiency weights (2, -1) lean cheap by 2 and
    // dear by 4.
    let d = c.drivers(&[3.0, 4.0], &s.names, 5);
    assert_eq!(
        d,
        vec![
            ("embedding".to_string(), 4.0),
            ("log_prompt_tokens".to_string(), -2.0)
        ]
    );
    assert_eq!(c.drivers(&[3.0, 4.0], &s.names, 1).len(), 1);
    // At the training mean nothing drives the decision.
    assert!(c.drivers(&[1.0, 0.0], &s.names, 5).is_empty());
}
