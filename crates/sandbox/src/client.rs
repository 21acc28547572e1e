//! The runtime's side of the agent protocol: one Unix-socket connection
//! per request, frames read and written asynchronously.

use std::path::{Path, PathBuf};

use agentrt_sandbox_agent::protocol::{decode_body, encode_frame, frame_len, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::SandboxError;

/// Talks to one agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: &Path) -> Self {
        AgentClient { socket: socket.to_owned() }
    }

    async fn send(&self, request: &Request) -> Result<UnixStream, SandboxError> {
        let mut stream =
            UnixStream::connect(&self.socket).await.map_err(|e| SandboxError::Gone(format!("connect to the sandbox agent: {e}")))?;
        let frame = encode_frame(request).map_err(|e| SandboxError::Internal(e.to_string()))?;
        stream.write_all(&frame).await.map_err(|e| SandboxError::Gone(format!("send to the sandbox agent: {e}")))?;
        Ok(stream)
    }

    /// Sends a request and returns its one final answer (chunks, if any, dropped).
    pub async fn call(&self, request: &Request) -> Result<Response, SandboxError> {
        let mut stream = self.send(request).await?;
        loop {
            match read(&mut stream).await? {
                Response::Stdout { .. } | Response::Stderr { .. } => continue,
                other => return Ok(other),
            }
        }
    }

    /// Sends a request and yields every answer as it arrives; the channel
    /// ends after the final one. Dropping the receiver closes the
    /// connection, which makes the agent kill a running exec.
    pub async fn stream(&self, request: &Request) -> Result<mpsc::Receiver<Result<Response, SandboxError>>, SandboxError> {
        let mut stream = self.send(request).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = read(&mut stream) => next,
                    _ = tx.closed() => return,
                };
                let last = !matches!(next, Ok(Response::Stdout { .. }) | Ok(Response::Stderr { .. }));
                if tx.send(next).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

impl AgentClient {
    /// Starts a process coupled to a connection ([`Request::Pipe`]): once
    /// started, the returned stream is its stdin and stdout; dropping it
    /// kills the process.
    pub async fn pipe(&self, spec: &agentrt_sandbox_agent::protocol::ProcessSpec) -> Result<UnixStream, SandboxError> {
        let mut stream = self.send(&Request::Pipe(spec.clone())).await?;
        match read(&mut stream).await? {
            Response::Started { .. } => Ok(stream),
            Response::Error { kind, message } => Err(SandboxError::Internal(format!("{kind}: {message}"))),
            other => Err(SandboxError::Internal(format!("unexpected answer to pipe: {other:?}"))),
        }
    }
}

async fn read(stream: &mut UnixStream) -> Result<Response, SandboxError> {
    let gone = |e: std::io::Error| SandboxError::Gone(format!("the sandbox agent stopped answering: {e}"));
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.map_err(gone)?;
    let mut body = vec![0; frame_len(prefix).map_err(gone)?];
    stream.read_exact(&mut body).await.map_err(gone)?;
    decode_body(&body).map_err(|e| SandboxError::Internal(format!("bad answer from the sandbox agent: {e}")))
}
