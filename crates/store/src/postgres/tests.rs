//! PostgreSQL-only store tests: its schema. The store suite runs on
//! PostgreSQL too, in `crate::sql::tests`.

use serde_json::json;

use crate::sql::tests::{fresh_pg_database, session};
use crate::sql::SqlStore;
use crate::{Store, StoreError};

#[tokio::test]
async fn reconnecting_keeps_everything_and_a_newer_schema_is_refused() {
    let url = fresh_pg_database();
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
    let url = fresh_pg_database();
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

#[tokio::test]
async fn a_listener_cut_off_says_what_it_missed_once_it_is_back() {
    use std::time::{Duration, Instant};

    use crate::sql::tests::{client, submit};
    use crate::RemoteAppend;

    let url = fresh_pg_database();
    let (a, b) = (SqlStore::connect_postgres(&url).unwrap(), SqlStore::connect_postgres(&url).unwrap());
    let mut heard = a.remote_appends().expect("PostgreSQL announces appends");
    let id = session(&b).await;
    // Another node's append is announced, once the listener is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let appended = b.append(client(&id, vec![submit(&agentrt_types::TurnId::generate(), None)])).await.unwrap();
        let seq = appended[0].seq();
        if let Ok(Some(RemoteAppend::Appended { session, first, last })) =
            tokio::time::timeout(Duration::from_millis(300), heard.recv()).await
        {
            assert_eq!((session, first, last), (id.clone(), seq, seq));
            break;
        }
        assert!(Instant::now() < deadline, "no announcement arrived");
    }
    // Cut the listener off: when it is back, it says it may have missed some.
    let admin = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'agentrt listener' AND datname = current_database()",
                &[],
            )
            .unwrap();
    })
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), heard.recv()).await {
            Ok(Some(RemoteAppend::Missed)) => break,
            Ok(Some(RemoteAppend::Appended { .. })) => continue,
            other => panic!("the listener did not come back: {other:?}"),
        }
    }
}
