//! Several nodes on one store (PostgreSQL). Every node serves the whole
//! API; a session runs on the node holding its lease. Here: sessions with a
//! turn to run that no node holds (their node died, or let go) are claimed
//! by whichever node sees them first, the lease deciding; and appends made
//! by other nodes reach this node's live readers (SSE streams, turn
//! waiters) and its running turns (a cancel requested through another
//! node). A node alone on its store (SQLite) does none of this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentrt_store::{NodeInfo, RemoteAppend};
use agentrt_types::time::now_ms;
use agentrt_types::EventData;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{executor, Engine, EngineError, Inner};

/// This node's standing in the cluster.
pub struct NodeState {
    started_ms: i64,
    draining: AtomicBool,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState { started_ms: now_ms(), draining: AtomicBool::new(false) }
    }
}

impl NodeState {
    /// Whether an operator asked this node to drain.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Tells the store this node is alive, and learns whether it should drain.
pub(crate) async fn heartbeat(inner: &Inner) -> Result<(), EngineError> {
    let me = inner.store.node_heartbeat(&inner.config.node_id, inner.node.started_ms, now_ms()).await?;
    if inner.node.draining.swap(me.draining, Ordering::SeqCst) != me.draining {
        tracing::warn!(node = %me.id, draining = me.draining, "drain flag changed");
    }
    Ok(())
}

/// A node as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// `up`, `draining`, or `down` (no heartbeat for two lease lifetimes).
    pub status: &'static str,
    /// Whether this is the node that answered.
    pub this_node: bool,
}

impl Engine {
    /// The cluster's nodes, with their leases and health.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, EngineError> {
        let now = now_ms();
        Ok(self.inner.store.list_nodes(now).await?.into_iter().map(|info| self.node_view(info, now)).collect())
    }

    fn node_view(&self, info: NodeInfo, now: i64) -> NodeView {
        let stale = 2 * self.inner.config.lease_ttl.as_millis() as i64;
        let status = match (now - info.heartbeat_ms > stale, info.draining) {
            (true, _) => "down",
            (false, true) => "draining",
            (false, false) => "up",
        };
        NodeView { this_node: info.id == self.inner.config.node_id, status, info }
    }

    /// Asks a node to drain (give its sessions up at their next turn
    /// boundary, take no new ones), or to take sessions again.
    pub async fn drain_node(&self, id: &str, draining: bool) -> Result<NodeView, EngineError> {
        if self.inner.config.exclusive_store && draining {
            return Err(EngineError::Conflict(
                "this node is alone on its store: draining it would leave its sessions to no one; run several nodes on PostgreSQL".into(),
            ));
        }
        let now = now_ms();
        let Some(info) = self.inner.store.set_node_draining(id, draining, now).await? else {
            return Err(EngineError::NotFound(format!("node {id:?} not found")));
        };
        if id == self.inner.config.node_id {
            heartbeat(&self.inner).await?;
        }
        Ok(self.node_view(info, now))
    }
}

/// Sessions claimed per look.
const CLAIM_BATCH: usize = 200;
/// Events re-read per session when announcements were missed.
const RESYNC_EVENTS: u64 = 200;

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
            if executor::sleep_or_shutdown(&inner2, every).await {
                return;
            }
            if inner2.node.draining() {
                continue;
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
            match append {
                RemoteAppend::Appended { session, first, last } => {
                    if inner2.hub.is_watched(&session) || inner2.executors.contains(&session) {
                        relay(&inner2, &session, first.saturating_sub(1), (last + 1).saturating_sub(first)).await;
                    }
                }
                // Announcements were lost: hand on the latest events of every
                // session someone here follows (readers skip what they have).
                RemoteAppend::Missed => {
                    let mut sessions = inner2.hub.watched();
                    sessions.extend(inner2.executors.sessions());
                    sessions.sort();
                    sessions.dedup();
                    tracing::info!(sessions = sessions.len(), "store announcements missed; catching up");
                    for id in sessions {
                        if let Ok(Some(s)) = inner2.store.get_session(&id).await {
                            relay(&inner2, &id, s.last_seq.saturating_sub(RESYNC_EVENTS), RESYNC_EVENTS).await;
                        }
                    }
                }
            }
        }
    });
}

/// Hands a session's events after `after` (at most `n`) to readers and to
/// the turn running here.
async fn relay(inner: &Inner, session: &agentrt_types::SessionId, after: u64, n: u64) {
    let events = match inner.store.read_events(session, after, n as usize).await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(%session, error = %e, "could not read another node's events");
            return;
        }
    };
    for e in &events {
        if let EventData::TurnCancelRequested { turn_id, .. } = &e.body.data {
            executor::signal_cancel(inner, session, turn_id);
        }
    }
    inner.hub.publish(session, &events);
}
