//! The agent's server: accepts connections on a Unix socket, reads one
//! [`Request`] per connection and answers it, a thread per connection.
//!
//! Reading order: [`serve`] and the dispatch here, then [`reaper`] (the one
//! place children are waited for), [`spawn`] (how a command is built),
//! [`exec`], [`processes`] and [`files`].

mod exec;
mod files;
mod pipe;
mod processes;
mod reaper;
mod spawn;

use std::io;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::{read_frame, write_frame, Request, Response};
use processes::Processes;

/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How the agent serves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where relative paths and commands without a cwd start (`/workspace` in a sandbox).
    pub workspace: PathBuf,
    /// Base environment of every command (PATH, HOME, LANG...); request env is added on top.
    pub env: Vec<(String, String)>,
    /// Reap every child, including orphans re-parented to us (true when PID 1).
    /// When false only the children the agent started are waited for.
    pub init: bool,
}

/// What every connection shares.
struct Agent {
    config: ServerConfig,
    processes: Processes,
}

/// Serves until the listener fails. Blocking.
///
/// While it serves, the agent waits for the children it starts from one
/// reaper thread (see `reaper`); with `init` it also reaps every other child
/// of this process, so nothing else in the process may wait for its own.
pub fn serve(listener: UnixListener, config: ServerConfig) -> io::Result<()> {
    reaper::start(config.init)?;
    let agent = std::sync::Arc::new(Agent { config, processes: Processes::default() });
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let agent = agent.clone();
                // Out of threads: the connection is dropped (closed) and the client sees it.
                let _ = detach("agent-conn", move || handle(&agent, conn));
            }
            Err(e) if is_transient(&e) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e),
        }
    }
}

/// Accept errors that pass: an aborted connection, a signal, or running out
/// of descriptors or memory for a moment.
fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted)
        || matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Serves one connection: one request, its answers, then close.
fn handle(agent: &Agent, mut conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let request = match read_frame::<_, Request>(&mut conn) {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            let _ = write_frame(&mut conn, &Response::from(Failure::new("invalid", format!("bad request frame: {e}"))));
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = conn.set_read_timeout(None);
    let config = &agent.config;
    let answer = match request {
        Request::Exec(request) => exec::run(config, request, &mut conn),
        Request::Pipe(spec) => return pipe::run(config, &spec, conn),
        other => Some(respond(agent, other).unwrap_or_else(Response::from)),
    };
    if let Some(answer) = answer {
        let _ = write_frame(&mut conn, &answer);
    }
    // Also wakes any thread still reading the connection (exec's disconnect watch).
    let _ = conn.shutdown(Shutdown::Both);
}

/// Answers every request but exec, which streams.
fn respond(agent: &Agent, request: Request) -> Result<Response, Failure> {
    let config = &agent.config;
    let path = |p: &str| resolve(&config.workspace, p);
    match request {
        Request::Ping => Ok(Response::Pong { pid: std::process::id() }),
        Request::Exec(_) | Request::Pipe(_) => Err(Failure::new("invalid", "exec and pipe are answered by their own handlers")),
        Request::ProcessStart(spec) => agent.processes.start(config, &spec),
        Request::ProcessStatus { id } => agent.processes.status(id),
        Request::ProcessOutput { id, stdout_offset, stderr_offset } => agent.processes.output(id, stdout_offset, stderr_offset),
        Request::ProcessSignal { id, signal } => agent.processes.signal(id, signal),
        Request::ProcessList => Ok(agent.processes.list()),
        Request::FileRead { path: p, max_bytes } => files::read(&path(&p)?, max_bytes),
        Request::FileWrite { path: p, data, append, mode } => files::write(&path(&p)?, &data, append, mode),
        Request::FileList { path: p } => files::list(&path(&p)?),
        Request::FileStat { path: p } => files::stat(&path(&p)?),
        Request::FileDelete { path: p, recursive } => files::delete(&path(&p)?, recursive),
    }
}

/// A request's path made absolute: relative paths start at the workspace.
fn resolve(workspace: &Path, path: &str) -> Result<PathBuf, Failure> {
    if path.is_empty() {
        return Err(Failure::new("invalid", "empty path"));
    }
    Ok(workspace.join(path))
}

/// A failed request; becomes [`Response::Error`].
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }

    /// An I/O error while doing `action` on `path`, e.g. `write /workspace/a.txt: ...`.
    fn io(action: &str, path: &Path, e: &io::Error) -> Self {
        Failure::new(io_kind(e), format!("{action} {}: {e}", path.display()))
    }
}

impl From<Failure> for Response {
    fn from(f: Failure) -> Self {
        Response::Error { kind: f.kind.to_owned(), message: f.message }
    }
}

/// The protocol's error kind for an I/O error.
fn io_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => return "no_space",
        Some(libc::ENOTDIR) => return "not_a_directory",
        Some(libc::EISDIR) => return "is_a_directory",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::NotFound => "not_found",
        io::ErrorKind::PermissionDenied => "permission_denied",
        io::ErrorKind::AlreadyExists => "exists",
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => "invalid",
        _ => "io",
    }
}

/// Runs `f` on a named thread nobody joins.
fn detach(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name(name.to_owned()).spawn(f).map(drop)
}

/// Unix milliseconds (0 before the epoch).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// A duration in whole milliseconds.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
