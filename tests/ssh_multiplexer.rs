//! The ssh-multiplexer service and `tbot ssh-multiplexer-proxy-command`,
//! through the real binary: raw clients on `v1.sock` against loopback TCP
//! servers of the test's own, fd passing, health and metrics.

mod common;
use common::util::{current_user, Metrics};
use common::*;

#[path = "support/mux_peers.rs"]
mod mux_peers;
use mux_peers::{echo_server, round_trip, ssh};

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ERROR_PREFIX: &str = "tbot ssh-multiplexer error: ";

/// A config with an identity output `id` and a multiplexer `mux` in `dir`.
fn mux_config(dir: &Path, mux_extra: &str) -> String {
    config_text(
        dir,
        "",
        &format!(
            "  - type: identity\n    name: id\n    principals: [{user}]\n    destination: {{type: directory, path: {id}}}\n\
             \x20 - type: ssh-multiplexer\n    name: mux\n    identity: id\n    destination: {{type: directory, path: {mux}}}\n{mux_extra}",
            user = current_user(),
            id = dir.join("id").display(),
            mux = dir.join("mux").display(),
        ),
    )
}

/// Starts tbot with `mux_config` and waits until `mux` is healthy.
fn start_mux(tag: &str, mux_extra: &str) -> (Tbot, PathBuf) {
    let dir = TempDir::new(tag);
    let cfg = mux_config(dir.path(), mux_extra);
    let socket = dir.join("mux").join("v1.sock");
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz/mux", Duration::from_secs(10), |r| r.status == 200);
    (t, socket)
}

/// The value of one sample line of /metrics (`name` with its labels).
fn metric(t: &Tbot, sample: &str) -> i64 {
    let body = t.get("/metrics").body;
    Metrics::parse(&body)
        .sample(sample)
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{body}")) as i64
}

const STARTED: &str = "tbot_ssh_multiplexer_requests_started_total";
const OK: &str = "tbot_ssh_multiplexer_requests_handled_total{status=\"OK\"}";
const ERROR: &str = "tbot_ssh_multiplexer_requests_handled_total{status=\"ERROR\"}";
const IN_FLIGHT: &str = "tbot_ssh_multiplexer_requests_in_flight";

/// Connects to the multiplexer and sends `request` (NUL included by the caller).
fn connect(socket: &Path, request: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    s
}

/// Everything the multiplexer answers before it closes.
fn answer(socket: &Path, request: &[u8]) -> String {
    let mut s = connect(socket, request);
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn wait_metric(t: &Tbot, sample: &str, want: i64) {
    let end = Instant::now() + Duration::from_secs(10);
    while metric(t, sample) != want {
        assert!(
            Instant::now() < end,
            "{sample} stayed {} (want {want})",
            metric(t, sample)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relays_with_half_close_and_refuses_bad_requests_with_a_reason() {
    let (t, socket) = start_mux("mux-relay", "    max_connections: 3\n");
    let dest = socket.parent().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dest), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let port = echo_server(b"");

    // A relay, with the optional cluster suffix and bytes sent right after
    // the NUL; then a half-close: our EOF reaches the server, which sends
    // its last bytes and closes.
    let mut s = connect(
        &socket,
        format!("127.0.0.1:{port}|cluster\0early").as_bytes(),
    );
    let mut early = [0u8; 5];
    s.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"early");
    round_trip(&mut s, b"hello");
    s.write_all(b"last words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "last words");
    drop(s);

    // Failures: one line to the client, then close.
    let refused = free_port();
    let long = [b'a'; 600];
    let cases: [(&[u8], &str); 6] = [
        (b"nonsense\0", "no port"),
        // A name that cannot resolve (RFC 2606 reserves .invalid).
        (b"nosuch.invalid:22\0", "resolving nosuch.invalid: "),
        (b"a|b|c:22\0", "more than two"),
        (&long, "request too long"),
        (b"127.0.0.1:0\0", "the port must be"),
        (
            format!("127.0.0.1:{refused}\0").leak().as_bytes(),
            "Connection refused",
        ),
    ];
    for (request, why) in cases {
        // A refused connection holds its slot until its client has closed.
        wait_metric(&t, IN_FLIGHT, 0);
        let out = answer(&socket, request);
        assert!(out.starts_with(ERROR_PREFIX), "{out:?}");
        assert!(out.contains(why), "{why:?} not in {out:?}");
        assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    }

    // max_connections: 3 held relays; a fourth is refused at once, not queued.
    wait_metric(&t, IN_FLIGHT, 0);
    let mut held: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut s = connect(&socket, format!("127.0.0.1:{port}\0").as_bytes());
            round_trip(&mut s, b"x");
            s
        })
        .collect();
    wait_metric(&t, IN_FLIGHT, 3);
    let started = Instant::now();
    let out = answer(&socket, format!("127.0.0.1:{port}\0").as_bytes());
    assert!(
        out.starts_with(ERROR_PREFIX) && out.contains("too many connections"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A slot freed is a slot usable again.
    drop(held.pop());
    wait_metric(&t, IN_FLIGHT, 2);
    let mut s = connect(&socket, format!("127.0.0.1:{port}\0").as_bytes());
    round_trip(&mut s, b"again");
    for s in held.iter_mut() {
        round_trip(s, b"still alive");
    }
    drop(s);
    drop(held);
    wait_metric(&t, IN_FLIGHT, 0);

    // 1 + 3 + 1 relays; 6 bad requests + 1 over the limit.
    assert_eq!(metric(&t, OK), 5);
    assert_eq!(metric(&t, ERROR), 7);
    assert_eq!(metric(&t, STARTED), 12);
    let r = t.get("/readyz/mux");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(t.log().contains("ssh multiplexer request failed"));
    assert!(t.log().contains("too many connections"));
    let m = t.get("/metrics").body;
    for help in [
        "# HELP tbot_ssh_multiplexer_requests_started_total ",
        "# HELP tbot_ssh_multiplexer_requests_handled_total ",
        "# HELP tbot_ssh_multiplexer_requests_in_flight ",
    ] {
        assert!(m.contains(help), "{help}");
    }
}

/// 64 KiB chunk `k` of a deterministic pseudo-random stream (splitmix64).
fn chunk(k: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK);
    for i in 0..(CHUNK as u64 / 8) {
        let mut z = (k * (CHUNK as u64 / 8) + i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}
const CHUNK: usize = 64 * 1024;

#[test]
fn a_100_mib_stream_arrives_intact_both_ways() {
    const CHUNKS: u64 = 1600; // 100 MiB
    let (t, socket) = start_mux("mux-bulk", "");
    let port = echo_server(b"");
    let mut s = connect(&socket, format!("127.0.0.1:{port}\0").as_bytes());
    let mut w = s.try_clone().unwrap();
    // Up (to the echo server) on one thread, down (back) on this one, at once.
    let writer = std::thread::spawn(move || {
        for k in 0..CHUNKS {
            w.write_all(&chunk(k)).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut k = 0u64;
    let mut total = 0u64;
    loop {
        let n = read_retrying(&mut s, &mut buf[filled..]).unwrap();
        if n == 0 {
            break;
        }
        filled += n;
        total += n as u64;
        if filled == CHUNK {
            assert!(buf == chunk(k), "chunk {k} differs after the round trip");
            k += 1;
            filled = 0;
        }
    }
    writer.join().unwrap();
    assert_eq!((total, filled), (CHUNKS * CHUNK as u64, 0));
    wait_metric(&t, IN_FLIGHT, 0);
    assert_eq!(metric(&t, OK), 1);
}

/// Receives one descriptor sent with SCM_RIGHTS (and its one data byte).
fn recv_fd(sock: &UnixStream) -> OwnedFd {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr pointing at locals that outlive the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        assert_eq!(n, 1, "recvmsg: {}", std::io::Error::last_os_error());
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null(), "no control message");
        assert_eq!(
            ((*cmsg).cmsg_level, (*cmsg).cmsg_type),
            (libc::SOL_SOCKET, libc::SCM_RIGHTS)
        );
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        OwnedFd::from_raw_fd(fd)
    }
}

/// Waits for `child` at most `timeout`; kills it (by PID) past that.
fn wait_child(child: &mut std::process::Child, timeout: Duration) -> std::process::Output {
    let end = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout).unwrap();
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut stderr).unwrap();
    }
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs the proxy command with stdout on one end of a socket pair, as ssh
/// does; returns (exit code, stderr, our end).
fn proxy_command(socket: &Path, target: &str) -> (Option<i32>, String, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new(BIN)
        .args(["ssh-multiplexer-proxy-command"])
        .arg(socket)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_child(&mut child, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err, ours)
}

#[test]
fn the_proxy_command_passes_its_connection_and_exits() {
    let (t, socket) = start_mux("mux-proxy", "");
    let port = echo_server(b"SSH-2.0-test\r\n");

    // Exits 0 once the descriptor is passed; the descriptor is the relay.
    let (status, err, ours) = proxy_command(&socket, &format!("127.0.0.1:{port}"));
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(err, "");
    let mut conn = UnixStream::from(recv_fd(&ours));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut banner = [0u8; 14];
    conn.read_exact(&mut banner).unwrap();
    assert_eq!(
        &banner, b"SSH-2.0-test\r\n",
        "the target's bytes, unconsumed"
    );
    round_trip(&mut conn, b"through the passed descriptor");
    drop(conn);

    // The multiplexer's refusal becomes the command's error, exit 1.
    let refused = free_port();
    let (status, err, _) = proxy_command(&socket, &format!("127.0.0.1:{refused}"));
    assert_eq!(status, Some(1));
    assert!(
        err.starts_with("tbot: ssh-multiplexer-proxy-command: connecting to 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");

    let (status, err, _) = proxy_command(&t.dir.join("nope.sock"), "127.0.0.1:22");
    assert_eq!(status, Some(1));
    assert!(
        err.contains("nope.sock: No such file or directory"),
        "{err}"
    );

    // Not run by ssh: stdout is not a socket.
    let (status, _, err) = run_tbot(
        &[
            "ssh-multiplexer-proxy-command",
            socket.to_str().unwrap(),
            &format!("127.0.0.1:{port}"),
        ],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(status, Some(1));
    assert!(err.contains("stdout is not a socket"), "{err}");

    wait_metric(&t, IN_FLIGHT, 0);
    assert_eq!((metric(&t, OK), metric(&t, ERROR)), (1, 1));
}

#[test]
fn sigterm_stops_within_2s_with_a_live_relay_and_removes_the_socket() {
    let (mut t, socket) = start_mux("mux-stop", "");
    let port = echo_server(b"");
    let mut s = connect(&socket, format!("127.0.0.1:{port}\0").as_bytes());
    round_trip(&mut s, b"live");
    let ssh_config = socket.with_file_name("ssh_config");
    assert!(ssh_config.exists());
    let started = Instant::now();
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        t.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!socket.exists(), "socket removed");
    assert!(ssh_config.exists(), "ssh_config stays");
}

/// Waits until service `name` is unhealthy; its reason.
fn unhealthy_reason(t: &Tbot, name: &str) -> String {
    let r = t.until(&format!("/readyz/{name}"), Duration::from_secs(10), |r| {
        r.status == 503 && r.json()["status"] == "unhealthy"
    });
    r.json()["reason"].as_str().unwrap().to_string()
}

#[test]
fn health_says_why_the_socket_cannot_be_bound_and_a_stale_one_is_replaced() {
    let dir = TempDir::new("mux-health");
    let file = dir.write("plain-file", "");
    // A destination too long for a socket path is refused at load now
    // (tests/consumer_limits.rs), so it is not among these.
    // The good one's socket is left over from a "crash": bound, never removed.
    std::fs::create_dir(dir.join("good")).unwrap();
    drop(UnixListener::bind(dir.join("good").join("v1.sock")).unwrap());
    let mux = |name: &str, path: &Path| {
        format!(
            "  - type: ssh-multiplexer\n    name: {name}\n    identity: id\n    destination: {{type: directory, path: {}}}\n",
            path.display()
        )
    };
    let services = format!(
        "  - type: identity\n    name: id\n    principals: [x]\n    destination: {{type: directory, path: {}}}\n{}{}",
        dir.join("id").display(),
        mux("good", &dir.join("good")),
        mux("under-file", &file.join("mux")),
    );
    let cfg = config_text(dir.path(), "", &services);
    let good_socket = dir.join("good").join("v1.sock");
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz/good", Duration::from_secs(10), |r| r.status == 200);
    assert!(t.log().contains("removed a stale ssh multiplexer socket"));
    assert!(UnixStream::connect(&good_socket).is_ok());

    let reason = unhealthy_reason(&t, "under-file");
    assert!(reason.ends_with("plain-file: not a directory"), "{reason}");

    // Retried (supervisor backoff), still failing for the same reason, and
    // the good one unaffected.
    assert!(t.wait_log("service failed; restarting", Duration::from_secs(5)));
    assert_eq!(t.get("/readyz/good").status, 200);

    // A socket deleted under the service is noticed and bound again.
    std::fs::remove_file(&good_socket).unwrap();
    assert!(t.wait_log(
        "the socket was removed or replaced",
        Duration::from_secs(10)
    ));
    let end = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&good_socket).is_err() {
        assert!(Instant::now() < end, "socket not bound again\n{}", t.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    t.until("/readyz/good", Duration::from_secs(5), |r| r.status == 200);
}

// ---------------------------------------------------------------------------
// Real OpenSSH through the multiplexer, with the bot's own identity output.

#[path = "support/sshd.rs"]
#[allow(dead_code)] // not every test uses every helper
mod sshd;

/// tbot with `id` and `mux` (see `mux_config`), once the identity output has
/// written its files, and an sshd trusting the bot's CA. Returns the
/// ssh_config the multiplexer wrote.
fn start_mux_and_sshd(tag: &str) -> (Tbot, sshd::Sshd, PathBuf) {
    let (t, socket) = start_mux(tag, "");
    let id = t.dir.join("id");
    t.until("/readyz/id", Duration::from_secs(20), |r| r.status == 200);
    for f in ["key", "key-cert.pub", "ssh_ca.pub"] {
        assert!(id.join(f).exists(), "identity output wrote no {f}");
    }
    // sshd re-reads TrustedUserCAKeys per login: give it its own copy.
    let trusted = t.dir.join("trusted_ca.pub");
    std::fs::copy(id.join("ssh_ca.pub"), &trusted).unwrap();
    let sshd = sshd::Sshd::start(&trusted);
    (t, sshd, socket.with_file_name("ssh_config"))
}

/// Command lines of every process whose arguments contain `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn ssh_reaches_a_real_sshd_through_the_multiplexer_and_no_helper_lives_on() {
    let (t, sshd, config) = start_mux_and_sshd("mux-sshd");
    let text = std::fs::read_to_string(&config).unwrap();
    let exe = std::fs::canonicalize(BIN).unwrap();
    assert!(
        text.contains(&format!(
            "ProxyCommand '{}' ssh-multiplexer-proxy-command '{}' %h:%p",
            exe.display(),
            config.with_file_name("v1.sock").display()
        )),
        "{text}"
    );
    assert!(text.contains("ProxyUseFdpass yes"), "{text}");
    let socket = config.with_file_name("v1.sock");
    let socket = socket.to_str().unwrap();

    let mut child = ssh(
        &config,
        sshd.port(),
        sshd.user(),
        "echo in-session; sleep 2; echo done",
    )
    .spawn()
    .unwrap();
    // Once the session runs, the proxy command has handed its socket over
    // and exited; the ssh client itself is visible to the same scan.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(
        line,
        "in-session\n",
        "ssh failed; sshd log:\n{}",
        sshd.log()
    );
    assert_eq!(
        metric(&t, IN_FLIGHT),
        1,
        "the session goes through the multiplexer"
    );
    let clients = processes_with(config.to_str().unwrap());
    assert!(clients.iter().any(|l| l.contains("ssh -F")), "{clients:?}");
    let helpers: Vec<String> = processes_with("ssh-multiplexer-proxy-command")
        .into_iter()
        .filter(|l| l.contains(socket))
        .collect();
    assert!(
        helpers.is_empty(),
        "proxy command still running: {helpers:?}"
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = wait_child(&mut child, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rest, "done\n");
    // The login used the bot's certificate (key id tbot/HOST/SERVICE).
    assert!(
        sshd.wait_for_log("-CERT SHA256:", Duration::from_secs(5)),
        "{}",
        sshd.log()
    );
    let log = sshd.log();
    assert!(
        log.contains("ID tbot/") && log.contains("/id (serial"),
        "{log}"
    );
    wait_metric(&t, IN_FLIGHT, 0);
    assert_eq!((metric(&t, STARTED), metric(&t, OK)), (1, 1));

    // A port nobody listens on: the multiplexer's reason reaches the user.
    let free = free_port();
    let out = ssh(&config, free, sshd.user(), "true").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "connecting to 127.0.0.1:{free}: Connection refused"
        )),
        "{err}"
    );
    // Counted once the connection is done (after its linger), which may be
    // just after ssh has exited.
    wait_metric(&t, ERROR, 1);
    assert_eq!(t.get("/readyz/mux").status, 200);
}

#[test]
fn fifty_concurrent_ssh_sessions_through_one_multiplexer() {
    const SESSIONS: usize = 50;
    let (t, sshd, config) = start_mux_and_sshd("mux-fifty");
    let (started0, ok0) = (metric(&t, STARTED), metric(&t, OK));
    let mut children: Vec<std::process::Child> = (0..SESSIONS)
        .map(|i| {
            ssh(
                &config,
                sshd.port(),
                sshd.user(),
                &format!("sleep 1; echo session-{i}"),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    let mut max_in_flight = 0;
    // 50 key exchanges and sshd forks: seconds on an idle machine, over a
    // minute with three suites sharing its 2 cores; the bound is for a hang.
    let end = Instant::now() + Duration::from_secs(240);
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) && Instant::now() < end {
        max_in_flight = max_in_flight.max(metric(&t, IN_FLIGHT));
        std::thread::sleep(Duration::from_millis(50));
    }
    let outs: Vec<std::process::Output> = children
        .iter_mut()
        .map(|c| wait_child(c, Duration::from_secs(1)))
        .collect();
    for (i, out) in outs.iter().enumerate() {
        assert!(
            out.status.success() && out.stdout == format!("session-{i}\n").as_bytes(),
            "session {i}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(max_in_flight > 0, "in_flight never seen above 0");
    wait_metric(&t, IN_FLIGHT, 0);
    assert_eq!(metric(&t, STARTED), started0 + SESSIONS as i64);
    assert_eq!(metric(&t, OK), ok0 + SESSIONS as i64);
    assert_eq!(metric(&t, ERROR), 0);
}

/// A loopback TCP server that hands every accepted connection to the test,
/// which decides what the target says and when (nothing, by default).
fn held_server() -> (u16, std::sync::mpsc::Receiver<std::net::TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn a_relay_ends_when_its_client_is_gone_even_if_the_target_stays_silent() {
    let (t, socket) = start_mux("mux-silent", "    max_connections: 1\n");
    let (port, accepted) = held_server();
    let request = format!("127.0.0.1:{port}\0");
    let next_target = || {
        let s = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };

    // A half-closed client still gets what the target sends later.
    let mut c = connect(&socket, request.as_bytes());
    let mut target = next_target();
    c.write_all(b"ping").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    target.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ping", "the client's EOF reaches the target");
    std::thread::sleep(Duration::from_millis(300));
    target.write_all(b"late reply").unwrap();
    let mut late = [0u8; 10];
    c.read_exact(&mut late).unwrap();
    assert_eq!(&late, b"late reply");
    // Then the client goes away altogether; the target neither writes nor
    // closes: the relay ends anyway and frees its slot.
    drop(c);
    wait_metric(&t, IN_FLIGHT, 0);

    // Closed at once (no half-close first), the target silent throughout.
    let c = connect(&socket, request.as_bytes());
    let mut target2 = next_target();
    wait_metric(&t, IN_FLIGHT, 1);
    drop(c);
    wait_metric(&t, IN_FLIGHT, 0);
    let mut rest = Vec::new();
    target2.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // The one slot serves the next client.
    let echo = echo_server(b"");
    let mut c = connect(&socket, format!("127.0.0.1:{echo}\0").as_bytes());
    round_trip(&mut c, b"next");
    drop(c);
    wait_metric(&t, IN_FLIGHT, 0);
    assert_eq!((metric(&t, OK), metric(&t, ERROR)), (3, 0));
    drop((target, target2));
}

/// What the multiplexer sends before it closes (or resets) the connection.
fn answer_until_closed(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match read_retrying(s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The open descriptors of process `pid` numbered below `limit`, each with
/// what it refers to (as `ls -l /proc/PID/fd` shows it).
fn fds_below(pid: u32, limit: u64) -> Vec<(u64, String)> {
    let mut fds: Vec<(u64, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u64>().ok()?;
            // Gone since the listing: closed, so not counted.
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.display().to_string()))
        })
        .filter(|(n, _)| *n < limit)
        .collect();
    fds.sort();
    fds
}

/// Waits (at most 10 s) until `pred` holds for tbot's descriptors below
/// `limit`; panics with them and `what` if it never does.
fn wait_fds(t: &Tbot, limit: u64, what: &str, pred: impl Fn(&[(u64, String)]) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = fds_below(t.pid(), limit);
        if pred(&fds) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: {} descriptors below {limit}: {fds:?}\n{}",
            fds.len(),
            t.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A relay through the multiplexer to the test's silent target, returned
/// once a byte has gone through: from then on it holds exactly four of
/// tbot's descriptors (the client's socket, the target's, and a duplicate
/// of each for the target → client thread) until one end goes away.
fn hold_relay(
    socket: &Path,
    port: u16,
    accepted: &std::sync::mpsc::Receiver<std::net::TcpStream>,
) -> (UnixStream, std::net::TcpStream) {
    let c = connect(socket, format!("127.0.0.1:{port}\0x").as_bytes());
    let mut target = accepted
        .recv_timeout(Duration::from_secs(10))
        .expect("the multiplexer dials the target");
    target
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut x = [0u8; 1];
    target.read_exact(&mut x).unwrap();
    assert_eq!(&x, b"x");
    (c, target)
}

/// Polling `s` for input.
fn pollfd_in(s: &UnixStream) -> libc::pollfd {
    libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// The soft and hard RLIMIT_NOFILE tbot runs under in the test below.
///
/// The arithmetic: at rest tbot holds 28 descriptors below the limit
/// (measured: stdio, the storage lock, the diagnostics listener, its socket
/// directory lock and its tiny_http socket, Unix socket pairs (among them
/// each service's stop signal), the /dev/null reserves (the diagnostics
/// front's six, the multiplexer's one), the multiplexer's listener,
/// destination handle and inotify watch, the clock-step timerfd, another
/// inotify watch, the storage and multiplexer directories' locks against
/// age-based cleaners) and a 29th number is taken unseen by tiny_http's
/// blocked accept; that leaves 22 counted free: three relays at 4 each
/// (stopping with at least 8 left), then waiting clients at 1 each, the
/// next refused. The test counts rather than trusts these figures. The
/// diagnostics front caps itself to 1 connection (`fit_to_fd_limit`), and
/// its probe room takes 4 more: enough for the test's HTTP requests, one
/// at a time.
const NOFILE: u64 = 50;

#[test]
fn out_of_descriptors_clients_are_refused_with_a_reason_and_the_warning_is_rate_limited() {
    const REASON: &str = "out of file descriptors; try again later";
    // Refused clients, in two bursts more than a second apart.
    const BURST: usize = 10;

    // The limit is in place from tbot's first instruction: every descriptor
    // it opens is numbered below it, and accept() fails with EMFILE exactly
    // when all NOFILE numbers are in use. Counting the open ones tells how
    // many are free, with no guessing about which numbers they have.
    let dir = TempDir::new("mux-emfile");
    let cfg = mux_config(dir.path(), "");
    // The multiplexer's cap is fitted to the open-file limit (ssh_multiplexer::budget),
    // which keeps relays from ever running tbot out of descriptors; this
    // test switches that off (a debug-build failpoint) to exercise what
    // happens when something does.
    let t = Tbot::start_with_nofile_and_env(
        dir,
        &cfg,
        NOFILE,
        &[("TBOT_FAILPOINTS", "mux-no-fd-budget=on")],
    );
    let socket = t.dir.join("mux").join("v1.sock");
    // Started and then quiet: no HTTP request (its descriptors close when
    // tbot gets to it), no file open (the heartbeat's first write has ended
    // before it reports healthy, the last one to; the next writes are the
    // renewal in 20 min and the heartbeat in 30): from here on only this
    // test's clients change tbot's descriptors.
    for needle in [
        "service=mux from=initializing to=healthy",
        "identity output written service=id",
        "every service has reported",
    ] {
        assert!(
            t.wait_log(needle, Duration::from_secs(20)),
            "no {needle:?} in the log:\n{}",
            t.log()
        );
    }
    let own_files = t.dir.path().display().to_string();
    // Held on purpose for tbot's whole life: the storage lock, and the
    // multiplexer's destination directory (it places the socket through
    // that handle); the storage and multiplexer directories also flocked
    // against age-based cleaners.
    let mux_dir = t.dir.join("mux").display().to_string();
    let storage_dir = t.dir.join("storage").display().to_string();
    wait_fds(&t, NOFILE, "a file of tbot's own stays open", |fds| {
        !fds.iter().any(|(_, f)| {
            f.starts_with(&own_files)
                && *f != mux_dir
                && *f != storage_dir
                && !f.ends_with("/storage/tbot.lock")
        })
    });
    // The count of open descriptors bounds the free ones from above, no
    // more: a thread blocked in accept(2) (tiny_http's, on its backend
    // socket) has taken a number that /proc shows only once a connection
    // comes.
    let free = NOFILE - fds_below(t.pid(), NOFILE).len() as u64;

    // Relays while at least 8 are counted free: setting one up takes a 5th
    // descriptor for a moment (the accept thread's spare duplicate of the
    // client's socket, closed before it accepts again), and a few may be
    // taken unseen.
    let relays = free.saturating_sub(8) / 4;
    assert!(
        relays >= 2,
        "only {free} descriptors free under {NOFILE}: {:?}",
        fds_below(t.pid(), NOFILE)
    );
    let (silent, accepted) = held_server();
    let held: Vec<_> = (0..relays)
        .map(|_| hold_relay(&socket, silent, &accepted))
        .collect();
    // Then one waiting client (no request yet: it holds just its accepted
    // socket, for up to the multiplexer's 10 s request deadline) per
    // descriptor still counted free. They take the ones truly free; any
    // beyond are refused, like every client after them. No accept can fail
    // before they are in: the warnings are counted from here.
    let started = Instant::now();
    let waiters: Vec<UnixStream> = (0..free - 4 * relays)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();

    // Every number below the limit is in use now and none frees up: each
    // client is refused with the reason. Each burst is connected first and
    // read after, so that it waits in the listen queue rather than behind
    // the accept loop's 100 ms back-off.
    let expect_refusal = |c: &mut UnixStream, what: &str| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The refusal may come (and the connection close) before this.
        let _ = c.write_all(b"127.0.0.1:1\0");
        let out = answer_until_closed(c);
        assert_eq!(
            out,
            format!("{ERROR_PREFIX}{REASON}\n"),
            "{what} ({:?} after the waiting clients)\n{}",
            started.elapsed(),
            t.log()
        );
    };
    let refuse_burst = |burst: usize| {
        let mut clients: Vec<UnixStream> = (0..BURST)
            .map(|_| UnixStream::connect(&socket).unwrap())
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            expect_refusal(c, &format!("burst {burst}, client {i}"));
        }
    };
    refuse_burst(1);
    // The listen queue is FIFO and the accept loop deals with one client
    // before the next: the burst's answers mean that each waiting client
    // has been accepted (nothing to read: it is waiting for its request) or
    // refused (the reason is there to read), those accepted first.
    let mut refused = 0;
    let mut waiting = Vec::new();
    for (i, mut w) in waiters.into_iter().enumerate() {
        let mut ready = [pollfd_in(&w)];
        // SAFETY: poll(2) on a valid pollfd array of length 1, no waiting.
        let n = unsafe { libc::poll(ready.as_mut_ptr(), 1, 0) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        if n == 0 {
            assert_eq!(refused, 0, "waiting client {i} accepted after a refusal");
            waiting.push(w);
        } else {
            expect_refusal(&mut w, &format!("waiting client {i}"));
            refused += 1;
        }
    }
    assert!(!waiting.is_empty(), "no waiting client was accepted");
    // The first warning came no later than the first refusal just read; the
    // second burst is accepted more than a second after that, so the
    // warning must be logged again (rate-limited, not silenced for good).
    std::thread::sleep(Duration::from_millis(1100));
    refuse_burst(2);
    refused += 2 * BURST;

    // The diagnostics port shares the process's descriptors: a probe is
    // still answered (on the front's reserve of descriptors), and anything
    // else gets a 503 that says why, not a reset or silence, even when it
    // reads its answer a while after it sent its request (no reset for the
    // unread request: a lingering close).
    let ask = |path: &str| {
        let mut s = std::net::TcpStream::connect(t.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        common::read_response(&mut s, false)
            .unwrap_or_else(|e| panic!("{path} with every descriptor in use: {e}\n{}", t.log()))
    };
    let probe = ask("/livez");
    assert_eq!(
        (probe.status, probe.body.as_str()),
        (200, "OK"),
        "/livez with every descriptor in use: {probe:?}\n{}",
        t.log()
    );
    let scrape = ask("/metrics");
    assert_eq!(
        (
            scrape.status,
            scrape.body.contains("out of file descriptors")
        ),
        (503, true),
        "/metrics with every descriptor in use: {scrape:?}\n{}",
        t.log()
    );

    // The log reaches the test through a pipe and a thread: wait (briefly:
    // the waiting clients' deadline runs) for the second warning. At most
    // one a second: n warnings at least a second apart span at least
    // n − 1 s, all of it between `started` and the last read.
    let count_warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("ssh multiplexer: accept failed") && l.contains("os error 24"))
            .count()
    };
    let end = Instant::now() + Duration::from_secs(3);
    while count_warnings(&t.log()) < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = t.log();
    let took = started.elapsed();
    let warnings = count_warnings(&log);
    eprintln!(
        "{free} counted free under {NOFILE}: {relays} relays, {} waiting, {refused} refused, {warnings} warnings in {took:?}",
        waiting.len()
    );
    assert!(
        (2..=took.as_secs() as usize + 1).contains(&warnings),
        "{warnings} warnings for {refused} refusals in {took:?}\n{log}"
    );

    // Descriptors back: the relays go, then the waiting clients, accepted
    // all along, send their requests and are served.
    drop(held);
    // The probe opened the front's kept connection to tiny_http, which
    // stays: its end, tiny_http's, and tiny_http's duplicate of it.
    const KEPT_CONNECTION: u64 = 3;
    let at_rest = NOFILE - free + waiting.len() as u64 + KEPT_CONNECTION;
    wait_fds(&t, NOFILE, "the relays' descriptors are not freed", |fds| {
        fds.len() as u64 <= at_rest
    });
    let echo = echo_server(b"");
    let served = relays + waiting.len() as u64;
    // One at a time, each relay ended before the next is dialed: a relay
    // takes 3 descriptors more than its waiting client holds, the relays
    // gone freed 4 each, and there are more waiting clients than that
    // covers (8 for 3 relays at 27 held at rest). tbot ends a relay on its
    // own threads after the client has gone, so the next client must not
    // be served before that is seen in /proc: served back to back, the
    // 4th or 5th found every number taken by the relays still ending
    // ("connecting to ...: Too many open files").
    for (i, mut w) in waiting.into_iter().enumerate() {
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        w.write_all(format!("127.0.0.1:{echo}\0").as_bytes())
            .unwrap();
        round_trip(&mut w, b"waited");
        // The end of the stream comes back through the relay (the echo
        // server half-closes after the client's EOF): both directions done.
        w.shutdown(Shutdown::Write).unwrap();
        let mut more = [0u8; 64];
        let end = read_retrying(&mut w, &mut more).map_err(|e| e.kind());
        assert_eq!(
            end,
            Ok(0),
            "waiting client {i}: no end of stream\n{}",
            t.log()
        );
        drop(w);
        let left = at_rest - (i as u64 + 1);
        wait_fds(&t, NOFILE, "a waiting client's relay does not end", |fds| {
            fds.len() as u64 <= left
        });
    }
    // Their relays have ended (4 descriptors each) before the next HTTP
    // request: until then the diagnostics port may still be out of
    // descriptors.
    wait_metric(&t, IN_FLIGHT, 0);
    // Each refusal counted once, as an ERROR; nothing else failed.
    assert_eq!(metric(&t, ERROR), refused as i64);
    assert_eq!(metric(&t, OK), served as i64);
    assert_eq!(metric(&t, STARTED), served as i64 + refused as i64);
    // A new client is served as before.
    let mut c = connect(&socket, format!("127.0.0.1:{echo}\0").as_bytes());
    round_trip(&mut c, b"descriptors again");
    drop(c);
    wait_metric(&t, IN_FLIGHT, 0);
    assert_eq!(metric(&t, OK), served as i64 + 1);

    // Healthy throughout: never restarted, never reported otherwise.
    assert_eq!(t.get("/readyz/mux").status, 200);
    let log = t.log();
    assert_eq!(
        log.matches("ssh multiplexer listening").count(),
        1,
        "the multiplexer restarted:\n{log}"
    );
    assert!(
        !log.contains("service=mux from=healthy"),
        "the multiplexer's health changed:\n{log}"
    );
}
