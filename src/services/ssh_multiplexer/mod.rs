//! The `ssh-multiplexer` service: one Unix socket through which OpenSSH
//! reaches any TCP target, so that a host needs one tbot, not one helper
//! process per SSH session.
//!
//! Protocol (`v1.sock`): the client writes `host:port` (an optional
//! `|cluster` suffix is accepted and ignored) and a NUL byte, at most
//! [`MAX_REQUEST`] bytes in all, within [`REQUEST_DEADLINE`]. The bot dials
//! the target over TCP (at most [`DIAL_TIMEOUT`] per address, TCP keepalive
//! on) and from then on relays bytes both ways until both directions have
//! ended; an EOF in one direction is passed on as a half-close
//! (`shutdown(Write)`) on the other side. A client that has closed
//! altogether ends the relay even if the target stays silent. On success the bot writes nothing of its own: the first bytes the
//! client reads are the target's. On failure (malformed request, unknown
//! host, refused or unreachable port, too many connections, too few file
//! descriptors left for a relay beside credential work) the bot writes
//! one line, [`ERROR_PREFIX`] and the reason, then closes.
//!
//! `tbot ssh-multiplexer-proxy-command` (see `proxy_command`) peeks at that
//! first reply, so ssh users see the reason as the proxy command's error;
//! a raw client, or ssh given the socket some other way, sees the line as
//! the start of the stream (ssh reports a bad banner).
//!
//! Threads: the service thread binds and accepts; it sleeps in poll(2) on the
//! listener, the stop descriptor and an inotify watch of the destination
//! (which says when `v1.sock` may have been removed or replaced), with no
//! timer while idle. Each connection gets a `mux-conn` thread,
//! which spawns a `mux-conn-down` thread for the target → client direction
//! once the target is dialed. At most `max_connections` connections are
//! handled at once; past that a newcomer is refused at once, not queued.
//! Out of file descriptors, a reserve descriptor is given up to accept and
//! refuse a waiting client, so that it is not left waiting either.
//! Stopping closes the listener and removes the socket; live relays are not
//! waited for (they end with the process). A reload that removes or changes
//! the multiplexer drains them for a bounded time (see `drain`).
//!
//! Metrics: every accepted connection counts once in
//! `requests_started_total` and, when it ends, once in
//! `requests_handled_total` (`OK`: the target was dialed and the relay ran to
//! its end; `ERROR`: anything refused or failed before that); `in_flight`
//! is always started minus handled.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, MultiplexerConfig};
use crate::infra::inotify;
use crate::infra::limits::explain;
use crate::infra::poll::{poll, woke, PollFd, PollFlags};
use crate::infra::sockets::{out_of_descriptors, Reserve};
use crate::log::{self, once_a_second};
use crate::services::readers::{Layout, Readers};
use crate::services::{Context, Drain, Service};

pub mod budget;
mod conn;
pub mod drain;
mod relay;
mod request;
pub mod socket;
mod ssh_config;

use conn::{Connections, Lingering};
use drain::Relays;
use socket::Socket;
use ssh_config::{ssh_config_text, tbot_exe};

/// The socket's file name in the destination.
pub const SOCKET_NAME: &str = crate::config::MUX_SOCKET_NAME;
/// The OpenSSH client configuration's file name in the destination.
pub const SSH_CONFIG_NAME: &str = "ssh_config";
/// Longest request, its NUL included.
pub const MAX_REQUEST: usize = 512;
/// Time a client has to send its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Time to establish the TCP connection, per address of the target.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts the one line the bot writes when it cannot serve a request.
pub const ERROR_PREFIX: &str = "tbot ssh-multiplexer error: ";
/// Longest path a Unix socket can have (`sun_path` is 108 bytes, NUL included).
pub const MAX_SOCKET_PATH: usize = crate::infra::sockets::MAX_UNIX_SOCKET_PATH;
/// After refusing a request, how long and how much of the client's
/// remaining input is read and dropped so that it can read the reason.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The multiplexer's bounds on its clients, one place for all of them (as
/// the diagnostics front's `Limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections handled at once: `max_connections`, fitted to the
    /// open-file limit (`budget`).
    pub max_connections: usize,
    /// Refused clients lingering on the accept thread at once (one
    /// descriptor each); past that the oldest is closed at once.
    pub max_lingering: usize,
    /// Time a client has to send its whole request ([`REQUEST_DEADLINE`]).
    pub request_deadline: Duration,
    /// Time to establish the TCP connection, per address ([`DIAL_TIMEOUT`]).
    pub dial_timeout: Duration,
    /// After refusing a request, how long and how many bytes of the
    /// client's remaining input are read and dropped (the lingering close).
    pub linger_time: Duration,
    pub linger_bytes: usize,
}

impl Limits {
    /// The limits for `max_connections` as configured, fitted to the
    /// open-file limit.
    pub fn fitted(max_connections: usize) -> Limits {
        let (max_connections, max_lingering) = budget::fit(max_connections);
        Limits {
            max_connections,
            max_lingering,
            request_deadline: REQUEST_DEADLINE,
            dial_timeout: DIAL_TIMEOUT,
            linger_time: LINGER_TIME,
            linger_bytes: LINGER_BYTES,
        }
    }
}

/// How often the service checks that `v1.sock` is still its own when it
/// cannot watch the destination with inotify.
const OWNERSHIP_CHECK: Duration = Duration::from_secs(2);
/// What in the destination makes the service check that `v1.sock` is still
/// its own: an entry created, deleted or renamed, or the directory itself
/// deleted or moved.
const DEST_EVENTS: u32 = libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CREATE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub struct SshMultiplexer {
    config: MultiplexerConfig,
    /// The identity output's destination (None only if the configuration
    /// was not validated, which `config::parse` always does).
    identity_dir: Option<PathBuf>,
    /// Connections being handled. Kept across restarts of `run`: relays
    /// from before a restart still count against `max_connections`.
    active: Arc<AtomicUsize>,
    /// The relays themselves, for a reload to drain (see `drain`).
    relays: Relays,
    /// The destination's readers, which a reload may replace.
    readers: Readers,
}

impl SshMultiplexer {
    pub fn new(config: &MultiplexerConfig, all: &Config) -> SshMultiplexer {
        SshMultiplexer {
            config: config.clone(),
            identity_dir: all
                .identity(&config.identity)
                .map(|i| i.destination.clone()),
            active: Arc::new(AtomicUsize::new(0)),
            relays: Relays::default(),
            readers: Readers::new(
                &config.name,
                config.access.clone(),
                Layout::Multiplexer(config.destination.clone()),
            ),
        }
    }
}

impl Service for SshMultiplexer {
    fn kind(&self) -> &'static str {
        "ssh-multiplexer"
    }

    fn readers(&self) -> Option<Readers> {
        Some(self.readers.clone())
    }

    fn drain(&self) -> Option<Drain> {
        Some(Drain {
            active: self.active.clone(),
            relays: self.relays.clone(),
        })
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        let dest = absolute(&self.config.destination)?;
        let identity_dir = match &self.identity_dir {
            Some(d) => absolute(d)?,
            None => {
                return Err(format!(
                    "{:?} is not the name of an identity service",
                    self.config.identity
                ))
            }
        };
        let exe = tbot_exe()?;
        self.readers.attach(ctx.reporter(), true);
        let (socket, config_path) = {
            // Held until both are in place: see `services::readers`.
            let mut readers = self.readers.lock();
            let socket = Socket::bind(&dest, &mut readers)?;
            let text = ssh_config_text(&exe, &socket.path, &identity_dir)?;
            let config_path =
                socket.write_beside(SSH_CONFIG_NAME, text.as_bytes(), &mut readers)?;
            self.readers.succeeded();
            (socket, config_path)
        };
        let limits = Limits::fitted(self.config.max_connections);
        let max = limits.max_connections;
        if max < self.config.max_connections {
            log::warn(
                "ssh multiplexer connection cap lowered to fit the open-file limit",
                &[
                    ("service", &ctx.name()),
                    ("wanted", &self.config.max_connections),
                    ("cap", &max),
                ],
            );
        }
        log::info(
            "ssh multiplexer listening",
            &[
                ("service", &ctx.name()),
                ("socket", &socket.path.display()),
                ("ssh_config", &config_path.display()),
                ("max_connections", &max),
            ],
        );
        ctx.healthy();
        let conns = Connections {
            service: Arc::from(ctx.name()),
            metrics: ctx.shared.metrics.clone(),
            active: self.active.clone(),
            limits,
            relays: self.relays.clone(),
            stop: ctx.stop_signal(),
        };
        let result = accept_loop(&socket, &dest, &conns, ctx);
        if result.is_ok() {
            log::info(
                "ssh multiplexer stopped",
                &[
                    ("service", &ctx.name()),
                    ("open_connections", &conns.active.load(Ordering::Relaxed)),
                ],
            );
        }
        result
    }
}

/// Accepts until tbot stops (`Ok`) or `v1.sock` is no longer the socket it
/// bound (an error: the supervisor runs the service again, which binds anew).
fn accept_loop(
    socket: &Socket,
    dest: &Path,
    conns: &Connections,
    ctx: &Context,
) -> Result<(), String> {
    let mut lingering = Lingering::new(&conns.limits);
    let mut ownership = Ownership::new(dest, ctx);
    // A change between the bind and the watch sent no event.
    socket.check_still_ours()?;
    let mut accepter = Accepter {
        spare: Reserve::new(1),
        last_error: None,
    };
    loop {
        if ctx.stopping() {
            return Ok(());
        }
        // Idle, with a watch: no timeout at all.
        let wake_at = [lingering.deadline(), ownership.next_check]
            .into_iter()
            .flatten()
            .min();
        let (stopping, readable, dest_changed) = {
            let stop = ctx
                .stop_fd()
                .map_err(|e| format!("stop descriptor: {}", explain(&e)))?;
            let mut fds = vec![
                PollFd::new(&stop, PollFlags::IN),
                PollFd::new(&socket.listener, PollFlags::IN),
            ];
            if let Some(w) = &ownership.watch {
                fds.push(PollFd::new(w, PollFlags::IN));
            }
            fds.extend(lingering.sockets().map(|s| PollFd::new(s, PollFlags::IN)));
            poll(
                &mut fds,
                wake_at.map(|t| t.saturating_duration_since(Instant::now())),
            )
            .map_err(|e| format!("{}: poll: {e}", socket.path.display()))?;
            let watched = ownership.watch.is_some() && woke(&fds[2]);
            (woke(&fds[0]), woke(&fds[1]), watched)
        };
        if stopping {
            return Ok(());
        }
        lingering.drain();
        if readable && !accepter.accept_ready(socket, conns, &mut lingering, ctx) {
            return Ok(());
        }
        if dest_changed {
            ownership.read_changes(ctx);
            socket.check_still_ours()?;
        }
        if ownership.check_due() {
            socket.check_still_ours()?;
        }
    }
}

/// What tells the accept loop to check that `v1.sock` is still its own: an
/// inotify watch of the destination, or, without one, a timer.
struct Ownership {
    watch: Option<inotify::Watch>,
    /// Only without a watch: when to check next.
    next_check: Option<Instant>,
}

impl Ownership {
    fn new(dest: &Path, ctx: &Context) -> Ownership {
        let watch = watch_dest(dest, ctx);
        let next_check = watch.is_none().then(|| Instant::now() + OWNERSHIP_CHECK);
        Ownership { watch, next_check }
    }

    /// Reads the watch's events; falls back to the timer when the watch is
    /// over (the directory moved or deleted) or cannot be read.
    fn read_changes(&mut self, ctx: &Context) {
        let Some(w) = &self.watch else {
            return;
        };
        // What happened matters less than that something did: the caller
        // checks the socket itself.
        let watch_over = match w.events() {
            Ok(events) => events.iter().any(inotify::Event::ends_watch),
            Err(e) => {
                log::warn(
                    &format!(
                        "ssh multiplexer: cannot read the destination's changes; checking the socket every {}",
                        crate::infra::duration::format(OWNERSHIP_CHECK)
                    ),
                    &[("service", &ctx.name()), ("error", &e)],
                );
                true
            }
        };
        if watch_over {
            self.watch = None;
            self.next_check = Some(Instant::now() + OWNERSHIP_CHECK);
        }
    }

    /// True when the timer says check now (and sets the next one).
    fn check_due(&mut self) -> bool {
        if self.next_check.is_some_and(|t| Instant::now() >= t) {
            self.next_check = Some(Instant::now() + OWNERSHIP_CHECK);
            return true;
        }
        false
    }
}

/// The accept side of the loop: the spare descriptor for running out of
/// descriptors, and the rate limit of its warning.
struct Accepter {
    spare: Reserve,
    last_error: Option<Instant>,
}

impl Accepter {
    /// Accepts every waiting client. False when tbot stopped meanwhile.
    fn accept_ready(
        &mut self,
        socket: &Socket,
        conns: &Connections,
        lingering: &mut Lingering,
        ctx: &Context,
    ) -> bool {
        while !ctx.stopping() {
            match socket.listener.accept() {
                Ok((stream, _)) => conns.handle(stream, lingering),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: never give up. Clients can cause
                    // this at will, so the warning is rate-limited.
                    if once_a_second(&mut self.last_error) {
                        log::warn(
                            "ssh multiplexer: accept failed; still listening",
                            &[("service", &ctx.name()), ("error", &e)],
                        );
                    }
                    if out_of_descriptors(&e) && conns.refuse_with_spare(socket, &mut self.spare) {
                        continue;
                    }
                    // Nothing to refuse a client with: back off briefly
                    // rather than spin.
                    if !ctx.sleep(Duration::from_millis(100)) {
                        return false;
                    }
                    self.spare.refill();
                    break;
                }
            }
        }
        true
    }
}

/// An inotify watch of the destination for [`DEST_EVENTS`], or None (logged)
/// if inotify is unavailable (no kernel support, or the per-user limit of
/// instances reached): then the socket is checked every [`OWNERSHIP_CHECK`].
fn watch_dest(dest: &Path, ctx: &Context) -> Option<inotify::Watch> {
    inotify::Watch::dir(dest, DEST_EVENTS)
        .inspect_err(|e| {
            log::warn(
                &format!(
                    "ssh multiplexer: cannot watch the destination; checking the socket every {}",
                    crate::infra::duration::format(OWNERSHIP_CHECK)
                ),
                &[("service", &ctx.name()), ("error", e)],
            )
        })
        .ok()
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}
