//! `tbot wait`: poll a running bot's `/wait` until it answers 200.

use crate::infra::backoff::Backoff;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::cli::WaitArgs;
use crate::http_client;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest single `/wait` request; the loop asks again after it.
const MAX_POLL: Duration = Duration::from_secs(10);

/// Connects to the first of `addr`'s addresses that accepts (`localhost`
/// may resolve to ::1 before 127.0.0.1 while the bot listens on one only).
fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    // The lookup too is bounded by `timeout` (getaddrinfo's own is not).
    let socks = crate::infra::lookup::lookup(addr.to_string(), addr, timeout, || false)?;
    connect_any(socks.into_iter(), timeout).map_err(|e| format!("{addr}: {e}"))
}

/// Tries each address in turn within one `timeout` for them all; the error
/// names each address that failed and why (just why, for a single one: the
/// caller names the address).
fn connect_any(
    socks: impl Iterator<Item = SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    let mut errors: Vec<(SocketAddr, String)> = Vec::new();
    for sock in socks {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            errors.push((sock, "not tried: timed out".into()));
            continue;
        }
        match TcpStream::connect_timeout(&sock, left) {
            Ok(s) => return Ok(s),
            Err(e) => errors.push((sock, e.to_string())),
        }
    }
    Err(match errors.as_slice() {
        [] => "resolves to no address".into(),
        [(_, e)] => e.clone(),
        _ => errors
            .iter()
            .map(|(a, e)| format!("{a}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// One HTTP GET with every step bounded by `timeout`. Returns (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let timeout = timeout.max(Duration::from_millis(10));
    let mut s = connect(addr, timeout)?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tbot-wait\r\nConnection: close\r\n\r\n"
    );
    let head = http_client::send(&mut s, req.as_bytes()).map_err(|e| format!("{addr}: {e}"))?;
    let mut body = head.body_start;
    s.take(MAX_BODY_BYTES)
        .read_to_end(&mut body)
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
}

/// The most of an answer's body read (a `/wait` body is a few KB).
const MAX_BODY_BYTES: u64 = 1 << 20;

/// What was not ready, from a /readyz-shaped body.
fn describe(body: &str, service: Option<&str>) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.trim().to_string();
    };
    let one = |name: &str, e: &serde_json::Value| {
        let status = e["status"].as_str().unwrap_or("unknown");
        match e["reason"].as_str() {
            Some(r) => format!("{name} is {status}: {r}"),
            None => format!("{name} is {status}"),
        }
    };
    if let Some(err) = v["error"].as_str() {
        return err.to_string();
    }
    match (service, v["services"].as_object()) {
        (Some(name), _) => one(name, &v),
        (None, Some(services)) => {
            let bad: Vec<String> = services
                .iter()
                .filter(|(_, e)| e["status"] != "healthy")
                .map(|(n, e)| one(n, e))
                .collect();
            if bad.is_empty() {
                "not ready".into()
            } else {
                bad.join("; ")
            }
        }
        (None, None) => body.trim().to_string(),
    }
}

/// Exit code: 0 ready, 1 timed out.
pub fn run(args: &WaitArgs) -> i32 {
    let deadline = Instant::now() + args.timeout;
    let base = match &args.service {
        Some(s) => format!("/wait/{}", encode(s)),
        None => "/wait".to_string(),
    };
    let backoff = Backoff {
        first: FIRST_BACKOFF,
        max: MAX_BACKOFF,
    };
    let mut delay = backoff.after(None);
    let mut last;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let poll = left.min(MAX_POLL);
        let path = format!("{base}?timeout={}ms", poll.as_millis());
        match http_get(&args.diag_addr, &path, poll + Duration::from_secs(2)) {
            Ok((200, _)) => {
                crate::log::info(
                    "ready",
                    &[
                        ("addr", &args.diag_addr),
                        ("service", &args.service.as_deref().unwrap_or("all")),
                    ],
                );
                return crate::exit::OK;
            }
            Ok((status, body)) => {
                last = format!(
                    "HTTP {status}: {}",
                    describe(&body, args.service.as_deref())
                )
            }
            Err(e) => last = e,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // After the log lines queued before it (see log::flush).
            crate::log::flush();
            eprintln!(
                "tbot wait: not ready after {}: {last}",
                crate::infra::duration::format(args.timeout)
            );
            return crate::exit::FAILURE;
        }
        std::thread::sleep(delay.min(left));
        delay = backoff.after(Some(delay));
    }
}

/// Percent-encodes a service name for the path.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connects_to_the_first_address_that_accepts() {
        // The listening one first, so that the closed one cannot be its port.
        let open = TcpListener::bind("127.0.0.1:0").unwrap();
        let good = open.local_addr().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = closed.local_addr().unwrap();
        drop(closed);
        let s = connect_any([refused, good].into_iter(), Duration::from_secs(5)).unwrap();
        assert_eq!(s.peer_addr().unwrap(), good);
        let e = connect_any([refused].into_iter(), Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        let e = connect_any([refused, refused].into_iter(), Duration::from_secs(5)).unwrap_err();
        assert!(
            e.starts_with(&format!("{refused}: ")) && e.matches("refused").count() == 2,
            "{e}"
        );
        let e = connect_any(std::iter::empty(), Duration::from_secs(5)).unwrap_err();
        assert_eq!(e, "resolves to no address");
    }
}
