//! Background processes: started, then polled for status and output,
//! signalled and listed. They outlive the connection that started them.
//!
//! Each process's stdout and stderr go into a ring that keeps the last
//! [`KEEP`] bytes and counts every byte written, so that offsets are
//! absolute and a client that polls too rarely learns how much it missed.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use nix::sys::signal::Signal;

use super::spawn::{self, signal_group};
use super::{detach, reaper, unix_ms, Failure, ServerConfig};
use crate::protocol::{ExitStatus, ProcessInfo, ProcessSpec, Response};

/// Bytes of each stream kept, and returned at most per `ProcessOutput`.
const KEEP: usize = 1 << 20;

/// Every background process since the agent started.
#[derive(Default)]
pub(super) struct Processes {
    next_id: AtomicU64,
    table: Mutex<BTreeMap<u64, Process>>,
}

struct Process {
    id: u64,
    pid: u32,
    argv: Vec<String>,
    started_ms: u64,
    /// Shared with the reaper's callback and the output threads.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    exit: Option<ExitStatus>,
    stdout: Ring,
    stderr: Ring,
}

impl Processes {
    /// Starts `spec` with stdin from `/dev/null`; answers [`Response::Started`].
    pub(super) fn start(&self, config: &ServerConfig, spec: &ProcessSpec) -> Result<Response, Failure> {
        let mut command = spawn::command(config, spec)?;
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let state = Arc::new(Mutex::new(State::default()));
        let on_exit = {
            let state = state.clone();
            move |status| lock(&state).exit = Some(status)
        };
        let started_ms = unix_ms(SystemTime::now());
        let mut child = reaper::spawn(&mut command, on_exit).map_err(|e| spawn::spawn_failure(command.get_program(), &e))?;
        let pid = child.id();

        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            let state = state.clone();
            pumps.push(detach("agent-proc-out", move || spawn::pump(out, |chunk| lock(&state).stdout.push(chunk))));
        }
        if let Some(err) = child.stderr.take() {
            let state = state.clone();
            pumps.push(detach("agent-proc-err", move || spawn::pump(err, |chunk| lock(&state).stderr.push(chunk))));
        }
        if let Some(Err(e)) = pumps.into_iter().find(Result::is_err) {
            let _ = signal_group(pid, Some(Signal::SIGKILL));
            return Err(Failure::new("io", format!("start a process: start an output thread: {e}")));
        }

        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let process = Process { id, pid, argv: spec.argv.clone(), started_ms, state };
        self.lock().insert(id, process);
        Ok(Response::Started { id, pid })
    }

    /// Answers [`Response::Process`].
    pub(super) fn status(&self, id: u64) -> Result<Response, Failure> {
        let table = self.lock();
        Ok(Response::Process(find(&table, id)?.info()))
    }

    /// Output from the given offsets on; answers [`Response::ProcessOutput`].
    /// `dropped` adds up what both streams no longer kept.
    pub(super) fn output(&self, id: u64, stdout_offset: u64, stderr_offset: u64) -> Result<Response, Failure> {
        let table = self.lock();
        let process = find(&table, id)?;
        let info = process.info();
        let state = lock(&process.state);
        let (stdout, stdout_offset, stdout_dropped) = state.stdout.read(stdout_offset);
        let (stderr, stderr_offset, stderr_dropped) = state.stderr.read(stderr_offset);
        Ok(Response::ProcessOutput {
            stdout: BASE64.encode(stdout),
            stderr: BASE64.encode(stderr),
            stdout_offset,
            stderr_offset,
            dropped: stdout_dropped + stderr_dropped,
            info,
        })
    }

    /// Signals the process's group (`0` only checks); answers [`Response::Process`].
    pub(super) fn signal(&self, id: u64, signal: i32) -> Result<Response, Failure> {
        let table = self.lock();
        let process = find(&table, id)?;
        let signal = match signal {
            0 => None,
            n => Some(Signal::try_from(n).map_err(|_| Failure::new("invalid", format!("no signal number {n}")))?),
        };
        signal_group(process.pid, signal).map_err(|e| {
            let kind = if e == nix::errno::Errno::EPERM { "permission_denied" } else { "io" };
            Failure::new(kind, format!("signal process {id} (pid {}): {e}", process.pid))
        })?;
        Ok(Response::Process(process.info()))
    }

    /// Answers [`Response::Processes`], oldest first.
    pub(super) fn list(&self) -> Response {
        Response::Processes { processes: self.lock().values().map(Process::info).collect() }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Process>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn find(table: &BTreeMap<u64, Process>, id: u64) -> Result<&Process, Failure> {
    table.get(&id).ok_or_else(|| Failure::new("not_found", format!("no process {id}")))
}

impl Process {
    fn info(&self) -> ProcessInfo {
        let exit = lock(&self.state).exit.clone();
        ProcessInfo { id: self.id, pid: self.pid, argv: self.argv.clone(), running: exit.is_none(), exit, started_ms: self.started_ms }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The last [`KEEP`] bytes of a stream, and how many were ever written.
#[derive(Default)]
struct Ring {
    kept: VecDeque<u8>,
    total: u64,
}

impl Ring {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        self.kept.extend(chunk);
        let excess = self.kept.len().saturating_sub(KEEP);
        self.kept.drain(..excess);
    }

    /// Up to [`KEEP`] bytes from `offset` on, the offset after them, and how
    /// many bytes from `offset` on were no longer kept.
    fn read(&self, offset: u64) -> (Vec<u8>, u64, u64) {
        let first = self.total - self.kept.len() as u64;
        let from = offset.clamp(first, self.total);
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        let data: Vec<u8> = self.kept.iter().skip(skip).take(KEEP).copied().collect();
        let next = from + data.len() as u64;
        (data, next, first.saturating_sub(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_tail_with_absolute_offsets() {
        let mut ring = Ring::default();
        ring.push(&vec![1; KEEP]);
        ring.push(&[2; 10]);
        let (data, next, dropped) = ring.read(0);
        assert_eq!((data.len(), next, dropped), (KEEP, KEEP as u64 + 10, 10));
        assert_eq!(&data[KEEP - 10..], &[2; 10]);
        let (data, next, dropped) = ring.read(KEEP as u64 + 5);
        assert_eq!((data, next, dropped), (vec![2; 5], KEEP as u64 + 10, 0));
        let (data, next, _) = ring.read(u64::MAX);
        assert_eq!((data.len(), next), (0, KEEP as u64 + 10));
    }
}
