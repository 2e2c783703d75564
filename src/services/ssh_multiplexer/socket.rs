//! The multiplexer's socket file `v1.sock` and its `ssh_config`, placed in
//! the destination only through a directory handle from [`crate::infra::chase`]:
//! a destination path through a symlink another user planted is refused,
//! and a component swapped after the walk changes nothing.
//!
//! `bind(2)` and `connect(2)` take a path, not a directory descriptor; they
//! are given `/proc/self/fd/<dir>/<name>`, which the kernel resolves through
//! the open directory itself (proc(5)), never through the configured path.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::io::Errno;

use crate::infra::chase::{self, DirHandle};
use crate::log;

use super::{MAX_SOCKET_PATH, SOCKET_NAME};

/// The name the socket is bound under before it is renamed into place.
const TEMP_SOCKET_NAME: &str = ".v1.tmp";

/// The bound listener; removes `v1.sock` when dropped if the file is still
/// the one it bound.
pub struct Socket {
    pub listener: UnixListener,
    /// `dest/v1.sock`, for messages and the ssh_config.
    pub path: PathBuf,
    dir: DirHandle,
    /// (device, inode) of the socket file, to tell it from a replacement.
    id: (u64, u64),
    /// An flock on the directory, so that age-based cleaners
    /// (systemd-tmpfiles) skip it while the socket is live.
    _against_cleaners: Option<crate::infra::instance_lock::DirLock>,
}

/// `/proc/self/fd/<dir>/<name>`: `name` in the open directory `dir`.
fn via_fd(dir: &DirHandle, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.fd().as_raw_fd()))
}

impl Socket {
    /// Creates `dest` (0700) if missing and binds `dest/v1.sock` (0600),
    /// replacing a stale socket left by a crash but not a live one.
    pub fn bind(dest: &Path) -> Result<Socket, String> {
        let path = dest.join(SOCKET_NAME);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "{}: path too long for a Unix socket ({len} bytes; at most {MAX_SOCKET_PATH}): choose a shorter destination",
                path.display()
            ));
        }
        let dir = chase::open_dir(dest, true)?;
        remove_if_stale(&dir, &path)?;

        // Bind under a temporary name, set the mode, then rename into place:
        // the socket is never reachable with the umask's mode, and a stale
        // file is replaced atomically.
        dir.remove_file(TEMP_SOCKET_NAME)?;
        let listener = UnixListener::bind(via_fd(&dir, TEMP_SOCKET_NAME))
            .map_err(|e| format!("{}: bind: {e}", path.display()))?;
        let placed = (|| {
            rfs::chmodat(
                dir.fd(),
                TEMP_SOCKET_NAME,
                Mode::from_raw_mode(0o600),
                AtFlags::empty(),
            )?;
            let st = rfs::statat(dir.fd(), TEMP_SOCKET_NAME, AtFlags::SYMLINK_NOFOLLOW)?;
            listener
                .set_nonblocking(true)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::INVAL))?;
            rfs::renameat(dir.fd(), TEMP_SOCKET_NAME, dir.fd(), SOCKET_NAME)?;
            Ok::<_, Errno>((st.st_dev, st.st_ino))
        })();
        match placed {
            Ok(id) => Ok(Socket {
                listener,
                path,
                _against_cleaners: against_cleaners(&dir),
                dir,
                id,
            }),
            Err(e) => {
                let _ = dir.remove_file(TEMP_SOCKET_NAME);
                Err(chase::describe(&path, e))
            }
        }
    }

    pub fn is_ours(&self) -> bool {
        rfs::statat(self.dir.fd(), SOCKET_NAME, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| (st.st_dev, st.st_ino) == self.id)
            .unwrap_or(false)
    }

    pub fn check_still_ours(&self) -> Result<(), String> {
        if self.is_ours() {
            Ok(())
        } else {
            Err(format!(
                "{}: the socket was removed or replaced; binding it again",
                self.path.display()
            ))
        }
    }

    /// Writes `name` (the ssh_config) beside the socket, atomically, after
    /// removing the temp files an earlier run killed mid-write left.
    pub fn write_beside(&self, name: &str, contents: &[u8]) -> Result<PathBuf, String> {
        for entry in self.dir.entries()? {
            if crate::infra::atomic_file::is_temp_of(&entry, name) {
                self.dir.remove_file(&entry)?;
            }
        }
        self.dir.write_atomic(name, contents, 0o600)?;
        Ok(self.dir.join(name))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.is_ours() {
            let _ = self.dir.remove_file(SOCKET_NAME);
        }
    }
}

/// The directory's flock against age-based cleaners; a warning when it
/// cannot be had (the socket may then be removed by one: the service binds
/// it again within a second).
fn against_cleaners(dir: &DirHandle) -> Option<crate::infra::instance_lock::DirLock> {
    let held = crate::infra::instance_lock::hold_dir(dir.fd());
    if held.is_none() {
        log::warn(
            "ssh multiplexer: cannot lock the socket's directory; an age-based cleaner (systemd-tmpfiles) may remove the socket",
            &[("directory", &dir.path().display())],
        );
    }
    held
}

/// Removes `v1.sock` if it is a socket nobody listens on. A live socket
/// (another tbot) or a file that is not a socket is an error, and left alone.
fn remove_if_stale(dir: &DirHandle, path: &Path) -> Result<(), String> {
    match dir.file_type(SOCKET_NAME)? {
        None => return Ok(()),
        Some(FileType::Socket) => {}
        Some(_) => {
            return Err(format!(
                "{}: exists and is not a socket; not replacing it",
                path.display()
            ))
        }
    }
    match UnixStream::connect(via_fd(dir, SOCKET_NAME)) {
        Ok(_) => Err(format!(
            "{}: another process is listening on this socket",
            path.display()
        )),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
            dir.remove_file(SOCKET_NAME)
                .map_err(|e| format!("removing stale socket: {e}"))?;
            log::info(
                "removed a stale ssh multiplexer socket",
                &[("socket", &path.display())],
            );
            Ok(())
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_socket_is_private_replaces_a_stale_one_and_is_removed() {
        let d = TestDir::new("mux-socket");
        let dest = d.0.join("mux");
        let s = Socket::bind(&dest).unwrap();
        let path = dest.join(SOCKET_NAME);
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(UnixStream::connect(&path).is_ok());
        // A second bind while the first listens is refused, and harmless.
        let e = Socket::bind(&dest).err().unwrap();
        assert!(e.contains("another process is listening"), "{e}");
        assert!(s.is_ours());
        drop(s);
        assert!(!path.exists(), "removed when dropped");

        // A stale socket (bound, never removed) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let s = Socket::bind(&dest).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        // Replaced behind its back: not ours, and not removed on drop.
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"x").unwrap();
        assert!(s.check_still_ours().is_err());
        drop(s);
        assert!(path.exists());
        // A file that is not a socket is never removed.
        let e = Socket::bind(&dest).err().unwrap();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn bind_errors_name_the_path() {
        let d = TestDir::new("mux-bind-err");
        let long = d.0.join("x".repeat(120));
        let e = Socket::bind(&long).err().unwrap();
        assert!(e.contains("path too long for a Unix socket"), "{e}");
        assert!(!long.exists(), "nothing created");
        let file = d.0.join("file");
        fs::write(&file, b"").unwrap();
        let e = Socket::bind(&file.join("mux")).err().unwrap();
        assert_eq!(e, format!("{}: not a directory", file.display()));
    }
}
