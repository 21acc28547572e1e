//! An agent's `[sandbox]`: where its model-written code runs, with what
//! resources, and when an idle sandbox is frozen or stopped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::FieldError;

/// Sandbox drivers this build knows.
pub const SANDBOX_DRIVERS: &[&str] = &["linux"];

/// Tools offered to an agent that has a sandbox.
pub const SANDBOX_TOOLS: &[&str] = &[
    "shell.exec",
    "process.start",
    "process.status",
    "process.output",
    "process.kill",
    "fs.read",
    "fs.write",
    "fs.edit",
    "fs.list",
    "fs.delete",
];

/// The sandbox of each of the agent's sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// `linux` (namespaces, cgroups, seccomp, landlock).
    #[serde(default = "default_driver")]
    pub driver: String,
    /// A root filesystem directory on the host, mounted read-only as `/`;
    /// the host's system directories when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// CPU cores (fractions allowed), enforced as a CFS quota.
    #[serde(default = "default_cpu")]
    pub cpu: f64,
    /// Memory in MiB (no swap); over it, the kernel kills the largest process.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Processes and threads at once.
    #[serde(default = "default_pids")]
    pub pids: u64,
    /// Size of the persistent `/workspace` in MiB; writes past it fail with ENOSPC.
    #[serde(default = "default_disk_mb")]
    pub disk_mb: u64,
    /// Size of the `/tmp` tmpfs in MiB (counted in `memory_mb`).
    #[serde(default = "default_tmp_mb")]
    pub tmp_mb: u64,
    /// Seconds without a call before the sandbox is frozen (standby).
    #[serde(default = "default_idle_standby")]
    pub idle_standby_seconds: u64,
    /// Seconds without a call before its processes are stopped; only the
    /// workspace is kept and the next call starts a fresh sandbox on it.
    #[serde(default = "default_idle_hibernate")]
    pub idle_hibernate_seconds: u64,
    /// Environment of every command, on top of `PATH`, `HOME` and `LANG`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            driver: default_driver(),
            rootfs: None,
            cpu: default_cpu(),
            memory_mb: default_memory_mb(),
            pids: default_pids(),
            disk_mb: default_disk_mb(),
            tmp_mb: default_tmp_mb(),
            idle_standby_seconds: default_idle_standby(),
            idle_hibernate_seconds: default_idle_hibernate(),
            env: BTreeMap::new(),
        }
    }
}

fn default_driver() -> String {
    "linux".into()
}
fn default_cpu() -> f64 {
    1.0
}
fn default_memory_mb() -> u64 {
    512
}
fn default_pids() -> u64 {
    256
}
fn default_disk_mb() -> u64 {
    1024
}
fn default_tmp_mb() -> u64 {
    64
}
fn default_idle_standby() -> u64 {
    15
}
fn default_idle_hibernate() -> u64 {
    600
}

impl SandboxSpec {
    /// Checks that need no host: known driver, sane ranges. Reports under `sandbox.*`.
    pub fn check(&self, errors: &mut Vec<FieldError>) {
        let mut bad = |field: &str, message: String| errors.push(FieldError { path: format!("sandbox.{field}"), message });
        if !SANDBOX_DRIVERS.contains(&self.driver.as_str()) {
            let later = if ["gvisor", "microvm"].contains(&self.driver.as_str()) { " (not available in this build yet)" } else { "" };
            bad("driver", format!("unknown driver {:?}{later}; use one of {}", self.driver, SANDBOX_DRIVERS.join(", ")));
        }
        if !(self.cpu > 0.0 && self.cpu <= 1024.0) {
            bad("cpu", "must be more than 0 and at most 1024 cores".into());
        }
        if self.memory_mb < 16 {
            bad("memory_mb", "must be at least 16".into());
        }
        if !(8..=1_000_000).contains(&self.pids) {
            bad("pids", "must be between 8 and 1000000".into());
        }
        if self.disk_mb < 8 {
            bad("disk_mb", "must be at least 8".into());
        }
        if self.tmp_mb == 0 || self.tmp_mb > self.memory_mb {
            bad("tmp_mb", format!("must be between 1 and memory_mb ({})", self.memory_mb));
        }
        if self.idle_standby_seconds == 0 {
            bad("idle_standby_seconds", "must be at least 1".into());
        }
        if self.idle_hibernate_seconds < self.idle_standby_seconds {
            bad("idle_hibernate_seconds", format!("must be at least idle_standby_seconds ({})", self.idle_standby_seconds));
        }
        if let Some(rootfs) = &self.rootfs {
            if !rootfs.starts_with('/') {
                bad("rootfs", format!("{rootfs:?} must be an absolute path"));
            }
        }
        for name in self.env.keys() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                bad("env", format!("{name:?} is not a valid variable name"));
            }
        }
    }
}
