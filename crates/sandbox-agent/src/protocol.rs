//! The one protocol the runtime speaks to the in-sandbox agent, over any
//! byte stream (a Unix socket for the `linux` driver, virtio-serial later).
//!
//! Each message is a frame: a 4-byte big-endian length, then that many bytes
//! of JSON. A connection carries one [`Request`]; the agent answers with
//! zero or more [`Response::Stdout`] / [`Response::Stderr`] chunks (only for
//! a streaming exec) and then exactly one final response. Byte payloads are
//! base64 so that binary files and output survive JSON.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped whenever the protocol, the sandbox config or the supervisor's
/// command line changes incompatibly (3: `sandbox - [CGROUP_PROCS…]`, PID 1
/// made ahead); `agentrt-sandbox-agent version` prints it, and the runtime
/// will not use an agent program that speaks another.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;

/// What the runtime asks the agent to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Runs a command to completion. Answered with [`Response::Exited`]; when
    /// `stream` is set, output chunks are sent as they arrive first.
    Exec(ExecRequest),
    /// Starts a background process; answered with [`Response::Started`].
    ProcessStart(ProcessSpec),
    /// Answered with [`Response::Process`].
    ProcessStatus { id: u64 },
    /// Output a background process wrote since the given byte offsets;
    /// answered with [`Response::ProcessOutput`].
    ProcessOutput {
        id: u64,
        #[serde(default)]
        stdout_offset: u64,
        #[serde(default)]
        stderr_offset: u64,
    },
    /// Sends a signal to a background process's process group; answered with
    /// [`Response::Process`].
    ProcessSignal { id: u64, signal: i32 },
    /// Answered with [`Response::Processes`].
    ProcessList,
    /// Starts a process coupled to the connection: answered with
    /// [`Response::Started`], after which the connection is the process's
    /// stdin (client to agent) and stdout (agent to client), raw bytes, and
    /// closing it kills the process. For stdio servers (MCP).
    Pipe(ProcessSpec),
    /// Reads a file; answered with [`Response::File`].
    FileRead {
        path: String,
        /// Bytes returned at most (the rest is reported as truncated).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
    },
    /// Writes (creating parent directories); answered with [`Response::Stat`].
    FileWrite {
        path: String,
        /// base64
        data: String,
        #[serde(default)]
        append: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Answered with [`Response::Entries`].
    FileList { path: String },
    /// Answered with [`Response::Stat`].
    FileStat { path: String },
    /// Answered with [`Response::Done`]. A directory needs `recursive`.
    FileDelete {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
}

/// A command to run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Working directory; `/workspace` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Added to the sandbox's base environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A command run to completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    #[serde(flatten)]
    pub process: ProcessSpec,
    /// base64 bytes written to stdin, which is then closed. Without it stdin
    /// is `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Killed (the whole process group) after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout and of stderr kept in the final answer; more is
    /// dropped and `truncated` set. Streamed chunks are not limited.
    #[serde(default = "default_max_output")]
    pub max_output: u64,
    /// Send output chunks as they arrive.
    #[serde(default)]
    pub stream: bool,
}

fn default_max_output() -> u64 {
    64 * 1024
}

/// How a process ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number when a signal killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Pong {
        /// The agent's pid inside the sandbox (1 when it is init).
        pid: u32,
    },
    /// A streamed stdout chunk (base64).
    Stdout {
        data: String,
    },
    /// A streamed stderr chunk (base64).
    Stderr {
        data: String,
    },
    /// An exec finished.
    Exited {
        #[serde(flatten)]
        status: ExitStatus,
        /// Killed because `timeout_ms` passed.
        timed_out: bool,
        /// base64, at most `max_output` bytes.
        stdout: String,
        /// base64, at most `max_output` bytes.
        stderr: String,
        /// Some output was dropped.
        truncated: bool,
        duration_ms: u64,
    },
    Started {
        id: u64,
        pid: u32,
    },
    Process(ProcessInfo),
    Processes {
        processes: Vec<ProcessInfo>,
    },
    ProcessOutput {
        /// base64 bytes from `stdout_offset` on (at most 1 MiB).
        stdout: String,
        stderr: String,
        /// Offsets to ask from next time.
        stdout_offset: u64,
        stderr_offset: u64,
        /// Bytes before the requested offset that were no longer kept.
        dropped: u64,
        #[serde(flatten)]
        info: ProcessInfo,
    },
    File {
        /// base64
        data: String,
        size: u64,
        truncated: bool,
    },
    Stat(FileStat),
    Entries {
        entries: Vec<FileStat>,
    },
    Done,
    /// The request failed. `kind` is one of `not_found`, `invalid`,
    /// `permission_denied`, `no_space`, `exists`, `not_a_directory`,
    /// `is_a_directory`, `io`.
    Error {
        kind: String,
        message: String,
    },
}

/// A background process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub id: u64,
    pub pid: u32,
    pub argv: Vec<String>,
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    pub started_ms: u64,
}

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileStat {
    /// The name for list entries, the full path for stat.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    /// Unix milliseconds.
    pub modified_ms: u64,
}

/// A base64 payload (output chunk, file) as text, invalid UTF-8 replaced;
/// a payload that is not base64 reads as empty.
pub fn decode_text(b64: &str) -> String {
    use base64::Engine as _;
    String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default()).into_owned()
}

/// A message as one frame: length prefix and JSON body.
pub fn encode_frame<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame's 4-byte prefix announces, if within [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit")));
    }
    Ok(len)
}

/// Parses a frame's body.
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    w.write_all(&encode_frame(msg)?)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<T>> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0; frame_len(prefix)?];
    r.read_exact(&mut body)?;
    decode_body(&body).map(Some)
}
