//! The multiplexer's socket file `v1.sock` and its `ssh_config`, placed in
//! the destination through a directory handle from [`crate::infra::chase`]:
//! a destination path through a symlink another user planted is refused.
//!
//! `bind(2)` takes a path, not a directory descriptor, and the path it is
//! given is the socket's name for good (`ss -x`, `/proc/net/unix`, a
//! client's `getpeername`). So it is given the socket's real path,
//! `DEST/v1.sock`, and what it created is checked through the directory
//! handle before anyone can connect: `v1.sock` there must be a socket owned
//! by tbot's user, which nobody else can create; if a component was swapped
//! during the bind, the socket is not there and the bind is refused. Only
//! then are its mode (0600) and readers' ACL set and `listen(2)` called: a
//! connection before `listen` is refused, so the socket is never usable
//! with the umask's mode. `connect(2)` in [`remove_if_stale`] goes through
//! `/proc/self/fd/<dir>/v1.sock`, which the kernel resolves through the
//! open directory itself (proc(5)).

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::infra::acl::{Kind, Policy};
use crate::infra::chase::{self, DirHandle};
use crate::log;

use super::{MAX_SOCKET_PATH, SOCKET_NAME, SSH_CONFIG_NAME};

/// The name older versions bound the socket under before renaming it into
/// place: removed when found.
const OLD_TEMP_SOCKET_NAME: &str = ".v1.tmp";

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
    /// Creates `dest` (0700) if missing and binds `dest/v1.sock` (0600,
    /// and the readers' ACL of `readers`), replacing a stale socket left by
    /// a crash but not a live one. `dest` must be absolute.
    pub fn bind(dest: &Path, readers: &mut Policy) -> Result<Socket, String> {
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
        dir.remove_file(OLD_TEMP_SOCKET_NAME)?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| chase::describe(&path, e))?;
        let addr = SocketAddrUnix::new(path.as_path()).map_err(|e| chase::describe(&path, e))?;
        rustix::net::bind(&fd, &addr)
            .map_err(|e| format!("{}: bind: {}", path.display(), std::io::Error::from(e)))?;
        let id = match place(&dir, &path, &fd, readers) {
            Ok(id) => id,
            Err((e, ours)) => {
                if ours {
                    let _ = dir.remove_file(SOCKET_NAME);
                }
                return Err(e);
            }
        };
        Ok(Socket {
            listener: UnixListener::from(fd),
            path,
            _against_cleaners: against_cleaners(&dir),
            dir,
            id,
        })
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
    /// removing the temp files an earlier run killed mid-write left, and
    /// gives the readers read on it.
    pub fn write_beside(
        &self,
        name: &str,
        contents: &[u8],
        readers: &mut Policy,
    ) -> Result<PathBuf, String> {
        for entry in self.dir.entries()? {
            if crate::infra::atomic_file::is_temp_of(&entry, name) {
                self.dir.remove_file(&entry)?;
            }
        }
        self.dir.write_atomic(name, contents, 0o600)?;
        readers.apply(&[(&self.dir, Some(name), Kind::File)])?;
        Ok(self.dir.join(name))
    }
}

/// Checks that the bound socket is `v1.sock` in `dir`, sets its mode and
/// the readers' ACL, and starts listening. Returns its (device, inode), or
/// the error and whether the file in `dir` is ours to remove.
fn place(
    dir: &DirHandle,
    path: &Path,
    fd: &OwnedFd,
    readers: &mut Policy,
) -> Result<(u64, u64), (String, bool)> {
    let st = match rfs::statat(dir.fd(), SOCKET_NAME, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => {
            return Err((
                format!(
                    "{}: the bound socket is not in the destination opened ({}): was a path component replaced during the bind?",
                    path.display(),
                    std::io::Error::from(e)
                ),
                false,
            ))
        }
    };
    // What this proves: a socket of tbot's user is `v1.sock` in the
    // directory tbot opened. What it does not: that it is the very socket
    // `fd` bound. fstat(2) on a socket descriptor gives sockfs's inode, not
    // the file's, and only sock_diag (UNIX_DIAG_VFS, what `ss` reads) links
    // the two, which is not cheap here. The residual: another socket of
    // tbot's own user swapped in between bind(2) and this check, which
    // needs tbot's uid (or root) and so changes nothing anyone else could
    // reach; a later swap is seen by `check_still_ours`.
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket
        || st.st_uid != rustix::process::geteuid().as_raw()
    {
        return Err((
            format!(
                "{}: not the socket tbot bound (uid {}): was a path component replaced during the bind?",
                path.display(),
                st.st_uid
            ),
            false,
        ));
    }
    rfs::chmodat(
        dir.fd(),
        SOCKET_NAME,
        Mode::from_raw_mode(0o600),
        AtFlags::empty(),
    )
    .map_err(|e| (chase::describe(path, e), true))?;
    readers
        .apply(&[
            (dir, None, Kind::Dir),
            (dir, Some(SOCKET_NAME), Kind::Socket),
        ])
        .map_err(|e| (e, true))?;
    rustix::net::listen(fd, libc::SOMAXCONN).map_err(|e| {
        (
            format!("{}: listen: {}", path.display(), std::io::Error::from(e)),
            true,
        )
    })?;
    Ok((st.st_dev, st.st_ino))
}

/// Applies `readers` to what the multiplexer's destination holds now (a
/// reload changed them): the directory, `v1.sock`, `ssh_config`.
pub fn grant_current(dest: &Path, readers: &mut Policy) -> Result<(), String> {
    let Ok(dir) = chase::open_dir(dest, false) else {
        return Ok(());
    };
    let mut objects = vec![(&dir, None, Kind::Dir)];
    if dir.file_type(SOCKET_NAME)? == Some(FileType::Socket) {
        objects.push((&dir, Some(SOCKET_NAME), Kind::Socket));
    }
    if dir.file_type(SSH_CONFIG_NAME)? == Some(FileType::RegularFile) {
        objects.push((&dir, Some(SSH_CONFIG_NAME), Kind::File));
    }
    readers.reapply(&objects)
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

    fn plain() -> Policy {
        Policy::new("t", crate::infra::acl::Access::default())
    }

    #[test]
    fn the_socket_is_private_replaces_a_stale_one_and_is_removed() {
        let d = TestDir::new("mux-socket");
        let dest = d.0.join("mux");
        let s = Socket::bind(&dest, &mut plain()).unwrap();
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
        let e = Socket::bind(&dest, &mut plain()).err().unwrap();
        assert!(e.contains("another process is listening"), "{e}");
        assert!(s.is_ours());
        drop(s);
        assert!(!path.exists(), "removed when dropped");

        // A stale socket (bound, never removed) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let s = Socket::bind(&dest, &mut plain()).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        // Replaced behind its back: not ours, and not removed on drop.
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"x").unwrap();
        assert!(s.check_still_ours().is_err());
        drop(s);
        assert!(path.exists());
        // A file that is not a socket is never removed.
        let e = Socket::bind(&dest, &mut plain()).err().unwrap();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    /// A bound socket, not listening, at `path`.
    fn bound_at(path: &Path) -> OwnedFd {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
        fd
    }

    #[test]
    fn a_bind_that_landed_elsewhere_or_on_a_foreign_socket_is_refused() {
        let d = TestDir::new("mux-place");
        let dir = chase::open_dir(&d.0.join("dest"), true).unwrap();
        let path = d.0.join("dest").join(SOCKET_NAME);
        // The bind went elsewhere (a component swapped during it): nothing
        // in the directory opened, nothing removed there.
        fs::create_dir(d.0.join("elsewhere")).unwrap();
        let fd = bound_at(&d.0.join("elsewhere").join(SOCKET_NAME));
        let (e, ours) = place(&dir, &path, &fd, &mut plain()).unwrap_err();
        assert!(e.contains("is not in the destination opened"), "{e}");
        assert!(!ours);
        // A socket there that tbot's user does not own (as root: chown it).
        if rustix::process::geteuid().is_root() {
            let fd = bound_at(&path);
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let (e, ours) = place(&dir, &path, &fd, &mut plain()).unwrap_err();
            assert!(e.contains("not the socket tbot bound (uid 65534)"), "{e}");
            assert!(!ours, "someone else's file is never removed");
            assert!(path.exists());
        }
    }

    #[test]
    fn bind_errors_name_the_path() {
        let d = TestDir::new("mux-bind-err");
        let long = d.0.join("x".repeat(120));
        let e = Socket::bind(&long, &mut plain()).err().unwrap();
        assert!(e.contains("path too long for a Unix socket"), "{e}");
        assert!(!long.exists(), "nothing created");
        let file = d.0.join("file");
        fs::write(&file, b"").unwrap();
        let e = Socket::bind(&file.join("mux"), &mut plain()).err().unwrap();
        assert_eq!(e, format!("{}: not a directory", file.display()));
    }
}
