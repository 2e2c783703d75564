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
//! 2. `Backend`: forward a clean copy of the head to tiny_http (always
//!    `Connection: close`), collect its whole response.
//! 3. `Reply`: write the response back, bounded in time.
//!
//! A connection waiting for its head costs a buffer, not a thread. When the
//! connection cap is reached, the connection that has waited longest for its
//! head is closed to make room (slow clients cannot lock others out); if
//! every slot is busy with a real request, the newcomer gets a quick 503.
//! Accept errors (EMFILE and friends) never end the loop: a reserve file
//! descriptor lets the front accept and refuse a client even when the process
//! is out of descriptors, and new connections resume as soon as fds free up.
//! If tiny_http stops listening on its socket (its accept thread dies on
//! some accept-time errors, one of them a panic), the front notices the
//! refused connection and the serving loop rebuilds it.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::head::{parse_head, set_connection_header, simple_response, HeadLimits, Parsed};
use crate::infra::poll::{poll, pollfd};
use crate::log::{self, once_a_second};

mod upstream;

/// Every limit of the front, explicit.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once (all states).
    pub max_connections: usize,
    /// Request head sizes (head, header lines, target): see [`super::head`].
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
    /// Connections to tiny_http kept open for the next requests (see
    /// [`upstream`]; never more than 3): each holds one of tiny_http's
    /// worker threads.
    pub kept_backend_connections: usize,
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
            kept_backend_connections: upstream::MAX_KEPT,
        }
    }
}

/// Descriptors one connection can hold: the client's, ours to tiny_http,
/// and tiny_http's end of that, which it holds twice (it `try_clone`s every
/// accepted stream into a read and a write half).
const FDS_PER_CONNECTION: u64 = 4;
/// Descriptors kept for everything else in the process (the kept
/// connections to tiny_http among them, three descriptors each).
const FDS_RESERVED: u64 = 24 + 3 * upstream::MAX_KEPT as u64;

/// Caps `wanted` so that every connection's descriptors fit under the soft
/// RLIMIT_NOFILE, with room for the rest of the daemon.
pub fn fit_to_fd_limit(wanted: usize) -> usize {
    // None: unlimited.
    let Some(current) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    else {
        return wanted;
    };
    let fit = current.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    wanted.min(fit.max(1) as usize)
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
    Backend {
        up: UnixStream,
        out: Vec<u8>,
        sent: usize,
        resp: Vec<u8>,
        keep_alive: Option<Vec<u8>>,
        /// `up` came from the pool of idle connections.
        reused: bool,
        /// The request is a HEAD (its response has no body).
        head_request: bool,
        /// The pool's generation when `up` was taken.
        generation: u64,
        /// `up` is a kept connection (else it closes after this answer).
        kept: Option<upstream::Kept>,
    },
    Reply {
        out: Vec<u8>,
        sent: usize,
        then: Then,
    },
    Linger {
        drained: usize,
    },
}

/// What happens to a connection once its response is written.
enum Then {
    Close,
    /// Read and drop what the client still sends, then close (after a
    /// refusal, so the client gets to read it).
    Linger,
    /// HTTP/1.1 keep-alive: wait for the next request head; these bytes of
    /// it (pipelined) arrived already.
    KeepAlive(Vec<u8>),
}

struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    state: State,
    since: Instant,
    deadline: Instant,
    /// The client shut down its sending side while its request was with
    /// tiny_http.
    half_closed: bool,
}

pub struct Front {
    listener: TcpListener,
    backend: BackendPath,
    backend_lost: BackendLost,
    limits: Limits,
    /// Readable (hang-up) when the daemon stops.
    stop: UnixStream,
    reserve: Option<File>,
    /// A client was closed to free a descriptor for the one waiting in
    /// accept(): the reserve must not take it first.
    newcomer_first: bool,
    conns: Vec<Conn>,
    /// Idle connections to tiny_http.
    pool: upstream::Pool,
    accept_paused_until: Option<Instant>,
    last_accept_error: Option<Instant>,
    last_backend_error: Option<Instant>,
}

impl Front {
    pub fn new(
        listener: TcpListener,
        backend: BackendPath,
        backend_lost: BackendLost,
        limits: Limits,
        stop: UnixStream,
    ) -> io::Result<Front> {
        listener.set_nonblocking(true)?;
        stop.set_nonblocking(true)?;
        let pool = upstream::Pool::new(limits.kept_backend_connections);
        Ok(Front {
            listener,
            backend,
            backend_lost,
            limits,
            stop,
            reserve: File::open("/dev/null").ok(),
            newcomer_first: false,
            conns: Vec::new(),
            pool,
            accept_paused_until: None,
            last_accept_error: None,
            last_backend_error: None,
        })
    }

    /// Serves until the stop socket hangs up.
    pub fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
            }
            fds.clear();
            fds.push(pollfd(self.stop.as_raw_fd(), libc::POLLIN));
            let listening = self.accept_paused_until.is_none();
            fds.push(pollfd(
                if listening {
                    self.listener.as_raw_fd()
                } else {
                    -1
                },
                libc::POLLIN,
            ));
            for c in &self.conns {
                fds.push(match &c.state {
                    State::Head { .. } | State::Linger { .. } => {
                        pollfd(c.client.as_raw_fd(), libc::POLLIN)
                    }
                    State::Backend { up, out, sent, .. } => {
                        let ev = if *sent < out.len() {
                            libc::POLLOUT
                        } else {
                            libc::POLLIN
                        };
                        pollfd(up.as_raw_fd(), ev)
                    }
                    State::Reply { .. } => pollfd(c.client.as_raw_fd(), libc::POLLOUT),
                });
            }
            // Clients that hang up while their request is with tiny_http
            // (a parked /wait) free their slot soon: a reset at once, an
            // end of stream (a close or a mere half-close, which look the
            // same) after a short grace in which the answer can still go out.
            let watch_start = fds.len();
            for c in &self.conns {
                let fd = if matches!(c.state, State::Backend { .. }) && !c.half_closed {
                    c.client.as_raw_fd()
                } else {
                    -1
                };
                fds.push(pollfd(fd, libc::POLLRDHUP));
            }
            let pool_start = fds.len();
            fds.extend(self.pool.fds().map(|fd| pollfd(fd, libc::POLLIN)));
            let mut next = self.conns.iter().map(|c| c.deadline).min();
            if let Some(t) = self.accept_paused_until {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            let timeout = next.map(|t| {
                t.saturating_duration_since(now)
                    .clamp(Duration::from_millis(1), Duration::from_secs(60))
            });
            // poll(2) through infra::poll, which retries after EINTR.
            if let Err(e) = poll(&mut fds, timeout) {
                log::error("diagnostics front: poll failed", &[("error", &e)]);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if fds[0].revents != 0 {
                return;
            }
            let now = Instant::now();
            // Before any connection goes back to the pool.
            self.pool.prune(&fds[pool_start..]);
            // Walk connections back to front so removal keeps indexes valid.
            let ready: Vec<(i16, i16)> = (0..self.conns.len())
                .map(|i| (fds[2 + i].revents, fds[watch_start + i].revents))
                .collect();
            for i in (0..self.conns.len()).rev() {
                let (ev, watch) = ready[i];
                if watch & libc::POLLRDHUP != 0 {
                    let c = &mut self.conns[i];
                    c.half_closed = true;
                    c.deadline = c.deadline.min(now + self.limits.half_close_grace);
                }
                let keep = if watch & (libc::POLLHUP | libc::POLLERR) != 0 {
                    false
                } else if ev != 0 {
                    self.step(i, now)
                } else {
                    now < self.conns[i].deadline || self.expire(i)
                };
                if !keep {
                    self.conns.swap_remove(i);
                }
            }
            // Before any new client: a descriptor freed above goes back to
            // the reserve first.
            self.restore_reserve();
            if fds[1].revents != 0 {
                self.accept_all();
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        self.out_of_descriptors(&e);
                        return;
                    }
                    // The client went away between SYN and accept, a signal,
                    // or a network error on that one connection.
                    Some(libc::ECONNABORTED)
                    | Some(libc::EINTR)
                    | Some(libc::EPROTO)
                    | Some(libc::EPERM) => continue,
                    _ => {
                        self.note_accept_error(&e);
                        self.accept_paused_until =
                            Some(Instant::now() + Duration::from_millis(100));
                        return;
                    }
                },
            }
        }
    }

    /// accept() failed for want of descriptors: free one (the slowest idle
    /// client, or the reserve), refuse the waiting client, and pause briefly
    /// when nothing can be freed.
    fn out_of_descriptors(&mut self, e: &io::Error) {
        self.note_accept_error(e);
        if let Some(i) = self.oldest_waiting_for_head() {
            self.conns.swap_remove(i);
            // The freed descriptor is for the newcomer: the reserve, if it
            // is out, waits for the next one.
            self.newcomer_first = self.reserve.is_none();
            return;
        }
        if self.reserve.take().is_some() {
            // The reserve's number goes to the refused client, which keeps
            // it while it reads the refusal: the 503 is written, then what
            // the client sent is read and dropped (the lingering close), so
            // the client sees the reason rather than a reset. The reserve
            // comes back once a descriptor is free (`restore_reserve`).
            if let Ok((stream, peer)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    let now = Instant::now();
                    let mut c = Conn {
                        client: stream,
                        peer,
                        state: State::Linger { drained: 0 },
                        since: now,
                        deadline: now,
                        half_closed: false,
                    };
                    c.reply(
                        simple_response(503, "the diagnostics service is out of file descriptors"),
                        Then::Linger,
                        now + self.limits.write_timeout,
                    );
                    self.conns.push(c);
                }
            }
            self.restore_reserve();
        }
        self.accept_paused_until = Some(Instant::now() + Duration::from_millis(50));
    }

    /// Takes the reserve descriptor back when it was given away and one is
    /// free again (unless the one just freed is for a waiting newcomer).
    fn restore_reserve(&mut self) {
        if self.reserve.is_none() && !std::mem::take(&mut self.newcomer_first) {
            self.reserve = File::open("/dev/null").ok();
        }
    }

    fn note_accept_error(&mut self, e: &io::Error) {
        if once_a_second(&mut self.last_accept_error) {
            log::warn(
                "diagnostics front: accept failed; still listening",
                &[("error", e)],
            );
        }
    }

    fn oldest_waiting_for_head(&self) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.state, State::Head { .. } | State::Linger { .. }))
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i)
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.conns.len() >= self.limits.max_connections {
            match self.oldest_waiting_for_head() {
                Some(i) => {
                    self.conns.swap_remove(i);
                }
                None => {
                    // No slot to linger in: read what the client has sent
                    // already, so that closing does not reset the answer
                    // away (a request still on its way may).
                    let _ = stream.set_nonblocking(true);
                    let mut sent = [0u8; 16 * 1024];
                    let _ = (&stream).read(&mut sent);
                    let _ = (&stream).write(&simple_response(
                        503,
                        "too many connections to the diagnostics service",
                    ));
                    let _ = stream.shutdown(Shutdown::Write);
                    return;
                }
            }
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let now = Instant::now();
        self.conns.push(Conn {
            client: stream,
            peer,
            state: State::Head {
                buf: Vec::with_capacity(1024),
            },
            since: now,
            deadline: now + self.limits.head_timeout,
            half_closed: false,
        });
    }

    /// A deadline passed. Returns whether to keep the connection.
    fn expire(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        match &c.state {
            State::Head { buf } if !buf.is_empty() => {
                let _ =
                    (&c.client).write(&simple_response(408, "request head not received in time"));
            }
            State::Backend { .. } => {
                let _ = (&c.client).write(&simple_response(
                    504,
                    "the diagnostics service did not answer in time",
                ));
            }
            _ => {}
        }
        false
    }

    /// The connection's socket is ready. Returns whether to keep it.
    fn step(&mut self, i: usize, now: Instant) -> bool {
        let limits = self.limits.clone();
        let c = &mut self.conns[i];
        match &mut c.state {
            State::Head { buf } => {
                let mut chunk = [0u8; 4096];
                let room = (limits.head.max_head_bytes + 1)
                    .saturating_sub(buf.len())
                    .min(chunk.len());
                let n = match (&c.client).read(&mut chunk[..room]) {
                    Ok(0) => return false,
                    Ok(n) => n,
                    Err(e) if again(&e) => return true,
                    Err(_) => return false,
                };
                buf.extend_from_slice(&chunk[..n]);
                self.advance_head(i, now);
                true
            }
            State::Backend { .. } => self.step_backend(i, now),
            State::Reply { out, sent, then } => match (&c.client).write(&out[*sent..]) {
                Ok(n) => {
                    *sent += n;
                    if *sent < out.len() {
                        return true;
                    }
                    match std::mem::replace(then, Then::Close) {
                        Then::Close => false,
                        Then::Linger => {
                            let _ = c.client.shutdown(Shutdown::Write);
                            c.state = State::Linger { drained: 0 };
                            c.deadline = now + limits.linger_time;
                            true
                        }
                        Then::KeepAlive(next) => {
                            c.state = State::Head { buf: next };
                            c.since = now;
                            c.deadline = now + limits.head_timeout;
                            self.advance_head(i, now);
                            true
                        }
                    }
                }
                Err(e) if again(&e) => true,
                Err(_) => false,
            },
            State::Linger { drained } => {
                let mut chunk = [0u8; 16 * 1024];
                match (&c.client).read(&mut chunk) {
                    Ok(0) => false,
                    Ok(n) => {
                        *drained += n;
                        *drained < limits.linger_bytes
                    }
                    Err(e) if again(&e) => true,
                    Err(_) => false,
                }
            }
        }
    }
}

impl Front {
    /// A `Head` connection got bytes: refuse, forward, or keep reading.
    fn advance_head(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let State::Head { buf } = &c.state else {
            return;
        };
        if buf.is_empty() {
            return;
        }
        match parse_head(buf, &self.limits.head, c.peer) {
            Parsed::Partial => {}
            Parsed::Refuse(status, why) => {
                let out = simple_response(status, why);
                c.reply(out, Then::Linger, now + self.limits.write_timeout);
            }
            Parsed::Answer {
                resp,
                keep_alive,
                len,
            } => {
                // As for a relayed answer: one that has half-closed still
                // gets answers to the requests it sent before.
                let next = Some(buf[len..].to_vec())
                    .filter(|next| keep_alive && (!c.half_closed || !next.is_empty()));
                let resp = set_connection_header(resp, next.is_none());
                let then = next.map_or(Then::Close, Then::KeepAlive);
                c.reply(resp, then, now + self.limits.write_timeout);
            }
            Parsed::Forward {
                head,
                keep_alive,
                len,
                slow,
            } => {
                let next = keep_alive.then(|| buf[len..].to_vec());
                let path = self.backend_path();
                match self.pool.take(&path, slow) {
                    Ok(taken) => {
                        let head_request = head.starts_with(b"HEAD ");
                        let mut head = head;
                        if taken.kept.is_none() {
                            // For this request only: tiny_http's worker ends
                            // with it.
                            head.truncate(head.len() - 2);
                            head.extend_from_slice(b"Connection: close\r\n\r\n");
                        }
                        let c = &mut self.conns[i];
                        c.state = State::Backend {
                            up: taken.stream,
                            out: head,
                            sent: 0,
                            resp: Vec::new(),
                            keep_alive: next,
                            reused: taken.reused,
                            head_request,
                            generation: taken.generation,
                            kept: taken.kept,
                        };
                        let mut timeout = if slow {
                            self.limits.slow_response_timeout
                        } else {
                            self.limits.response_timeout
                        };
                        if c.half_closed {
                            timeout = timeout.min(self.limits.half_close_grace);
                        }
                        c.deadline = now + timeout;
                        self.send_head_now(i);
                    }
                    Err(e) => {
                        let out =
                            simple_response(503, "the diagnostics service is busy; try again");
                        self.conns[i].reply(out, Then::Close, now + self.limits.write_timeout);
                        if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) {
                            (self.backend_lost)(&path);
                        }
                        if once_a_second(&mut self.last_backend_error) {
                            log::warn(
                                "diagnostics front: cannot reach the serving loop",
                                &[("error", &e)],
                            );
                        }
                    }
                }
            }
        }
    }
}

impl Conn {
    fn reply(&mut self, out: Vec<u8>, then: Then, deadline: Instant) {
        self.state = State::Reply { out, sent: 0, then };
        self.deadline = deadline;
    }
}

/// A nonblocking read or write that found nothing to do: try again later.
fn again(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}
