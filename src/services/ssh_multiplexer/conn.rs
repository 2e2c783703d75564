//! Accepted connections: the cap, refusals that linger without blocking
//! the accept thread, and one `mux-conn` thread per connection (request,
//! dial, relay), each counted once in the metrics.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::infra::sockets::{drained, linger, Reserve};
use crate::log;
use crate::metrics::Metrics;

use super::budget;
use super::drain::Relays;
use super::relay::relay;
use super::request::{printable, read_request, Target};
use super::socket::Socket;
use super::{Limits, ERROR_PREFIX};

/// What every connection thread needs.
pub(super) struct Connections {
    pub(super) service: Arc<str>,
    pub(super) metrics: Arc<Metrics>,
    /// Connections being handled (their `mux-conn` thread is alive).
    pub(super) active: Arc<AtomicUsize>,
    pub(super) limits: Limits,
    pub(super) relays: Relays,
    /// The service's stop signal: a connection's name lookup gives up on it.
    pub(super) stop: crate::infra::stop::Stop,
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
    pub(super) fn handle(&self, stream: UnixStream, lingering: &mut Lingering) {
        let request = Request::start(&self.metrics);
        if !budget::may_hold_client() {
            self.refuse(stream, budget::OUT_OF_DESCRIPTORS, lingering, false);
            drop(request);
            return;
        }
        // Only this thread adds to `active`, so check-then-add cannot overshoot.
        if self.active.load(Ordering::Acquire) >= self.limits.max_connections {
            let reason = format!(
                "too many connections (max_connections is {}); try again later",
                self.limits.max_connections
            );
            self.refuse(stream, &reason, lingering, true);
            drop(request);
            return;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.active.clone());
        let fallback = stream.try_clone();
        let service = self.service.clone();
        let relays = self.relays.clone();
        let limits = self.limits;
        let stop = self.stop.clone();
        let spawned = crate::infra::threads::spawn("mux-conn", move || {
            let _slot = slot;
            let mut client = stream;
            let registered = relays.register(&client);
            serve(&mut client, request, &service, &limits, &stop);
            // Out of the registry before the socket closes (see `drain`).
            drop(registered);
            drop(client);
        });
        if let Err(e) = spawned {
            // The closure (request, slot, stream) was dropped: counted ERROR.
            let reason = format!("cannot start a connection thread: {e}");
            match fallback {
                Ok(s) => self.refuse(s, &reason, lingering, budget::may_hold_client()),
                Err(_) => fail(&self.service, None, None, &reason, &self.limits),
            }
        }
    }

    /// accept() failed for want of descriptors: frees the spare, accepts
    /// one waiting client on it and refuses it with the reason (counted as
    /// `ERROR`; logged only by the caller's rate-limited warning), then takes
    /// the spare back. False if there was no spare or no client accepted.
    pub(super) fn refuse_with_spare(&self, socket: &Socket, spare: &mut Reserve) -> bool {
        if spare.release(1) == 0 {
            return false;
        }
        let refused = match socket.listener.accept() {
            Ok((stream, _)) => {
                let _request = Request::start(&self.metrics);
                let _ = stream.set_nonblocking(true);
                tell(&stream, budget::OUT_OF_DESCRIPTORS);
                // Take in what the client has sent so far: closing with
                // unread data would reset it before it reads the line. No
                // lingering: that would hold the descriptor.
                drained(&stream, &mut 0, self.limits.linger_bytes);
                true
            }
            Err(_) => false,
        };
        spare.refill();
        refused
    }

    /// `room`: what [`budget::may_hold_client`] said just now (each call
    /// lists /proc/self/fd).
    fn refuse(&self, stream: UnixStream, reason: &str, lingering: &mut Lingering, room: bool) {
        // A fresh socket's buffer takes a short line without blocking;
        // nonblocking anyway, so that the accept loop never waits.
        let _ = stream.set_nonblocking(true);
        log_failure(&self.service, None, reason);
        tell(&stream, reason);
        if room {
            lingering.add(stream);
        } else {
            // Take in what it sent (no reset before it reads the line),
            // then close: lingering would hold credential work's headroom.
            drained(&stream, &mut 0, self.limits.linger_bytes);
        }
    }
}

/// Logs a failed request and tells the client why, in one line, then
/// lingers (the lingering close: a Unix socket closed with unread data
/// resets its peer, whose next read would fail with ECONNRESET, or its
/// write of the request with EPIPE, instead of showing the line and a clean
/// end). For connection threads, which may block.
fn fail(
    service: &str,
    stream: Option<&UnixStream>,
    target: Option<&str>,
    reason: &str,
    limits: &Limits,
) {
    log_failure(service, target, reason);
    if let Some(s) = stream {
        let _ = s.set_write_timeout(Some(limits.linger_time));
        tell(s, reason);
        linger(s, limits.linger_time, limits.linger_bytes);
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

/// Connections refused on the accept thread, lingering there (see
/// [`linger`]) without blocking it: polled with the listener. At most the
/// cap given (64, or fewer under a low open-file limit); past that the
/// oldest is closed at once.
pub(super) struct Lingering {
    /// Each client, until when it may linger, and what it sent meanwhile.
    held: VecDeque<(UnixStream, Instant, usize)>,
    limits: Limits,
}

impl Lingering {
    pub(super) fn new(limits: &Limits) -> Lingering {
        Lingering {
            held: VecDeque::new(),
            limits: *limits,
        }
    }

    fn add(&mut self, s: UnixStream) {
        if self.held.len() >= self.limits.max_lingering.max(1) {
            self.held.pop_front();
        }
        let mut total = 0;
        if !drained(&s, &mut total, self.limits.linger_bytes) {
            self.held
                .push_back((s, Instant::now() + self.limits.linger_time, total));
        }
    }

    /// The lingering sockets, to poll for readability.
    pub(super) fn sockets(&self) -> impl Iterator<Item = &UnixStream> + '_ {
        self.held.iter().map(|(s, _, _)| s)
    }

    /// Until when the accept loop may sleep: until the oldest one's time
    /// is up (None: none lingers).
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.held.front().map(|(_, until, _)| *until)
    }

    /// Reads what each sent; closes those done or out of time.
    pub(super) fn drain(&mut self) {
        let now = Instant::now();
        let max = self.limits.linger_bytes;
        self.held
            .retain_mut(|(s, until, total)| now < *until && !drained(&*s, total, max));
    }
}

/// Handles one connection on its own thread: request, dial, relay.
fn serve(
    client: &mut UnixStream,
    mut request: Request,
    service: &str,
    limits: &Limits,
    stop: &crate::infra::stop::Stop,
) {
    let _ = client.set_nonblocking(false);
    let (text, early) = match read_request(client, limits.request_deadline) {
        Ok(r) => r,
        Err(e) => return fail(service, Some(client), None, &e, limits),
    };
    let target = match Target::parse(&text) {
        Ok(t) => t,
        Err(e) => return fail(service, Some(client), Some(&printable(&text)), &e, limits),
    };
    let shown = target.to_string();
    // The descriptors the relay needs, taken only if credential work keeps
    // its headroom (see `budget`).
    let claim = match super::budget::claim_relay() {
        Ok(c) => c,
        Err(e) => return fail(service, Some(client), Some(&shown), &e, limits),
    };
    let upstream = match target.dial(limits.dial_timeout, || stop.is_set()) {
        Ok(s) => s,
        Err(e) => return fail(service, Some(client), Some(&shown), &e, limits),
    };
    log::debug(
        "ssh multiplexer relaying",
        &[("service", &service), ("target", &shown)],
    );
    match relay(client, &upstream, &early, claim) {
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
        Err(e) => fail(service, Some(client), Some(&shown), &e, limits),
    }
}
