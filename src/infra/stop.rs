//! How tbot stops its long-lived threads: a [`Stopper`] (the owner's end)
//! and the [`Stop`] it fires (the end the thread waits on; cheap to clone).
//! The services, the diagnostics front and renderer, and the systemd
//! notifiers wait on one of these. Other threads end another way: the
//! health applier when its channel's senders are gone, the diagnostics
//! serving loop through tiny_http's `unblock`, helper threads (a
//! connection's relay, a profile, a reload's readers) when their work is
//! done.
//!
//! A [`Stop`] is a flag and a channel that fire together, and costs no
//! descriptor: the channel disconnects (for `crossbeam_channel::select!`
//! and timed sleeps) and [`Stop::is_set`] turns true. A thread that waits
//! in poll(2) or epoll beside descriptors of its own (the multiplexer, an
//! inotify wait, the diagnostics front) asks for [`Stop::fd`]: an eventfd
//! made on that first call, readable from the stop on. Nothing is ever
//! sent on the channel: dropping the [`Stopper`] is the signal. The flag is
//! set first, so that a thread woken by the channel or the descriptor
//! already finds [`Stop::is_set`] true.
//!
//! The descriptor can also carry wake-ups that are not a stop
//! ([`Stop::wake`], read off with [`Stop::take_wakes`]): the front's one
//! descriptor takes both the stop and the systemd watchdog's pokes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustix::event::{eventfd, EventfdFlags};

struct Inner {
    fired: AtomicBool,
    /// Dropped at the stop: `rx` then disconnects.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
    /// Made on the first [`Stop::fd`] only.
    fd: OnceLock<OwnedFd>,
    /// Orders the descriptor's making against the stop (see [`Stop::fd`]).
    making_fd: Mutex<()>,
}

impl Inner {
    /// Adds one to the eventfd's counter, if there is one. Never blocks (a
    /// full counter is readable already).
    fn kick(&self) {
        if let Some(fd) = self.fd.get() {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }
}

/// The owner's end: dropping it (or [`Stopper::fire`]) stops every clone
/// of its [`Stop`].
pub struct Stopper(Arc<Inner>);

impl Stopper {
    /// Fires the stop now (the same as dropping it).
    pub fn fire(self) {}
}

impl Drop for Stopper {
    fn drop(&mut self) {
        // The order is the point: the flag, the channel, the descriptor.
        self.0.fired.store(true, Ordering::SeqCst);
        drop(self.0.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _making = self.0.making_fd.lock().unwrap_or_else(|p| p.into_inner());
        self.0.kick();
    }
}

/// The waiting end of a stop signal.
#[derive(Clone)]
pub struct Stop(Arc<Inner>);

impl Stop {
    /// A new stop signal and its stopper. Holds no descriptor.
    pub fn new() -> (Stopper, Stop) {
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        let inner = Arc::new(Inner {
            fired: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
            fd: OnceLock::new(),
            making_fd: Mutex::new(()),
        });
        (Stopper(inner.clone()), Stop(inner))
    }

    /// Never yields a value; becomes ready (disconnected) at the stop.
    /// Use it in `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.0.rx
    }

    /// A descriptor (an eventfd, non-blocking) never readable until the
    /// stop or a [`Stop::wake`]; from the stop on readable for good unless
    /// read (see [`Stop::take_wakes`]). Made on the first call, shared by
    /// every clone. Errors: no descriptor left (`EMFILE`, `ENFILE`).
    pub fn fd(&self) -> std::io::Result<BorrowedFd<'_>> {
        if let Some(fd) = self.0.fd.get() {
            return Ok(fd.as_fd());
        }
        let _making = self.0.making_fd.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.fd.get().is_none() {
            let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
            let _ = self.0.fd.set(fd);
            // A stop that fired before the descriptor existed.
            if self.is_set() {
                self.0.kick();
            }
        }
        match self.0.fd.get() {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(std::io::Error::other("stop descriptor not made")),
        }
    }

    /// Makes [`Stop::fd`] readable once without stopping (a watchdog poke).
    /// Does nothing before the descriptor exists.
    pub fn wake(&self) {
        self.0.kick();
    }

    /// Reads the wake-ups off [`Stop::fd`]; returns whether the stop has
    /// fired (then the descriptor is readable again for good).
    pub fn take_wakes(&self) -> bool {
        if let Some(fd) = self.0.fd.get() {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd, &mut buf);
        }
        if self.is_set() {
            self.0.kick();
            return true;
        }
        false
    }

    /// True once the stop has fired.
    pub fn is_set(&self) -> bool {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Sleeps `d` unless the stop fires first. Returns false when stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        !matches!(
            self.0.rx.recv_timeout(d),
            Err(RecvTimeoutError::Disconnected)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::poll::wait_readable;

    #[test]
    fn a_dropped_stopper_sets_the_flag_then_fires_the_channel_and_the_descriptor() {
        let (stopper, stop) = Stop::new();
        let other = stop.clone();
        assert!(!stop.is_set());
        assert!(!wait_readable(stop.fd().unwrap(), Duration::ZERO).unwrap());
        assert!(stop.sleep(Duration::from_millis(1)));
        let waiter = std::thread::spawn(move || {
            // Woken by the descriptor: the flag is set already.
            assert!(wait_readable(other.fd().unwrap(), Duration::from_secs(10)).unwrap());
            other.is_set()
        });
        std::thread::sleep(Duration::from_millis(20));
        stopper.fire();
        assert!(waiter.join().unwrap());
        assert!(stop.is_set());
        assert!(!stop.sleep(Duration::from_secs(10)));
        assert!(wait_readable(stop.fd().unwrap(), Duration::ZERO).unwrap());
        // Reading it off leaves it readable: the stop is for good.
        assert!(stop.take_wakes());
        assert!(wait_readable(stop.fd().unwrap(), Duration::ZERO).unwrap());
    }

    #[test]
    fn a_descriptor_asked_for_after_the_stop_is_readable_and_one_never_asked_for_is_never_made() {
        let (stopper, stop) = Stop::new();
        drop(stopper);
        assert!(stop.0.fd.get().is_none(), "no descriptor unless asked");
        assert!(wait_readable(stop.fd().unwrap(), Duration::ZERO).unwrap());
    }

    #[test]
    fn a_wake_is_read_off_and_is_not_a_stop() {
        let (stopper, stop) = Stop::new();
        let fd = stop.fd().unwrap();
        stop.wake();
        stop.wake();
        assert!(wait_readable(fd, Duration::ZERO).unwrap());
        assert!(!stop.take_wakes());
        assert!(!wait_readable(fd, Duration::ZERO).unwrap());
        drop(stopper);
        assert!(wait_readable(fd, Duration::ZERO).unwrap());
    }
}
