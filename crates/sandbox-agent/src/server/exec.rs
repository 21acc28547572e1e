//! `exec`: runs a command to completion, streaming its output if asked.
//!
//! Helper threads feed one channel: one per output pipe, one writing stdin,
//! one watching the connection for the client leaving, and the reaper's
//! callback with the exit status. The connection's thread drains it until
//! the command exited and its pipes closed, the deadline passed (the group
//! is killed) or the client left (the group is killed, nothing answered).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use nix::sys::signal::Signal;

use super::spawn::{self, signal_group};
use super::{detach, millis, reaper, Failure, ServerConfig};
use crate::protocol::{write_frame, ExecRequest, ExitStatus, Response};

/// Cap on `max_output`, so that the final answer stays well under a frame.
const MAX_OUTPUT: u64 = 16 << 20;

/// How long output may keep coming after the command exited: a background
/// child can hold the pipes open forever, and should not hold the answer.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

enum Event {
    Output(Pipe, Vec<u8>),
    /// A pipe reached its end.
    Closed,
    Exited(ExitStatus),
    ClientGone,
}

/// Runs `request`; sends streamed chunks on `conn` and returns the final
/// answer, or `None` when the client has gone.
pub(super) fn run(config: &ServerConfig, request: ExecRequest, conn: &mut UnixStream) -> Option<Response> {
    match start(config, &request, conn) {
        Ok((pid, started, events)) => collect(&request, pid, started, &events, conn),
        Err(failure) => Some(failure.into()),
    }
}

/// Spawns the command and the helper threads.
fn start(config: &ServerConfig, request: &ExecRequest, conn: &UnixStream) -> Result<(u32, Instant, Receiver<Event>), Failure> {
    let stdin = match &request.stdin {
        Some(data) => Some(BASE64.decode(data).map_err(|e| Failure::new("invalid", format!("stdin is not valid base64: {e}")))?),
        None => None,
    };
    let mut command = spawn::command(config, &request.process)?;
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());

    let (tx, events) = mpsc::channel();
    let on_exit = {
        let tx = tx.clone();
        move |status| drop(tx.send(Event::Exited(status)))
    };
    let started = Instant::now();
    let mut child = reaper::spawn(&mut command, on_exit).map_err(|e| spawn::spawn_failure(command.get_program(), &e))?;
    let pid = child.id();

    let mut helpers = Vec::new();
    if let Some(reader) = child.stdout.take() {
        helpers.push(read_into(reader, Pipe::Stdout, tx.clone()));
    }
    if let Some(reader) = child.stderr.take() {
        helpers.push(read_into(reader, Pipe::Stderr, tx.clone()));
    }
    if let (Some(mut writer), Some(data)) = (child.stdin.take(), stdin) {
        // A command that does not read its stdin makes this fail: not an error.
        helpers.push(detach("agent-exec-in", move || drop(writer.write_all(&data))));
    }
    if let Ok(conn) = conn.try_clone() {
        helpers.push(watch_client(conn, tx));
    }
    if let Some(Err(e)) = helpers.into_iter().find(Result::is_err) {
        let _ = signal_group(pid, Some(Signal::SIGKILL));
        return Err(Failure::new("io", format!("exec: start a helper thread: {e}")));
    }
    Ok((pid, started, events))
}

/// Forwards a pipe's output, then its end, as events.
fn read_into(reader: impl Read + Send + 'static, pipe: Pipe, tx: Sender<Event>) -> io::Result<()> {
    detach("agent-exec-out", move || {
        // Reading goes on after the answer went out, so that a background
        // child still writing there does not die of SIGPIPE.
        spawn::pump(reader, |chunk| drop(tx.send(Event::Output(pipe, chunk.to_vec()))));
        let _ = tx.send(Event::Closed);
    })
}

/// Reports the client leaving. It sends nothing after its request, so the
/// end of the stream (or an error) means it left; the handler's shutdown
/// after the answer ends this thread too.
fn watch_client(mut conn: UnixStream, tx: Sender<Event>) -> io::Result<()> {
    detach("agent-exec-watch", move || {
        let mut buf = [0u8; 256];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(Event::ClientGone);
    })
}

/// Drains the events into the final answer.
fn collect(request: &ExecRequest, pid: u32, started: Instant, events: &Receiver<Event>, conn: &mut UnixStream) -> Option<Response> {
    let max = usize::try_from(request.max_output.min(MAX_OUTPUT)).unwrap_or(usize::MAX);
    let (mut stdout, mut stderr) = (Capture::new(max), Capture::new(max));
    // A timeout too far out to represent is no timeout.
    let mut deadline = request.timeout_ms.and_then(|ms| started.checked_add(Duration::from_millis(ms)));
    let mut exit: Option<(ExitStatus, Instant)> = None;
    let mut open_pipes = 2u8;
    let mut timed_out = false;
    let kill = || {
        let _ = signal_group(pid, Some(Signal::SIGKILL));
    };
    let (status, ended) = loop {
        let wait_until = match &exit {
            Some((status, at)) if open_pipes == 0 || at.elapsed() >= DRAIN_GRACE => break (status.clone(), *at),
            Some((_, at)) => Some(*at + DRAIN_GRACE),
            None => deadline,
        };
        let event = match wait_until {
            Some(until) => events.recv_timeout(until.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::Output(pipe, chunk)) => {
                match pipe {
                    Pipe::Stdout => stdout.push(&chunk),
                    Pipe::Stderr => stderr.push(&chunk),
                }
                if request.stream {
                    let data = BASE64.encode(&chunk);
                    let frame = match pipe {
                        Pipe::Stdout => Response::Stdout { data },
                        Pipe::Stderr => Response::Stderr { data },
                    };
                    if write_frame(conn, &frame).is_err() {
                        kill();
                        return None;
                    }
                }
            }
            Ok(Event::Closed) => open_pipes = open_pipes.saturating_sub(1),
            Ok(Event::Exited(status)) => exit = Some((status, Instant::now())),
            Ok(Event::ClientGone) => {
                kill();
                return None;
            }
            Err(RecvTimeoutError::Timeout) => {
                if exit.is_none() {
                    kill();
                    timed_out = true;
                    deadline = None;
                }
            }
            // Every sender is gone, the reaper's callback included: cannot happen.
            Err(RecvTimeoutError::Disconnected) => {
                kill();
                return Some(Failure::new("io", "exec: lost track of the command").into());
            }
        }
    };
    Some(Response::Exited {
        status,
        timed_out,
        truncated: stdout.truncated || stderr.truncated,
        stdout: BASE64.encode(&stdout.data),
        stderr: BASE64.encode(&stderr.data),
        duration_ms: millis(ended.duration_since(started)),
    })
}

/// The first `max` bytes of a stream.
struct Capture {
    data: Vec<u8>,
    max: usize,
    truncated: bool,
}

impl Capture {
    fn new(max: usize) -> Self {
        Capture { data: Vec::new(), max, truncated: false }
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = self.max.saturating_sub(self.data.len());
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }
}
