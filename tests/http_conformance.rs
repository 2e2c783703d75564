//! HTTP conformance where upstream's Go stack (net/http) and RFC 9110/9112
//! set the bar: Host, long targets (414), path cleaning
//! (301), `Connection: close`, the overall readiness status, gzip.
//! One test per case, through the real binary.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn start(tag: &str, services: &str, env: &[(&str, &str)]) -> Tbot {
    let dir = TempDir::new(tag);
    let cfg = config_text(dir.path(), "", services);
    Tbot::start_with(dir, &cfg, &[], env)
}

fn raw(t: &Tbot, req: &str) -> Resp {
    request(t.addr(), req.as_bytes()).unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

#[test]
fn http11_needs_exactly_one_host_header() {
    let t = start("host", "", &[]);
    for (req, want) in [
        ("GET /livez HTTP/1.1\r\n\r\n", 400),
        ("GET /livez HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        ("GET /livez HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
        ("GET /livez HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET /livez HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET /livez HTTP/1.1\r\nHost: tbot:3001\r\n\r\n", 200),
        // HTTP/1.0 may leave it out (RFC 9112 §3.2 binds HTTP/1.1).
        ("GET /livez HTTP/1.0\r\n\r\n", 200),
    ] {
        let r = raw(&t, req);
        assert_eq!(r.status, want, "{req:?}: {}", r.body);
        if want == 400 {
            assert!(r.body.contains("Host"), "{req:?}: says why: {}", r.body);
            assert_eq!(r.header("Connection"), Some("close"), "{req:?}");
        }
    }
}

/// A target with bytes outside ASCII (RFC 3986 §2: they must be
/// percent-encoded) gets 400 with its reason from the front. (Before, it
/// went on to tiny_http, which drops a connection over a non-ASCII line
/// unanswered: the client's connection closed with no answer, and the
/// requests pipelined behind it on the same kept connection went with it.)
#[test]
fn a_target_that_is_not_ascii_gets_400_and_others_are_unharmed() {
    let t = start("ascii", "", &[]);
    for req in [
        "GET /r\u{e9}adyz HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /readyz?x=\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let r = raw(&t, req);
        assert_eq!(r.status, 400, "{req:?}: {}", r.body);
        assert!(r.body.contains("ASCII"), "{req:?}: says why: {}", r.body);
    }
    let r = raw(&t, "GET /r%C3%A9adyz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        r.status, 404,
        "percent-encoded, it is a path like any: {}",
        r.body
    );
    assert_eq!(
        raw(&t, "GET /livez HTTP/1.1\r\nHost: a\r\n\r\n").status,
        200
    );
}

#[test]
fn targets_of_8000_octets_work_and_longer_ones_get_414() {
    let t = start("long-target", "", &[]);
    // A 5000-byte query (the field report) and a target of 8000 octets.
    let q5000 = format!("/livez?x={}", "a".repeat(5000 - 9));
    let q8000 = format!("/readyz?pad={}", "b".repeat(8000 - 12));
    assert_eq!(q8000.len(), 8000);
    for target in [&q5000, &q8000] {
        let r = t.get(target);
        assert!(
            r.status == 200 || r.status == 503,
            "{} octets: {} {}",
            target.len(),
            r.status,
            r.body
        );
    }
    for len in [8193, 12_000, 40_000] {
        let target = format!("/livez?x={}", "c".repeat(len - 9));
        let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = raw(&t, &req);
        assert_eq!(r.status, 414, "{len} octets: {}", r.body);
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(r.body.contains("request target too long"), "{}", r.body);
    }
    assert_eq!(t.get("/livez").status, 200);
}

#[test]
fn unclean_paths_get_a_301_to_the_clean_path() {
    let t = start("clean-path", "", &[]);
    for (from, to) in [
        ("//readyz", "/readyz"),
        ("/./readyz", "/readyz"),
        ("/a/../readyz", "/readyz"),
        ("//metrics?name[]=x", "/metrics?name[]=x"),
        ("/readyz//heartbeat", "/readyz/heartbeat"),
        // Cleaned once decoded, as Go's ServeMux does.
        ("/%2E/readyz", "/readyz"),
        ("/readyz%2F%2Fheartbeat", "/readyz/heartbeat"),
    ] {
        let r = t.get(from);
        assert_eq!(r.status, 301, "{from}: {}", r.body);
        assert_eq!(r.header("Location"), Some(to), "{from}");
    }
    // HEAD: the same answer without a body; the connection stays usable.
    let mut s = TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"HEAD //livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, true).unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Connection"), None, "kept alive");
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));

    // A real client follows it (curl keeps the path as given with --path-as-is).
    let url = format!("http://{}//./livez", t.addr());
    let out = Command::new("curl")
        .args(["-sS", "-L", "--path-as-is", "--max-time", "10"])
        .args(["-w", "\n%{http_code} %{num_redirects} %{url_effective}"])
        .arg(&url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("OK\n200 1 http://{}/livez", t.addr());
    assert_eq!(text, want, "{}", String::from_utf8_lossy(&out.stderr));
}

/// Reads a response to end of stream; returns it and whether the server
/// closed the connection (EOF) within a second after it.
fn response_then_eof(req: &[u8], t: &Tbot) -> (Resp, bool) {
    let mut s = TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(req).unwrap();
    let r = read_response(&mut s, false).unwrap();
    let mut rest = [0u8; 64];
    let closed = matches!(s.read(&mut rest), Ok(0));
    (r, closed)
}

#[test]
fn a_response_after_which_the_connection_closes_says_connection_close() {
    let t = start("conn-close", "", &[]);
    for req in [
        "GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /livez HTTP/1.0\r\n\r\n",
        "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, close\r\n\r\n",
        "GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET //livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /metrics HTTP/1.0\r\n\r\n",
        "POST /livez HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let (r, closed) = response_then_eof(req.as_bytes(), &t);
        assert!(closed, "{req:?}: connection not closed");
        assert_eq!(r.header("Connection"), Some("close"), "{req:?}: {r:?}");
    }
    // Kept alive: no Connection: close, and the connection stays open.
    let (r, closed) = response_then_eof(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n", &t);
    assert!(!closed);
    assert_eq!(r.header("Connection"), None);

    // wrk (a real HTTP/1.1 load client) asking for close on every request
    // sees no read errors: each close was announced. Bounded: 1 s, loopback.
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk part skipped: wrk not installed");
        return;
    }
    let out = Command::new("timeout")
        .args(["20", "wrk", "-t1", "-c4", "-d1s", "-H", "Connection: close"])
        .arg(format!("http://{}/livez", t.addr()))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk: {text}");
    assert!(text.contains("requests in"), "{text}");
    assert!(!text.contains("Socket errors"), "wrk saw errors:\n{text}");
}

#[test]
fn overall_status_is_healthy_or_unhealthy_and_rows_keep_initializing() {
    // The heartbeat reports only after 2 s.
    let t = start(
        "overall",
        "",
        &[("TBOT_FAILPOINTS", "heartbeat-start=sleep:2000")],
    );
    let r = t.get("/readyz");
    let v = r.json();
    assert_eq!(r.status, 503);
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert_eq!(v["services"]["heartbeat"]["status"], "initializing", "{v}");
    let r = t.get("/readyz/heartbeat");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, "initializing".into())
    );
    // `tbot wait` still waits for it and succeeds.
    let addr = t.addr().to_string();
    let (code, _, err) = run_tbot(
        &["wait", "--diag-addr", &addr, "--timeout", "20s"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
    let v = t
        .until("/readyz", Duration::from_secs(10), |r| r.status == 200)
        .json();
    assert_eq!(v["status"], "healthy", "{v}");
}

fn gunzip(b: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut out)
        .expect("valid gzip");
    out
}

fn metrics_with(t: &Tbot, accept_encoding: Option<&str>) -> Resp {
    let ae = accept_encoding.map_or(String::new(), |v| format!("Accept-Encoding: {v}\r\n"));
    let req = format!("GET /metrics HTTP/1.1\r\nHost: t\r\n{ae}Connection: close\r\n\r\n");
    raw(t, &req)
}

/// The metric names in a text exposition (samples, not comments).
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect()
}

fn check_gzip(t: &Tbot) -> usize {
    let plain = metrics_with(t, None);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("Vary"), Some("Accept-Encoding"));
    assert_eq!(plain.header("Content-Encoding"), None);
    for ae in ["gzip", "deflate, gzip;q=0.5, br", "*"] {
        let r = metrics_with(t, Some(ae));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{ae}");
        assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{ae}");
        let len: usize = r.header("Content-Length").unwrap().parse().unwrap();
        assert_eq!(len, r.raw_body.len());
        let text = gunzip(&r.raw_body);
        assert!(r.raw_body.len() * 3 < text.len(), "{ae}: barely compressed");
        assert_eq!(families(&text), families(&plain.body), "{ae}");
    }
    for ae in ["gzip;q=0", "identity", "br, *;q=0"] {
        let r = metrics_with(t, Some(ae));
        assert_eq!(r.header("Content-Encoding"), None, "{ae}");
        assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{ae}");
        assert!(r.body.contains("tbot_info"), "{ae}");
    }
    plain.raw_body.len()
}

#[test]
fn metrics_are_gzipped_when_the_client_accepts_gzip() {
    let t = start("gzip", "", &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    check_gzip(&t);
}

#[test]
fn a_large_scrape_is_gzipped_too() {
    // Enough identity outputs for a scrape over 64 KiB, which is compressed
    // off the serving loop.
    let dir = TempDir::new("gzip-large");
    let services: String = (0..40)
        .map(|i| {
            format!(
                "  - type: identity\n    principals: [u]\n    destination: {{type: directory, path: {}}}\n",
                dir.join(&format!("out-{i}")).display()
            )
        })
        .collect();
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(30), |r| r.status == 200);
    let size = check_gzip(&t);
    assert!(size > 64 * 1024, "scrape of {size} bytes: not a large one");
    assert_eq!(t.get("/livez").status, 200);
}

/// Every answer the serving loop writes (it writes them itself, not through
/// tiny_http's `Response`) carries a `Date` in IMF-fixdate (RFC 9110
/// §6.6.1, §5.6.7) and its `Content-Length`; a HEAD answer has the same
/// head as GET's and no body (RFC 9110 §9.3.2), even when the connection
/// then closes; no `Server` header names the HTTP library.
#[test]
fn answers_carry_date_and_length_and_head_has_no_body() {
    let t = start("wire", "", &[]);
    for path in ["/livez", "/readyz", "/metrics", "/nowhere"] {
        let get = raw(&t, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let date = get
            .header("Date")
            .unwrap_or_else(|| panic!("{path}: no Date"));
        let fields: Vec<&str> = date.split(' ').collect();
        assert!(
            date.len() == 29 && fields.len() == 6 && fields[0].ends_with(',') && fields[5] == "GMT",
            "{path}: Date {date:?} is not IMF-fixdate"
        );
        assert_eq!(
            get.header("Content-Length"),
            Some(get.raw_body.len().to_string().as_str()),
            "{path}"
        );
        assert_eq!(get.header("Server"), None, "{path}");
        // HEAD, and the connection closes after it: every byte until the
        // close is the head.
        let mut s = TcpStream::connect(t.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        let end = text.find("\r\n\r\n").expect("a whole head") + 4;
        assert_eq!(
            end,
            all.len(),
            "{path}: bytes after a HEAD answer's head: {text:?}"
        );
        let head = common::parse_response(&all).unwrap();
        assert_eq!(head.status, get.status, "{path}");
        if path != "/metrics" {
            // (A page's length may change between two scrapes.)
            assert_eq!(
                head.header("Content-Length"),
                get.header("Content-Length"),
                "{path}"
            );
        }
        assert_eq!(head.header("Connection"), Some("close"), "{path}");
    }
}
