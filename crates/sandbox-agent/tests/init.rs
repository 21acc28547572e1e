//! As init, the agent reaps orphans re-parented to it. This process plays
//! PID 1 by being a child subreaper; it is a test binary of its own because
//! init mode makes the agent reap every child of the process.

use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::{Duration, Instant};

use agentrt_sandbox_agent::protocol::{read_frame, write_frame, ExecRequest, ProcessSpec, Request, Response};
use agentrt_sandbox_agent::server::{serve, ServerConfig};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

#[test]
fn init_reaps_orphans_and_still_reports_exits() {
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).expect("bind the socket");
    let config = ServerConfig { workspace: dir.path().to_owned(), env: vec![("PATH".into(), "/usr/bin:/bin".into())], init: true };
    thread::spawn(move || serve(listener, config));

    // The shell exits at once; its background sleep is orphaned to us.
    let argv = ["sh", "-c", "sleep 0.2 & echo $!; exit 4"].map(String::from).to_vec();
    let request = ExecRequest { process: ProcessSpec { argv, ..ProcessSpec::default() }, max_output: 1024, ..ExecRequest::default() };
    let mut conn = UnixStream::connect(&socket).expect("connect");
    write_frame(&mut conn, &Request::Exec(request)).expect("send");
    let Some(Response::Exited { status, stdout, .. }) = read_frame(&mut conn).expect("read") else { panic!("no exit") };
    assert_eq!(status.code, Some(4));
    let stdout = String::from_utf8(BASE64.decode(stdout).expect("base64")).expect("utf-8");
    let orphan: u32 = stdout.trim().parse().expect("the orphan's pid");

    // Gone from /proc once reaped; a zombie nobody reaps would stay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(Instant::now() < deadline, "orphan {orphan} was not reaped");
        thread::sleep(Duration::from_millis(20));
    }
}
