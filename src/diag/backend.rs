//! tiny_http behind the front: its private socket, made at start, and made
//! again when tiny_http stops accepting there.
//!
//! tiny_http's accept thread ends on the first accept error, and panics
//! when it cannot duplicate an accepted stream (notes/tiny_http.md). Both
//! happen when the process is out of descriptors: Linux numbers a new
//! descriptor before accept(2) waits, and every accepted stream is
//! duplicated. The connections it accepted before still carry requests, so
//! nothing is rebuilt until the front needs a new connection and finds the
//! socket refusing ([`front::BackendLost`]); then the serving loop makes a
//! new tiny_http on a new socket, tries again every second while that
//! fails (descriptors are still short), and pokes the front, which follows
//! it ([`front`]'s kept connections).

use std::os::unix::net::UnixListener;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{front, Loop};
use crate::infra::limits::explain;
use crate::infra::progress::Poke;
use crate::log::{self, once_a_second};

/// Time between tries to rebuild while they fail.
const RETRY: Duration = Duration::from_secs(1);

/// tiny_http on a fresh socket `http-GENERATION.sock` in `dir`. tiny_http
/// starts its accept thread with `std::thread::spawn`, which panics when no
/// thread can be made (a pids cgroup limit): that panic is this error, not
/// the end of the calling thread (the main thread, at a reload). Nothing is
/// left in `dir` on an error.
pub(super) fn make(dir: &Path, generation: usize) -> Result<(tiny_http::Server, PathBuf), String> {
    let path = dir.join(format!("http-{generation}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let server = catch_unwind(|| tiny_http::Server::from_listener(listener, None))
        .map_err(|p| {
            let why = crate::supervisor::panic_message(p.as_ref());
            // std's message carries the error's code only.
            let limit = match why.contains("code: 11") {
                true => explain(&std::io::Error::from_raw_os_error(libc::EAGAIN)),
                false => why,
            };
            format!("tiny_http cannot start its thread: {limit}")
        })
        .and_then(|made| made.map_err(|e| format!("{}: {e}", path.display())));
    match server {
        Ok(server) => Ok((server, path)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// What the front calls when tiny_http refused a connection at `path`: the
/// serving loop rebuilds it, unless it has moved on from `path` already.
pub(super) fn lost(state: &Arc<Loop>, backend_path: &front::BackendPath) -> front::BackendLost {
    let state = state.clone();
    let current = backend_path.clone();
    Arc::new(move |path: &Path| {
        if *current.lock().unwrap_or_else(|p| p.into_inner()) == path {
            state.lost.store(true, Ordering::SeqCst);
            state.wake();
        }
    })
}

/// The serving loop's part: rebuilds tiny_http when the front has found
/// its socket refusing, at most once every [`RETRY`] while that fails.
pub(super) struct Rebuilder {
    dir: PathBuf,
    backend_path: front::BackendPath,
    /// Wakes the front running now, which then follows tiny_http to its
    /// new socket.
    poke_front: Poke,
    generation: usize,
    /// When to try (again); None: nothing to rebuild.
    at: Option<Instant>,
    last_error: Option<Instant>,
}

impl Rebuilder {
    /// For tiny_http's sockets in `dir`, the current one in
    /// `backend_path` (generation 0).
    pub(super) fn new(dir: PathBuf, backend_path: front::BackendPath, poke_front: Poke) -> Self {
        Rebuilder {
            dir,
            backend_path,
            poke_front,
            generation: 0,
            at: None,
            last_error: None,
        }
    }

    /// When the next try is due, if one is.
    pub(super) fn due(&self) -> Option<Instant> {
        self.at
    }

    /// Rebuilds now if the front found the socket refusing and no try
    /// failed less than [`RETRY`] ago. Parked requests belong to the old
    /// tiny_http and are still answered through it.
    pub(super) fn run(&mut self, state: &Loop) {
        let now = Instant::now();
        if state.lost.swap(false, Ordering::SeqCst) {
            self.at.get_or_insert(now);
        }
        if self.at.is_none_or(|t| t > now) {
            return;
        }
        self.generation += 1;
        match make(&self.dir, self.generation) {
            Ok((server, path)) => {
                let old = std::mem::replace(
                    &mut *self.backend_path.lock().unwrap_or_else(|p| p.into_inner()),
                    path,
                );
                *state.server.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(server);
                let _ = std::fs::remove_file(old);
                log::info(
                    "diagnostics serving socket rebuilt",
                    &[("generation", &self.generation)],
                );
                self.at = None;
                (self.poke_front)();
            }
            Err(e) => {
                if once_a_second(&mut self.last_error) {
                    log::error(
                        "diagnostics: cannot rebuild the serving socket; trying again every second",
                        &[("error", &e)],
                    );
                }
                self.at = Some(now + RETRY);
            }
        }
    }
}
