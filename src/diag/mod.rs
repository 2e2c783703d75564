//! The diagnostics service.
//!
//! Three pieces, each on its own thread:
//! - `diag-front` ([`front`]): owns the public TCP port and every untrusted
//!   byte; hands clean requests to tiny_http over a private Unix socket.
//! - tiny_http's own threads: parse those requests.
//! - `diag-http` (this file): the one serving loop. It answers every request
//!   ([`routes`]), parks `/wait` requests until they can be answered, and
//!   hands CPU profiles to a thread of their own. Nothing on it blocks.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::health::Health;
use crate::log;
use crate::metrics::Metrics;

pub mod debug;
pub mod front;
mod live;
pub mod routes;

/// Binds the public listener. Done before any service starts, so a bad or
/// busy address fails the start cleanly.
pub fn bind(addr: &str) -> Result<TcpListener, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("diagnostics address {addr}: {e}"))?
        .collect();
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

pub struct Options {
    pub max_connections: usize,
    pub debug: bool,
}

/// State the serving loop shares with whoever needs to wake it.
struct Loop {
    server: Mutex<Arc<tiny_http::Server>>,
    stop: AtomicBool,
    /// tiny_http no longer listens on its socket: rebuild it.
    lost: AtomicBool,
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
    /// The front on the public port; a reload may replace it (see `live`).
    front: live::FrontRun,
    threads: Vec<JoinHandle<()>>,
    dir: PathBuf,
    /// What a new front needs (see `live`).
    backend_path: front::BackendPath,
    backend_lost: front::BackendLost,
    limits: front::Limits,
    debug: Arc<AtomicBool>,
}

/// A private directory for tiny_http's socket: mode 0700, so only this user
/// reaches the serving loop without going through the front.
fn private_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut bases = vec![std::env::temp_dir(), PathBuf::from("/tmp")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        bases.insert(0, PathBuf::from(x));
    }
    let mut last = String::new();
    for base in bases {
        remove_stale_dirs(&base, pid);
        let dir = base.join(format!("tbot-diag-{pid}-{nanos:x}"));
        // Unix socket paths are limited to 107 bytes.
        if dir.as_os_str().len() > 80 {
            continue;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = format!("{}: {e}", dir.display()),
        }
    }
    Err(format!(
        "cannot create a private directory for the diagnostics socket: {last}"
    ))
}

/// Removes the socket directories of tbot processes that died without
/// cleaning up (SIGKILL, OOM): ours by owner, theirs by a PID that is gone,
/// or that is our own (a container restarts us as the same PID 1).
fn remove_stale_dirs(base: &Path, own_pid: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("tbot-diag-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let mine = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        let dead = pid == own_pid || !Path::new(&format!("/proc/{pid}")).exists();
        if mine && dead {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn backend(dir: &Path, generation: usize) -> Result<(tiny_http::Server, PathBuf), String> {
    let path = dir.join(format!("http-{generation}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((server, path))
}

pub fn start(
    listener: TcpListener,
    opts: Options,
    health: Health,
    metrics: Arc<Metrics>,
) -> Result<Diag, String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("diagnostics listener: {e}"))?;
    let dir = private_dir()?;
    let (server, path) = backend(&dir, 0)?;
    let backend_path: front::BackendPath = Arc::new(Mutex::new(path));
    let state = Arc::new(Loop {
        server: Mutex::new(Arc::new(server)),
        stop: AtomicBool::new(false),
        lost: AtomicBool::new(false),
    });

    let limits = front::Limits {
        max_connections: front::fit_to_fd_limit(opts.max_connections),
        ..front::Limits::default()
    };
    if limits.max_connections < opts.max_connections {
        log::warn(
            "diagnostics connection cap lowered to fit the open-file limit",
            &[
                ("wanted", &opts.max_connections),
                ("cap", &limits.max_connections),
            ],
        );
    }
    let lost_state = state.clone();
    let lost_path = backend_path.clone();
    let backend_lost: front::BackendLost = Arc::new(move |path: &Path| {
        // Only if the serving loop has not moved on already.
        if *lost_path.lock().unwrap_or_else(|p| p.into_inner()) == path {
            lost_state.lost.store(true, Ordering::SeqCst);
            lost_state.wake();
        }
    });
    let max_parked = limits.max_connections;
    let front = live::FrontRun::spawn(listener, &backend_path, &backend_lost, &limits)?;

    // Every applied update wakes the loop, which re-checks parked /wait
    // requests. (Waking only while some are parked would race with parking:
    // an update between the loop's check and its count would be lost.)
    let wake = state.clone();
    health.on_change(move || wake.wake());

    let mut threads = Vec::new();
    let serve_state = state.clone();
    let serve_dir = dir.clone();
    let debug = Arc::new(AtomicBool::new(opts.debug));
    let ctx = routes::Ctx {
        health,
        metrics,
        debug: debug.clone(),
    };
    let serve_backend = backend_path.clone();
    threads.push(
        crate::threads::spawn("diag-http", move || {
            serve(serve_state, ctx, serve_dir, serve_backend, max_parked)
        })
        .map_err(|e| format!("diag-http: {e}"))?,
    );
    live::announce(addr, opts.debug);
    Ok(Diag {
        state,
        front,
        threads,
        dir,
        backend_path,
        backend_lost,
        limits,
        debug,
    })
}

impl Diag {
    /// Stops the front and the serving loop and waits for both.
    pub fn shutdown(self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.wake();
        self.front.stop();
        for t in self.threads {
            if t.join().is_err() {
                log::error("a diagnostics thread panicked", &[]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With nothing parked the loop sleeps until a request or a wake-up; this
/// only bounds how long a missed wake-up could go unnoticed.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// The serving loop.
///
/// At most `max_parked` /wait requests are parked: each live one holds one of
/// the front's connections, so more can only be requests whose client has
/// gone; the oldest is answered (into the void) to free its descriptor.
fn serve(
    state: Arc<Loop>,
    ctx: routes::Ctx,
    dir: PathBuf,
    backend_path: front::BackendPath,
    max_parked: usize,
) {
    let mut parked: Vec<routes::Parked> = Vec::new();
    let mut generation = 0;
    while !state.stop.load(Ordering::SeqCst) {
        if state.lost.swap(false, Ordering::SeqCst) {
            generation += 1;
            if !rebuild(&state, &dir, generation, &backend_path) {
                // Out of descriptors, most likely: try again in a while.
                std::thread::sleep(Duration::from_secs(1));
                state.lost.store(true, Ordering::SeqCst);
            }
        } else {
            let server = state.server();
            let next = parked.iter().map(|p| p.deadline).min();
            // recv_timeout answers Ok(None) both on timeout and on unblock
            // (stop, a health change, the front saying the socket is gone);
            // an error means tiny_http's accept thread died.
            let wait = next.map_or(IDLE_WAKE, |t| t.saturating_duration_since(Instant::now()));
            match server.recv_timeout(wait) {
                Ok(Some(req)) => {
                    // A bug in an endpoint must not take the whole
                    // diagnostics service down with this thread.
                    match catch_unwind(AssertUnwindSafe(|| routes::handle(&ctx, req))) {
                        Ok(Some(p)) => parked.push(p),
                        Ok(None) => {}
                        Err(_) => log::error("a diagnostics request panicked; dropped", &[]),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn(
                        "diagnostics serving loop lost its listener; rebuilding",
                        &[("error", &e)],
                    );
                    state.lost.store(true, Ordering::SeqCst);
                }
            }
        }
        if parked.len() > max_parked {
            parked.sort_by_key(|p| p.deadline);
            let excess = parked.len() - max_parked;
            for p in parked.drain(..excess) {
                routes::answer_now(&ctx, p);
            }
        }
        parked = routes::answer_ready(&ctx, parked);
    }
}

/// Replaces tiny_http with a fresh server on a fresh socket. Parked requests
/// belong to the old one and are still answered through it.
fn rebuild(state: &Loop, dir: &Path, generation: usize, backend_path: &front::BackendPath) -> bool {
    match backend(dir, generation) {
        Ok((server, path)) => {
            let old = std::mem::replace(
                &mut *backend_path.lock().unwrap_or_else(|p| p.into_inner()),
                path,
            );
            *state.server.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(server);
            let _ = std::fs::remove_file(old);
            log::info(
                "diagnostics serving socket rebuilt",
                &[("generation", &generation)],
            );
            true
        }
        Err(e) => {
            log::error(
                "diagnostics: cannot rebuild the serving socket",
                &[("error", &e)],
            );
            false
        }
    }
}
