//! A `linux` sandbox made ahead of need: a cgroup without limits yet, and a
//! supervisor whose PID 1 is already cloned into its namespaces and placed
//! in that cgroup, waiting for its config. What is left for a cold start is
//! the limits, the id maps, the mounts and the hardening.
//!
//! Spares are made on a thread of their own, off the path of the cold start
//! that used the last one. That thread lives as long as the driver, because
//! a supervisor dies with the thread that started it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use tokio::process::{Child, Command};

use crate::cgroup::{Cgroup, CgroupVersion};
use crate::SandboxError;

/// A supervisor and its cgroup, made ahead.
pub(crate) struct Spare {
    pub child: Child,
    pub cgroup: Option<Cgroup>,
}

/// What a spare is made of.
#[derive(Clone)]
struct Recipe {
    agent: Vec<String>,
    cgroups: Option<CgroupVersion>,
    /// Holds one directory per sandbox id; the next start of the node
    /// removes the cgroups of those it finds (see `LinuxDriver`).
    run: PathBuf,
}

/// This driver's spare, and the thread that makes the next one.
pub(crate) struct Spares {
    ready: Arc<Mutex<Option<Spare>>>,
    /// Asks the maker thread for a spare; `None` outside a tokio runtime,
    /// where spares are made in line.
    wake: Option<Mutex<Sender<()>>>,
    recipe: Recipe,
}

impl Spares {
    /// Starts the maker thread and asks it for a first spare.
    pub fn new(agent: Vec<String>, cgroups: Option<CgroupVersion>, run: PathBuf) -> Spares {
        let recipe = Recipe { agent, cgroups, run };
        let ready: Arc<Mutex<Option<Spare>>> = Arc::default();
        let wake = tokio::runtime::Handle::try_current().ok().and_then(|runtime| {
            let (tx, rx) = channel::<()>();
            let (recipe, ready) = (recipe.clone(), ready.clone());
            let maker = move || {
                // Spawning a tokio child needs the runtime's context.
                let _context = runtime.enter();
                while rx.recv().is_ok() {
                    if ready.lock().expect("spare lock").is_none() {
                        let spare = make(&recipe).ok();
                        *ready.lock().expect("spare lock") = spare;
                    }
                }
                if let Some(spare) = ready.lock().expect("spare lock").take() {
                    release(&recipe, spare);
                }
            };
            std::thread::Builder::new().name("agentrt-spare".into()).spawn(maker).ok().map(|_| Mutex::new(tx))
        });
        let spares = Spares { ready, wake, recipe };
        spares.refill();
        spares
    }

    /// The spare, if one is ready and its supervisor is alive.
    pub fn take(&self) -> Option<Spare> {
        let mut spare = self.ready.lock().expect("spare lock").take()?;
        if matches!(spare.child.try_wait(), Ok(None)) {
            return Some(spare);
        }
        release(&self.recipe, spare);
        None
    }

    /// A spare, or a new supervisor and cgroup made now (without the
    /// namespaces made ahead).
    pub fn take_or_make(&self) -> Result<Spare, SandboxError> {
        match self.take() {
            Some(spare) => Ok(spare),
            None => make(&self.recipe),
        }
    }

    /// Has the next spare made, in the background where it can be.
    pub fn refill(&self) {
        match &self.wake {
            Some(wake) => drop(wake.lock().expect("spare wake lock").send(())),
            None => {
                let mut ready = self.ready.lock().expect("spare lock");
                if ready.is_none() {
                    *ready = make(&self.recipe).ok();
                }
            }
        }
    }

    /// Ends the spare, if any (at shutdown).
    pub fn release(&self) {
        if let Some(spare) = self.ready.lock().expect("spare lock").take() {
            release(&self.recipe, spare);
        }
    }
}

/// Makes a cgroup (marked as this node's by its run directory) and a
/// supervisor that puts its PID 1 in it.
fn make(recipe: &Recipe) -> Result<Spare, SandboxError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| SandboxError::Setup(format!("{what}: {e}"));
    let cgroup = match recipe.cgroups {
        Some(version) => {
            let id = new_id();
            std::fs::create_dir_all(recipe.run.join(&id)).map_err(|e| setup("run directory", &e))?;
            Some(Cgroup::make(version, &id).map_err(|e| setup("cgroup", &e))?)
        }
        None => None,
    };
    let procs = cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default();
    match spawn_supervisor(&recipe.agent, &procs) {
        Ok(child) => Ok(Spare { child, cgroup }),
        Err(e) => {
            if let Some(cg) = cgroup {
                drop_cgroup(&recipe.run, &cg);
            }
            Err(e)
        }
    }
}

fn release(recipe: &Recipe, spare: Spare) {
    // Its PID 1 dies with the supervisor (kill on drop), before the cgroup goes.
    drop(spare.child);
    if let Some(cg) = spare.cgroup {
        drop_cgroup(&recipe.run, &cg);
    }
}

fn drop_cgroup(run: &Path, cg: &Cgroup) {
    cg.destroy();
    let _ = std::fs::remove_dir_all(run.join(cg.name()));
}

/// A new sandbox id.
pub(crate) fn new_id() -> String {
    format!("sbx{:08x}", fastrand::u32(..))
}

/// Starts a supervisor that clones its PID 1 at once, puts it in the
/// cgroups whose `cgroup.procs` files are given, and waits for its config
/// on stdin.
pub(crate) fn spawn_supervisor(agent: &[String], cgroup_procs: &[PathBuf]) -> Result<Child, SandboxError> {
    let (program, args) = agent.split_first().ok_or_else(|| SandboxError::Setup("no sandbox agent program configured".into()))?;
    Command::new(program)
        .args(args)
        .args(["sandbox", "-"])
        .args(cgroup_procs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SandboxError::Setup(format!("start the sandbox agent {program:?}: {e}")))
}
