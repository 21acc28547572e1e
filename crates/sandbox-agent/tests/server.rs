//! The agent's server through its socket: exec, background processes, files.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use agentrt_sandbox_agent::protocol::{read_frame, write_frame, ExecRequest, ExitStatus, ProcessInfo, ProcessSpec, Request, Response};
use agentrt_sandbox_agent::server::{serve, ServerConfig};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// A server on a socket in a temporary directory.
struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    workspace: PathBuf,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).expect("create the workspace");
        let workspace = workspace.canonicalize().expect("canonicalize the workspace");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind the socket");
        let config = ServerConfig { workspace: workspace.clone(), env: vec![("PATH".into(), "/usr/bin:/bin".into())], init: false };
        thread::spawn(move || serve(listener, config));
        Agent { _dir: dir, socket, workspace }
    }

    fn send(&self, request: &Request) -> UnixStream {
        let mut conn = UnixStream::connect(&self.socket).expect("connect");
        write_frame(&mut conn, request).expect("send the request");
        conn
    }

    /// Every answer to `request`, the final one last.
    fn frames(&self, request: &Request) -> Vec<Response> {
        let mut conn = self.send(request);
        let mut frames = Vec::new();
        while let Some(frame) = read_frame::<_, Response>(&mut conn).expect("read an answer") {
            frames.push(frame);
        }
        frames
    }

    /// The final answer.
    fn call(&self, request: &Request) -> Response {
        self.frames(request).pop().expect("an answer")
    }

    fn exec(&self, request: ExecRequest) -> Exited {
        exited(self.call(&Request::Exec(request)))
    }
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest { process: spec(argv), max_output: 64 * 1024, ..ExecRequest::default() }
}

fn spec(argv: &[&str]) -> ProcessSpec {
    ProcessSpec { argv: argv.iter().map(|s| s.to_string()).collect(), ..ProcessSpec::default() }
}

#[derive(Debug)]
struct Exited {
    status: ExitStatus,
    timed_out: bool,
    stdout: String,
    stderr: String,
    truncated: bool,
    duration_ms: u64,
}

fn exited(response: Response) -> Exited {
    match response {
        Response::Exited { status, timed_out, stdout, stderr, truncated, duration_ms } => {
            Exited { status, timed_out, stdout: text(&stdout), stderr: text(&stderr), truncated, duration_ms }
        }
        other => panic!("expected exited, got {other:?}"),
    }
}

fn text(b64: &str) -> String {
    String::from_utf8_lossy(&BASE64.decode(b64).expect("valid base64")).into_owned()
}

fn error_kind(response: &Response) -> (&str, &str) {
    match response {
        Response::Error { kind, message } => (kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Polls `f` until it gives a value, for up to 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// True once `pid` has exited (gone, or a zombie left to someone else to reap).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[test]
fn ping_answers_the_agents_pid() {
    let agent = Agent::start();
    assert_eq!(agent.call(&Request::Ping), Response::Pong { pid: std::process::id() });
}

#[test]
fn exec_reports_output_exit_code_and_runs_in_a_clean_environment() {
    let agent = Agent::start();

    let out = agent.exec(ExecRequest { timeout_ms: Some(u64::MAX), ..exec(&["echo", "hello"]) });
    assert_eq!((out.status.code, out.stdout.as_str(), out.timed_out, out.truncated), (Some(0), "hello\n", false, false));

    let out = agent.exec(exec(&["sh", "-c", "echo oops >&2; exit 3"]));
    assert_eq!((out.status.code, out.stdout.as_str(), out.stderr.as_str()), (Some(3), "", "oops\n"));

    let out = agent.exec(ExecRequest { stdin: Some(BASE64.encode("from stdin")), ..exec(&["cat"]) });
    assert_eq!(out.stdout, "from stdin");
    // Without stdin, stdin is /dev/null: cat ends at once.
    assert_eq!(agent.exec(exec(&["cat"])).stdout, "");

    // Only the base and request environment: nothing from the host.
    let mut request = exec(&["env"]);
    request.process.env.insert("FOO".into(), "bar baz".into());
    let mut lines: Vec<String> = agent.exec(request).stdout.lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["FOO=bar baz", "PATH=/usr/bin:/bin"]);

    assert_eq!(agent.exec(exec(&["pwd"])).stdout.trim_end(), agent.workspace.to_str().expect("utf-8 path"));
    std::fs::create_dir(agent.workspace.join("sub")).expect("create sub");
    let out = agent.exec(ExecRequest { process: ProcessSpec { cwd: Some("sub".into()), ..spec(&["pwd"]) }, ..exec(&[]) });
    assert_eq!(PathBuf::from(out.stdout.trim_end()), agent.workspace.join("sub"));
}

#[test]
fn exec_of_a_missing_program_is_not_found() {
    let agent = Agent::start();
    let answer = agent.call(&Request::Exec(exec(&["no-such-program-xyz"])));
    let (kind, message) = error_kind(&answer);
    assert_eq!(kind, "not_found");
    assert!(message.contains("no-such-program-xyz"), "{message}");

    std::fs::write(agent.workspace.join("script.sh"), "echo hi").expect("write a script");
    let answer = agent.call(&Request::Exec(exec(&["./script.sh"])));
    assert_eq!(error_kind(&answer).0, "not_found");
    assert_eq!(error_kind(&agent.call(&Request::Exec(exec(&[])))).0, "invalid");
}

#[test]
fn exec_streams_chunks_as_they_arrive() {
    let agent = Agent::start();
    // The command waits for a file the test creates only after the first
    // chunk arrived, so that chunk cannot have been held back until the end.
    let script = "echo ready; while [ ! -e go ]; do sleep 0.02; done; echo done >&2";
    let request = ExecRequest { stream: true, timeout_ms: Some(20_000), ..exec(&["sh", "-c", script]) };
    let mut conn = agent.send(&Request::Exec(request));
    let first = read_frame::<_, Response>(&mut conn).expect("read").expect("a first frame");
    assert_eq!(first, Response::Stdout { data: BASE64.encode("ready\n") });
    std::fs::write(agent.workspace.join("go"), "").expect("create go");
    let mut rest = Vec::new();
    while let Some(frame) = read_frame::<_, Response>(&mut conn).expect("read") {
        rest.push(frame);
    }
    let out = exited(rest.pop().expect("a final answer"));
    assert_eq!(rest, [Response::Stderr { data: BASE64.encode("done\n") }]);
    assert_eq!((out.status.code, out.timed_out, out.stdout.as_str(), out.stderr.as_str()), (Some(0), false, "ready\n", "done\n"));
}

#[test]
fn exec_keeps_at_most_max_output_but_streams_everything() {
    let agent = Agent::start();
    let request = ExecRequest { max_output: 1000, stream: true, ..exec(&["head", "-c", "100000", "/dev/zero"]) };
    let mut frames = agent.frames(&Request::Exec(request));
    let out = exited(frames.pop().expect("a final answer"));
    assert_eq!((out.stdout.len(), out.truncated), (1000, true));
    let streamed: usize = frames
        .iter()
        .map(|f| match f {
            Response::Stdout { data } => BASE64.decode(data).expect("base64").len(),
            other => panic!("unexpected {other:?}"),
        })
        .sum();
    assert_eq!(streamed, 100_000);
}

#[test]
fn exec_timeout_kills_the_whole_process_group() {
    let agent = Agent::start();
    let started = Instant::now();
    let request = ExecRequest { timeout_ms: Some(300), stream: true, ..exec(&["sh", "-c", "sleep 30 & echo $!; sleep 30"]) };
    let mut frames = agent.frames(&Request::Exec(request));
    let out = exited(frames.pop().expect("a final answer"));
    assert!(out.timed_out);
    assert_eq!(out.status.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(out.duration_ms >= 300);
    let background: u32 = out.stdout.trim().parse().expect("the background pid");
    eventually("the background sleep to die", || is_dead(background).then_some(()));
}

#[test]
fn exec_is_killed_when_the_client_leaves() {
    let agent = Agent::start();
    let request = ExecRequest { stream: true, ..exec(&["sh", "-c", "echo $$; sleep 30"]) };
    let mut conn = agent.send(&Request::Exec(request));
    let pid = match read_frame::<_, Response>(&mut conn).expect("read").expect("a frame") {
        Response::Stdout { data } => text(&data).trim().parse::<u32>().expect("a pid"),
        other => panic!("unexpected {other:?}"),
    };
    drop(conn);
    eventually("the command to be killed", || is_dead(pid).then_some(()));
}

#[test]
fn background_processes_keep_output_and_take_signals() {
    let agent = Agent::start();
    let start = Request::ProcessStart(spec(&["sh", "-c", "echo out; echo err >&2; exec sleep 30"]));
    let Response::Started { id, pid } = agent.call(&start) else { panic!("not started") };

    let output = |stdout_offset, stderr_offset| match agent.call(&Request::ProcessOutput { id, stdout_offset, stderr_offset }) {
        Response::ProcessOutput { stdout, stderr, stdout_offset, stderr_offset, dropped, info } => {
            (text(&stdout), text(&stderr), stdout_offset, stderr_offset, dropped, info)
        }
        other => panic!("unexpected {other:?}"),
    };
    let (out, err, out_next, err_next, dropped, info) = eventually("the output", || Some(output(0, 0)).filter(|o| o.2 == 4 && o.3 == 4));
    assert_eq!((out.as_str(), err.as_str(), dropped, info.running, info.pid), ("out\n", "err\n", 0, true, pid));
    let (out, err, out_next2, err_next2, ..) = output(out_next, err_next);
    assert_eq!((out.as_str(), err.as_str(), out_next2, err_next2), ("", "", 4, 4));
    let (out, ..) = output(2, 4);
    assert_eq!(out, "t\n");

    let Response::Processes { processes } = agent.call(&Request::ProcessList) else { panic!("no list") };
    assert!(processes.iter().any(|p| p.id == id && p.argv[0] == "sh" && p.running));

    let Response::Process(info) = agent.call(&Request::ProcessSignal { id, signal: 15 }) else { panic!("not signalled") };
    assert_eq!(info.id, id);
    let info = eventually("the process to end", || match agent.call(&Request::ProcessStatus { id }) {
        Response::Process(info) if !info.running => Some(info),
        _ => None,
    });
    assert_eq!(info.exit, Some(ExitStatus { code: None, signal: Some(15) }));

    let Response::Started { id: second, .. } = agent.call(&Request::ProcessStart(spec(&["sh", "-c", "exit 7"]))) else { panic!() };
    assert!(second > id);
    let info: ProcessInfo = eventually("exit 7", || match agent.call(&Request::ProcessStatus { id: second }) {
        Response::Process(info) if !info.running => Some(info),
        _ => None,
    });
    assert_eq!(info.exit, Some(ExitStatus { code: Some(7), signal: None }));

    assert_eq!(error_kind(&agent.call(&Request::ProcessStatus { id: 999 })).0, "not_found");
    assert_eq!(error_kind(&agent.call(&Request::ProcessSignal { id, signal: 999 })).0, "invalid");
}

#[test]
fn background_output_keeps_the_last_mebibyte() {
    let agent = Agent::start();
    let total = 1_572_864u64; // 1.5 MiB
    let start = Request::ProcessStart(spec(&["head", "-c", "1572864", "/dev/zero"]));
    let Response::Started { id, .. } = agent.call(&start) else { panic!("not started") };
    let (data, next, dropped) =
        eventually("all the output", || match agent.call(&Request::ProcessOutput { id, stdout_offset: 0, stderr_offset: 0 }) {
            Response::ProcessOutput { stdout, stdout_offset, dropped, .. } if stdout_offset == total => {
                Some((stdout, stdout_offset, dropped))
            }
            _ => None,
        });
    assert_eq!((BASE64.decode(data).expect("base64").len() as u64, next, dropped), (1 << 20, total, total - (1 << 20)));
}

#[test]
fn files_write_read_list_stat_delete() {
    let agent = Agent::start();
    let write = |path: &str, data: &str, append: bool, mode: Option<u32>| {
        agent.call(&Request::FileWrite { path: path.into(), data: BASE64.encode(data), append, mode })
    };

    let Response::Stat(stat) = write("a/b/c.txt", "hello", false, None) else { panic!("not written") };
    assert_eq!((stat.kind.as_str(), stat.size), ("file", 5));
    assert_eq!(stat.path, agent.workspace.join("a/b/c.txt").to_str().expect("utf-8"));
    write("a/b/c.txt", " world", true, Some(0o600));

    let read = |path: &str, max_bytes| agent.call(&Request::FileRead { path: path.into(), max_bytes });
    let Response::File { data, size, truncated } = read("a/b/c.txt", None) else { panic!("not read") };
    assert_eq!((text(&data).as_str(), size, truncated), ("hello world", 11, false));
    let absolute = agent.workspace.join("a/b/c.txt");
    let Response::File { data, size, truncated } = read(absolute.to_str().expect("utf-8"), Some(5)) else { panic!("not read") };
    assert_eq!((text(&data).as_str(), size, truncated), ("hello", 11, true));

    let Response::Stat(stat) = agent.call(&Request::FileStat { path: "a/b/c.txt".into() }) else { panic!("no stat") };
    assert_eq!((stat.size, stat.mode), (11, 0o600));
    assert!(stat.modified_ms > 0);

    write("z.txt", "", false, None);
    std::os::unix::fs::symlink("z.txt", agent.workspace.join("link")).expect("symlink");
    let Response::Entries { entries } = agent.call(&Request::FileList { path: ".".into() }) else { panic!("no list") };
    let names: Vec<(&str, &str)> = entries.iter().map(|e| (e.path.as_str(), e.kind.as_str())).collect();
    assert_eq!(names, [("a", "dir"), ("link", "symlink"), ("z.txt", "file")]);

    assert_eq!(error_kind(&read("a", None)).0, "is_a_directory");
    assert_eq!(error_kind(&write("z.txt/under", "x", false, None)).0, "not_a_directory");
    let missing = read("missing.txt", None);
    let (kind, message) = error_kind(&missing);
    assert_eq!(kind, "not_found");
    assert!(message.starts_with(&format!("read {}", agent.workspace.join("missing.txt").display())), "{message}");
    let bad = agent.call(&Request::FileWrite { path: "x".into(), data: "not base64!".into(), append: false, mode: None });
    assert_eq!(error_kind(&bad).0, "invalid");

    let delete = |path: &str, recursive| agent.call(&Request::FileDelete { path: path.into(), recursive });
    assert_eq!(error_kind(&delete("a", false)).0, "is_a_directory");
    assert_eq!(delete("a", true), Response::Done);
    assert_eq!(delete("link", false), Response::Done);
    assert_eq!(error_kind(&agent.call(&Request::FileStat { path: "a".into() })).0, "not_found");
    assert_eq!(error_kind(&delete("a", true)).0, "not_found");
    assert!(agent.workspace.join("z.txt").exists());
}

#[test]
fn a_malformed_frame_gets_one_invalid_error() {
    let agent = Agent::start();
    for body in [&b"{not json"[..], br#"{"op":"no_such_op"}"#] {
        let mut conn = UnixStream::connect(&agent.socket).expect("connect");
        conn.write_all(&(body.len() as u32).to_be_bytes()).expect("write");
        conn.write_all(body).expect("write");
        let answer = read_frame::<_, Response>(&mut conn).expect("read").expect("an answer");
        assert_eq!(error_kind(&answer).0, "invalid");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.is_empty());
    }
    // The server still serves.
    assert!(matches!(agent.call(&Request::Ping), Response::Pong { .. }));
}
