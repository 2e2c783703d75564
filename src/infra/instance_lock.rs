//! What tells one live tbot from another: locks held for the process's
//! lifetime (flock(2)), never a PID.
//!
//! PIDs repeat across PID namespaces (every containerised tbot is PID 1),
//! so two tbots sharing a temp or storage directory (an emptyDir at /tmp,
//! `docker run -v /tmp:/tmp`) cannot tell each other apart by PID. An
//! flock is held by an open file description, is released by the kernel when
//! the process dies however it dies (SIGKILL, OOM), and is seen across
//! namespaces on the same filesystem: "can I take its lock?" is the one
//! reliable "is its owner gone?".
//!
//! - The storage directory: `STORAGE/tbot.lock`, held by `tbot start` (daemon
//!   and `--oneshot`) from start to exit. A second tbot on the same storage
//!   refuses to start: it would overwrite `heartbeat.json` and fight over the CA.
//! - The diagnostics service's private socket directory: the directory
//!   itself is flocked (see `diag::private_dir`).
//!
//! The same locks keep live runtime files from looking abandoned to
//! age-based cleaners: systemd-tmpfiles takes a shared flock on each
//! directory it ages and skips one (and everything below it) whose lock is
//! taken (tmpfiles.d(5), "Age"). So tbot holds an exclusive flock on every
//! directory whose files must outlive any age: the diagnostics socket
//! directory, the storage directory ([`lock_storage`], beside its lock
//! file) and each multiplexer's socket directory ([`hold_dir`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// The lock file in the storage directory.
pub const STORAGE_LOCK_FILE: &str = "tbot.lock";

/// A lock held until dropped (or the process ends).
#[derive(Debug)]
pub struct Held {
    _file: File,
    /// The storage directory itself, held against cleaners.
    _dir: Option<DirLock>,
}

/// A directory's flock (see [`hold_dir`]), held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _dir: std::os::fd::OwnedFd,
}

/// Takes an exclusive flock on the directory `dir` (any handle to it, an
/// `O_PATH` one included: it is opened again for the lock), held as long as
/// the result lives, so that age-based cleaners skip it and everything below
/// it. A lock held at this moment by someone else (a cleaner scanning, with
/// its shared lock) is tried again for up to 200 ms; None after that, or
/// when the directory cannot be opened: the caller runs on without it.
pub fn hold_dir(dir: std::os::fd::BorrowedFd<'_>) -> Option<DirLock> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, ".", flags, Mode::empty()).ok()?;
    for _ in 0..10 {
        match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Some(DirLock { _dir: fd }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(_) => return None,
        }
    }
    None
}

/// Takes an exclusive flock on `file` without waiting. `Ok(false)` when
/// another open file description (another process, or another open in this
/// one) holds it.
pub fn try_flock(file: &File) -> io::Result<bool> {
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why the storage lock was not taken.
#[derive(Debug)]
pub enum StorageLockError {
    /// Another tbot holds it: refuse to start.
    InUse(String),
    /// The storage directory cannot hold a lock file (not a directory, no
    /// permission, read-only): the services that use the storage report the
    /// same problem, and recover when it is fixed; tbot runs without the lock.
    Unusable(String),
}

/// Opens (creating, mode 0600, not following a symlink) and locks
/// `STORAGE/tbot.lock`, creating the storage directory (0700) when missing.
/// Errors are worded for the operator: the path and what is wrong.
pub fn lock_storage(storage: &Path) -> Result<Held, StorageLockError> {
    let unusable = |e: String| StorageLockError::Unusable(format!("storage lock: {e}"));
    crate::infra::fsutil::create_private_dir(storage).map_err(unusable)?;
    let path = storage.join(STORAGE_LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| unusable(format!("{}: {e}", path.display())))?;
    match try_flock(&file) {
        Ok(true) => {
            // Against age-based cleaners (see the module documentation):
            // the CA key is never rewritten, so its age only grows.
            let dir = File::open(storage).ok();
            let held_dir = dir.as_ref().and_then(|d| {
                use std::os::fd::AsFd;
                hold_dir(d.as_fd())
            });
            Ok(Held {
                _file: file,
                _dir: held_dir,
            })
        }
        Ok(false) => Err(StorageLockError::InUse(format!(
            "storage directory {} is in use by another tbot (it holds {}); \
             run one tbot per storage directory, or give this one its own",
            storage.display(),
            path.display()
        ))),
        Err(e) => Err(unusable(format!("{}: {e}", path.display()))),
    }
}

/// Locks the directory `dir` itself (its open descriptor) for as long as the
/// result lives. `Ok(None)` when someone else holds it.
///
/// The caller may have created `dir` a moment before: another instance's
/// stale-directory cleanup can take the lock and remove the directory between
/// the mkdir and this call. So, once locked, `dir` must still be the very
/// directory that was locked (same device and inode); if not, the lock is
/// dropped and an error of kind `NotFound` returned, for the caller to
/// start again with a new directory.
pub fn lock_dir(dir: &Path) -> io::Result<Option<Held>> {
    let file = File::open(dir)?;
    if !try_flock(&file)? {
        return Ok(None);
    }
    let locked = file.metadata()?;
    let now = std::fs::symlink_metadata(dir)?;
    if (locked.dev(), locked.ino()) != (now.dev(), now.ino()) || locked.nlink() == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: removed while being locked", dir.display()),
        ));
    }
    Ok(Some(Held {
        _file: file,
        _dir: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    #[test]
    fn a_second_lock_on_the_same_storage_is_refused_until_the_first_goes() {
        let d = TestDir::new("storage-lock");
        let storage = d.0.join("storage");
        let first = lock_storage(&storage).unwrap();
        let Err(StorageLockError::InUse(err)) = lock_storage(&storage) else {
            panic!("not refused")
        };
        assert!(err.contains("in use by another tbot"), "{err}");
        assert!(err.contains(&storage.display().to_string()), "{err}");
        drop(first);
        lock_storage(&storage).unwrap();
        // A storage path that cannot be a directory is another matter.
        let file = d.0.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            lock_storage(&file),
            Err(StorageLockError::Unusable(_))
        ));
    }

    #[test]
    fn a_locked_dir_is_held_and_a_removed_one_is_noticed() {
        let d = TestDir::new("dir-lock");
        let a = d.0.join("a");
        std::fs::create_dir(&a).unwrap();
        let held = lock_dir(&a).unwrap().unwrap();
        assert!(lock_dir(&a).unwrap().is_none());
        drop(held);
        assert!(lock_dir(&a).unwrap().is_some());
    }
}
