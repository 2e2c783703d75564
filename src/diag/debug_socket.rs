//! The local debug socket's file (`<storage>/debug.sock`, or
//! `debug_socket:`): made mode 0600 before anyone can connect, and removed
//! when tbot stops. Who may use it is [`super::front`]'s rule (the mode,
//! and each peer's `SO_PEERCRED`).

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// The socket's mode: tbot's user only (root passes by privilege).
pub const MODE: u32 = 0o600;
/// Connections the kernel queues for accept(2).
const BACKLOG: i32 = 64;

/// A bound, listening debug socket and its path.
#[derive(Debug)]
pub struct DebugSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
}

/// Makes the socket at `path`: bound, set to [`MODE`], then listening
/// (connect(2) is refused until listen(2), so no one gets in under the
/// umask's mode). A stale socket there (no one listening) is replaced; a
/// live one, or a file that is not a socket, is an error naming the path.
pub fn bind(path: &Path) -> Result<DebugSocket, String> {
    let at = |e: &dyn std::fmt::Display| format!("debug socket {}: {e}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(at(&"another process listens on it")),
            Err(_) => std::fs::remove_file(path).map_err(|e| at(&e))?,
        },
        Ok(_) => return Err(at(&"exists and is not a socket; not replaced")),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(at(&e)),
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| at(&e))?;
    let fd: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| at(&e))?;
    rustix::net::bind(&fd, &addr).map_err(|e| at(&e))?;
    let listening = std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE))
        .map_err(|e| at(&e))
        .and_then(|()| rustix::net::listen(&fd, BACKLOG).map_err(|e| at(&e)));
    if let Err(e) = listening {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(DebugSocket {
        listener: UnixListener::from(fd),
        path: path.to_path_buf(),
    })
}

/// [`bind`], or None with a warning: tbot's work does not depend on the
/// socket (a storage directory tbot cannot write is its services' to
/// report), so one that cannot be made does not stop a start.
pub fn bind_or_warn(path: &Path) -> Option<DebugSocket> {
    match bind(path) {
        Ok(s) => Some(s),
        Err(e) => {
            crate::log::warn(
                "no debug socket: tbot status and tbot debug will not reach this bot",
                &[("error", &e)],
            );
            None
        }
    }
}

/// Removes the socket file at `path` if it is still the one bound
/// (a socket): at stop.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn made_0600_replacing_a_stale_one_and_refusing_the_rest() {
        let dir = crate::testutil::TestDir::new("debug-sock");
        let path = dir.0.join("debug.sock");
        let s = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, MODE);
        assert!(UnixStream::connect(&path).is_ok());
        // A live one is not taken over.
        assert!(bind(&path).unwrap_err().contains("another process"));
        drop(s);
        // A stale one is.
        let s = bind(&path).unwrap();
        drop(s);
        remove(&path);
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        assert!(bind(&path).unwrap_err().contains("not a socket"));
        remove(&path);
        assert!(path.exists());
    }
}
