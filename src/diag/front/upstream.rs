//! The front's connections to tiny_http: where it listens, the cap on
//! kept connections, the framing of its responses, and the connections of
//! their own that slow requests take.
//!
//! Connecting a fresh Unix socket per request cost a connect, tiny_http's
//! accept and its hand-off of the connection to a pool worker, two clones of
//! the stream, and a close on both sides (issue 11, item 4). Instead,
//! requests go down kept connections ([`super::kept`]), whose responses are
//! framed by their `Content-Length`.
//!
//! At most [`MAX_KEPT`] kept connections exist at once, fewer than
//! tiny_http's minimum of 4 pool threads (util/task_pool.rs, which never
//! lets the pool shrink below them). Each kept connection holds one of those
//! threads for good, and tiny_http's `TaskPool::spawn` counts a worker that
//! was notified but has not yet run as idle: when new connections arrive
//! faster than workers wake, one can be queued with no thread to run it
//! until some worker finishes a connection. With a thread never held by a
//! kept connection, that worker always comes back. Requests that find no
//! room on a kept connection wait in the front (`State::Queued`): a
//! connection of their own cost a connect, an accept and, in a burst, a new
//! tiny_http thread each. Slow requests (`/wait`, profiles) go on a
//! connection of their own that closes after the answer, so that they
//! never hold a kept one.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{again, Front, State, Then, PIPE_FDS};
use crate::diag::request_head::simple_response;
use crate::infra::sockets::out_of_descriptors;
use crate::log;

/// Where tiny_http listens, and the kept connections' places under the cap.
pub(super) struct Pool {
    /// The socket the kept connections lead to.
    path: PathBuf,
    /// Counts changes of `path`: a connection made under an older
    /// generation leads to a tiny_http that was replaced, and takes no new
    /// requests.
    generation: u64,
    /// Kept connections alive (idle or carrying requests).
    live: Arc<AtomicUsize>,
    max_kept: usize,
}

/// One kept connection's place under the cap; given back when dropped.
/// (An atomic only so that the front can move to its thread: it is the
/// only one to touch it.)
pub(super) struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// `max_kept`: kept connections alive at once, at most
    /// [`MAX_KEPT`] whatever is asked.
    pub(super) fn new(max_kept: usize) -> Pool {
        Pool {
            path: PathBuf::new(),
            generation: 0,
            live: Arc::new(AtomicUsize::new(0)),
            max_kept: max_kept.min(MAX_KEPT),
        }
    }

    /// Follows tiny_http to `path` (it was rebuilt when it changes).
    /// Returns the current generation.
    pub(super) fn follow(&mut self, path: &Path) -> u64 {
        if self.path != path {
            self.path = path.to_path_buf();
            self.generation += 1;
        }
        self.generation
    }

    /// Whether `backend` (where tiny_http listens now) is where the pool
    /// leads already.
    pub(super) fn follows(&self, backend: &super::BackendPath) -> bool {
        *backend.lock().unwrap_or_else(|p| p.into_inner()) == self.path
    }

    /// The current generation (see [`Pool::follow`]).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether connections are kept at all (else every request has one of
    /// its own).
    pub(super) fn keeps(&self) -> bool {
        self.max_kept > 0
    }

    /// A new nonblocking connection to `path`.
    pub(super) fn connect(&self, path: &Path) -> io::Result<UnixStream> {
        let stream = UnixStream::connect(path)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    /// Kept connections that may carry a rendered page (`/metrics`) at
    /// once: all but one, so that a probe never waits behind a render (the
    /// renderer is one thread: two connections keep it busy).
    pub(super) fn max_rendering(&self) -> usize {
        self.max_kept.saturating_sub(1).max(1)
    }

    /// A place for one more kept connection, if there is room under the
    /// cap.
    pub(super) fn permit(&mut self) -> Option<Permit> {
        (self.live.load(Ordering::Relaxed) < self.max_kept).then(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            Permit(self.live.clone())
        })
    }
}

/// How long the front leaves the descriptors it gave up for a new
/// connection to tiny_http ([`Front::connect_upstream`]) to tiny_http's
/// accept thread: it takes them on its own thread, in its own time. A
/// bound, not a proof (an answer on the connection shows the accept and
/// the duplicate, not the next accept): should the accept thread lose them
/// anyway, the serving loop makes a new tiny_http when the front next finds
/// the socket refusing.
const ACCEPT_GRACE: Duration = Duration::from_millis(50);

/// tiny_http no longer listens at the socket: its accept thread ended (or
/// it was rebuilt elsewhere).
pub(super) fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
    )
}

/// How long after the front last found descriptors short it still gives
/// its reserve up for a connection of tiny_http's own (a slow request's):
/// see [`Front::connect_upstream`].
const SHORT_MEMORY: Duration = Duration::from_secs(10);

impl Front {
    /// A new connection to tiny_http at `path`: a kept one (`kept`), or
    /// one of its own for a slow request.
    ///
    /// Once it accepts, tiny_http takes two descriptors more: the
    /// duplicate it makes of the connection, and the number its next
    /// accept(2) takes before it waits (Linux numbers the descriptor
    /// first). Without them its accept thread ends (a panic, or an error
    /// that ends its loop). So [`PIPE_FDS`] of the reserve are given up
    /// first (ours and those two), and for [`ACCEPT_GRACE`] the front
    /// neither accepts clients nor refills its reserve, which would take
    /// them. Always for a kept connection (there are few: they last); for
    /// one of a slow request's (`/wait`, profiles) only when the front
    /// found descriptors short in the last [`SHORT_MEMORY`], so that
    /// `/wait` clients do not hold up accepting otherwise.
    pub(super) fn connect_upstream(&mut self, path: &Path, kept: bool) -> io::Result<UnixStream> {
        let now = Instant::now();
        let careful = kept
            || self
                .short_at
                .is_some_and(|t| now.saturating_duration_since(t) < SHORT_MEMORY);
        if careful {
            self.reserve.release(PIPE_FDS);
        }
        let stream = self.pool.connect(path).inspect_err(|e| {
            if out_of_descriptors(e) {
                self.short_at = Some(now);
            }
        })?;
        if careful {
            self.upstream_accepting = Some(now + ACCEPT_GRACE);
        }
        Ok(stream)
    }

    /// Until when tiny_http may still be accepting a connection the front
    /// made ([`Front::connect_upstream`]); None: it is not.
    pub(super) fn upstream_accepting(&self, now: Instant) -> Option<Instant> {
        self.upstream_accepting.filter(|&t| t > now)
    }
}

/// Kept connections at most: below tiny_http 0.12's `MIN_THREADS` (4).
pub(super) const MAX_KEPT: usize = 3;

/// Where a response from tiny_http ends.
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    /// The head is not complete yet.
    Partial,
    /// The response is `total` bytes, of which its head (through the
    /// blank line) is `head`.
    Length { head: usize, total: usize },
    /// Delimited by the connection's close (no `Content-Length`, chunked,
    /// or a head the front cannot read: `head` None): the connection is not
    /// reused.
    UntilClose { head: Option<usize> },
}

/// Frames a response to a request (`head_method`: a HEAD, whose response
/// has no body whatever its `Content-Length` says; RFC 9112 §6.3). This is
/// the one parse of a response head: the head length it finds is carried
/// with the response ([`Relayed`]) to where its `Connection` is set.
pub(super) fn framing(resp: &[u8], head_method: bool) -> Framing {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(resp) {
        Ok(httparse::Status::Partial) => return Framing::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Framing::UntilClose { head: None },
    };
    let until_close = Framing::UntilClose { head: Some(head) };
    let code = r.code.unwrap_or(0);
    if head_method || code == 204 || code == 304 {
        return Framing::Length { head, total: head };
    }
    if (100..200).contains(&code) {
        return until_close;
    }
    let mut length = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return until_close;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match (length, n) {
                (_, None) => return until_close,
                (Some(a), Some(b)) if a != b => return until_close,
                (_, n) => length = n,
            }
        }
    }
    length.map_or(until_close, |n| Framing::Length {
        head,
        total: head + n,
    })
}

/// A whole response for a client: relayed from tiny_http, or the front's
/// own.
#[derive(Debug, Default)]
pub(super) struct Relayed {
    /// Head and body; empty: tiny_http closed the connection without one.
    pub bytes: Vec<u8>,
    /// Its head's length, through the blank line (None: no head the front
    /// could read).
    pub head: Option<usize>,
}

impl Relayed {
    /// The response with `Connection: close` added to its head, when the
    /// connection closes after it (RFC 9112 §9.6); else as it is. No
    /// response that comes here has a `Connection` header of its own: the
    /// serving loop's are made by [`crate::diag::response::Response::wire`],
    /// which leaves it out; tiny_http 0.12 writes one only for an upgrade,
    /// which tbot never asks for; and the front's own 301
    /// ([`crate::diag::request_head::Parsed::Answer`]) has none. A response whose
    /// head could not be read goes as it is.
    pub fn closing(self, close: bool) -> Vec<u8> {
        let mut bytes = self.bytes;
        if let (true, Some(head)) = (close, self.head) {
            // A head that ends in bare LFs is left alone.
            if head <= bytes.len() && bytes[..head].ends_with(b"\r\n\r\n") {
                let at = head - 2;
                bytes.splice(at..at, b"Connection: close\r\n".iter().copied());
            }
        }
        bytes
    }
}

impl Front {
    /// A `Backend` connection's tiny_http socket is ready: send the head,
    /// or read the response. Returns whether to keep the client.
    pub(super) fn step_backend(&mut self, i: usize, now: Instant) -> bool {
        let c = &mut self.conns[i];
        let State::Backend {
            up,
            out,
            sent,
            resp,
            ..
        } = &mut c.state
        else {
            return true;
        };
        if *sent < out.len() {
            return match (&*up).write(&out[*sent..]) {
                Ok(n) => {
                    *sent += n;
                    true
                }
                Err(e) if again(&e) => true,
                Err(_) => false,
            };
        }
        let mut chunk = [0u8; 16 * 1024];
        match (&*up).read(&mut chunk) {
            Ok(0) => {
                self.finish(i, now);
                self.step(i, now)
            }
            Ok(n) if resp.len() + n > self.limits.max_response_bytes => {
                log::warn(
                    "diagnostics front: response too large; dropped",
                    &[("peer", &c.peer)],
                );
                false
            }
            Ok(n) => {
                resp.extend_from_slice(&chunk[..n]);
                if self.framed(i, now) {
                    // The client is most likely writable: answer now rather
                    // than after one more poll.
                    return self.step(i, now);
                }
                true
            }
            Err(e) if again(&e) => true,
            Err(_) => false,
        }
    }

    /// Bytes of a response arrived: if it is whole, relay it (true).
    fn framed(&mut self, i: usize, now: Instant) -> bool {
        let State::Backend {
            resp,
            resp_head,
            head_method,
            ..
        } = &mut self.conns[i].state
        else {
            return false;
        };
        match framing(resp, *head_method) {
            Framing::Length { head, total } if resp.len() >= total => {
                // Anything after the one response asked for is dropped.
                resp.truncate(total);
                *resp_head = Some(head);
                self.finish(i, now);
                true
            }
            Framing::Length { head, .. } => {
                // Kept for a body that tiny_http cuts short with a close.
                *resp_head = Some(head);
                false
            }
            Framing::UntilClose { head } => {
                *resp_head = head;
                false
            }
            Framing::Partial => false,
        }
    }

    /// Writes what it can of the request head at once (the socket is most
    /// likely writable: this saves a poll round). Errors are left for the
    /// poll to report to `step_backend`.
    pub(super) fn send_head_now(&mut self, i: usize) {
        if let State::Backend { up, out, sent, .. } = &mut self.conns[i].state {
            if let Ok(n) = (&*up).write(&out[*sent..]) {
                *sent += n;
            }
        }
    }

    /// A `Backend` response is complete (or tiny_http closed the
    /// connection): relay it.
    fn finish(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let State::Backend {
            resp,
            resp_head,
            keep_alive,
            ..
        } = std::mem::replace(&mut c.state, State::Linger { drained: 0 })
        else {
            return;
        };
        let resp = Relayed {
            bytes: resp,
            head: resp_head,
        };
        self.answer(i, resp, keep_alive, now);
    }

    /// Client `i`'s response `resp` came (empty: tiny_http closed the
    /// connection without one); `keep_alive` as in [`super::Request`].
    /// The answer goes out next.
    pub(super) fn answer(
        &mut self,
        i: usize,
        resp: Relayed,
        keep_alive: Option<Vec<u8>>,
        now: Instant,
    ) {
        let c = &mut self.conns[i];
        let (out, then) = if resp.bytes.is_empty() {
            // tiny_http dropped the connection (its accept thread died with
            // it): say so, not just close.
            let out = simple_response(
                502,
                "the diagnostics service closed the connection without answering",
            );
            (out, Then::Close)
        } else if let Some(next) = keep_alive.filter(|next| !c.half_closed || !next.is_empty()) {
            // The client's connection stays open. (One that has half-closed
            // still gets answers to the requests it sent before.)
            (resp.closing(false), Then::KeepAlive(next))
        } else {
            // The client's connection closes after this answer: say so
            // (RFC 9112 §9.6).
            (resp.closing(true), Then::Close)
        };
        c.state = State::Reply { out, sent: 0, then };
        c.deadline = now + self.limits.write_timeout;
    }

    pub(super) fn backend_path(&self) -> PathBuf {
        self.backend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_by_content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
        assert_eq!(framing(&r[..10], false), Framing::Partial);
        let head = r.len() - 2;
        let whole = Framing::Length {
            head,
            total: r.len(),
        };
        assert_eq!(framing(&r[..r.len() - 1], false), whole);
        assert_eq!(framing(r, false), whole);
        assert_eq!(
            framing(r, true),
            Framing::Length { head, total: head },
            "HEAD"
        );
    }

    /// The head length that framing found is where `Connection: close`
    /// goes: the head is not read again.
    #[test]
    fn connection_close_goes_where_framing_found_the_head_end() {
        let relayed = |r: &[u8]| match framing(r, false) {
            Framing::Length { head, .. } | Framing::UntilClose { head: Some(head) } => Relayed {
                bytes: r.to_vec(),
                head: Some(head),
            },
            _ => Relayed {
                bytes: r.to_vec(),
                head: None,
            },
        };
        let r = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nOK";
        assert_eq!(relayed(r).closing(false), r);
        assert_eq!(
            relayed(r).closing(true),
            b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n";
        assert!(String::from_utf8(relayed(chunked).closing(true))
            .unwrap()
            .starts_with(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n"
            ));
        for left_alone in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX: y\n\n",
            b"garbage",
        ] {
            assert_eq!(
                relayed(left_alone).closing(true),
                left_alone,
                "{left_alone:?}"
            );
        }
    }

    #[test]
    fn kept_connections_stay_under_the_cap() {
        let mut pool = Pool::new(100);
        assert_eq!(pool.max_kept, MAX_KEPT, "never above tiny_http's minimum");
        let out: Vec<Permit> = (0..MAX_KEPT + 2).filter_map(|_| pool.permit()).collect();
        assert_eq!(out.len(), MAX_KEPT, "the rest are for one request");
        drop(out);
        assert_eq!(pool.live.load(Ordering::Relaxed), 0, "given back on drop");
        assert!(pool.permit().is_some());
        assert!(!Pool::new(0).keeps());
    }

    #[test]
    fn a_new_socket_is_a_new_generation() {
        let mut pool = Pool::new(3);
        let a = pool.follow(Path::new("/a"));
        assert_eq!(pool.follow(Path::new("/a")), a);
        assert_ne!(pool.follow(Path::new("/b")), a);
    }

    #[test]
    fn anything_else_until_close() {
        for r in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                matches!(framing(r, false), Framing::UntilClose { .. }),
                "{r:?}"
            );
        }
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Framing::Length {
                head: 27,
                total: 27
            }
        );
    }
}
