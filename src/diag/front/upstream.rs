//! The front's connections to tiny_http, kept open and reused.
//!
//! Connecting a fresh Unix socket per request cost a connect, tiny_http's
//! accept and its hand-off of the connection to a pool worker, two clones of
//! the stream, and a close on both sides (issue 11, item 4). Instead, a
//! connection whose response was framed by its `Content-Length` goes back to
//! a small pool of idle ones, and the next request takes it: tiny_http's
//! worker on that connection is already waiting for the next head.
//!
//! At most [`MAX_KEPT`] kept connections exist at once, fewer than
//! tiny_http's minimum of 4 pool threads (util/task_pool.rs, which never
//! lets the pool shrink below them). Each kept connection holds one of those
//! threads for good, and tiny_http's `TaskPool::spawn` counts a worker that
//! was notified but has not yet run as idle: when new connections arrive
//! faster than workers wake, one can be queued with no thread to run it
//! until some worker finishes a connection. With a thread never held by a
//! kept connection, that worker always comes back. Requests that find every
//! kept connection busy wait in the front (`State::Queued`) for one to come
//! back: tiny_http's one serving loop answers one request at a time anyway,
//! and a connection of their own cost a connect, an accept and, in a burst,
//! a new tiny_http thread each. Slow requests (`/wait`, profiles) go on a
//! connection of their own that closes after the answer, so that they
//! never hold a kept one.
//!
//! One request at a time per connection (no pipelining): a parked `/wait` or
//! a profile on one connection cannot hold up the answers on another, and
//! tiny_http's writer for a request never waits for an earlier one.
//!
//! Idle connections are polled for readability: tiny_http sends nothing
//! unasked, so anything there (its end closing, stray bytes) drops the
//! connection. A request on a reused connection that comes back with nothing
//! at all (tiny_http closed it just before) is sent again once on a fresh
//! one; the endpoints are GET and HEAD, which are safe to repeat.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustix::event::epoll::EventFlags;

use super::{again, Front, State, Then};
use crate::diag::head::{set_connection_header, simple_response};
use crate::log;

/// Kept connections to one tiny_http socket.
pub(super) struct Pool {
    /// The socket the idle connections lead to.
    path: PathBuf,
    /// Counts changes of `path`: a connection handed out under an older
    /// generation leads to a tiny_http that was replaced, and is not kept.
    generation: u64,
    idle: Vec<(UnixStream, Kept)>,
    /// Kept connections alive (idle or carrying a request).
    live: Arc<AtomicUsize>,
    max_kept: usize,
}

/// One kept connection's place under the cap; given back when dropped.
/// (An atomic only so that the front can move to its thread: it is the
/// only one to touch it.)
pub(super) struct Kept(Arc<AtomicUsize>);

impl Drop for Kept {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection from the pool: `reused` if it served a request before;
/// `kept` if it may serve the next one (else it is for this request only
/// and the head must say `Connection: close`); `generation` for
/// [`Pool::put`].
pub(super) struct Taken {
    pub stream: UnixStream,
    pub reused: bool,
    pub kept: Option<Kept>,
    pub generation: u64,
}

impl Pool {
    /// `max_kept`: kept connections alive at once, at most
    /// [`MAX_KEPT`] whatever is asked.
    pub(super) fn new(max_kept: usize) -> Pool {
        Pool {
            path: PathBuf::new(),
            generation: 0,
            idle: Vec::new(),
            live: Arc::new(AtomicUsize::new(0)),
            max_kept: max_kept.min(MAX_KEPT),
        }
    }

    /// Follows tiny_http to `path`: idle connections to an older socket (it
    /// was rebuilt) are closed. Returns the current generation.
    pub(super) fn follow(&mut self, path: &Path) -> u64 {
        if self.path != path {
            self.idle.clear();
            self.path = path.to_path_buf();
            self.generation += 1;
        }
        self.generation
    }

    /// An idle kept connection to `path`, else a new one: kept if there is
    /// room under the cap and the request is not `slow` (a `/wait` or a
    /// profile would hold a kept connection for minutes), else for this
    /// request only.
    pub(super) fn take(&mut self, path: &Path, slow: bool) -> io::Result<Taken> {
        let generation = self.follow(path);
        if !slow {
            if let Some((stream, kept)) = self.idle.pop() {
                return Ok(Taken {
                    stream,
                    reused: true,
                    kept: Some(kept),
                    generation,
                });
            }
        }
        let stream = UnixStream::connect(path)?;
        stream.set_nonblocking(true)?;
        let kept = (!slow && self.live.load(Ordering::Relaxed) < self.max_kept).then(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            Kept(self.live.clone())
        });
        Ok(Taken {
            stream,
            reused: false,
            kept,
            generation,
        })
    }

    /// Whether a request that is not slow can have a kept connection to
    /// `path` now: an idle one, or room under the cap for a new one. (With
    /// no kept connections allowed, every request has one of its own.)
    pub(super) fn has_room(&mut self, path: &Path) -> bool {
        self.follow(path);
        self.max_kept == 0
            || !self.idle.is_empty()
            || self.live.load(Ordering::Relaxed) < self.max_kept
    }

    /// Keeps a connection whose last response was read whole, if it leads
    /// to the current tiny_http.
    pub(super) fn put(&mut self, generation: u64, s: UnixStream, kept: Kept) {
        if generation == self.generation {
            self.idle.push((s, kept));
        }
    }

    /// Drops the idle connections for which `reported` (the last wait
    /// reported something: tiny_http sends nothing unasked).
    pub(super) fn prune(&mut self, reported: impl Fn(RawFd) -> bool) {
        self.idle.retain(|(s, _)| !reported(s.as_raw_fd()));
    }
}

/// Kept connections at most: below tiny_http 0.12's `MIN_THREADS` (4).
pub(super) const MAX_KEPT: usize = 3;

/// Where a response from tiny_http ends.
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    /// The head is not complete yet.
    Partial,
    /// The response is this many bytes (head and body).
    Length(usize),
    /// Delimited by the connection's close (no `Content-Length`, chunked,
    /// or a head the front cannot read): the connection is not reused.
    UntilClose,
}

/// Frames a response to a request (`head_request`: a HEAD, whose response
/// has no body whatever its `Content-Length` says; RFC 9112 §6.3).
pub(super) fn framing(resp: &[u8], head_request: bool) -> Framing {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(resp) {
        Ok(httparse::Status::Partial) => return Framing::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Framing::UntilClose,
    };
    let code = r.code.unwrap_or(0);
    if head_request || code == 204 || code == 304 {
        return Framing::Length(len);
    }
    if (100..200).contains(&code) {
        return Framing::UntilClose;
    }
    let mut length = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Framing::UntilClose;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match (length, n) {
                (_, None) => return Framing::UntilClose,
                (Some(a), Some(b)) if a != b => return Framing::UntilClose,
                (_, n) => length = n,
            }
        }
    }
    length.map_or(Framing::UntilClose, |n| Framing::Length(len + n))
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
            reused,
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
                Err(_) if *reused => self.resend(i),
                Err(_) => false,
            };
        }
        let mut chunk = [0u8; 16 * 1024];
        match (&*up).read(&mut chunk) {
            Ok(0) if *reused && resp.is_empty() => self.resend(i),
            Ok(0) => {
                self.finish(i, now, None);
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
            Err(e) if *reused && resp.is_empty() && e.kind() != ErrorKind::TimedOut => {
                self.resend(i)
            }
            Err(_) => false,
        }
    }

    /// Bytes of a response arrived: if it is whole, relay it (true) and keep
    /// the connection to tiny_http for the next request.
    fn framed(&mut self, i: usize, now: Instant) -> bool {
        let State::Backend {
            resp, head_request, ..
        } = &mut self.conns[i].state
        else {
            return false;
        };
        if let Framing::Length(n) = framing(resp, *head_request) {
            if resp.len() >= n {
                // More than the one response asked for: relay that one and
                // do not reuse the connection.
                let reuse = resp.len() == n;
                resp.truncate(n);
                self.finish(i, now, Some(reuse));
                return true;
            }
        }
        false
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

    /// The response is complete (`reuse`: framed, and the connection may
    /// serve the next request; None: tiny_http closed it). Relays it.
    fn finish(&mut self, i: usize, now: Instant, reuse: Option<bool>) {
        let c = &mut self.conns[i];
        let State::Backend {
            up,
            up_ev,
            resp,
            keep_alive,
            generation,
            kept,
            ..
        } = std::mem::replace(&mut c.state, State::Linger { drained: 0 })
        else {
            return;
        };
        // Idle connections in the pool are registered readable.
        if let (Some(true), Some(kept), true) = (reuse, kept, up_ev == EventFlags::IN) {
            self.pool.put(generation, up, kept);
        }
        let mut out = resp;
        let mut then = Then::Close;
        if out.is_empty() {
            // tiny_http dropped the connection (its accept thread died with
            // it): say so, not just close.
            out = simple_response(
                502,
                "the diagnostics service closed the connection without answering",
            );
        } else if let Some(next) = keep_alive.filter(|next| !c.half_closed || !next.is_empty()) {
            // The client's connection stays open. (One that has half-closed
            // still gets answers to the requests it sent before.)
            out = set_connection_header(out, false);
            then = Then::KeepAlive(next);
        } else {
            // The client's connection closes after this answer: say so
            // (RFC 9112 §9.6).
            out = set_connection_header(out, true);
        }
        c.state = State::Reply { out, sent: 0, then };
        c.deadline = now + self.limits.write_timeout;
    }

    /// A reused connection turned out closed before any answer: send the
    /// request again on a fresh one. Returns whether to keep the client.
    fn resend(&mut self, i: usize) -> bool {
        let path = self.backend_path();
        let current = self.pool.follow(&path);
        let fresh = UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s));
        let State::Backend {
            up,
            up_ev,
            sent,
            reused,
            generation,
            ..
        } = &mut self.conns[i].state
        else {
            return true;
        };
        match fresh {
            Ok(s) => {
                // In the same place under the cap as the one it replaces.
                *up = s;
                // A new socket: not in the epoll set yet.
                *up_ev = EventFlags::empty();
                *sent = 0;
                *reused = false;
                *generation = current;
                self.send_head_now(i);
                true
            }
            Err(e) => {
                if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) {
                    (self.backend_lost)(&path);
                }
                false
            }
        }
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
        assert_eq!(framing(&r[..r.len() - 1], false), Framing::Length(r.len()));
        assert_eq!(framing(r, false), Framing::Length(r.len()));
        assert_eq!(framing(r, true), Framing::Length(r.len() - 2), "HEAD");
    }

    #[test]
    fn connections_to_a_replaced_socket_are_not_kept() {
        let dir = std::env::temp_dir().join(format!("tbot-pool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
        let _la = std::os::unix::net::UnixListener::bind(&a).unwrap();
        let _lb = std::os::unix::net::UnixListener::bind(&b).unwrap();
        let mut pool = Pool::new(2);
        let put = |pool: &mut Pool, t: Taken| pool.put(t.generation, t.stream, t.kept.unwrap());
        let first = pool.take(&a, false).unwrap();
        assert!(!first.reused);
        put(&mut pool, first);
        let again = pool.take(&a, false).unwrap();
        assert!(again.reused, "kept and reused");
        // tiny_http was rebuilt on b while `again` was out: not kept.
        let other = pool.take(&b, false).unwrap();
        assert!(!other.reused);
        put(&mut pool, again);
        put(&mut pool, other);
        assert_eq!(pool.idle.len(), 1);
        assert!(pool.take(&b, false).unwrap().reused);
        // And idle ones to a are closed when b takes over.
        let x = pool.take(&a, false).unwrap();
        put(&mut pool, x);
        assert!(!pool.take(&b, false).unwrap().reused);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kept_connections_stay_under_the_cap() {
        let dir = std::env::temp_dir().join(format!("tbot-pool-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.sock");
        let _la = std::os::unix::net::UnixListener::bind(&a).unwrap();
        let mut pool = Pool::new(100);
        assert_eq!(pool.max_kept, MAX_KEPT, "never above tiny_http's minimum");
        let out: Vec<Taken> = (0..MAX_KEPT + 2)
            .map(|_| pool.take(&a, false).unwrap())
            .collect();
        let kept = out.iter().filter(|t| t.kept.is_some()).count();
        assert_eq!(kept, MAX_KEPT, "the rest are for one request");
        assert!(
            pool.take(&a, true).unwrap().kept.is_none(),
            "slow: not kept"
        );
        drop(out);
        assert_eq!(pool.live.load(Ordering::Relaxed), 0, "given back on drop");
        assert!(pool.take(&a, false).unwrap().kept.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
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
            assert_eq!(framing(r, false), Framing::UntilClose, "{r:?}");
        }
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Framing::Length(27)
        );
    }
}
