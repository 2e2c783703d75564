//! Who holds one of the front's slots, and who loses it under pressure
//! (issue 17, item 1). The whole rule, in one place:
//!
//! - A slot is held by a connection the front still serves: reading its
//!   head, its request with tiny_http, or its answer being written. There
//!   are `max_connections` of them.
//! - When they are all taken, a newcomer takes the place of a connection
//!   that is not making progress of its own doing ([`Front::rank`]), in
//!   this order:
//!   1. a client that has not taken its answer whole within `stall_time`
//!      of its socket filling (it does not read: it pipelined requests and
//!      left, or reads a byte a second), the longest stalled first;
//!   2. the one that has waited longest for its head (an idle keep-alive,
//!      a header trickle, a half-sent request), if for `stall_time` or
//!      more;
//!   3. a client whose request waits on tbot with more requests pipelined
//!      behind it (one connection doing the work of many: HTTP clients
//!      must be ready to send pipelined requests again when a connection
//!      closes, RFC 9112 §9.3.2), the one that has waited longest first;
//!   4. only when the probe room (below) is full too: a connection that
//!      has waited for its head for less than `stall_time` (most likely a
//!      client whose request is on its way: a probe that connected a
//!      moment ago), the oldest first, and never one accepted in the same
//!      batch as the newcomer ([`Front::place_for_newcomer`]): that
//!      newcomer waits in the listen backlog for the next turn, which
//!      reads the requests that came meanwhile first. A batch is at most
//!      `max_connections + probe_room` accepts (`accept.rs`), so a connect
//!      flood cannot admit a probe and put it out before its request is
//!      read.
//! - A connection with one request that waits on tbot (a parked `/wait`, a
//!   slow `/metrics` render, a request queued for tiny_http) keeps its
//!   slot: its client did nothing wrong. (The serving loop answers the
//!   `/wait`s beyond half the slots at once, so that they cannot hold
//!   every slot: `diag/mod.rs`.) For probes beside them, `probe_room`
//!   more connections may read a head and be served there if it is a
//!   probe's (`/livez`, `/readyz`, `/readyz/NAME`: see
//!   [`crate::diag::endpoints::Endpoint::probe`]), or answered by the front itself
//!   (a refusal, a redirect); any other request made there needs a slot
//!   (a victim's, else a 503). A newcomer whose request is not known yet
//!   goes there rather than put out a rank 4 connection; once its request
//!   shows it is not a probe, it takes a slot the same way
//!   ([`Front::slot_for`]), but a rank 4 one in a slot is not put out for
//!   it: the two change places.
//! - A connection the front closes after it wrote something lingers
//!   (RFC 9112 §9.6): its sending side is shut down, so what was written
//!   reaches the client, then what the client still sends is read and
//!   dropped until it closes, for at most `linger_time` and `linger_bytes`,
//!   so that the close does not reset answers away. Lingering connections
//!   hold no slot. Once a newcomer is taken in or refused, at most
//!   `max_connections` linger, the oldest closed first beyond that
//!   ([`Front::trim_lingering`]); other closes in between only turn a
//!   served connection into a lingering one, which adds no descriptor.

use std::time::{Duration, Instant};

use super::{Conn, Front, State};

impl Conn {
    /// Closes the lingering way: what was written goes out, then the end of
    /// stream; what the client still sends is read and dropped until
    /// `now + linger_time`. An answer not yet written whole is cut.
    pub(super) fn close_lingering(&mut self, now: Instant, linger_time: Duration) {
        // TLS: close_notify first.
        self.client.shutdown_write();
        self.state = State::Linger { drained: 0 };
        self.deadline = now + linger_time;
        self.probe_room = false;
        self.stalled_since = None;
    }

    /// Holds a slot (or a place in the probe room): it is not lingering.
    fn served(&self) -> bool {
        !matches!(self.state, State::Linger { .. })
    }
}

impl Front {
    /// (Connections in slots, connections in the probe room.)
    fn occupancy(&self) -> (usize, usize) {
        let mut slots = 0;
        let mut room = 0;
        // Those on the reserve's descriptors take no place ([`super::accept`]).
        for c in self.conns.iter().filter(|c| c.served() && !c.on_reserve) {
            match c.probe_room {
                true => room += 1,
                false => slots += 1,
            }
        }
        (slots, room)
    }

    /// Where `c` stands among those that may lose their place, by the
    /// module's ranks 1 to 4 (lowest first), and the longest waiting first
    /// within a rank; None: it keeps its place.
    fn rank(&self, c: &Conn, now: Instant) -> Option<(u8, Instant)> {
        match c.state {
            State::Reply { .. } => c
                .stalled_since
                .filter(|&t| now.saturating_duration_since(t) >= self.limits.stall_time)
                .map(|t| (1, t)),
            State::Head { .. } => {
                let waited = now.saturating_duration_since(c.since);
                let rank = if waited >= self.limits.stall_time {
                    2
                } else {
                    4
                };
                Some((rank, c.since))
            }
            State::Queued(ref rq) | State::Piped(ref rq) => {
                pipelining(&rq.next).then_some((3, c.since))
            }
            State::Backend { ref keep_alive, .. } => pipelining(keep_alive).then_some((3, c.since)),
            // Its password is being checked: a request that waits on tbot
            // keeps its slot.
            State::Auth(_) => None,
            State::Linger { .. } => None,
        }
    }

    /// The connection that loses its place, if any, by the module's ranks
    /// 1 to 4, and its rank. `slots_only`: not one in the probe room (its
    /// place frees no slot). Never `except`.
    pub(super) fn ranked_victim(
        &self,
        now: Instant,
        slots_only: bool,
        except: usize,
    ) -> Option<(u8, usize)> {
        self.conns
            .iter()
            .enumerate()
            .filter(|&(j, c)| j != except && !(slots_only && c.probe_room))
            .filter_map(|(j, c)| Some((self.rank(c, now)?, j)))
            .min()
            .map(|((rank, _), j)| (rank, j))
    }

    /// Connection `i` loses its place: it closes the lingering way.
    fn evict(&mut self, i: usize, now: Instant) {
        let linger = self.limits.linger_time;
        self.conns[i].close_lingering(now, linger);
    }

    /// Where the next newcomer would go, in the module's order: a free
    /// slot; the place of a rank 1 to 3 connection; a free place in the
    /// probe room; the place of a rank 4 one, but never one accepted in
    /// the same batch (its id is `batch` or more: it has not had a turn
    /// for its request to be read). Looks only: [`Front::take_place`]
    /// carries it out once a newcomer is there.
    pub(super) fn place_for_newcomer(&self, now: Instant, batch: u64) -> Place {
        let (slots, room) = self.occupancy();
        if slots < self.limits.max_connections {
            return Place::Slot;
        }
        let ranked = || {
            self.conns
                .iter()
                .enumerate()
                .filter_map(move |(j, c)| Some((self.rank(c, now)?, c.id, j)))
        };
        let best = ranked()
            .filter(|&((rank, _), id, _)| rank < 4 || id < batch)
            .min()
            .map(|((rank, _), _, j)| (rank, j));
        match best {
            Some((rank, j)) if rank < 4 => Place::Instead(j),
            _ if room < self.limits.probe_room => Place::ProbeRoom,
            Some((_, j)) => Place::Instead(j),
            None if ranked().any(|(_, id, _)| id >= batch) => Place::NextTurn,
            None => Place::Full,
        }
    }

    /// Takes `place` for a newcomer (evicting whoever held it): Some(false)
    /// a slot, Some(true) a place in the probe room, None nowhere (it is
    /// refused).
    pub(super) fn take_place(&mut self, place: Place, now: Instant) -> Option<bool> {
        match place {
            Place::Slot => Some(false),
            Place::ProbeRoom => Some(true),
            Place::Instead(v) => {
                let probe_room = self.conns[v].probe_room;
                self.evict(v, now);
                Some(probe_room)
            }
            Place::NextTurn | Place::Full => None,
        }
    }

    /// Connection `i`, in the probe room, asks for something that is not a
    /// probe: it moves to a slot, free or a victim's. A rank 4 victim (a
    /// request most likely on its way) is not put out: it takes `i`'s
    /// place in the probe room instead, as it would have as a newcomer.
    /// False: there is no slot.
    pub(super) fn slot_for(&mut self, i: usize, now: Instant) -> bool {
        let (slots, _) = self.occupancy();
        if slots >= self.limits.max_connections {
            match self.ranked_victim(now, true, i) {
                Some((4, v)) => self.conns[v].probe_room = true,
                Some((_, v)) => self.evict(v, now),
                None => return false,
            }
        }
        self.conns[i].probe_room = false;
        true
    }

    /// Closes the connection that has lingered longest. False: none
    /// lingers.
    pub(super) fn drop_oldest_lingering(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.served())
            .min_by_key(|(_, c)| c.deadline)
            .map(|(j, _)| j);
        oldest.map(|j| self.conns.swap_remove(j)).is_some()
    }

    /// Lingering connections beyond their cap (`max_connections`) are
    /// closed, the oldest first.
    pub(super) fn trim_lingering(&mut self) {
        let cap = self.limits.max_connections;
        while self.conns.iter().filter(|c| !c.served()).count() > cap {
            self.drop_oldest_lingering();
        }
    }
}

/// Where a newcomer goes ([`Front::place_for_newcomer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// A free slot.
    Slot,
    /// A free place in the probe room.
    ProbeRoom,
    /// The place of this connection, which loses it.
    Instead(usize),
    /// Only newcomers of the same batch could make room: the next one
    /// waits in the listen backlog until the next turn has read theirs.
    NextTurn,
    /// Nowhere: it is refused.
    Full,
}

/// The client sent more behind the request in progress (`next`, the
/// bytes of its next requests already read).
fn pipelining(next: &Option<Vec<u8>>) -> bool {
    next.as_ref().is_some_and(|b| !b.is_empty())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::Place;
    use crate::diag::front::tls::Client;
    use crate::diag::front::{Conn, Front, Limits, Request, State};
    use crate::diag::request_head::Peer;
    use crate::infra::stop::Stop;

    /// A front (never run) with `max_connections` 1 and a probe room of 2,
    /// its one slot held by a request that waits on tbot (no victim).
    fn front() -> (Front, TcpListener) {
        let limits = Limits {
            max_connections: 1,
            probe_room: 2,
            ..Limits::default()
        };
        let (_, stop) = Stop::new();
        let lost = Arc::new(|_: &std::path::Path| {});
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = Arc::new(Mutex::new("/nonexistent".into()));
        let mut f = Front::new((Some(listener), None), backend, lost, limits, stop).unwrap();
        let clients = TcpListener::bind("127.0.0.1:0").unwrap();
        let waits = State::Queued(Request {
            head: Vec::new(),
            next: None,
            at_once: false,
            retried: false,
        });
        push(&mut f, &clients, waits, false);
        (f, clients)
    }

    /// Adds a connection in `state` (in the probe room or a slot); its id
    /// is the next one.
    fn push(f: &mut Front, clients: &TcpListener, state: State, probe_room: bool) {
        let peer = clients.local_addr().unwrap();
        let stream = TcpStream::connect(peer).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = Conn::new(
            f.next_id,
            Client::Plain(stream),
            Peer::Tcp(peer),
            state,
            deadline,
        );
        c.probe_room = probe_room;
        f.conns.push(c);
        f.next_id += 1;
    }

    fn head() -> State {
        State::Head { buf: Vec::new() }
    }

    /// A connection that has waited for its head less than `stall_time`
    /// (a request most likely on its way) keeps its place while the probe
    /// room has one free, and never loses it to a newcomer of its own
    /// batch of accepts.
    #[test]
    fn a_fresh_connection_is_put_out_last_and_never_by_its_own_batch() {
        let (mut f, clients) = front();
        let now = Instant::now();
        assert_eq!(f.place_for_newcomer(now, f.next_id), Place::ProbeRoom);
        push(&mut f, &clients, head(), true);
        // Connection 1 waits for its head: the newcomer gets the room's
        // other place, not connection 1's.
        assert_eq!(f.place_for_newcomer(now, f.next_id), Place::ProbeRoom);
        push(&mut f, &clients, head(), true);
        // The room is full: the oldest fresh one goes, from an earlier
        // batch only.
        assert_eq!(f.place_for_newcomer(now, 2), Place::Instead(1));
        assert_eq!(f.place_for_newcomer(now, 1), Place::NextTurn);
        // One that has waited `stall_time` for its head goes first, batch
        // or not.
        f.conns[2].since = now - f.limits.stall_time;
        assert_eq!(f.place_for_newcomer(now, 1), Place::Instead(2));
        // No one to put out: refused.
        f.conns.truncate(1);
        f.limits.probe_room = 0;
        assert_eq!(f.place_for_newcomer(now, 1), Place::Full);
    }
}
