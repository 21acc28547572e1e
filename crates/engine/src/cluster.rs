//! Several nodes on one store (PostgreSQL). Every node serves the whole
//! API; a session runs on the node holding its lease. Here: sessions with a
//! turn to run that no node holds (their node died, or let go) are claimed
//! by whichever node sees them first, the lease deciding; and appends made
//! by other nodes reach this node's live readers (SSE streams, turn
//! waiters) and its running turns (a cancel requested through another
//! node). A node alone on its store (SQLite) does none of this.

use std::sync::Arc;
use std::time::Duration;

use agentrt_store::RemoteAppend;
use agentrt_types::time::now_ms;
use agentrt_types::EventData;
use tokio::sync::mpsc;

use crate::{executor, Inner};

/// Sessions claimed per look.
const CLAIM_BATCH: usize = 200;

/// Starts claiming and relaying, unless this node is alone on its store.
pub(crate) fn spawn(inner: &Arc<Inner>) {
    if inner.config.exclusive_store {
        return;
    }
    spawn_claims(inner);
    if let Some(rx) = inner.store.remote_appends() {
        spawn_relay(inner, rx);
    }
}

/// Looks for unheld sessions every third of a lease's lifetime: a dead
/// node's turns resume within the lease timeout and one look.
fn spawn_claims(inner: &Arc<Inner>) {
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        let every = (inner2.config.lease_ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = inner2.shutdown.cancelled() => return,
            }
            match inner2.store.claimable_sessions(now_ms(), CLAIM_BATCH).await {
                Ok(ids) => {
                    for id in ids.iter().filter(|id| !inner2.executors.contains(id)) {
                        executor::ensure_running(&inner2, id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look for sessions to claim"),
            }
        }
    });
}

/// Hands other nodes' appends to this node's readers and running turns.
fn spawn_relay(inner: &Arc<Inner>, mut rx: mpsc::UnboundedReceiver<RemoteAppend>) {
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        loop {
            let append = tokio::select! {
                a = rx.recv() => match a { Some(a) => a, None => return },
                _ = inner2.shutdown.cancelled() => return,
            };
            let (watched, running) = (inner2.hub.is_watched(&append.session), inner2.executors.contains(&append.session));
            if !watched && !running {
                continue;
            }
            let n = (append.last + 1).saturating_sub(append.first) as usize;
            let events = match inner2.store.read_events(&append.session, append.first.saturating_sub(1), n).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(session = %append.session, error = %e, "could not read another node's events");
                    continue;
                }
            };
            for e in &events {
                if let EventData::TurnCancelRequested { turn_id, .. } = &e.body.data {
                    executor::signal_cancel(&inner2, &append.session, turn_id);
                }
            }
            inner2.hub.publish(&append.session, &events);
        }
    });
}
