//! A real Prometheus scrapes tbot, gzip-compressed.
//!
//! Prometheus (Debian's `prometheus` package) runs on a free loopback port
//! with a temp config and storage, scraping tbot every second through a
//! small recording relay in this test, which keeps the bytes each way: the
//! scrape must ask for gzip, get it, and Prometheus must still read it
//! (`up == 1`, tbot samples queryable over its HTTP API). Bounded in time;
//! Prometheus is killed by PID.

mod common;
#[path = "support/prometheus.rs"]
#[allow(dead_code)] // not every helper is used here
mod prometheus;

use common::*;
use prometheus::Prometheus;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes kept of each direction.
const KEEP: usize = 64 * 1024;

#[derive(Default)]
struct Seen {
    requests: Vec<u8>,
    responses: Vec<u8>,
}

fn keep(into: &Mutex<Seen>, pick: fn(&mut Seen) -> &mut Vec<u8>, bytes: &[u8]) {
    let mut s = into.lock().unwrap();
    let v = pick(&mut s);
    let room = KEEP.saturating_sub(v.len()).min(bytes.len());
    v.extend_from_slice(&bytes[..room]);
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    seen: Arc<Mutex<Seen>>,
    pick: fn(&mut Seen) -> &mut Vec<u8>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep(&seen, pick, &buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A TCP relay on a free loopback port to `upstream`, recording both ways.
fn relay(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(up) = TcpStream::connect(upstream) else {
                continue;
            };
            let (c2, u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            let (s1, s2) = (s.clone(), s.clone());
            std::thread::spawn(move || pipe(client, up, s1, |s| &mut s.requests));
            std::thread::spawn(move || pipe(u2, c2, s2, |s| &mut s.responses));
        }
    });
    (addr, seen)
}

#[test]
fn prometheus_scrapes_tbot_with_gzip() {
    if prometheus::missing() {
        return;
    }
    let dir = TempDir::new("prometheus");
    let cfg = config_text(dir.path(), "", "");
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let (target, seen) = relay(t.addr());

    let p = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tbot\n    static_configs:\n      - targets: ['{target}']\n"
        ),
        &[],
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut up, mut info) = (None, None);
    while Instant::now() < deadline {
        up = p.values("up");
        info = p.values("tbot_info");
        if up.as_deref() == Some(&["1".to_string()][..])
            && info.as_ref().is_some_and(|v| !v.is_empty())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(up.as_deref(), Some(&["1".to_string()][..]), "up");
    assert_eq!(info.as_deref(), Some(&["1".to_string()][..]), "tbot_info");
    let health = p.values(r#"tbot_service_health{service="heartbeat",status="healthy"}"#);
    assert_eq!(health.as_deref(), Some(&["1".to_string()][..]));

    let s = seen.lock().unwrap();
    let req = String::from_utf8_lossy(&s.requests).to_ascii_lowercase();
    let resp = String::from_utf8_lossy(&s.responses);
    assert!(req.contains("get /metrics"), "{req}");
    assert!(
        req.contains("accept-encoding: gzip"),
        "Prometheus asks for gzip: {req}"
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Content-Encoding: gzip"), "{resp}");
    assert!(resp.contains("Vary: Accept-Encoding"), "{resp}");
    assert!(
        !resp.contains("tbot_info"),
        "the body went out uncompressed"
    );
}
