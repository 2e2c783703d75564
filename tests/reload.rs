//! Configuration reload on SIGHUP, through the real binary:
//! add/remove/change/keep in one reload, bad files that change nothing,
//! `diag_addr` moves, debug mode toggles, no leak over 200 reloads nor from
//! a diagnostics service that a reload stops, systemd's
//! RELOADING=1/READY=1, and SIGHUP/SIGPIPE never killing tbot.
//! The SSH-session and relay-drain cases are in tests/reload_mux.rs.

mod common;
use common::util::{current_user, free_port, Metrics};
use common::*;

#[path = "support/reload.rs"]
#[allow(dead_code)]
mod reload_support;
use reload_support::{identity_as as identity, reload, rewrite, start, start_without_flag, tid_of};

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OK: &str = "tbot_config_last_reload_successful";
const WHEN: &str = "tbot_config_last_reload_success_timestamp_seconds";

fn metrics(t: &Tbot) -> Metrics {
    Metrics::parse(&t.get("/metrics").body)
}

fn services_of(r: &Resp) -> Vec<String> {
    let mut names: Vec<String> = r.json()["services"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn one_reload_adds_removes_changes_and_keeps_services() {
    let dir = TempDir::new("reload-diff");
    let d = dir.path().to_path_buf();
    let me = current_user();
    let old = config_text(
        &d,
        "debug: true\n",
        &[
            identity(&d, "keep", &me),
            identity(&d, "gone", &me),
            identity(&d, "change", &me),
        ]
        .concat(),
    );
    let t = start(dir, &old, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let keep_tid = tid_of(&t, "keep");
    let keep_updated = t.get("/readyz/keep").json()["updated_at"].clone();
    assert!(keep_updated.is_string());
    let gone_tid = tid_of(&t, "gone");
    let cert = d.join("change").join("key-cert.pub");
    let old_cert = std::fs::read(&cert).unwrap();
    assert!(metrics(&t)
        .0
        .keys()
        .any(|(_, l)| l.get("service").map(String::as_str) == Some("gone")));

    let new = config_text(
        &d,
        "debug: true\n",
        &[
            identity(&d, "keep", &me),
            identity(&d, "change", &format!("{me}, other")),
            identity(&d, "added", &me),
        ]
        .concat(),
    );
    rewrite(&t, &new);
    let line = reload(&t);
    assert!(
        line.contains("configuration reloaded")
            && line.contains("added=added")
            && line.contains("removed=gone")
            && line.contains("changed=change")
            && line.contains("kept=ca-rotation,heartbeat,identity,keep"),
        "{line}"
    );
    // Kept: the same thread, the same row.
    assert_eq!(tid_of(&t, "keep"), keep_tid);
    assert_eq!(t.get("/readyz/keep").json()["updated_at"], keep_updated);
    // Removed: no row, no thread, no series.
    assert_eq!(t.get("/readyz/gone").status, 404);
    let threads = t.get("/debug/pprof/threads?format=json").json();
    assert!(
        !threads
            .as_array()
            .unwrap()
            .iter()
            .any(|th| th["name"] == "gone" || th["tid"] == gone_tid),
        "{threads}"
    );
    let body = t.get("/metrics").body;
    assert!(!body.contains("service=\"gone\""), "{body}");
    // Added and changed: they run and report; the changed one re-issued.
    let r = t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    assert_eq!(
        services_of(&r),
        [
            "added",
            "ca-rotation",
            "change",
            "heartbeat",
            "identity",
            "keep"
        ]
    );
    assert_ne!(
        std::fs::read(&cert).unwrap(),
        old_cert,
        "change did not re-issue"
    );
    let m = metrics(&t);
    assert_eq!(m.sample(OK), Some(1.0));
    assert_eq!(
        m.get(
            "tbot_service_health",
            &[
                ("service", "added"),
                ("type", "identity"),
                ("status", "healthy")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn a_bad_file_changes_nothing_and_the_next_good_one_applies() {
    let dir = TempDir::new("reload-bad");
    let d = dir.path().to_path_buf();
    let me = current_user();
    let good = config_text(&d, "", &identity(&d, "one", &me));
    let t = start(dir, &good, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let started_at = metrics(&t).sample(WHEN).unwrap();
    assert_eq!(metrics(&t).sample(OK), Some(1.0));
    let file = t.dir.join("tbot.yaml").display().to_string();
    // debug: true too: a failed reload must not switch debug logs on.
    let other_storage = config_text(
        &d.join("elsewhere"),
        "debug: true\n",
        &identity(&d, "one", &me),
    );
    let bad = [
        // A syntax error: an unclosed flow mapping.
        (format!("{good}  - {{type: identity\n"), format!("{file}:")),
        // An unknown key, at line 3 column 1.
        (
            good.replace("services:", "colour: blue\nservices:"),
            format!("{file}:3:1: unknown field `colour`"),
        ),
        // A reserved name.
        (
            good.replace("name: one", "name: heartbeat"),
            format!("{file}:5:11:"),
        ),
        // What cannot change live.
        (other_storage, "a restart is needed".to_string()),
    ];
    for (text, want) in &bad {
        rewrite(&t, text);
        let line = reload(&t);
        assert!(line.contains("configuration reload failed"), "{line}");
        assert!(line.contains(want.as_str()), "want {want:?} in: {line}");
        let m = metrics(&t);
        assert_eq!(m.sample(OK), Some(0.0), "{line}");
        assert_eq!(m.sample(WHEN), Some(started_at));
        let r = t.get("/readyz");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            services_of(&r),
            ["ca-rotation", "heartbeat", "identity", "one"]
        );
    }
    // Every request is a debug line in debug mode: none may show.
    t.get("/readyz");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t.log().contains(" DEBUG "), "{}", t.log());
    rewrite(&t, &config_text(&d, "", &identity(&d, "two", &me)));
    let line = reload(&t);
    assert!(
        line.contains("added=two") && line.contains("removed=one"),
        "{line}"
    );
    let m = metrics(&t);
    assert_eq!(m.sample(OK), Some(1.0));
    assert!(m.sample(WHEN).unwrap() > started_at);
}

fn answers(addr: SocketAddr) -> bool {
    request_timeout(
        addr,
        b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .is_ok_and(|r| r.status == 200)
}

#[test]
fn diag_addr_moves_and_a_busy_port_fails_the_reload() {
    let dir = TempDir::new("reload-diag");
    let d = dir.path().to_path_buf();
    let at = |port: u16, debug: bool| {
        config_text(
            &d,
            &format!("diag_addr: 127.0.0.1:{port}\ndebug: {debug}\n"),
            "",
        )
    };
    let first = free_port();
    let t = start_without_flag(dir, &at(first, false), &[]);
    let first_addr: SocketAddr = format!("127.0.0.1:{first}").parse().unwrap();
    assert_eq!(t.addr(), first_addr);
    assert_eq!(t.get("/debug/pprof/").status, 404);

    let second = free_port();
    let second_addr: SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();
    rewrite(&t, &at(second, true));
    let line = reload(&t);
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(answers(second_addr));
    assert!(!answers(first_addr), "the old port still answers");
    // debug: true turned /debug/pprof/ on.
    assert_eq!(get(second_addr, "/debug/pprof/").status, 200);

    // A port in use: the reload fails, nothing moves, debug stays on.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    rewrite(&t, &at(busy_port, false));
    let line = reload(&t);
    assert!(line.contains("configuration reload failed"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{busy_port}")), "{line}");
    assert!(answers(second_addr));
    assert_eq!(get(second_addr, "/debug/pprof/").status, 200);
    let m = Metrics::parse(&get(second_addr, "/metrics").body);
    assert_eq!(m.sample(OK), Some(0.0));

    // Same port, debug off: the endpoints go.
    rewrite(&t, &at(second, false));
    assert!(reload(&t).contains("configuration reloaded"));
    assert_eq!(get(second_addr, "/debug/pprof/").status, 404);
    let m = Metrics::parse(&get(second_addr, "/metrics").body);
    assert_eq!(m.sample(OK), Some(1.0));
}

#[test]
fn a_diagnostics_service_that_a_reload_stops_leaves_no_thread_or_descriptor() {
    // Each service runs tiny_http: an accept thread, four workers and a
    // listening socket. A stopped one must take them with it (the health
    // table kept its state alive, and its socket went before tiny_http
    // could wake its accept thread through it: five threads and a
    // descriptor per stop, for good).
    let dir = TempDir::new("reload-diag-stop");
    let d = dir.path().to_path_buf();
    let with = config_text(&d, &format!("diag_addr: 127.0.0.1:{}\n", free_port()), "");
    let without = config_text(&d, "", "");
    let t = start_without_flag(dir, &with, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let (threads, fds) = (t.threads(), t.settled_fds());
    let before = fd_targets(t.pid());
    for _ in 0..3 {
        for text in [&without, &with] {
            rewrite(&t, text);
            let line = reload(&t);
            assert!(line.contains("configuration reloaded"), "{line}");
        }
    }
    assert_eq!(t.get("/readyz").status, 200);
    // tiny_http's idle workers end 5 s after their pool does.
    let end = Instant::now() + Duration::from_secs(20);
    while t.threads() > threads || t.open_fds() > fds {
        assert!(
            Instant::now() < end,
            "{} threads (from {threads}), {} descriptors (from {fds}) after three stops\nbefore: {before:?}\nafter: {:?}",
            t.threads(),
            t.open_fds(),
            fd_targets(t.pid())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What each descriptor of `pid` leads to (`/proc/PID/fd/N` read as a
/// link), by number.
fn fd_targets(pid: u32) -> Vec<(u32, String)> {
    let dir = format!("/proc/{pid}/fd");
    let mut all: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse().ok()?;
            let to = std::fs::read_link(e.path()).ok()?;
            Some((n, to.display().to_string()))
        })
        .collect();
    all.sort();
    all
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len() as f64
}

#[test]
fn two_hundred_reloads_under_load_fail_no_request_and_leak_nothing() {
    let dir = TempDir::new("reload-200");
    let d = dir.path().to_path_buf();
    let me = current_user();
    let a = config_text(&d, "", &identity(&d, "a", &me));
    let b = config_text(
        &d,
        "heartbeat_interval: 10m\n",
        &[identity(&d, "a", &me), identity(&d, "b", &me)].concat(),
    );
    let t = start(dir, &a, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let addr = t.addr();

    // Light load: one client, a /readyz every 10 ms. Every answer must be a
    // whole one for one of the two sets, never a mix.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, served, bad) = (stop.clone(), served.clone(), bad.clone());
        std::thread::spawn(move || {
            let sets: [&[&str]; 2] = [
                &["a", "ca-rotation", "heartbeat", "identity"],
                &["a", "b", "ca-rotation", "heartbeat", "identity"],
            ];
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let raw = b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
                match request(addr, raw) {
                    Ok(r) if matches!(r.status, 200 | 503) => {
                        let names = services_of(&r);
                        if !sets.iter().any(|s| names == *s) {
                            failures.push(format!("a mixed set: {names:?}"));
                        }
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e.to_string()),
                }
                served.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            bad.store(failures.len(), Ordering::Relaxed);
            failures
        })
    };

    let (mut threads, mut fds, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 0..200 {
        rewrite(&t, if i % 2 == 0 { &b } else { &a });
        let line = reload(&t);
        assert!(
            line.contains("configuration reloaded"),
            "reload {i}: {line}"
        );
        // Sample after each reload back to `a`, once its services have settled.
        if i % 2 == 1 {
            t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
            threads.push(t.threads());
            fds.push(t.open_fds() as u64);
            rss.push(t.rss_bytes());
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:?}",
        bad.load(Ordering::Relaxed)
    );
    assert!(served.load(Ordering::Relaxed) > 100, "too little load");
    // First and last 20 samples (of 100, each after a reload back to `a`).
    let (first, last) = (0..20, 80..100);
    eprintln!(
        "200 reloads in {took:?}; threads {:?} -> {:?}; fds {:?} -> {:?}; rss {:?} -> {:?}",
        &threads[first.clone()],
        &threads[last.clone()],
        &fds[first.clone()],
        &fds[last.clone()],
        mean(&rss[first.clone()]),
        mean(&rss[last.clone()])
    );
    assert!(mean(&threads[last.clone()]) <= mean(&threads[first.clone()]) + 0.5);
    // The diagnostics front keeps up to 3 connections to tiny_http (two
    // descriptors each, both ends in this process), opened as the load
    // needs them, at any point of the run: up to 6 more, once. A leak of
    // one descriptor per reload would add 100 or more.
    assert!(
        mean(&fds[last.clone()]) <= mean(&fds[first.clone()]) + 1.0 + 6.0,
        "{fds:?}"
    );
    // RSS: allocator noise allowed, growth per reload not (200 reloads that
    // leaked even 8 KiB each would add 1.6 MiB).
    assert!(
        mean(&rss[last]) <= mean(&rss[first]) + 1024.0 * 1024.0,
        "RSS grew"
    );
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The next datagram that is not `STATUS=` or `WATCHDOG=` (the health line
/// and the watchdog have their own tests).
fn next_state(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).expect("a datagram within the timeout");
        let s = String::from_utf8_lossy(&buf[..n]).to_string();
        if !s.starts_with("STATUS=") && !s.starts_with("WATCHDOG=") {
            return s;
        }
    }
}

#[test]
fn systemd_hears_reloading_then_ready() {
    let dir = TempDir::new("reload-notify");
    let d = dir.path().to_path_buf();
    let sock_path = d.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = config_text(&d, "", &identity(&d, "one", &current_user()));
    let notify = sock_path.display().to_string();
    let t = start(dir, &cfg, &[("NOTIFY_SOCKET", &notify)]);
    assert_eq!(next_state(&sock), "READY=1");

    rewrite(&t, &cfg.replace("name: one", "name: two"));
    let before = monotonic_usec();
    t.signal(libc::SIGHUP);
    let reloading = next_state(&sock);
    let after = monotonic_usec();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "{before} <= {usec} <= {after}"
    );
    assert_eq!(next_state(&sock), "READY=1");
    assert!(t.wait_log("configuration reloaded", Duration::from_secs(5)));

    // A failed reload: the same two, and a STATUS= line that says so.
    rewrite(&t, "version: v2\nnot yaml: [\n");
    t.signal(libc::SIGHUP);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.last().map(String::as_str) != Some("READY=1") {
        let n = sock.recv(&mut buf).expect("READY=1 after a failed reload");
        let s = String::from_utf8_lossy(&buf[..n]).to_string();
        if !s.starts_with("WATCHDOG=") {
            got.push(s);
        }
    }
    assert!(
        got[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{got:?}"
    );
    assert!(
        got.iter().any(|s| s.starts_with("STATUS=")
            && s.contains("; reload failed, running the previous configuration: ")),
        "{got:?}"
    );
}

#[test]
fn sighup_and_sigpipe_never_kill_tbot() {
    let dir = TempDir::new("reload-signals");
    let cfg = config_text(dir.path(), "", "");
    let mut t = start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    // The same file: a reload that keeps everything.
    let line = reload(&t);
    assert!(
        line.contains("configuration reloaded")
            && line.contains("added=\"\"")
            && line.contains("kept=ca-rotation,heartbeat,identity"),
        "{line}"
    );
    // A burst: pending SIGHUPs coalesce; none kills.
    for _ in 0..20 {
        t.signal(libc::SIGHUP);
    }
    t.signal(libc::SIGPIPE);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        t.wait_exit(Duration::from_millis(100)).is_none(),
        "tbot died"
    );
    assert_eq!(t.get("/livez").status, 200);
    assert_eq!(t.get("/readyz").status, 200);
    // SIGTERM still stops it cleanly.
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(3)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_restarted_heartbeat_keeps_counting_the_daemons_uptime() {
    let dir = TempDir::new("reload-heartbeat");
    let d = dir.path().to_path_buf();
    let cfg = config_text(&d, "", "");
    let t = start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let record = d.join("storage").join("heartbeat.json");
    let written = std::fs::metadata(&record).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(2200));
    rewrite(&t, &config_text(&d, "heartbeat_interval: 1m\n", ""));
    assert!(reload(&t).contains("changed=heartbeat"));
    t.until("/readyz/heartbeat", Duration::from_secs(20), |r| {
        r.status == 200
    });
    assert_ne!(
        std::fs::metadata(&record).unwrap().modified().unwrap(),
        written
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(json["uptime_seconds"].as_u64().unwrap() >= 2, "{json}");
}
