//! Table-driven checks of the input parsing rules every door shares.

use super::*;

fn msg(role: &str, content: &str) -> pb::Message {
    pb::Message {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    }
}

fn route(messages: Vec<pb::Message>) -> pb::RouteRequest {
    pb::RouteRequest {
        messages,
        ..Default::default()
    }
}

#[test]
fn route_requests_parse_or_name_the_field_and_the_limit() {
    let mut config = Config::shipped().unwrap();
    config.server.max_messages = 4;
    config.server.max_prompt_bytes = 64;
    let ok = |r: pb::RouteRequest| validate_route(r, &config).unwrap();
    let bad = |r: pb::RouteRequest| match validate_route(r, &config).unwrap_err() {
        RequestError::Invalid { field, message } => format!("{field}: {message}"),
        e => e.to_string(),
    };

    // The routed message is the last user message; the rest is context; turns count users
    // and assistants before it, and `developer` is a system message.
    let r = ok(route(vec![
        msg("developer", "Be brief."),
        msg("user", "first"),
        msg("assistant", "reply"),
        msg("user", "second"),
    ]));
    assert_eq!(r.prompt, "second");
    assert_eq!(r.context, ["Be brief.", "first", "reply"]);
    // Invisible characters alone are not a prompt; one visible letter among them is.
    for invisible in [
        "\u{200B}\u{200C}\u{200D}",
        "\u{FEFF} \u{2060}\t",
        "\u{202E}\u{00AD}\n",
    ] {
        assert!(
            bad(route(vec![msg("user", invisible)]))
                .starts_with("messages[0].content: the routed user message is empty"),
            "{invisible:?}"
        );
    }
    assert_eq!(
        ok(route(vec![msg("user", "\u{200B}hi")])).prompt,
        "\u{200B}hi"
    );
    assert_eq!(r.prior_turns, 2);

    let knobs = |f: &dyn Fn(&mut pb::RouteRequest)| {
        let mut r = route(vec![msg("user", "hi")]);
        f(&mut r);
        r
    };
    let cases: Vec<(pb::RouteRequest, &str)> = vec![
        (route(vec![]), "messages: is empty"),
        (
            route(vec![msg("system", "x")]),
            "messages: has no message with role \"user\"",
        ),
        (
            route(vec![msg("robot", "x")]),
            "messages[0].role: unknown role \"robot\"",
        ),
        (
            route(vec![msg("user", " \n\t")]),
            "messages[0].content: the routed user message is empty",
        ),
        (
            route(vec![msg("user", &"x".repeat(65))]),
            "65 bytes exceed the limit of 64 bytes (server.max_prompt_bytes)",
        ),
        (
            route(vec![msg("user", "x"); 5]),
            "5 messages exceed the limit of 4 (server.max_messages)",
        ),
        (
            knobs(&|r| r.min_tier = Some("gold".into())),
            "min_tier: unknown tier \"gold\"",
        ),
        (
            knobs(&|r| {
                r.min_tier = Some("frontier".into());
                r.max_tier = Some("fast".into());
            }),
            "min_tier: \"frontier\" is dearer than max_tier \"fast\"",
        ),
        (
            knobs(&|r| r.max_cost_usd = Some(-1.0)),
            "max_cost_usd: must be a finite number >= 0",
        ),
        (
            knobs(&|r| r.max_cost_usd = Some(f64::NAN)),
            "max_cost_usd: must be a finite number >= 0",
        ),
        (
            knobs(&|r| r.quality_target = Some(1.5)),
            "quality_target: must be in [0, 1]",
        ),
        (
            knobs(&|r| r.request_id = Some("r".repeat(300))),
            "request_id: 300 bytes exceed the limit",
        ),
    ];
    for (req, want) in cases {
        let got = bad(req);
        assert!(got.contains(want), "want {want:?}, got {got:?}");
    }
}

#[test]
fn completion_requests_check_sampling_and_tool_turns() {
    let config = Config::shipped().unwrap();
    let complete = |f: &dyn Fn(&mut pb::CompleteRequest)| {
        let mut r = pb::CompleteRequest {
            route: Some(route(vec![msg("user", "hi")])),
            ..Default::default()
        };
        f(&mut r);
        parse_complete(r, &config)
    };
    let (input, chat) = complete(&|r| {
        r.route
            .as_mut()
            .unwrap()
            .messages
            .insert(0, msg("developer", "rules"));
    })
    .unwrap();
    assert_eq!(input.prompt, "hi");
    assert_eq!(chat.messages[0].role, Role::System);
    type Change = Box<dyn Fn(&mut pb::CompleteRequest)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|r| r.temperature = Some(2.5)),
            "temperature: must be in [0, 2]",
        ),
        (
            Box::new(|r| r.top_p = Some(0.0)),
            "top_p: must be in (0, 1]",
        ),
        (
            Box::new(|r| r.max_tokens = Some(0)),
            "max_tokens: must be at least 1",
        ),
        (
            Box::new(|r| r.route.as_mut().unwrap().messages.push(msg("tool", "42"))),
            "messages[1].tool_call_id: is required for role \"tool\"",
        ),
    ];
    for (f, want) in cases {
        let got = complete(&*f).unwrap_err().to_string();
        assert!(got.contains(want), "want {want:?}, got {got:?}");
    }
}
