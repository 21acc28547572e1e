//! `pipe`: starts a process whose stdin and stdout become the connection.
//! After the [`Response::Started`] frame the connection carries raw bytes:
//! what the client sends goes to the process's stdin, what the process
//! writes to stdout comes back (stderr is dropped). The process lives as
//! long as the connection: when the client closes it, the process group is
//! killed. For long-lived stdio servers such as MCP servers.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::Stdio;

use nix::sys::signal::Signal;

use super::spawn::{self, pump, signal_group};
use super::{detach, reaper, Failure, ServerConfig};
use crate::protocol::{write_frame, ProcessSpec, Response};

/// Starts the process and couples it to `conn` until either side ends.
pub(super) fn run(config: &ServerConfig, spec: &ProcessSpec, mut conn: UnixStream) {
    let mut command = match spawn::command(config, spec) {
        Ok(c) => c,
        Err(f) => return answer(&mut conn, f.into()),
    };
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
    let mut child = match reaper::spawn(&mut command, move |_| {
        let _ = ended_tx.send(());
    }) {
        Ok(c) => c,
        Err(e) => return answer(&mut conn, spawn::spawn_failure(command.get_program(), &e).into()),
    };
    let pid = child.id();
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = signal_group(pid, Some(Signal::SIGKILL));
        return answer(&mut conn, Failure::new("io", "the process has no pipes").into());
    };
    if write_frame(&mut conn, &Response::Started { id: 0, pid }).is_err() {
        let _ = signal_group(pid, Some(Signal::SIGKILL));
        return;
    }
    // Process → client; when the process closes stdout, the client sees the end.
    if let Ok(mut to_client) = conn.try_clone() {
        let _ = detach("pipe-out", move || {
            pump(stdout, |chunk| drop(to_client.write_all(chunk)));
            let _ = to_client.shutdown(Shutdown::Write);
        });
    }
    // Client → process; the client leaving ends the process. A plain read
    // and write loop: `io::copy` would splice from the socket into the pipe,
    // which waits for more than a line.
    let mut from_client = conn;
    let mut buf = vec![0; 64 * 1024];
    loop {
        match from_client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if stdin.write_all(&buf[..n]).is_ok() => {}
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(stdin);
    let _ = signal_group(pid, Some(Signal::SIGKILL));
    let _ = ended_rx.recv();
    let _ = from_client.shutdown(Shutdown::Both);
}

fn answer(conn: &mut UnixStream, response: Response) {
    let _ = write_frame(conn, &response);
    let _ = conn.shutdown(Shutdown::Both);
}
