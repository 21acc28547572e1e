//! A session's persistent `/workspace`. As root it is an ext4 image of the
//! quota's size attached through a loop device, so writes past the quota
//! fail with ENOSPC and the image is the unit to snapshot and ship to
//! another node; it stays mounted on the host while the session lives and
//! outlives every sandbox built on it. Without root it is a plain
//! directory with no quota.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One session's workspace on the host.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// What is mounted at `/workspace` in the sandbox.
    pub dir: PathBuf,
    /// The ext4 image behind `dir`, when there is a quota.
    pub image: Option<PathBuf>,
}

impl Workspace {
    /// Opens (creating on first use) the workspace under `root/{session}`,
    /// owned by `uid:gid` on the host.
    pub fn open(root: &Path, session: &str, disk_mb: u64, uid: u32, gid: u32) -> io::Result<Workspace> {
        let base = root.join(session);
        fs::create_dir_all(&base)?;
        if !nix::unistd::geteuid().is_root() {
            let dir = base.join("dir");
            fs::create_dir_all(&dir)?;
            return Ok(Workspace { dir, image: None });
        }
        let image = base.join("disk.img");
        let dir = base.join("mnt");
        fs::create_dir_all(&dir)?;
        if !image.exists() {
            let partial = base.join("disk.img.partial");
            fs::File::create(&partial)?.set_len(disk_mb << 20)?;
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E"])
                .arg(format!("root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1"))
                .arg(&partial))?;
            fs::rename(&partial, &image)?;
        }
        if !is_mountpoint(&dir)? {
            // `discard`: deleted files free their blocks in the image, which
            // stays sparse, so snapshots carry only live data.
            run(Command::new("mount").args(["-o", "loop,nosuid,nodev,noatime,discard"]).arg(&image).arg(&dir))?;
            let _ = fs::remove_dir(dir.join("lost+found"));
        }
        Ok(Workspace { dir, image: Some(image) })
    }

    /// Copies the workspace to `dest`: the image (sparse) after flushing its
    /// file system, or the directory tree without a quota. Callers stop
    /// writers first.
    pub fn snapshot(&self, dest: &Path) -> io::Result<()> {
        match &self.image {
            Some(image) => {
                // A frozen ext4 has its journal flushed and is marked clean,
                // so the copy needs no recovery wherever it is attached next.
                run(Command::new("fsfreeze").arg("-f").arg(&self.dir))?;
                let copied = run(Command::new("cp").arg("--sparse=always").arg(image).arg(dest));
                let thawed = run(Command::new("fsfreeze").arg("-u").arg(&self.dir));
                copied.and(thawed)
            }
            None => run(Command::new("cp").arg("-a").arg(&self.dir).arg(dest)),
        }
    }

    /// Copies the workspace of `session` under `root` to `dest` whether or
    /// not it is attached: an attached one as [`Workspace::snapshot`] does,
    /// a detached image as it is. Only image workspaces (with a quota) can.
    pub fn export(root: &Path, session: &str, dest: &Path) -> io::Result<()> {
        let base = root.join(session);
        let (image, dir) = (base.join("disk.img"), base.join("mnt"));
        if !image.exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("session {session} has no workspace image on this node")));
        }
        if dir.exists() && is_mountpoint(&dir)? {
            Workspace { dir, image: Some(image) }.snapshot(dest)
        } else {
            run(Command::new("cp").arg("--sparse=always").arg(&image).arg(dest))
        }
    }

    /// Makes `image` (an export, from any node) the workspace of `session`
    /// under `root`, detaching the one there; no sandbox may use it. The
    /// next [`Workspace::open`] attaches it.
    pub fn replace(root: &Path, session: &str, image: &Path) -> io::Result<()> {
        let base = root.join(session);
        fs::create_dir_all(&base)?;
        unmount(&base.join("mnt"))?;
        let target = base.join("disk.img");
        if fs::rename(image, &target).is_err() {
            // Another file system: copy, keeping the holes.
            let partial = base.join("disk.img.partial");
            run(Command::new("cp").arg("--sparse=always").arg(image).arg(&partial))?;
            fs::rename(&partial, &target)?;
        }
        Ok(())
    }

    /// Unmounts every workspace under `root` (their files stay).
    pub fn release_all(root: &Path) {
        let Ok(entries) = fs::read_dir(root) else { return };
        for entry in entries.flatten() {
            if let Err(e) = unmount(&entry.path().join("mnt")) {
                tracing::warn!(error = %e, "workspace not released");
            }
        }
    }

    /// Unmounts (if mounted) and deletes the workspace for good.
    pub fn delete(root: &Path, session: &str) -> io::Result<()> {
        let base = root.join(session);
        unmount(&base.join("mnt"))?;
        match fs::remove_dir_all(&base) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Unmounts what is mounted at `mnt`, if anything is.
fn unmount(mnt: &Path) -> io::Result<()> {
    if mnt.exists() && is_mountpoint(mnt)? {
        run(Command::new("umount").arg(mnt))?;
    }
    Ok(())
}

/// Whether `dir` is the mount point of something (per /proc/self/mountinfo).
fn is_mountpoint(dir: &Path) -> io::Result<bool> {
    let dir = fs::canonicalize(dir)?;
    let dir = dir.to_string_lossy();
    Ok(fs::read_to_string("/proc/self/mountinfo")?.lines().any(|l| l.split(' ').nth(4) == Some(&dir)))
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}
