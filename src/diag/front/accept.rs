//! Admission: accepting clients, the connection cap, and running out of
//! descriptors (through [`crate::infra::sockets`], the toolkit the
//! multiplexer socket uses too).
//!
//! Accept errors never end the front's loop. Out of descriptors, the
//! slowest client still waiting for its head is closed to make room; if
//! there is none, the spare descriptor is given up to accept the waiting
//! client and refuse it with a 503 (then a lingering close), and new
//! connections resume as soon as descriptors free up.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::epoll::EventFlags;

use super::tls::Client;
use super::{auth, Conn, Front, State, Then};
use crate::diag::head::simple_response;
use crate::infra::sockets::out_of_descriptors;
use crate::log::{self, once_a_second};

impl Front {
    /// Accepts every waiting client.
    pub(super) fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if out_of_descriptors(&e) => {
                    self.refuse_without_descriptors(&e);
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

    /// accept() failed for want of descriptors: free one (the slowest idle
    /// client, or the spare), refuse the waiting client, and pause briefly
    /// when nothing can be freed.
    fn refuse_without_descriptors(&mut self, e: &io::Error) {
        self.note_accept_error(e);
        if let Some(i) = self.oldest_waiting_for_head() {
            self.conns.swap_remove(i);
            // The freed descriptor is for the newcomer: the spare, if it
            // is out, waits for the next one.
            self.newcomer_first = !self.spare.is_held();
            return;
        }
        if self.spare.release() {
            // The spare's number goes to the refused client, which keeps
            // it while it reads the refusal: the 503 is written, then what
            // the client sent is read and dropped (the lingering close), so
            // the client sees the reason rather than a reset. The spare
            // comes back once a descriptor is free (`restore_spare`).
            if let Ok((stream, peer)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    let now = Instant::now();
                    let mut c = Conn {
                        id: self.next_id,
                        // Plain even on a TLS port: no handshake for a refusal.
                        client: Client::Plain(stream),
                        client_ev: EventFlags::empty(),
                        peer,
                        state: State::Linger { drained: 0 },
                        since: now,
                        deadline: now,
                        half_closed: false,
                        sent_more: false,
                        kick: false,
                    };
                    self.next_id += 1;
                    c.reply(
                        simple_response(503, "the diagnostics service is out of file descriptors"),
                        Then::Linger,
                        now + self.limits.write_timeout,
                    );
                    self.conns.push(c);
                }
            }
            self.restore_spare();
        }
        self.accept_paused_until = Some(Instant::now() + Duration::from_millis(50));
    }

    /// Takes the spare descriptor back when it was given away and one is
    /// free again (unless the one just freed is for a waiting newcomer).
    pub(super) fn restore_spare(&mut self) {
        if !std::mem::take(&mut self.newcomer_first) {
            self.spare.restore();
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

    /// A new client: a slot of its own, the slot of the client that has
    /// waited longest for its head, or a quick 503.
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
        // TLS when the web configuration asks for it ([`super::tls`]).
        let Ok(client) = Client::new(stream, auth::current(&self.security).tls_config()) else {
            return;
        };
        let now = Instant::now();
        self.conns.push(Conn {
            id: self.next_id,
            client,
            client_ev: EventFlags::empty(),
            peer,
            state: State::Head {
                buf: Vec::with_capacity(1024),
            },
            since: now,
            deadline: now + self.limits.head_timeout,
            half_closed: false,
            sent_more: false,
            kick: false,
        });
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
    }
}
