//! systemd integration, without libsystemd:
//! - [`notify`]: the readiness protocol (sd_notify(3)), one datagram to
//!   `$NOTIFY_SOCKET` (a path, or an abstract name written `@name`);
//! - [`status`]: a `STATUS=` line that follows the health table;
//! - [`watchdog`]: `WATCHDOG=1` pings while tbot's loops respond;
//! - [`journal`]: whether stderr is the journal (`$JOURNAL_STREAM`), so that
//!   log lines carry sd-daemon(3) priority prefixes.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

pub mod journal;
pub mod status;
pub mod watchdog;

static STOPPING: AtomicBool = AtomicBool::new(false);

/// How long `READY=1`, `RELOADING=1` and `STOPPING=1` are tried again
/// while the notify socket has no room; other messages are not.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Tells systemd that tbot is stopping, and why: `STOPPING=1` with the last
/// `STATUS=` line (`stopping on SIGTERM`), in one datagram. No `STATUS=`
/// follows it.
pub fn stopping(signal: &str) {
    STOPPING.store(true, Ordering::SeqCst);
    notify(&format!("STOPPING=1\nSTATUS=stopping on {signal}"));
}

/// Whether [`stopping`] was called.
pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Whether tbot runs under a service manager that listens for
/// notifications (`$NOTIFY_SOCKET` set and not empty).
pub fn notify_socket_set() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// The socket notifications are sent from: one for the process, made
/// before any service starts ([`open_notify_socket`]), so that a process
/// whose services hold every descriptor still pings the watchdog (one made
/// per message failed with EMFILE there, and systemd would have killed a
/// tbot that still served).
static SOCKET: std::sync::OnceLock<UnixDatagram> = std::sync::OnceLock::new();

/// The notify socket (nonblocking, unbound), made now if it was not yet.
/// Errors: no descriptor or socket to be had.
fn notify_socket() -> std::io::Result<&'static UnixDatagram> {
    if let Some(sock) = SOCKET.get() {
        return Ok(sock);
    }
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    // Another thread may have made one meanwhile: then this one closes.
    Ok(SOCKET.get_or_init(|| sock))
}

/// Makes the notify socket when running under a service manager; at
/// start, before any service takes descriptors. An error shows at the
/// first notification.
pub fn open_notify_socket() {
    if notify_socket_set() {
        let _ = notify_socket();
    }
}

/// Whether the last datagram could not be sent.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Sends `state` (e.g. `READY=1`; several assignments are separated by
/// newlines) when running under systemd with `Type=notify`. Errors are
/// never fatal; the first of a run of them is a warning, the others (a
/// watchdog ping every period to a socket that is gone) debug lines.
///
/// Never waits for good: the datagram is sent without blocking, and one the
/// receiver has no room for (systemd busy, a container's notify proxy that
/// stopped reading: `EAGAIN`) is dropped like any other failure. Waiting
/// there would hold whichever thread notifies: the watchdog, the status
/// line, or the main thread on its way to stopping. The messages systemd
/// acts on once (`READY=1`, `RELOADING=1`, `STOPPING=1`) are tried again
/// for up to [`PATIENCE`] first: a dropped `READY=1` fails the unit's
/// start. `WATCHDOG=1` and `STATUS=` lines are dropped at once (the next
/// one follows).
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return;
    };
    let once = ["READY=", "RELOADING=", "STOPPING="]
        .iter()
        .any(|p| state.starts_with(p));
    let send = |sock: &UnixDatagram| {
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &target)
        }
    };
    let sent = notify_socket().and_then(|sock| {
        let end = std::time::Instant::now() + PATIENCE;
        loop {
            match send(sock) {
                Err(e)
                    if once
                        && e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < end =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    });
    let socket = target.to_string_lossy().into_owned();
    let fields: crate::log::Fields = &[("state", &state), ("socket", &socket)];
    match sent {
        Ok(_) => {
            if FAILING.swap(false, Ordering::Relaxed) {
                crate::log::info("notifying systemd works again", fields);
            }
            crate::log::debug("notified systemd", &[("state", &state)]);
        }
        Err(e) => {
            let first = !FAILING.swap(true, Ordering::Relaxed);
            let fields = &[fields[0], fields[1], ("error", &e)];
            if first {
                crate::log::warn("cannot notify systemd", fields);
            } else {
                crate::log::debug("cannot notify systemd", fields);
            }
        }
    }
}
