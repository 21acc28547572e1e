//! Resource limits through cgroups: memory (no swap), CPU quota and pids,
//! plus the freezer for standby. cgroup v1 (one hierarchy per controller,
//! as on this project's CI machines) and v2 (unified) are both supported;
//! which one is detected at start.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// Controllers a v1 sandbox joins.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer"];

/// Which cgroup interface the host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The host's cgroup version, if this process can manage cgroups.
    pub fn detect() -> Option<CgroupVersion> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            Some(CgroupVersion::V2)
        } else if Path::new(ROOT).join("memory").join("memory.limit_in_bytes").exists() {
            Some(CgroupVersion::V1)
        } else {
            None
        }
    }
}

/// Limits applied to one sandbox.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpu_cores: f64,
    pub pids: u64,
}

/// Resources a sandbox is using.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Usage {
    pub memory_bytes: u64,
    pub cpu_usec: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

/// One sandbox's cgroup (one directory per controller on v1).
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    name: String,
}

const CFS_PERIOD_US: u64 = 100_000;

impl Cgroup {
    /// Creates `agentrt/{name}` with the limits.
    pub fn create(version: CgroupVersion, name: &str, limits: Limits) -> io::Result<Cgroup> {
        let cg = Cgroup::make(version, name)?;
        cg.limit(limits)?;
        Ok(cg)
    }

    /// Creates `agentrt/{name}` with no limits yet (the costly part of
    /// [`Cgroup::create`], done ahead of need).
    pub fn make(version: CgroupVersion, name: &str) -> io::Result<Cgroup> {
        let cg = Cgroup { version, name: name.to_owned() };
        match version {
            CgroupVersion::V1 => {
                for c in V1_CONTROLLERS {
                    fs::create_dir_all(cg.dir(c))?;
                }
            }
            CgroupVersion::V2 => {
                let parent = Path::new(ROOT).join("agentrt");
                fs::create_dir_all(&parent)?;
                let _ = write(Path::new(ROOT), "cgroup.subtree_control", "+memory +cpu +pids");
                write(&parent, "cgroup.subtree_control", "+memory +cpu +pids")?;
                fs::create_dir_all(cg.dir(""))?;
            }
        }
        Ok(cg)
    }

    /// Sets the limits.
    pub fn limit(&self, limits: Limits) -> io::Result<()> {
        let quota = ((limits.cpu_cores * CFS_PERIOD_US as f64) as u64).max(1000);
        match self.version {
            CgroupVersion::V1 => {
                let memory = self.dir("memory");
                write(&memory, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
                // Without swap accounting the file is absent; swappiness 0 then.
                let _ = write(&memory, "memory.memsw.limit_in_bytes", &limits.memory_bytes.to_string());
                let _ = write(&memory, "memory.swappiness", "0");
                write(&self.dir("cpu"), "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                write(&self.dir("cpu"), "cpu.cfs_quota_us", &quota.to_string())?;
                write(&self.dir("pids"), "pids.max", &limits.pids.to_string())?;
            }
            CgroupVersion::V2 => {
                let dir = self.dir("");
                write(&dir, "memory.max", &limits.memory_bytes.to_string())?;
                let _ = write(&dir, "memory.swap.max", "0");
                write(&dir, "cpu.max", &format!("{quota} {CFS_PERIOD_US}"))?;
                write(&dir, "pids.max", &limits.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// The cgroup's name (`agentrt/{name}` in each hierarchy).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle on an existing cgroup (e.g. one a previous run left).
    pub fn existing(version: CgroupVersion, name: &str) -> Cgroup {
        Cgroup { version, name: name.to_owned() }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        match self.version {
            CgroupVersion::V1 => Path::new(ROOT).join(controller).join("agentrt").join(&self.name),
            CgroupVersion::V2 => Path::new(ROOT).join("agentrt").join(&self.name),
        }
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match self.version {
            CgroupVersion::V1 => V1_CONTROLLERS.iter().map(|c| self.dir(c).join("cgroup.procs")).collect(),
            CgroupVersion::V2 => vec![self.dir("").join("cgroup.procs")],
        }
    }

    /// Freezes (`true`) or thaws every process, waiting until done.
    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        match self.version {
            CgroupVersion::V1 => {
                let dir = self.dir("freezer");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                write(&dir, "freezer.state", want)?;
                while read(&dir, "freezer.state")?.trim() != want {
                    if Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("freezer did not reach {want} within 5 s")));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    // FREEZING can stall on a task in uninterruptible sleep; asking again retries it.
                    write(&dir, "freezer.state", want)?;
                }
            }
            CgroupVersion::V2 => {
                let dir = self.dir("");
                write(&dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                while !read(&dir, "cgroup.events")?.lines().any(|l| l == want) {
                    if Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "cgroup did not freeze within 5 s"));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        Ok(())
    }

    /// What the sandbox uses now.
    pub fn usage(&self) -> Usage {
        let num = |dir: PathBuf, file: &str| read(&dir, file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        match self.version {
            CgroupVersion::V1 => Usage {
                memory_bytes: num(self.dir("memory"), "memory.usage_in_bytes"),
                cpu_usec: num(self.dir("cpuacct"), "cpuacct.usage") / 1000,
                pids: num(self.dir("pids"), "pids.current"),
                oom_kills: keyed(&self.dir("memory"), "memory.oom_control", "oom_kill"),
            },
            CgroupVersion::V2 => Usage {
                memory_bytes: num(self.dir(""), "memory.current"),
                cpu_usec: keyed(&self.dir(""), "cpu.stat", "usage_usec"),
                pids: num(self.dir(""), "pids.current"),
                oom_kills: keyed(&self.dir(""), "memory.events", "oom_kill"),
            },
        }
    }

    /// SIGKILLs every process left (thawing first, so they can die) and
    /// removes the directories.
    pub fn destroy(&self) {
        let _ = self.set_frozen(false);
        let deadline = Instant::now() + Duration::from_secs(5);
        for procs in self.procs_files() {
            let dir = procs.parent().map(Path::to_path_buf).unwrap_or_default();
            loop {
                let pids: Vec<i32> = fs::read_to_string(&procs).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
                for pid in &pids {
                    let _ = kill(*pid);
                }
                if fs::remove_dir(&dir).is_ok() || !dir.exists() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn kill(pid: i32) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value).map_err(|e| io::Error::new(e.kind(), format!("write {value:?} to {}: {e}", dir.join(file).display())))
}

fn read(dir: &Path, file: &str) -> io::Result<String> {
    fs::read_to_string(dir.join(file))
}

/// The number after `key` in a `key value` per line file.
fn keyed(dir: &Path, file: &str, key: &str) -> u64 {
    read(dir, file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.split_once(' ').filter(|(k, _)| *k == key).and_then(|(_, v)| v.trim().parse().ok()))
        .unwrap_or(0)
}
