//! poll(2), for the threads that wait on descriptors rather than on a timer.
//!
//! Through libc rather than rustix: callers poll raw descriptor numbers
//! (including -1 for a slot not in use this turn), which rustix's `PollFd`
//! would only take as borrowed descriptors.

use std::io::{self, ErrorKind};
use std::os::fd::RawFd;
use std::time::Duration;

/// A `pollfd` asking for `events` on `fd` (a negative `fd` is ignored by poll).
pub fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// poll(2) on `fds` for at most `timeout` (None: until one is ready), again
/// after EINTR; the number of ready descriptors. A timeout is rounded up to
/// the next millisecond, so that a deadline less than 1 ms away is slept to
/// rather than spun on.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        Some(t) => {
            libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
        }
    };
    loop {
        // SAFETY: a valid, initialised slice of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits until `fd` is readable (or hung up); false on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    poll(&mut [pollfd(fd, libc::POLLIN)], Some(timeout)).map(|n| n > 0)
}

/// Waits until `fd` can be written to, without a time limit.
pub fn wait_writable(fd: RawFd) -> io::Result<()> {
    poll(&mut [pollfd(fd, libc::POLLOUT)], None).map(|_| ())
}
