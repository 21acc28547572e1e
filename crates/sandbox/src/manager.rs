//! Each session's sandbox and its lifecycle: created on first use, frozen
//! after `idle_standby_seconds` without a call, stopped (workspace kept)
//! after `idle_hibernate_seconds`, thawed or rebuilt by the next call, and
//! replaced when found dead. Every transition is reported with its duration.
//!
//! With several nodes, workspaces follow their session through a
//! [`WorkspaceStore`]: a node saves a workspace it changed when it lets the
//! session go (a turn boundary), at standby and at hibernation, and a node
//! whose copy is older than the last one saved (per the session's log)
//! fetches that one before it starts a sandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentrt_sandbox_agent::protocol::{ProcessSpec, Request, Response};
use agentrt_types::event::{SandboxTransition, WorkspaceSaved};
use agentrt_types::sandbox::SandboxSpec;
use agentrt_types::state::SavedWorkspace;
use agentrt_types::EventData;
use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::workspace_store::WorkspaceStore;
use crate::{Sandbox, SandboxDriver, SandboxError, Usage};

/// The session logs, as sandboxes see them: lifecycle events go there, and
/// so do the generations of saved workspaces.
#[async_trait]
pub trait SessionLog: Send + Sync {
    /// Appends a lifecycle event to the session's log.
    async fn record(&self, session: &str, event: EventData);
    /// The session's latest saved workspace, if one was saved.
    async fn saved_workspace(&self, session: &str) -> Result<Option<SavedWorkspace>, SandboxError>;
    /// Records `saved` if the session's latest saved generation is still
    /// `base` (0: none); `false` if another node saved one first.
    async fn record_saved(&self, session: &str, base: u64, saved: WorkspaceSaved) -> Result<bool, SandboxError>;
}

/// How workspaces move between nodes.
#[derive(Clone, Debug)]
pub struct WorkspaceSync {
    pub store: WorkspaceStore,
    /// Scratch copies, and the generation each local workspace started
    /// from; on the same file system as the driver's workspaces, so that
    /// a fetched image is moved into place, not copied.
    pub dir: PathBuf,
    /// This node, as `workspace.saved` names it.
    pub node: String,
}

impl WorkspaceSync {
    fn base_file(&self, session: &str) -> PathBuf {
        self.dir.join(format!("{session}.generation"))
    }

    fn scratch(&self, session: &str, what: &str) -> PathBuf {
        self.dir.join(format!("{session}.{:08x}.{what}", fastrand::u32(..)))
    }
}

/// All sessions' sandboxes on this node.
pub struct SandboxManager {
    driver: Arc<dyn SandboxDriver>,
    log: Arc<dyn SessionLog>,
    sync: Option<Arc<WorkspaceSync>>,
    sessions: Mutex<HashMap<String, Arc<SessionSandbox>>>,
}

impl SandboxManager {
    /// A manager; with `sync`, workspaces follow their sessions to other nodes.
    pub fn new(driver: Arc<dyn SandboxDriver>, log: Arc<dyn SessionLog>, sync: Option<WorkspaceSync>) -> Arc<SandboxManager> {
        if let Some(sync) = &sync {
            if let Err(e) = std::fs::create_dir_all(&sync.dir) {
                tracing::warn!(dir = %sync.dir.display(), error = %e, "no directory for workspace transfers");
            }
        }
        Arc::new(SandboxManager { driver, log, sync: sync.map(Arc::new), sessions: Mutex::default() })
    }

    /// The session's sandbox handle (nothing starts until its first call).
    /// The spec given first is kept until the sandbox is next rebuilt.
    pub fn session(&self, session: &str, spec: &SandboxSpec) -> Arc<SessionSandbox> {
        let mut sessions = self.sessions.lock().expect("sandbox sessions lock");
        let entry = sessions.entry(session.to_owned()).or_insert_with(|| {
            Arc::new(SessionSandbox {
                session: session.to_owned(),
                spec: Mutex::new(spec.clone()),
                driver: self.driver.clone(),
                log: self.log.clone(),
                sync: self.sync.clone(),
                state: tokio::sync::Mutex::new(State::Empty { hibernated: false }),
                last_used: Mutex::new(Instant::now()),
                cpu_taken: Mutex::new((String::new(), 0)),
                busy: AtomicUsize::new(0),
                changed: AtomicBool::new(false),
                saving: tokio::sync::Mutex::new(()),
            })
        });
        *entry.spec.lock().expect("sandbox spec lock") = spec.clone();
        entry.clone()
    }

    /// The session's sandbox handle, if it has been used on this node.
    pub fn get(&self, session: &str) -> Option<Arc<SessionSandbox>> {
        self.sessions.lock().expect("sandbox sessions lock").get(session).cloned()
    }

    /// Freezes or stops sandboxes idle for long enough. Call periodically.
    pub async fn sweep(&self) {
        let all: Vec<_> = self.sessions.lock().expect("sandbox sessions lock").values().cloned().collect();
        for s in all {
            s.sweep().await;
        }
    }

    /// Runs [`SandboxManager::sweep`] every `every` until the manager is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(manager) = weak.upgrade() else { return };
                manager.sweep().await;
            }
        });
    }

    /// Ends a session's sandbox; with `delete_workspace`, its workspace
    /// too, here and in the workspace store.
    pub async fn end_session(&self, session: &str, delete_workspace: bool) -> Result<(), SandboxError> {
        let handle = self.sessions.lock().expect("sandbox sessions lock").remove(session);
        if let Some(handle) = handle {
            handle.stop(Transition::Destroyed).await;
        }
        if delete_workspace {
            self.driver.delete_workspace(session).await?;
            if let Some(sync) = &self.sync {
                let _ = std::fs::remove_file(sync.base_file(session));
                if let Err(e) = sync.store.delete_session(session).await {
                    tracing::warn!(session, error = %e, "saved workspaces not deleted");
                }
            }
        }
        Ok(())
    }

    /// Stops every sandbox (workspaces stay, saved first where they
    /// follow their sessions), e.g. at shutdown.
    pub async fn stop_all(&self) {
        let all: Vec<_> = self.sessions.lock().expect("sandbox sessions lock").drain().map(|(_, s)| s).collect();
        for s in all {
            let mut state = s.state.lock().await;
            if let State::Running(sb) | State::Standby(sb) = std::mem::replace(&mut *state, State::Empty { hibernated: false }) {
                sb.destroy().await;
            }
            drop(state);
            s.save_or_warn().await;
        }
        self.driver.release_workspaces().await;
    }
}

enum State {
    Empty { hibernated: bool },
    Running(Arc<dyn Sandbox>),
    Standby(Arc<dyn Sandbox>),
}

#[derive(Clone, Copy)]
enum Transition {
    Hibernated,
    Destroyed,
}

/// What a session's sandbox is doing, for the API.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxStatus {
    /// `none`, `running`, `standby` or `hibernated`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub usage: Usage,
    /// Seconds since the last call.
    pub idle_seconds: f64,
    pub spec: SandboxSpec,
}

/// One session's sandbox, whatever state it is in.
pub struct SessionSandbox {
    session: String,
    spec: Mutex<SandboxSpec>,
    driver: Arc<dyn SandboxDriver>,
    log: Arc<dyn SessionLog>,
    sync: Option<Arc<WorkspaceSync>>,
    /// The workspace may have changed since it was last saved or fetched.
    changed: AtomicBool,
    /// Held while the workspace is being saved: one save at a time.
    saving: tokio::sync::Mutex<()>,
    state: tokio::sync::Mutex<State>,
    last_used: Mutex<Instant>,
    /// Calls in flight: a busy sandbox is never frozen.
    busy: AtomicUsize,
    /// The sandbox instance and its CPU counter when CPU was last taken.
    cpu_taken: Mutex<(String, u64)>,
}

/// Marks a call in flight for its duration: the sandbox is not frozen
/// while one is.
pub struct Busy<'a>(&'a SessionSandbox);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl SessionSandbox {
    fn touch(&self) {
        *self.last_used.lock().expect("sandbox clock lock") = Instant::now();
    }

    fn release(&self) {
        self.touch();
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Marks a call in flight until the guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(self)
    }

    async fn emit(&self, make: fn(SandboxTransition) -> EventData, sandbox: &str, started: Instant, reason: Option<String>) {
        let t = SandboxTransition { sandbox: sandbox.to_owned(), duration_ms: started.elapsed().as_secs_f64() * 1000.0, reason };
        self.log.record(&self.session, make(t)).await;
    }

    /// A running sandbox: thawed, started or replaced as needed.
    pub async fn ready(&self) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let sb = self.ready_inner().await?;
        self.changed.store(true, Ordering::SeqCst);
        Ok(sb)
    }

    async fn ready_inner(&self) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let fetched = self.fetch_if_newer(&mut state).await?;
        match &*state {
            State::Running(sb) if sb.alive() => return Ok(sb.clone()),
            State::Standby(sb) if sb.alive() => {
                let sb = sb.clone();
                sb.resume().await?;
                *state = State::Running(sb.clone());
                drop(state);
                self.emit(EventData::SandboxResumed, sb.id(), started, None).await;
                return Ok(sb);
            }
            _ => {}
        }
        let (event, reason): (fn(SandboxTransition) -> EventData, Option<String>) =
            match std::mem::replace(&mut *state, State::Empty { hibernated: false }) {
                State::Running(dead) | State::Standby(dead) => {
                    dead.destroy().await;
                    (EventData::SandboxRestarted, Some(format!("sandbox {} had stopped", dead.id())))
                }
                State::Empty { .. } if fetched.is_some() => (EventData::SandboxCreated, fetched),
                State::Empty { hibernated: true } => (EventData::SandboxCreated, Some("after hibernation".into())),
                State::Empty { hibernated: false } => (EventData::SandboxCreated, None),
            };
        let spec = self.spec.lock().expect("sandbox spec lock").clone();
        let sb: Arc<dyn Sandbox> = Arc::from(self.driver.create(&self.session, &spec).await?);
        *state = State::Running(sb.clone());
        drop(state);
        self.emit(event, sb.id(), started, reason).await;
        Ok(sb)
    }

    /// One request; the answer, and what killed a command if the sandbox
    /// knows (an OOM kill).
    pub async fn call(&self, request: &Request) -> Result<(Response, Option<String>), SandboxError> {
        let _busy = self.busy();
        let sb = self.ready().await?;
        let before = sb.usage();
        let response = sb.call(request).await?;
        Ok((response, sb.explain_kill(&before)))
    }

    /// A process in the sandbox whose stdin and stdout are the returned
    /// stream, and the id of the sandbox instance it runs in (a replaced
    /// sandbox has a new id, and the process died with the old one).
    pub async fn pipe(&self, spec: &ProcessSpec) -> Result<(tokio::net::UnixStream, String), SandboxError> {
        let _busy = self.busy();
        let sb = self.ready().await?;
        Ok((sb.pipe(spec).await?, sb.id().to_owned()))
    }

    /// The session this sandbox belongs to.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// One request with every answer streamed (exec output as it comes).
    /// The sandbox counts as busy (never frozen) until the stream ends.
    pub async fn stream(self: &Arc<Self>, request: &Request) -> Result<mpsc::Receiver<Result<Response, SandboxError>>, SandboxError> {
        let busy = self.busy();
        let mut inner = self.ready().await?.stream(request).await?;
        std::mem::forget(busy);
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(item) = inner.recv().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
            me.release();
        });
        Ok(rx)
    }

    /// Freezes the sandbox now, if it runs.
    pub async fn standby(&self) -> Result<(), SandboxError> {
        let mut state = self.state.lock().await;
        if let State::Running(sb) = &*state {
            let sb = sb.clone();
            let started = Instant::now();
            sb.pause().await?;
            *state = State::Standby(sb.clone());
            drop(state);
            self.emit(EventData::SandboxStandby, sb.id(), started, None).await;
        }
        Ok(())
    }

    /// Where the sandbox is and what it uses.
    /// CPU time (µs) the sandbox used since the last call of this method,
    /// all of it for an instance started since; each microsecond is taken
    /// once, however many calls run in parallel. For budgets.
    pub async fn take_cpu_usec(&self) -> u64 {
        let status = self.status().await;
        let (Some(id), cpu) = (status.id, status.usage.cpu_usec) else { return 0 };
        let mut taken = self.cpu_taken.lock().expect("sandbox cpu lock");
        let (used, counter) = if taken.0 == id { (cpu.saturating_sub(taken.1), cpu.max(taken.1)) } else { (cpu, cpu) };
        *taken = (id, counter);
        used
    }

    pub async fn status(&self) -> SandboxStatus {
        let state = self.state.lock().await;
        let (name, sb) = match &*state {
            State::Empty { hibernated: false } => ("none", None),
            State::Empty { hibernated: true } => ("hibernated", None),
            State::Running(sb) => ("running", Some(sb)),
            State::Standby(sb) => ("standby", Some(sb)),
        };
        SandboxStatus {
            state: name,
            id: sb.map(|s| s.id().to_owned()),
            usage: sb.map(|s| s.usage()).unwrap_or_default(),
            idle_seconds: self.last_used.lock().expect("sandbox clock lock").elapsed().as_secs_f64(),
            spec: self.spec.lock().expect("sandbox spec lock").clone(),
        }
    }

    async fn sweep(&self) {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return;
        }
        let idle = self.last_used.lock().expect("sandbox clock lock").elapsed();
        let spec = self.spec.lock().expect("sandbox spec lock").clone();
        if idle >= Duration::from_secs(spec.idle_hibernate_seconds) {
            self.stop(Transition::Hibernated).await;
            self.save_or_warn().await;
        } else if idle >= Duration::from_secs(spec.idle_standby_seconds) {
            match self.standby().await {
                Ok(()) => self.save_or_warn().await,
                Err(e) => tracing::warn!(session = %self.session, error = %e, "standby failed"),
            }
        }
    }

    /// The generation this node's copy of the workspace started from.
    fn base(&self, sync: &WorkspaceSync) -> u64 {
        std::fs::read_to_string(sync.base_file(&self.session)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    fn set_base(&self, sync: &WorkspaceSync, generation: u64) -> Result<(), SandboxError> {
        std::fs::write(sync.base_file(&self.session), generation.to_string())
            .map_err(|e| SandboxError::Internal(format!("record the workspace generation: {e}")))
    }

    /// Fetches the last saved workspace if it is newer than this node's
    /// copy, replacing the copy (and stopping a sandbox still on it); says
    /// so for the `sandbox.created` event.
    async fn fetch_if_newer(&self, state: &mut State) -> Result<Option<String>, SandboxError> {
        let Some(sync) = &self.sync else { return Ok(None) };
        let Some(latest) = self.log.saved_workspace(&self.session).await? else { return Ok(None) };
        if latest.generation <= self.base(sync) {
            return Ok(None);
        }
        if let State::Running(old) | State::Standby(old) = std::mem::replace(state, State::Empty { hibernated: false }) {
            old.destroy().await;
        }
        let scratch = sync.scratch(&self.session, "in");
        let fetched = sync.store.get(&latest.object, &scratch).await;
        let imported = match fetched {
            Ok(()) => self.driver.import_workspace(&self.session, &scratch).await,
            Err(e) => {
                Err(SandboxError::Setup(format!("fetch workspace generation {} from {}: {e}", latest.generation, sync.store.location())))
            }
        };
        let _ = std::fs::remove_file(&scratch);
        imported?;
        self.set_base(sync, latest.generation)?;
        self.changed.store(false, Ordering::SeqCst);
        Ok(Some(format!("workspace generation {} fetched", latest.generation)))
    }

    /// Saves the workspace to the workspace store if it changed since it was
    /// last saved or fetched, and records the new generation in the
    /// session's log. Returns the generation saved, if one was. Without a
    /// workspace store, does nothing.
    pub async fn save(&self) -> Result<Option<u64>, SandboxError> {
        let Some(sync) = &self.sync else { return Ok(None) };
        let _one = self.saving.lock().await;
        if !self.changed.swap(false, Ordering::SeqCst) {
            return Ok(None);
        }
        let saved = self.save_changed(sync).await;
        if saved.is_err() {
            self.changed.store(true, Ordering::SeqCst);
        }
        saved
    }

    async fn save_changed(&self, sync: &WorkspaceSync) -> Result<Option<u64>, SandboxError> {
        let started = Instant::now();
        let base = self.base(sync);
        let scratch = sync.scratch(&self.session, "out");
        let exported = {
            // A running sandbox is frozen for the copy, so that its
            // processes leave the file system consistent.
            let state = self.state.lock().await;
            match &*state {
                State::Running(sb) => {
                    sb.pause().await?;
                    let exported = self.driver.export_workspace(&self.session, &scratch).await;
                    sb.resume().await?;
                    exported
                }
                State::Standby(_) | State::Empty { .. } => self.driver.export_workspace(&self.session, &scratch).await,
            }
        };
        let generation = base + 1;
        let object = WorkspaceStore::new_key(&self.session, generation);
        let stored = match exported {
            Ok(()) => sync.store.put(&object, &scratch).await.map_err(|e| SandboxError::Internal(format!("save the workspace: {e}"))),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&scratch);
        let bytes = stored?;
        let previous = self.log.saved_workspace(&self.session).await?;
        let saved = WorkspaceSaved {
            generation,
            object: object.clone(),
            bytes,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            node: sync.node.clone(),
        };
        if !self.log.record_saved(&self.session, base, saved).await? {
            // Another node saved over the same generation first: its copy
            // is the session's now, and this one is fetched over next time.
            let _ = sync.store.delete(&object).await;
            tracing::warn!(session = %self.session, base, "workspace changed on another node since generation {base}; this node's changes are dropped");
            return Ok(None);
        }
        self.set_base(sync, generation)?;
        if let Some(old) = previous.filter(|p| p.generation == base) {
            if let Err(e) = sync.store.delete(&old.object).await {
                tracing::warn!(session = %self.session, error = %e, "old workspace snapshot not deleted");
            }
        }
        Ok(Some(generation))
    }

    /// [`SessionSandbox::save`], with a failure logged: the workspace stays
    /// marked as changed and the next occasion tries again.
    pub async fn save_or_warn(&self) {
        if let Err(e) = self.save().await {
            tracing::warn!(session = %self.session, error = %e, "workspace not saved");
        }
    }

    async fn stop(&self, how: Transition) {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        if matches!(*state, State::Empty { .. }) {
            return;
        }
        let old = std::mem::replace(&mut *state, State::Empty { hibernated: matches!(how, Transition::Hibernated) });
        if let State::Running(sb) | State::Standby(sb) = old {
            sb.destroy().await;
            drop(state);
            let event = match how {
                Transition::Hibernated => EventData::SandboxHibernated,
                Transition::Destroyed => EventData::SandboxDestroyed,
            };
            self.emit(event, sb.id(), started, None).await;
        }
    }
}
