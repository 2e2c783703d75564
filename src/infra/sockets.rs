//! The hardened-socket toolkit of tbot's public entry points (the
//! multiplexer socket and the diagnostics front): a spare descriptor for
//! running out of them, the out-of-descriptors check, and the lingering
//! close.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::infra::poll::wait_readable;

/// Longest path a Unix socket can be bound to (unix(7): `sun_path` is 108
/// bytes, its terminating NUL included).
pub const MAX_UNIX_SOCKET_PATH: usize = 107;

/// accept(2) failed for want of descriptors (or kernel memory): EMFILE,
/// ENFILE, ENOBUFS, ENOMEM. Clients can cause this at will.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A descriptor held in reserve (`/dev/null`), given up to accept and
/// refuse one waiting client when out of descriptors, so that the client
/// is told why rather than left waiting.
pub struct Spare(Option<File>);

impl Spare {
    /// Holds one (none if even that fails; [`Spare::restore`] tries again).
    pub fn new() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Gives the descriptor up. False if none was held.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Whether the descriptor is held (not given up).
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Holds one again if none is held.
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// The lingering close, one step: reads and drops what a nonblocking
/// socket holds; true once the client is done (EOF, an error, or `max`
/// bytes read in all, counted in `total`). A socket closed with unread data
/// resets its peer, which would then fail to read the reason it was sent.
pub fn drained(mut s: impl Read, total: &mut usize, max: usize) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                *total += n;
                if *total >= max {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The lingering close on a thread that may block: reads and drops what
/// the client sends until it is done, for at most `time` and `max` bytes.
/// The socket is made nonblocking.
pub fn linger(s: &UnixStream, time: Duration, max: usize) {
    if s.set_nonblocking(true).is_err() {
        return;
    }
    let end = Instant::now() + time;
    let mut total = 0;
    while !drained(s, &mut total, max) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || wait_readable(s, left).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn draining_reads_until_eof_or_the_byte_cap() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut total = 0;
        // Nothing yet: not done.
        assert!(!drained(&a, &mut total, 10));
        b.write_all(b"12345").unwrap();
        assert!(!drained(&a, &mut total, 10));
        assert_eq!(total, 5);
        // Past the cap: done, whatever follows.
        b.write_all(b"67890").unwrap();
        assert!(drained(&a, &mut total, 10));
        // EOF: done.
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        drop(b);
        assert!(drained(&a, &mut 0, 10));
        // The spare comes and goes.
        let mut spare = Spare::new();
        assert!(spare.is_held());
        assert!(spare.release());
        assert!(!spare.is_held());
        assert!(!spare.release());
        spare.restore();
        assert!(spare.release());
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
