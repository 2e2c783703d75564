//! One client connection's state machine: read the head, hand it to
//! tiny_http ([`super::upstream`] relays the answer), write the answer, then
//! close, linger, or wait for the next head (keep-alive).

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use rustix::event::epoll::EventFlags;

use super::{again, Conn, Front, State, Then};
use crate::diag::head::{parse_head, set_connection_header, simple_response, Parsed};
use crate::infra::sockets::drained;
use crate::log::{self, once_a_second};

impl Conn {
    /// The answer `out` goes out next, by `deadline`; then `then`.
    pub(super) fn reply(&mut self, out: Vec<u8>, then: Then, deadline: Instant) {
        self.state = State::Reply { out, sent: 0, then };
        self.deadline = deadline;
    }
}

impl Front {
    /// A deadline passed: say so where an answer is owed. Returns whether
    /// to keep the connection (never).
    pub(super) fn expire(&mut self, i: usize) -> bool {
        let c = &mut self.conns[i];
        match &c.state {
            State::Head { buf } if !buf.is_empty() => {
                let _ =
                    (&c.client).write(&simple_response(408, "request head not received in time"));
            }
            State::Backend { .. } | State::Queued { .. } => {
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
    pub(super) fn step(&mut self, i: usize, now: Instant) -> bool {
        let c = &mut self.conns[i];
        match &mut c.state {
            State::Head { buf } => {
                let mut chunk = [0u8; 4096];
                let room = (self.limits.head.max_head_bytes + 1)
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
            // Not polled: `dispatch_queued` moves it on.
            State::Queued { .. } => true,
            State::Reply { .. } => self.step_reply(i, now),
            State::Linger { drained: total } => {
                !drained(&c.client, total, self.limits.linger_bytes)
            }
        }
    }

    /// Writes what the client takes of its answer; once it is all out,
    /// closes, lingers, or reads the next head.
    fn step_reply(&mut self, i: usize, now: Instant) -> bool {
        let c = &mut self.conns[i];
        let State::Reply { out, sent, then } = &mut c.state else {
            return true;
        };
        match (&c.client).write(&out[*sent..]) {
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
                        c.deadline = now + self.limits.linger_time;
                        true
                    }
                    Then::KeepAlive(next) => {
                        c.state = State::Head { buf: next };
                        c.since = now;
                        c.deadline = now + self.limits.head_timeout;
                        self.advance_head(i, now);
                        true
                    }
                }
            }
            Err(e) if again(&e) => true,
            Err(_) => false,
        }
    }

    /// A `Head` connection got bytes: refuse, answer, forward, or keep
    /// reading.
    pub(super) fn advance_head(&mut self, i: usize, now: Instant) {
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
                self.forward(i, now, head, next, slow);
            }
        }
    }

    /// Hands a clean request head to tiny_http on a kept connection (or a
    /// new one, for a slow request); `next`: the client's connection stays
    /// open, and these bytes of its next request arrived already. When
    /// every kept connection carries a request, the request is queued
    /// ([`State::Queued`]). A tiny_http that cannot be reached gets the
    /// client a 503.
    fn forward(
        &mut self,
        i: usize,
        now: Instant,
        head: Vec<u8>,
        next: Option<Vec<u8>>,
        slow: bool,
    ) {
        let path = self.backend_path();
        let c = &mut self.conns[i];
        // The time spent queued counts against the response timeout.
        if !matches!(c.state, State::Queued { .. }) {
            let mut timeout = if slow {
                self.limits.slow_response_timeout
            } else {
                self.limits.response_timeout
            };
            if c.half_closed {
                timeout = timeout.min(self.limits.half_close_grace);
            }
            c.deadline = now + timeout;
        }
        if !slow && !self.pool.has_room(&path) {
            c.state = State::Queued { head, next };
            return;
        }
        let taken = match self.pool.take(&path, slow) {
            Ok(taken) => taken,
            Err(e) => {
                let out = simple_response(503, "the diagnostics service is busy; try again");
                c.reply(out, Then::Close, now + self.limits.write_timeout);
                if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) {
                    (self.backend_lost)(&path);
                }
                if once_a_second(&mut self.last_backend_error) {
                    log::warn(
                        "diagnostics front: cannot reach the serving loop",
                        &[("error", &e)],
                    );
                }
                return;
            }
        };
        let head_request = head.starts_with(b"HEAD ");
        let mut head = head;
        if taken.kept.is_none() {
            // For this request only: tiny_http's worker ends with it.
            head.truncate(head.len() - 2);
            head.extend_from_slice(b"Connection: close\r\n\r\n");
        }
        c.state = State::Backend {
            up: taken.stream,
            // From the pool: registered readable; new: not yet.
            up_ev: match taken.reused {
                true => EventFlags::IN,
                false => EventFlags::empty(),
            },
            out: head,
            sent: 0,
            resp: Vec::new(),
            keep_alive: next,
            reused: taken.reused,
            head_request,
            generation: taken.generation,
            kept: taken.kept,
        };
        self.send_head_now(i);
    }

    /// Hands queued requests, oldest first, to the kept connections that
    /// are free (at the end of every turn).
    pub(super) fn dispatch_queued(&mut self, now: Instant) {
        loop {
            let oldest = self
                .conns
                .iter()
                .enumerate()
                .filter(|(_, c)| matches!(c.state, State::Queued { .. }))
                .min_by_key(|(_, c)| c.since)
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                return;
            };
            if !self.pool.has_room(&self.backend_path()) {
                return;
            }
            let State::Queued { head, next } = &mut self.conns[i].state else {
                return;
            };
            // Taken out, the state still says `Queued` for `forward`.
            let (head, next) = (std::mem::take(head), next.take());
            self.forward(i, now, head, next, false);
        }
    }
}
