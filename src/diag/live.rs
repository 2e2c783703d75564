//! What a configuration reload changes in a running diagnostics service:
//! the public address (a new front on a new listener, started before the old
//! one stops) and debug mode (`/debug/pprof/` on or off). The serving loop,
//! its parked `/wait` requests and tiny_http are untouched by either.
//! The systemd watchdog follows whichever front is current ([`FrontWatch`]).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::net::SendFlags;

use super::{front, Diag};
use crate::infra::liveness::{Beat, Watched};
use crate::log;

/// A `diag-front` thread and the daemon's end of its stop socket.
pub(super) struct FrontRun {
    /// Hung up to stop the front; a byte on it is a watchdog poke (shared
    /// with [`FrontWatch`]).
    stop: Arc<UnixStream>,
    thread: JoinHandle<()>,
    addr: SocketAddr,
}

/// The front as the systemd watchdog sees it, across reloads that replace
/// it: one turn counter that every successive front beats, and the stop
/// socket of the current one, where a poke goes.
#[derive(Clone, Default)]
pub(super) struct FrontWatch {
    beat: Beat,
    current: Arc<Mutex<Option<Arc<UnixStream>>>>,
}

impl FrontWatch {
    /// Pokes reach `run` from now on.
    fn follow(&self, run: &FrontRun) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.stop.clone());
    }

    /// `diag-front` for the watchdog: a poke writes one byte on the current
    /// front's stop socket, which wakes it for one turn (it drains the
    /// byte; only a hang-up stops it). The write never blocks: a full
    /// socket buffer means pokes are pending already, and an error (the
    /// front is gone) shows as the missing turn.
    pub(super) fn watched(&self) -> Watched {
        let current = self.current.clone();
        Watched {
            name: "diag-front",
            beat: self.beat.clone(),
            poke: Box::new(move || {
                if let Some(stop) = &*current.lock().unwrap_or_else(|p| p.into_inner()) {
                    let _ =
                        rustix::net::send(&**stop, &[0], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
                }
            }),
        }
    }
}

impl FrontRun {
    /// Starts a front on `listener` that hands requests to the serving loop.
    pub(super) fn spawn(
        listener: TcpListener,
        backend_path: &front::BackendPath,
        backend_lost: &front::BackendLost,
        limits: &front::Limits,
        watch: &FrontWatch,
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
        .map_err(|e| format!("diagnostics listener: {e}"))?
        .beating(watch.beat.clone());
        let thread = crate::infra::threads::spawn("diag-front", move || front.run())
            .map_err(|e| format!("diag-front: {e}"))?;
        let run = FrontRun {
            stop: Arc::new(stop),
            thread,
            addr,
        };
        watch.follow(&run);
        Ok(run)
    }

    /// Stops the front (its listener and connections close) and waits for it.
    pub(super) fn stop(self) {
        // A hang-up even while the watchdog holds the socket.
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
    /// address are cut; the serving loop carries on. The watchdog's pokes
    /// go to the new front as soon as it runs.
    pub fn move_to(&mut self, listener: TcpListener) -> Result<(), String> {
        let new = FrontRun::spawn(
            listener,
            &self.backend_path,
            &self.backend_lost,
            &self.limits,
            &self.front_watch,
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
