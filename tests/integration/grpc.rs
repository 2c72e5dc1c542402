//! The gRPC API end to end with the generated client: decisions, knobs, bad input, health, reflection.

use tonic::Code;
use triage::proto::v1::{Message, RouteDecision, RouteRequest};

use crate::common::{Server, config};

fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: text.into(),
        ..Default::default()
    }
}

fn req(text: &str) -> RouteRequest {
    RouteRequest {
        messages: vec![user(text)],
        ..Default::default()
    }
}

const EASY: &str = "Hi! How are you? Let's chat about the beach.";
const HARD: &str = "Prove rigorously, step by step, that the integral of a convergent series related to the beach is bounded; derive every lemma.";

async fn route(server: &Server, r: RouteRequest) -> Result<RouteDecision, tonic::Status> {
    server.client().await.route(r).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn a_decision_carries_tier_chain_probabilities_features_and_reason() {
    let cfg = config();
    let server = Server::start(cfg.clone()).await;
    let mut r = req(EASY);
    r.request_id = Some("abc-1".into());
    let d = route(&server, r).await.unwrap();

    let id = uuid::Uuid::parse_str(&d.decision_id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(d.request_id.as_deref(), Some("abc-1"));
    let tier = cfg.tier_index(&d.tier).expect("tier is a configured tier");
    let chain: Vec<(String, String)> = d
        .chain
        .iter()
        .map(|m| (m.provider.clone(), m.model.clone()))
        .collect();
    let want: Vec<(String, String)> = cfg.tiers[tier]
        .chain
        .iter()
        .map(|m| (m.provider.clone(), m.model.clone()))
        .collect();
    assert_eq!(chain, want);
    assert_eq!(
        d.tiers.iter().map(|t| t.tier.as_str()).collect::<Vec<_>>(),
        ["fast", "standard", "frontier"]
    );
    assert!(
        d.tiers
            .windows(2)
            .all(|w| w[0].p_sufficient <= w[1].p_sufficient),
        "{:?}",
        d.tiers
    );
    assert_eq!(d.tiers[2].p_sufficient, 1.0);
    assert!(
        d.tiers
            .windows(2)
            .all(|w| w[0].estimated_cost_usd < w[1].estimated_cost_usd)
    );
    assert_eq!(d.estimated_cost_usd, d.tiers[tier].estimated_cost_usd);
    let f = d.features.unwrap();
    assert!(
        f.prompt_tokens >= 8 && f.prompt_tokens <= 20,
        "{}",
        f.prompt_tokens
    );
    assert!(
        f.markers.contains(&"chit_chat".to_string()) || f.prompt_tokens > 16,
        "{:?}",
        f.markers
    );
    assert!(
        d.model_version.starts_with("fast-standard-frontier-"),
        "{}",
        d.model_version
    );
    assert!(d.reason.starts_with(&d.tier), "{}", d.reason);
}

#[tokio::test]
async fn hard_prompts_go_to_a_dearer_tier_than_small_talk() {
    let cfg = config();
    let server = Server::start(cfg.clone()).await;
    let easy = route(&server, req(EASY)).await.unwrap();
    let hard = route(&server, req(HARD)).await.unwrap();
    assert!(easy.tiers[0].p_sufficient > hard.tiers[0].p_sufficient);
    assert!(
        cfg.tier_index(&easy.tier) < cfg.tier_index(&hard.tier),
        "easy went to {}, hard to {}",
        easy.tier,
        hard.tier
    );
}

#[tokio::test]
async fn decision_ids_are_unique_and_time_sortable() {
    let server = Server::start(config()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(route(&server, req(EASY)).await.unwrap().decision_id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids);
}

#[tokio::test]
async fn knobs_bound_the_tier() {
    let server = Server::start(config()).await;
    let d = route(
        &server,
        RouteRequest {
            max_tier: Some("fast".into()),
            ..req(HARD)
        },
    )
    .await
    .unwrap();
    assert_eq!(d.tier, "fast");
    assert!(!d.tiers[1].eligible && !d.tiers[2].eligible);
    assert!(d.reason.contains("max_tier=fast"), "{}", d.reason);
    let d = route(
        &server,
        RouteRequest {
            min_tier: Some("frontier".into()),
            ..req(EASY)
        },
    )
    .await
    .unwrap();
    assert_eq!(d.tier, "frontier");
    let d = route(
        &server,
        RouteRequest {
            quality_target: Some(0.0),
            ..req(HARD)
        },
    )
    .await
    .unwrap();
    assert_eq!(d.tier, "fast");
    assert!(d.tiers.iter().all(|t| t.threshold == 0.0));
    let d = route(
        &server,
        RouteRequest {
            quality_target: Some(1.0),
            ..req(EASY)
        },
    )
    .await
    .unwrap();
    assert_eq!(d.tier, "frontier");
    // A cost cap between the fast and standard estimates keeps the hard prompt on fast.
    let probe = route(&server, req(HARD)).await.unwrap();
    let cap = (probe.tiers[0].estimated_cost_usd + probe.tiers[1].estimated_cost_usd) / 2.0;
    let d = route(
        &server,
        RouteRequest {
            max_cost_usd: Some(cap),
            ..req(HARD)
        },
    )
    .await
    .unwrap();
    assert_eq!(d.tier, "fast");
    assert!(d.estimated_cost_usd <= cap);
}

#[tokio::test]
async fn a_cost_cap_below_every_tier_is_a_failed_precondition() {
    let server = Server::start(config()).await;
    let err = route(
        &server,
        RouteRequest {
            max_cost_usd: Some(0.0),
            ..req(EASY)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("max_cost_usd is 0"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_limit() {
    let cfg = config();
    let server = Server::start(cfg.clone()).await;
    let big = "x".repeat(cfg.server.max_prompt_bytes + 1);
    let cases: Vec<(&str, RouteRequest, &[&str])> = vec![
        (
            "no messages",
            RouteRequest::default(),
            &["messages", "is empty"],
        ),
        (
            "whitespace prompt",
            req("  \n\t "),
            &["messages[0].content", "empty, or only whitespace"],
        ),
        (
            "zero-width prompt",
            req("\u{200B}\u{200D}\u{FEFF}"),
            &["messages[0].content", "invisible characters"],
        ),
        (
            "no user message",
            RouteRequest {
                messages: vec![Message {
                    role: "system".into(),
                    content: "be nice".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &["messages", "no message with role \"user\""],
        ),
        (
            "prompt over the limit",
            req(&big),
            &[
                "messages[0].content",
                "4097 bytes",
                "limit of 4096 bytes",
                "server.max_prompt_bytes",
            ],
        ),
        (
            "too many messages",
            RouteRequest {
                messages: (0..9).map(|_| user("hi")).collect(),
                ..Default::default()
            },
            &[
                "messages",
                "9 messages",
                "limit of 8",
                "server.max_messages",
            ],
        ),
        (
            "unknown role",
            RouteRequest {
                messages: vec![
                    Message {
                        role: "robot".into(),
                        content: "hi".into(),
                        ..Default::default()
                    },
                    user("hi"),
                ],
                ..Default::default()
            },
            &["messages[0].role", "robot"],
        ),
        (
            "unknown min tier",
            RouteRequest {
                min_tier: Some("gold".into()),
                ..req("hi")
            },
            &[
                "min_tier",
                "unknown tier \"gold\"",
                "fast, standard, frontier",
            ],
        ),
        (
            "unknown max tier",
            RouteRequest {
                max_tier: Some("".into()),
                ..req("hi")
            },
            &["max_tier", "unknown tier"],
        ),
        (
            "min above max",
            RouteRequest {
                min_tier: Some("frontier".into()),
                max_tier: Some("fast".into()),
                ..req("hi")
            },
            &["min_tier", "dearer than max_tier"],
        ),
        (
            "negative cost",
            RouteRequest {
                max_cost_usd: Some(-1.0),
                ..req("hi")
            },
            &["max_cost_usd", "finite number >= 0", "-1"],
        ),
        (
            "NaN cost",
            RouteRequest {
                max_cost_usd: Some(f64::NAN),
                ..req("hi")
            },
            &["max_cost_usd", "NaN"],
        ),
        (
            "infinite cost",
            RouteRequest {
                max_cost_usd: Some(f64::INFINITY),
                ..req("hi")
            },
            &["max_cost_usd", "inf"],
        ),
        (
            "quality target",
            RouteRequest {
                quality_target: Some(1.5),
                ..req("hi")
            },
            &["quality_target", "[0, 1]", "1.5"],
        ),
        (
            "NaN quality",
            RouteRequest {
                quality_target: Some(f64::NAN),
                ..req("hi")
            },
            &["quality_target", "NaN"],
        ),
        (
            "request id",
            RouteRequest {
                request_id: Some("r".repeat(300)),
                ..req("hi")
            },
            &[
                "request_id",
                "limit of 256 bytes",
                "server.max_request_id_bytes",
            ],
        ),
    ];
    for (name, r, needles) in cases {
        let err = route(&server, r).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        for n in needles {
            assert!(
                err.message().contains(n),
                "{name}: {:?} lacks {n:?}",
                err.message()
            );
        }
    }
    // The server is still healthy after all that.
    assert!(route(&server, req(EASY)).await.is_ok());
}

#[tokio::test]
async fn earlier_turns_count_as_context() {
    let server = Server::start(config()).await;
    let r = RouteRequest {
        messages: vec![
            Message {
                role: "system".into(),
                content: "You are terse.".into(),
                ..Default::default()
            },
            user("What is the capital of France?"),
            Message {
                role: "assistant".into(),
                content: "Paris.".into(),
                ..Default::default()
            },
            user("And of Italy?"),
        ],
        ..Default::default()
    };
    let d = route(&server, r).await.unwrap();
    let f = d.features.unwrap();
    assert!(f.context_tokens >= 10, "{}", f.context_tokens);
    assert!(f.prompt_tokens <= 6, "{}", f.prompt_tokens);
    assert!(
        f.markers.contains(&"multi_turn".to_string()),
        "{:?}",
        f.markers
    );
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let server = Server::start(config()).await;
    let mut h = HealthClient::new(server.channel().await);
    for service in ["", "triage.v1.Router"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service:?} is not SERVING");
    }
    let err = h
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_router_and_describes_it() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = Server::start(config()).await;
    let mut c = ServerReflectionClient::new(server.channel().await);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "triage.v1.Router".into(),
            )),
        },
    ];
    let mut stream = c
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["triage.v1.Router", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    let second = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
        panic!("{second:?}")
    };
    assert!(!fd.file_descriptor_proto.is_empty());
}

/// grpcurl and older tools still ask the v1alpha reflection service.
#[tokio::test]
async fn reflection_v1alpha_answers_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let server = Server::start(config()).await;
    let mut c = ServerReflectionClient::new(server.channel().await);
    let reqs = vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }];
    let mut stream = c
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "triage.v1.Router"));
}

#[tokio::test]
async fn exploration_stays_within_the_knobs_and_reports_propensities() {
    let mut cfg = config();
    cfg.exploration_rate = 1.0;
    let server = Server::start(cfg).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let d = route(&server, req(EASY)).await.unwrap();
        // Rate 1: always a uniform draw over the three tiers.
        assert!((d.propensity - 1.0 / 3.0).abs() < 1e-9, "{}", d.propensity);
        if d.explored {
            assert!(d.reason.contains("exploring"), "{}", d.reason);
        }
        seen.insert(d.tier);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    for _ in 0..20 {
        let d = route(
            &server,
            RouteRequest {
                max_tier: Some("standard".into()),
                ..req(HARD)
            },
        )
        .await
        .unwrap();
        assert!(d.tier != "frontier");
        assert!((d.propensity - 0.5).abs() < 1e-9);
        let d = route(
            &server,
            RouteRequest {
                max_tier: Some("fast".into()),
                ..req(HARD)
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (d.tier.as_str(), d.propensity, d.explored),
            ("fast", 1.0, false)
        );
    }
}
