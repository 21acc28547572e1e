//! Each session's sandbox and its lifecycle: created on first use, frozen
//! after `idle_standby_seconds` without a call, stopped (workspace kept)
//! after `idle_hibernate_seconds`, thawed or rebuilt by the next call, and
//! replaced when found dead. Every transition is reported with its duration.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentrt_sandbox_agent::protocol::{ProcessSpec, Request, Response};
use agentrt_types::event::SandboxTransition;
use agentrt_types::sandbox::SandboxSpec;
use agentrt_types::EventData;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{Sandbox, SandboxDriver, SandboxError, Usage};

/// Receives lifecycle events for a session's log.
pub type EventSink = Arc<dyn Fn(String, EventData) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// All sessions' sandboxes on this node.
pub struct SandboxManager {
    driver: Arc<dyn SandboxDriver>,
    sink: EventSink,
    sessions: Mutex<HashMap<String, Arc<SessionSandbox>>>,
}

impl SandboxManager {
    pub fn new(driver: Arc<dyn SandboxDriver>, sink: EventSink) -> Arc<SandboxManager> {
        Arc::new(SandboxManager { driver, sink, sessions: Mutex::default() })
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
                sink: self.sink.clone(),
                state: tokio::sync::Mutex::new(State::Empty { hibernated: false }),
                last_used: Mutex::new(Instant::now()),
                cpu_taken: Mutex::new((String::new(), 0)),
                busy: AtomicUsize::new(0),
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

    /// Ends a session's sandbox; with `delete_workspace`, its workspace too.
    pub async fn end_session(&self, session: &str, delete_workspace: bool) -> Result<(), SandboxError> {
        let handle = self.sessions.lock().expect("sandbox sessions lock").remove(session);
        if let Some(handle) = handle {
            handle.stop(Transition::Destroyed).await;
        }
        if delete_workspace {
            self.driver.delete_workspace(session).await?;
        }
        Ok(())
    }

    /// Stops every sandbox (workspaces stay), e.g. at shutdown.
    pub async fn stop_all(&self) {
        let all: Vec<_> = self.sessions.lock().expect("sandbox sessions lock").drain().map(|(_, s)| s).collect();
        for s in all {
            let mut state = s.state.lock().await;
            if let State::Running(sb) | State::Standby(sb) = std::mem::replace(&mut *state, State::Empty { hibernated: false }) {
                sb.destroy().await;
            }
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
    sink: EventSink,
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
        (self.sink)(self.session.clone(), make(t)).await;
    }

    /// A running sandbox: thawed, started or replaced as needed.
    pub async fn ready(&self) -> Result<Arc<dyn Sandbox>, SandboxError> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
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
        } else if idle >= Duration::from_secs(spec.idle_standby_seconds) {
            if let Err(e) = self.standby().await {
                tracing::warn!(session = %self.session, error = %e, "standby failed");
            }
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
