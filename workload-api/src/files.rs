//! Files and directories that hold secrets or state: private files written
//! atomically with mode 0600, directories created 0700 without touching the
//! mode of one that already exists, the lock that keeps one process per
//! data directory, and unix sockets that are only ever removed by the
//! process that bound them.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Writes secret bytes to `path` with mode 0600, atomically: readers see the
/// old content or the new, never a torn file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Creates `dir` and its missing parents with `mode`. A directory that
/// already exists keeps its mode and owner: it may be shared (the system
/// temporary directory) and is not ours to change.
pub fn create_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// Creates `dir` and its missing parents, only the owner can enter.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    create_dir(dir, 0o700)
}

/// The effective uid of this process: the owner of `/proc/self`.
pub fn current_uid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Why a directory is not private to this process's user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotPrivate {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is reachable by other users (mode {mode:04o}); use a directory only its owner can enter")]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error("{path} belongs to uid {owner}, not to this process's uid {uid}")]
    OtherOwner { path: PathBuf, owner: u32, uid: u32 },
}

/// Checks that `dir` exists, is owned by `uid` and is closed to group and
/// others, so a socket or key inside it is reachable by its owner only.
pub fn check_private_dir(dir: &Path, uid: u32) -> Result<(), NotPrivate> {
    let meta = std::fs::metadata(dir).map_err(|source| NotPrivate::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid {
        return Err(NotPrivate::OtherOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    if mode & 0o077 != 0 {
        return Err(NotPrivate::OpenToOthers {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error("data directory {dir} is in use by another process (pid {pid})")]
    InUse { dir: PathBuf, pid: String },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive lock on a data directory, held until dropped. The lock file
/// names the holder's pid so a second process can say who has it. The lock
/// is the kernel's (`flock`): it ends with the process, however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::InUse {
                    dir: dir.to_owned(),
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A unix socket bound by this process, remembered by inode and change time
/// (an inode number alone is reused at once for the next file) so that it is
/// removed only while the file at its path is still the one bound here.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    identity: FileIdentity,
}

type FileIdentity = (u64, u64, i64, i64);

fn identity(meta: &std::fs::Metadata) -> FileIdentity {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl BoundSocket {
    /// Binds `path` with file mode `mode` (creating its directory, 0755, if
    /// missing). A stale socket left by a process that died is replaced; one
    /// that a live process still answers on is refused, never taken over.
    pub fn bind(
        path: &Path,
        mode: u32,
    ) -> std::io::Result<(std::os::unix::net::UnixListener, BoundSocket)> {
        use std::io::{Error, ErrorKind};
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o755)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: another process is listening on it",
                        path.display()
                    ),
                ))
            }
            Ok(_) => std::fs::remove_file(path)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok((
            listener,
            BoundSocket {
                path: path.to_owned(),
                identity: identity(&meta),
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one bound here.
    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if identity(&meta) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_files_are_0600_and_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn existing_directories_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        create_private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o1777);
        let fresh = shared.join("a/b");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&shared.join("a")), 0o700);
    }

    #[test]
    fn open_directories_are_not_private() {
        let dir = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(dir.path(), uid).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = check_private_dir(dir.path(), uid).unwrap_err();
        assert!(err.to_string().contains("mode 1777"), "{err}");
        let err = check_private_dir(dir.path(), uid + 1).unwrap_err();
        assert!(matches!(err, NotPrivate::OtherOwner { .. }), "{err}");
    }

    #[test]
    fn sockets_are_never_taken_from_a_live_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        let (listener, first) = BoundSocket::bind(&path, 0o777).unwrap();
        assert_eq!(mode(&path), 0o777);
        let err = BoundSocket::bind(&path, 0o777).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        // Once nobody listens, the socket is stale and is replaced; the
        // first owner then leaves the new one alone.
        drop(listener);
        let (_listener, second) = BoundSocket::bind(&path, 0o600).unwrap();
        first.remove();
        assert!(path.exists());
        second.remove();
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        let err = BoundSocket::bind(&path, 0o600).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let pid = std::process::id().to_string();
        assert!(
            matches!(&err, LockError::InUse { pid: p, .. } if *p == pid),
            "{err}"
        );
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }
}
