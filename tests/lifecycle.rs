//! Start-up, supervision and shutdown, through the real binary.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn plain() -> (TempDir, String) {
    let dir = TempDir::new("life");
    let cfg = config_text(dir.path(), "", "");
    (dir, cfg)
}

fn stops_cleanly_on(sig: i32) {
    let (dir, cfg) = plain();
    let mut t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let pid = t.pid();
    let threads_before = t.threads();
    assert!(
        threads_before >= 4,
        "expected service and diagnostics threads, got {threads_before}"
    );
    let sent = Instant::now();
    t.signal(sig);
    let status = t
        .wait_exit(Duration::from_secs(2))
        .unwrap_or_else(|| panic!("pid {pid} still running 2 s after signal {sig}"));
    assert_eq!(status.code(), Some(0), "{}", t.log());
    assert!(sent.elapsed() < Duration::from_secs(2));
    let log = t.log();
    assert!(
        log.contains("stopping signal=") && log.contains("INFO  stopped"),
        "{log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
    // The private socket directory is gone (wherever it was made).
    let bases = [
        std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from),
        Some(std::env::temp_dir()),
    ];
    for base in bases.into_iter().flatten() {
        let leftover = std::fs::read_dir(&base)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("tbot-diag-{pid}-"))
            });
        assert!(
            !leftover,
            "diagnostics socket directory left behind in {}",
            base.display()
        );
    }
}

#[test]
fn sigterm_stops_everything_and_exits_0() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_stops_everything_and_exits_0() {
    stops_cleanly_on(libc::SIGINT);
}

#[test]
fn stops_promptly_even_while_a_wait_is_parked() {
    let dir = TempDir::new("life-wait");
    let cfg = config_text(dir.path(), "", "");
    let mut t = Tbot::start_with(
        dir,
        &cfg,
        &[],
        &[("TBOT_FAILPOINTS", "heartbeat-start=sleep:60000")],
    );
    let addr = t.addr();
    let parked = std::thread::spawn(move || {
        request(addr, b"GET /wait?timeout=60s HTTP/1.1\r\nHost: t\r\n\r\n")
    });
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGTERM);
    // The heartbeat thread sleeps in a failpoint and cannot stop in time:
    // tbot must exit anyway, within 2 s, and say so.
    let status = t
        .wait_exit(Duration::from_secs(2))
        .expect("exit within 2 s");
    assert_eq!(status.code(), Some(0));
    assert!(
        t.log()
            .contains("service did not stop in time; exiting anyway service=heartbeat"),
        "{}",
        t.log()
    );
    let _ = parked.join();
}

#[test]
fn a_busy_port_fails_the_start_before_any_service_runs() {
    let (dir, cfg) = plain();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cfg_path = dir.write("tbot.yaml", &cfg);
    let (code, _, err) = run_tbot(
        &[
            "start",
            "-c",
            &cfg_path.display().to_string(),
            "--diag-addr",
            &addr,
        ],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("diagnostics address {addr}: cannot listen"))
            && err.contains("Address already in use"),
        "{err}"
    );
    assert!(
        !err.contains("service status changed"),
        "a service ran: {err}"
    );
    assert!(!dir.join("storage/heartbeat.json").exists());
}

#[test]
fn no_listener_unless_configured() {
    let (dir, cfg) = plain();
    let cfg_path = dir.write("tbot.yaml", &cfg);
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["start", "-c", &cfg_path.display().to_string()])
        .stdin(std::process::Stdio::null());
    let t = Tbot::spawn(cmd, dir);
    assert!(
        t.wait_log(
            "service status changed service=heartbeat",
            Duration::from_secs(10)
        ),
        "{}",
        t.log()
    );
    assert!(!t.log().contains("diagnostics service listening"));
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    // No socket of ours in LISTEN state: check our fds' inodes against listeners.
    let listen_inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"0A"))
                .then(|| f.get(9).map(|s| s.to_string()))
                .flatten()
        })
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", t.pid())).unwrap();
    for fd in fds.filter_map(Result::ok) {
        let target = std::fs::read_link(fd.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            assert!(
                !listen_inodes.iter().any(|i| i == inode),
                "tbot listens on TCP without diag_addr"
            );
        }
    }
}

#[test]
fn warns_when_listening_beyond_loopback() {
    let (dir, cfg) = plain();
    let t = Tbot::start(dir, &cfg, &["--diag-addr", "0.0.0.0:0"]);
    assert!(
        t.log()
            .contains("WARN  the diagnostics service listens on a non-loopback address"),
        "{}",
        t.log()
    );
    let port = t.addr().port();
    assert_eq!(
        get(format!("127.0.0.1:{port}").parse().unwrap(), "/livez").status,
        200
    );
}

#[test]
fn a_panicking_service_is_reported_and_restarted_while_the_rest_runs() {
    let dir = TempDir::new("panic");
    let cfg = config_text(dir.path(), "heartbeat_interval: 100ms\n", "");
    // The heartbeat panics on its first iteration only.
    let t = Tbot::start_with(dir, &cfg, &[], &[("TBOT_FAILPOINTS", "heartbeat=panic:1")]);
    let r = t.until("/readyz/heartbeat", Duration::from_secs(10), |r| {
        r.status == 503 && r.body.contains("panicked")
    });
    assert_eq!(r.json()["reason"], "panicked: injected fault at heartbeat");
    assert_eq!(t.get("/livez").status, 200, "the process must survive");
    assert!(
        t.log()
            .contains("service failed; restarting service=heartbeat"),
        "{}",
        t.log()
    );
    // Restarted after the 1 s backoff, healthy again, same process.
    t.until("/readyz/heartbeat", Duration::from_secs(5), |r| {
        r.status == 200
    });
    let mut t = t;
    assert!(matches!(t.child.try_wait(), Ok(None)), "the process exited");
    // The backoff, by the log's own clock: the panic at T, healthy at T+1 s.
    let log = t.log();
    let at = |needle: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {log}"));
        // `2026-01-01T12:34:56.789Z ...`: the time of day is enough here.
        let (h, m, s) = (&line[11..13], &line[14..16], &line[17..23]);
        h.parse::<f64>().unwrap() * 3600.0
            + m.parse::<f64>().unwrap() * 60.0
            + s.parse::<f64>().unwrap()
    };
    let backoff =
        at("from=unhealthy to=healthy") - at("service failed; restarting service=heartbeat");
    assert!(
        (0.9..5.0).contains(&backoff),
        "restarted after {backoff:.3}s, not after the 1 s backoff"
    );
    let m = t.get("/metrics").body;
    assert!(m.contains(
        r#"tbot_service_health{service="heartbeat",status="healthy",type="heartbeat"} 1"#
    ));
}

#[test]
fn tells_systemd_ready_then_stopping() {
    let (dir, cfg) = plain();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sp = sock_path.display().to_string();
    let mut t = Tbot::start_with(
        dir,
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", &sp),
            ("TBOT_FAILPOINTS", "heartbeat-start=sleep:2000"),
        ],
    );
    let mut buf = [0u8; 256];
    // The heartbeat reports only after 2 s: no READY before that.
    let early = Instant::now() + Duration::from_millis(1500);
    while let Some(left) = early
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        sock.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        assert!(
            buf[..n].starts_with(b"STATUS="),
            "READY=1 before every service had reported"
        );
    }
    let v = t.get("/readyz").json();
    assert_eq!(v["services"]["heartbeat"]["status"], "initializing", "{v}");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // STATUS= lines (tests/systemd.rs) come and go in between.
    let mut recv = |what: &str| loop {
        let n = sock.recv(&mut buf).expect(what);
        if !buf[..n].starts_with(b"STATUS=") {
            return buf[..n].to_vec();
        }
    };
    assert_eq!(recv("READY=1 datagram"), b"READY=1");
    assert_eq!(t.get("/readyz/heartbeat").status, 200);
    t.signal(libc::SIGTERM);
    assert_eq!(
        recv("STOPPING=1 datagram"),
        b"STOPPING=1\nSTATUS=stopping on SIGTERM"
    );
    assert_eq!(
        t.wait_exit(Duration::from_secs(2)).and_then(|s| s.code()),
        Some(0)
    );
}

/// Dependencies' `log` records are tbot log lines at their level: tiny_http
/// says at debug level where its server listens.
#[test]
fn dependency_log_records_are_tbot_lines() {
    let dir = TempDir::new("life-bridge");
    let cfg = config_text(dir.path(), "debug: true\n", "");
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    assert!(
        t.wait_log("Server listening on", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let log = t.log();
    let line = log
        .lines()
        .find(|l| l.contains("Server listening on"))
        .unwrap_or_default();
    assert!(
        line.contains("DEBUG") && line.contains("from=tiny_http"),
        "{line}"
    );
}
