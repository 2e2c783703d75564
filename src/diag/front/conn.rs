//! One client connection's state machine: read the head, hand it to
//! tiny_http ([`super::upstream`] relays the answer), write the answer, then
//! close the lingering way, or wait for the next head (keep-alive).

use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::time::Instant;

use rustix::event::epoll::EventFlags;

use super::upstream::Relayed;
use super::{accept, again, auth, Conn, Front, Request, State, Then};
use crate::diag::request_head::{parse_head, simple_response, Parsed, Peer};
use crate::infra::sockets::out_of_descriptors;
use crate::log::{self, once_a_second};

impl Conn {
    /// The answer `out` goes out next, by `deadline`; then `then`.
    pub(super) fn reply(&mut self, out: Vec<u8>, then: Then, deadline: Instant) {
        self.state = State::Reply { out, sent: 0, then };
        self.deadline = deadline;
    }
}

impl Front {
    /// A deadline passed: say so where an answer is owed, and close (the
    /// lingering way once something was written). Returns whether to keep
    /// the connection (while it lingers).
    pub(super) fn expire(&mut self, i: usize, now: Instant) -> bool {
        let c = &mut self.conns[i];
        match &c.state {
            State::Head { buf } if buf.is_empty() => return false,
            State::Linger { .. } => return false,
            State::Head { .. } => {
                let _ = c
                    .client
                    .write(&simple_response(408, "request head not received in time"));
            }
            State::Backend { .. } | State::Queued(_) | State::Piped(_) | State::Auth(_) => {
                let _ = c.client.write(&simple_response(
                    504,
                    "the diagnostics service did not answer in time",
                ));
                if matches!(c.state, State::Piped(_)) {
                    // tiny_http has not answered on that kept connection:
                    // the requests behind would wait as long.
                    let id = c.id;
                    self.drop_kept_of(id);
                }
            }
            // The client did not take its answer in time: the rest is cut.
            State::Reply { .. } => {}
        }
        self.conns[i].close_lingering(now, self.limits.linger_time);
        true
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
                let n = match c.client.read(&mut chunk[..room]) {
                    Ok(0) => return false,
                    Ok(n) => n,
                    Err(e) if again(&e) => return true,
                    Err(e) => {
                        // A failed TLS handshake (no or a foreign client
                        // certificate, plain HTTP): say why, for operators.
                        if e.kind() == ErrorKind::InvalidData {
                            log::debug(
                                "diagnostics TLS handshake failed",
                                &[("peer", &c.peer), ("error", &e)],
                            );
                        }
                        return false;
                    }
                };
                buf.extend_from_slice(&chunk[..n]);
                self.advance_head(i, now);
                true
            }
            State::Backend { .. } => self.step_backend(i, now),
            // Not polled: the kept connections move them on ([`super::kept`]).
            State::Queued(_) | State::Piped(_) | State::Auth(_) => true,
            State::Reply { .. } => self.step_reply(i, now),
            State::Linger { drained: total } => !c.client.drained(total, self.limits.linger_bytes),
        }
    }

    /// Writes what the client takes of its answer; once it is all out,
    /// closes, lingers, or reads the next head.
    fn step_reply(&mut self, i: usize, now: Instant) -> bool {
        let c = &mut self.conns[i];
        let State::Reply { out, sent, then } = &mut c.state else {
            return true;
        };
        match c.client.write(&out[*sent..]) {
            Ok(n) => {
                *sent += n;
                // TLS: until its last records are out too.
                if *sent < out.len() || !c.client.flushed() {
                    // A short write: its socket is full. The answer is
                    // stalled from the first one until it is written whole
                    // (the kernel growing its buffers is not the client
                    // reading).
                    c.stalled_since.get_or_insert(now);
                    return true;
                }
                c.stalled_since = None;
                match std::mem::replace(then, Then::Close) {
                    Then::Close => {
                        c.close_lingering(now, self.limits.linger_time);
                        // A client that is done already is closed now.
                        self.step(i, now)
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
            Err(e) if again(&e) => {
                // Its socket is full: the client is not taking its answer.
                c.stalled_since.get_or_insert(now);
                true
            }
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
        let parsed = match parse_head(buf, &self.limits.head, c.peer) {
            // What the debug socket asks of the front itself (the log
            // level, the log's stream) is no probe.
            Parsed::Local { .. } if c.on_reserve => Parsed::Refuse(503, accept::OUT_OF_DESCRIPTORS),
            // A client on the reserve's descriptor gives it back after its
            // answer.
            parsed if c.on_reserve => parsed.closing(),
            parsed => parsed,
        };
        match parsed {
            Parsed::Partial => {}
            Parsed::Refuse(status, why) => {
                let out = simple_response(status, why);
                c.reply(out, Then::Close, now + self.limits.write_timeout);
            }
            Parsed::Answer {
                resp,
                head,
                keep_alive,
                len,
            } => {
                // As for a relayed answer: one that has half-closed still
                // gets answers to the requests it sent before.
                let next = Some(buf[len..].to_vec())
                    .filter(|next| keep_alive && (!c.half_closed || !next.is_empty()));
                let resp = Relayed {
                    bytes: resp,
                    head: Some(head),
                }
                .closing(next.is_none());
                let then = next.map_or(Then::Close, Then::KeepAlive);
                c.reply(resp, then, now + self.limits.write_timeout);
            }
            Parsed::Local {
                ask,
                keep_alive,
                len,
            } => self.answer_local(i, now, (ask, keep_alive, len)),
            Parsed::Forward {
                head,
                keep_alive,
                len,
                slow,
                at_once,
                probe,
                path,
                authorization,
            } => {
                let next = keep_alive.then(|| buf[len..].to_vec());
                let verdict = self.verdict(i, &head[path], authorization.as_deref());
                if let Some(why) = self.refusal(i, probe, now) {
                    let c = &mut self.conns[i];
                    c.reply(
                        simple_response(503, why),
                        Then::Close,
                        now + self.limits.write_timeout,
                    );
                    return;
                }
                self.admit_request(i, now, verdict, head, next, How { slow, at_once });
            }
        }
    }

    /// Whether connection `i` may ask for `path` (the target's path, as the
    /// front wrote it), with the `Authorization` header it sent: basic auth
    /// and client certificates ([`super::auth`]) on TCP; a debug socket
    /// peer passed its own rule at accept ([`super::local`]).
    fn verdict(&self, i: usize, path: &[u8], authorization: Option<&[u8]>) -> auth::Verdict {
        let c = &self.conns[i];
        match c.peer {
            Peer::Local { .. } => auth::Verdict::Pass,
            Peer::Tcp(_) => {
                let sec = auth::current(&self.security);
                let asked = auth::Asked {
                    // ASCII (the front wrote it); were it not, no open path
                    // would match: fail closed.
                    path: std::str::from_utf8(path).unwrap_or(""),
                    authorization,
                    certificate: c.client.has_certificate(),
                };
                auth::judge(&sec, &asked)
            }
        }
    }

    /// Why connection `i`, which asks for a probe or not (`probe`), is not
    /// served where it is (503): on a descriptor of the reserve, only
    /// probes are ([`super::accept`]); in the probe room, only probes, or
    /// a request that finds a slot to move to ([`super::room`]).
    fn refusal(&mut self, i: usize, probe: bool, now: Instant) -> Option<&'static str> {
        if probe {
            None
        } else if self.conns[i].on_reserve {
            Some(accept::OUT_OF_DESCRIPTORS)
        } else if self.conns[i].probe_room && !self.slot_for(i, now) {
            Some("too many connections to the diagnostics service")
        } else {
            None
        }
    }

    /// Hands a clean request head to tiny_http: queued for a kept
    /// connection ([`super::kept`], sent at the end of the turn), or on a
    /// new connection of its own for a slow request (or when no
    /// connections are kept); `next`: the client's connection stays open,
    /// and these bytes of its next request arrived already. A tiny_http
    /// that cannot be reached gets the client a 503.
    pub(super) fn forward(
        &mut self,
        i: usize,
        now: Instant,
        head: Vec<u8>,
        next: Option<Vec<u8>>,
        how: How,
    ) {
        let c = &mut self.conns[i];
        let mut timeout = if how.slow {
            self.limits.slow_response_timeout
        } else {
            self.limits.response_timeout
        };
        if c.half_closed {
            timeout = timeout.min(self.limits.half_close_grace);
        }
        c.deadline = now + timeout;
        if !how.slow && self.pool.keeps() {
            c.state = State::Queued(Request {
                head,
                next,
                at_once: how.at_once,
                retried: false,
            });
            return;
        }
        let path = self.backend_path();
        let up = match self.connect_upstream(&path, false) {
            Ok(up) => up,
            Err(e) => return self.unreachable(i, now, &path, e),
        };
        let head_method = head.starts_with(b"HEAD ");
        let mut head = head;
        // For this request only: tiny_http's worker ends with it.
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        self.conns[i].state = State::Backend {
            up,
            up_ev: EventFlags::empty(),
            out: head,
            sent: 0,
            resp: Vec::new(),
            resp_head: None,
            keep_alive: next,
            head_method,
        };
        self.send_head_now(i);
    }

    /// tiny_http cannot be reached at `path` (`e`): the client `i` gets a
    /// 503, and a socket no one listens on is reported.
    pub(super) fn unreachable(&mut self, i: usize, now: Instant, path: &Path, e: io::Error) {
        let why = match out_of_descriptors(&e) {
            true => accept::OUT_OF_DESCRIPTORS,
            false => "the diagnostics service is busy; try again",
        };
        let out = simple_response(503, why);
        self.conns[i].reply(out, Then::Close, now + self.limits.write_timeout);
        if super::upstream::gone(&e) {
            (self.backend_lost)(path);
        }
        if once_a_second(&mut self.last_backend_error) {
            log::warn(
                "diagnostics front: cannot reach the serving loop",
                &[("error", &e)],
            );
        }
    }
}

/// How a forwarded request is sent (from [`Parsed::Forward`]).
#[derive(Clone, Copy)]
pub(super) struct How {
    slow: bool,
    at_once: bool,
}
