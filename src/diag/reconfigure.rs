//! What a configuration reload changes in a running diagnostics service:
//! the public address (a new front on a new listener, started before the old
//! one stops) and debug mode (`/debug/pprof/` on or off). The serving loop,
//! its parked `/wait` requests and tiny_http are untouched by either.
//! The systemd watchdog follows whichever service and front are current
//! ([`Slots`]).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{front, Diag};
use crate::infra::limits::explain;
use crate::infra::progress::{Beat, Poke, Slot, Watched};
use crate::infra::stop::{Stop, Stopper};
use crate::log;

/// A `diag-front` thread and the daemon's end of its stop signal.
pub(super) struct FrontRun {
    stopper: Stopper,
    /// What the front waits on: its descriptor also carries the watchdog's
    /// pokes (see [`FrontRun::poke`]).
    stop: Stop,
    thread: JoinHandle<()>,
    /// The TCP port's address, if it has one.
    pub(super) addr: Option<SocketAddr>,
}

/// The diagnostics loops as the systemd watchdog sees them, across reloads
/// that start, stop and move the service: one [`Slot`] per loop
/// (`diag-http`, `diag-render`, `diag-front`), made once by the daemon and
/// handed to every service it starts ([`super::start`]), which fills them;
/// [`Diag::shutdown`] empties them, and [`Diag::move_to`] puts the new
/// front in. The slots are watched whether or not a service runs: while
/// none does (no `diag_addr`), a poke counts the turn itself.
#[derive(Clone)]
pub struct Slots {
    pub(super) http: Slot,
    pub(super) render: Slot,
    pub(super) front: Slot,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            http: Slot::new("diag-http"),
            render: Slot::new("diag-render"),
            front: Slot::new("diag-front"),
        }
    }
}

impl Slots {
    /// The three loops, for the watchdog's list.
    pub fn watched(&self) -> Vec<Watched> {
        self.all().iter().map(|s| s.watched()).collect()
    }

    /// No service runs any more (see [`Slot::empty`]).
    pub(super) fn empty(&self) {
        for s in self.all() {
            s.empty();
        }
    }

    fn all(&self) -> [&Slot; 3] {
        [&self.http, &self.render, &self.front]
    }
}

impl FrontRun {
    /// Starts a front on `listeners` (the TCP port, the debug socket) that hands requests to the serving
    /// loop and counts its turns on `beat`.
    pub(super) fn spawn(
        listeners: (Option<TcpListener>, Option<UnixListener>),
        backend_path: &front::BackendPath,
        backend_lost: &front::BackendLost,
        limits: &front::Limits,
        security: &front::auth::SecurityHandle,
        beat: Beat,
    ) -> Result<FrontRun, String> {
        let addr = match &listeners.0 {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| format!("diagnostics listener: {e}"))?,
            ),
            None => None,
        };
        if crate::infra::failpoints::fails("diag-front-start") {
            return Err("diag-front: injected failure (failpoint diag-front-start)".into());
        }
        let (stopper, stop) = Stop::new();
        stop.fd()
            .map_err(|e| format!("diag-front: {}", explain(&e)))?;
        let front = front::Front::new(
            listeners,
            backend_path.clone(),
            backend_lost.clone(),
            limits.clone(),
            stop.clone(),
        )
        .map_err(|e| format!("diagnostics listener: {e}"))?
        .beating(beat)
        .securing(security.clone())
        .ready()
        .map_err(|e| format!("diag-front: epoll set: {}", explain(&e)))?;
        // A thread limit is named (a reload that moves the front onto a
        // port past a pids limit says why it failed).
        let thread = crate::infra::threads::spawn("diag-front", move || front.run())
            .map_err(|e| format!("diag-front: {}", explain(&e)))?;
        Ok(FrontRun {
            stopper,
            stop,
            thread,
            addr,
        })
    }

    /// The front's watchdog poke: a wake-up on its stop descriptor, which
    /// makes it turn once without stopping it. Never blocks.
    pub(super) fn poke(&self) -> Poke {
        let stop = self.stop.clone();
        Box::new(move || stop.wake())
    }

    /// Stops the front (its listener and connections close) and waits for it.
    pub(super) fn stop(self) {
        self.stopper.fire();
        if self.thread.join().is_err() {
            log::error("the diagnostics front panicked", &[]);
        }
    }
}

/// Logs where the service listens: the debug socket, and the TCP port
/// (with a warning for a non-loopback address that is not `secured`: TLS
/// with basic auth or client certificates).
pub(super) fn announce(addr: Option<SocketAddr>, local: Option<&Path>, debug: bool, secured: bool) {
    if let Some(path) = local {
        log::info("debug socket listening", &[("path", &path.display())]);
    }
    let Some(addr) = addr else {
        return;
    };
    if !addr.ip().is_loopback() && !secured {
        log::warn(
            "the diagnostics service listens on a non-loopback address without TLS and authentication (web_config_file); anyone who can reach it can read tbot's health, metrics and (in debug mode) profiles",
            &[("addr", &addr)],
        );
    }
    log::info(
        "diagnostics service listening",
        &[("addr", &addr), ("debug", &debug)],
    );
}

impl Diag {
    /// Moves the service to `listener`, already bound by the caller (so a
    /// bind failure is the caller's, before anything changed), or off TCP
    /// (None; the debug socket stays): the new front starts, then the old
    /// one stops. Requests in flight on the old front are cut (the debug
    /// socket's too); the serving loop carries on. The watchdog's pokes
    /// go to the new front as soon as it runs (a poke the old one took as
    /// it stopped is answered: its last turn counts).
    pub fn move_to(&mut self, listener: Option<TcpListener>) -> Result<(), String> {
        let local = match &self.local {
            Some((l, path)) => Some(
                l.try_clone()
                    .map_err(|e| format!("debug socket {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let new = FrontRun::spawn(
            (listener, local),
            &self.backend_path,
            &self.backend_lost,
            &self.limits,
            &self.security,
            self.slots.front.beat(),
        )?;
        self.slots.front.fill(new.poke());
        let old = std::mem::replace(&mut self.front, new);
        let from = old.addr;
        old.stop();
        let addr = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        log::info(
            "diagnostics service moved",
            &[("from", &addr(from)), ("to", &addr(self.front.addr))],
        );
        announce(self.front.addr, None, self.debug(), self.secured);
        Ok(())
    }

    /// Whether the service has a debug socket (it runs for it even with
    /// no TCP port).
    pub fn has_debug_socket(&self) -> bool {
        self.local.is_some()
    }

    /// Applies a web configuration read again by a reload: new connections
    /// and requests follow it (connections open keep their TLS or not).
    pub fn set_security(&mut self, security: super::Secured) {
        let super::Secured(security, secured) = security;
        *self.security.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(security);
        if secured != self.secured {
            self.secured = secured;
            announce(self.front.addr, None, self.debug(), secured);
        }
    }

    /// Whether `/debug/pprof/` is served.
    pub fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// Turns `/debug/pprof/` on or off, from the next request on.
    pub fn set_debug(&self, on: bool) {
        if self.debug.swap(on, Ordering::Relaxed) != on {
            log::info("debug endpoints switched", &[("debug", &on)]);
        }
    }
}
