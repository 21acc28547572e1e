//! The agent's command line, shared by its own binary and by `agentrt
//! __sandbox-agent …`: `serve SOCKET [WORKSPACE]` serves on a Unix socket
//! with no isolation of its own (for drivers whose boundary is elsewhere,
//! such as a VM, and for tests); `sandbox CONFIG_JSON` (or `sandbox -`,
//! reading it from stdin) builds a `linux` sandbox and serves inside it as
//! PID 1; `version` prints the protocol version.

use std::os::unix::net::UnixListener;
use std::process::ExitCode;

use crate::server::{serve, ServerConfig};
use crate::setup::{supervise, supervise_from_stdin, SandboxConfig};

/// Runs the agent with these arguments (without the program name). Call
/// it before starting any thread: `sandbox` forks.
pub fn run(args: &[String]) -> ExitCode {
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["version"] => {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", crate::protocol::PROTOCOL_VERSION);
            }
            ExitCode::SUCCESS
        }
        ["sandbox", "-", cgroup_procs @ ..] => {
            let ahead: Vec<std::path::PathBuf> = cgroup_procs.iter().map(Into::into).collect();
            ExitCode::from(supervise_from_stdin(&ahead).clamp(0, 255) as u8)
        }
        ["sandbox", config] => match serde_json::from_str::<SandboxConfig>(config) {
            Ok(config) => ExitCode::from(supervise(&config).clamp(0, 255) as u8),
            Err(e) => fail(&format!("bad sandbox config: {e}")),
        },
        ["serve", socket, rest @ ..] => {
            let workspace = rest.first().map(|s| s.to_string()).unwrap_or_else(|| ".".into());
            let listener = match UnixListener::bind(socket) {
                Ok(l) => l,
                Err(e) => return fail(&format!("bind {socket}: {e}")),
            };
            let env = vec![("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())];
            match serve(listener, ServerConfig { workspace: workspace.into(), env, init: false }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        _ => fail("usage: agentrt-sandbox-agent serve SOCKET [WORKSPACE] | sandbox CONFIG_JSON | sandbox - [CGROUP_PROCS...] | version"),
    }
}

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
