//! A file under a root-only directory, shared-mapped into memory so that
//! plain stores land in the page cache: on tmpfs (`/run`) nothing more is
//! needed for them to outlive the process, a SIGKILL included. Also the
//! trusted read of such a file left by an earlier process: the directory
//! and the file must belong to the router's user and be writable by
//! nobody else, or they are not read (another user could have planted
//! them). Used for the flow state file (`state::flow_store`).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// A mapped file could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum MappedError {
    /// Creating, inspecting, opening, sizing, mapping or renaming failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The path is not owned by the router's user, is writable by others,
    /// or is not the kind of file expected.
    #[error("{path} is not trusted: {why}")]
    Untrusted {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MappedError {
    let path = path.to_owned();
    move |source| MappedError::Io { step, path, source }
}

/// Checks `meta` of `path`: owned by our effective user, no write bit for
/// group or others (and for a file, no access at all for them).
fn trusted(path: &Path, meta: &std::fs::Metadata, dir: bool) -> Result<(), MappedError> {
    let untrusted = |why: String| MappedError::Untrusted {
        path: path.to_owned(),
        why,
    };
    let kind = meta.file_type();
    if dir && !kind.is_dir() {
        return Err(untrusted("not a directory".into()));
    }
    if !dir && !kind.is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(untrusted(format!(
            "owned by uid {}, not {euid}",
            meta.uid()
        )));
    }
    let others = if dir { 0o022 } else { 0o077 };
    if meta.mode() & others != 0 {
        return Err(untrusted(format!("mode {:o}", meta.mode() & 0o7777)));
    }
    Ok(())
}

/// Makes sure `dir` exists (created 0711 when missing) and is trusted:
/// a real directory (not a symlink) of ours that no one else may write.
/// Searchable by others, not readable: the default `state_dir` is
/// `/run/vassal`, the launcher's directory too, which vassals in a user
/// namespace (a host uid that is not root) must pass through.
pub fn ensure_dir(dir: &Path) -> Result<(), MappedError> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(io("creating", dir))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io("inspecting", dir))?;
    trusted(dir, &meta, true)
}

/// Reads at most `max` bytes of the file at `path` if it is trusted (see
/// [`ensure_dir`]; the file: ours, mode 0600 or stricter, regular, not a
/// symlink); `Ok(None)` when it does not exist.
pub fn read_trusted(path: &Path, max: usize) -> Result<Option<Vec<u8>>, MappedError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(MappedError::Untrusted {
                path: path.to_owned(),
                why: "a symbolic link".into(),
            })
        }
        Err(e) => return Err(io("opening", path)(e)),
    };
    let meta = file.metadata().map_err(io("inspecting", path))?;
    trusted(path, &meta, false)?;
    let mut bytes = Vec::new();
    file.take(max as u64)
        .read_to_end(&mut bytes)
        .map_err(io("reading", path))?;
    Ok(Some(bytes))
}

/// A shared, writable mapping of a whole file.
pub struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
    path: PathBuf,
}

// SAFETY: the mapping is plain memory owned by this value; callers write
// disjoint ranges (or serialise writes to a range), see [`Mapped::write`].
unsafe impl Send for Mapped {}
// SAFETY: as above: `write` takes `&self` but its callers never write the
// same range from two threads at once.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Creates `path` (which must not exist: created exclusively, mode
    /// 0600) of `len` bytes, zero (sparse), and maps it shared.
    pub fn create(path: &Path, len: usize) -> Result<Mapped, MappedError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io("creating", path))?;
        // Whatever the umask made of it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", path))?;
        file.set_len(len as u64).map_err(io("sizing", path))?;
        // SAFETY: a fresh mapping (no address hint) of a file we just sized
        // to `len` bytes; the kernel picks the address; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io("mapping", path)(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| MappedError::Io {
            step: "mapping",
            path: path.to_owned(),
            source: std::io::Error::other("null mapping"),
        })?;
        // The mapping keeps the file; its descriptor is not needed.
        Ok(Mapped {
            ptr,
            len,
            path: path.to_owned(),
        })
    }

    /// Renames the mapped file to `to` (atomically replacing what is
    /// there); the mapping is unaffected.
    pub fn rename(&mut self, to: &Path) -> Result<(), MappedError> {
        std::fs::rename(&self.path, to).map_err(io("renaming", &self.path))?;
        self.path = to.to_owned();
        Ok(())
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `bytes` to `offset` with plain stores (no system call, no
    /// allocation); out of range is ignored. Callers must not write one
    /// range from two threads at once (the flow table writes a shard's
    /// slots under that shard's lock).
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            return;
        }
        // SAFETY: `offset..offset + len` lies within the live mapping
        // (checked above); the source is a distinct Rust slice; callers
        // serialise writers of a range, and nothing in this process reads
        // the mapping, so there is no data race.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping `create` made, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::chown;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vr-mapped-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_reach_the_file_and_are_read_back() {
        let d = dir("rw");
        ensure_dir(&d).unwrap();
        let mut m = Mapped::create(&d.join("f.new"), 4096).unwrap();
        m.write(10, b"hello");
        m.write(4094, b"toolong"); // ignored
        m.rename(&d.join("f")).unwrap();
        let got = read_trusted(&d.join("f"), 1 << 20).unwrap().unwrap();
        assert_eq!((got.len(), &got[10..15]), (4096, &b"hello"[..]));
        assert_eq!(read_trusted(&d.join("f"), 12).unwrap().unwrap().len(), 12);
        assert!(read_trusted(&d.join("none"), 10).unwrap().is_none());
        drop(m);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_and_directories_others_could_write_are_not_trusted() {
        let d = dir("trust");
        ensure_dir(&d).unwrap();
        let f = d.join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_trusted(&f, 10),
            Err(MappedError::Untrusted { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_trusted(&f, 10).unwrap().is_some());
        std::os::unix::fs::symlink(&f, d.join("link")).unwrap();
        assert!(matches!(
            read_trusted(&d.join("link"), 10),
            Err(MappedError::Untrusted { .. })
        ));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(ensure_dir(&d), Err(MappedError::Untrusted { .. })));
        if nix::unistd::geteuid().is_root() {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
            chown(&f, Some(65534), None).unwrap();
            assert!(matches!(
                read_trusted(&f, 10),
                Err(MappedError::Untrusted { .. })
            ));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
