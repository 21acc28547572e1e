//! The one place children are waited for.
//!
//! A single thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`, which says
//! that some child is a zombie without reaping it, then reaps and hands each
//! status to the callback registered when that child was spawned. As PID 1
//! (`init`) it reaps every child, so orphans re-parented to us do not pile up
//! as zombies; otherwise only the children it registered.
//!
//! A gate (a read-write lock) closes two races. Spawning holds it shared
//! from before `fork` until the child is registered, and reaping holds it
//! exclusively, so a child that exits at once is never reaped before its
//! callback exists; and std, which waits for a child whose `exec` failed
//! inside `Command::spawn`, never has that child stolen from under it.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::protocol::ExitStatus;

/// Called once with a child's exit status, on the reaper thread: keep it short.
type OnExit = Box<dyn FnOnce(ExitStatus) + Send>;

struct Reaper {
    gate: RwLock<()>,
    state: Mutex<State>,
    /// Signalled on every spawn, for a reaper that found no children.
    spawned: Condvar,
}

#[derive(Default)]
struct State {
    watched: HashMap<Pid, OnExit>,
    /// Spawns so far; tells the reaper a child appeared since it found none.
    spawns: u64,
    /// Reap every child, not only registered ones.
    init: bool,
    running: bool,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| Reaper { gate: RwLock::new(()), state: Mutex::new(State::default()), spawned: Condvar::new() })
}

/// Starts the reaper thread if it is not running; `init` makes it reap every
/// child from now on.
pub(super) fn start(init: bool) -> io::Result<()> {
    let reaper = reaper();
    let mut state = reaper.lock();
    state.init |= init;
    if !state.running {
        super::detach("agent-reaper", || reaper.run())?;
        state.running = true;
    }
    Ok(())
}

/// Spawns `command`; `on_exit` gets its status once it has been reaped. Never
/// wait for the returned child yourself.
pub(super) fn spawn(command: &mut Command, on_exit: impl FnOnce(ExitStatus) + Send + 'static) -> io::Result<Child> {
    start(false)?;
    let reaper = reaper();
    let _gate = reaper.gate.read().unwrap_or_else(PoisonError::into_inner);
    let child = command.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    let mut state = reaper.lock();
    state.watched.insert(pid, Box::new(on_exit));
    state.spawns += 1;
    reaper.spawned.notify_all();
    Ok(child)
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        loop {
            let spawns = self.lock().spawns;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => self.reap(),
                Err(Errno::ECHILD) => {
                    let state = self.lock();
                    drop(self.spawned.wait_while(state, |s| s.spawns == spawns).unwrap_or_else(PoisonError::into_inner));
                }
                Err(Errno::EINTR) => {}
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Reaps every zombie it may, then runs their callbacks outside the locks.
    fn reap(&self) {
        let mut done = Vec::new();
        let init = {
            let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
            let mut state = self.lock();
            if state.init {
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(status) => done.extend(take(&mut state, status)),
                    }
                }
            } else {
                let pids: Vec<Pid> = state.watched.keys().copied().collect();
                for pid in pids {
                    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => {}
                        Ok(status) => done.extend(take(&mut state, status)),
                        // Someone else reaped it: report an unknown status rather than never.
                        Err(Errno::ECHILD) => done.extend(state.watched.remove(&pid).map(|f| (f, ExitStatus::default()))),
                        Err(_) => {}
                    }
                }
            }
            state.init
        };
        if done.is_empty() && !init {
            // The zombie is not ours (its owner will wait for it) or std
            // already reaped a failed spawn; waitid would report it again at once.
            thread::sleep(Duration::from_millis(20));
        }
        for (on_exit, status) in done {
            on_exit(status);
        }
    }
}

/// The callback for a reaped child, if registered (an orphan's status is dropped).
fn take(state: &mut State, status: WaitStatus) -> Option<(OnExit, ExitStatus)> {
    let exit = match status {
        WaitStatus::Exited(_, code) => ExitStatus { code: Some(code), signal: None },
        WaitStatus::Signaled(_, signal, _) => ExitStatus { code: None, signal: Some(signal as i32) },
        _ => return None,
    };
    let on_exit = state.watched.remove(&status.pid()?)?;
    Some((on_exit, exit))
}
