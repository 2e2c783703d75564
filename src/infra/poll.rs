//! poll(2), for the threads that wait on descriptors rather than on a timer.

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
