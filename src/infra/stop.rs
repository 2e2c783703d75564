//! One way to stop: a [`Stopper`] (the daemon's end) and the [`Stop`] it
//! fires (the end a thread waits on; cheap to clone).
//!
//! A [`Stop`] is two things that fire together: a channel that disconnects
//! (for `crossbeam_channel::select!` and timed sleeps) and a descriptor
//! that becomes readable, for good (for poll(2) beside a thread's own
//! descriptors, with no timer). Nothing is ever sent or written: dropping
//! the [`Stopper`] is the signal. It drops the channel first, then the
//! descriptor, so that a thread woken by the descriptor already finds
//! [`Stop::is_set`] true.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

/// The daemon's end: dropping it (or [`Stopper::fire`]) stops every clone
/// of its [`Stop`].
pub struct Stopper {
    channel: Option<Sender<()>>,
    fd: Option<UnixStream>,
}

impl Stopper {
    /// Fires the stop now (the same as dropping it).
    pub fn fire(self) {}
}

impl Drop for Stopper {
    fn drop(&mut self) {
        // The order is the point: the channel, then the descriptor.
        drop(self.channel.take());
        drop(self.fd.take());
    }
}

/// The waiting end of a stop signal.
#[derive(Clone)]
pub struct Stop {
    channel: Receiver<()>,
    fd: Arc<OwnedFd>,
}

impl Stop {
    /// A new stop signal and its stopper. Errors: no descriptors left for
    /// the socket pair.
    pub fn new() -> std::io::Result<(Stopper, Stop)> {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let (waiting_end, stopper_end) = UnixStream::pair()?;
        Ok((
            Stopper {
                channel: Some(tx),
                fd: Some(stopper_end),
            },
            Stop {
                channel: rx,
                fd: Arc::new(OwnedFd::from(waiting_end)),
            },
        ))
    }

    /// Never yields a value; becomes ready (disconnected) at the stop.
    /// Use it in `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.channel
    }

    /// Never readable until the stop; from then on readable (end of file,
    /// `POLLIN | POLLHUP`) for good.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True once the stop has fired.
    pub fn is_set(&self) -> bool {
        matches!(self.channel.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps `d` unless the stop fires first. Returns false when stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        !matches!(
            self.channel.recv_timeout(d),
            Err(RecvTimeoutError::Disconnected)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::poll::wait_readable;

    #[test]
    fn a_dropped_stopper_fires_the_channel_then_the_descriptor() {
        let (stopper, stop) = Stop::new().unwrap();
        let other = stop.clone();
        assert!(!stop.is_set());
        assert!(!wait_readable(stop.fd(), Duration::ZERO).unwrap());
        assert!(stop.sleep(Duration::from_millis(1)));
        let waiter = std::thread::spawn(move || {
            // Woken by the descriptor: the channel has fired already.
            assert!(wait_readable(other.fd(), Duration::from_secs(10)).unwrap());
            other.is_set()
        });
        std::thread::sleep(Duration::from_millis(20));
        stopper.fire();
        assert!(waiter.join().unwrap());
        assert!(stop.is_set());
        assert!(!stop.sleep(Duration::from_secs(10)));
        assert!(wait_readable(stop.fd(), Duration::ZERO).unwrap());
    }
}
