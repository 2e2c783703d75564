//! A client's request head, judged: pure functions from bytes to a decision
//! (refuse, redirect, or forward a clean copy to tiny_http). No I/O; the
//! front ([`super::front`]) owns the sockets. This is the one parse of a
//! request head: what the front's other parts (the probe room, the
//! connection it takes, basic auth) and the router need is decided here
//! and handed on, never read again from the client's bytes. tiny_http gets
//! a canonical head that it cannot misread: `METHOD TARGET HTTP/1.1` (the
//! clean origin-form path and query, visible ASCII), the decision in
//! [`routes::MARK_HEADER`], the peer in `X-Tbot-Peer` while debug lines are
//! written, and no client header.
//!
//! HTTP behaviour follows RFC 9112/9110 and, where they leave room, Go's
//! net/http (tbot's upstream stack):
//! - an HTTP/1.1 request without a Host header, or any request with more
//!   than one, is 400 (RFC 9112 §3.2; Go: "missing required Host header",
//!   "too many Host headers");
//! - a request target longer than [`MAX_TARGET_BYTES`] is 414 URI Too Long
//!   (RFC 9110 §15.5.15; RFC 9112 §3 asks for at least 8000 octets);
//! - a path that is not clean (`//readyz`, `/./readyz`, `/a/../readyz`) is a
//!   301 to the clean path, query kept, as Go's ServeMux answers
//!   (`path.Clean`, trailing slash kept);
//! - every answer after which the connection closes says `Connection: close`
//!   (RFC 9112 §9.6).

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::diag::endpoints::Answered;
use crate::diag::routes;

/// The longest request target (path and query, or absolute-form URI), in
/// bytes. Past it: 414.
pub const MAX_TARGET_BYTES: usize = 8192;
/// The longest request head (request line and headers), in bytes. Past it: 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header lines. Past it: 431.
pub const MAX_HEADERS: usize = 64;

/// The limits a head is judged by (the defaults are the constants above).
#[derive(Clone, Debug)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_target_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_target_bytes: MAX_TARGET_BYTES,
        }
    }
}

pub enum Parsed {
    Partial,
    Refuse(u16, &'static str),
    /// Answered by the front itself (a 301 to the clean path), complete
    /// but for the `Connection` header, which the front sets.
    Answer {
        resp: Vec<u8>,
        /// Bytes of `resp` its head takes, through the blank line.
        head: usize,
        /// HTTP/1.1 without `Connection: close`.
        keep_alive: bool,
        /// Bytes of the buffer the head took.
        len: usize,
    },
    /// Asked of the front itself by a local debug socket peer
    /// ([`LocalAsk`]).
    Local {
        ask: LocalAsk,
        /// HTTP/1.1 without `Connection: close`.
        keep_alive: bool,
        /// Bytes of the buffer the request (head and body) took.
        len: usize,
    },
    Forward {
        /// The canonical head to send to tiny_http.
        head: Vec<u8>,
        /// HTTP/1.1 without `Connection: close`.
        keep_alive: bool,
        /// Bytes of the buffer the head took.
        len: usize,
        /// An endpoint that may take minutes (`/wait`, CPU profiles).
        slow: bool,
        /// The serving loop answers it as it takes it
        /// ([`crate::diag::endpoints::Answered`]).
        at_once: bool,
        /// A probe's request, served in the front's probe room
        /// ([`crate::diag::endpoints::Endpoint::probe`]).
        probe: bool,
        /// Where the path (clean, no query) is in `head`: what basic auth's
        /// open paths are matched against.
        path: std::ops::Range<usize>,
        /// The client's `Authorization` value, if it sent one.
        authorization: Option<Vec<u8>>,
    },
}

impl Parsed {
    /// The same request, with its connection to close after the answer.
    pub fn closing(mut self) -> Parsed {
        if let Parsed::Answer { keep_alive, .. }
        | Parsed::Local { keep_alive, .. }
        | Parsed::Forward { keep_alive, .. } = &mut self
        {
            *keep_alive = false;
        }
        self
    }
}

/// Who sent a request: a TCP client, or a peer on the local debug socket
/// (its credentials from `SO_PEERCRED`, already judged by the front).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Local { uid: u32, pid: i32 },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Local { uid, pid } => write!(f, "debug.sock(uid={uid},pid={pid})"),
        }
    }
}

impl crate::log::Field for Peer {}

/// What a local debug socket peer asks of the front itself, which owns
/// the two things tiny_http cannot carry: a request body and an answer
/// without end. Over TCP these paths are 404s like any unknown one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAsk {
    /// `GET /log-level`: the level lines are written at.
    GetLevel,
    /// `PUT /log-level` with the level as the body (as Teleport's agent).
    SetLevel(String),
    /// `GET /debug/logs?level=L`: follow the live log lines (the query).
    Follow(String),
}

/// The path of [`LocalAsk::GetLevel`] and [`LocalAsk::SetLevel`], as
/// Teleport's debug service names it (RFD 0167).
pub const LOG_LEVEL_PATH: &str = "/log-level";
/// The path of [`LocalAsk::Follow`].
pub const LOGS_PATH: &str = "/debug/logs";
/// The largest `PUT /log-level` body, in bytes (a level name and a newline).
const MAX_LEVEL_BODY: usize = 64;

/// Parses a request head in `buf` (bytes after it are the client's next
/// request). `limits.max_headers` is capped at [`MAX_HEADERS`].
pub fn parse_head(buf: &[u8], limits: &HeadLimits, peer: Peer) -> Parsed {
    // On the stack: 2 KiB per request from the heap cost a malloc
    // consolidation each (glibc, requests of 1 KiB and more).
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers[..limits.max_headers.min(MAX_HEADERS)]);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_target_bytes && target_len(buf) > limits.max_target_bytes {
                Parsed::Refuse(414, "request target too long")
            } else if buf.len() > limits.max_head_bytes {
                Parsed::Refuse(431, "request head too large")
            } else {
                Parsed::Partial
            }
        }
        Err(httparse::Error::TooManyHeaders) => Parsed::Refuse(431, "too many header lines"),
        Err(_)
            if buf.len() > limits.max_target_bytes && target_len(buf) > limits.max_target_bytes =>
        {
            Parsed::Refuse(414, "request target too long")
        }
        Err(_) => Parsed::Refuse(400, "malformed request"),
        Ok(httparse::Status::Complete(len)) => match peer {
            Peer::Local { .. } => {
                local(&req, buf, len).unwrap_or_else(|| complete(&req, len, limits, peer))
            }
            Peer::Tcp(_) => complete(&req, len, limits, peer),
        },
    }
}

/// A complete head, parsed.
fn complete(req: &httparse::Request, len: usize, limits: &HeadLimits, peer: Peer) -> Parsed {
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Refuse(400, "malformed request");
    };
    // Every endpoint takes GET and HEAD: any other method is refused
    // whatever its target (`OPTIONS *`, `CONNECT host:port`).
    if !matches!(method, "GET" | "HEAD") {
        return Parsed::Refuse(405, "the diagnostics endpoints take GET and HEAD");
    }
    if target.len() > limits.max_target_bytes {
        return Parsed::Refuse(414, "request target too long");
    }
    let Some(path) = origin_form(target) else {
        return Parsed::Refuse(400, "request target must be an absolute path");
    };
    // A URI is visible ASCII, other bytes percent-encoded (RFC 3986 §2;
    // RFC 9112 §3.2). httparse lets UTF-8 through, and tiny_http drops the
    // connection over a line that is not ASCII, with no answer.
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Parsed::Refuse(
            400,
            "request target must be ASCII (percent-encode other bytes)",
        );
    }
    let http11 = req.version == Some(1);
    let facts = match check_headers(req) {
        Ok(facts) => facts,
        Err(refusal) => return refusal,
    };
    let keep_alive = http11 && !facts.close;
    if facts.hosts == 0 && http11 {
        return Parsed::Refuse(400, "missing Host header (required in HTTP/1.1)");
    }
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    if let Some(mut location) = redirect_for(p) {
        if !query.is_empty() {
            location.push('?');
            location.push_str(query);
        }
        let (resp, head) = moved_permanently(&location, method == "HEAD");
        return Parsed::Answer {
            resp,
            head,
            keep_alive,
            len,
        };
    }
    let local = matches!(peer, Peer::Local { .. });
    let decided = routes::Request::decide(path, facts.accept_encoding, local);
    let mut out = String::with_capacity(path.len() + 64);
    out.push_str(method);
    out.push(' ');
    let at = out.len();
    out.push_str(path);
    out.push_str(" HTTP/1.1\r\n");
    let _ = write!(out, "{}: {}\r\n", routes::MARK_HEADER, decided.mark());
    if crate::log::debug_enabled() {
        // For the serving loop's debug line (tiny_http only sees its Unix
        // socket); not formatted when that line is not written.
        let _ = write!(out, "X-Tbot-Peer: {peer}\r\n");
    }
    // No `Connection: close`: the front keeps its connections to tiny_http
    // open and pipelines requests down them (see front/kept.rs).
    out.push_str("\r\n");
    let answered = decided.endpoint.map_or(Answered::AtOnce, |e| e.answered);
    Parsed::Forward {
        head: out.into_bytes(),
        keep_alive,
        len,
        slow: answered == Answered::Slow,
        at_once: answered == Answered::AtOnce,
        probe: decided.endpoint.is_some_and(|e| e.probe()),
        path: at..at + p.len(),
        authorization: facts.authorization.map(<[u8]>::to_vec),
    }
}

/// A local peer's request for the front itself ([`LocalAsk`]), or None
/// for one that goes the usual way. A `PUT /log-level` body is read whole
/// (at most [`MAX_LEVEL_BODY`] bytes) before it is judged: Partial until
/// it is all in `buf`.
fn local(req: &httparse::Request, buf: &[u8], len: usize) -> Option<Parsed> {
    let (method, target) = (req.method?, req.path?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != LOG_LEVEL_PATH && path != LOGS_PATH {
        return None;
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let close = header("connection").is_some_and(|v| v.split(',').any(|t| t.trim() == "close"));
    let keep_alive = req.version == Some(1) && !close;
    if header("transfer-encoding").is_some() {
        return Some(Parsed::Refuse(411, "send the level with a Content-Length"));
    }
    let body = match header("content-length").as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_LEVEL_BODY => n,
        Some(Ok(_)) => return Some(Parsed::Refuse(413, "a log level is a few bytes")),
        Some(Err(_)) => return Some(Parsed::Refuse(400, "malformed Content-Length")),
    };
    // 405 with the methods these paths do take (`Allow`, RFC 9110
    // §15.5.6); the connection closes after it.
    let not_allowed = |allow: &str| {
        let text = format!("405 method not allowed: {path} takes {allow}\n");
        let head = format!(
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nAllow: {allow}\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        Some(Parsed::Answer {
            head: head.len(),
            resp: (head + &text).into_bytes(),
            keep_alive: false,
            len,
        })
    };
    let ask = match (path, method) {
        (LOG_LEVEL_PATH, "GET") if body == 0 => LocalAsk::GetLevel,
        (LOG_LEVEL_PATH, "PUT") => {
            let Some(bytes) = buf.get(len..len + body) else {
                return Some(Parsed::Partial);
            };
            LocalAsk::SetLevel(String::from_utf8_lossy(bytes).trim().to_string())
        }
        (LOGS_PATH, "GET") if body == 0 => LocalAsk::Follow(query.to_string()),
        (LOG_LEVEL_PATH, _) => return not_allowed("GET, PUT"),
        _ => return not_allowed("GET"),
    };
    Some(Parsed::Local {
        ask,
        keep_alive,
        len: len + body,
    })
}

/// What the headers of a head say, as [`check_headers`] found them.
struct Facts<'h> {
    /// Host headers (0 or 1: more is refused).
    hosts: usize,
    /// The client asked to close (`Connection: close`).
    close: bool,
    /// The `Accept-Encoding` value (visible ASCII only), for the router's
    /// gzip decision.
    accept_encoding: Option<&'h str>,
    /// The `Authorization` value, for basic auth (`front/auth.rs`).
    authorization: Option<&'h [u8]>,
}

/// Checks the headers and takes what the front and the router need of
/// them; or the refusal (a body, a bad Content-Length, two or a malformed
/// Host).
fn check_headers<'h>(req: &httparse::Request<'_, 'h>) -> Result<Facts<'h>, Parsed> {
    let mut facts = Facts {
        hosts: 0,
        close: false,
        accept_encoding: None,
        authorization: None,
    };
    for h in req.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("content-length") {
            match std::str::from_utf8(h.value).ok().map(str::trim) {
                Some("0") => continue,
                Some(v) if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => {
                    return Err(Parsed::Refuse(413, "request bodies are not accepted"));
                }
                _ => return Err(Parsed::Refuse(400, "malformed Content-Length")),
            }
        } else if is("transfer-encoding") {
            return Err(Parsed::Refuse(413, "request bodies are not accepted"));
        } else if is("connection") {
            facts.close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if is("host") {
            facts.hosts += 1;
            if facts.hosts > 1 {
                return Err(Parsed::Refuse(400, "more than one Host header"));
            }
            if !valid_host(h.value.trim_ascii()) {
                return Err(Parsed::Refuse(400, "malformed Host header"));
            }
        } else if is("accept-encoding") && facts.accept_encoding.is_none() {
            // The first, as Go's `Header.Get`.
            facts.accept_encoding = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .map(str::trim);
        } else if is("authorization") && facts.authorization.is_none() {
            facts.authorization = Some(h.value);
        }
    }
    Ok(facts)
}

/// Length of the request target in a (possibly partial) head: the bytes
/// between the first space and the next space or line end.
fn target_len(buf: &[u8]) -> usize {
    let Some(start) = buf.iter().position(|&b| b == b' ') else {
        return 0;
    };
    let rest = &buf[start + 1..];
    rest.iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(rest.len())
}

/// A Host value (`host`, `host:port`, `[v6]:port`, or empty): visible ASCII
/// without the delimiters a URI authority cannot hold.
fn valid_host(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| (0x21..0x7f).contains(&b) && !b"/?#\"<>\\^`{|}".contains(&b))
}

/// The path and query of a request target: origin-form (`/readyz?x`) as it
/// is, absolute-form (`http://host:3001/readyz?x`, which HTTP/1.1 servers
/// must accept, RFC 9112 §3.2.2) without its scheme and authority.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some(&rest[i..]),
        // `http://host?x` has an empty path, which means "/"; keep it simple.
        Some(_) => None,
        None => Some("/"),
    }
}

/// Where the path `p` of a target redirects: `None` when it is clean.
/// As Go's ServeMux, which cleans the decoded path: `/%2E/readyz` is
/// `/./readyz` and redirects to `/readyz` (the location re-escaped where a
/// target needs it). A path with a malformed escape is left to the routes.
fn redirect_for(p: &str) -> Option<String> {
    if !is_clean(p) {
        return Some(clean_path(p));
    }
    if !p.contains('%') {
        return None;
    }
    let decoded = crate::diag::routes::percent_decode(p)?;
    (!is_clean(&decoded)).then(|| escape_path(&clean_path(&decoded)))
}

/// `p` with every byte a path segment may not hold as is (RFC 3986
/// section 3.3: unreserved, sub-delims, `:`, `@`, and `/` between segments)
/// written as `%XX`.
fn escape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `clean_path(p) == p`, without allocating (the common case).
fn is_clean(p: &str) -> bool {
    !(p.contains("//")
        || p.contains("/./")
        || p.contains("/../")
        || p.ends_with("/.")
        || p.ends_with("/.."))
}

/// Go's ServeMux `cleanPath`: `path.Clean` of a rooted path (empty and `.`
/// segments dropped, `..` removes the one before, never above the root),
/// with a trailing slash kept.
fn clean_path(p: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(p.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || p.ends_with('/') {
        out.push('/');
    }
    out
}

/// `301 Moved Permanently` to `location` (already a valid target: it is
/// made of the request's own bytes); no body for HEAD. With the length of
/// its head.
fn moved_permanently(location: &str, head: bool) -> (Vec<u8>, usize) {
    let body = format!("Moved Permanently: {location}\n");
    let mut out = format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let head_len = out.len();
    if !head {
        out.push_str(&body);
    }
    (out.into_bytes(), head_len)
}

/// A complete, self-contained answer from the front itself; the connection
/// closes after it.
pub fn simple_response(status: u16, message: &str) -> Vec<u8> {
    text_response(status, message, true)
}

/// A `text/plain` answer from the front itself: `message` and a newline,
/// with `Connection: close` when the connection closes after it
/// (RFC 9112 §9.6).
pub fn text_response(status: u16, message: &str, close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        408 => "Request Timeout",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n{allow}Content-Length: {}\r\n{connection}\r\n{message}\n",
        message.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: impl AsRef<[u8]>) -> Parsed {
        parse_head(
            s.as_ref(),
            &HeadLimits::default(),
            Peer::Tcp("127.0.0.1:9".parse().unwrap()),
        )
    }

    fn parse_local(s: &str) -> Parsed {
        parse_head(
            s.as_bytes(),
            &HeadLimits::default(),
            Peer::Local { uid: 0, pid: 1 },
        )
    }

    /// The log level and the log stream are the front's own, for local
    /// peers only; a PUT body is read whole first. Over TCP, both paths go
    /// to the endpoints (404) and PUT is 405.
    #[test]
    fn local_peers_ask_the_front_for_the_log_level_and_stream() {
        let put = "PUT /log-level HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n";
        assert!(matches!(parse_local(&format!("{put}deb")), Parsed::Partial));
        let Parsed::Local {
            ask,
            keep_alive,
            len,
        } = parse_local(&format!("{put}debug\nGET"))
        else {
            panic!("not local")
        };
        assert_eq!(ask, LocalAsk::SetLevel("debug".into()));
        assert!(keep_alive);
        assert_eq!(len, put.len() + 6);
        let Parsed::Local { ask, .. } =
            parse_local("GET /debug/logs?level=warn HTTP/1.1\r\nHost: x\r\n\r\n")
        else {
            panic!("not local")
        };
        assert_eq!(ask, LocalAsk::Follow("level=warn".into()));
        assert!(matches!(
            parse_local("PUT /log-level HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\n"),
            Parsed::Refuse(413, _)
        ));
        let Parsed::Answer { resp, .. } =
            parse_local("DELETE /log-level HTTP/1.1\r\nHost: x\r\n\r\n")
        else {
            panic!("not answered")
        };
        let resp = String::from_utf8(resp).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 405 ") && resp.contains("\r\nAllow: GET, PUT\r\n"),
            "{resp}"
        );
        let Parsed::Forward { head, .. } = parse_local("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        else {
            panic!("not forwarded")
        };
        let readyz = crate::diag::endpoints::find("/readyz", false)
            .and_then(crate::diag::endpoints::index_of)
            .unwrap();
        let mark = format!("\r\n{}: {readyz} 7 local\r\n", routes::MARK_HEADER);
        assert!(String::from_utf8(head).unwrap().contains(&mark));
        assert!(matches!(parse(put), Parsed::Refuse(405, _)));
        // Only the front marks a request: a TCP client's own mark (or any
        // other header of its) is not passed on.
        let Parsed::Forward { head, .. } = parse(
            "GET /log-level HTTP/1.1\r\nHost: x\r\nX-Tbot-Route: 0 local\r\nX-Tbot-Local: 1\r\n\r\n",
        ) else {
            panic!("not forwarded")
        };
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            "GET /log-level HTTP/1.1\r\nX-Tbot-Route: - 10\r\n\r\n"
        );
    }

    #[test]
    fn forwards_a_clean_head() {
        let Parsed::Forward {
            head,
            keep_alive,
            len,
            slow,
            at_once,
            probe,
            path,
            authorization,
        } = parse(
            "GET /readyz?x=1 HTTP/1.0\r\nHost: x\r\nCookie: a\r\nAccept-Encoding: gzip\r\nAuthorization: Basic eDp5\r\nConnection: keep-alive\r\n\r\nGET /x",
        )
        else {
            panic!("not forwarded")
        };
        let h = String::from_utf8(head).unwrap();
        // The front's decision goes on, in one header; no client header
        // does (the peer does, but only while debug lines are written: not
        // in unit tests).
        assert_eq!(
            h, "GET /readyz?x=1 HTTP/1.1\r\nX-Tbot-Route: 1 7 gzip\r\n\r\n",
            "{h}"
        );
        assert_eq!(&h[path], "/readyz", "the path basic auth matches");
        assert_eq!(authorization.as_deref(), Some(&b"Basic eDp5"[..]));
        let r = routes::Request::marked("/readyz?x=1", Some("1 7 gzip")).unwrap();
        assert_eq!(
            r.endpoint.map(|e| e.kind),
            Some(crate::diag::endpoints::Kind::Readyz)
        );
        assert!(r.gzip && !r.local && r.path == "/readyz" && r.query == "x=1");
        // A mark that does not fit its target is not the front's.
        for (target, mark) in [
            ("/readyz?x=1", "1 8 gzip"),
            ("/readyz", "1 9"),
            ("/readyz", "1"),
            ("/readyz", "99 7"),
            ("/readyz", "1 7 loud"),
        ] {
            assert!(
                routes::Request::marked(target, Some(mark)).is_none(),
                "{mark}"
            );
        }
        assert!(
            !h.contains("Cookie")
                && !h.contains("keep-alive")
                && !h.contains("Connection")
                && h.ends_with("\r\n\r\n")
        );
        assert!(!keep_alive, "HTTP/1.0 closes");
        assert!(!slow && at_once && probe);
        assert!(matches!(
            parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Forward { at_once: false, .. }
        ));
        assert!(matches!(
            parse("GET /wait/x HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Forward { slow: true, .. }
        ));
        // Answered at once, but not a probe's (the probe room is not for it).
        assert!(matches!(
            parse("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Forward {
                at_once: true,
                probe: false,
                ..
            }
        ));
        assert_eq!(
            len, 122,
            "the pipelined bytes after the head are not part of it"
        );
        let Parsed::Forward { keep_alive, .. } = parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n") else {
            panic!()
        };
        assert!(keep_alive);
        let Parsed::Forward { keep_alive, .. } =
            parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, close\r\n\r\n")
        else {
            panic!()
        };
        assert!(!keep_alive);
    }

    #[test]
    fn a_body_on_another_method_is_a_405() {
        assert!(matches!(
            parse("POST /livez HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Parsed::Refuse(405, _)
        ));
        assert!(String::from_utf8(simple_response(405, "x"))
            .unwrap()
            .contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[test]
    fn refuses_bodies_and_garbage() {
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n"),
            Parsed::Refuse(413, _)
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Parsed::Refuse(400, _)
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Refuse(413, _)
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            Parsed::Forward { .. }
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Parsed::Refuse(400, _)
        ));
        assert!(matches!(
            parse("GET ftp://x/ HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(400, _)
        ));
        // Absolute-form is forwarded as its path; the method comes first.
        let Parsed::Forward { head, .. } =
            parse("GET http://x:3001/livez?a=1 HTTP/1.1\r\nHost: x:3001\r\n\r\n")
        else {
            panic!("absolute-form not forwarded")
        };
        assert!(head.starts_with(b"GET /livez?a=1 HTTP/1.1\r\n"));
        assert!(matches!(
            parse("POST http://x/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Parsed::Refuse(405, _)
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: x"),
            Parsed::Partial
        ));
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Parsed::Refuse(431, _)
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(20_000));
        assert!(matches!(parse(&long), Parsed::Refuse(431, _)));
    }

    #[test]
    fn a_target_outside_ascii_is_a_400() {
        for req in [
            "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /livez?q=\u{2603} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a/\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(parse(req), Parsed::Refuse(400, m) if m.contains("ASCII")),
                "{req:?}"
            );
        }
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        assert!(matches!(
            parse("GET /livez HTTP/1.1\r\n\r\n"),
            Parsed::Refuse(400, m) if m.contains("missing Host")
        ));
        assert!(matches!(
            parse("GET /livez HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            Parsed::Refuse(400, m) if m.contains("more than one Host")
        ));
        assert!(matches!(
            parse("GET /livez HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"),
            Parsed::Refuse(400, _)
        ));
        assert!(matches!(
            parse("GET /livez HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            Parsed::Refuse(400, m) if m.contains("malformed Host")
        ));
        // HTTP/1.0 may leave it out; an empty value is allowed.
        assert!(matches!(
            parse("GET /livez HTTP/1.0\r\n\r\n"),
            Parsed::Forward { .. }
        ));
        assert!(matches!(
            parse("GET /livez HTTP/1.1\r\nHost:\r\n\r\n"),
            Parsed::Forward { .. }
        ));
        assert!(matches!(
            parse("GET /livez HTTP/1.1\r\nHost: [::1]:3001\r\n\r\n"),
            Parsed::Forward { .. }
        ));
    }

    #[test]
    fn long_targets_work_up_to_the_limit_then_414() {
        let ok = format!(
            "GET /metrics?{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(8000)
        );
        assert!(matches!(parse(&ok), Parsed::Forward { .. }));
        let at = format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES - 1)
        );
        assert!(matches!(parse(&at), Parsed::Forward { .. }));
        let over = format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES)
        );
        assert!(matches!(parse(&over), Parsed::Refuse(414, _)));
        // Known before the line ends, and before the head limit.
        let partial = format!("GET /{}", "a".repeat(MAX_TARGET_BYTES + 10));
        assert!(matches!(parse(&partial), Parsed::Refuse(414, _)));
        let huge = format!("GET /{}", "a".repeat(MAX_HEAD_BYTES + 10));
        assert!(matches!(parse(&huge), Parsed::Refuse(414, _)));
        assert!(String::from_utf8(simple_response(414, "x"))
            .unwrap()
            .starts_with("HTTP/1.1 414 URI Too Long\r\n"));
    }

    fn redirect(target: &str) -> Option<String> {
        match parse(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n")) {
            Parsed::Answer { resp, .. } => {
                let r = String::from_utf8(resp).unwrap();
                assert!(r.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{r}");
                r.lines()
                    .find_map(|l| l.strip_prefix("Location: "))
                    .map(str::to_string)
            }
            Parsed::Forward { .. } => None,
            _ => panic!("{target}: neither forwarded nor redirected"),
        }
    }

    #[test]
    fn unclean_paths_redirect_as_go_servemux_does() {
        for (from, to) in [
            ("//readyz", "/readyz"),
            ("/./readyz", "/readyz"),
            ("/a/../readyz", "/readyz"),
            ("/../readyz", "/readyz"),
            ("/readyz/.", "/readyz"),
            ("/readyz/..", "/"),
            ("/readyz//heartbeat", "/readyz/heartbeat"),
            ("/readyz/./", "/readyz/"),
            ("//", "/"),
            ("//metrics?x=1&y=/./", "/metrics?x=1&y=/./"),
            ("http://h:1//livez", "/livez"),
            ("/%2E/readyz", "/readyz"),
            ("/%2e%2e/readyz", "/readyz"),
            ("/readyz%2F%2Fheartbeat", "/readyz/heartbeat"),
            ("/%2E/a%20b%3F", "/a%20b%3F"),
        ] {
            assert_eq!(redirect(from).as_deref(), Some(to), "{from}");
        }
        for clean in [
            "/readyz",
            "/readyz/",
            "/",
            "/a.b/..c/.d",
            "/metrics?a=//./",
            "/readyz/my%2Dservice",
            "/readyz/%zz",
        ] {
            assert_eq!(redirect(clean), None, "{clean}");
        }
        let Parsed::Answer { resp, .. } = parse("HEAD //livez HTTP/1.1\r\nHost: x\r\n\r\n") else {
            panic!()
        };
        assert!(resp.ends_with(b"\r\n\r\n"), "no body for HEAD");
        let Parsed::Answer { keep_alive, .. } =
            parse("GET //livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        else {
            panic!()
        };
        assert!(!keep_alive);
    }
}
