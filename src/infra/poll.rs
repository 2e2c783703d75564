//! poll(2), for the threads that wait on descriptors rather than on a timer.
//!
//! Through rustix's `poll` (ppoll(2) underneath): descriptors are borrowed
//! for the call, so no descriptor number can outlive what it names, and no
//! `unsafe` is needed here. A slot not in use this turn is simply left out.

use std::io::{self, ErrorKind};
use std::os::fd::AsFd;
use std::time::Duration;

pub use rustix::event::{PollFd, PollFlags};

/// poll(2) on `fds` for at most `timeout` (None: until one is ready), again
/// after EINTR (with the whole timeout: callers recompute deadlines from
/// the clock); the number of ready descriptors.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    // A timeout too long for a timespec (centuries) waits without one.
    let timeout = timeout.and_then(|t| rustix::time::Timespec::try_from(t).ok());
    loop {
        match rustix::event::poll(fds, timeout.as_ref()) {
            Ok(n) => return Ok(n),
            Err(e) => {
                let e = io::Error::from(e);
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Whether poll reported anything on `fd`: readiness asked for, or
/// POLLHUP/POLLERR, which poll(2) always reports.
pub fn woke(fd: &PollFd<'_>) -> bool {
    !fd.revents().is_empty()
}

/// Waits until `fd` is readable (or hung up); false on timeout.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> io::Result<bool> {
    poll(&mut [PollFd::new(&fd, PollFlags::IN)], Some(timeout)).map(|n| n > 0)
}

/// Waits until `fd` can be written to, without a time limit.
pub fn wait_writable(fd: impl AsFd) -> io::Result<()> {
    poll(&mut [PollFd::new(&fd, PollFlags::OUT)], None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn readable_after_a_write_and_a_timeout_before() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        assert!(!wait_readable(&a, Duration::from_millis(30)).unwrap());
        assert!(t0.elapsed() >= Duration::from_millis(30));
        b.write_all(b"x").unwrap();
        assert!(wait_readable(&a, Duration::from_secs(5)).unwrap());
        wait_writable(&a).unwrap();
    }
}
