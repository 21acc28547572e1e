//! Where session workspaces go so that they can follow their session to
//! another node: an object store (the `object_store` crate) in a directory,
//! local or shared (NFS), or in an S3-compatible bucket.
//!
//! A workspace image is mostly free space, so it is stored as its data
//! extents only (found with `SEEK_DATA`/`SEEK_HOLE`), and written back as a
//! sparse file of the same size:
//!
//! ```text
//! "AGENTRT-WS1\n"  size: u64
//! (offset: u64, len: u64, len bytes)*
//! u64::MAX, 0
//! ```
//!
//! (integers little-endian, extents in ascending order).

use std::os::fd::AsFd;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

const MAGIC: &[u8; 12] = b"AGENTRT-WS1\n";
/// Upload part size (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Marks the end of the extents.
const END: u64 = u64::MAX;

/// Why a workspace could not be stored or fetched.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The `workspace-store` setting is not one this build understands.
    #[error("workspace-store {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("workspace store: {0}")]
    Store(#[from] object_store::Error),
    /// What was fetched is not a workspace this format describes.
    #[error("workspace object {key}: {problem}")]
    Format { key: String, problem: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransferError {
    let what = what.into();
    move |source| TransferError::Io { what, source }
}

/// Workspace snapshots in an object store.
#[derive(Clone)]
pub struct WorkspaceStore {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for messages (`/mnt/shared/ws`, `s3://bucket/prefix`).
    location: String,
    prefix: Path,
}

impl std::fmt::Debug for WorkspaceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceStore").field("location", &self.location).finish()
    }
}

impl WorkspaceStore {
    /// Opens `location`: a directory (an absolute path or `file://` URL,
    /// created if missing), or `s3://bucket[/prefix]` with credentials,
    /// region and endpoint from the standard `AWS_*` environment variables.
    pub fn open(location: &str) -> Result<WorkspaceStore, TransferError> {
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(TransferError::Config(format!("{location:?} names no bucket: use s3://BUCKET[/PREFIX]")));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| TransferError::Config(format!("{location:?}: {e}")))?;
            (Arc::new(s3), Path::from(prefix))
        } else {
            let dir = location.strip_prefix("file://").unwrap_or(location);
            if !dir.starts_with('/') {
                return Err(TransferError::Config(format!(
                    "{location:?} is neither an absolute directory path, a file:// URL nor an s3:// URL"
                )));
            }
            std::fs::create_dir_all(dir).map_err(io(format!("create workspace-store directory {dir}")))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| TransferError::Config(format!("{location:?}: {e}")))?;
            (Arc::new(local), Path::default())
        };
        Ok(WorkspaceStore { store, location: location.to_owned(), prefix })
    }

    /// Where the store is.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A new, unique key for a snapshot of `session` (two nodes racing to
    /// save the same generation never overwrite each other's object).
    pub fn new_key(session: &str, generation: u64) -> String {
        format!("workspaces/{session}/{generation:010}-{:016x}.ws", fastrand::u64(..))
    }

    fn path(&self, key: &str) -> Path {
        Path::from_iter(self.prefix.parts().chain(Path::from(key).parts()))
    }

    /// Stores the image file `image` under `key`; returns the bytes stored.
    pub async fn put(&self, key: &str, image: &FsPath) -> Result<u64, TransferError> {
        let path = image.to_owned();
        let (size, extents) = tokio::task::spawn_blocking(move || data_extents(&path))
            .await
            .map_err(|e| TransferError::Io { what: "find data extents".into(), source: std::io::Error::other(e) })??;
        let mut file = tokio::fs::File::open(image).await.map_err(io(format!("open {}", image.display())))?;
        let upload = self.store.put_multipart(&self.path(key)).await?;
        let mut out = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut stored = 0u64;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&size.to_le_bytes());
        out.write(&header);
        let mut buf = vec![0u8; 1 << 20];
        for (offset, len) in extents {
            out.write(&[offset.to_le_bytes(), len.to_le_bytes()].concat());
            file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io("seek the image"))?;
            let mut left = len;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                file.read_exact(&mut buf[..n]).await.map_err(io("read the image"))?;
                out.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                out.write(&buf[..n]);
                left -= n as u64;
            }
            stored += len;
        }
        out.write(&[END.to_le_bytes(), 0u64.to_le_bytes()].concat());
        out.finish().await?;
        Ok(stored)
    }

    /// Fetches `key` into a new sparse file `dest`.
    pub async fn get(&self, key: &str, dest: &FsPath) -> Result<(), TransferError> {
        let mut stream = self.store.get(&self.path(key)).await?.into_stream();
        let mut file = tokio::fs::File::create(dest).await.map_err(io(format!("create {}", dest.display())))?;
        let mut decoder = Decoder { key: key.to_owned(), pending: BytesMut::new(), expect: Expect::Header, size: 0 };
        while let Some(chunk) = stream.next().await {
            decoder.pending.extend_from_slice(&chunk?);
            decoder.drain(&mut file).await?;
        }
        if !matches!(decoder.expect, Expect::Done) {
            return Err(decoder.bad("it ends early"));
        }
        file.sync_all().await.map_err(io(format!("sync {}", dest.display())))?;
        Ok(())
    }

    /// Deletes one snapshot (a missing one is no error).
    pub async fn delete(&self, key: &str) -> Result<(), TransferError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every snapshot of a session.
    pub async fn delete_session(&self, session: &str) -> Result<(), TransferError> {
        let prefix = self.path(&format!("workspaces/{session}"));
        let keys: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The file's size and its data extents, ascending.
fn data_extents(path: &FsPath) -> Result<(u64, Vec<(u64, u64)>), TransferError> {
    use nix::unistd::{lseek, Whence};
    let file = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let size = file.metadata().map_err(io(format!("stat {}", path.display())))?.len();
    let mut extents = Vec::new();
    let mut at = 0i64;
    while (at as u64) < size {
        let start = match lseek(file.as_fd(), at, Whence::SeekData) {
            Ok(start) => start,
            // No data after `at`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(TransferError::Io { what: format!("find data in {}", path.display()), source: e.into() }),
        };
        let end = lseek(file.as_fd(), start, Whence::SeekHole)
            .map_err(|e| TransferError::Io { what: format!("find a hole in {}", path.display()), source: e.into() })?;
        extents.push((start as u64, (end - start) as u64));
        at = end;
    }
    Ok((size, extents))
}

enum Expect {
    Header,
    Extent,
    Data(u64),
    Done,
}

/// Writes a snapshot's extents to a file as its bytes arrive.
struct Decoder {
    key: String,
    pending: BytesMut,
    expect: Expect,
    size: u64,
}

impl Decoder {
    fn bad(&self, problem: &str) -> TransferError {
        TransferError::Format { key: self.key.clone(), problem: problem.to_owned() }
    }

    /// Consumes what can be consumed of `pending`.
    async fn drain(&mut self, file: &mut tokio::fs::File) -> Result<(), TransferError> {
        loop {
            match self.expect {
                Expect::Header => {
                    if self.pending.len() < MAGIC.len() + 8 {
                        return Ok(());
                    }
                    if &self.pending[..MAGIC.len()] != MAGIC {
                        return Err(self.bad("it is not a workspace snapshot"));
                    }
                    self.pending.advance(MAGIC.len());
                    self.size = self.pending.get_u64_le();
                    file.set_len(self.size).await.map_err(io("size the workspace image"))?;
                    self.expect = Expect::Extent;
                }
                Expect::Extent => {
                    if self.pending.len() < 16 {
                        return Ok(());
                    }
                    let (offset, len) = (self.pending.get_u64_le(), self.pending.get_u64_le());
                    if offset == END {
                        self.expect = Expect::Done;
                        continue;
                    }
                    if offset.checked_add(len).is_none_or(|end| end > self.size) {
                        return Err(self.bad("an extent lies past the image's end"));
                    }
                    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io("seek the workspace image"))?;
                    self.expect = Expect::Data(len);
                }
                Expect::Data(0) => self.expect = Expect::Extent,
                Expect::Data(left) => {
                    if self.pending.is_empty() {
                        return Ok(());
                    }
                    let n = (left as usize).min(self.pending.len());
                    let chunk = self.pending.split_to(n);
                    file.write_all(&chunk).await.map_err(io("write the workspace image"))?;
                    self.expect = Expect::Data(left - n as u64);
                }
                Expect::Done => {
                    return if self.pending.is_empty() { Ok(()) } else { Err(self.bad("bytes follow its end")) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A sparse file with data at a few places goes through the store and
    /// comes back equal, still sparse, and only its data was stored.
    #[tokio::test]
    async fn a_sparse_image_round_trips_with_only_its_data_stored() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&image).unwrap();
        f.set_len(64 << 20).unwrap();
        for (at, byte) in [(0u64, 1u8), (10 << 20, 2), ((64 << 20) - 4096, 3)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![byte; 4096]).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let store = WorkspaceStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let key = WorkspaceStore::new_key("ses_x", 1);
        let stored = store.put(&key, &image).await.unwrap();
        assert!((3 * 4096..1 << 20).contains(&stored), "stored {stored} bytes of a 64 MiB image with 12 KiB of data");
        let back = dir.path().join("back.img");
        store.get(&key, &back).await.unwrap();
        assert_eq!(std::fs::read(&image).unwrap(), std::fs::read(&back).unwrap());
        let blocks = std::fs::metadata(&back).unwrap().blocks() * 512;
        assert!(blocks < 8 << 20, "the fetched image is sparse ({blocks} bytes allocated)");
        store.delete_session("ses_x").await.unwrap();
        assert!(store.get(&key, &back).await.is_err(), "deleted with its session");
    }

    /// A truncated or foreign object is refused, not written as a workspace.
    #[tokio::test]
    async fn a_damaged_object_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![7u8; 100_000]).unwrap();
        let store = WorkspaceStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let key = WorkspaceStore::new_key("ses_y", 1);
        store.put(&key, &image).await.unwrap();
        let object = dir.path().join("store").join(&key);
        let bytes = std::fs::read(&object).unwrap();
        std::fs::write(&object, &bytes[..bytes.len() - 100]).unwrap();
        let err = store.get(&key, &dir.path().join("back.img")).await.unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");
        std::fs::write(&object, b"not a workspace at all, no").unwrap();
        let err = store.get(&key, &dir.path().join("back.img")).await.unwrap_err();
        assert!(err.to_string().contains("not a workspace snapshot"), "{err}");
        assert!(WorkspaceStore::open("relative/dir").is_err());
        assert!(WorkspaceStore::open("s3://").is_err());
    }
}
