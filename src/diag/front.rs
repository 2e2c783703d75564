//! The front door of the diagnostics service: the only code that touches
//! bytes from untrusted clients.
//!
//! tiny_http 0.12 trusts its peers (its `lib.rs` accept loop and
//! `client.rs` request reading, as published on crates.io): no
//! timeouts, no header limits, one thread per connection without bound, body
//! draining that can abort the process, and an accept loop that dies on the
//! first error. So tiny_http listens on a private Unix socket, and this front
//! owns the public TCP listener. One thread polls every connection:
//!
//! 1. `Head`: read the request head, bounded in size, header count and time.
//!    Requests that declare a body are refused (the endpoints take none).
//! 2. `Queued`, `Piped`: forward a clean copy of the head to tiny_http on
//!    a kept connection, several in one write when they come together
//!    ([`kept`]), and take its response from there; or `Backend`: on a
//!    connection of its own (`Connection: close`) for a slow request.
//! 3. `Reply`: write the response back, bounded in time.
//!
//! A connection waiting for its head costs a buffer, not a thread. When the
//! connection cap is reached, a client that does not take its answers, or
//! else the one that has waited longest for its head, is closed to make
//! room (slow clients cannot lock others out); a probe (`/livez`,
//! `/readyz`) finds room even when every slot is busy with a real request,
//! and anything else then gets a quick 503 ([`room`] has the whole rule).
//! Every close after an answer is a lingering close (RFC 9112 §9.6), so a
//! client gets what was written for it, not a reset.
//! Accept errors (EMFILE and friends) never end the loop. The front holds
//! [`RESERVE_FDS`] descriptors in reserve, so that when the process is out
//! of them (services may hold every one) a probe is still accepted and
//! answered, and the client after it is told why it is refused; new
//! connections resume as soon as descriptors free up ([`accept`], on the
//! toolkit of [`crate::infra::sockets`]).
//! If tiny_http stops listening on its socket (its accept thread dies on
//! some accept-time errors, one of them a panic), the front notices the
//! refused connection and the serving loop rebuilds it.

use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll::EventFlags;

use super::request_head::{HeadLimits, Peer};
use crate::infra::progress::Beat;
use crate::infra::sockets::Reserve;
use crate::infra::stop::Stop;
use crate::log;

mod accept;
pub mod auth;
mod conn;
mod kept;
mod local;
mod room;
#[cfg(test)]
mod tests;
mod tls;
mod turn;
mod upstream;

/// Every limit of the front, explicit.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once (all states).
    pub max_connections: usize,
    /// Request head sizes (head, header lines, target): see [`super::request_head`].
    pub head: HeadLimits,
    /// Time a client has to send its whole request head. Past it: 408.
    pub head_timeout: Duration,
    /// Time the endpoints have to answer.
    pub response_timeout: Duration,
    /// The same for `/wait` and CPU profiles, which take their time by
    /// design (both are capped at 300 s by the endpoints).
    pub slow_response_timeout: Duration,
    /// Time a client has to take the whole response.
    pub write_timeout: Duration,
    /// Time the endpoints still have once the client has shut down its
    /// sending side (a half-close looks the same as a client that went away).
    pub half_close_grace: Duration,
    /// Largest response relayed.
    pub max_response_bytes: usize,
    /// After refusing a request, how long and how much of the client's
    /// remaining upload is read and dropped so it can see the answer.
    pub linger_time: Duration,
    pub linger_bytes: usize,
    /// Connections beyond `max_connections` that may read a head and get
    /// an answer the serving loop gives at once (`/livez`, `/readyz`), so
    /// that probes find room whatever holds the slots ([`room`]).
    pub probe_room: usize,
    /// A client that has not taken its answer whole this long after its
    /// socket filled is the first to lose its slot to a newcomer; a client
    /// that has waited this long for its head comes next ([`room`]).
    pub stall_time: Duration,
    /// Connections to tiny_http kept open for the next requests (see
    /// [`upstream`]; never more than 3): each holds one of tiny_http's
    /// worker threads.
    pub kept_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: crate::config::DEFAULT_DIAG_MAX_CONNECTIONS,
            head: HeadLimits::default(),
            head_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            slow_response_timeout: Duration::from_secs(330),
            write_timeout: Duration::from_secs(10),
            half_close_grace: Duration::from_secs(2),
            max_response_bytes: 64 * 1024 * 1024,
            linger_time: Duration::from_secs(1),
            linger_bytes: 1024 * 1024,
            probe_room: PROBE_ROOM,
            stall_time: Duration::from_secs(1),
            kept_connections: upstream::MAX_KEPT,
        }
    }
}

/// Connections the probe room holds by default ([`Limits::probe_room`]):
/// a kubelet's liveness, readiness and startup probes at once, and one more.
const PROBE_ROOM: usize = 4;

/// Descriptors the front holds in reserve for when the process is out of
/// them ([`accept`]): [`PIPE_FDS`] to open a connection to tiny_http (the
/// reserve is given up for every new one: `upstream::connect_upstream`),
/// 2 for probe clients, and 1 to accept the client beyond them and tell it
/// why it is refused. Probe clients may take the first 3 too once a kept
/// connection is open.
pub const RESERVE_FDS: usize = PIPE_FDS + 2 + 1;

/// Descriptors a new connection to tiny_http takes: ours; the duplicate
/// tiny_http makes of its end (util/refined_tcp_stream.rs `try_clone`,
/// which panics when there is none); and the number its accept thread's
/// next accept(2) takes before it waits (Linux numbers the new descriptor
/// first: with none free, accept fails at once and tiny_http's accept loop
/// ends). Its end takes the number its waiting accept(2) holds already.
const PIPE_FDS: usize = 3;

/// Descriptors one slot can hold: the client's, ours to tiny_http, and
/// tiny_http's end of that, which it holds twice (it `try_clone`s every
/// accepted stream into a read and a write half); and one client lingering
/// beside it ([`room`]: as many may linger as there are slots).
const FDS_PER_CONNECTION: u64 = 5;
/// Descriptors kept for everything else in the process (the kept
/// connections to tiny_http among them, three descriptors each, and the
/// front's reserve); the probe room's, one per place (its requests go down
/// those kept connections), come on top.
const FDS_RESERVED: u64 = 24 + 3 * upstream::MAX_KEPT as u64 + RESERVE_FDS as u64;

/// Caps `limits.max_connections` so that every connection's descriptors,
/// and those of its `probe_room`, fit under the soft RLIMIT_NOFILE, with
/// room for the rest of the daemon.
pub fn fit_to_fd_limit(limits: Limits) -> Limits {
    // None: unlimited.
    let Some(current) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    else {
        return limits;
    };
    let reserved = FDS_RESERVED + limits.probe_room as u64;
    let fit = current.saturating_sub(reserved) / FDS_PER_CONNECTION;
    Limits {
        max_connections: limits.max_connections.min(fit.max(1) as usize),
        ..limits
    }
}

/// Where tiny_http listens now (it moves if the serving loop rebuilds it).
pub type BackendPath = Arc<Mutex<PathBuf>>;

/// Called with the path of a backend socket that refused a connection: no
/// one listens there any more. tiny_http's accept thread can die without a
/// word (it panics on an unwrapped `try_clone` when the process is out of
/// descriptors), so the front is the one that notices.
pub type BackendLost = Arc<dyn Fn(&Path) + Send + Sync>;

enum State {
    Head {
        buf: Vec<u8>,
    },
    /// On a connection to tiny_http of its own, which closes after the
    /// answer: a slow request, or every request when no connections are
    /// kept.
    Backend {
        up: UnixStream,
        /// `up`'s registration in the epoll set ([`turn`]).
        up_ev: EventFlags,
        out: Vec<u8>,
        sent: usize,
        resp: Vec<u8>,
        /// The response's head length, once [`upstream::framing`] read it.
        resp_head: Option<usize>,
        keep_alive: Option<Vec<u8>>,
        /// The request is a HEAD (its response has no body).
        head_method: bool,
    },
    /// Waiting for its basic auth check ([`auth`]), then forwarded.
    Auth(auth::Pending),
    /// Waiting for room on a kept connection to tiny_http (see [`kept`]).
    Queued(Request),
    /// Sent down a kept connection to tiny_http, waiting for its answer
    /// there, in order ([`kept`]).
    Piped(Request),
    Reply {
        out: Vec<u8>,
        sent: usize,
        then: Then,
    },
    /// Closing, the lingering way ([`room`]): holds no slot.
    Linger {
        drained: usize,
    },
}

/// A request for a kept connection to tiny_http.
struct Request {
    /// The clean head to send (kept to send again once, see [`kept`]).
    head: Vec<u8>,
    /// The client's connection stays open, and these bytes of its next
    /// request arrived already.
    next: Option<Vec<u8>>,
    /// The serving loop answers it as it takes it: it may be pipelined.
    at_once: bool,
    /// Sent once already, on a kept connection that closed unanswered.
    retried: bool,
}

/// What happens to a connection once its response is written.
enum Then {
    /// The lingering close ([`Conn::close_lingering`]): the client gets to
    /// read the answer, whatever it sent behind its request.
    Close,
    /// HTTP/1.1 keep-alive: wait for the next request head; these bytes of
    /// it (pipelined) arrived already.
    KeepAlive(Vec<u8>),
}

struct Conn {
    /// Names the connection for the kept connections to tiny_http that
    /// carry its request (its index in `conns` changes).
    id: u64,
    /// Plain or TLS ([`tls`]).
    client: tls::Client,
    /// `client`'s registration in the epoll set ([`turn`]).
    client_ev: EventFlags,
    /// A TCP client, or a local debug socket peer ([`local`]).
    peer: Peer,
    state: State,
    since: Instant,
    deadline: Instant,
    /// The client shut down its sending side while its request was with
    /// tiny_http.
    half_closed: bool,
    /// The client sent more while its request was with tiny_http (see
    /// [`turn`]).
    sent_more: bool,
    /// Its answer came in on a kept connection: step it this turn, without
    /// waiting for an event.
    kick: bool,
    /// It holds a place in the probe room, not a slot ([`room`]).
    probe_room: bool,
    /// It was accepted on a descriptor of the reserve: only probes are
    /// answered (anything else is refused, with the reason), it closes
    /// after its answer, and it takes no place ([`accept`]).
    on_reserve: bool,
    /// Since when its answer waits for the client to take some of it (its
    /// socket is full); None while the answer goes out.
    stalled_since: Option<Instant>,
}

impl Conn {
    /// A connection in `state`, due by `deadline`.
    fn new(id: u64, client: tls::Client, peer: Peer, state: State, deadline: Instant) -> Conn {
        Conn {
            id,
            client,
            client_ev: EventFlags::empty(),
            peer,
            state,
            since: Instant::now(),
            deadline,
            half_closed: false,
            sent_more: false,
            kick: false,
            probe_room: false,
            on_reserve: false,
            stalled_since: None,
        }
    }
}

pub struct Front {
    /// The TCP port (`diag_addr`), if any.
    listener: Option<TcpListener>,
    /// The local debug socket, if any ([`local`]: its access rule).
    local: Option<UnixListener>,
    backend: BackendPath,
    backend_lost: BackendLost,
    limits: Limits,
    /// Its descriptor wakes the loop: at the stop, or for a watchdog poke
    /// ([`Stop::wake`]), which only makes it turn once ([`turn`]).
    stop: Stop,
    /// One turn per pass of the loop (for the systemd watchdog).
    beat: Beat,
    /// Descriptors for probes when the process has none free
    /// ([`RESERVE_FDS`]).
    reserve: Reserve,
    /// A client was closed to free a descriptor for the one waiting in
    /// accept(): the reserve must not take it first.
    newcomer_first: bool,
    /// Until when tiny_http may still be accepting a connection the front
    /// made ([`Front::connect_upstream`]).
    upstream_accepting: Option<Instant>,
    /// When the front last found descriptors short (an accept or a connect
    /// failed for want of one, or the reserve could not be filled).
    short_at: Option<Instant>,
    conns: Vec<Conn>,
    /// The id of the next connection.
    next_id: u64,
    /// Where tiny_http is, and the cap on kept connections.
    pool: upstream::Pool,
    /// The kept connections to tiny_http, idle or carrying requests.
    kept: Vec<kept::KeptConn>,
    accept_paused_until: Option<Instant>,
    /// TLS and auth for new connections and requests ([`auth`]).
    security: auth::SecurityHandle,
    /// `diag-auth`, started with the front when basic auth is on, else at
    /// the first bcrypt check ([`auth`]).
    checker: Option<auth::Checker>,
    last_accept_error: Option<Instant>,
    last_backend_error: Option<Instant>,
    /// The last error starting `diag-auth` logged ([`auth`]).
    last_auth_error: Option<Instant>,
    /// The last warning about a refused debug socket peer ([`local`]).
    last_local_refusal: Option<Instant>,
}

impl Front {
    /// A front on the TCP `listener` and the local debug socket `local`
    /// (either may be absent).
    pub fn new(
        (listener, local): (Option<TcpListener>, Option<UnixListener>),
        backend: BackendPath,
        backend_lost: BackendLost,
        limits: Limits,
        stop: Stop,
    ) -> io::Result<Front> {
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
        }
        if let Some(l) = &local {
            l.set_nonblocking(true)?;
        }
        let pool = upstream::Pool::new(limits.kept_connections);
        Ok(Front {
            listener,
            local,
            backend,
            backend_lost,
            limits,
            stop,
            beat: Beat::default(),
            reserve: Reserve::new(RESERVE_FDS),
            newcomer_first: false,
            upstream_accepting: None,
            short_at: None,
            conns: Vec::new(),
            next_id: 0,
            pool,
            kept: Vec::new(),
            accept_paused_until: None,
            security: Arc::new(Mutex::new(Arc::new(auth::Security::none()))),
            checker: None,
            last_accept_error: None,
            last_backend_error: None,
            last_auth_error: None,
            last_local_refusal: None,
        })
    }

    /// Counts the loop's turns on `beat` (shared with the systemd watchdog,
    /// and with the fronts before and after this one).
    pub fn beating(mut self, beat: Beat) -> Front {
        self.beat = beat;
        self
    }

    /// Applies the web configuration in `security` (a reload may swap it).
    pub fn securing(mut self, security: auth::SecurityHandle) -> Front {
        self.security = security;
        if auth::current(&self.security).checks_passwords() {
            self.start_checker();
        }
        self
    }

    /// The front with its epoll set made, ready to run: made before its
    /// thread starts, so that a start (or a reload's move to a new port)
    /// that cannot have one fails whole, with the reason.
    pub fn ready(self) -> io::Result<Ready> {
        let set = turn::Events::epoll_set(&self)?;
        Ok(Ready(self, set))
    }
}

/// A front with its epoll set ([`Front::ready`]).
pub struct Ready(Front, std::os::fd::OwnedFd);

impl Ready {
    /// Serves until the stop.
    pub fn run(self) {
        let Ready(mut front, set) = self;
        let mut events = turn::Events::of_set(set);
        loop {
            let now = Instant::now();
            if front.accept_paused_until.is_some_and(|t| now >= t) {
                front.accept_paused_until = None;
            }
            if let Err(e) = front.wait(&mut events, now) {
                log::error("diagnostics front: epoll_wait failed", &[("error", &e)]);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // A turn is a wait that worked (one that keeps failing serves
            // no one, and the watchdog should see it).
            front.beat.beat();
            if front.stopping(&events) {
                // This last turn counted too: a poke taken just before
                // the stop is answered (the next front takes the next).
                return;
            }
            front.serve(&events);
        }
    }
}

/// A nonblocking read or write that found nothing to do: try again later.
fn again(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}
