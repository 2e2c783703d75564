//! Who holds one of the front's slots, and who loses it under pressure
//! (issue 17, item 1). The whole rule, in one place:
//!
//! - A slot is held by a connection the front still serves: reading its
//!   head, its request with tiny_http, or its answer being written. There
//!   are `max_connections` of them.
//! - When they are all taken, a newcomer takes the place of a connection
//!   that is not making progress of its own doing ([`Front::victim`]), in
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
//!   4. a connection that has waited for its head for less than
//!      `stall_time` (most likely a client whose request is on its way: a
//!      probe that connected a moment ago), the oldest first.
//! - A connection with one request that waits on tbot (a parked `/wait`, a
//!   slow `/metrics` render, a request queued for tiny_http) keeps its
//!   slot: its client did nothing wrong. For probes beside them,
//!   `probe_room` more connections may read a head and get an answer that
//!   the serving loop gives at once (`/livez`, `/readyz`: see
//!   [`crate::diag::endpoints::answered`]); any other request made there
//!   needs a slot (a victim's, else a 503).
//! - A connection the front closes after it wrote something lingers
//!   (RFC 9112 §9.6): its sending side is shut down, so what was written
//!   reaches the client, then what the client still sends is read and
//!   dropped until it closes, for at most `linger_time` and `linger_bytes`,
//!   so that the close does not reset answers away. Lingering connections
//!   hold no slot; at most `max_connections` linger at once, the oldest
//!   closed first beyond that.

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
        for c in self.conns.iter().filter(|c| c.served()) {
            match c.probe_room {
                true => room += 1,
                false => slots += 1,
            }
        }
        (slots, room)
    }

    /// The connection that loses its place to a newcomer, if any, by the
    /// module's ranks 1 to 4. `slots_only`: not one in the probe room (its
    /// place frees no slot). Never `except`.
    pub(super) fn victim(&self, now: Instant, slots_only: bool, except: usize) -> Option<usize> {
        self.conns
            .iter()
            .enumerate()
            .filter(|&(j, c)| j != except && !(slots_only && c.probe_room))
            .filter_map(|(j, c)| {
                let rank = match c.state {
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
                    State::Backend { ref keep_alive, .. } => {
                        pipelining(keep_alive).then_some((3, c.since))
                    }
                    // Its password is being checked: a request that waits
                    // on tbot keeps its slot.
                    State::Auth(_) => None,
                    State::Linger { .. } => None,
                }?;
                Some((rank, j))
            })
            .min()
            .map(|(_, j)| j)
    }

    /// Connection `i` loses its place: it closes the lingering way.
    fn evict(&mut self, i: usize, now: Instant) {
        let linger = self.limits.linger_time;
        self.conns[i].close_lingering(now, linger);
    }

    /// Where a newcomer goes: Some(false) a slot, Some(true) the probe
    /// room, None nowhere (it is refused).
    pub(super) fn room_for_newcomer(&mut self, now: Instant) -> Option<bool> {
        let (slots, room) = self.occupancy();
        if slots < self.limits.max_connections {
            return Some(false);
        }
        if let Some(v) = self.victim(now, false, usize::MAX) {
            let probe_room = self.conns[v].probe_room;
            self.evict(v, now);
            return Some(probe_room);
        }
        (room < self.limits.probe_room).then_some(true)
    }

    /// Connection `i`, in the probe room, asks for something that is not a
    /// probe: it moves to a slot, free or a victim's. False: there is none.
    pub(super) fn slot_for(&mut self, i: usize, now: Instant) -> bool {
        let (slots, _) = self.occupancy();
        if slots >= self.limits.max_connections {
            let Some(v) = self.victim(now, true, i) else {
                return false;
            };
            self.evict(v, now);
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

/// The client sent more behind the request in progress (`next`, the
/// bytes of its next requests already read).
fn pipelining(next: &Option<Vec<u8>>) -> bool {
    next.as_ref().is_some_and(|b| !b.is_empty())
}
