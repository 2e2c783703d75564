//! The multiplexer's live relays, so that a reload that removes or changes a
//! multiplexer can drain them: wait for them to end on their own for at most
//! [`DRAIN_TIMEOUT`], then cut the ones left (as nginx's
//! `worker_shutdown_timeout` does for a reloaded worker).
//!
//! A multiplexer that a reload keeps is never touched, and neither are its
//! relays.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log;

/// How long the relays of a multiplexer that a reload removed or changed may
/// go on before they are cut. The one place this bound is set; the man page
/// (SIGNALS) states it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The client sockets of the relays a multiplexer has running, by an id of
/// their own: descriptor numbers, not duplicates (a relay's descriptors are
/// counted; see tests/ssh_multiplexer.rs's descriptor budget). A number is
/// valid while registered: a relay's thread drops its [`Registered`] before
/// it closes the socket, and [`Relays::cut_all`] holds the lock while it
/// shuts sockets down, so a cut never reaches a number reused since.
#[derive(Clone, Default)]
pub struct Relays {
    next: Arc<AtomicU64>,
    clients: Arc<Mutex<HashMap<u64, RawFd>>>,
}

/// A relay's entry in [`Relays`], removed when dropped: before the socket
/// it names is closed.
pub struct Registered {
    id: u64,
    clients: Arc<Mutex<HashMap<u64, RawFd>>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Relays {
    /// Registers a relay's client socket; drop the result before the socket.
    pub fn register(&self, client: &UnixStream) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, client.as_raw_fd());
        Registered {
            id,
            clients: self.clients.clone(),
        }
    }

    /// Shuts every registered client socket down both ways: each relay sees
    /// its client gone and ends, closing its target connection. `before` is
    /// given how many are about to be cut (under the same lock, so the count
    /// is exact), before any client can see its cut.
    fn cut_all(&self, before: impl FnOnce(usize)) -> usize {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        before(clients.len());
        for &fd in clients.values() {
            // SAFETY: shutdown(2) on a descriptor that is open while it is
            // registered (see [`Relays`]); an error changes nothing here.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        clients.len()
    }
}

/// What a reload needs to drain one multiplexer's relays.
pub struct Drain {
    /// Connections being handled (the multiplexer's own count).
    pub active: Arc<AtomicUsize>,
    pub relays: Relays,
}

impl Drain {
    /// Waits (polling every 50 ms) until no connection is left or `timeout`,
    /// then cuts what is left and waits up to a second more for those
    /// relays to end. Returns how many were cut. Runs on a thread of its own.
    pub fn run(&self, service: &str, timeout: Duration) -> usize {
        let open = self.active.load(Ordering::Acquire);
        if open == 0 {
            return 0;
        }
        log::info(
            "draining the relays of a stopped ssh multiplexer",
            &[
                ("service", &service),
                ("open_connections", &open),
                ("timeout", &crate::infra::duration::format(timeout)),
            ],
        );
        if self.wait_idle(Instant::now() + timeout) {
            return 0;
        }
        // Logged before the cut, so that the line is there by the time a
        // client sees its relay end.
        let cut = self.relays.cut_all(|cut| {
            log::warn(
                "ssh multiplexer relays still open after the drain timeout; cut",
                &[("service", &service), ("cut", &cut)],
            )
        });
        self.wait_idle(Instant::now() + Duration::from_secs(1));
        cut
    }

    fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            if self.active.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_drain_waits_for_relays_then_cuts_the_rest() {
        let relays = Relays::default();
        let active = Arc::new(AtomicUsize::new(1));
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let reg = relays.register(&ours);
        let drain = Drain {
            active: active.clone(),
            relays: relays.clone(),
        };
        let started = Instant::now();
        assert_eq!(drain.run("mux", Duration::from_millis(200)), 1);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The peer sees the end of the stream: the relay was cut.
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        drop(reg);
        assert!(relays.clients.lock().unwrap().is_empty());
        active.store(0, Ordering::Release);
        assert_eq!(drain.run("mux", Duration::from_secs(5)), 0);
    }
}
