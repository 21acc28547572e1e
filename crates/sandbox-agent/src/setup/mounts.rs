//! The sandbox's filesystem: a read-only root (the host's system
//! directories and a short list of `/etc` files bound read-only, or the
//! entries of a rootfs directory), `/workspace` read-write, a size-capped tmpfs `/tmp`, a minimal
//! `/dev` and a fresh `/proc`. Built by PID 1 before it pivots into it.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};

use super::SandboxConfig;

/// Host directories bound read-only when no rootfs is given (a symlink, as
/// `/bin` on merged-/usr systems, is copied as a symlink).
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The parts of the host's `/etc` that programs need; the rest (keys,
/// credentials, the runtime's own config) stays out.
pub const ETC_ENTRIES: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "profile",
    "protocols",
    "services",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
];

/// Where the sandbox's own file systems go; a rootfs's entries of these
/// names are not used.
const MOUNT_POINTS: &[&str] = &["workspace", "tmp", "dev", "proc"];

/// Device nodes bound from the host.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Builds the new root under `config.root` (still seeing the host's tree).
pub fn build_root(config: &SandboxConfig) -> Result<(), String> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(|e| err("make / private", e))?;
    let root = &config.root;
    // The root is a small tmpfs in both cases, so that the mount points
    // below can be made whatever the rootfs holds (and without writing to it).
    mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("size=1m,mode=0755"))
        .map_err(|e| err(format!("tmpfs at {}", root.display()), e))?;
    match &config.rootfs {
        Some(rootfs) => {
            let entries = fs::read_dir(rootfs).map_err(|e| err(format!("read rootfs {}", rootfs.display()), e))?;
            for entry in entries {
                let name = entry.map_err(|e| err(format!("read rootfs {}", rootfs.display()), e))?.file_name();
                let name = name.to_string_lossy();
                if !MOUNT_POINTS.contains(&name.as_ref()) {
                    copy_entry(rootfs, root, &name)?;
                }
            }
        }
        None => {
            for dir in SYSTEM_DIRS {
                copy_entry(Path::new("/"), root, dir)?;
            }
            let etc = root.join("etc");
            fs::create_dir(&etc).map_err(|e| err("mkdir /etc", e))?;
            match &config.etc {
                // One mount instead of one per entry: most of a cold start is mounts.
                Some(prepared) => bind(prepared, &etc, true)?,
                None => {
                    for entry in ETC_ENTRIES {
                        copy_entry(Path::new("/etc"), &etc, entry)?;
                    }
                }
            }
        }
    }
    let target = |name: &str| -> Result<PathBuf, String> {
        let path = root.join(name);
        fs::create_dir_all(&path).map_err(|e| err(format!("mkdir /{name}"), e))?;
        Ok(path)
    };
    let workspace = target("workspace")?;
    mount(Some(&config.workspace), &workspace, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&str>)
        .map_err(|e| err("mount /workspace", e))?;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let tmp_size = format!("size={},mode=1777", config.tmp_bytes.max(4096));
    mount(Some("tmpfs"), &target("tmp")?, Some("tmpfs"), nosuid_nodev, Some(tmp_size.as_str())).map_err(|e| err("mount /tmp", e))?;
    build_dev(&target("dev")?)?;
    mount(Some("proc"), &target("proc")?, Some("proc"), nosuid_nodev | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(|e| err("mount /proc", e))?;
    Ok(())
}

/// Pivots into the new root, drops the host's tree and makes `/` read-only.
pub fn enter_root(config: &SandboxConfig) -> Result<(), String> {
    chdir(&config.root).map_err(|e| err("chdir new root", e))?;
    pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach the host's root", e))?;
    chdir("/").map_err(|e| err("chdir /", e))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&str>)
        .map_err(|e| err("make / read-only", e))
}

/// Recreates `from/name` under `to`: a symlink as a symlink, anything else
/// bound read-only. Missing entries are skipped.
fn copy_entry(from: &Path, to: &Path, name: &str) -> Result<(), String> {
    let source = from.join(name);
    let target = to.join(name);
    let Ok(meta) = fs::symlink_metadata(&source) else { return Ok(()) };
    if meta.file_type().is_symlink() {
        let link = fs::read_link(&source).map_err(|e| err(format!("readlink {}", source.display()), e))?;
        return std::os::unix::fs::symlink(link, &target).map_err(|e| err(format!("symlink {}", target.display()), e));
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| err(format!("mkdir {}", parent.display()), e))?;
    }
    if meta.is_dir() {
        fs::create_dir(&target).map_err(|e| err(format!("mkdir {}", target.display()), e))?;
    } else {
        fs::File::create(&target).map_err(|e| err(format!("create {}", target.display()), e))?;
    }
    bind(&source, &target, true)
}

/// Binds `source` at `target`, read-only if asked.
fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), String> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err(format!("bind {} at {}", source.display(), target.display()), e))?;
    if readonly {
        remount_readonly(target)?;
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping the flags a user namespace may
/// not clear (nosuid, nodev, noexec, atime flags).
fn remount_readonly(target: &Path) -> Result<(), String> {
    let st = statvfs(target).map_err(|e| err(format!("statvfs {}", target.display()), e))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| err(format!("remount {} read-only", target.display()), e))
}

/// A tmpfs `/dev` with the harmless device nodes bound from the host, the
/// usual symlinks and a `/dev/shm`.
fn build_dev(dev: &Path) -> Result<(), String> {
    mount(Some("tmpfs"), dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("size=64k,mode=0755"))
        .map_err(|e| err("mount /dev", e))?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target).map_err(|e| err(format!("create /dev/{name}"), e))?;
        mount(Some(&Path::new("/dev").join(name)), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| err(format!("bind /dev/{name}"), e))?;
    }
    for (link, to) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
    {
        std::os::unix::fs::symlink(to, dev.join(link)).map_err(|e| err(format!("symlink /dev/{link}"), e))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| err("mkdir /dev/shm", e))?;
    mount(Some("tmpfs"), &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("size=64m,mode=1777"))
        .map_err(|e| err("mount /dev/shm", e))
}
