//! Files: read, write, list, stat and delete, on absolute paths (the
//! caller resolved relative ones against the workspace).
//!
//! Stat and list describe a symlink itself rather than its target, so that
//! `symlink` shows up as a kind; read and write follow it.

use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::{unix_ms, Failure};
use crate::protocol::{FileStat, Response};

/// Bytes read at most, whatever `max_bytes` says, so that the answer fits
/// in a frame once in base64.
const MAX_READ: u64 = 32 << 20;

/// Answers [`Response::File`] with at most `max_bytes` bytes.
pub(super) fn read(path: &Path, max_bytes: Option<u64>) -> Result<Response, Failure> {
    let fail = |e| Failure::io("read", path, &e);
    let file = File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if meta.is_dir() {
        return Err(Failure::new("is_a_directory", format!("read {}: is a directory", path.display())));
    }
    let limit = max_bytes.unwrap_or(MAX_READ).min(MAX_READ);
    let mut data = Vec::new();
    // One byte more than the limit tells whether there was more.
    file.take(limit + 1).read_to_end(&mut data).map_err(fail)?;
    let truncated = data.len() as u64 > limit;
    let size = meta.len().max(data.len() as u64);
    data.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Response::File { data: BASE64.encode(&data), size, truncated })
}

/// Writes or appends base64 `data`, creating parent directories; `mode`
/// sets the permission bits. Answers [`Response::Stat`].
pub(super) fn write(path: &Path, data: &str, append: bool, mode: Option<u32>) -> Result<Response, Failure> {
    let data =
        BASE64.decode(data).map_err(|e| Failure::new("invalid", format!("write {}: data is not valid base64: {e}", path.display())))?;
    if let Some(mode) = mode.filter(|m| m & !0o7777 != 0) {
        return Err(Failure::new("invalid", format!("write {}: mode {mode:o} has bits beyond 0o7777", path.display())));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| match e.kind() {
            // The parent exists but is not a directory.
            std::io::ErrorKind::AlreadyExists => {
                Failure::new("not_a_directory", format!("write {}: {} is not a directory", path.display(), parent.display()))
            }
            _ => Failure::io("create directory", parent, &e),
        })?;
    }
    let fail = |e| Failure::io("write", path, &e);
    let mut options = OpenOptions::new();
    options.write(true).create(true);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    if let Some(mode) = mode {
        options.mode(mode);
    }
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(&data).map_err(fail)?;
    if let Some(mode) = mode {
        // The open's mode is only for a new file, and under the umask.
        file.set_permissions(Permissions::from_mode(mode)).map_err(fail)?;
    }
    stat(path)
}

/// Answers [`Response::Entries`], sorted by name. Entries that vanish while
/// listing are left out.
pub(super) fn list(path: &Path) -> Result<Response, Failure> {
    let entries = fs::read_dir(path).map_err(|e| Failure::io("list", path, &e))?;
    let mut entries: Vec<FileStat> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| Some(describe(entry.file_name().to_string_lossy().into_owned(), &entry.metadata().ok()?)))
        .collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Response::Entries { entries })
}

/// Answers [`Response::Stat`] with the full path.
pub(super) fn stat(path: &Path) -> Result<Response, Failure> {
    let meta = fs::symlink_metadata(path).map_err(|e| Failure::io("stat", path, &e))?;
    Ok(Response::Stat(describe(path.display().to_string(), &meta)))
}

/// Deletes a file, symlink or (only when `recursive`) a directory tree;
/// answers [`Response::Done`].
pub(super) fn delete(path: &Path, recursive: bool) -> Result<Response, Failure> {
    let fail = |e| Failure::io("delete", path, &e);
    let meta = fs::symlink_metadata(path).map_err(fail)?;
    if meta.is_dir() {
        if !recursive {
            return Err(Failure::new("is_a_directory", format!("delete {}: is a directory (set recursive to delete it)", path.display())));
        }
        fs::remove_dir_all(path).map_err(fail)?;
    } else {
        fs::remove_file(path).map_err(fail)?;
    }
    Ok(Response::Done)
}

fn describe(path: String, meta: &Metadata) -> FileStat {
    let kind = meta.file_type();
    let kind = if kind.is_symlink() {
        "symlink"
    } else if kind.is_dir() {
        "dir"
    } else if kind.is_file() {
        "file"
    } else {
        "other"
    };
    FileStat { path, kind: kind.to_owned(), size: meta.len(), mode: meta.mode() & 0o7777, modified_ms: meta.modified().map_or(0, unix_ms) }
}
