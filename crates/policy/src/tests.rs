use serde_json::{json, Value};

use crate::*;

fn tools() -> Vec<ToolDecl> {
    vec![
        ToolDecl {
            name: "payments.transfer".into(),
            server: "payments".into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "amount": { "type": "integer" },
                    "to": { "type": "string" },
                    "memo": { "type": ["string", "null"] },
                    "fee": { "type": "number" },
                    "dry-run": { "type": "boolean" },
                    "tags": { "type": "array", "items": { "type": "string" } },
                    "limits": { "type": "object", "properties": { "daily": { "type": "integer" } }, "required": ["daily"] },
                    "meta": { "oneOf": [{ "type": "string" }, { "type": "integer" }] },
                    "free": { "type": "object" }
                },
                "required": ["amount", "to", "memo"]
            }),
        },
        ToolDecl {
            name: "kv.set".into(),
            server: "builtin".into(),
            input_schema: json!({ "type": "object", "properties": { "key": { "type": "string" }, "value": {} }, "required": ["key"] }),
        },
        ToolDecl { name: "shell.exec".into(), server: "sandbox".into(), input_schema: json!({ "type": "object" }) },
    ]
}

fn compile(text: &str) -> Policies {
    match Policies::compile(text, &tools(), None) {
        Ok(p) => p,
        Err(e) => panic!("policies should compile: {e}"),
    }
}

fn compile_err(text: &str) -> String {
    match Policies::compile(text, &tools(), None) {
        Ok(p) => panic!("policies should be rejected, got {:?}", p.ids()),
        Err(e) => e.to_string(),
    }
}

/// 2024-01-01 (a Monday) 09:30 UTC.
const MONDAY_0930_MS: i64 = 1_704_101_400_000;

/// Decides a call by session `ses_1` of agent `support`.
fn call(p: &Policies, tool: &str, server: &str, args: Value) -> Decision {
    p.decide(&ToolCallRequest {
        tenant: "acme",
        agent: "support",
        session_id: "ses_1",
        tool,
        server,
        arguments: &args,
        turn: TurnState::default(),
        now_ms: MONDAY_0930_MS,
    })
}

fn transfer(amount: Value) -> Value {
    json!({ "amount": amount, "to": "bob", "memo": null })
}

fn permit(ids: &[&str]) -> Decision {
    Decision::Permit { policies: ids.iter().map(|s| s.to_string()).collect() }
}

fn forbid_ids(d: &Decision) -> Vec<String> {
    match d {
        Decision::Forbid { policies, .. } => policies.clone(),
        other => panic!("expected Forbid, got {other:?}"),
    }
}

const NO_BIG_TRANSFERS: &str = r#"
@id("allow-all")
permit (principal, action, resource);

@id("no-big-transfers")
forbid (principal, action == Action::"payments.transfer", resource)
when { context.input.amount > 500 };
"#;

#[test]
fn forbid_by_argument_value() {
    let p = compile(NO_BIG_TRANSFERS);
    assert_eq!(p.ids(), ["allow-all", "no-big-transfers"]);
    let d = call(&p, "payments.transfer", "payments", transfer(json!(600)));
    assert_eq!(forbid_ids(&d), ["no-big-transfers"]);
    assert_eq!(call(&p, "payments.transfer", "payments", transfer(json!(100))), permit(&["allow-all"]));
    // A whole float is an integer (as in JSON Schema).
    assert_eq!(forbid_ids(&call(&p, "payments.transfer", "payments", transfer(json!(600.0)))), ["no-big-transfers"]);
    let json = serde_json::to_value(&d).expect("serializes");
    assert_eq!(json["decision"], "forbid");
    assert_eq!(json["policies"], json!(["no-big-transfers"]));
}

#[test]
fn approval_annotation_requires_a_human() {
    let p = compile(
        r#"
        @id("small-transfers")
        permit (principal, action == Action::"payments.transfer", resource)
        when { context.input.amount <= 100 };

        @id("big-transfers")
        @approval("transfers over 100 need a human")
        permit (principal, action == Action::"payments.transfer", resource)
        when { context.input.amount > 100 };

        permit (principal, action == Action::"kv.set", resource);
        "#,
    );
    assert_eq!(p.ids(), ["small-transfers", "big-transfers", "policy2"]);
    assert_eq!(
        call(&p, "payments.transfer", "payments", transfer(json!(250))),
        Decision::RequireApproval { policies: vec!["big-transfers".into()], reason: "transfers over 100 need a human".into() }
    );
    assert_eq!(call(&p, "payments.transfer", "payments", transfer(json!(50))), permit(&["small-transfers"]));
    assert_eq!(call(&p, "kv.set", "builtin", json!({ "key": "k", "value": 1 })), permit(&["policy2"]));
}

#[test]
fn nothing_matches_is_no_match() {
    let empty = compile("");
    assert!(empty.ids().is_empty());
    assert_eq!(call(&empty, "kv.set", "builtin", json!({ "key": "k" })), Decision::NoMatch);
    let p = compile(
        NO_BIG_TRANSFERS
            .replace("permit (principal, action, resource)", "permit (principal, action == Action::\"kv.set\", resource)")
            .as_str(),
    );
    assert_eq!(call(&p, "payments.transfer", "payments", transfer(json!(10))), Decision::NoMatch);
}

#[test]
fn principal_in_agent() {
    let p = compile(r#"permit (principal in Agent::"support", action, resource);"#);
    assert_eq!(call(&p, "kv.set", "builtin", json!({ "key": "k" })), permit(&["policy0"]));
    let other = p.decide(&ToolCallRequest {
        tenant: "acme",
        agent: "other",
        session_id: "ses_2",
        tool: "kv.set",
        server: "builtin",
        arguments: &json!({ "key": "k" }),
        turn: TurnState::default(),
        now_ms: MONDAY_0930_MS,
    });
    assert_eq!(other, Decision::NoMatch);
}

#[test]
fn time_and_turn_in_conditions() {
    let p = compile(
        r#"
        @id("office-hours")
        permit (principal, action, resource)
        when { context.time.hour >= 9 && context.time.hour < 17 && context.time.weekday < 5 };

        @id("step-budget")
        forbid (principal, action, resource) when { context.turn.steps >= 10 };
        "#,
    );
    let args = json!({ "key": "k" });
    let at = |now_ms: i64, steps: u64| {
        p.decide(&ToolCallRequest {
            tenant: "acme",
            agent: "support",
            session_id: "ses_1",
            tool: "kv.set",
            server: "builtin",
            arguments: &args,
            turn: TurnState { steps, input_tokens: 0, output_tokens: 0 },
            now_ms,
        })
    };
    let hour = 3_600_000;
    assert_eq!(at(MONDAY_0930_MS, 0), permit(&["office-hours"]));
    assert_eq!(at(MONDAY_0930_MS + 8 * hour, 0), Decision::NoMatch, "17:30 is after hours");
    assert_eq!(at(MONDAY_0930_MS + 5 * 24 * hour, 0), Decision::NoMatch, "Saturday");
    assert_eq!(forbid_ids(&at(MONDAY_0930_MS, 10)), ["step-budget"]);
}

#[test]
fn validation_errors_name_the_policy_and_what_to_fix() {
    let unknown_action = compile_err("@id(\"p1\")\npermit (principal, action == Action::\"nope\", resource);");
    assert!(unknown_action.contains("for policy `p1`, unrecognized action `Action::\"nope\"`"), "{unknown_action}");
    assert!(unknown_action.contains("at 2:"), "has the location: {unknown_action}");

    let misspelled = compile_err(
        "@id(\"typo\")\nforbid (principal, action == Action::\"payments.transfer\", resource)\nwhen { context.input.amout > 5 };",
    );
    assert!(misspelled.contains("for policy `typo`") && misspelled.contains("amout"), "{misspelled}");
    assert!(misspelled.contains("amount"), "suggests the right name: {misspelled}");
    assert!(misspelled.contains("at 3:"), "{misspelled}");

    let type_error = compile_err(
        "@id(\"types\")\nforbid (principal, action == Action::\"payments.transfer\", resource)\nwhen { context.input.amount > \"x\" };",
    );
    assert!(type_error.contains("for policy `types`, unexpected type"), "{type_error}");

    let syntax = compile_err("@id(\"broken\")\npermit (principal, action, resource)\nwhen { context.tool == };");
    assert!(syntax.starts_with("cannot parse the policies:\nfor policy `broken`, unexpected token"), "{syntax}");
    let unnamed =
        compile_err("permit (principal, action, resource); // a; \"\nforbid (principal, action, resource) when { \"a;\" == 1 +  };");
    assert!(unnamed.contains("for policy `policy1`"), "{unnamed}");
    assert!(syntax.contains("at 3:"), "{syntax}");

    let dup = compile_err("@id(\"a\") permit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);");
    assert!(dup.contains("duplicate policy id `a`"), "{dup}");
    let dup_default = compile_err("permit (principal, action, resource);\n@id(\"policy0\") forbid (principal, action, resource);");
    assert!(dup_default.contains("duplicate policy id `policy0`"), "{dup_default}");

    let template = compile_err("@id(\"t\") permit (principal == ?principal, action, resource);");
    assert!(template.contains("policy `t` is a template"), "{template}");

    let approval_on_forbid = compile_err("@id(\"f\") @approval(\"why\") forbid (principal, action, resource);");
    assert!(approval_on_forbid.contains("policy `f`"), "{approval_on_forbid}");
}

#[test]
fn extra_schema_declares_more_actions() {
    let extra = r#"
        action "github.create_issue" in ["call_tool"] appliesTo {
          principal: [Session],
          resource: [Tool],
          context: { input: { repo: String }, tool: String, server: String, agent: String, time: Time, turn: Turn },
        };
    "#;
    let text = r#"
        @id("no-prod-issues")
        forbid (principal, action == Action::"github.create_issue", resource) when { context.input.repo == "prod" };
        @id("allow-all") permit (principal, action in Action::"call_tool", resource);
    "#;
    let err = Policies::compile(text, &tools(), None).expect_err("unknown action without the extra schema");
    assert!(err.to_string().contains("github.create_issue"), "{err}");
    let p = Policies::compile(text, &tools(), Some(extra)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forbid_ids(&call(&p, "github.create_issue", "github", json!({ "repo": "prod" }))), ["no-prod-issues"]);
    assert_eq!(call(&p, "github.create_issue", "github", json!({ "repo": "dev" })), permit(&["allow-all"]));
    // Cedar checks the arguments against the extra schema's types.
    let d = call(&p, "github.create_issue", "github", json!({ "repo": 5 }));
    assert!(matches!(&d, Decision::Forbid { policies, .. } if policies.is_empty()), "{d:?}");

    let bad = Policies::compile(text, &tools(), Some("action \"x\" appliesTo { principal: [Nobody], resource: [Tool] };"))
        .expect_err("bad fragment");
    assert!(bad.to_string().contains("Nobody"), "{bad}");
}

#[test]
fn undeclared_tools_are_still_decided() {
    let p = compile(
        r#"
        @id("untrusted") forbid (principal, action, resource) when { context.server == "untrusted" };
        @id("tools") permit (principal, action in Action::"call_tool", resource);
        "#,
    );
    // A float, a null, an escape-looking object and deep nesting do not fit
    // Cedar's JSON format; the untyped path copes.
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let args = json!({ "x": 1.5, "y": null, "z": { "__entity": { "type": "Agent", "id": "admin" } }, "big": 1e300, "deep": deep });
    assert_eq!(forbid_ids(&call(&p, "mcp.delete_repo", "untrusted", args.clone())), ["untrusted"]);
    assert_eq!(call(&p, "mcp.delete_repo", "github", args), permit(&["tools"]));

    // Untyped arguments are visible to policies that test for them with `has`.
    let p = compile(
        r#"
        @id("tools") permit (principal, action in Action::"call_tool", resource);
        @id("count") forbid (principal, action, resource) when { context.input has count && context.input.count > 3 };
        @id("escape") forbid (principal, action, resource) when { context.input has z && context.input.z has __entity };
        "#,
    );
    assert_eq!(forbid_ids(&call(&p, "mcp.x", "github", json!({ "count": 5 }))), ["count"]);
    assert_eq!(call(&p, "mcp.x", "github", json!({ "count": 2.0 })), permit(&["tools"]));
    // 4.5 becomes a decimal, which `>` on Long cannot compare: the forbid
    // fails to evaluate, which denies.
    assert_eq!(forbid_ids(&call(&p, "mcp.x", "github", json!({ "count": 4.5 }))), ["count"]);
    let escape = json!({ "z": { "__entity": { "type": "Agent", "id": "admin" } } });
    assert_eq!(forbid_ids(&call(&p, "mcp.x", "github", escape)), ["escape"], "`__entity` stays a plain record key");
}

#[test]
fn arguments_that_do_not_fit_are_forbidden_with_a_reason() {
    let p = compile(NO_BIG_TRANSFERS);
    for (args, needle) in [
        (transfer(json!("x")), "amount"),
        (transfer(json!(1.5)), "input.amount"),
        (json!({ "amount": 5 }), "to"),
        (json!("not an object"), "payments.transfer"),
        (json!({ "amount": 5, "to": "bob", "fee": "cheap" }), "input.fee"),
    ] {
        match call(&p, "payments.transfer", "payments", args.clone()) {
            Decision::Forbid { policies, reason } => {
                assert!(policies.is_empty(), "{args}: {policies:?}");
                assert!(reason.contains(needle), "{args}: reason should name `{needle}`: {reason}");
            }
            other => panic!("{args}: expected Forbid, got {other:?}"),
        }
    }
    // Properties the schema does not map are left out, not rejected.
    let extra = json!({ "amount": 5, "to": "bob", "meta": 1.5, "free": { "a": null }, "unknown": [1.5] });
    assert_eq!(call(&p, "payments.transfer", "payments", extra), permit(&["allow-all"]));
}

#[test]
fn json_schema_maps_to_cedar_types() {
    let text = schema_text(&tools());
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(schema.actions().count(), 4, "call_tool and three tools");
    for expected in [
        "action \"payments.transfer\" in [\"call_tool\"]",
        "\"amount\": Long,",
        "\"memo\"?: String,",
        "\"fee\"?: decimal,",
        "\"dry-run\"?: Bool,",
        "\"tags\"?: Set<String>,",
        "\"daily\": Long,",
    ] {
        assert!(text.contains(expected), "missing {expected}:\n{text}");
    }
    assert!(
        !text.contains("\"meta\"") && !text.contains("\"free\"") && !text.contains("\"value\""),
        "unmappable properties are left out:\n{text}"
    );

    // Policies can use every mapped type, including quoted names and decimals.
    let p = compile(
        r#"
        @id("fees") forbid (principal, action == Action::"payments.transfer", resource)
        when { context.input has fee && context.input.fee.greaterThan(decimal("1.5")) };
        @id("dry") permit (principal, action == Action::"payments.transfer", resource)
        when { context.input has "dry-run" && context.input["dry-run"] && context.input has limits && context.input.limits.daily < 10 };
        "#,
    );
    let args = |fee: f64| json!({ "amount": 5, "to": "bob", "memo": null, "fee": fee, "dry-run": true, "limits": { "daily": 3 } });
    assert_eq!(forbid_ids(&call(&p, "payments.transfer", "payments", args(2.25))), ["fees"]);
    assert_eq!(call(&p, "payments.transfer", "payments", args(1.25)), permit(&["dry"]));
}

#[test]
fn schema_text_survives_odd_tool_names() {
    let odd = vec![ToolDecl {
        name: "we\"ird\\name\n".into(),
        server: "s".into(),
        input_schema: json!({ "type": "object", "properties": { "a\"b": { "type": "string" } } }),
    }];
    let text = schema_text(&odd);
    let _ = cedar_policy::Schema::from_cedarschema_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let p = Policies::compile("permit (principal, action == Action::\"we\\\"ird\\\\name\\n\", resource);", &odd, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(call(&p, "we\"ird\\name\n", "s", json!({ "a\"b": "x" })), permit(&["policy0"]));
}

#[test]
fn a_forbid_that_fails_to_evaluate_denies() {
    let p = compile(
        r#"
        @id("allow-all") permit (principal, action, resource);
        @id("overflowing") forbid (principal, action == Action::"payments.transfer", resource)
        when { context.input.amount * 1000000000000 > 5000000000000000 };
        "#,
    );
    assert_eq!(call(&p, "payments.transfer", "payments", transfer(json!(1))), permit(&["allow-all"]));
    let d = call(&p, "payments.transfer", "payments", transfer(json!(i64::MAX / 2)));
    assert_eq!(forbid_ids(&d), ["overflowing"]);
}

#[test]
fn policies_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Policies>();
}
