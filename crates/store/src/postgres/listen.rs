//! Other nodes' appends, from PostgreSQL's LISTEN/NOTIFY: every append
//! notifies `agentrt_events` with `session first last` when it commits;
//! a node listens on a connection of its own and skips what its own writer
//! sent.

use std::time::Duration;

use agentrt_types::SessionId;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Config, NoTls};
use tokio::sync::mpsc;

use crate::RemoteAppend;

/// The channel appends are announced on.
pub const CHANNEL: &str = "agentrt_events";

/// Starts a listener thread; it reconnects after a failure and stops when
/// the receiver is dropped.
pub fn spawn(config: Config, own_writer_pid: i32) -> mpsc::UnboundedReceiver<RemoteAppend> {
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new().name("pg-listen".into()).spawn(move || listen(config, own_writer_pid, tx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the PostgreSQL listener; other nodes' events reach readers late");
    }
    rx
}

fn listen(config: Config, own_writer_pid: i32, tx: mpsc::UnboundedSender<RemoteAppend>) {
    let mut first = true;
    while !tx.is_closed() {
        match config.connect(NoTls) {
            Ok(mut client) => match client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                Ok(()) => {
                    if !std::mem::replace(&mut first, false) && tx.send(RemoteAppend::Missed).is_err() {
                        return;
                    }
                    loop {
                        // A new wait each time: a timeout iterator's deadline does not move on.
                        match client.notifications().timeout_iter(Duration::from_secs(1)).next() {
                            Ok(Some(note)) if note.process_id() != own_writer_pid => {
                                if let Some(a) = parse(note.payload()) {
                                    if tx.send(a).is_err() {
                                        return;
                                    }
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) if tx.is_closed() => return,
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "PostgreSQL listener lost its connection; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "LISTEN failed; retrying"),
            },
            Err(e) => tracing::warn!(error = %e, "PostgreSQL listener could not connect; retrying"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn parse(payload: &str) -> Option<RemoteAppend> {
    let mut parts = payload.split(' ');
    let session = SessionId::parse(parts.next()?)?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some(RemoteAppend::Appended { session, first, last })
}
