//! The open-file limit (issue 17, item 5), through the real binary: tbot
//! raises the soft RLIMIT_NOFILE to the hard one at start, so a
//! configuration that needs more descriptors than the soft limit runs; when
//! the hard limit itself is too low, the error names the limit.

mod common;
use common::*;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// A configuration with one identity output and `n` ssh-multiplexers
/// that use it. An identity output holds no descriptor between renewals;
/// a multiplexer holds its listener and its destination's inotify watch
/// for as long as it runs, so `n` of them need about `2n` descriptors.
fn multiplexers(dir: &TempDir, n: usize) -> String {
    let mut services = format!(
        "  - type: identity\n    name: id\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("id").display()
    );
    for i in 0..n {
        services += &format!(
            "  - type: ssh-multiplexer\n    name: mux{i}\n    identity: id\n    destination: {{type: directory, path: {}}}\n",
            dir.join(&format!("mux{i}")).display()
        );
    }
    config_text(
        dir.path(),
        "credential_ttl: 2h\nrenewal_interval: 1h\n",
        &services,
    )
}

/// `tbot start` with RLIMIT_NOFILE soft `soft`, hard `hard`.
fn command(dir: &TempDir, config: &str, soft: u64, hard: u64) -> std::process::Command {
    let mut cmd = Tbot::command_with(Path::new(BIN), dir, config, &[], &[]);
    limit_nofile(&mut cmd, soft, hard);
    cmd
}

/// The soft "Max open files" of `pid`, from /proc/PID/limits.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Sets the RLIMIT_NOFILE of the running `pid` (soft `soft`, hard `hard`),
/// as `prlimit --pid PID --nofile=SOFT:HARD` would.
fn set_nofile(pid: u32, soft: u64, hard: u64) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit(2) on our own child, with a valid struct.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_one() {
    let dir = TempDir::new("nofile-raise");
    let cfg = multiplexers(&dir, 40);
    let cmd = command(&dir, &cfg, 64, 4096);
    let mut t = Tbot::spawn_and_wait_addr(cmd, dir);
    let r = t.until("/readyz", Duration::from_secs(60), |r| r.status == 200);
    assert_eq!(r.status, 200);
    assert_eq!(soft_nofile(t.pid()), 4096);
    assert!(
        t.log().contains("raised the open-file limit"),
        "{}",
        t.log()
    );
    assert!(
        t.open_fds() > 64,
        "the case needs more than the soft limit: {}",
        t.open_fds()
    );
    let m = t.get("/metrics").body;
    assert!(m.contains("process_max_fds 4096"), "{m}");
    t.signal(libc::SIGTERM);
    assert_eq!(
        t.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

/// Under a hard limit of 64, 40 multiplexers cannot all get their
/// descriptors. A service that cannot is a service failure, not an exit:
/// tbot keeps serving (`/livez` 200), and each failing service's reason
/// names the limit and the knob (`LimitNOFILE=`).
#[test]
fn a_hard_limit_too_low_is_named() {
    let dir = TempDir::new("nofile-low");
    let cfg = multiplexers(&dir, 40);
    let cmd = command(&dir, &cfg, 64, 64);
    let mut t = Tbot::spawn_and_wait_addr(cmd, dir);
    let named = |r: &Resp| {
        let json: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        r.status == 503
            && json["services"].as_object().is_some_and(|all| {
                all.values().any(|s| {
                    let reason = s["reason"].as_str().unwrap_or("");
                    reason.contains("RLIMIT_NOFILE soft 64, hard 64")
                        && reason.contains("LimitNOFILE=")
                })
            })
    };
    let started = std::time::Instant::now();
    let r = t.until("/readyz", Duration::from_secs(30), named);
    assert!(named(&r), "{}\n{}", r.body, t.log());
    // Probes keep their answers while services fight over descriptors.
    for _ in 0..10 {
        assert_eq!(t.get("/livez").status, 200, "{}", t.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A service that cannot watch tries again after its poll interval
    // (250 ms), not at once: a busy retry would take the numbers every
    // other thread needs (it did: the CA check's watch flapped every few
    // milliseconds).
    let rewatches = t
        .log()
        .matches("watching the storage directory for CA key changes again")
        .count();
    let bound = started.elapsed().as_millis() / 250 + 1;
    assert!(
        rewatches as u128 <= bound,
        "{rewatches} > {bound}\n{}",
        t.log()
    );
    assert!(
        t.wait_exit(Duration::from_millis(500)).is_none(),
        "{}",
        t.log()
    );
    t.signal(libc::SIGTERM);
    assert_eq!(
        t.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0),
        "{}",
        t.log()
    );
}

#[test]
fn a_renewal_out_of_descriptors_names_the_limit() {
    let dir = TempDir::new("nofile-renewal");
    let services = format!(
        "  - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("out").display()
    );
    let cfg = config_text(
        dir.path(),
        "credential_ttl: 1m\nrenewal_interval: 300ms\n",
        &services,
    );
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    // The limit drops under tbot's feet to what it holds now: the next
    // renewal's first new descriptor fails with EMFILE.
    let open = t.open_fds() as u64;
    set_nofile(t.pid(), open, 4096);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let log = t.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("service=web") && l.contains("Too many open files"))
        {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < end,
            "no EMFILE in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        reason.contains(&format!("RLIMIT_NOFILE soft {open}, hard 4096")),
        "{reason}"
    );
}

/// Starts tbot with one identity output (it holds no descriptor between
/// renewals) and waits until it is quiet: its first output written, and
/// the count of open descriptors steady. Returns it and that count.
fn quiet_identity(tag: &str) -> (Tbot, usize) {
    quiet_identity_with(TempDir::new(tag), "", &[])
}

/// [`quiet_identity`] in `dir`, with `top` added to its tbot.yaml and
/// `env` set.
fn quiet_identity_with(dir: TempDir, top: &str, env: &[(&str, &str)]) -> (Tbot, usize) {
    let services = format!(
        "  - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("out").display()
    );
    let cfg = config_text(dir.path(), top, &services);
    let t = Tbot::start_with(dir, &cfg, &[], env);
    for needle in ["every service has reported", "identity output written"] {
        assert!(t.wait_log(needle, Duration::from_secs(20)), "{}", t.log());
    }
    // Quiet now: the next file tbot opens is the renewal's, in 20 min.
    let mut open = t.open_fds();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        match t.open_fds() {
            now if now == open => return (t, open),
            now => open = now,
        }
    }
}

/// One descriptor left: the client accepted on it, its request not sent
/// yet, must not be put out when the front's next accept(2) fails for want
/// of a descriptor with no one else waiting (Linux numbers the descriptor
/// before it looks for a client). It was: closed without a word.
#[test]
fn a_client_accepted_on_the_last_descriptor_is_served() {
    let (t, open) = quiet_identity("nofile-last");
    set_nofile(t.pid(), open as u64 + 1, 4096);
    let mut s = std::net::TcpStream::connect(t.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The front accepts it and turns again before the request comes.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, false).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    assert_eq!((r.status, r.body.as_str()), (200, "OK"), "{}", t.log());
}

/// Every descriptor in use (the limit lowered under tbot's feet to what it
/// holds, as when services have taken the rest): the front answers probes
/// on descriptors it holds in reserve, one after another, the first one on
/// a connection to its serving loop made on the reserve too (no request
/// came before); anything else is told why it is refused; everything is
/// served again once descriptors free up. Before the reserve, every request
/// got "503 ... out of file descriptors".
#[test]
fn probes_are_answered_when_every_descriptor_is_in_use() {
    let (t, open) = quiet_identity("nofile-probes");
    set_nofile(t.pid(), open as u64, 4096);
    for i in 0..20 {
        for path in ["/livez", "/readyz", "/readyz/web"] {
            let r = t.get(path);
            assert_eq!(r.status, 200, "probe {i}: {path}: {}\n{}", r.body, t.log());
        }
    }
    // A keep-alive probe on the reserve gives its descriptor back: its
    // connection closes after the answer.
    let raw = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n";
    let r = request(t.addr(), raw).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    assert_eq!(r.status, 200, "{}", t.log());
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    // The local debug socket too (`tbot status` asks there).
    for i in 0..5 {
        let mut s = std::os::unix::net::UnixStream::connect(t.dir.join("storage/debug.sock"))
            .unwrap_or_else(|e| panic!("debug socket: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let read = std::io::Read::read_to_string(&mut s, &mut answer);
        assert!(
            read.is_ok() && answer.starts_with("HTTP/1.1 200"),
            "debug socket, probe {i}: {read:?} {answer:?}\n{}",
            t.log()
        );
    }
    let r = t.get("/metrics");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("out of file descriptors"), "{}", r.body);
    // The probes gave every descriptor back: none is left open.
    assert!(
        t.open_fds() <= open + 2,
        "{} open, {open} before",
        t.open_fds()
    );
    set_nofile(t.pid(), 4096, 4096);
    let r = t.until("/metrics", Duration::from_secs(10), |r| r.status == 200);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Every descriptor in use: systemd's watchdog still gets its pings (one
/// notify socket for the process, made at start). With a socket made per
/// message, not one went out, and systemd would have killed a tbot that
/// still served.
#[test]
fn the_watchdog_is_pinged_when_every_descriptor_is_in_use() {
    let dir = TempDir::new("nofile-watchdog");
    let path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sock = path.display().to_string();
    // A ping every 100 ms (half of WATCHDOG_USEC).
    let env = [
        ("NOTIFY_SOCKET", sock.as_str()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let (t, open) = quiet_identity_with(dir, "", &env);
    set_nofile(t.pid(), open as u64, 4096);
    let mut buf = [0u8; 4096];
    // What was sent before the limit came down.
    notify.set_nonblocking(true).unwrap();
    while notify.recv(&mut buf).is_ok() {}
    notify.set_nonblocking(false).unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(1);
    let mut pings = 0;
    while std::time::Instant::now() < end {
        if let Ok(n) = notify.recv(&mut buf) {
            pings += usize::from(buf[..n].starts_with(b"WATCHDOG=1"));
        }
    }
    assert!(pings >= 5, "{pings} pings in 1 s\n{}", t.log());
    assert!(!t.log().contains("cannot notify systemd"), "{}", t.log());
}

/// Basic auth on every path: a probe with good credentials is answered when
/// every descriptor is in use (`diag-auth`, its thread and its socket pair,
/// starts with the front, not at the first check: it could not, then).
#[test]
fn an_authenticated_probe_is_answered_when_every_descriptor_is_in_use() {
    let dir = TempDir::new("nofile-auth");
    let hash = bcrypt::hash("pw", 4).unwrap();
    dir.write("web.yml", &format!("basic_auth_users:\n  ops: {hash}\n"));
    let (t, open) = quiet_identity_with(dir, "web_config_file: web.yml\n", &[]);
    set_nofile(t.pid(), open as u64, 4096);
    // "ops:pw"
    let raw = "GET /livez HTTP/1.1\r\nHost: t\r\nAuthorization: Basic b3BzOnB3\r\nConnection: close\r\n\r\n";
    let r = request(t.addr(), raw.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{}", t.log()));
    assert_eq!((r.status, r.body.as_str()), (200, "OK"), "{}", t.log());
}
