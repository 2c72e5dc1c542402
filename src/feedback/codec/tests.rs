use super::*;

fn record(id: &str) -> DecisionRecord {
    let mut features: Vec<f32> = vec![6.2, 0.0, 1.0, 0.031, 0.25, 1.0, 0.0];
    features.extend((0..64).map(|i| ((i as f32) * 0.37).sin() * 0.2));
    DecisionRecord {
        decision_id: id.into(),
        time_unix_ms: 1_764_000_000_123,
        model_version: "fast-frontier-abc".into(),
        tiers: vec!["fast".into(), "frontier".into()],
        tier: "frontier".into(),
        p_sufficient: vec![0.41, 1.0],
        propensity: 0.95,
        schema_fingerprint: "fp".into(),
        knobs: KnobsRecord {
            min_tier: Some("fast".into()),
            max_cost_usd: Some(0.5),
            ..KnobsRecord::default()
        },
        tenant: Some("acme".into()),
        labels: [("team".to_string(), "search".to_string())].into(),
        features,
        prompt_tokens: 412,
        context_tokens: 9,
        estimated_cost_usd: 0.000_123,
        prompt_sha256: "ab".repeat(32),
        prompt: None,
    }
}

fn contexts(d: &DecisionRecord) -> Vec<Context> {
    vec![Context {
        model_version: d.model_version.clone(),
        tiers: d.tiers.clone(),
        schema_fingerprint: d.schema_fingerprint.clone(),
    }]
}

#[test]
fn a_decision_round_trips_with_features_within_their_quantization_step() {
    let id = uuid::Uuid::now_v7().to_string();
    let d = record(&id);
    let bytes = encode_decision(&d, 0, 64);
    assert_eq!(bytes[0], RECORD_V3);
    let back = decode_decision(|| id.clone(), &bytes, &contexts(&d)).unwrap();
    let exact = DecisionRecord {
        features: back.features.clone(),
        p_sufficient: back.p_sufficient.clone(),
        propensity: back.propensity,
        ..d.clone()
    };
    assert_eq!(back, exact, "everything but the quantized numbers is exact");
    assert_eq!(back.features.len(), d.features.len());
    for (i, (a, b)) in d.features.iter().zip(&back.features).enumerate() {
        // Half floats keep ~3 digits; 4-bit steps of a per-vector scale are within half a
        // step (the embedding's largest magnitude is under 0.2, so a step is under 0.2 / 7).
        let tol = if i < 7 { a.abs() / 1_000.0 } else { 0.1 / 7.0 };
        assert!((a - b).abs() <= tol + 1e-7, "feature {i}: {a} became {b}");
    }
    // Markers (0/1) are exact.
    assert_eq!(back.features[2], 1.0);
    assert_eq!(back.features[1], 0.0);
    assert_eq!(
        back.propensity, 0.95,
        "read back as written, not as 0.949999988"
    );
    // A record of 71 features, labels and knobs stays small: the 64-dim embedding takes 32
    // bytes, the 7 hand-made features 5 zeros in a bitmap and 5 half floats.
    assert!(bytes.len() < 170, "{} bytes", bytes.len());
}

/// A decision as the second layout wrote it (int8 embedding, every dense value kept).
fn encode_v2(d: &DecisionRecord, context: u32, embedding_dim: usize) -> Vec<u8> {
    #[allow(clippy::cast_possible_truncation)]
    let disk = DiskDecision {
        context,
        time_unix_ms: d.time_unix_ms,
        tier: d
            .tiers
            .iter()
            .position(|t| *t == d.tier)
            .map(|i| i as u8)
            .ok_or_else(|| d.tier.clone()),
        p_sufficient: d.p_sufficient.iter().map(|&p| p as f32).collect(),
        propensity: d.propensity as f32,
        knobs: DiskKnobs {
            min_tier: d.knobs.min_tier.clone(),
            max_tier: d.knobs.max_tier.clone(),
            max_cost_usd: d.knobs.max_cost_usd,
            latency_sensitive: d.knobs.latency_sensitive,
            quality_target: d.knobs.quality_target,
        },
        tenant: d.tenant.clone(),
        labels: d.labels.clone(),
        features: PackedFeaturesV2::pack(&d.features, embedding_dim),
        prompt_tokens: d.prompt_tokens,
        context_tokens: d.context_tokens,
        estimated_cost_usd: d.estimated_cost_usd,
        prompt_sha256: Digest::pack(&d.prompt_sha256),
        prompt: d.prompt.clone(),
    };
    versioned(RECORD_V2, &disk)
}

#[test]
fn a_second_layout_record_still_reads_with_its_int8_precision() {
    let id = uuid::Uuid::now_v7().to_string();
    let d = record(&id);
    let bytes = encode_v2(&d, 0, 64);
    assert_eq!(bytes[0], RECORD_V2);
    assert_eq!(decision_time(&bytes).unwrap(), d.time_unix_ms);
    let back = decode_decision(|| id.clone(), &bytes, &contexts(&d)).unwrap();
    assert_eq!(back.tier, d.tier);
    assert_eq!(back.knobs, d.knobs);
    assert_eq!(back.features.len(), d.features.len());
    for (a, b) in d.features[7..].iter().zip(&back.features[7..]) {
        assert!((a - b).abs() <= 0.1 / 127.0 + 1e-7, "{a} became {b}");
    }
}

#[test]
fn feature_parts_that_contradict_their_lengths_are_refused() {
    let p = PackedFeatures::pack(&[3.0, 0.0, 5.0, 0.5, -0.25, 0.125], 3);
    assert_eq!(&p.unpack().unwrap()[..3], &[3.0, 0.0, 5.0]);
    let broken = [
        PackedFeatures {
            dense_len: u32::MAX,
            ..p.clone()
        },
        PackedFeatures {
            embedding_len: u32::MAX,
            ..p.clone()
        },
        PackedFeatures {
            dense: vec![],
            ..p.clone()
        },
        PackedFeatures {
            nonzero: vec![0xff],
            ..p.clone()
        },
        PackedFeatures {
            embedding: vec![],
            ..p.clone()
        },
    ];
    for b in broken {
        assert!(matches!(b.unpack(), Err(CodecError::Malformed(_))), "{b:?}");
    }
}

#[test]
fn four_bit_steps_keep_the_sign_and_the_extremes() {
    let v = [0.7f32, -0.7, 0.35, -0.05, 0.0, 0.1, -0.6];
    let p = PackedFeatures::pack(&v, v.len());
    let back = p.unpack().unwrap();
    let step = 0.7 / 7.0;
    for (a, b) in v.iter().zip(&back) {
        assert!((a - b).abs() <= step / 2.0 + 1e-6, "{a} became {b}");
    }
    assert_eq!(back[0], 0.7);
    assert_eq!(back[1], -0.7);
    assert_eq!(p.embedding.len(), 4, "two steps a byte");
}

#[test]
fn a_first_layout_json_record_still_reads() {
    let d = DecisionRecord {
        prompt: Some("kept".into()),
        ..record("legacy-id")
    };
    let json = serde_json::to_vec(&d).unwrap();
    assert_eq!(decode_decision(String::new, &json, &[]).unwrap(), d);
    assert_eq!(decision_time(&json).unwrap(), d.time_unix_ms);
}

#[test]
fn unknown_versions_and_contexts_are_errors_not_guesses() {
    let d = record("x");
    let mut bytes = encode_decision(&d, 3, 64);
    assert!(matches!(
        decode_decision(String::new, &bytes, &contexts(&d)),
        Err(CodecError::UnknownContext(3))
    ));
    bytes[0] = 9;
    assert!(matches!(
        decode_decision(String::new, &bytes, &contexts(&d)),
        Err(CodecError::Version(9))
    ));
    assert!(matches!(decision_time(&[]), Err(CodecError::Empty)));
    assert!(decode_decision(String::new, &[RECORD_V2, 0xff], &[]).is_err());
}

#[test]
fn uuid_v7_keys_sort_by_time_and_time_keys_bound_them() {
    let early = uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(1_700_000_000, 0, 0, 0));
    let late = uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(1_800_000_000, 0, 0, 0));
    let (ke, kl) = (
        decision_key(&early.to_string()),
        decision_key(&late.to_string()),
    );
    assert_eq!(ke.len(), 17);
    assert!(ke < kl);
    let mid = time_key(1_750_000_000_000);
    assert!(ke < mid && mid < kl);
    // Other ids sort after every UUIDv7 and keep their text.
    let text = decision_key("d1");
    assert!(text > kl && text >= text_keys_start());
    let v4 = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    assert!(decision_key(v4) > kl, "a v4 UUID does not sort by time");
    // An uppercase UUID is kept as text so the id reads back exactly as written.
    let upper = late.to_string().to_uppercase();
    assert_eq!(key_decision_id(&decision_key(&upper)).unwrap(), upper);
}

#[test]
fn outcome_keys_split_back_and_group_under_their_decision() {
    let id = uuid::Uuid::now_v7().to_string();
    for decision in [id.as_str(), "d/1", ""] {
        let k = outcome_key(decision, "judge");
        assert!(k.starts_with(&decision_key(decision)));
        assert_eq!(
            split_outcome_key(&k).unwrap(),
            (decision.to_string(), "judge".to_string())
        );
    }
    // "d" must not own "d/1"'s outcomes: the length prefix keeps them apart.
    assert!(!outcome_key("d/1", "x").starts_with(&decision_key("d")));
    assert!(split_outcome_key(&[7, 1, 2]).is_none());
}

#[test]
fn an_outcome_round_trips() {
    let o = OutcomeRecord {
        decision_id: uuid::Uuid::now_v7().to_string(),
        source: "user".into(),
        success: Some(true),
        quality: Some(0.75),
        latency_ms: Some(420),
        cost_usd: Some(0.002),
        error_class: None,
        labels: [("k".to_string(), "v".to_string())].into(),
        observed_at_unix_ms: -5,
        recorded_at_unix_ms: 7,
        orphan: true,
        ..OutcomeRecord::default()
    };
    let key = outcome_key(&o.decision_id, &o.source);
    assert_eq!(decode_outcome(&key, &encode_outcome(&o)).unwrap(), o);
    let json = serde_json::to_vec(&o).unwrap();
    assert_eq!(decode_outcome(b"ignored", &json).unwrap(), o);
}

#[test]
fn digests_pack_to_bytes_only_when_they_round_trip() {
    let hex = "0f".repeat(32);
    assert!(matches!(Digest::pack(&hex), Digest::Bytes(_)));
    assert_eq!(Digest::pack(&hex).unpack(), hex);
    for odd in ["00", "ZZ".repeat(32).as_str(), "AB".repeat(32).as_str()] {
        assert!(matches!(Digest::pack(odd), Digest::Text(_)), "{odd}");
        assert_eq!(Digest::pack(odd).unpack(), odd);
    }
}

#[test]
fn non_finite_or_empty_embeddings_do_not_poison_the_record() {
    let p = PackedFeatures::pack(&[1.0, 0.0, 0.0], 2);
    assert_eq!(p.unpack().unwrap(), vec![1.0, 0.0, 0.0]);
    let p = PackedFeatures::pack(&[f32::INFINITY, 2.0], 1);
    let back = p.unpack().unwrap();
    assert!(back[0].is_infinite());
    assert!((back[1] - 2.0).abs() < 1e-6, "{}", back[1]);
    // An infinite embedding element cannot set the scale; it saturates at the top step.
    let p = PackedFeatures::pack(&[f32::INFINITY, f32::NAN, 0.5], 3);
    assert_eq!(p.unpack().unwrap(), vec![7.0, 0.0, 1.0]);
    assert_eq!(
        PackedFeatures::pack(&[], 5).unpack().unwrap(),
        Vec::<f32>::new()
    );
}

#[test]
fn quantizing_rounds_half_away_from_zero_and_clamps() {
    for y in [
        -300.0f32, -127.6, -127.4, -2.5, -0.5, -0.49, 0.0, 0.49, 0.5, 1.5, 2.5, 126.5, 127.0, 900.0,
    ] {
        #[allow(clippy::cast_possible_truncation)]
        let expected = y.round().clamp(-127.0, 127.0) as i32;
        assert_eq!(super::quantize(y, 127), expected, "{y}");
        let expected = y.round().clamp(-7.0, 7.0) as i32;
        assert_eq!(super::quantize(y, 7), expected, "{y}");
    }
    assert_eq!(super::quantize(f32::NAN, 7), 0);
    assert_eq!(super::quantize(f32::INFINITY, 127), 127);
    assert_eq!(super::quantize(f32::NEG_INFINITY, 7), -7);
}

#[test]
fn hex_is_lowercase_two_digits_a_byte() {
    assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    assert_eq!(super::hex(&[]), "");
}
