//! The front's connections to tiny_http are kept open and reused (issue 11,
//! item 4: no connect, accept or pool hand-off per request), and responses on
//! them are framed right: by Content-Length, with no body after a HEAD.
//! Through the real binary.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Duration;

fn start(tag: &str) -> Tbot {
    let dir = TempDir::new(tag);
    let cfg = config_text(dir.path(), "", "");
    Tbot::start(dir, &cfg, &[])
}

/// Inodes of the Unix and TCP sockets the process holds.
fn sockets(pid: u32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

#[test]
fn connections_to_the_serving_loop_are_kept_and_reused() {
    let t = start("reuse");
    std::thread::sleep(Duration::from_millis(200));
    let idle = sockets(t.pid());
    // Settle: the first requests open the connections the pool keeps.
    for _ in 0..3 {
        assert_eq!(t.get("/livez").status, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    let kept = sockets(t.pid());
    // The front's end of a kept connection and tiny_http's (which it holds
    // twice: read and write halves).
    let opened = kept.difference(&idle).count();
    assert!(
        opened >= 2,
        "no connection kept: {opened} more sockets held"
    );
    for i in 0..50 {
        let path = ["/livez", "/readyz", "/metrics"][i % 3];
        let r = t.get(path);
        assert!(r.status == 200 || r.status == 503, "{path}: {}", r.status);
    }
    std::thread::sleep(Duration::from_millis(200));
    let now = sockets(t.pid());
    // One at a time, requests take the same idle connection each time: the
    // sockets held before are all still held (a connection per request
    // would have been closed after its answer, and new ones made).
    let gone: Vec<_> = kept.difference(&now).collect();
    assert!(gone.is_empty(), "sockets closed since: {gone:?}");
    assert!(
        now.len() <= kept.len() + 2,
        "sockets grew from {} to {}",
        kept.len(),
        now.len()
    );
}

#[test]
fn head_and_get_answers_alternate_on_one_kept_connection() {
    let t = start("framing");
    let mut s = TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for round in 0..5 {
        for (method, path) in [
            ("HEAD", "/livez"),
            ("GET", "/livez"),
            ("HEAD", "/metrics"),
            ("GET", "/readyz"),
            ("HEAD", "/nope"),
            ("GET", "/nope"),
        ] {
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
            let r = read_response(&mut s, method == "HEAD")
                .unwrap_or_else(|e| panic!("round {round}: {method} {path}: {e}"));
            let ok = match path {
                "/nope" => r.status == 404,
                "/readyz" => r.status == 200 || r.status == 503,
                _ => r.status == 200,
            };
            assert!(ok, "round {round}: {method} {path}: {}", r.status);
            if method == "HEAD" {
                assert!(r.raw_body.is_empty(), "{method} {path}: a body");
            } else {
                assert!(!r.raw_body.is_empty(), "{method} {path}: no body");
                assert_eq!(
                    r.header("content-length"),
                    Some(r.raw_body.len().to_string().as_str()),
                    "{method} {path}"
                );
            }
            assert_eq!(r.header("connection"), None, "{method} {path}: kept open");
        }
    }
}

/// Requests that arrive together, more than there are kept connections,
/// wait in the front for a kept one (tiny_http's one serving loop answers
/// one at a time anyway) rather than each opening a connection of its own,
/// which made tiny_http start a worker thread per connection.
#[test]
fn a_burst_waits_for_the_kept_connections_and_starts_no_threads() {
    let t = start("burst");
    for _ in 0..3 {
        assert_eq!(t.get("/livez").status, 200);
    }
    let before = t.settled_threads();
    let mut peak = before;
    for round in 0..10 {
        let mut conns: Vec<TcpStream> = (0..24)
            .map(|_| TcpStream::connect(t.addr()).unwrap())
            .collect();
        for c in &mut conns {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            std::io::Write::write_all(
                c,
                b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let r = read_response(c, false).unwrap_or_else(|e| panic!("round {round}, {i}: {e}"));
            assert_eq!(r.status, 200, "round {round}, {i}");
        }
        peak = peak.max(t.threads());
    }
    // tiny_http's idle workers above its minimum of 4 stay for 5 s: any
    // started during the burst are still there.
    assert!(
        peak <= before,
        "threads grew from {before} to {peak} during the burst"
    );
}

/// Many keep-alive clients at once, as `wrk -c16` and more (40: more than
/// one kept connection may carry at once, 32): the front pipelines
/// their requests down its kept connections, several at a time, and every
/// client gets the answer to its own request, in order, whatever rides
/// beside it: a 404 that names the service asked for, a HEAD (no body), a
/// `/metrics` page (answered later, by the renderer, so never pipelined
/// behind). tiny_http starts no threads for it. (The splitting of several
/// answers read at once, and the pipelining itself, are proven against a
/// stand-in for tiny_http in src/diag/front/tests.rs.)
#[test]
fn concurrent_keep_alive_clients_each_get_their_own_answers() {
    let t = start("pipelined");
    for _ in 0..3 {
        assert_eq!(t.get("/livez").status, 200);
    }
    let before = t.settled_threads();
    let addr = t.addr();
    let clients: Vec<_> = (0..40)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for k in 0..100 {
                    let name = format!("c{c}-r{k}");
                    let (method, path) = match k % 10 {
                        3 => ("HEAD", format!("/readyz/{name}")),
                        7 => ("GET", "/metrics".to_string()),
                        _ => ("GET", format!("/readyz/{name}")),
                    };
                    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
                    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
                    let r = read_response(&mut s, method == "HEAD")
                        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                    assert_eq!(r.header("connection"), None, "{method} {path}: kept open");
                    if path == "/metrics" {
                        assert_eq!(r.status, 200, "{path}");
                        assert!(r.body.contains("# TYPE"), "{path}: {}", r.body);
                    } else if method == "HEAD" {
                        assert_eq!(r.status, 404, "{method} {path}");
                        assert!(r.raw_body.is_empty(), "{method} {path}: a body");
                    } else {
                        assert_eq!(r.status, 404, "{path}");
                        assert_eq!(
                            r.json()["error"],
                            format!("Service named \"{name}\" not found."),
                            "{path}: another request's answer"
                        );
                    }
                }
            })
        })
        .collect();
    let mut peak = before;
    for c in clients {
        peak = peak.max(t.threads());
        c.join().unwrap();
    }
    assert!(
        peak <= before,
        "threads grew from {before} to {peak} with 40 clients"
    );
    assert_eq!(t.get("/livez").status, 200);
}

/// tiny_http's socket file, in the service's private directory (which
/// `pid` holds open for its lock).
fn serving_socket(pid: u32) -> Option<std::path::PathBuf> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .find(|l| {
            l.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tbot-diag-"))
        })?;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|f| f.ok())
        .find_map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            (name.starts_with("http-") && name.ends_with(".sock")).then(|| f.path())
        })
}

/// When tiny_http can no longer be reached at its socket, the kept
/// connections keep serving; the first request that needs a new connection
/// has the serving loop make a new tiny_http (its answer: 503, try again),
/// and the front follows it: every endpoint is served again, on the new
/// socket.
#[test]
fn a_lost_serving_socket_is_made_again_and_followed() {
    let t = start("rebuild");
    // Ready (every service reported), over the kept connection.
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let first = serving_socket(t.pid()).expect("no tiny_http socket");
    std::fs::remove_file(&first).unwrap();
    // The kept connection still carries requests.
    for _ in 0..5 {
        assert_eq!(t.get("/livez").status, 200, "{}", t.log());
    }
    // A /wait goes on a connection of its own: it finds no socket.
    let r = t.get("/wait?timeout=0s");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        t.wait_log("diagnostics serving socket rebuilt", Duration::from_secs(5)),
        "{}",
        t.log()
    );
    let second = serving_socket(t.pid()).expect("no new tiny_http socket");
    assert_ne!(first, second);
    for path in ["/livez", "/readyz", "/metrics", "/wait?timeout=0s"] {
        let r = t.until(path, Duration::from_secs(5), |r| r.status == 200);
        assert_eq!(r.status, 200, "{path}: {}\n{}", r.body, t.log());
    }
}
