//! The local debug socket (issue 18 §3; Teleport RFD 0167) through the
//! real binary: its access rule (mode 0600 and `SO_PEERCRED`: a peer of
//! another UID, made with `setpriv`, is refused and logged), what it serves
//! with no `diag_addr` and no `-d`, `tbot status` (lines and exit codes),
//! the log level set at runtime, the live log stream and a follower that
//! never reads, and `tbot debug profile` read by `go tool pprof`.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config_text, run_tbot, Tbot, TempDir, BIN};

const IDENTITY: &str = "  - type: identity\n    name: out1\n    principals: [deploy]\n    destination: {type: directory, path: OUT}\n";

/// `tbot start -c <dir>/tbot.yaml` with `services` (OUT: a path in the
/// dir) and `extra` flags, no `--diag-addr`; waits for the debug socket.
fn start(tag: &str, services: &str, extra: &[&str]) -> (Tbot, PathBuf) {
    start_with(tag, "", services, extra)
}

/// [`start`] with `top` added to tbot.yaml's top level.
fn start_with(tag: &str, top: &str, services: &str, extra: &[&str]) -> (Tbot, PathBuf) {
    let dir = TempDir::new(tag);
    let services = services.replace("OUT", &dir.join("out1").display().to_string());
    let cfg = dir.write("tbot.yaml", &config_text(dir.path(), top, &services));
    let mut cmd = Command::new(BIN);
    cmd.arg("start")
        .arg("-c")
        .arg(&cfg)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("TBOT_DEBUG")
        .env_remove("NOTIFY_SOCKET");
    let t = Tbot::spawn(cmd, dir);
    assert!(
        t.wait_log("debug socket listening", Duration::from_secs(10)),
        "no debug socket; log:\n{}",
        t.log()
    );
    (t, cfg)
}

/// The TCP address tbot logged it listens on (`--diag-addr 127.0.0.1:0`).
fn tcp_addr(t: &Tbot) -> std::net::SocketAddr {
    t.wait_log_value(
        "diagnostics service listening",
        "addr",
        Duration::from_secs(5),
    )
    .expect("no diagnostics address in the log")
    .parse()
    .expect("a socket address")
}

fn sock(t: &Tbot) -> PathBuf {
    t.dir.join("storage/debug.sock")
}

/// One request on the debug socket (`Connection: close`); the whole answer.
fn ask(sock: &Path, head: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{head}Host: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(sock: &Path, path: &str) -> String {
    ask(sock, &format!("GET {path} HTTP/1.1\r\n"))
}

/// `tbot ARGS -c cfg`: (exit code, stdout, stderr).
fn client(cfg: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    let cfg = cfg.display().to_string();
    all.extend(["-c", &cfg]);
    run_tbot(&all, &[], Duration::from_secs(60))
}

/// The socket serves /readyz, /metrics and /debug/pprof/ with no
/// `diag_addr` and no `-d` (before this change no diagnostics service ran
/// at all without `diag_addr`), is mode 0600, and goes when tbot stops;
/// over TCP the debug endpoints stay 404 without `-d`.
#[test]
fn the_socket_serves_the_endpoints_without_diag_addr_or_debug_mode() {
    let (mut t, _) = start("dbgsock-serve", IDENTITY, &[]);
    let s = sock(&t);
    assert_eq!(std::fs::metadata(&s).unwrap().mode() & 0o777, 0o600);
    let r = get(&s, "/wait?timeout=10s");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = get(&s, "/readyz");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("\"out1\""),
        "{r}"
    );
    let r = get(&s, "/metrics");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("tbot_info"),
        "{r}"
    );
    let r = get(&s, "/debug/pprof/");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("profile"),
        "{r}"
    );
    assert!(
        !t.log().contains("diagnostics service listening"),
        "no TCP port was asked for"
    );
    t.signal(libc::SIGTERM);
    assert!(t.wait_exit(Duration::from_secs(5)).is_some());
    assert!(!s.exists(), "the socket outlived tbot");
}

#[test]
fn over_tcp_the_debug_endpoints_still_need_debug_mode() {
    let (t, _) = start("dbgsock-tcp", "", &["--diag-addr", "127.0.0.1:0"]);
    let addr = tcp_addr(&t);
    assert_eq!(common::get(addr, "/wait").status, 200);
    for path in ["/debug/pprof/", "/status", "/log-level"] {
        assert_eq!(common::get(addr, path).status, 404, "{path}");
        assert!(get(&sock(&t), path).starts_with("HTTP/1.1 200"), "{path}");
    }
    assert_eq!(common::get(addr, "/debug/logs").status, 404);
    // The front's mark to the serving loop (`X-Tbot-Route`, which says
    // "local") is the front's alone: a TCP client that writes one, or the
    // older `X-Tbot-Local`, is routed as any TCP client.
    for forged in [
        "X-Tbot-Route: 6 local",
        "X-Tbot-Route: - local",
        "X-Tbot-Local: 1",
    ] {
        for path in ["/debug/pprof/", "/status"] {
            let raw =
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n{forged}\r\nConnection: close\r\n\r\n");
            let r = common::request(addr, raw.as_bytes()).unwrap();
            assert_eq!(r.status, 404, "{path} with {forged}");
        }
    }
}

/// One answer read off `s` (by its `Content-Length`): the head and body.
fn read_answer(s: &mut UnixStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "{buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// The front's own answers on the socket (`/log-level`) keep a keep-alive
/// connection open and say so: no `Connection: close` on an answer after
/// which the connection stays, and the next request on it is answered.
#[test]
fn the_log_level_answer_keeps_a_keep_alive_connection() {
    let (t, _) = start("dbgsock-keep", "", &[]);
    let mut s = UnixStream::connect(sock(&t)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /log-level HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (head, body) = read_answer(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.contains("Connection:"), "{head}");
    assert_eq!(body.trim(), "info");
    write!(
        s,
        "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (head, body) = read_answer(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    assert_eq!(body, "OK");
}

/// Only tbot's user and root: a peer of another UID gets no further than
/// the socket's mode; with the mode opened, the peer-credential check
/// refuses it (403) and logs it. Needs root for `setpriv`.
#[test]
fn a_peer_of_another_uid_is_refused_and_logged() {
    if !rustix_is_root() {
        eprintln!("skipped: needs root to run a peer as another user with setpriv");
        return;
    }
    let (t, cfg) = start("dbgsock-uid", "", &[]);
    let s = sock(&t);
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .env_remove("TBOT_CONFIG_PATH")
            .output()
            .expect("setpriv (util-linux)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // The tests' temp dirs are reachable by others; the storage too.
    std::fs::set_permissions(t.dir.join("storage"), PermissionsExt::from_mode(0o755)).unwrap();
    let (code, err) = as_nobody(&["status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&s.display().to_string()) && err.contains("permission denied"),
        "{err}"
    );
    // Past the mode: the credentials decide.
    std::fs::set_permissions(&s, PermissionsExt::from_mode(0o666)).unwrap();
    let (code, err) = as_nobody(&["debug", "log-level", "debug"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("403"), "{err}");
    assert!(
        t.wait_log(
            "refused a peer of another user uid=65534",
            Duration::from_secs(5)
        ),
        "{}",
        t.log()
    );
    // Nothing changed, and root is still served.
    let (code, out, err) = client(&cfg, &["debug", "log-level"]);
    assert_eq!((code, out.trim()), (Some(0), "info"), "{err}");
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `tbot status`: one line per service, exit 0 when all are healthy;
/// exit 1 with the reason when one is not; colour only on a terminal;
/// once tbot is gone, exit 1 with where it looked and why.
#[test]
fn status_lines_and_exit_codes() {
    let (mut t, cfg) = start("dbgsock-status", IDENTITY, &[]);
    get(&sock(&t), "/wait?timeout=10s");
    let (code, out, err) = client(&cfg, &["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE") && lines[0].contains("CERTIFICATE"),
        "{out}"
    );
    let out1 = lines.iter().find(|l| l.starts_with("out1 ")).expect(&out);
    assert!(
        out1.contains("identity") && out1.contains("healthy"),
        "{out1}"
    );
    assert!(out1.contains("59m") && out1.contains("left"), "{out1}");
    for name in ["identity", "heartbeat", "ca-rotation"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{name} "))),
            "{out}"
        );
    }
    assert!(!out.contains('\x1b'), "colour on a pipe: {out:?}");
    // On a terminal (script(1) gives it one), the status is coloured.
    let tty = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} status -c {}", cfg.display()),
            "/dev/null",
        ])
        .output()
        .expect("script (util-linux)");
    let tty = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.contains("\x1b[32mhealthy\x1b[0m"), "{tty:?}");

    t.signal(libc::SIGTERM);
    t.wait_exit(Duration::from_secs(5));
    let (code, _, err) = client(&cfg, &["status"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&sock(&t).display().to_string()) && err.contains("no such file"),
        "{err}"
    );
    // A socket left behind with nobody listening says so.
    drop(std::os::unix::net::UnixListener::bind(sock(&t)).unwrap());
    let (_, _, err) = client(&cfg, &["status"]);
    assert!(err.contains("nobody listening"), "{err}");
}

#[test]
fn status_exits_1_naming_the_unhealthy_service_and_its_reason() {
    // A destination no one can make.
    let services = IDENTITY.replace("OUT", "/proc/tbot-test-no-such-dir/out1");
    let (t, cfg) = start("dbgsock-unhealthy", &services, &[]);
    get(&sock(&t), "/wait?timeout=10s");
    let end = Instant::now() + Duration::from_secs(20);
    let (code, out) = loop {
        let (code, out, _) = client(&cfg, &["status"]);
        if out.contains("unhealthy") || Instant::now() > end {
            break (code, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, Some(1), "{out}");
    let line = out.lines().find(|l| l.starts_with("out1 ")).expect(&out);
    assert!(
        line.contains("unhealthy") && line.contains("out1"),
        "{line}"
    );
    assert!(line.split_whitespace().count() > 5, "no reason: {line}");
}

/// The level is read and set at runtime: debug lines appear once it is
/// debug, and stop once it is info again (no restart, no reload).
#[test]
fn the_log_level_changes_at_runtime() {
    let (t, cfg) = start("dbgsock-level", "", &[]);
    let s = sock(&t);
    let debug_lines = |t: &Tbot| t.log().matches("DEBUG diagnostics request").count();
    get(&s, "/livez");
    assert_eq!(debug_lines(&t), 0);
    let (code, out, err) = client(&cfg, &["debug", "log-level"]);
    assert_eq!((code, out.trim()), (Some(0), "info"), "{err}");
    let (code, out, err) = client(&cfg, &["debug", "log-level", "DEBUG"]);
    assert_eq!((code, out.trim()), (Some(0), "debug"), "{err}");
    get(&s, "/livez");
    assert!(t.wait_log(
        "DEBUG diagnostics request method=GET path=/livez",
        Duration::from_secs(5)
    ));
    let (code, out, _) = client(&cfg, &["debug", "log-level", "info"]);
    assert_eq!((code, out.trim()), (Some(0), "info"));
    let before = debug_lines(&t);
    for _ in 0..5 {
        get(&s, "/livez");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(debug_lines(&t), before, "{}", t.log());
    assert!(t
        .log()
        .contains("log level changed at runtime from=debug to=info"));
    // A bad level is a usage error, and the bot refuses one too.
    let (code, _, _) = client(&cfg, &["debug", "log-level", "loud"]);
    assert_eq!(code, Some(2));
    let r = ask(
        &s,
        "PUT /log-level HTTP/1.1\r\nContent-Length: 4\r\n\r\nloud",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

/// `tbot debug logs` follows the live lines at its level; a follower that
/// never reads is dropped once its socket is full, tbot's serving does not
/// wait for it, and the reading follower keeps getting lines.
#[test]
fn a_log_follower_that_never_reads_is_dropped_and_slows_nothing() {
    let (mut t, cfg) = start("dbgsock-follow", "", &[]);
    let s = sock(&t);
    // A follower that reads: the real command.
    let mut follower = Command::new(BIN)
        .args(["debug", "logs", "--level", "debug", "-c"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follower_out = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = follower_out.read_to_string(&mut all);
        all
    });
    // One that never reads.
    let mut stuck = UnixStream::connect(&s).unwrap();
    stuck
        .write_all(b"GET /debug/logs?level=debug HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(t.wait_log("log follower joined", Duration::from_secs(5)));
    // Many debug lines: a request each, on one kept connection.
    let mut c = UnixStream::connect(&s).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut buf = vec![0u8; 4096];
    for i in 0..3000 {
        let t0 = Instant::now();
        write!(c, "GET /livez?n={i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let n = c
            .read(&mut buf)
            .expect("an answer while a follower is stuck");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        slowest = slowest.max(t0.elapsed());
    }
    eprintln!(
        "3000 requests in {:?}, slowest {slowest:?}",
        started.elapsed()
    );
    assert!(
        t.wait_log("log follower dropped", Duration::from_secs(5)),
        "the stuck follower was kept; log tail:\n{}",
        &t.log()[t.log().len().saturating_sub(2000)..]
    );
    // Bounded on a loaded 2-core box: a blocked write would hang here.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest request {slowest:?}"
    );
    // The stuck one's stream ends: what was written, then the close.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    stuck
        .read_to_end(&mut got)
        .expect("the dropped follower's stream ends");
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // The reading follower is still there and saw the last requests.
    get(&s, "/livez?last");
    std::thread::sleep(Duration::from_millis(300));
    // tbot stops: the stream ends, and the command says so (exit 1).
    t.signal(libc::SIGTERM);
    t.wait_exit(Duration::from_secs(5));
    let end = Instant::now() + Duration::from_secs(10);
    while follower.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = follower.kill();
    let code = follower.wait().unwrap().code();
    let mut err = String::new();
    follower
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the log stream from") && err.contains("ended"),
        "{err}"
    );
    let all = reader.join().unwrap();
    assert!(
        all.contains("path=/livez") && all.contains("log follower dropped"),
        "{}",
        &all[..all.len().min(500)]
    );
    assert!(all.contains("DEBUG diagnostics request method=GET path=/livez"));
    // Followers made debug lines for themselves only: stderr stayed at info.
    assert!(!t.log().contains("DEBUG diagnostics request"));
}

/// `tbot debug profile` writes a CPU profile that `go tool pprof` reads.
#[test]
fn debug_profile_is_read_by_go_tool_pprof() {
    let (t, cfg) = start("dbgsock-profile", "", &[]);
    let file = t.dir.join("cpu.pb");
    let out = Command::new(BIN)
        .args(["debug", "profile", "--seconds", "1", "-c"])
        .arg(&cfg)
        .stdout(std::fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pprof = common::pprof_top(&file, t.dir.path());
    let text = String::from_utf8_lossy(&pprof.stdout);
    assert!(
        pprof.status.success() && text.contains("Type: cpu"),
        "{text}{}",
        String::from_utf8_lossy(&pprof.stderr)
    );
}

/// Basic auth on the TCP port (web_config_file) does not apply to the
/// debug socket, whose rule is the peer's user: over TCP /readyz is 401
/// without credentials, over the socket 200, and `tbot status` works.
/// (Checked to fail with the front judging local peers as TCP ones: 401.)
#[test]
fn basic_auth_on_the_port_does_not_gate_the_debug_socket() {
    let dir = TempDir::new("dbgsock-auth-web");
    let hash = bcrypt::hash("s3cret", 5).unwrap();
    let web = dir.write(
        "web.yml",
        &format!("basic_auth_users:\n  prometheus: {hash}\n"),
    );
    let top = format!("web_config_file: {}\n", web.display());
    let (t, cfg) = start_with("dbgsock-auth", &top, "", &["--diag-addr", "127.0.0.1:0"]);
    let addr = tcp_addr(&t);
    assert_eq!(common::get(addr, "/readyz").status, 401);
    let r = get(&sock(&t), "/wait?timeout=10s");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let (code, out, err) = client(&cfg, &["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, _) = client(&cfg, &["debug", "log-level"]);
    assert_eq!((code, out.trim()), (Some(0), "info"));
}
