//! Log followers: peers of the local debug socket that asked for the live
//! log lines (`GET /debug/logs?level=L`, `tbot debug logs`). At most
//! [`MAX_FOLLOWERS`] at once; each gets every line at its level or above,
//! as written to stderr (text or JSON, without the journal's priority
//! prefix), whatever level stderr is written at.
//!
//! A follower never slows the daemon: the thread that logs writes the line
//! to each follower's socket without waiting (`MSG_DONTWAIT`). A follower
//! whose socket cannot take a whole line now (it has not read the last
//! [`SEND_BUFFER_BYTES`] or so) is dropped there and then, its socket
//! closed, with a warning; one that went away is dropped at its next line,
//! or when a new follower looks for room.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustix::net::{RecvFlags, SendFlags};

/// Followers at once; one more is answered 503.
pub const MAX_FOLLOWERS: usize = 4;
/// The send buffer asked for each follower's socket (the kernel doubles
/// it): how far a follower may fall behind before it is dropped.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// The answer's head: the body is the lines, until the connection closes
/// (RFC 9112 §6.3: no length, `Connection: close`).
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";

struct Follower {
    sock: UnixStream,
    /// Lines at this level or above (0 debug … 3 error).
    level: u8,
}

/// The lowest level a follower wants; [`NONE`] when there is none.
static WANTS: AtomicU8 = AtomicU8::new(NONE);
const NONE: u8 = u8::MAX;
static FOLLOWERS: Mutex<Vec<Follower>> = Mutex::new(Vec::new());

fn followers() -> MutexGuard<'static, Vec<Follower>> {
    FOLLOWERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether some follower wants lines at `level` (one atomic load: the
/// cost of followers to a line nobody follows).
pub fn wants(level: u8) -> bool {
    level >= WANTS.load(Ordering::Relaxed)
}

fn update(list: &[Follower]) {
    let lowest = list.iter().map(|f| f.level).min().unwrap_or(NONE);
    WANTS.store(lowest, Ordering::Relaxed);
}

/// Whether the peer of `sock` has closed its end (it will read no more).
fn gone(sock: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        rustix::net::recv(sock, &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT),
        Ok((0, _)) | Err(rustix::io::Errno::CONNRESET | rustix::io::Errno::PIPE)
    )
}

/// Writes all of `bytes` now or not at all: false when the socket could
/// not take it whole (the follower is behind) or is broken.
fn write_now(sock: &UnixStream, bytes: &[u8]) -> bool {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    matches!(rustix::net::send(sock, bytes, flags), Ok(n) if n == bytes.len())
}

/// Makes `sock` (a local debug socket connection whose request was read
/// whole) a follower of lines at `level` and above: writes the answer's
/// head on it. Errs with the reason to answer when there is no room
/// (503) or the socket cannot be used.
pub fn subscribe(sock: UnixStream, level: u8) -> Result<(), &'static str> {
    let mut list = followers();
    list.retain(|f| !gone(&f.sock));
    update(&list);
    if list.len() >= MAX_FOLLOWERS {
        return Err("as many log followers as tbot takes (4) already; try again later");
    }
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&sock, SEND_BUFFER_BYTES);
    if sock.set_nonblocking(true).is_err() || !write_now(&sock, HEAD) {
        return Err("the log stream could not start");
    }
    list.push(Follower { sock, level });
    update(&list);
    drop(list);
    super::info(
        "log follower joined",
        &[("level", &super::level_name(level))],
    );
    Ok(())
}

/// Writes `line` (a whole line, ending in a newline) to every follower of
/// `level`, dropping those that cannot take it now.
pub fn publish(level: u8, line: &[u8]) {
    if !wants(level) {
        return;
    }
    let mut behind = 0usize;
    {
        let mut list = followers();
        list.retain(|f| {
            if level < f.level || write_now(&f.sock, line) {
                return true;
            }
            if !gone(&f.sock) {
                behind += 1;
            }
            false
        });
        update(&list);
    }
    // After the lock: this line goes to the followers left.
    if behind > 0 {
        super::warn(
            "log follower dropped: it did not read its lines",
            &[("dropped", &behind)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Unit tests share the process-wide list: one test.
    #[test]
    fn a_follower_gets_its_lines_and_one_that_does_not_read_is_dropped() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        subscribe(ours, 2).unwrap();
        assert!(wants(2) && wants(3) && !wants(1));
        publish(1, b"info line\n");
        publish(2, b"warn line\n");
        let mut got = vec![0u8; 4096];
        theirs.set_nonblocking(true).unwrap();
        let n = theirs.read(&mut got).unwrap();
        let got = String::from_utf8_lossy(&got[..n]).to_string();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nwarn line\n"), "{got}");
        // It stops reading: the lines pile up until one does not fit.
        let line = vec![b'x'; 1000];
        for _ in 0..10_000 {
            publish(3, &line);
            if !wants(3) {
                break;
            }
        }
        assert!(!wants(3), "never dropped");
        assert!(followers().is_empty());
    }
}
