//! The diagnostics service.
//!
//! Four pieces, each on its own thread:
//! - `diag-front` ([`front`]): owns the public TCP port and every untrusted
//!   byte; hands clean requests to tiny_http over a private Unix socket.
//! - tiny_http's own threads: parse those requests.
//! - `diag-http` (this file): the one serving loop. Every request goes
//!   through the pure router ([`routes`], over the table in [`endpoints`]);
//!   [`http`] carries out its answer through tiny_http: at once, parked
//!   (`/wait`, until it can be answered), or handed off. Nothing on it
//!   blocks.
//! - `diag-render` ([`render`]): renders `/metrics` and the thread list,
//!   which cost milliseconds; CPU profiles get a `diag-profile` thread each.
//!
//! The systemd watchdog watches `diag-front`, `diag-http` and `diag-render`
//! through [`Slots`] that the daemon makes once, at start: if one of them
//! wedges, systemd restarts tbot. The slots follow whichever service is
//! current, across any sequence of reloads: a service a reload starts
//! (`diag_addr` added) fills them, one it stops (`diag_addr` removed)
//! empties them, and a move puts the new front in. They are always on the
//! watchdog's list; while no service runs, they count as turning.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::health::{Health, Listener};
use crate::infra::limits::explain;
use crate::infra::progress::{Beat, Poke};
use crate::infra::stop::{Stop, Stopper};
use crate::infra::subscribers::Subscription;
use crate::log;
use crate::metrics::Metrics;

mod backend;
pub mod debug;
pub mod debug_socket;
pub mod endpoints;
pub mod front;
mod gzip;
mod http;
mod private_dir;
mod reconfigure;
mod render;
mod request_head;
pub mod response;
pub mod routes;

pub use reconfigure::Slots;

/// Binds the public listener. Done before any service starts, so a bad or
/// busy address fails the start cleanly.
pub fn bind(addr: &str) -> Result<TcpListener, String> {
    // A host name is looked up beside the main thread (which binds at start
    // and on reload, and alone takes SIGTERM): within LOOKUP_BOUND, and not
    // past a stop signal.
    let stop = crate::infra::signals::stop_pending;
    let addrs = crate::infra::lookup::lookup(addr.to_string(), addr, LOOKUP_BOUND, stop)
        .map_err(|e| format!("diagnostics address {addr}: {e}"))?;
    let mut last = None;
    for a in &addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("diagnostics address {addr}: cannot listen: {e}"),
        None => format!("diagnostics address {addr}: resolves to no address"),
    })
}

/// Longest wait for the name lookup of a `diag_addr` host name.
pub const LOOKUP_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the service listens: the TCP port (`diag_addr`), the local debug
/// socket, or both. Either works without the other.
pub struct Listeners {
    pub tcp: Option<TcpListener>,
    pub local: Option<debug_socket::DebugSocket>,
}

pub struct Options {
    pub max_connections: usize,
    pub debug: bool,
    /// TLS and auth (from [`security`]).
    pub security: Secured,
}

pub use front::auth::Security;

/// The web configuration as the front applies it, and whether it makes a
/// non-loopback address safe (TLS with basic auth or a required client
/// certificate: no warning then).
pub struct Secured(pub Security, pub bool);

/// Reads the files the web configuration names (certificate, key, client
/// CA): a start or reload with one that does not load fails, before
/// anything changed.
pub fn security(config: &crate::config::Config) -> Result<Secured, String> {
    let web = config.web.as_ref();
    let s = Security::build(web, &config.diag_unauthenticated_paths)?;
    let secured = s.secured(web);
    Ok(Secured(s, secured))
}

/// State the serving loop shares with whoever needs to wake it.
struct Loop {
    server: Mutex<Arc<tiny_http::Server>>,
    /// Fired by [`Diag::shutdown`] (which then wakes the loop).
    stop: Stop,
    /// tiny_http no longer listens on its socket: rebuild it.
    lost: AtomicBool,
    /// The health table changed since the parked `/wait` requests were
    /// last checked (only then, or at a deadline, is it read for them).
    changed: AtomicBool,
    /// One turn per pass of the serving loop (for the systemd watchdog).
    beat: Beat,
}

impl Loop {
    fn server(&self) -> Arc<tiny_http::Server> {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn wake(&self) {
        self.server().unblock();
    }
}

/// A running diagnostics service.
pub struct Diag {
    state: Arc<Loop>,
    stopper: Stopper,
    /// Wakes the loop on each health change, while the service runs.
    _changes: Subscription<Listener>,
    /// The front on the public port; a reload may replace it (see `live`).
    front: reconfigure::FrontRun,
    threads: Vec<JoinHandle<()>>,
    dir: PathBuf,
    /// Held for the service's life: what marks `dir` as live.
    _dir_lock: crate::infra::instance_lock::Held,
    /// What a new front needs (see `live`).
    backend_path: front::BackendPath,
    backend_lost: front::BackendLost,
    limits: front::Limits,
    /// The debug socket (a copy of its listener, for the next front), and
    /// its path, removed at shutdown.
    local: Option<(UnixListener, PathBuf)>,
    /// TLS and auth, shared with the front (a reload swaps it: `live`).
    security: front::auth::SecurityHandle,
    /// The address is safe off loopback (see [`Secured`]).
    secured: bool,
    debug: Arc<AtomicBool>,
    /// The watchdog's view of the loops: filled by [`start`] and
    /// `move_to`, emptied by [`Diag::shutdown`].
    slots: Slots,
}

/// Starts the service on `listeners` (bound by the caller). Once every
/// thread runs, the watchdog's pokes go to its loops, whose turns count on
/// `slots` (made once by the daemon, shared by each service it starts; see
/// [`Slots`]). Errors name the thread or socket that could not be made;
/// what had started by then is stopped again, and its socket directory
/// removed (and the debug socket's file), so that a failed start leaves
/// nothing behind.
pub fn start(
    listeners: Listeners,
    opts: Options,
    health: Health,
    metrics: Arc<Metrics>,
    slots: &Slots,
) -> Result<Diag, String> {
    let local_path = listeners.local.as_ref().map(|s| s.path.clone());
    let started = start_on(listeners, opts, health, metrics, slots);
    match (&started, local_path) {
        (Ok(d), _) => {
            let path = d.local.as_ref().map(|l| l.1.as_path());
            reconfigure::announce(d.front.addr, path, d.debug(), d.secured);
        }
        (Err(_), Some(path)) => debug_socket::remove(&path),
        (Err(_), None) => {}
    }
    started
}

/// [`start`], but for the debug socket's file.
fn start_on(
    listeners: Listeners,
    opts: Options,
    health: Health,
    metrics: Arc<Metrics>,
    slots: &Slots,
) -> Result<Diag, String> {
    let (local_for_front, local) = split_local(listeners.local)?;
    let (dir, dir_lock) = private_dir::create()?;
    let limits = limits(&opts);
    let debug_on = opts.debug;
    let Secured(security, secured) = opts.security;
    let security: front::auth::SecurityHandle = Arc::new(Mutex::new(Arc::new(security)));
    let started = backend::make(&dir, 0).and_then(|(server, path)| {
        let backend_path: front::BackendPath = Arc::new(Mutex::new(path));
        let (stopper, stop) = Stop::new();
        let state = Arc::new(Loop {
            server: Mutex::new(Arc::new(server)),
            stop,
            lost: AtomicBool::new(false),
            changed: AtomicBool::new(false),
            beat: slots.http.beat(),
        });
        let backend_lost = backend::lost(&state, &backend_path);
        let front = reconfigure::FrontRun::spawn(
            (listeners.tcp, local_for_front),
            &backend_path,
            &backend_lost,
            &limits,
            &security,
            slots.front.beat(),
        )?;
        // Dropped again (ended) if the start fails from here on.
        let changes = wake_on_change(&health, &state);
        let debug = Arc::new(AtomicBool::new(debug_on));
        let pages = routes::Ctx {
            health,
            metrics: metrics.clone(),
            debug: debug.clone(),
        };
        let loops = spawn_loops(&state, pages, metrics, &dir, &backend_path, &limits, slots);
        let (threads, render_poke) = match loops {
            Ok(started) => started,
            Err(e) => {
                front.stop();
                return Err(e);
            }
        };
        // Everything runs: the watchdog's pokes go here from now on. (A
        // serving-loop poke wakes it as a health change does; each pass is
        // a turn.)
        let wake = state.clone();
        slots.http.fill(Box::new(move || wake.wake()));
        slots.render.fill(render_poke);
        slots.front.fill(front.poke());
        Ok(Diag {
            state,
            stopper,
            _changes: changes,
            front,
            threads,
            dir: dir.clone(),
            _dir_lock: dir_lock,
            backend_path,
            backend_lost,
            limits,
            local,
            security,
            secured,
            debug,
            slots: slots.clone(),
        })
    });
    started.inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })
}

/// Starts `diag-render` and `diag-http` (the serving loop, [`serve`]):
/// their handles (the renderer is joined after the loop, whose end drops
/// the [`render::Renderer`], which stops it) and the renderer's watchdog
/// poke. A renderer already started
/// when the loop cannot be is stopped again.
fn spawn_loops(
    state: &Arc<Loop>,
    pages: routes::Ctx,
    metrics: Arc<Metrics>,
    dir: &Path,
    backend_path: &front::BackendPath,
    limits: &front::Limits,
    slots: &Slots,
) -> Result<(Vec<JoinHandle<()>>, Poke), String> {
    let max_parked = max_parked(limits.max_connections);
    // Queued pages wait on the front's connections: as many as it holds.
    let (renderer, render_thread) =
        render::Renderer::spawn(metrics, limits.max_connections, slots.render.beat())
            .map_err(|e| format!("diag-render: {e}"))?;
    let render_poke = renderer.watch().watched().poke;
    // Tests fail the start here, with the front and renderer running.
    let serving = if crate::infra::failpoints::fails("diag-start") {
        drop(renderer);
        Err("diag-http: injected failure (failpoint diag-start)".to_string())
    } else {
        let poke_front = slots.front.watched().poke;
        let rebuilder =
            backend::Rebuilder::new(dir.to_path_buf(), backend_path.clone(), poke_front);
        spawn_serving(state, (pages, renderer), rebuilder, max_parked)
    };
    match serving {
        Ok(serving) => Ok((vec![serving, render_thread], render_poke)),
        Err(e) => {
            // Stopped: its `Renderer` is gone with the serving loop's pages.
            let _ = render_thread.join();
            Err(e)
        }
    }
}

/// Every applied update marks the table changed and wakes the loop, which
/// re-checks parked /wait requests. (Waking only while some are parked
/// would race with parking: an update between the loop's check and its
/// count would be lost.) For as long as the service holds the returned
/// subscription; weak, so that the table never keeps a stopped service's
/// tiny_http alive (see [`Diag::shutdown`]).
fn wake_on_change(health: &Health, state: &Arc<Loop>) -> Subscription<Listener> {
    let wake = Arc::downgrade(state);
    health.on_change(move || {
        if let Some(state) = wake.upgrade() {
            state.changed.store(true, Ordering::SeqCst);
            state.wake();
        }
    })
}

/// Starts `diag-http`, the serving loop ([`serve`]).
fn spawn_serving(
    state: &Arc<Loop>,
    pages: (routes::Ctx, render::Renderer),
    rebuilder: backend::Rebuilder,
    max_parked: usize,
) -> Result<JoinHandle<()>, String> {
    let state = state.clone();
    crate::infra::threads::spawn("diag-http", move || {
        serve(state, pages, rebuilder, max_parked)
    })
    .map_err(|e| format!("diag-http: {}", explain(&e)))
}

/// The front's limits for `opts`: the connection cap fitted to the
/// open-file limit (with a warning when lowered).
fn limits(opts: &Options) -> front::Limits {
    let limits = front::fit_to_fd_limit(front::Limits {
        max_connections: opts.max_connections,
        ..front::Limits::default()
    });
    if limits.max_connections < opts.max_connections {
        log::warn(
            "diagnostics connection cap lowered to fit the open-file limit",
            &[
                ("wanted", &opts.max_connections),
                ("cap", &limits.max_connections),
            ],
        );
    }
    limits
}

impl Diag {
    /// Stops the front and the serving loop and waits for both; the
    /// watchdog's slots are emptied (the loops are gone, not wedged). Then
    /// tiny_http goes, threads and all, and the socket directory with it.
    pub fn shutdown(self) {
        let Diag {
            state,
            stopper,
            _changes,
            front,
            threads,
            dir,
            _dir_lock,
            backend_lost,
            slots,
            local,
            ..
        } = self;
        drop(_changes);
        stopper.fire();
        state.wake();
        front.stop();
        for t in threads {
            if t.join().is_err() {
                log::error("a diagnostics thread panicked", &[]);
            }
        }
        // A poke the loops took as they stopped is answered here; the next
        // ones answer themselves.
        slots.empty();
        // The last holders of the serving state, and so of tiny_http, whose
        // drop ends its accept thread (and with it its worker threads) by
        // connecting to its socket: before the socket is removed, or a
        // service that a reload stops would leave them blocked for good.
        drop(backend_lost);
        drop(state);
        let _ = std::fs::remove_dir_all(&dir);
        if let Some((listener, path)) = local {
            drop(listener);
            debug_socket::remove(&path);
        }
    }
}

/// The debug socket's listener for the first front, and a copy of it with
/// its path, kept for the next fronts and for its removal.
#[allow(clippy::type_complexity)]
fn split_local(
    local: Option<debug_socket::DebugSocket>,
) -> Result<(Option<UnixListener>, Option<(UnixListener, PathBuf)>), String> {
    let Some(s) = local else {
        return Ok((None, None));
    };
    let copy = s
        .listener
        .try_clone()
        .map_err(|e| format!("debug socket {}: {e}", s.path.display()))?;
    Ok((Some(s.listener), Some((copy, s.path))))
}

/// With nothing parked the loop sleeps until a request or a wake-up; this
/// only bounds how long a missed wake-up could go unnoticed.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// How many `/wait` requests may be parked at once beside a front of
/// `max_connections` slots: half of them (at least one). Each parked
/// `/wait` holds a slot that the front never takes from it (its client did
/// nothing wrong), so without this cap 64 `/wait?timeout=5m` on a host
/// whose services have not reported would hold every slot for minutes,
/// and `/metrics` scrapes would get 503 just when operators need them.
fn max_parked(max_connections: usize) -> usize {
    (max_connections / 2).max(1)
}

/// The serving loop.
///
/// At most `max_parked` /wait requests are parked ([`max_parked`]): one
/// more, and the one parked longest is answered at once with the state as
/// of now (as if its timeout had come; a keep-alive client's connection is
/// then idle, which a newcomer may take), or into the void if its client
/// has gone.
fn serve(
    state: Arc<Loop>,
    (ctx, renderer): (routes::Ctx, render::Renderer),
    mut rebuilder: backend::Rebuilder,
    max_parked: usize,
) {
    let mut parked: Vec<http::Parked> = Vec::new();
    while !state.stop.is_set() {
        state.beat.beat();
        rebuilder.run(&state);
        let server = state.server();
        let next = parked
            .iter()
            .map(|p| p.deadline)
            .chain(rebuilder.due())
            .min();
        // recv_timeout answers Ok(None) both on timeout and on unblock
        // (stop, a health change, the front saying the socket is gone).
        let wait = next.map_or(IDLE_WAKE, |t| t.saturating_duration_since(Instant::now()));
        match server.recv_timeout(wait) {
            Ok(Some(req)) => {
                // Tests wedge the loop here (`diag-request=sleep:MS`).
                crate::infra::failpoints::hit("diag-request");
                // A bug in an endpoint must not take the whole
                // diagnostics service down with this thread.
                match catch_unwind(AssertUnwindSafe(|| http::handle(&ctx, &renderer, req))) {
                    Ok(Some(p)) => parked.push(p),
                    Ok(None) => {}
                    Err(_) => log::error("a diagnostics request panicked; dropped", &[]),
                }
            }
            Ok(None) => {}
            // tiny_http's accept thread ended (out of descriptors: its
            // accept(2) numbers the new descriptor before it waits). The
            // connections it accepted still carry requests, and the front
            // keeps using them: the socket is rebuilt only once the front
            // needs a new connection and finds it refused ([`backend`]).
            Err(e) => log::warn(
                "diagnostics serving loop: tiny_http stopped accepting; its connections still serve",
                &[("error", &e)],
            ),
        }
        if parked.len() > max_parked {
            // In the order they were parked (`answer_ready` keeps it).
            let excess = parked.len() - max_parked;
            for p in parked.drain(..excess) {
                http::answer_now(&ctx, p);
            }
        }
        // Not on every pass: a snapshot copies the whole table, and other
        // requests pass here too while a /wait is parked.
        let now = Instant::now();
        if state.changed.swap(false, Ordering::SeqCst) || parked.iter().any(|p| p.deadline <= now) {
            parked = http::answer_ready(&ctx, parked);
        }
    }
}
