use std::sync::Arc;

use agentrt_store::sqlite::SqliteStore;
use agentrt_store::{NewSession, Store};
use agentrt_types::spec::SpecFormat;
use agentrt_types::{AgentSpec, SessionId, TurnId};
use serde_json::json;

use crate::{ToolContext, ToolError, ToolSet};

async fn ctx() -> (tempfile::TempDir, ToolContext) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
    let session_id = SessionId::generate();
    store
        .create_session(NewSession {
            id: session_id.clone(),
            tenant: "default".into(),
            agent: "a".into(),
            agent_version: 1,
            metadata: json!({}),
        })
        .await
        .unwrap();
    let ctx = ToolContext {
        session_id,
        turn_id: TurnId::generate(),
        step: 1,
        idempotency_key: "k".into(),
        store,
        http: reqwest::Client::new(),
        traceparent: None,
        sandbox: None,
    };
    (dir, ctx)
}

fn tools() -> ToolSet {
    ToolSet::for_agent(&AgentSpec::parse("[model]\nprovider = \"scripted\"", SpecFormat::Toml).unwrap(), false).unwrap()
}

#[tokio::test]
async fn kv_round_trip_is_session_scoped_and_durable() {
    let (_d, ctx) = ctx().await;
    let t = tools();
    t.call("kv.set", &ctx, json!({"key": "a", "value": [1, 2]})).await.unwrap();
    let got = t.call("kv.get", &ctx, json!({"key": "a"})).await.unwrap();
    assert_eq!(got, json!({"key": "a", "found": true, "value": [1, 2]}));
    let missing = t.call("kv.get", &ctx, json!({"key": "b"})).await.unwrap();
    assert_eq!(missing["found"], json!(false));
}

#[tokio::test]
async fn arguments_are_validated_against_the_schema() {
    let (_d, ctx) = ctx().await;
    let err = tools().call("kv.set", &ctx, json!({"key": 5})).await.unwrap_err();
    let ToolError::InvalidArguments(msg) = err else { panic!("expected invalid arguments") };
    assert!(msg.contains("value") && msg.contains("/key"), "{msg}");
}

#[tokio::test]
async fn unknown_tool_is_an_error() {
    let (_d, ctx) = ctx().await;
    assert!(matches!(tools().call("nope", &ctx, json!({})).await, Err(ToolError::UnknownTool(_))));
}

#[test]
fn a_bad_schema_names_its_field() {
    let text = r#"
        [model]
        provider = "scripted"
        [[tools.http]]
        name = "x"
        url = "http://127.0.0.1:1/"
        input_schema = { type = "no-such-type" }
    "#;
    let err = ToolSet::for_agent(&AgentSpec::parse(text, SpecFormat::Toml).unwrap(), false).err().unwrap();
    assert_eq!(err.path, "tools.http[0].input_schema");
}
