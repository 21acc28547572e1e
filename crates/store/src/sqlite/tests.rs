//! SQLite-only store tests: its files and migrations. The store suite runs
//! on SQLite too, in `crate::sql::tests`.

use serde_json::json;

use super::SqliteStore;
use crate::sql::tests::session;
use crate::{Store, StoreError};

#[tokio::test]
async fn reopening_keeps_everything_and_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentrt.db");
    let id = {
        let store = SqliteStore::open(&path).unwrap();
        let id = session(&store).await;
        store.kv_set(&id, "k", &json!({"v": 1})).await.unwrap();
        id
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.kv_get(&id, "k").await.unwrap(), Some(json!({"v": 1})));
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(SqliteStore::open(&path), Err(StoreError::SchemaTooNew { found: 99, .. })));
}

#[tokio::test]
async fn a_store_from_before_tenants_is_migrated_to_the_default_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentrt.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO agents (name, version, spec, created_ms) VALUES ('old', 1, ?1, 5)",
            [r#"{"model":{"provider":"scripted"}}"#],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let got = store.get_agent("default", "old", None).await;
    assert!(got.as_ref().is_ok_and(|a| a.as_ref().is_some_and(|a| a.version == 1)), "{got:?}");
    assert_eq!(store.list_tenants().await.unwrap().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["default"]);
}
