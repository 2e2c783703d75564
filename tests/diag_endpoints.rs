//! The diagnostics endpoints, through the real binary: codes, JSON shapes,
//! content types, /wait parking, metrics (checked by promtool).

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(extra_top: &str, env: &[(&str, &str)]) -> Tbot {
    let dir = TempDir::new("diag");
    let cfg = config_text(dir.path(), extra_top, "");
    Tbot::start_with(dir, &cfg, &[], env)
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && s.chars().filter(|c| c.is_ascii_digit()).count() == 14
}

#[test]
fn livez_readyz_shapes_and_content_types() {
    let t = start("", &[]);
    let r = t.get("/livez");
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));

    let r = t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["status"], "healthy");
    let hb = &v["services"]["heartbeat"];
    assert_eq!(hb["status"], "healthy");
    assert!(
        hb.get("reason").is_none(),
        "empty reason must be omitted: {hb}"
    );
    assert!(is_rfc3339_utc(hb["updated_at"].as_str().unwrap()), "{hb}");
    // Keys sorted, as in the seed.
    let keys: Vec<&String> = v["services"].as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let r = t.get("/readyz/heartbeat");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json()["status"], "healthy");
    // Percent-decoded names.
    assert_eq!(t.get("/readyz/heart%62eat").status, 200);
    assert_eq!(t.get("/readyz/%68eartbeat").json()["status"], "healthy");

    let r = t.get("/readyz/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "Service named \"nope\" not found."})
    );
    assert_eq!(t.get("/readyz/%zz").status, 400);
    assert_eq!(t.get("/readyz/%ff").status, 400);
}

#[test]
fn unknown_paths_methods_and_head() {
    let t = start("", &[]);
    let r = t.get("/nope");
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("/readyz") && r.body.contains("/metrics"),
        "{}",
        r.body
    );

    let r = request(t.addr(), b"POST /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    let r = request(t.addr(), b"DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 405);

    let r = request(t.addr(), b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.raw_body.is_empty(), "HEAD must not carry a body");

    // Without debug mode, /debug/pprof/ is just another unknown path.
    for p in [
        "/debug/pprof/",
        "/debug/pprof/profile?seconds=1",
        "/debug/pprof/flamegraph?seconds=1",
        "/debug/pprof/threads",
        "/debug/pprof/threads?format=json",
        "/debug/pprof/cmdline",
    ] {
        let r = t.get(p);
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.body, t.get("/nope").body, "{p}");
    }
}

#[test]
fn a_service_turns_unhealthy_with_a_reason_and_back() {
    let dir = TempDir::new("flap");
    // The heartbeat writes into storage; make storage a plain file and it
    // cannot, with the reason in the operator's words.
    let storage = dir.join("storage");
    let cfg = config_text(dir.path(), "heartbeat_interval: 200ms\n", "");
    std::fs::write(&storage, "not a directory").unwrap();
    let t = Tbot::start(dir, &cfg, &[]);

    let r = t.until("/readyz/heartbeat", Duration::from_secs(10), |r| {
        r.status == 503 && r.body.contains("unhealthy")
    });
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(&storage.display().to_string()), "{reason}");
    assert!(reason.ends_with(": not a directory"), "{reason}");
    let all = t.get("/readyz");
    assert_eq!(all.status, 503);
    assert_eq!(all.json()["status"], "unhealthy");
    let m = t.get("/metrics").body;
    assert!(
        m.contains(
            r#"tbot_service_health{service="heartbeat",status="unhealthy",type="heartbeat"} 1"#
        ),
        "{m}"
    );

    std::fs::remove_file(&storage).unwrap();
    let r = t.until("/readyz/heartbeat", Duration::from_secs(10), |r| {
        r.status == 200
    });
    assert!(r.json().get("reason").is_none());
    assert!(t.wait_log(
        "service status changed service=heartbeat from=unhealthy to=healthy",
        Duration::from_secs(2)
    ));
    // The heartbeat record: who, when, how long up, and every service.
    let record = std::fs::read_to_string(t.dir.join("storage/heartbeat.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert!(is_rfc3339_utc(v["time"].as_str().unwrap()), "{v}");
    assert!(!v["hostname"].as_str().unwrap().is_empty(), "{v}");
    assert!(
        v["uptime_seconds"].is_u64() && v["version"].is_string(),
        "{v}"
    );
    let services = v["services"].as_array().unwrap();
    let hb = services
        .iter()
        .find(|s| s["name"] == "heartbeat")
        .expect("heartbeat listed");
    assert_eq!(hb["type"], "heartbeat");
    // Its own entry is the write that made the record, not the failure
    // before it.
    assert_eq!(hb["status"], "healthy", "{v}");
    assert!(hb.get("reason").is_none(), "{v}");
    for name in ["identity", "ca-rotation"] {
        let s = services
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {v}"));
        assert!(s["status"].is_string(), "{s}");
    }
}

#[test]
fn wait_parks_without_blocking_other_requests() {
    // The heartbeat reports only after 3 s.
    let t = start("", &[("TBOT_FAILPOINTS", "heartbeat-start=sleep:3000")]);
    let addr = t.addr();
    assert_eq!(
        t.get("/readyz").json()["services"]["heartbeat"]["updated_at"],
        serde_json::Value::Null
    );

    let started = Instant::now();
    let waiter = std::thread::spawn(move || get(addr, "/wait"));
    let short = std::thread::spawn(move || get(addr, "/wait/heartbeat?timeout=500ms"));
    // While both are parked, the loop keeps serving.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..20 {
        let t0 = Instant::now();
        assert_eq!(get(addr, "/livez").status, 200);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "livez stalled behind /wait"
        );
    }
    let r = short.join().unwrap();
    assert_eq!(r.status, 503, "timed-out wait answers the current state");
    assert_eq!(r.json()["status"], "initializing");
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "/wait answered before the service reported"
    );
    assert_eq!(r.json()["services"]["heartbeat"]["status"], "healthy");

    // Once reported, /wait answers at once.
    let t0 = Instant::now();
    assert_eq!(t.get("/wait").status, 200);
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(t.get("/wait/nope").status, 404);
    assert_eq!(t.get("/wait?timeout=forever").status, 400);
}

#[test]
fn a_metrics_render_in_progress_holds_up_no_other_endpoint() {
    // Every /metrics render takes 5 s; -d logs each request as the serving
    // loop takes it.
    let dir = TempDir::new("diag-render");
    let cfg = config_text(dir.path(), "", "");
    let env = [("TBOT_FAILPOINTS", "metrics-render=sleep:5000")];
    let t = Tbot::start_with(dir, &cfg, &["-d"], &env);
    let addr = t.addr();
    let scraped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scrape = {
        let scraped = scraped.clone();
        std::thread::spawn(move || {
            let r = get(addr, "/metrics");
            scraped.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    };
    // The loop has the scrape: from here it renders for 5 s, on the loop
    // (then /livez waits) or off it.
    assert!(
        t.wait_log("path=/metrics", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let r = get(addr, "/livez");
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    let held = !scraped.load(std::sync::atomic::Ordering::SeqCst);
    let r = get(addr, "/readyz");
    assert!([200, 503].contains(&r.status), "{}", r.body);
    assert!(held, "/livez was answered only after the /metrics render");
    let r = scrape.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("process_threads"), "{}", r.body);
}

#[test]
fn metrics_pass_promtool_and_carry_tbot_series() {
    // An identity output and a multiplexer too, so that promtool sees every
    // label set the daemon exports.
    let dir = TempDir::new("diag-metrics");
    let services = format!(
        "  - type: identity\n    name: id\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n  - type: ssh-multiplexer\n    name: mux\n    identity: id\n    destination: {{type: directory, path: {}}}\n",
        dir.join("id").display(),
        dir.join("mux").display()
    );
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let r = t.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for want in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
        "process_start_time_seconds",
        "tbot_info{revision=\"",
        r#"tbot_service_health{service="heartbeat",status="healthy",type="heartbeat"} 1"#,
        r#"tbot_service_health{service="heartbeat",status="initializing",type="heartbeat"} 0"#,
        r#"tbot_task_iterations_total{name="heartbeat",service="heartbeat"} 1"#,
        r#"tbot_task_iterations_total{name="output-renewal",service="id"} 1"#,
        r#"tbot_task_iterations_failed_total{name="output-renewal",service="id"} 0"#,
        r#"tbot_service_health{service="mux",status="healthy",type="ssh-multiplexer"} 1"#,
        "tbot_ssh_multiplexer_requests_started_total 0",
        r#"tbot_ssh_multiplexer_requests_handled_total{status="ERROR"} 0"#,
        "tbot_ssh_multiplexer_requests_in_flight 0",
    ] {
        assert!(r.body.contains(want), "missing {want} in:\n{}", r.body);
    }
    // CPU time in fractions of a second, as Go reports it: a daemon that has
    // used less than a second already shows some (a whole-second counter,
    // as the prometheus crate's own collector keeps, would read 0).
    let cpu_seconds = |body: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no process_cpu_seconds_total in:\n{body}"))
    };
    for _ in 0..20 {
        t.get("/metrics");
    }
    let cpu = cpu_seconds(&t.get("/metrics").body);
    assert!(cpu > 0.0 && cpu < 30.0, "process_cpu_seconds_total {cpu}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: run tests/run-all.sh");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(&r.raw_body)
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_catches_broken_metrics() {
    // The check above is only worth something if promtool rejects bad input.
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("promtool");
    p.stdin
        .take()
        .unwrap()
        .write_all(b"# TYPE x counter\nx{ 1\n")
        .unwrap();
    assert!(!p.wait().unwrap().success());
}

/// Reads one response with a Content-Length body from `s`.
fn read_one(s: &mut std::net::TcpStream) -> Resp {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            read_retrying(s, &mut byte).unwrap(),
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = parse_response(&buf).unwrap();
    let len: usize = head.header("Content-Length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    buf.extend_from_slice(&body);
    parse_response(&buf).unwrap()
}

#[test]
fn http11_connections_are_kept_alive_and_pipelining_works() {
    use std::io::Read;
    let t = start("", &[]);
    let mut s = std::net::TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut s);
        assert_eq!((r.status, r.body.as_str()), (200, "OK"));
        assert!(r.header("Connection").is_none(), "{:?}", r.headers);
    }
    // Two requests in one write: two answers, in order.
    s.write_all(
        b"GET /readyz/heartbeat HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        read_one(&mut s).header("Content-Type"),
        Some("application/json")
    );
    assert_eq!(read_one(&mut s).status, 404);
    // `Connection: close` is honoured: the answer, then end of stream.
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_one(&mut s).status, 200);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    // HTTP/1.0 gets one answer and a close.
    let r = request(t.addr(), b"GET /livez HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
}

#[test]
fn abandoned_waits_do_not_pile_up() {
    // Nothing reports for 20 s, so every /wait parks; the clients leave at
    // once. Parked requests beyond the connection cap can only be abandoned
    // ones, and must be let go rather than hold a descriptor each.
    let dir = TempDir::new("abandon");
    let cfg = config_text(dir.path(), "diag_max_connections: 16\n", "");
    let t = Tbot::start_with(
        dir,
        &cfg,
        &[],
        &[("TBOT_FAILPOINTS", "heartbeat-start=sleep:20000")],
    );
    let base = t.open_fds();
    use std::os::fd::AsRawFd;
    for _ in 0..150 {
        let mut s = std::net::TcpStream::connect(t.addr()).unwrap();
        s.write_all(b"GET /wait?timeout=300s HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        // Let the request reach the serving loop, then leave with a reset
        // (SO_LINGER 0), which frees the front's slot at once.
        std::thread::sleep(Duration::from_millis(10));
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own socket with a valid struct.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.get("/livez").status, 200);
    let fds = t.open_fds();
    assert!(
        fds <= base + 16 + 8,
        "{fds} descriptors open (from {base}) after 150 abandoned /wait requests"
    );
}

#[test]
fn a_half_closing_client_gets_every_answer_it_pipelined() {
    use std::io::Read;
    let t = start("", &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let mut s = std::net::TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz/heartbeat HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
}

/// `updated_at` is the time of the service's last report (as in Go's tbot),
/// not of its last change: an output renewing every 300 ms stays healthy
/// and its time moves on.
#[test]
fn updated_at_follows_each_report_not_only_changes() {
    let dir = TempDir::new("diag-updated");
    let services = format!(
        "  - type: identity\n    name: id\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("id").display()
    );
    let cfg = config_text(
        dir.path(),
        "credential_ttl: 1m\nrenewal_interval: 300ms\n",
        &services,
    );
    let t = Tbot::start(dir, &cfg, &[]);
    let at = |t: &Tbot| {
        let r = t.until("/readyz/id", Duration::from_secs(10), |r| r.status == 200);
        r.json()["updated_at"].as_str().unwrap().to_string()
    };
    let first = at(&t);
    // RFC 3339 to the second: more than a second later, a later time.
    std::thread::sleep(Duration::from_millis(2100));
    let later = at(&t);
    assert!(
        is_rfc3339_utc(&later) && later > first,
        "{first} then {later}"
    );
    // The heartbeat, which has reported once, keeps its time.
    let hb = t.get("/readyz/heartbeat").json()["updated_at"].clone();
    assert!(hb.is_string(), "the heartbeat has reported: {hb}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(t.get("/readyz/heartbeat").json()["updated_at"], hb);
}
