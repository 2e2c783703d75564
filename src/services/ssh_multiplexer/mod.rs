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
//! host, refused or unreachable port, too many connections) the bot writes
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

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, MultiplexerConfig};
use crate::diag::front::once_a_second;
use crate::identity_files::{CERT_FILE, KEY_FILE};
use crate::inotify;
use crate::log;
use crate::metrics::Metrics;
use crate::poll::{poll, pollfd};
use drain::Relays;
use crate::services::{Context, Drain, Service};

pub mod budget;
pub mod drain;
pub mod socket;

use socket::Socket;

/// The socket's file name in the destination.
pub const SOCKET_NAME: &str = "v1.sock";
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
pub const MAX_SOCKET_PATH: usize = 107;

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
const RELAY_BUFFER: usize = 64 * 1024;
/// TCP keepalive on the target connection: a target that vanishes (host
/// down, network partition) while the relay is idle is noticed after
/// IDLE + INTERVAL × COUNT (2 minutes), and the relay ends.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_COUNT: u32 = 4;
/// Once the client has sent its EOF, how often the relay also checks
/// whether the target → client direction has ended (normally a hang-up on
/// the client socket says so at once).
const HANGUP_CHECK: Duration = Duration::from_secs(1);
/// After refusing a request, how long and how much of the client's
/// remaining input is read and dropped so that it can read the reason.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

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
        }
    }
}

impl Service for SshMultiplexer {
    fn kind(&self) -> &'static str {
        "ssh-multiplexer"
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
        let socket = Socket::bind(&dest)?;
        let exe = tbot_exe()?;
        let text = ssh_config_text(&exe, &socket.path, &identity_dir)?;
        let config_path = socket.write_beside(SSH_CONFIG_NAME, text.as_bytes())?;
        let (max, max_lingering) = budget::fit(self.config.max_connections);
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
            max,
            max_lingering,
            relays: self.relays.clone(),
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
    let mut lingering = Lingering::new(conns.max_lingering);
    // Without a watch, the socket is checked on a timer instead.
    let mut watch = watch_dest(dest, ctx);
    let mut next_check = watch.is_none().then(|| Instant::now() + OWNERSHIP_CHECK);
    // A change between the bind and the watch sent no event.
    socket.check_still_ours()?;
    let mut fds = Vec::new();
    // Given up to accept and refuse one client when out of descriptors.
    let mut reserve = File::open("/dev/null").ok();
    let mut last_accept_error = None;
    loop {
        if ctx.stopping() {
            return Ok(());
        }
        fds.clear();
        fds.push(pollfd(socket.listener.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(ctx.stop_fd().as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(watch.as_ref().map_or(-1, |w| w.fd()), libc::POLLIN));
        fds.extend(lingering.fds().map(|fd| pollfd(fd, libc::POLLIN)));
        // Idle, with a watch: no timeout at all.
        let wake_at = [lingering.deadline(), next_check]
            .into_iter()
            .flatten()
            .min();
        poll(
            &mut fds,
            wake_at.map(|t| t.saturating_duration_since(Instant::now())),
        )
        .map_err(|e| format!("{}: poll: {e}", socket.path.display()))?;
        if fds[1].revents != 0 {
            return Ok(());
        }
        let readable = fds[0].revents != 0;
        let dest_changed = fds[2].revents != 0;
        lingering.drain();
        while readable && !ctx.stopping() {
            match socket.listener.accept() {
                Ok((stream, _)) => conns.handle(stream, &mut lingering),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and friends: never give up. Clients can cause
                    // this at will, so the warning is rate-limited.
                    if once_a_second(&mut last_accept_error) {
                        log::warn(
                            "ssh multiplexer: accept failed; still listening",
                            &[("service", &ctx.name()), ("error", &e)],
                        );
                    }
                    if out_of_descriptors(&e) && conns.refuse_with_reserve(socket, &mut reserve) {
                        continue;
                    }
                    // Nothing to refuse a client with: back off briefly
                    // rather than spin.
                    if !ctx.sleep(Duration::from_millis(100)) {
                        return Ok(());
                    }
                    if reserve.is_none() {
                        reserve = File::open("/dev/null").ok();
                    }
                    break;
                }
            }
        }
        if dest_changed {
            if let Some(w) = &watch {
                // What happened matters less than that something did: the
                // check below looks at the socket itself.
                let watch_over = match w.events() {
                    Ok(events) => events.iter().any(inotify::Event::ends_watch),
                    Err(e) => {
                        log::warn(
                            "ssh multiplexer: cannot read the destination's changes; checking the socket every 2s",
                            &[("service", &ctx.name()), ("error", &e)],
                        );
                        true
                    }
                };
                if watch_over {
                    watch = None;
                    next_check = Some(Instant::now() + OWNERSHIP_CHECK);
                }
            }
            socket.check_still_ours()?;
        }
        if next_check.is_some_and(|t| Instant::now() >= t) {
            socket.check_still_ours()?;
            next_check = Some(Instant::now() + OWNERSHIP_CHECK);
        }
    }
}

/// An inotify watch of the destination for [`DEST_EVENTS`], or None (logged)
/// if inotify is unavailable (no kernel support, or the per-user limit of
/// instances reached): then the socket is checked every [`OWNERSHIP_CHECK`].
fn watch_dest(dest: &Path, ctx: &Context) -> Option<inotify::Watch> {
    inotify::Watch::dir(dest, DEST_EVENTS)
        .inspect_err(|e| {
            log::warn(
                "ssh multiplexer: cannot watch the destination; checking the socket every 2s",
                &[("service", &ctx.name()), ("error", e)],
            )
        })
        .ok()
}

/// An accept error for want of descriptors (or kernel memory).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Waits until `fd` is readable (or hung up); false on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    poll(&mut [pollfd(fd, libc::POLLIN)], Some(timeout)).map(|n| n > 0)
}

/// Waits until `fd` can be written to, without a time limit.
pub fn wait_writable(fd: RawFd) -> io::Result<()> {
    poll(&mut [pollfd(fd, libc::POLLOUT)], None).map(|_| ())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The path of the running tbot binary, for the ssh_config's ProxyCommand.
fn tbot_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("finding the tbot binary for ssh_config: {e}"))?;
    // Linux names a binary replaced since start (a package upgrade) "… (deleted)";
    // the new binary is at the original path.
    Ok(
        match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(s) => PathBuf::from(s),
            None => exe,
        },
    )
}

// ---------------------------------------------------------------------------
// ssh_config.

/// The `ssh_config` that sends every host through this multiplexer with the
/// identity output's key and certificate.
pub fn ssh_config_text(exe: &Path, socket: &Path, identity_dir: &Path) -> Result<String, String> {
    let proxy = format!(
        "{} ssh-multiplexer-proxy-command {} %h:%p",
        shell_word(exe)?,
        shell_word(socket)?
    );
    let key = config_word(&identity_dir.join(KEY_FILE))?;
    let cert = config_word(&identity_dir.join(CERT_FILE))?;
    Ok(format!(
        "\
# Written by tbot's ssh-multiplexer; replaced whenever the service starts.
# Use: ssh -F {config} user@host
# Host key checking (StrictHostKeyChecking, UserKnownHostsFile) is left to you.
Host *
    ProxyCommand {proxy}
    ProxyUseFdpass yes
    IdentityFile {key}
    CertificateFile {cert}
    IdentitiesOnly yes
",
        config = socket.with_file_name(SSH_CONFIG_NAME).display(),
    ))
}

fn utf8_path(p: &Path) -> Result<&str, String> {
    let s = p.to_str().ok_or_else(|| {
        format!(
            "{}: path is not UTF-8; cannot write it into ssh_config",
            p.display()
        )
    })?;
    if s.chars().any(char::is_control) {
        return Err(format!(
            "{}: path has control characters; cannot write it into ssh_config",
            p.display()
        ));
    }
    Ok(s)
}

/// A path as one word of ProxyCommand: ssh expands `%` tokens, then runs the
/// line with `sh -c`, so: `%` doubled, then single-quoted for the shell.
fn shell_word(p: &Path) -> Result<String, String> {
    let s = utf8_path(p)?.replace('%', "%%");
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

/// A path as an ssh_config argument that ssh expands (`IdentityFile`,
/// `CertificateFile`): `%` doubled, double-quoted with `\` and `"` escaped.
/// `${` cannot be escaped (ssh would read an environment variable).
fn config_word(p: &Path) -> Result<String, String> {
    let s = utf8_path(p)?;
    if s.contains("${") {
        return Err(format!(
            "{}: path contains \"${{\", which ssh_config would expand as an environment variable",
            p.display()
        ));
    }
    let s = s
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("\"{s}\""))
}

// ---------------------------------------------------------------------------
// Connections.

/// What every connection thread needs.
struct Connections {
    service: Arc<str>,
    metrics: Arc<Metrics>,
    /// Connections being handled (their `mux-conn` thread is alive).
    active: Arc<AtomicUsize>,
    /// `max_connections`, fitted to the open-file limit (`budget`).
    max: usize,
    /// Refused clients lingering at most (one descriptor each).
    max_lingering: usize,
    relays: Relays,
}

/// One request in the metrics: started and in flight from creation; handled
/// (`ERROR` unless marked OK) when dropped, even by a panic.
struct Request {
    metrics: Arc<Metrics>,
    ok: bool,
}

impl Request {
    fn start(metrics: &Arc<Metrics>) -> Request {
        metrics.mux_started.inc();
        metrics.mux_in_flight.inc();
        Request {
            metrics: metrics.clone(),
            ok: false,
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let status = if self.ok { "OK" } else { "ERROR" };
        self.metrics.mux_handled.with_label_values(&[status]).inc();
        self.metrics.mux_in_flight.dec();
    }
}

/// A taken connection slot, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// Called on the accept thread for every accepted connection; never
    /// blocks (a refused client lingers in `lingering`).
    fn handle(&self, stream: UnixStream, lingering: &mut Lingering) {
        let request = Request::start(&self.metrics);
        // Only this thread adds to `active`, so check-then-add cannot overshoot.
        if self.active.load(Ordering::Acquire) >= self.max {
            let reason = format!(
                "too many connections (max_connections is {}); try again later",
                self.max
            );
            self.refuse(stream, &reason, lingering);
            drop(request);
            return;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.active.clone());
        let fallback = stream.try_clone();
        let service = self.service.clone();
        let relays = self.relays.clone();
        let spawned = crate::threads::spawn("mux-conn", move || {
            let _slot = slot;
            let mut client = stream;
            let registered = relays.register(&client);
            serve(&mut client, request, &service);
            // Out of the registry before the socket closes (see `drain`).
            drop(registered);
            drop(client);
        });
        if let Err(e) = spawned {
            // The closure (request, slot, stream) was dropped: counted ERROR.
            let reason = format!("cannot start a connection thread: {e}");
            match fallback {
                Ok(s) => self.refuse(s, &reason, lingering),
                Err(_) => fail(&self.service, None, None, &reason),
            }
        }
    }

    /// accept() failed for want of descriptors: frees the reserve, accepts
    /// one waiting client on it and refuses it with the reason (counted as
    /// `ERROR`; logged only by the caller's rate-limited warning), then takes
    /// the reserve back. False if there was no reserve or no client accepted.
    fn refuse_with_reserve(&self, socket: &Socket, reserve: &mut Option<File>) -> bool {
        if reserve.take().is_none() {
            return false;
        }
        let refused = match socket.listener.accept() {
            Ok((stream, _)) => {
                let _request = Request::start(&self.metrics);
                let _ = stream.set_nonblocking(true);
                tell(&stream, "out of file descriptors; try again later");
                // Take in what the client has sent so far: closing with
                // unread data would reset it before it reads the line. No
                // lingering: that would hold the descriptor.
                drained(&stream, &mut 0);
                true
            }
            Err(_) => false,
        };
        *reserve = File::open("/dev/null").ok();
        refused
    }

    fn refuse(&self, stream: UnixStream, reason: &str, lingering: &mut Lingering) {
        // A fresh socket's buffer takes a short line without blocking;
        // nonblocking anyway, so that the accept loop never waits.
        let _ = stream.set_nonblocking(true);
        log_failure(&self.service, None, reason);
        tell(&stream, reason);
        lingering.add(stream);
    }
}

/// Logs a failed request and tells the client why, in one line, then
/// lingers (see [`linger`]). For connection threads, which may block.
fn fail(service: &str, stream: Option<&UnixStream>, target: Option<&str>, reason: &str) {
    log_failure(service, target, reason);
    if let Some(s) = stream {
        let _ = s.set_write_timeout(Some(LINGER_TIME));
        tell(s, reason);
        linger(s);
    }
}

fn log_failure(service: &str, target: Option<&str>, reason: &str) {
    log::warn(
        "ssh multiplexer request failed",
        &[
            ("service", &service),
            ("target", &target.unwrap_or("-")),
            ("error", &reason),
        ],
    );
}

/// Writes the error line and half-closes: nothing else will come.
fn tell(mut s: &UnixStream, reason: &str) {
    let _ = s.write_all(format!("{ERROR_PREFIX}{reason}\n").as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// After the error line, reads and drops what the client sends until it
/// closes, for at most [`LINGER_TIME`] and [`LINGER_BYTES`]. A Unix socket
/// closed with unread data resets its peer: the client's next read would
/// fail with ECONNRESET (or its write of the request with EPIPE) instead of
/// showing the line and a clean end.
fn linger(s: &UnixStream) {
    if s.set_nonblocking(true).is_err() {
        return;
    }
    let end = Instant::now() + LINGER_TIME;
    let mut total = 0;
    while !drained(s, &mut total) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || wait_readable(s.as_raw_fd(), left).is_err() {
            return;
        }
    }
}

/// Reads what a nonblocking socket holds; true once the client is done
/// (EOF, an error, or [`LINGER_BYTES`] read in all).
fn drained(mut s: &UnixStream, total: &mut usize) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                *total += n;
                if *total >= LINGER_BYTES {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Connections refused on the accept thread, lingering there (see
/// [`linger`]) without blocking it: polled with the listener. At most the
/// cap given (64, or fewer under a low open-file limit); past that the
/// oldest is closed at once.
struct Lingering(VecDeque<(UnixStream, Instant, usize)>, usize);

impl Lingering {
    fn new(max: usize) -> Lingering {
        Lingering(VecDeque::new(), max.max(1))
    }

    fn add(&mut self, s: UnixStream) {
        if self.0.len() >= self.1 {
            self.0.pop_front();
        }
        let mut total = 0;
        if !drained(&s, &mut total) {
            self.0.push_back((s, Instant::now() + LINGER_TIME, total));
        }
    }

    fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.0.iter().map(|(s, _, _)| s.as_raw_fd())
    }

    /// Until when the accept loop may sleep: until the oldest one's time
    /// is up (None: none lingers).
    fn deadline(&self) -> Option<Instant> {
        self.0.front().map(|(_, until, _)| *until)
    }

    /// Reads what each sent; closes those done or out of time.
    fn drain(&mut self) {
        let now = Instant::now();
        self.0
            .retain_mut(|(s, until, total)| now < *until && !drained(s, total));
    }
}

/// Handles one connection on its own thread: request, dial, relay.
fn serve(client: &mut UnixStream, mut request: Request, service: &str) {
    let _ = client.set_nonblocking(false);
    let (text, early) = match read_request(client, REQUEST_DEADLINE) {
        Ok(r) => r,
        Err(e) => return fail(service, Some(client), None, &e),
    };
    let target = match Target::parse(&text) {
        Ok(t) => t,
        Err(e) => return fail(service, Some(client), Some(&printable(&text)), &e),
    };
    let shown = target.to_string();
    let upstream = match target.dial(DIAL_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return fail(service, Some(client), Some(&shown), &e),
    };
    log::debug(
        "ssh multiplexer relaying",
        &[("service", &service), ("target", &shown)],
    );
    match relay(client, &upstream, &early) {
        Ok((up, down)) => {
            request.ok = true;
            log::debug(
                "ssh multiplexer relay ended",
                &[
                    ("service", &service),
                    ("target", &shown),
                    ("bytes_up", &up),
                    ("bytes_down", &down),
                ],
            );
        }
        Err(e) => fail(service, Some(client), Some(&shown), &e),
    }
}

/// `text` for a log line: control characters escaped, at most 100 chars.
fn printable(text: &str) -> String {
    text.chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect()
}

/// Reads the request up to its NUL within `deadline`. Returns its text and
/// whatever the client sent after the NUL (already the relayed stream).
pub fn read_request(s: &mut UnixStream, deadline: Duration) -> Result<(String, Vec<u8>), String> {
    let end = Instant::now() + deadline;
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    let mut chunk = [0u8; MAX_REQUEST];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete request within {}",
                crate::duration::format(deadline)
            ));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| format!("reading the request: {e}"))?;
        let n = match s.read(&mut chunk) {
            Ok(0) => {
                return Err("the client closed the connection before the request's NUL byte".into())
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.iter().position(|&b| b == 0) {
            if i >= MAX_REQUEST {
                return Err(too_long());
            }
            let rest = buf.split_off(i + 1);
            buf.pop();
            let text =
                String::from_utf8(buf).map_err(|_| "the request is not UTF-8".to_string())?;
            s.set_read_timeout(None)
                .map_err(|e| format!("reading the request: {e}"))?;
            return Ok((text, rest));
        }
        if buf.len() >= MAX_REQUEST {
            return Err(too_long());
        }
    }
}

fn too_long() -> String {
    format!("request too long: expected host:port and a NUL byte within {MAX_REQUEST} bytes")
}

/// A parsed `host:port[|cluster]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl crate::log::Field for Target {}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    pub fn parse(request: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            Err(format!(
                "malformed request {:?}: {why} (expected host:port or host:port|cluster)",
                printable(request)
            ))
        };
        let mut fields = request.split('|');
        let addr = fields.next().unwrap_or_default();
        let _cluster = fields.next();
        if fields.next().is_some() {
            return bad("more than two '|'-separated fields");
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return bad("no port");
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return bad("the port must be a number from 1 to 65535"),
        };
        let host = match host.strip_prefix('[') {
            Some(h) => match h.strip_suffix(']') {
                Some(h) => h,
                None => return bad("unclosed '['"),
            },
            None => host,
        };
        if host.is_empty() {
            return bad("no host");
        }
        if host.len() > 253
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "[]/\\".contains(c))
        {
            return bad("invalid host");
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("a host with ':' must be an IPv6 address");
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    /// Resolves the host and connects to the first address that answers.
    pub fn dial(&self, timeout: Duration) -> Result<TcpStream, String> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", self.host))?
            .collect();
        let mut last = format!("resolving {}: no addresses", self.host);
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    // Interactive sessions: no Nagle delay on keystrokes.
                    let _ = s.set_nodelay(true);
                    if let Err(e) = keepalive(&s) {
                        log::warn(
                            "ssh multiplexer: cannot enable TCP keepalive; a vanished target may hold its relay",
                            &[("target", &self), ("error", &e)],
                        );
                    }
                    return Ok(s);
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    last = format!(
                        "connecting to {a}: no answer within {}",
                        crate::duration::format(timeout)
                    )
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        Err(last)
    }
}

/// Turns on TCP keepalive with [`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`]
/// and [`KEEPALIVE_COUNT`].
fn keepalive(s: &TcpStream) -> io::Result<()> {
    let secs = |d: Duration| libc::c_int::try_from(d.as_secs()).unwrap_or(libc::c_int::MAX);
    let count = libc::c_int::try_from(KEEPALIVE_COUNT).unwrap_or(libc::c_int::MAX);
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(KEEPALIVE_IDLE)),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            secs(KEEPALIVE_INTERVAL),
        ),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        // SAFETY: setsockopt(2) on an open socket with a c_int we own and its size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Relays until both directions have ended. Returns the bytes sent up
/// (client → target) and down; an error only if the relay could not start
/// (then nothing has been relayed yet).
fn relay(client: &UnixStream, target: &TcpStream, early: &[u8]) -> Result<(u64, u64), String> {
    let mut client_w = client
        .try_clone()
        .map_err(|e| format!("relay: duplicating the client socket: {e}"))?;
    let mut target_r = target
        .try_clone()
        .map_err(|e| format!("relay: duplicating the target socket: {e}"))?;
    let down = crate::threads::spawn("mux-conn-down", move || {
        let n = pump(&mut target_r, &mut client_w);
        end_direction(&n, &client_w, &target_r);
        n.unwrap_or(0)
    })
    .map_err(|e| format!("cannot start a relay thread: {e}"))?;
    let (mut from, mut to) = (client, target);
    let up = to
        .write_all(early)
        .and_then(|()| pump(&mut from, &mut to))
        .map(|n| n + early.len() as u64);
    end_direction(&up, target, client);
    if up.is_ok() {
        wait_for_down(&down, client, target);
    }
    let down = down.join().unwrap_or(0);
    Ok((up.unwrap_or(0), down))
}

/// After the client's EOF went up: waits until the target → client
/// direction has ended, or until the client is gone altogether (closed, or
/// shut down both ways; POLLHUP), in which case nothing will ever read what
/// the target sends: both sockets are cut, so that a target that stays
/// silent cannot hold the relay (its slot, threads and descriptors) forever.
/// A client that only shut down its sending side keeps receiving.
fn wait_for_down(down: &JoinHandle<u64>, client: &UnixStream, target: &TcpStream) {
    while !down.is_finished() {
        // Events 0: only POLLHUP and POLLERR, which poll(2) always reports.
        // (POLLHUP also comes once the down direction shuts the client's
        // write side: then both sides of it are shut. Cutting is harmless then.)
        let mut fds = [pollfd(client.as_raw_fd(), 0)];
        match poll(&mut fds, Some(HANGUP_CHECK)) {
            Ok(_) if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 => {
                end_direction(&Err(ErrorKind::BrokenPipe.into()), target, client);
                return;
            }
            Ok(_) => {}
            // Cannot watch (no memory for poll): wait for the target as before.
            Err(_) => return,
        }
    }
}

/// After one direction (`from` → `to`) ends: on EOF, pass the half-close
/// on; on an error, cut both sockets so that the other direction ends too.
fn end_direction(outcome: &io::Result<u64>, to: &impl AsRawFd, from: &impl AsRawFd) {
    let shut = |s: RawFd, how| {
        // SAFETY: shutdown(2) on a descriptor the caller keeps open; its
        // errors (ENOTCONN once the peer is gone) change nothing here.
        unsafe { libc::shutdown(s, how) };
    };
    match outcome {
        Ok(_) => shut(to.as_raw_fd(), libc::SHUT_WR),
        Err(_) => {
            shut(to.as_raw_fd(), libc::SHUT_RDWR);
            shut(from.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// Copies until EOF; returns the bytes copied.
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("127.0.0.1:22"), Ok(target("127.0.0.1", 22)));
        assert_eq!(
            Target::parse("host.example:2222|cluster-a"),
            Ok(target("host.example", 2222))
        );
        assert_eq!(Target::parse("[::1]:22"), Ok(target("::1", 22)));
        assert_eq!(Target::parse("::1:22|"), Ok(target("::1", 22)));
        assert_eq!(target("::1", 22).to_string(), "[::1]:22");
        for bad in [
            "",
            "host",
            "host:",
            ":22",
            "host:0",
            "host:65536",
            "host:ssh",
            "a|b|c:22",
            "host:22|c|d",
            "[::1:22",
            "a b:22",
            "a\nb:22",
            "fe80:zz:22",
        ] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(e.starts_with("malformed request"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn targets_are_dialed_with_tcp_keepalive() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = target("127.0.0.1", port)
            .dial(Duration::from_secs(5))
            .unwrap();
        let get = |level, name| {
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt(2) into a c_int we own, its size given.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            value as u64
        };
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
            KEEPALIVE_IDLE.as_secs()
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
            KEEPALIVE_INTERVAL.as_secs()
        );
        assert_eq!(
            get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
            u64::from(KEEPALIVE_COUNT)
        );
    }

    #[test]
    fn requests_are_read_to_the_nul_and_keep_what_follows() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"127.0.0.1:22|x\0SSH-2.0-client\r\n").unwrap();
        let (text, early) = read_request(&mut a, Duration::from_secs(5)).unwrap();
        assert_eq!(text, "127.0.0.1:22|x");
        assert_eq!(early, b"SSH-2.0-client\r\n");

        // In pieces.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            for piece in [&b"local"[..], b"host:", b"22\0"] {
                b.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            b
        });
        let (text, early) = read_request(&mut a, Duration::from_secs(5)).unwrap();
        assert_eq!((text.as_str(), early.len()), ("localhost:22", 0));
        drop(writer.join());
    }

    #[test]
    fn bad_requests_are_bounded() {
        // Too long, without a NUL.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[b'a'; MAX_REQUEST]).unwrap();
        let e = read_request(&mut a, Duration::from_secs(5)).unwrap_err();
        assert!(e.starts_with("request too long"), "{e}");
        // A NUL just past the limit.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut long = vec![b'a'; MAX_REQUEST];
        long.push(0);
        b.write_all(&long).unwrap();
        assert!(read_request(&mut a, Duration::from_secs(5)).is_err());
        // Exactly at the limit, NUL included: accepted.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut max = vec![b'a'; MAX_REQUEST - 1];
        max.push(0);
        b.write_all(&max).unwrap();
        assert_eq!(
            read_request(&mut a, Duration::from_secs(5))
                .unwrap()
                .0
                .len(),
            MAX_REQUEST - 1
        );
        // Silence: the deadline.
        let (mut a, _b) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let e = read_request(&mut a, Duration::from_millis(200)).unwrap_err();
        assert!(e.starts_with("no complete request within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // EOF before the NUL; not UTF-8.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"host:22").unwrap();
        drop(b);
        assert!(read_request(&mut a, Duration::from_secs(5))
            .unwrap_err()
            .contains("closed"));
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"\xff:22\0").unwrap();
        assert!(read_request(&mut a, Duration::from_secs(5))
            .unwrap_err()
            .contains("UTF-8"));
    }

    #[test]
    fn ssh_config_quotes_paths() {
        let text = ssh_config_text(
            Path::new("/usr/bin/tbot"),
            Path::new("/opt/mux/v1.sock"),
            Path::new("/opt/machine-id"),
        )
        .unwrap();
        assert!(text.contains(
            "\n    ProxyCommand '/usr/bin/tbot' ssh-multiplexer-proxy-command '/opt/mux/v1.sock' %h:%p\n"
        ), "{text}");
        assert!(text.contains("\n    ProxyUseFdpass yes\n"));
        assert!(text.contains("\n    IdentityFile \"/opt/machine-id/key\"\n"));
        assert!(text.contains("\n    CertificateFile \"/opt/machine-id/key-cert.pub\"\n"));
        assert!(text.contains("\nHost *\n"));

        let text = ssh_config_text(
            Path::new("/o'k/100%/tbot"),
            Path::new("/a b/$x/v1.sock"),
            Path::new("/id \"q\"\\%d"),
        )
        .unwrap();
        assert!(text.contains(
            r#"ProxyCommand '/o'\''k/100%%/tbot' ssh-multiplexer-proxy-command '/a b/$x/v1.sock' %h:%p"#
        ), "{text}");
        assert!(
            text.contains(r#"IdentityFile "/id \"q\"\\%%d/key""#),
            "{text}"
        );

        for (exe, sock, id) in [
            ("/bin/t\nx", "/s", "/i"),
            ("/bin/t", "/s\r", "/i"),
            ("/bin/t", "/s", "/i/${HOME}"),
        ] {
            assert!(ssh_config_text(Path::new(exe), Path::new(sock), Path::new(id)).is_err());
        }
    }
}
