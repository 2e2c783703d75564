//! The only code that reads a multiplexer client's bytes (the mirror of the
//! HTTP front's `diag::front`): the request `host:port[|cluster]` up to its
//! NUL, within [`MAX_REQUEST`] bytes and [`REQUEST_DEADLINE`](super::REQUEST_DEADLINE).

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::MAX_REQUEST;

/// `text` for a log line: control characters escaped, at most 100 chars.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .take(100)
        .flat_map(char::escape_debug)
        .collect()
}

/// Reads the request up to its NUL within `deadline`. Returns its text and
/// whatever the client sent after the NUL (already the relayed stream).
pub fn read_request(s: &mut UnixStream, deadline: Duration) -> Result<(String, Vec<u8>), String> {
    let end = Instant::now() + deadline;
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    let mut chunk = [0u8; MAX_REQUEST];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete request within {}",
                crate::infra::duration::format(deadline)
            ));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| format!("reading the request: {e}"))?;
        let n = match s.read(&mut chunk) {
            Ok(0) => {
                return Err("the client closed the connection before the request's NUL byte".into())
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.iter().position(|&b| b == 0) {
            if i >= MAX_REQUEST {
                return Err(too_long());
            }
            let rest = buf.split_off(i + 1);
            buf.pop();
            let text =
                String::from_utf8(buf).map_err(|_| "the request is not UTF-8".to_string())?;
            s.set_read_timeout(None)
                .map_err(|e| format!("reading the request: {e}"))?;
            return Ok((text, rest));
        }
        if buf.len() >= MAX_REQUEST {
            return Err(too_long());
        }
    }
}

fn too_long() -> String {
    format!("request too long: expected host:port and a NUL byte within {MAX_REQUEST} bytes")
}

/// A parsed `host:port[|cluster]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// A name, an IPv4 address, or an IPv6 address without its zone.
    pub host: String,
    pub port: u16,
    /// An IPv6 address's zone (RFC 4007 §11: `fe80::1%eth0`): a network
    /// interface's name or index, as OpenSSH passes it on in `%h`.
    pub zone: Option<String>,
}

/// Longest zone: a network interface name (`IFNAMSIZ` is 16, its NUL
/// included), or an index.
const MAX_ZONE: usize = 15;

impl crate::log::Field for Target {}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(zone) = &self.zone {
            write!(f, "[{}%{zone}]:{}", self.host, self.port)
        } else if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    pub fn parse(request: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            Err(format!(
                "malformed request {:?}: {why} (expected host:port or host:port|cluster)",
                printable(request)
            ))
        };
        let mut fields = request.split('|');
        let addr = fields.next().unwrap_or_default();
        let _cluster = fields.next();
        if fields.next().is_some() {
            return bad("more than two '|'-separated fields");
        }
        let Some((host, port)) = addr.rsplit_once(':') else {
            return bad("no port");
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return bad("the port must be a number from 1 to 65535"),
        };
        let host = match host.strip_prefix('[') {
            Some(h) => match h.strip_suffix(']') {
                Some(h) => h,
                None => return bad("unclosed '['"),
            },
            None => host,
        };
        if host.is_empty() {
            return bad("no host");
        }
        if host.len() > 253
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "[]/\\".contains(c))
        {
            return bad("invalid host");
        }
        let (host, zone) = match host.split_once('%') {
            Some((addr, zone)) => (addr, Some(zone)),
            None => (host, None),
        };
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("a host with ':' must be an IPv6 address");
        }
        if let Some(zone) = zone {
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("a '%' zone may follow an IPv6 address only (RFC 4007: fe80::1%eth0)");
            }
            let zone_char = |c: char| c.is_ascii_alphanumeric() || "._-@".contains(c);
            if zone.is_empty() || zone.len() > MAX_ZONE || !zone.chars().all(zone_char) {
                return bad("the zone after '%' must be a network interface name (at most 15 characters) or index");
            }
        }
        Ok(Target {
            host: host.to_string(),
            port,
            zone: zone.map(str::to_string),
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;

    /// A target, for tests.
    pub(in crate::services::ssh_multiplexer) fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
            zone: None,
        }
    }

    #[test]
    fn an_ipv6_zone_is_carried_or_refused_by_its_rule() {
        let t = Target::parse("fe80::1%eth0:22").unwrap();
        assert_eq!(
            (t.host.as_str(), t.zone.as_deref()),
            ("fe80::1", Some("eth0"))
        );
        assert_eq!(t.to_string(), "[fe80::1%eth0]:22");
        assert_eq!(
            Target::parse("[fe80::1%2]:22").unwrap().zone.as_deref(),
            Some("2")
        );
        for (bad, rule) in [
            ("host%eth0:22", "RFC 4007"),
            ("10.0.0.1%eth0:22", "RFC 4007"),
            ("fe80::1%:22", "network interface"),
            ("fe80::1%a/b:22", "invalid host"),
            ("fe80::1%sixteen-chars-xx:22", "network interface"),
        ] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(e.contains(rule), "{bad}: {e}");
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("127.0.0.1:22"), Ok(target("127.0.0.1", 22)));
        assert_eq!(
            Target::parse("host.example:2222|cluster-a"),
            Ok(target("host.example", 2222))
        );
        assert_eq!(Target::parse("[::1]:22"), Ok(target("::1", 22)));
        assert_eq!(Target::parse("::1:22|"), Ok(target("::1", 22)));
        assert_eq!(target("::1", 22).to_string(), "[::1]:22");
        for bad in [
            "",
            "host",
            "host:",
            ":22",
            "host:0",
            "host:65536",
            "host:ssh",
            "a|b|c:22",
            "host:22|c|d",
            "[::1:22",
            "a b:22",
            "a\nb:22",
            "fe80:zz:22",
        ] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(e.starts_with("malformed request"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn requests_are_read_to_the_nul_and_keep_what_follows() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"127.0.0.1:22|x\0SSH-2.0-client\r\n").unwrap();
        let (text, early) = read_request(&mut a, Duration::from_secs(5)).unwrap();
        assert_eq!(text, "127.0.0.1:22|x");
        assert_eq!(early, b"SSH-2.0-client\r\n");

        // In pieces.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            for piece in [&b"local"[..], b"host:", b"22\0"] {
                b.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            b
        });
        let (text, early) = read_request(&mut a, Duration::from_secs(5)).unwrap();
        assert_eq!((text.as_str(), early.len()), ("localhost:22", 0));
        drop(writer.join());
    }

    #[test]
    fn bad_requests_are_bounded() {
        // Too long, without a NUL.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[b'a'; MAX_REQUEST]).unwrap();
        let e = read_request(&mut a, Duration::from_secs(5)).unwrap_err();
        assert!(e.starts_with("request too long"), "{e}");
        // A NUL just past the limit.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut long = vec![b'a'; MAX_REQUEST];
        long.push(0);
        b.write_all(&long).unwrap();
        assert!(read_request(&mut a, Duration::from_secs(5)).is_err());
        // Exactly at the limit, NUL included: accepted.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut max = vec![b'a'; MAX_REQUEST - 1];
        max.push(0);
        b.write_all(&max).unwrap();
        assert_eq!(
            read_request(&mut a, Duration::from_secs(5))
                .unwrap()
                .0
                .len(),
            MAX_REQUEST - 1
        );
        // Silence: the deadline.
        let (mut a, _b) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let e = read_request(&mut a, Duration::from_millis(200)).unwrap_err();
        assert!(e.starts_with("no complete request within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // EOF before the NUL; not UTF-8.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"host:22").unwrap();
        drop(b);
        assert!(read_request(&mut a, Duration::from_secs(5))
            .unwrap_err()
            .contains("closed"));
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"\xff:22\0").unwrap();
        assert!(read_request(&mut a, Duration::from_secs(5))
            .unwrap_err()
            .contains("UTF-8"));
    }
}
