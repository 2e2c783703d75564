//! No wait on a peer is unbounded (issue 17, item 3), through the real
//! binary: a systemd notify socket whose reader never reads, a stderr pipe
//! nobody drains, a configuration path that is a FIFO nobody writes: in
//! each case the diagnostics service answers, renewals go on, and SIGTERM
//! ends tbot within seconds with status 0. And a resolver that never
//! answers (root: network and mount namespaces): SIGTERM during the
//! start-up lookup of a diagnostics host name exits 0 at once, and a
//! multiplexer target's lookup is given up after the dial timeout.

mod common;
use common::util::free_port;
use common::*;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn one_output(dir: &TempDir, every: &str) -> String {
    let services = format!(
        "  - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("out").display()
    );
    config_text(
        dir.path(),
        &format!("credential_ttl: 1m\nrenewal_interval: {every}\n"),
        &services,
    )
}

/// SIGTERM, then the exit status within `within` (panics if still running,
/// after killing it).
fn term_and_wait(t: &mut Tbot, within: Duration) -> std::process::ExitStatus {
    t.signal(libc::SIGTERM);
    match t.wait_exit(within) {
        Some(s) => s,
        None => {
            let _ = t.child.kill();
            let _ = t.child.wait();
            panic!(
                "tbot still running {within:?} after SIGTERM; log:\n{}",
                t.log()
            );
        }
    }
}

/// `/livez` answers 200 within a second, `n` times in a row.
fn livez_answers(addr: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let raw = b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let r = request_timeout(addr, raw, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("/livez #{i}: {e}"));
        assert_eq!(r.status, 200, "/livez #{i}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The certificate's bytes (empty before the first renewal).
fn cert(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("out/key-cert.pub")).unwrap_or_default()
}

/// Waits until the certificate changes from `before` (a renewal).
fn renewed(dir: &Path, before: &[u8], within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let now = cert(dir);
        if !now.is_empty() && now != before {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_notify_socket_that_is_never_read_holds_nothing() {
    let dir = TempDir::new("bw-notify");
    let path = dir.join("notify.sock");
    let reader = UnixDatagram::bind(&path).unwrap();
    // Fill its queue, as a notify reader that stopped reading would have.
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    while filler.send_to(b"X=1", &path).is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the queue never filled");
    }
    let cfg = one_output(&dir, "200ms");
    let sock = path.display().to_string();
    let mut t = Tbot::start_with(
        dir,
        &cfg,
        &[],
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "100000")],
    );
    assert!(
        t.wait_log("cannot notify systemd", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    livez_answers(t.addr(), 5);
    let dir_path = t.dir.path().to_path_buf();
    let before = cert(&dir_path);
    assert!(
        renewed(&dir_path, &before, Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let t0 = Instant::now();
    let status = term_and_wait(&mut t, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", t.log());
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(reader);
}

/// A pipe with the smallest buffer the kernel allows (one page): (read end,
/// write end).
fn small_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own; F_SETPIPE_SZ on one.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096);
        (r, w)
    }
}

#[test]
fn a_stderr_nobody_reads_holds_nothing() {
    let dir = TempDir::new("bw-stderr");
    let cfg = one_output(&dir, "200ms");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let notify = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    let sock = dir.join("notify.sock").display().to_string();
    // Under -d every watchdog ping (every 10 ms) is a log line: the page
    // of pipe fills within a second, and nothing ever reads it.
    let mut cmd = Tbot::command_with(
        Path::new(BIN),
        &dir,
        &cfg,
        &["--diag-addr", &addr, "-d"],
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "20000")],
    );
    let (_read_end, write_end) = small_pipe();
    cmd.stderr(Stdio::from(write_end));
    let mut t = Running(cmd.spawn().unwrap());
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    // Long enough for the pipe to fill many times over.
    let end = Instant::now() + Duration::from_secs(10);
    while get_opt(addr, "/livez").is_none() {
        assert!(
            Instant::now() < end,
            "the diagnostics service never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    livez_answers(addr, 5);
    let before = cert(dir.path());
    assert!(renewed(dir.path(), &before, Duration::from_secs(10)));
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(t.0.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = t.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    drop(notify);
}

/// A child killed (by PID) and reaped on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_opt(addr: std::net::SocketAddr, path: &str) -> Option<Resp> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    request_timeout(addr, raw.as_bytes(), Duration::from_secs(1)).ok()
}

/// A FIFO at `path`.
pub fn mkfifo(path: &Path) -> PathBuf {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path.to_path_buf()
}

#[test]
fn a_reload_from_a_fifo_nobody_writes_does_not_hold_sigterm() {
    let dir = TempDir::new("bw-fifo");
    let cfg_text = one_output(&dir, "1s");
    let fifo = mkfifo(&dir.join("tbot.fifo"));
    let writer = {
        let (fifo, text) = (fifo.clone(), cfg_text.clone());
        std::thread::spawn(move || std::fs::write(fifo, text).unwrap())
    };
    let mut cmd = Tbot::command_with(Path::new(BIN), &dir, "", &[], &[]);
    // `-c` again, later on the line: the FIFO, not the file written.
    cmd.args(["-c"]).arg(&fifo);
    let mut t = Tbot::spawn_and_wait_addr(cmd, dir);
    writer.join().unwrap();
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    // The reload opens the FIFO, and nobody writes it.
    t.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    livez_answers(t.addr(), 3);
    let t0 = Instant::now();
    let status = term_and_wait(&mut t, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", t.log());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

/// `tbot start` (config `cfg`, `extra` flags) in new network and mount
/// namespaces whose resolver never answers: a name server on a route that
/// drops every packet, asked with a long timeout, so getaddrinfo(3) waits
/// minutes. Root only.
fn start_with_a_silent_resolver(dir: TempDir, cfg: &str, extra: &[&str]) -> Tbot {
    let resolv = dir.write(
        "resolv.conf",
        "nameserver 10.255.255.1\noptions timeout:30 attempts:5\n",
    );
    let inner = Tbot::command_with(Path::new(BIN), &dir, cfg, extra, &[]);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--net", "--mount", "sh", "-c"])
        .arg(
            "ip link set lo up && ip route add 10.255.255.0/24 dev lo && \
             mount --bind \"$RESOLV\" /etc/resolv.conf && exec \"$0\" \"$@\"",
        )
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("RESOLV", &resolv)
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("NOTIFY_SOCKET");
    Tbot::spawn(cmd, dir)
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_name_lookup_that_never_answers_does_not_hold_sigterm() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (mount and network namespaces for a resolver that never answers)"
        );
        return;
    }
    let dir = TempDir::new("bw-lookup");
    let cfg = one_output(&dir, "1s");
    let extra = ["--diag-addr", "tbot-lookup.example:3001"];
    let mut t = start_with_a_silent_resolver(dir, &cfg, &extra);
    assert!(
        t.wait_log("configuration loaded", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    // tbot is now looking the diagnostics address up.
    std::thread::sleep(Duration::from_millis(500));
    assert!(t.child.try_wait().unwrap().is_none(), "{}", t.log());
    let t0 = Instant::now();
    let status = term_and_wait(&mut t, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", t.log());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn a_multiplexer_target_whose_lookup_never_answers_is_refused_in_time() {
    if !is_root() {
        eprintln!(
            "skipped: needs root (mount and network namespaces for a resolver that never answers)"
        );
        return;
    }
    use std::io::{Read, Write};
    let dir = TempDir::new("bw-mux-lookup");
    let services = identity_and_mux(&dir.join("id"), &dir.join("mux"));
    let cfg = config_text(dir.path(), "", &services);
    let t = start_with_a_silent_resolver(dir, &cfg, &[]);
    assert!(
        t.wait_log("ssh multiplexer listening", Duration::from_secs(20)),
        "{}",
        t.log()
    );
    let mut c = std::os::unix::net::UnixStream::connect(t.dir.join("mux/v1.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t0 = Instant::now();
    c.write_all(b"tbot-lookup.example:22\0").unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(
        answer.contains("resolving tbot-lookup.example: no answer within 10s"),
        "{answer:?}\n{}",
        t.log()
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}
