//! A diagnostics front that survives hostile clients.
//!
//! Every case runs against the real binary on a loopback port and asserts
//! on status codes, functional deadlines ("within 1 s") and
//! the process staying alive. Every loop is bounded in count and time.
//!
//! The scenario helpers take a [`Target`] (an address and a PID), so the
//! same cases can be pointed at another server: see `peer_comparison` below
//! and tests/bench/hostile_compare.sh.

mod common;
use common::util::Rng;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
/// Threads: the daemon's own (about 15 with its services) plus at most one
/// tiny_http worker per front connection (the cap, 64 by default). Idle and
/// slow clients cost no thread at all.
const MAX_THREADS: u64 = 16 + 64;
const MAX_RSS: u64 = 64 * MIB;
/// "a fresh `GET /livez` still answers within 1 s".
const LIVEZ_DEADLINE: Duration = Duration::from_secs(1);

/// A server under test: where it listens and which process it is.
#[derive(Clone, Copy, Debug)]
struct Target {
    addr: SocketAddr,
    pid: u32,
}

impl Target {
    fn of(t: &Tbot) -> Target {
        Target {
            addr: t.addr(),
            pid: t.pid(),
        }
    }

    fn rss(&self) -> u64 {
        proc_status_kb(self.pid, "VmRSS:") * 1024
    }

    fn threads(&self) -> u64 {
        proc_status_kb(self.pid, "Threads:")
    }
}

/// The highest thread count and RSS seen so far.
#[derive(Default, Debug, Clone, Copy)]
struct Peak {
    threads: u64,
    rss: u64,
}

impl Peak {
    fn sample(&mut self, t: Target) {
        self.threads = self.threads.max(t.threads());
        self.rss = self.rss.max(t.rss());
    }

    fn assert_bounded(&self, what: &str) {
        assert!(
            self.threads > 0 && self.threads < MAX_THREADS,
            "{what}: {} threads (bound {MAX_THREADS})",
            self.threads
        );
        assert!(
            self.rss > 0 && self.rss < MAX_RSS,
            "{what}: RSS {:.1} MiB (bound 64 MiB)",
            self.rss as f64 / MIB as f64
        );
    }
}

/// Sends `raw`, then reads until the server closes, errs or `timeout`
/// passes. Returns what arrived (kept even when the read ends in a reset,
/// unlike `read_to_end`) and how long the answer took.
fn exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return (Vec::new(), start.elapsed());
    };
    let _ = s.set_write_timeout(Some(timeout));
    let _ = s.write_all(raw);
    (read_all(&mut s, start + timeout), start.elapsed())
}

/// Reads until EOF, an error, or `deadline`.
fn read_all(s: &mut TcpStream, deadline: Instant) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return got;
        }
        match read_retrying(s, &mut chunk) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The status code of a raw response, if it has a status line.
fn status_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

/// One fresh `GET /livez`: its status (None: no answer) and latency.
fn probe_livez(addr: SocketAddr) -> (Option<u16>, Duration) {
    let (resp, took) = exchange(
        addr,
        b"GET /livez HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    (status_of(&resp), took)
}

/// `probe_livez`, asserting the deadline.
fn assert_livez_fast(addr: SocketAddr, when: &str) -> Duration {
    let (status, took) = probe_livez(addr);
    assert_eq!(
        status,
        Some(200),
        "GET /livez {when}: no 200 (after {took:?})"
    );
    assert!(
        took < LIVEZ_DEADLINE,
        "GET /livez {when}: took {took:?}, deadline {LIVEZ_DEADLINE:?}"
    );
    took
}

fn assert_alive(t: &mut Tbot, when: &str) {
    assert!(
        matches!(t.child.try_wait(), Ok(None)),
        "tbot died {when}: {:?}",
        t.child.try_wait()
    );
}

fn assert_no_panic(t: &Tbot) {
    assert_no_panic_but(t, |_| false);
}

/// Every log line that mentions a panic must be `allowed`.
fn assert_no_panic_but(t: &Tbot, allowed: impl Fn(&str) -> bool) {
    let log = t.log();
    for line in log.lines() {
        assert!(
            !line.to_lowercase().contains("panic") || allowed(line),
            "the log mentions a panic: {line}\n{log}"
        );
    }
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()
}

/// For each connection: has the server closed it (or answered on it)?
/// Polls until at least `want` are, or `within` passes.
fn closed_by_server(conns: &mut [TcpStream], want: usize, within: Duration) -> Vec<bool> {
    let mut closed = vec![false; conns.len()];
    for c in conns.iter() {
        c.set_nonblocking(true).unwrap();
    }
    let end = Instant::now() + within;
    loop {
        for (c, done) in conns.iter_mut().zip(closed.iter_mut()) {
            if *done {
                continue;
            }
            let mut b = [0u8; 512];
            *done = match c.read(&mut b) {
                Ok(_) => true, // EOF or an answer (a 503 or 408): not queued
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    false
                }
                Err(_) => true, // reset
            };
        }
        if closed.iter().filter(|&&c| c).count() >= want || Instant::now() >= end {
            return closed;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes one byte to each connection every 100 ms until stopped (or 60 s).
struct Dripper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dripper {
    fn start(conns: Vec<TcpStream>) -> Dripper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            for c in &conns {
                let _ = c.set_nonblocking(true);
            }
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                for mut c in &conns {
                    let _ = c.write(b"a");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Dripper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dripper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a siege of idle and dripping connections did to a server.
#[derive(Debug)]
struct Siege {
    opened: usize,
    probes: Vec<(Option<u16>, Duration)>,
    peak: Peak,
    /// Of our connections, how many the server closed (or answered) within
    /// 3 s of the last probe.
    closed: usize,
}

/// Opens `n` connections, every other one sending a partial head and then
/// one byte per 100 ms; the rest send nothing. While they are open: five
/// fresh /livez probes, 200 ms apart, and thread/RSS samples.
/// `expect_closed`: stop watching once that many were closed.
fn siege(t: Target, n: usize, expect_closed: usize) -> Siege {
    let mut idle = Vec::new();
    let mut drip = Vec::new();
    for i in 0..n {
        let Some(mut c) = connect(t.addr) else {
            continue;
        };
        if i % 2 == 0 {
            idle.push(c);
        } else {
            let _ = c.write_all(b"GET /livez HTTP/1.1\r\nHost: drip\r\nX-Drip: ");
            drip.push(c.try_clone().unwrap());
            idle.push(c); // kept here too, to watch for the server closing it
        }
    }
    let opened = idle.len();
    let dripper = Dripper::start(drip);
    let mut peak = Peak::default();
    std::thread::sleep(Duration::from_millis(300));
    peak.sample(t);
    let mut probes = Vec::new();
    for _ in 0..5 {
        probes.push(probe_livez(t.addr));
        peak.sample(t);
        std::thread::sleep(Duration::from_millis(200));
    }
    let closed = closed_by_server(&mut idle, expect_closed, Duration::from_secs(3));
    peak.sample(t);
    drop(dripper);
    Siege {
        opened,
        probes,
        peak,
        closed: closed.iter().filter(|&&c| c).count(),
    }
}

fn start(tag: &str, extra_top: &str, args: &[&str]) -> Tbot {
    let dir = TempDir::new(tag);
    let cfg = config_text(dir.path(), extra_top, "");
    let t = Tbot::start(dir, &cfg, args);
    assert_eq!(t.get("/livez").status, 200);
    // Every service healthy first, so a 503 below means the front refused.
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    t
}

/// Connections the front takes in beside its slots, waiting for their
/// request (its probe room, `src/diag/front/room.rs`).
const PROBE_ROOM: usize = 4;

#[test]
fn hundreds_of_idle_and_slow_clients_do_not_starve_livez() {
    let mut t = start("siege", "", &[]);
    let target = Target::of(&t);
    let cap = 64; // the default diag_max_connections
    let n = 300;
    let s = siege(target, n, n - cap - PROBE_ROOM);
    eprintln!("siege of {n}: {s:?}");
    assert_eq!(s.opened, n, "every connection should be accepted");
    for (i, (status, took)) in s.probes.iter().enumerate() {
        assert_eq!(*status, Some(200), "probe {i} under siege: {s:?}");
        assert!(*took < LIVEZ_DEADLINE, "probe {i} took {took:?}");
    }
    s.peak.assert_bounded("under 300 slow connections");
    // Over the cap nobody waits forever: the server closed (or answered)
    // all but at most `cap` of our connections, and the probe room's 4
    // (a newcomer waits there for its request rather than close one that
    // connected a moment ago).
    assert!(
        s.closed >= n - cap - PROBE_ROOM,
        "only {} of {n} connections closed by the server; cap {cap} + {PROBE_ROOM}",
        s.closed
    );
    assert_alive(&mut t, "after the siege");
    assert_livez_fast(target.addr, "after the siege");
    assert_no_panic(&t);
}

#[test]
fn the_connection_cap_is_configurable_and_evicts_the_oldest_idle_client() {
    let mut t = start("cap8", "diag_max_connections: 8\n", &[]);
    let addr = t.addr();
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|i| {
            let c = connect(addr).unwrap_or_else(|| panic!("connect {i}"));
            std::thread::sleep(Duration::from_millis(10));
            c
        })
        .collect();
    // 8 slots and the probe room's 4 places: the newest 12 stay.
    let kept = 8 + PROBE_ROOM;
    let closed = closed_by_server(&mut conns, 20 - kept, Duration::from_secs(3));
    // Give a wrong implementation the time to close more than it should.
    std::thread::sleep(Duration::from_millis(300));
    let closed2 = closed_by_server(&mut conns, 20, Duration::ZERO);
    let expect: Vec<bool> = (0..20).map(|i| i < 20 - kept).collect();
    assert_eq!(
        closed, expect,
        "with a cap of 8 + 4, the 8 oldest are closed"
    );
    assert_eq!(closed2, expect, "and the 12 newest stay open");

    // A newcomer is served at once, making room by closing the oldest.
    assert_livez_fast(addr, "at the cap");
    let closed = closed_by_server(&mut conns[20 - kept..], 1, Duration::from_secs(2));
    assert!(closed[0], "the oldest idle client makes room: {closed:?}");
    assert!(!closed[1..].iter().any(|&c| c), "only one: {closed:?}");
    assert_alive(&mut t, "at the cap");
}

/// Clients that connected and sent a whole request while the front could
/// not run (a stalled machine: here SIGSTOP) are accepted in one burst.
/// Over the cap, none of them is "the oldest idle client": each has a
/// request waiting unread. Each gets an answer (200, or a 503 when every
/// slot is busy), none a close without one or a reset.
#[test]
fn a_burst_over_the_cap_gets_answers_not_silent_closes() {
    let mut t = start("burst", "diag_max_connections: 4\n", &[]);
    let addr = t.addr();
    t.signal(libc::SIGSTOP);
    let conns: Vec<TcpStream> = (0..12)
        .map(|i| {
            let mut c = connect(addr).unwrap_or_else(|| panic!("connect {i}"));
            c.write_all(b"GET /livez HTTP/1.1\r\nHost: burst\r\nConnection: close\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    t.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answers: Vec<Option<u16>> = conns
        .into_iter()
        .map(|mut c| status_of(&read_all(&mut c, deadline)))
        .collect();
    eprintln!("answers: {answers:?}");
    assert!(
        answers.iter().all(|a| matches!(a, Some(200 | 503))),
        "every client of the burst is answered: {answers:?}"
    );
    assert!(answers.contains(&Some(200)), "{answers:?}");
    assert_alive(&mut t, "after the burst");
}

/// `GET /metrics` on a fresh connection: not a probe, so it needs a slot.
const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn over_the_cap_with_every_slot_busy_a_newcomer_gets_a_quick_503() {
    // One slot, held by a request the endpoints take seconds to answer.
    let mut t = start("busy", "diag_max_connections: 1\n", &["-d"]);
    let addr = t.addr();
    let mut busy = connect(addr).unwrap();
    busy.write_all(
        b"GET /debug/pprof/profile?seconds=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A probe finds room all the same (tests/pressure.rs has the rest).
    assert_livez_fast(addr, "with the only slot busy");
    let (resp, took) = exchange(addr, METRICS, Duration::from_secs(5));
    assert!(
        took < LIVEZ_DEADLINE,
        "the newcomer waited {took:?}: queued instead of refused"
    );
    assert!(
        resp.is_empty() || status_of(&resp) == Some(503),
        "a quick 503 or a close, got {:?}",
        String::from_utf8_lossy(&resp)
    );
    // The busy request still completes, and then the slot is free again.
    let profile = read_all(&mut busy, Instant::now() + Duration::from_secs(10));
    assert_eq!(status_of(&profile), Some(200), "the profile request");
    assert_livez_fast(addr, "after the slot freed");

    // A client that hangs up while its request is with the endpoints frees
    // its slot soon (after a short grace), not when the answer is ready.
    let mut gone = connect(addr).unwrap();
    gone.write_all(b"GET /debug/pprof/profile?seconds=20 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(gone);
    let start = Instant::now();
    loop {
        let status = status_of(&exchange(addr, METRICS, Duration::from_secs(5)).0);
        if status == Some(200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the slot of a client that hung up is still taken: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_alive(&mut t, "after the busy test");
}

#[test]
fn request_bodies_huge_missing_or_garbled_are_refused_quickly() {
    let mut t = start("bodies", "", &[]);
    let addr = t.addr();
    let cases: [(&str, &[u8]); 4] = [
        (
            "a huge Content-Length",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n",
        ),
        (
            "a body that never comes",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n",
        ),
        (
            "chunked garbage",
            b"POST /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\x00\xff\r\n-5\r\nnope",
        ),
        (
            "a declared body actually sent",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        ),
    ];
    for (what, raw) in cases {
        // The connection stays open for writing: the server must not wait
        // for the body.
        let (resp, took) = exchange(addr, raw, Duration::from_secs(5));
        let status = status_of(&resp);
        assert!(
            resp.is_empty() || status.is_some_and(|s| (400..500).contains(&s)),
            "{what}: {:?}",
            String::from_utf8_lossy(&resp)
        );
        assert!(
            took < Duration::from_secs(2),
            "{what}: answered after {took:?}"
        );
        assert_alive(&mut t, what);
        assert_livez_fast(addr, &format!("after {what}"));
    }

    // A huge declared body that keeps streaming: still a 4xx, quickly.
    let (resp, wrote, _) = stream_and_read(
        Target::of(&t),
        b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n",
        |_| b'x',
        16 * MIB,
    );
    assert_eq!(
        status_of(&resp),
        Some(413),
        "streaming body ({wrote} bytes written): {:?}",
        String::from_utf8_lossy(&resp)
    );
    assert_alive(&mut t, "after a streamed body");
    assert_livez_fast(addr, "after a streamed body");
    assert_no_panic(&t);
}

/// Sends `head`, then `total` bytes made by `fill` (in 64 KiB chunks) from a
/// writer thread, while a reader thread reads the answer and this one samples
/// `t`'s threads and RSS every 20 ms. Returns the answer, how many bytes the
/// writer got out before the server stopped it (a reset on the writer is
/// expected: the server stops reading), and the peak.
fn stream_and_read(
    t: Target,
    head: &[u8],
    fill: impl Fn(usize) -> u8,
    total: u64,
) -> (Vec<u8>, u64, Peak) {
    let mut s = connect(t.addr).expect("connect");
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = head.to_vec();
    let chunk: Vec<u8> = (0..64 * 1024).map(fill).collect();
    let writer = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        let mut wrote = 0u64;
        if w.write_all(&head).is_err() {
            return 0;
        }
        while wrote < total && Instant::now() < end {
            let n = chunk.len().min((total - wrote) as usize);
            match w.write(&chunk[..n]) {
                Ok(k) => wrote += k as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // reset / broken pipe: the server hung up
            }
        }
        let _ = w.shutdown(Shutdown::Write);
        wrote
    });
    let reader = std::thread::spawn(move || {
        let resp = read_all(&mut s, Instant::now() + Duration::from_secs(20));
        let _ = s.shutdown(Shutdown::Both);
        resp
    });
    let mut peak = Peak::default();
    let end = Instant::now() + Duration::from_secs(25);
    while !(reader.is_finished() && writer.is_finished()) && Instant::now() < end {
        peak.sample(t);
        std::thread::sleep(Duration::from_millis(20));
    }
    peak.sample(t);
    let resp = reader.join().unwrap_or_default();
    let wrote = writer.join().unwrap_or(0);
    (resp, wrote, peak)
}

/// Streams one hostile head; returns (status, bytes written, peak RSS).
fn oversized_head(
    t: Target,
    head: &[u8],
    fill: impl Fn(usize) -> u8,
    total: u64,
) -> (Option<u16>, u64, u64) {
    let (resp, wrote, peak) = stream_and_read(t, head, fill, total);
    (status_of(&resp), wrote, peak.rss)
}

/// A 100 MiB header line (one `X-Big` value of `a`s).
fn huge_header_line(t: Target) -> (Option<u16>, u64, u64) {
    oversized_head(
        t,
        b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ",
        |_| b'a',
        100 * MIB,
    )
}

/// 20 000 short header lines.
fn many_header_lines(t: Target) -> (Option<u16>, u64, u64) {
    let lines: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
        .chain(*b"\r\n")
        .collect();
    let len = lines.len();
    oversized_head(
        t,
        b"GET /livez HTTP/1.1\r\nHost: x\r\n",
        move |i| lines[i % len],
        len as u64,
    )
}

#[test]
fn huge_heads_get_431_and_memory_stays_bounded() {
    let mut t = start("heads", "", &[]);
    let target = Target::of(&t);
    for (what, run) in [
        ("a 100 MiB header line", huge_header_line as fn(Target) -> _),
        ("20 000 header lines", many_header_lines),
    ] {
        let (status, wrote, rss) = run(target);
        eprintln!("{what}: status {status:?}, {wrote} bytes written, peak RSS {rss}");
        assert!(
            matches!(status, Some(431) | Some(400)),
            "{what}: status {status:?} ({wrote} bytes written)"
        );
        assert!(rss > 0 && rss < MAX_RSS, "{what}: RSS {rss} during");
        assert_alive(&mut t, what);
        assert_livez_fast(target.addr, &format!("after {what}"));
        let after = target.rss();
        assert!(after > 0 && after < MAX_RSS, "{what}: RSS {after} after");
    }
    assert_no_panic(&t);
}

/// A TLS 1.2/1.3 ClientHello record for `localhost`.
fn client_hello() -> Vec<u8> {
    let sni: &[u8] = b"localhost";
    let mut ext = vec![0x00, 0x00]; // server_name
    let list_len = sni.len() + 3;
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(sni);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]); // suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `raw` and closes the write side; the answer must be a 4xx or
/// nothing (a close), within 3 s. Returns the status.
fn assert_refused(addr: SocketAddr, raw: &[u8], what: &str) -> Option<u16> {
    let start = Instant::now();
    let mut s = connect(addr).unwrap_or_else(|| panic!("{what}: connect"));
    let _ = s.write_all(raw);
    let _ = s.shutdown(Shutdown::Write);
    let resp = read_all(&mut s, start + Duration::from_secs(5));
    let took = start.elapsed();
    let status = status_of(&resp);
    assert!(
        resp.is_empty() || status.is_some_and(|s| (400..500).contains(&s)),
        "{what}: want a 4xx or a close, got {:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(200)])
    );
    assert!(took < Duration::from_secs(3), "{what}: took {took:?}");
    status
}

#[test]
fn random_bytes_tls_and_bad_request_lines_never_crash_it() {
    let mut t = start("garbage", "", &[]);
    let addr = t.addr();
    let mut rng = Rng(0x7b07_d1a6_5eed_0001);
    let mut answered = 0;
    let rounds = 300;
    for round in 0..rounds {
        let len = 1 + (rng.next() % 2048) as usize;
        let raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if assert_refused(addr, &raw, &format!("random round {round}")).is_some() {
            answered += 1;
        }
    }
    // Random bytes are almost never a request prefix: most get a 400.
    assert!(answered > rounds / 2, "only {answered}/{rounds} answered");
    assert_alive(&mut t, "after random bytes");

    let hello = client_hello();
    assert_eq!(assert_refused(addr, &hello, "a TLS ClientHello"), Some(400));
    let bad: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /livez\r\n\r\n",
        b"GET  /livez HTTP/1.1\r\n\r\n",
        b"GET /livez HTTP/9.9\r\n\r\n",
        b"GET /li\x00vez HTTP/1.1\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /livez HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET ftp://evil/livez HTTP/1.1\r\n\r\n",
        b"CONNECT localhost:443 HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x00\x00\x00",
        b"GET /livez HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ];
    for raw in bad {
        let what = format!("{:?}", String::from_utf8_lossy(raw));
        let status = assert_refused(addr, raw, &what);
        assert!(
            status.is_some(),
            "{what}: a 4xx expected, the server closed"
        );
    }
    // Percent-encoding in the service name: reaches the endpoints, 400.
    for path in ["/readyz/%zz", "/readyz/%ff", "/readyz/%", "/wait/%c3%28"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            assert_refused(addr, raw.as_bytes(), path),
            Some(400),
            "{path}"
        );
    }
    // A request cut short, then the client goes away: a close is enough.
    assert_refused(addr, b"GET /livez HTTP/1.1\r\nHo", "a cut-short head");
    assert_refused(addr, b"\r\n\r\n\r\n\r\n", "empty lines only");

    assert_alive(&mut t, "after garbage");
    assert_livez_fast(addr, "after garbage");
    assert_no_panic(&t);
}

/// Starts tbot with RLIMIT_NOFILE set to `nofile` (soft and hard).
fn start_with_nofile(tag: &str, nofile: u64) -> Tbot {
    let dir = TempDir::new(tag);
    let cfg = config_text(dir.path(), "", "");
    Tbot::start_with_nofile(dir, &cfg, nofile)
}

/// Opens 200 connections (holding each) and counts them, then probes /livez
/// while they are held; returns the probe result.
fn hold_200(addr: SocketAddr) -> (Vec<TcpStream>, (Option<u16>, Duration)) {
    let conns: Vec<TcpStream> = (0..200).filter_map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let during = probe_livez(addr);
    (conns, during)
}

/// After the held connections go away, /livez answers again within 5 s.
fn assert_serves_again(t: &mut Tbot, what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, took) = probe_livez(t.addr());
        if status == Some(200) && took < LIVEZ_DEADLINE {
            break;
        }
        assert!(
            Instant::now() < end,
            "{what}: /livez does not answer again: {status:?} after {took:?}\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_alive(t, what);
}

#[test]
fn under_a_low_open_file_limit_the_port_keeps_serving() {
    let mut t = start_with_nofile("nofile", 64);
    assert!(
        t.wait_log("connection cap lowered", Duration::from_secs(2)),
        "tbot should say it lowered the cap to fit 64 files:\n{}",
        t.log()
    );
    let (conns, during) = hold_200(t.addr());
    eprintln!(
        "{} connections held; /livez meanwhile: {during:?}",
        conns.len()
    );
    assert!(conns.len() >= 100, "only {} connections made", conns.len());
    assert_alive(&mut t, "while 200 connections are held");
    drop(conns);
    assert_serves_again(&mut t, "after 200 connections under nofile=64");
    assert_no_panic(&t);
}

#[test]
fn accept_errors_for_want_of_descriptors_never_end_the_listener() {
    // The cap (64) fits the limit at start; then the limit drops under the
    // daemon's feet, so accept() really fails with EMFILE.
    let mut t = start("emfile", "", &[]);
    let pid = t.pid() as libc::pid_t;
    let set_nofile = |n: u64| {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: 4096,
        };
        // SAFETY: prlimit(2) on our own child, with a valid struct.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    set_nofile(fds + 6);
    let (conns, during) = hold_200(t.addr());
    eprintln!(
        "{} connections held at nofile={}; /livez meanwhile: {during:?}",
        conns.len(),
        fds + 6
    );
    assert!(
        t.wait_log("accept failed; still listening", Duration::from_secs(3)),
        "accept() should have failed for want of descriptors:\n{}",
        t.log()
    );
    assert_alive(&mut t, "while out of descriptors");
    drop(conns);
    assert_serves_again(&mut t, "after EMFILE, with the limit still low");
    set_nofile(4096);
    assert_serves_again(&mut t, "after EMFILE, limit restored");
    // tiny_http's accept thread may die on an unwrap of `try_clone` when the
    // descriptors run out (tiny_http 0.12, util/refined_tcp_stream.rs); the
    // daemon logs it, rebuilds the serving socket and carries on, as shown
    // above. Any other panic fails the test.
    assert_no_panic_but(&t, |line| {
        line.contains("thread panicked") && line.contains("/tiny_http-0.12.0/src/")
    });
}

#[test]
fn an_idle_connection_is_closed_after_the_head_timeout() {
    let mut t = start("timeout", "", &[]);
    let addr = t.addr();
    let start = Instant::now();
    let mut idle = connect(addr).unwrap();
    let mut partial = connect(addr).unwrap();
    partial.write_all(b"GET /livez HTTP/1.1\r\nHo").unwrap();
    let deadline = start + Duration::from_secs(14);
    let idle_got = read_all(&mut idle, deadline);
    let idle_after = start.elapsed();
    let partial_got = read_all(&mut partial, deadline);
    let partial_after = start.elapsed();
    // The default head timeout is 10 s.
    assert!(
        idle_after >= Duration::from_secs(9) && idle_after < Duration::from_secs(13),
        "the idle connection closed after {idle_after:?}"
    );
    assert!(idle_got.is_empty(), "an idle client gets a plain close");
    assert!(
        partial_after < Duration::from_secs(13),
        "the partial head closed after {partial_after:?}"
    );
    assert_eq!(
        status_of(&partial_got),
        Some(408),
        "{:?}",
        String::from_utf8_lossy(&partial_got)
    );
    assert_alive(&mut t, "after the head timeout");
    assert_livez_fast(addr, "after the head timeout");
}

#[test]
fn clients_that_never_read_their_answers_block_nobody() {
    let mut t = start("noread", "", &[]);
    let target = Target::of(&t);
    // 50 clients ask for /metrics and never read; 10 pipeline many requests.
    let mut held: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut c = connect(target.addr).unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    for _ in 0..10 {
        let mut c = connect(target.addr).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = c.write_all(&pipelined);
        held.push(c);
    }
    let mut peak = Peak::default();
    std::thread::sleep(Duration::from_millis(300));
    peak.sample(target);
    for i in 0..5 {
        assert_livez_fast(target.addr, &format!("probe {i} beside 60 non-readers"));
        peak.sample(target);
    }
    peak.assert_bounded("beside 60 non-readers");
    assert_alive(&mut t, "beside non-readers");
    drop(held);
    assert_livez_fast(target.addr, "after the non-readers left");
}

#[test]
fn a_client_that_never_reads_is_cut_off_by_the_write_timeout() {
    // Four slots, four clients that pipeline thousands of /metrics requests
    // and never read: once their socket buffers are full, every slot is
    // stuck writing a response. No newcomer comes to take their slots
    // (tests/pressure.rs has that): the write timeout (10 s) alone must
    // close them, descriptors and all.
    let t = start("wtimeout", "diag_max_connections: 4\n", &[]);
    let addr = t.addr();
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5000);
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let pipelined = pipelined.clone();
            let mut c = connect(addr).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            std::thread::spawn(move || {
                let _ = c.write_all(&pipelined);
                c // held, never read
            })
        })
        .collect();
    let held: Vec<TcpStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    std::thread::sleep(Duration::from_secs(2));
    let full = t.open_fds();
    let filled_at = Instant::now();
    loop {
        let fds = t.open_fds();
        if fds + 4 <= full {
            break;
        }
        assert!(
            filled_at.elapsed() < Duration::from_secs(16),
            "{fds} descriptors open {:?} after the slots filled ({full} then): no write timeout",
            filled_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
}

/// 404 and HEAD are in tests/diag_endpoints.rs; here every other method.
#[test]
fn every_method_but_get_and_head_is_405_and_half_closing_clients_are_answered() {
    let t = start("methods", "", &[]);
    let addr = t.addr();
    let methods = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"];
    // Also an unknown path and a method in lower case (RFC 9110 §9.1:
    // case matters): the front refuses them before any routing.
    let odd_targets = [
        "OPTIONS *",
        "CONNECT 127.0.0.1:22",
        "DELETE http://x/livez",
        "PUT /nope",
        "get /livez",
    ];
    for line in methods
        .iter()
        .map(|m| format!("{m} /livez"))
        .chain(odd_targets.iter().map(|l| l.to_string()))
    {
        let raw = format!("{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let r = request(addr, raw.as_bytes()).unwrap();
        assert_eq!(r.status, 405, "{line}");
        let allow = r.header("Allow").unwrap_or_default();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{line}: Allow {allow:?}"
        );
    }

    // The absolute form of a target (as a client sends to a proxy) is
    // served like its path; a target that is neither is a 400.
    for (target, want) in [
        ("http://127.0.0.1/livez", 200),
        ("HTTP://tbot:3001/livez?x=1", 200),
        ("http://tbot", 404),
        ("ftp://tbot/livez", 400),
        ("livez", 400),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let r = request(addr, raw.as_bytes()).unwrap();
        assert_eq!(r.status, want, "GET {target}: {}", r.body);
    }

    // A client that shuts down its sending side after the request (as
    // `nc -N` does) still gets its answer.
    for path in ["/livez", "/readyz", "/metrics", "/readyz/%zz"] {
        let mut s = connect(addr).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let resp = read_all(&mut s, Instant::now() + Duration::from_secs(5));
        let want = if path == "/readyz/%zz" { 400 } else { 200 };
        assert_eq!(status_of(&resp), Some(want), "{path} after a half-close");
    }
}

/// Runs the scenarios above against any server and prints what it measured;
/// for tests/bench/hostile_compare.sh, which sets HOSTILE_ADDR and
/// HOSTILE_PID (a Go peer or a running tbot). Asserts only that the server
/// lived and answered /livez afterwards.
#[test]
#[ignore = "a measurement for tests/bench/hostile_compare.sh"]
fn peer_comparison() {
    let addr: SocketAddr = std::env::var("HOSTILE_ADDR")
        .expect("set HOSTILE_ADDR")
        .parse()
        .expect("HOSTILE_ADDR: host:port");
    let pid: u32 = std::env::var("HOSTILE_PID")
        .expect("set HOSTILE_PID")
        .parse()
        .expect("HOSTILE_PID: a number");
    let t = Target { addr, pid };
    let name = std::env::var("HOSTILE_NAME").unwrap_or_else(|_| addr.to_string());
    let mut idle = Peak::default();
    idle.sample(t);
    println!(
        "{name}: at rest: threads {} RSS {:.1} MiB",
        idle.threads,
        idle.rss as f64 / MIB as f64
    );
    let s = siege(t, 300, 300);
    let lat: Vec<String> = s
        .probes
        .iter()
        .map(|(st, d)| format!("{}:{:.1}ms", st.unwrap_or(0), d.as_secs_f64() * 1e3))
        .collect();
    println!(
        "{name}: 300 slow clients ({} opened): /livez {} | peak threads {} RSS {:.1} MiB | closed by server within 3 s: {}",
        s.opened,
        lat.join(" "),
        s.peak.threads,
        s.peak.rss as f64 / MIB as f64,
        s.closed
    );
    for (what, run) in [
        ("100 MiB header line", huge_header_line as fn(Target) -> _),
        ("20000 header lines", many_header_lines),
    ] {
        let (status, wrote, rss) = run(t);
        println!(
            "{name}: {what}: status {status:?}, client wrote {:.1} MiB, peak RSS {:.1} MiB",
            wrote as f64 / MIB as f64,
            rss as f64 / MIB as f64
        );
    }
    for (what, raw) in [
        (
            "Content-Length 1e15",
            &b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n"[..],
        ),
        (
            "GET with a body that never comes",
            b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n",
        ),
        (
            "chunked garbage",
            b"POST /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
        ("TLS ClientHello", &client_hello()),
        ("bad request line", b"GET /livez\r\n\r\n"),
        (
            "/readyz/%zz",
            b"GET /readyz/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let (resp, took) = exchange(addr, raw, Duration::from_secs(12));
        println!(
            "{name}: {what}: status {:?} after {:.1} ms",
            status_of(&resp),
            took.as_secs_f64() * 1e3
        );
    }
    let mut s = connect(addr).expect("connect");
    let _ = s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = s.shutdown(Shutdown::Write);
    let resp = read_all(&mut s, Instant::now() + Duration::from_secs(5));
    println!(
        "{name}: /livez from a client that half-closes: {:?}",
        status_of(&resp)
    );
    let (status, took) = probe_livez(addr);
    println!("{name}: /livez afterwards: {status:?} in {took:?}");
    assert_eq!(status, Some(200), "{name} stopped serving");
}
