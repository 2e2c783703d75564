//! The one answer type of the diagnostics endpoints, independent of the
//! HTTP library: what the router ([`super::routes`]), the pprof pages
//! ([`super::debug`]) and the renderer ([`super::render`]) produce, and what
//! [`super::http`] writes through tiny_http.

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
}
