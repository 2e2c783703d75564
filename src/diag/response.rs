//! The one answer type of the diagnostics endpoints, independent of the
//! HTTP library: what the router ([`super::routes`]), the pprof pages
//! ([`super::debug`]) and the renderer ([`super::render`]) produce, and what
//! [`super::http`] writes through tiny_http, as the bytes [`Response::wire`]
//! makes of it.

use std::io::Write as _;
use std::time::SystemTime;

/// An HTTP answer: status code, `Content-Type`, other headers, and the
/// whole body (always sent with `Content-Length`, never chunked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (RFC 9110 §15).
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides `Content-Type`, in order.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// Headers [`Response::wire`] writes itself or that frame the message; an
/// endpoint's own are left out.
const OWN_HEADERS: [&str; 7] = [
    "Date",
    "Content-Type",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Trailer",
    "Upgrade",
];

/// `text/plain` in UTF-8, as every plain-text answer says.
pub const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// A plain-text answer with `body` as given.
    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status, TEXT, body.as_bytes().to_vec())
    }

    /// `value` as JSON with a final newline (`application/json`); a value
    /// that cannot be encoded is a 500 that says why.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::new(status, "application/json", body)
            }
            Err(e) => Response::text(500, &format!("encoding JSON: {e}\n")),
        }
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The answer as HTTP/1.1 bytes: the head, and the body to send after
    /// it (the body moved, not copied; empty for a HEAD request, and for
    /// 1xx, 204 and 304: RFC 9110 §9.3.2, §15.2, §15.3.5, §15.4.5). The head
    /// has `Date` (RFC 9110 §6.6.1, as of `now`) and `Content-Length`
    /// (the front frames relayed answers by it), and no `Connection`
    /// header: the front sets it for its own client. A header with a
    /// control character in its name or value is left out (RFC 9110 §5.5).
    pub fn wire(self, head_method: bool, now: SystemTime) -> (Vec<u8>, Vec<u8>) {
        let reason = tiny_http::StatusCode(self.status).default_reason_phrase();
        let bodiless = head_method || matches!(self.status, 100..=199 | 204 | 304);
        let mut out = Vec::with_capacity(256);
        let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", self.status);
        let mut line = |name: &str, value: &str| {
            let ok = |t: &str| !t.bytes().any(|b| b.is_ascii_control() && b != b'\t');
            if ok(name) && ok(value) {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        };
        line("Date", &httpdate::fmt_http_date(now));
        line("Content-Type", self.content_type);
        for (name, value) in &self.headers {
            // The framing is this function's, and the front's: not an
            // endpoint's to set (as tiny_http's `add_header` refused them).
            if !OWN_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                line(name, value);
            }
        }
        // None for 304 either: it would have to be the 200's length
        // (RFC 9110 §8.6), which a 304 made here does not carry.
        if !matches!(self.status, 100..=199 | 204 | 304) {
            line(
                "Content-Length",
                itoa::Buffer::new().format(self.body.len()),
            );
        }
        out.extend_from_slice(b"\r\n");
        (out, if bodiless { Vec::new() } else { self.body })
    }

    /// The value of header `name` (ASCII case ignored), if set.
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors() {
        let r = Response::text(404, "gone\n").with_header("Allow", "GET");
        assert_eq!((r.status, r.content_type), (404, TEXT));
        assert_eq!(r.body, b"gone\n");
        assert_eq!(r.header("allow"), Some("GET"));
        assert_eq!(r.header("Vary"), None);
        let j = Response::json(200, &serde_json::json!({"a": 1}));
        assert_eq!(j.content_type, "application/json");
        assert_eq!(j.body, b"{\"a\":1}\n");
    }

    #[test]
    fn wire_bytes() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        let r = Response::text(200, "OK").with_header("Vary", "Accept-Encoding");
        let wire = |r: &Response, head| {
            let (mut out, body) = r.clone().wire(head, t);
            out.extend(body);
            String::from_utf8(out).unwrap()
        };
        let get = wire(&r, false);
        assert_eq!(
            get,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nVary: Accept-Encoding\r\n\
             Content-Length: 2\r\n\r\nOK"
        );
        let head = wire(&r, true);
        assert_eq!(head, get.strip_suffix("OK").unwrap(), "HEAD: no body");
        let bad = Response::text(503, "x").with_header("Retry-After", "1\r\nX: y");
        let bad = wire(&bad, false);
        assert!(
            bad.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{bad}"
        );
        assert!(
            !bad.contains("Retry-After") && !bad.contains("X: y"),
            "{bad}"
        );
        for status in [204, 304] {
            let none = wire(&Response::new(status, TEXT, Vec::new()), false);
            assert!(!none.contains("Content-Length"), "{none}");
        }
        let framing = Response::text(200, "OK")
            .with_header("Content-Length", "9")
            .with_header("transfer-encoding", "chunked")
            .with_header("Connection", "close");
        let framing = wire(&framing, false);
        assert!(
            framing.ends_with("\r\nContent-Length: 2\r\n\r\nOK"),
            "{framing}"
        );
        assert!(
            !framing.contains(": 9") && !framing.contains("chunked") && !framing.contains("close"),
            "{framing}"
        );
    }
}
