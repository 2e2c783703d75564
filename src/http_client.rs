//! The one HTTP/1.1 client of tbot's own commands: `tbot wait` over TCP,
//! `tbot status` and `tbot debug` over the debug socket. Each sends one
//! request with `Connection: close`; [`send`] writes it and reads the
//! answer's head (httparse, as the front frames tiny_http's answers), and
//! the caller reads the body to the connection's close (RFC 9112 §6.3: the
//! peer, tbot's front, closes after an answer to such a request).

use std::io::{self, ErrorKind, Read, Write};

/// The longest answer head read, in bytes (the front's are a few hundred).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// An answer's head, read.
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The bytes read past the head: the start of the body.
    pub body_start: Vec<u8>,
}

/// Writes `request` (its head and any body) to `s` and reads the answer's
/// head. A peer that answers and closes before the request is all written
/// (the debug socket's 403 to a stranger) is still heard: the write's
/// error is returned only when no answer came.
///
/// Errors: the write's or the read's (a timeout set on `s` shows as
/// `WouldBlock`/`TimedOut`); `UnexpectedEof` when the peer closed before
/// a whole head; `InvalidData` for bytes that are not an HTTP/1.x answer
/// head or a head over [`MAX_HEAD_BYTES`].
pub fn send<S: Read + Write>(s: &mut S, request: &[u8]) -> io::Result<Head> {
    let sent = s.write_all(request).and_then(|()| s.flush());
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&got) {
            Ok(httparse::Status::Complete(len)) => {
                let status = r.code.unwrap_or(0);
                return Ok(Head {
                    status,
                    body_start: got.split_off(len),
                });
            }
            Ok(httparse::Status::Partial) if got.len() < MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) => return Err(invalid("answer head too large")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("answer head has too many header lines"))
            }
            Err(_) => return Err(invalid("not an HTTP answer")),
        }
        // Never past the bound: a head that ends beyond it is refused.
        let room = (MAX_HEAD_BYTES - got.len()).min(chunk.len());
        match s.read(&mut chunk[..room]) {
            Ok(0) => {
                return Err(sent.err().unwrap_or_else(|| {
                    io::Error::new(ErrorKind::UnexpectedEof, "closed before an answer")
                }))
            }
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(sent.err().unwrap_or(e)),
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer: what it answers, what it got.
    struct Peer {
        answer: io::Cursor<Vec<u8>>,
        got: Vec<u8>,
        refuse_writes: bool,
        /// Bytes a read gives at most.
        chunk: usize,
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk);
            self.answer.read(&mut buf[..n])
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.refuse_writes {
                return Err(io::Error::new(ErrorKind::BrokenPipe, "closed"));
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn peer(answer: &[u8], refuse_writes: bool) -> Peer {
        Peer {
            answer: io::Cursor::new(answer.to_vec()),
            got: Vec::new(),
            refuse_writes,
            // One byte a read: heads split anywhere.
            chunk: 1,
        }
    }

    #[test]
    fn reads_the_status_and_hands_on_the_body_start() {
        let mut p = peer(
            b"HTTP/1.1 503 Service Unavailable\r\nX: y\r\n\r\n{\"a\"",
            false,
        );
        let head = send(&mut p, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(head.body_start, b"");
        assert_eq!(p.got, b"GET / HTTP/1.1\r\n\r\n");
        let mut rest = head.body_start;
        p.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"{\"a\"");
    }

    #[test]
    fn an_answer_after_a_refused_write_is_still_heard() {
        let mut p = peer(b"HTTP/1.1 403 Forbidden\r\n\r\nno\n", true);
        assert_eq!(send(&mut p, b"GET / HTTP/1.1\r\n\r\n").unwrap().status, 403);
        // No answer: the write's error.
        let e = send(&mut peer(b"", true), b"x").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    fn garbage_a_short_head_and_a_huge_one_are_errors() {
        let kind = |answer: &[u8]| send(&mut peer(answer, false), b"x").err().unwrap().kind();
        assert_eq!(kind(b"SSH-2.0-OpenSSH\r\n"), ErrorKind::InvalidData);
        assert_eq!(kind(b"HTTP/1.1 200 OK\r\n"), ErrorKind::UnexpectedEof);
        let huge = [&b"HTTP/1.1 200 OK\r\nX: "[..], &vec![b'a'; MAX_HEAD_BYTES]].concat();
        assert_eq!(kind(&huge), ErrorKind::InvalidData);
        // One that ends just past the bound, read in big chunks, too.
        let over = MAX_HEAD_BYTES - b"HTTP/1.1 200 OK\r\nX: \r\n\r\n".len() + 1;
        let just = [
            &b"HTTP/1.1 200 OK\r\nX: "[..],
            &vec![b'a'; over],
            b"\r\n\r\n",
        ]
        .concat();
        let mut p = peer(&just, false);
        p.chunk = 16 * 1024;
        assert_eq!(
            send(&mut p, b"x").err().map(|e| e.kind()),
            Some(ErrorKind::InvalidData)
        );
    }
}
