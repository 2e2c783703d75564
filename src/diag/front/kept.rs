//! Kept connections to tiny_http, pipelined (issue 11, item 4).
//!
//! Requests queued in a turn of the front's loop go out at its end, several
//! heads down one kept connection in one write. tiny_http's worker on that
//! connection parses them in one wake and queues them all (client.rs reads
//! the next head as soon as a request without a body is made; lib.rs pushes
//! each to the serving loop's queue without waiting for its answer); the
//! serving loop takes them without sleeping in between; the answers come
//! back in order, and the front reads several in one read and splits them
//! by `Content-Length` ([`super::upstream::framing`]; no body after a HEAD).
//!
//! tiny_http writes the answers on one connection in order
//! (util/sequential.rs: the writer of request N+1 waits until N's is
//! done), so a request joins a connection that carries others only if
//! every one of them, and it, is answered by the serving loop as it takes
//! it (its row's [`crate::diag::endpoints::Answered`]). A page the renderer
//! thread makes (`/metrics`) goes on an idle connection and nothing goes
//! behind it: else the serving loop would wait on the renderer. At most
//! [`MAX_PIPELINED`] requests ride one connection. Renders never hold every
//! kept connection ([`super::upstream::Pool::max_rendering`]), and the
//! requests answered at once go first (issue 17: a probe must not wait
//! behind pipelined `/metrics`).
//!
//! Idle connections are polled for readability: tiny_http sends nothing
//! unasked, so anything there (its end closing, stray bytes) drops the
//! connection. When a kept connection closes (tiny_http closed it, or it
//! was replaced), every request on it that got no answer is sent again, in
//! order, once, on another (the endpoints are GET and HEAD, which are safe
//! to repeat); a second loss gets the client a 502. A client that goes
//! away while its request is on a connection leaves its answer to be read
//! and dropped there; a client whose answer is late (504) takes the
//! connection down with it, and the requests behind its own are sent again.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use rustix::event::epoll::EventFlags;

use super::turn::Events;
use super::upstream::{framing, gone, Framing, Permit, Relayed};
use super::{again, Front, State};
use crate::log;

/// Requests on one kept connection at once, at most. It was 8: a saturated
/// keep-alive load of 16 clients (wrk -t2 -c16) then split over two
/// connections, two wakes of tiny_http's workers per batch. Raised to 32 in
/// commit 37d3aa2 with other changes to the hop; no figure was measured for
/// this one alone. Only requests answered at once ride behind others, so
/// none waits on a slow one.
pub(super) const MAX_PIPELINED: usize = 32;

/// Whom a kept connection that ends unanswered blames ([`Front::break_kept`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// tiny_http dropped it over the request at its head: that one is sent
    /// again once (a 502 if it was sent again already).
    Head,
    /// The same, and the head request is not sent again (its answer was
    /// too large).
    HeadFails,
    /// The front dropped it (a client's answer was late): every request
    /// on it is sent again, none blamed.
    NoOne,
}

/// One kept connection to tiny_http and the requests it carries.
pub(super) struct KeptConn {
    pub(super) stream: UnixStream,
    /// `stream`'s registration in the epoll set.
    pub(super) ev: EventFlags,
    /// Its place under the cap on kept connections.
    _permit: Permit,
    /// The pool's generation when it was made.
    generation: u64,
    /// Heads not yet written, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Answer bytes read and not yet relayed.
    resp: Vec<u8>,
    /// The requests sent, oldest (next to be answered) first.
    waiting: VecDeque<Waiter>,
    /// The first answer is delimited by the connection's close (Some),
    /// with its head's length if [`framing`] could read it.
    until_close: Option<Option<usize>>,
}

struct Waiter {
    /// The client's [`super::Conn::id`].
    client: u64,
    head_method: bool,
    at_once: bool,
}

impl KeptConn {
    /// What its socket waits for: readable always, writable too while
    /// heads are left to write.
    pub(super) fn interest(&self) -> EventFlags {
        match self.sent < self.out.len() {
            true => EventFlags::IN | EventFlags::OUT,
            false => EventFlags::IN,
        }
    }

    /// Whether a request (`at_once`: answered as the loop takes it) may go
    /// down this connection now.
    fn takes(&self, at_once: bool, generation: u64) -> bool {
        self.generation == generation
            && self.until_close.is_none()
            && (self.waiting.is_empty()
                || (at_once
                    && self.waiting.len() < MAX_PIPELINED
                    && self.waiting.iter().all(|w| w.at_once)))
    }

    /// Whether it carries a request that is not answered at once (a
    /// render).
    fn renders(&self) -> bool {
        self.waiting.iter().any(|w| !w.at_once)
    }

    /// Writes what the socket takes of the heads.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.out.len() {
            match (&self.stream).write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if again(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }
}

impl Front {
    /// Sends the queued requests, those answered at once first, then
    /// oldest first, down the kept connections (the one carrying the most
    /// that takes it, else a new one under the cap; a render only while
    /// fewer than `max_rendering` carry one), one write per connection (at
    /// the end of every turn).
    pub(super) fn dispatch_queued(&mut self, now: Instant) {
        let generation = self.follow_upstream(now);
        let queued = |c: &super::Conn| matches!(c.state, State::Queued(_));
        if !self.conns.iter().any(queued) {
            return;
        }
        let path = self.backend_path();
        let mut queued: Vec<usize> = (0..self.conns.len())
            .filter(|&i| queued(&self.conns[i]))
            .collect();
        let at_once = |c: &super::Conn| matches!(&c.state, State::Queued(rq) if rq.at_once);
        queued.sort_by_key(|&i| (!at_once(&self.conns[i]), self.conns[i].since));
        let mut rendering = self.kept.iter().filter(|p| p.renders()).count();
        let mut refused = false;
        for i in queued {
            let State::Queued(rq) = &self.conns[i].state else {
                continue;
            };
            let at_once = rq.at_once;
            if !at_once && rendering >= self.pool.max_rendering() {
                // Stays queued: the last kept connection is for probes.
                continue;
            }
            // The fullest that takes it: one write and one wake of
            // tiny_http's worker carry more requests.
            let best = (0..self.kept.len())
                .filter(|&p| self.kept[p].takes(at_once, generation))
                .max_by_key(|&p| self.kept[p].waiting.len());
            let p = match best {
                Some(p) => p,
                None if refused => continue,
                None => match self.pool.permit() {
                    Some(permit) => match self.open_kept(&path, generation, permit) {
                        Ok(p) => p,
                        // tiny_http stopped accepting (its accept thread
                        // ended): the serving loop makes a new one and
                        // pokes the front, and the request waits for it,
                        // within its deadline. No other connect this turn.
                        Err(e) if gone(&e) => {
                            (self.backend_lost)(&path);
                            refused = true;
                            continue;
                        }
                        Err(e) => {
                            self.unreachable(i, now, &path, e);
                            continue;
                        }
                    },
                    // Stays queued until a connection takes it.
                    None => continue,
                },
            };
            let c = &mut self.conns[i];
            let State::Queued(rq) = std::mem::replace(&mut c.state, State::Linger { drained: 0 })
            else {
                continue;
            };
            let kc = &mut self.kept[p];
            rendering += usize::from(!at_once);
            kc.out.extend_from_slice(&rq.head);
            kc.waiting.push_back(Waiter {
                client: c.id,
                head_method: rq.head.starts_with(b"HEAD "),
                at_once,
            });
            c.state = State::Piped(rq);
        }
        for kc in &mut self.kept {
            // An error shows in the next wait (the socket hung up).
            let _ = kc.flush();
        }
    }

    /// A new kept connection to tiny_http at `path` (of `generation`,
    /// holding `permit`): its index.
    fn open_kept(&mut self, path: &Path, generation: u64, permit: Permit) -> io::Result<usize> {
        let stream = self.connect_upstream(path, true)?;
        self.kept.push(KeptConn {
            stream,
            ev: EventFlags::empty(),
            _permit: permit,
            generation,
            out: Vec::new(),
            sent: 0,
            resp: Vec::new(),
            waiting: VecDeque::new(),
            until_close: None,
        });
        Ok(self.kept.len() - 1)
    }

    /// Follows tiny_http when the serving loop made a new one (checked
    /// every turn: the loop pokes the front when it has): the connections
    /// to the old one that are idle close, and the requests on the others
    /// are sent again (the serving loop reads only the new one). Returns
    /// the current generation.
    fn follow_upstream(&mut self, now: Instant) -> u64 {
        if self.pool.follows(&self.backend) {
            return self.pool.generation();
        }
        let path = self.backend_path();
        let generation = self.pool.follow(&path);
        for p in (0..self.kept.len()).rev() {
            if self.kept[p].generation != generation {
                match self.kept[p].waiting.is_empty() {
                    true => drop(self.kept.swap_remove(p)),
                    false => self.break_kept(p, now, Blame::NoOne),
                }
            }
        }
        generation
    }

    /// Acts on what the wait reported for the kept connections: writes
    /// heads, relays answers, drops connections that closed (sending their
    /// unanswered requests again).
    pub(super) fn serve_kept(&mut self, events: &Events, now: Instant) {
        for p in (0..self.kept.len()).rev() {
            let ev = events.of(self.kept[p].stream.as_raw_fd());
            if ev.is_empty() {
                continue;
            }
            if self.kept[p].waiting.is_empty() {
                // tiny_http sends nothing unasked: it closed, or sent
                // stray bytes.
                self.kept.swap_remove(p);
                continue;
            }
            if ev.contains(EventFlags::OUT) && self.kept[p].flush().is_err() {
                self.break_kept(p, now, Blame::Head);
                continue;
            }
            if ev.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR) {
                if let Err(first_fails) = self.read_kept(p, now) {
                    let blame = if first_fails {
                        Blame::HeadFails
                    } else {
                        Blame::Head
                    };
                    self.break_kept(p, now, blame);
                }
            }
        }
    }

    /// Reads answers on kept connection `p` and relays the whole ones.
    /// Err: the connection is done (`true`: and the oldest request on it
    /// is not to be sent again).
    fn read_kept(&mut self, p: usize, now: Instant) -> Result<(), bool> {
        let mut chunk = [0u8; 16 * 1024];
        let kc = &mut self.kept[p];
        // All there is now, not one chunk a turn: a large page (megabytes
        // of /metrics) would cost a turn of the whole loop per 16 KiB. The
        // answers read before an end or an error still go out.
        let ended = loop {
            let n = match (&kc.stream).read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => n,
                Err(e) if again(&e) => break false,
                Err(_) => break true,
            };
            if kc.resp.len() + n > self.limits.max_response_bytes {
                log::warn("diagnostics front: response too large; dropped", &[]);
                return Err(true);
            }
            kc.resp.extend_from_slice(&chunk[..n]);
        };
        let relayed = self.relay_answers(p, now);
        match ended {
            true => Err(false),
            false => relayed,
        }
    }

    /// Relays the whole answers read on kept connection `p`, oldest first.
    /// Err(false): bytes no request asked for.
    fn relay_answers(&mut self, p: usize, now: Instant) -> Result<(), bool> {
        loop {
            let kc = &mut self.kept[p];
            let Some(w) = kc.waiting.front() else {
                // Bytes no request asked for.
                return match kc.resp.is_empty() {
                    true => Ok(()),
                    false => Err(false),
                };
            };
            let (head, len) = match framing(&kc.resp, w.head_method) {
                Framing::Length { head, total } if kc.resp.len() >= total => (head, total),
                Framing::Length { .. } | Framing::Partial => return Ok(()),
                Framing::UntilClose { head } => {
                    // Relayed when tiny_http closes the connection; nothing
                    // more goes down it.
                    kc.until_close = Some(head);
                    return Ok(());
                }
            };
            let bytes = match kc.resp.len() == len {
                true => std::mem::take(&mut kc.resp),
                false => kc.resp.drain(..len).collect(),
            };
            let resp = Relayed {
                bytes,
                head: Some(head),
            };
            let client = w.client;
            kc.waiting.pop_front();
            self.deliver(client, resp, now);
        }
    }

    /// Client `id`'s answer came (empty: none will): it goes out this turn.
    /// A client gone meanwhile is not looked for.
    fn deliver(&mut self, id: u64, resp: Relayed, now: Instant) {
        let Some(i) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let c = &mut self.conns[i];
        if !matches!(c.state, State::Piped(_)) {
            return;
        }
        let State::Piped(rq) = std::mem::replace(&mut c.state, State::Linger { drained: 0 }) else {
            return;
        };
        c.kick = true;
        self.answer(i, resp, rq.next, now);
    }

    /// Kept connection `p` is done: its unanswered requests go back to the
    /// queue, in order. At most the oldest of them is blamed (tiny_http
    /// drops a connection over the request it is reading, not over those
    /// behind it; see [`Blame`]): it is sent once more, or gets a 502. The
    /// ones behind are sent again unblamed,
    /// so one client's bad request cannot fail its neighbours' (each is
    /// still bounded by its own response timeout).
    fn break_kept(&mut self, p: usize, now: Instant, blame: Blame) {
        let mut kc = self.kept.swap_remove(p);
        if let (Some(head), Blame::Head) = (kc.until_close, blame) {
            // The oldest's answer ended with the connection.
            if let Some(w) = kc.waiting.pop_front() {
                let resp = Relayed {
                    bytes: std::mem::take(&mut kc.resp),
                    head,
                };
                self.deliver(w.client, resp, now);
            }
        }
        for (k, w) in kc.waiting.into_iter().enumerate() {
            let Some(i) = self.conns.iter().position(|c| c.id == w.client) else {
                continue;
            };
            let State::Piped(rq) = &mut self.conns[i].state else {
                continue;
            };
            let blamed = k == 0 && blame != Blame::NoOne;
            if blamed && (rq.retried || blame == Blame::HeadFails) {
                self.deliver(w.client, Relayed::default(), now);
            } else {
                rq.retried |= blamed;
                let State::Piped(rq) =
                    std::mem::replace(&mut self.conns[i].state, State::Linger { drained: 0 })
                else {
                    continue;
                };
                self.conns[i].state = State::Queued(rq);
            }
        }
    }

    /// Client `id` gives up on its request (late): the kept connection
    /// carrying it is dropped, and the requests behind its own are sent
    /// again.
    pub(super) fn drop_kept_of(&mut self, id: u64) {
        let Some(p) = self
            .kept
            .iter()
            .position(|p| p.waiting.iter().any(|w| w.client == id))
        else {
            return;
        };
        self.kept[p].waiting.retain(|w| w.client != id);
        self.kept[p].until_close = None;
        // The front gave up on it, not tiny_http: no one behind is to blame.
        self.break_kept(p, Instant::now(), Blame::NoOne);
    }

    /// Whether some client's answer is ready to go without an event.
    pub(super) fn kicked(&self) -> bool {
        self.conns.iter().any(|c| c.kick)
    }
}
