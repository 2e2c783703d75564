//! The hardened-socket toolkit of tbot's public entry points (the
//! multiplexer socket and the diagnostics front): descriptors held in
//! reserve for running out of them, the out-of-descriptors check, and the lingering
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

/// Descriptors held in reserve (`/dev/null`), given up when the process is
/// out of them, so that the work that must not fail for want of one still
/// gets a number: accepting a probe and the connection that answers it (the
/// diagnostics front), or refusing a client with the reason rather than
/// leaving it waiting (both public sockets).
///
/// Linux gives the lowest free number to whichever thread asks next
/// (open(2)), so a descriptor given up is only the caller's if it asks at
/// once: release, then accept or connect, with nothing in between.
pub struct Reserve {
    held: Vec<File>,
    size: usize,
}

impl Reserve {
    /// Holds `size` descriptors, or as many as can be had
    /// ([`Reserve::refill`] tries again).
    pub fn new(size: usize) -> Reserve {
        let mut r = Reserve {
            held: Vec::with_capacity(size),
            size,
        };
        r.refill();
        r
    }

    /// Descriptors held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Gives up at most `n` descriptors; returns how many were given up.
    pub fn release(&mut self, n: usize) -> usize {
        let n = n.min(self.held.len());
        self.held.truncate(self.held.len() - n);
        n
    }

    /// Holds its full size again, as far as descriptors are free.
    pub fn refill(&mut self) {
        while self.held.len() < self.size {
            match File::open("/dev/null") {
                Ok(f) => self.held.push(f),
                Err(_) => return,
            }
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
        // The reserve comes and goes.
        let mut reserve = Reserve::new(3);
        assert_eq!(reserve.held(), 3);
        assert_eq!(reserve.release(2), 2);
        assert_eq!(reserve.held(), 1);
        assert_eq!(reserve.release(2), 1);
        assert_eq!(reserve.release(1), 0);
        reserve.refill();
        assert_eq!(reserve.held(), 3);
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
