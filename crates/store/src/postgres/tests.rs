//! PostgreSQL-only store tests: its schema. The store suite runs on
//! PostgreSQL too, in `crate::sql::tests`.

use serde_json::json;

use crate::sql::tests::{fresh_pg_database, session};
use crate::sql::SqlStore;
use crate::{Store, StoreError};

#[tokio::test]
async fn reconnecting_keeps_everything_and_a_newer_schema_is_refused() {
    let url = fresh_pg_database().await;
    let id = {
        let store = SqlStore::connect_postgres(&url).unwrap();
        let id = session(&store).await;
        store.kv_set(&id, "k", &json!({"v": 1})).await.unwrap();
        id
    };
    // A second node connecting to the same database migrates nothing and sees it all.
    let store = SqlStore::connect_postgres(&url).unwrap();
    assert_eq!(store.kv_get(&id, "k").await.unwrap(), Some(json!({"v": 1})));
    drop(store);
    let admin = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        client.batch_execute("UPDATE agentrt_schema SET version = 99").unwrap();
    })
    .await
    .unwrap();
    assert!(matches!(SqlStore::connect_postgres(&url), Err(StoreError::SchemaTooNew { found: 99, .. })));
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_server_is_a_clear_error() {
    let bad = SqlStore::connect_postgres("postgres://[nope").err().map(|e| e.to_string());
    assert!(bad.as_deref().is_some_and(|e| e.contains("bad PostgreSQL URL")), "{bad:?}");
    let down = SqlStore::connect_postgres("postgres://postgres@127.0.0.1:1/x?connect_timeout=2").err().map(|e| e.to_string());
    assert!(down.as_deref().is_some_and(|e| e.starts_with("database error")), "{down:?}");
}

#[tokio::test]
async fn the_writer_connects_again_after_its_connection_is_killed() {
    let url = fresh_pg_database().await;
    let store = SqlStore::connect_postgres(&url).unwrap();
    let id = session(&store).await;
    let admin = url.clone();
    let killed = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        let rows = client
            .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'agentrt writer' AND datname = current_database()", &[])
            .unwrap();
        rows.len()
    })
    .await
    .unwrap();
    assert_eq!(killed, 1, "the writer's connection was found and killed");
    // The first write may find the connection dead; a later one goes through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match store.kv_set(&id, "k", &json!(1)).await {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "the writer never came back: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(store.kv_get(&id, "k").await.unwrap(), Some(json!(1)));
}
