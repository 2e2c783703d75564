//! The local debug socket, the front's second listener (Teleport's agent
//! debug service, RFD 0167): who may use it, and the two requests the
//! front answers itself for its peers.
//!
//! - Access: the socket file is mode 0600 (`crate::diag::local`), and
//!   every accepted peer's credentials (`SO_PEERCRED`, the connecting
//!   process's effective user at connect(2)) are checked: tbot's own
//!   effective user and root are served, anyone else gets a 403 and a
//!   warning in the log (at most one a second), and the connection is
//!   closed. The mode keeps others out of a socket in a directory they can
//!   reach; the check holds when the mode or a directory's ACL lets them in.
//! - Served peers are ordinary connections of the front (the same cap,
//!   limits and timeouts); their forwarded requests are marked `local`
//!   (`routes::MARK_HEADER`),
//!   so the endpoints serve `/debug/pprof/` to them in any mode.
//! - `GET`/`PUT /log-level` and `GET /debug/logs` are answered here
//!   ([`crate::diag::request_head::LocalAsk`]): the level is a global of
//!   [`crate::log`], and a log stream is an answer without end, handed to
//!   [`crate::log::follow`], which writes it from the threads that log.

use std::io::{self, ErrorKind, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::tls::Client;
use super::{Front, State, Then};
use crate::diag::request_head::{simple_response, LocalAsk, Peer};
use crate::log::{self, once_a_second};

/// A socket as accept(2) gives it, before it becomes a connection's
/// [`Client`]: TCP (TLS or not, as the web configuration says), or the
/// local debug socket (plain).
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(super) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a peer whose effective user is `uid` may use the debug socket:
/// root, or the user tbot runs as.
pub fn allowed(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

impl Front {
    /// One peer from the local debug socket: one [`allowed`] (None: it was
    /// refused, or is gone already, or the kernel cannot say who it is).
    pub(super) fn accept_local_peer(&mut self) -> io::Result<Option<(Stream, Peer)>> {
        let Some(local) = &self.local else {
            return Err(ErrorKind::WouldBlock.into());
        };
        let (stream, _) = local.accept()?;
        let Ok(cred) = rustix::net::sockopt::socket_peercred(&stream) else {
            return Ok(None);
        };
        let (uid, pid) = (cred.uid.as_raw(), cred.pid.as_raw_nonzero().get());
        if !allowed(uid, rustix::process::geteuid().as_raw()) {
            self.refuse_local(stream, uid, pid);
            return Ok(None);
        }
        Ok(Some((Stream::Unix(stream), Peer::Local { uid, pid })))
    }

    /// A peer of another user: a 403, then the lingering close (closing a
    /// Unix socket with its request unread would reset it before it read
    /// the answer); one warning a second at most. It holds no slot.
    fn refuse_local(&mut self, stream: UnixStream, uid: u32, pid: i32) {
        let why = "the debug socket serves tbot's own user and root only";
        let peer = Peer::Local { uid, pid };
        self.trim_lingering();
        self.refuse(Stream::Unix(stream), peer, Instant::now(), (403, why));
        if once_a_second(&mut self.last_local_refusal) {
            log::warn(
                "debug socket: refused a peer of another user",
                &[("uid", &uid), ("pid", &pid)],
            );
        }
    }

    /// Answers what a local peer asked of the front itself (see the
    /// module's doc); `len` bytes of its buffer were the request.
    pub(super) fn answer_local(
        &mut self,
        i: usize,
        now: Instant,
        (ask, keep_alive, len): (LocalAsk, bool, usize),
    ) {
        let deadline = now + self.limits.write_timeout;
        let c = &mut self.conns[i];
        let State::Head { buf } = &c.state else {
            return;
        };
        let next = keep_alive.then(|| buf[len..].to_vec());
        let (status, body) = match ask {
            LocalAsk::GetLevel => (200, log::level_name(log::level())),
            LocalAsk::SetLevel(name) => match log::parse_level(&name) {
                Some(level) => {
                    let from = log::level_name(log::level());
                    log::set_level(level);
                    log::info(
                        "log level changed at runtime",
                        &[
                            ("from", &from),
                            ("to", &log::level_name(level)),
                            ("by", &c.peer),
                        ],
                    );
                    (200, log::level_name(level))
                }
                None => (400, "unknown level: expected debug, info, warn or error"),
            },
            LocalAsk::Follow(query) => return self.follow(i, &query),
        };
        let out = crate::diag::request_head::text_response(status, body, next.is_none());
        let then = next.map_or(Then::Close, Then::KeepAlive);
        self.conns[i].reply(out, then, deadline);
    }

    /// `GET /debug/logs?level=L`: the connection goes to
    /// [`log::follow`], which writes the answer's head and then every log
    /// line at `L` or above (default: the level lines are written at) until
    /// the peer goes, stops reading, or tbot stops. The front lets go of its
    /// copy of the socket (without a shutdown, which would end the stream).
    fn follow(&mut self, i: usize, query: &str) {
        let level =
            crate::diag::routes::query_param(query, "level").map(|l| log::parse_level(l).ok_or(l));
        let refusal = match (level, &self.conns[i].client) {
            (Some(Err(_)), _) => Some((400, "unknown level: expected debug, info, warn or error")),
            (level, Client::Local(s)) => {
                let level = level.and_then(Result::ok).unwrap_or_else(log::level);
                match s.try_clone() {
                    Ok(s) => log::follow::subscribe(s, level).err().map(|why| (503, why)),
                    Err(_) => Some((503, "out of file descriptors")),
                }
            }
            (_, _) => Some((404, "not found")),
        };
        let now = Instant::now();
        let c = &mut self.conns[i];
        match refusal {
            Some((status, why)) => {
                c.reply(
                    simple_response(status, why),
                    Then::Close,
                    now + self.limits.write_timeout,
                );
            }
            None => {
                // Removed at its (past) deadline with nothing owed
                // ([`Front::expire`] of an empty head), its descriptor
                // closed; the stream lives on in the copy.
                c.state = State::Head { buf: Vec::new() };
                c.deadline = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_and_the_own_user_only() {
        assert!(super::allowed(0, 108));
        assert!(super::allowed(108, 108));
        assert!(!super::allowed(1000, 108));
        assert!(super::allowed(0, 0));
        assert!(!super::allowed(1, 0));
    }
}
