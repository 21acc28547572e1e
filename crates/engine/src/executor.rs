//! Who runs a session, and when. A session with unfinished turns gets one
//! executor task on this node; the executor takes the session's lease (its
//! fencing token goes on every append), runs the turns in order, and gives
//! the lease back when the queue is empty. Work that arrives while it is
//! finishing marks the slot dirty, so nothing is left unrun.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_store::Fence;
use agentrt_types::{SessionId, TurnId};
use tokio_util::sync::CancellationToken;

use crate::turn::{self, Abort, TurnEnd};
use crate::Inner;

/// Live executors of this node.
#[derive(Default)]
pub struct Executors {
    slots: Mutex<HashMap<SessionId, Arc<Slot>>>,
}

/// One session's executor state shared with the API side.
#[derive(Default)]
pub struct Slot {
    /// New work arrived since the executor last looked.
    dirty: AtomicBool,
    /// Cancellation tokens of the turns being run.
    cancels: Mutex<HashMap<TurnId, CancellationToken>>,
}

impl Slot {
    /// Registers a turn and returns its cancellation token.
    pub fn register(&self, turn: &TurnId) -> CancellationToken {
        let token = CancellationToken::new();
        self.cancels.lock().expect("slot lock poisoned").insert(turn.clone(), token.clone());
        token
    }

    pub fn unregister(&self, turn: &TurnId) {
        self.cancels.lock().expect("slot lock poisoned").remove(turn);
    }
}

impl Executors {
    /// Number of sessions with a live executor.
    pub fn active(&self) -> usize {
        self.slots.lock().expect("executors lock poisoned").len()
    }

    /// The sessions with an executor on this node.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.slots.lock().expect("executors lock poisoned").keys().cloned().collect()
    }

    /// Whether the session has an executor on this node.
    pub fn contains(&self, id: &SessionId) -> bool {
        self.slots.lock().expect("executors lock poisoned").contains_key(id)
    }

    fn remove_if_same(&self, id: &SessionId, slot: &Arc<Slot>) {
        let mut map = self.slots.lock().expect("executors lock poisoned");
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(id);
        }
    }
}

/// Makes sure an executor is running (or will look again) for the session.
pub(crate) fn ensure_running(inner: &Arc<Inner>, id: &SessionId) {
    // A draining node takes no sessions: other nodes claim them.
    if inner.shutdown.is_cancelled() || inner.node.draining() {
        return;
    }
    let slot = {
        let mut map = inner.executors.slots.lock().expect("executors lock poisoned");
        if let Some(slot) = map.get(id) {
            slot.dirty.store(true, Ordering::SeqCst);
            return;
        }
        let slot = Arc::new(Slot::default());
        map.insert(id.clone(), slot.clone());
        slot
    };
    let (inner2, id2) = (inner.clone(), id.clone());
    inner.tasks.spawn(async move {
        use futures_util::FutureExt;
        let run = std::panic::AssertUnwindSafe(run_session(inner2.clone(), id2.clone(), slot.clone()));
        if run.catch_unwind().await.is_err() {
            // A bug, not an input: free the slot so the session is not stuck;
            // its unfinished turn resumes from the log on the next start.
            tracing::error!(session = %id2, "executor panicked; session left for recovery");
            inner2.executors.remove_if_same(&id2, &slot);
        }
    });
}

/// Cancels a running turn on this node, if it is running here.
pub(crate) fn signal_cancel(inner: &Inner, id: &SessionId, turn: &TurnId) {
    let map = inner.executors.slots.lock().expect("executors lock poisoned");
    if let Some(slot) = map.get(id) {
        if let Some(token) = slot.cancels.lock().expect("slot lock poisoned").get(turn) {
            token.cancel();
        }
    }
}

async fn run_session(inner: Arc<Inner>, id: SessionId, slot: Arc<Slot>) {
    let holder = inner.config.node_id.clone();
    let ttl = inner.config.lease_ttl.as_millis() as i64;
    let token = match inner.store.acquire_lease(&id, &holder, ttl, inner.config.exclusive_store).await {
        Ok(Some(token)) => token,
        Ok(None) => {
            tracing::debug!(session = %id, "lease held elsewhere; not running here");
            inner.executors.remove_if_same(&id, &slot);
            return;
        }
        Err(e) => {
            tracing::error!(session = %id, error = %e, "could not take session lease");
            inner.executors.remove_if_same(&id, &slot);
            return;
        }
    };
    let mut fence = Fence::Lease { holder: holder.clone(), token };
    loop {
        let token = match &fence {
            Fence::Lease { token, .. } => *token,
            Fence::Client => token,
        };
        if inner.node.draining() {
            // A turn boundary: the session moves to another node.
            inner.executors.remove_if_same(&id, &slot);
            inner.save_workspace(&id).await;
            if let Err(e) = inner.store.release_lease(&id, &holder, token).await {
                tracing::warn!(session = %id, error = %e, "could not release lease while draining");
            }
            tracing::info!(session = %id, "draining: session left for another node");
            return;
        }
        slot.dirty.store(false, Ordering::SeqCst);
        let turns = match inner.store.unfinished_turns(&id).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(session = %id, error = %e, "could not read turns; retrying");
                if sleep_or_shutdown(&inner, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
        };
        if turns.is_empty() {
            if !let_go(&inner, &id, &slot, &holder, token).await {
                continue;
            }
            return;
        }
        let mut waiting = None;
        for t in turns {
            match turn::run(&inner, &id, &mut fence, &slot, t).await {
                Ok(TurnEnd::Ended) => {}
                Ok(TurnEnd::Waiting { wake_at_ms }) => {
                    // Later turns queue behind this one.
                    waiting = Some(wake_at_ms);
                    break;
                }
                Err(Abort::Fenced) => {
                    tracing::warn!(session = %id, "lease lost to another executor or a handover; stepping back");
                    inner.metrics.fenced.inc();
                    inner.executors.remove_if_same(&id, &slot);
                    // After a handover (through any node) the lease is still
                    // this node's: a new executor takes it with the new token
                    // and goes on under the new agent. After a takeover it is
                    // another node's, and the new executor finds it held.
                    ensure_running(&inner, &id);
                    return;
                }
                Err(Abort::Shutdown) => {
                    inner.executors.remove_if_same(&id, &slot);
                    return;
                }
                Err(Abort::Store(e)) => {
                    tracing::error!(session = %id, error = %e, "store failed during a turn; retrying");
                    if sleep_or_shutdown(&inner, Duration::from_secs(1)).await {
                        inner.executors.remove_if_same(&id, &slot);
                        return;
                    }
                    break;
                }
            }
        }
        if let Some(wake_at_ms) = waiting {
            if !let_go(&inner, &id, &slot, &holder, token).await {
                continue;
            }
            if let Some(at) = wake_at_ms {
                wake_at(&inner, &id, at);
            }
            tracing::debug!(session = %id, "turn waits for approval");
            return;
        }
    }
    inner.executors.remove_if_same(&id, &slot);
}

/// Gives the session and its lease up, unless new work arrived since the
/// executor last looked (then `false`: look again).
async fn let_go(inner: &Arc<Inner>, id: &SessionId, slot: &Arc<Slot>, holder: &str, token: u64) -> bool {
    // Saved while the lease is still held, so that the next node to run
    // the session starts from this workspace.
    inner.save_workspace(id).await;
    {
        // Checked and removed under one hold of the map lock, so
        // `ensure_running` either marks this slot dirty before the check or
        // finds it gone and starts a new executor: no wake-up is lost.
        let mut map = inner.executors.slots.lock().expect("executors lock poisoned");
        if slot.dirty.load(Ordering::SeqCst) {
            return false;
        }
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(id);
        }
    }
    if let Err(e) = inner.store.release_lease(id, holder, token).await {
        tracing::warn!(session = %id, error = %e, "could not release lease");
    }
    true
}

/// Looks at the session again at `at_ms` (unix ms), e.g. when an approval
/// expires. After a restart, recovery looks at every unfinished turn anyway.
fn wake_at(inner: &Arc<Inner>, id: &SessionId, at_ms: i64) {
    let (inner2, id) = (inner.clone(), id.clone());
    inner.tasks.spawn(async move {
        let delay = Duration::from_millis((at_ms - agentrt_types::time::now_ms()).max(0) as u64);
        if !sleep_or_shutdown(&inner2, delay).await {
            ensure_running(&inner2, &id);
        }
    });
}

/// Sleeps; returns `true` if shutdown began meanwhile.
pub(crate) async fn sleep_or_shutdown(inner: &Inner, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = inner.shutdown.cancelled() => true,
    }
}

/// Renews this node's leases every third of their lifetime.
pub(crate) fn spawn_lease_renewal(inner: &Arc<Inner>) {
    let inner2 = inner.clone();
    inner.tasks.spawn(async move {
        let ttl = inner2.config.lease_ttl;
        loop {
            if sleep_or_shutdown(&inner2, ttl / 3).await {
                return;
            }
            if let Err(e) = inner2.store.renew_leases(&inner2.config.node_id, ttl.as_millis() as i64).await {
                tracing::warn!(error = %e, "lease renewal failed");
            }
            if let Err(e) = crate::cluster::heartbeat(&inner2).await {
                tracing::warn!(error = %e, "node heartbeat failed");
            }
        }
    });
}
