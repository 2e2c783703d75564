//! Admission: accepting clients, the connection cap, and running out of
//! descriptors (through [`crate::infra::sockets`], the toolkit the
//! multiplexer socket uses too).
//!
//! Who gets a slot, and who loses one, is [`super::room`]'s rule.
//!
//! Accept errors never end the front's loop. Out of descriptors (services
//! may hold every one), at either door (the TCP port, the debug socket),
//! and only when a client does wait (accept(2) fails with EMFILE with none
//! waiting): a lingering connection is closed to make room, else one that
//! makes no progress of its own doing (the room rule's ranks 1 to 3, never
//! a connection still waiting for its head a moment after it came); if
//! there is none, a descriptor of the reserve ([`super::RESERVE_FDS`]) is
//! given up to accept the waiting client, which gets an answer only if it
//! asks for a probe (`/livez`, `/readyz`, `/readyz/NAME`; anything else a
//! 503 that says why), and with the reserve's last one the client is
//! accepted only to be refused with that 503 (then a lingering close). The
//! reserve fills up again as soon as descriptors free up.

use std::io::{self, ErrorKind, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::local::Stream;
use super::room::Place;
use super::tls::Client;
use super::{auth, Conn, Front, State};
use super::{PIPE_FDS, RESERVE_FDS};
use crate::diag::request_head::{simple_response, Peer};
use crate::infra::poll::wait_readable;
use crate::infra::sockets::out_of_descriptors;
use crate::log::{self, once_a_second};

/// Where clients come in.
#[derive(Clone, Copy)]
pub(super) enum Door {
    /// The TCP port (`diag_addr`).
    Tcp,
    /// The local debug socket ([`super::local`]).
    Local,
}

/// What a client is told when the front has no descriptor to serve it
/// with (503).
pub(super) const OUT_OF_DESCRIPTORS: &str = "the diagnostics service is out of file descriptors";

impl Front {
    /// Accepts the clients waiting at `door`, a batch of at most
    /// `max_connections + probe_room` a turn, so that the requests of those
    /// accepted are read (at the next turn) before more come in: a
    /// newcomer never puts out one accepted in the same batch
    /// ([`super::room`]); when only that would make room, the rest wait in
    /// the listen backlog.
    pub(super) fn accept_from(&mut self, door: Door) {
        let batch = self.next_id;
        for _ in 0..self.limits.max_connections + self.limits.probe_room {
            let place = self.place_for_newcomer(Instant::now(), batch);
            if place == Place::NextTurn {
                return;
            }
            match self.accept_one(door) {
                Ok(Some((stream, peer))) => self.admit(stream, peer, place),
                // Refused (a debug socket peer of another user) or gone.
                Ok(None) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if out_of_descriptors(&e) => {
                    self.without_descriptors(&e, place, door);
                    return;
                }
                // The client went away between SYN and accept, a signal, or
                // a network error on that one connection.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
                    ) => {}
                Err(e) => {
                    self.note_accept_error(&e);
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    /// One client from `door` (WouldBlock: none, or no such door).
    fn accept_one(&mut self, door: Door) -> io::Result<Option<(Stream, Peer)>> {
        match (door, &self.listener) {
            (Door::Tcp, Some(l)) => l
                .accept()
                .map(|(s, peer)| Some((Stream::Tcp(s), Peer::Tcp(peer)))),
            (Door::Tcp, None) => Err(ErrorKind::WouldBlock.into()),
            (Door::Local, _) => self.accept_local_peer(),
        }
    }

    /// Whether a client waits at `door` (an error says yes: then accept
    /// tells).
    fn waiting(&self, door: Door) -> bool {
        let ready = |fd: BorrowedFd| wait_readable(fd, Duration::ZERO).unwrap_or(true);
        match door {
            Door::Tcp => self.listener.as_ref().is_some_and(|l| ready(l.as_fd())),
            Door::Local => self.local.as_ref().is_some_and(|l| ready(l.as_fd())),
        }
    }

    /// accept() failed for want of descriptors at `door`: free one (a
    /// lingering connection, one that makes no progress of its own doing,
    /// or one of the reserve) for the waiting client, and pause briefly
    /// when nothing can be freed. `place`: where the room rule put the
    /// client.
    ///
    /// Linux takes the new descriptor's number before it looks for a
    /// client (accept(2) fails with EMFILE with none waiting), so whether
    /// one waits is asked first: else the last client accepted, its request
    /// not read yet, would be put out for no one.
    fn without_descriptors(&mut self, e: &io::Error, place: Place, door: Door) {
        self.short_at = Some(Instant::now());
        if !self.waiting(door) {
            return;
        }
        self.note_accept_error(e);
        // Never a connection still waiting for its head a moment after it
        // came (rank 4): most likely a probe whose request is on its way.
        let victim = self
            .ranked_victim(Instant::now(), false, usize::MAX)
            .filter(|&(rank, _)| rank < 4);
        let freed = self.drop_oldest_lingering()
            || victim.map(|(_, i)| self.conns.swap_remove(i)).is_some();
        if freed {
            // The freed descriptor is for the newcomer: the reserve, if it
            // is short, waits for the next one.
            self.newcomer_first = self.reserve.held() < RESERVE_FDS;
            return;
        }
        // Served while what a connection to tiny_http needs stays in the
        // reserve (when none is kept yet) beside the one for refusing.
        let keep = 1 + if self.kept.is_empty() { PIPE_FDS } else { 0 };
        let served = self.reserve.held() > keep && place != Place::Full;
        // Accepted at once on the number given up (the lowest free: any
        // thread that opens a file first would take it).
        if self.reserve.release(1) == 1 {
            if let Ok(accepted) = self.accept_one(door) {
                let Some((stream, peer)) = accepted else {
                    return;
                };
                match served {
                    true => self.admit_on_reserve(stream, peer),
                    // The refused client keeps the number while it reads
                    // the refusal (the lingering close), so that it sees
                    // the reason rather than a reset.
                    false => self.refuse(stream, peer, Instant::now(), (503, OUT_OF_DESCRIPTORS)),
                }
                return;
            }
        }
        self.accept_paused_until = Some(Instant::now() + Duration::from_millis(50));
    }

    /// Fills the reserve up again, as far as descriptors are free, unless
    /// the one just freed is for a waiting newcomer or tiny_http may still
    /// be taking the descriptors given up for a new connection
    /// ([`Front::connect_upstream`]). Still short after: descriptors are.
    pub(super) fn refill_reserve(&mut self) {
        let now = Instant::now();
        if !self.newcomer_first && self.upstream_accepting(now).is_none() {
            self.reserve.refill();
            if self.reserve.held() < RESERVE_FDS {
                self.short_at = Some(now);
            }
        }
    }

    pub(super) fn note_accept_error(&mut self, e: &io::Error) {
        if once_a_second(&mut self.last_accept_error) {
            log::warn(
                "diagnostics front: accept failed; still listening",
                &[("error", e)],
            );
        }
    }

    /// A new client: `place`, a slot of its own, a place in the probe
    /// room, or the place of a client that makes no progress
    /// ([`super::room`]); or a quick 503.
    pub(super) fn admit(&mut self, stream: Stream, peer: Peer, place: Place) {
        let now = Instant::now();
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let Some(probe_room) = self.take_place(place, now) else {
            let why = "too many connections to the diagnostics service";
            return self.refuse(stream, peer, now, (503, why));
        };
        self.open(stream, peer, probe_room, false);
    }

    /// [`Front::admit`] for a client accepted on a descriptor of the
    /// reserve: it takes no one's place (it counts neither in the slots
    /// nor in the probe room; the reserve bounds how many there are), and
    /// only a probe is answered.
    fn admit_on_reserve(&mut self, stream: Stream, peer: Peer) {
        if stream.set_nonblocking(true).is_ok() {
            self.open(stream, peer, false, true);
        }
    }

    /// Opens a connection on the admitted `stream` (nonblocking) and reads
    /// what it sent already.
    fn open(&mut self, stream: Stream, peer: Peer, probe_room: bool, on_reserve: bool) {
        let now = Instant::now();
        let client = match stream {
            Stream::Tcp(stream) => {
                let _ = stream.set_nodelay(true);
                // TLS when the web configuration asks for it ([`super::tls`]).
                let tls = auth::current(&self.security).tls_config();
                let Ok(client) = Client::new(stream, tls) else {
                    // Whoever lost its place to it lingers now.
                    return self.trim_lingering();
                };
                client
            }
            // The debug socket: plain HTTP (its access rule is the peer's
            // user, [`super::local`]).
            Stream::Unix(stream) => Client::Local(stream),
        };
        let state = State::Head {
            buf: Vec::with_capacity(1024),
        };
        let deadline = now + self.limits.head_timeout;
        let mut c = Conn::new(self.next_id, client, peer, state, deadline);
        c.probe_room = probe_room;
        c.on_reserve = on_reserve;
        self.conns.push(c);
        self.next_id += 1;
        // Read at once: a request that is there already (a client that
        // sent it with its handshake, or clients that queued while the
        // front could not run) goes on its way now, and the client is not
        // taken for an idle one when the next newcomer needs room (it
        // would be closed with its request unread). This also saves the
        // poll round a fresh connection's request would wait for.
        let i = self.conns.len() - 1;
        if !self.step(i, now) {
            self.conns.swap_remove(i);
        }
        // Whoever lost its place to it lingers now.
        self.trim_lingering();
    }

    /// No room for a newcomer (503), or a debug socket peer of another
    /// user (403): the answer saying `why`, then the lingering close, so
    /// that it reads the refusal whatever it sent (a fresh socket takes
    /// the few bytes at once). It holds no slot.
    pub(super) fn refuse(
        &mut self,
        stream: Stream,
        peer: Peer,
        now: Instant,
        (status, why): (u16, &str),
    ) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = (&stream).write(&simple_response(status, why));
        let state = State::Linger { drained: 0 };
        // Plain even on a TLS port: no handshake for a refusal.
        let client = match stream {
            Stream::Tcp(s) => Client::Plain(s),
            Stream::Unix(s) => Client::Local(s),
        };
        let mut c = Conn::new(self.next_id, client, peer, state, now);
        self.next_id += 1;
        c.close_lingering(now, self.limits.linger_time);
        self.conns.push(c);
        self.trim_lingering();
    }
}
