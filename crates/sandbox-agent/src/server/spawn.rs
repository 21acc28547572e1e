//! How a [`ProcessSpec`] becomes a command: the program found in `PATH`, a
//! clean environment, the working directory and a process group of its own.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{access, AccessFlags, Pid};

use super::{io_kind, Failure, ServerConfig};
use crate::protocol::ProcessSpec;

/// `PATH` when neither the base nor the request environment sets one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A command ready to spawn. Its environment is the base environment plus
/// the request's, nothing inherited; it leads its own process group, so
/// that signalling the group reaches everything it starts.
pub(super) fn command(config: &ServerConfig, spec: &ProcessSpec) -> Result<Command, Failure> {
    let Some(program) = spec.argv.first() else {
        return Err(Failure::new("invalid", "argv is empty"));
    };
    let cwd = match &spec.cwd {
        Some(cwd) => super::resolve(&config.workspace, cwd)?,
        None => config.workspace.clone(),
    };
    match std::fs::metadata(&cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(Failure::new("not_a_directory", format!("cwd {}: not a directory", cwd.display()))),
        Err(e) => return Err(Failure::io("cwd", &cwd, &e)),
    }
    let env = config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let env: Vec<(&str, &str)> = env.collect();
    if let Some((key, _)) = env.iter().find(|(k, _)| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(Failure::new("invalid", format!("bad environment variable name {key:?}")));
    }
    let path_var = env.iter().rev().find(|(k, _)| *k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v);
    let resolved = find_program(program, path_var, &cwd)?;

    let mut command = Command::new(resolved);
    command.arg0(program).args(&spec.argv[1..]).current_dir(&cwd).env_clear().envs(env).process_group(0);
    Ok(command)
}

/// The program's path: as given (relative to `cwd`) when it has a slash,
/// else the first executable file of that name in `path_var`.
fn find_program(program: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, Failure> {
    if program.contains('/') {
        let path = cwd.join(program);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Failure::new("not_found", format!("program {program} not found or not executable")))
        };
    }
    // An empty PATH entry means the working directory.
    let found = path_var.split(':').map(|dir| cwd.join(dir).join(program)).find(|p| is_executable(p));
    found.ok_or_else(|| Failure::new("not_found", format!("program {program} not found in PATH {path_var}")))
}

fn is_executable(path: &Path) -> bool {
    path.is_file() && access(path, AccessFlags::X_OK).is_ok()
}

/// What a failed spawn (rare once the program was found) answers.
pub(super) fn spawn_failure(program: &OsStr, e: &io::Error) -> Failure {
    Failure::new(io_kind(e), format!("start {}: {e}", program.to_string_lossy()))
}

/// Sends `signal` to the process group `pid` leads. A group that is gone is
/// not an error.
pub(super) fn signal_group(pid: u32, signal: Option<Signal>) -> nix::Result<()> {
    let Ok(pid) = i32::try_from(pid) else { return Ok(()) };
    match killpg(Pid::from_raw(pid), signal) {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Reads `pipe` to its end, handing each chunk to `sink`.
pub(super) fn pump(mut pipe: impl Read, mut sink: impl FnMut(&[u8])) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
