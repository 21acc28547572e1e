//! In-process fan-out of appended events to live readers (SSE streams, turn
//! waiters). The log in the store stays the source of truth: a reader that
//! falls behind the broadcast buffer re-reads from the store by seq.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentrt_types::{Event, SessionId};
use tokio::sync::broadcast;

/// Events buffered per session for slow readers before they must re-read.
const BUFFER: usize = 1024;

/// Per-session broadcast channels, created on first subscribe.
#[derive(Default)]
pub struct EventHub {
    channels: Mutex<HashMap<SessionId, broadcast::Sender<Arc<Event>>>>,
}

impl EventHub {
    /// Receives every event of `session` appended from now on.
    pub fn subscribe(&self, session: &SessionId) -> broadcast::Receiver<Arc<Event>> {
        let mut map = self.channels.lock().expect("hub lock poisoned");
        map.entry(session.clone()).or_insert_with(|| broadcast::channel(BUFFER).0).subscribe()
    }

    /// Hands freshly appended events to the session's readers.
    pub fn publish(&self, session: &SessionId, events: &[Event]) {
        let mut map = self.channels.lock().expect("hub lock poisoned");
        let Some(tx) = map.get(session) else { return };
        if tx.receiver_count() == 0 {
            map.remove(session);
            return;
        }
        for e in events {
            // An error only means every reader left meanwhile.
            let _ = tx.send(Arc::new(e.clone()));
        }
    }

    /// The sessions with live readers.
    pub fn watched(&self) -> Vec<SessionId> {
        let map = self.channels.lock().expect("hub lock poisoned");
        map.iter().filter(|(_, tx)| tx.receiver_count() > 0).map(|(id, _)| id.clone()).collect()
    }

    /// Whether the session has live readers.
    pub fn is_watched(&self, session: &SessionId) -> bool {
        self.channels.lock().expect("hub lock poisoned").get(session).is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Number of sessions with live readers.
    pub fn watched_sessions(&self) -> usize {
        self.channels.lock().expect("hub lock poisoned").len()
    }
}
