//! What a configuration reload changes in a running diagnostics service:
//! the public address (a new front on a new listener, started before the old
//! one stops) and debug mode (`/debug/pprof/` on or off). The serving loop,
//! its parked `/wait` requests and tiny_http are untouched by either.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use super::{front, Diag};
use crate::log;

/// A `diag-front` thread and the daemon's end of its stop socket.
pub(super) struct FrontRun {
    stop: UnixStream,
    thread: JoinHandle<()>,
    addr: SocketAddr,
}

impl FrontRun {
    /// Starts a front on `listener` that hands requests to the serving loop.
    pub(super) fn spawn(
        listener: TcpListener,
        backend_path: &front::BackendPath,
        backend_lost: &front::BackendLost,
        limits: &front::Limits,
    ) -> Result<FrontRun, String> {
        let addr = listener
            .local_addr()
            .map_err(|e| format!("diagnostics listener: {e}"))?;
        let (stop, stop_rx) = UnixStream::pair().map_err(|e| format!("diagnostics: {e}"))?;
        let front = front::Front::new(
            listener,
            backend_path.clone(),
            backend_lost.clone(),
            limits.clone(),
            stop_rx,
        )
        .map_err(|e| format!("diagnostics listener: {e}"))?;
        let thread = crate::infra::threads::spawn("diag-front", move || front.run())
            .map_err(|e| format!("diag-front: {e}"))?;
        Ok(FrontRun { stop, thread, addr })
    }

    /// Stops the front (its listener and connections close) and waits for it.
    pub(super) fn stop(self) {
        let _ = self.stop.shutdown(std::net::Shutdown::Both);
        drop(self.stop);
        if self.thread.join().is_err() {
            log::error("the diagnostics front panicked", &[]);
        }
    }
}

/// Logs where the service listens (and warns about a non-loopback address).
pub(super) fn announce(addr: SocketAddr, debug: bool) {
    if !addr.ip().is_loopback() {
        log::warn(
            "the diagnostics service listens on a non-loopback address; anyone who can reach it can read tbot's health, metrics and (in debug mode) profiles",
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
    /// bind failure is the caller's, before anything changed): the new
    /// front starts, then the old one stops. Requests in flight on the old
    /// address are cut; the serving loop carries on.
    pub fn move_to(&mut self, listener: TcpListener) -> Result<(), String> {
        let new = FrontRun::spawn(
            listener,
            &self.backend_path,
            &self.backend_lost,
            &self.limits,
        )?;
        let old = std::mem::replace(&mut self.front, new);
        let from = old.addr;
        old.stop();
        log::info(
            "diagnostics service moved",
            &[("from", &from), ("to", &self.front.addr)],
        );
        announce(self.front.addr, self.debug());
        Ok(())
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
