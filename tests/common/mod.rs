//! Shared helpers for integration tests: start the real `tbot` binary on a
//! free port in a temp dir, talk HTTP to it, clean up by PID.
//!
//! Use from a test file with `mod common;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
pub mod util;

pub const BIN: &str = env!("CARGO_BIN_EXE_tbot");

/// Whether this process runs as root (tests that need it say why they
/// skipped otherwise).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A FIFO at `path` (mode 0600), returned.
pub fn mkfifo(path: &Path) -> PathBuf {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path.to_path_buf()
}

/// A fresh directory under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "tbot-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Writes `text` to `name` in this dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal config: storage in `dir`, plus the given `services:` YAML
/// (already indented as list items, or empty).
pub fn config_text(dir: &Path, extra_top: &str, services: &str) -> String {
    let mut s = format!(
        "version: v2\nstorage: {{type: directory, path: {}}}\n{extra_top}",
        dir.join("storage").display()
    );
    if !services.is_empty() {
        s += "services:\n";
        s += services;
    }
    s
}

/// Sets RLIMIT_NOFILE (soft `soft`, hard `hard`) for `cmd` before it runs
/// its first instruction, as `prlimit --nofile=SOFT:HARD` would.
pub fn limit_nofile(cmd: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `services:` items for an identity output `id` in `id_dir` and an
/// ssh-multiplexer `mux` in `mux_dir` that uses it.
pub fn identity_and_mux(id_dir: &Path, mux_dir: &Path) -> String {
    format!(
        "  - type: identity\n    name: id\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n\
         \x20 - type: ssh-multiplexer\n    name: mux\n    identity: id\n    destination: {{type: directory, path: {}}}\n",
        id_dir.display(),
        mux_dir.display()
    )
}

/// A running tbot, killed (by PID) and reaped on drop.
pub struct Tbot {
    pub child: Child,
    pub addr: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    pub dir: TempDir,
}

impl Tbot {
    /// `tbot start -c <config> --diag-addr 127.0.0.1:0 <extra...>`, waiting
    /// until the log names the bound address.
    pub fn start(dir: TempDir, config: &str, extra: &[&str]) -> Tbot {
        Tbot::start_with(dir, config, extra, &[])
    }

    pub fn start_with(dir: TempDir, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Tbot {
        let cmd = Tbot::command(&dir, config, extra, env);
        Tbot::spawn_and_wait_addr(cmd, dir)
    }

    /// Like [`Tbot::start`], with RLIMIT_NOFILE (soft and hard) set to
    /// `nofile` before tbot runs its first instruction, as
    /// `prlimit --nofile=N:N tbot start ...` would.
    pub fn start_with_nofile(dir: TempDir, config: &str, nofile: u64) -> Tbot {
        Tbot::start_with_nofile_and_env(dir, config, nofile, &[])
    }

    /// [`Tbot::start_with_nofile`] with environment variables.
    pub fn start_with_nofile_and_env(
        dir: TempDir,
        config: &str,
        nofile: u64,
        env: &[(&str, &str)],
    ) -> Tbot {
        let mut cmd = Tbot::command(&dir, config, &[], env);
        limit_nofile(&mut cmd, nofile, nofile);
        Tbot::spawn_and_wait_addr(cmd, dir)
    }

    /// `tbot start -c <config written to dir> --diag-addr 127.0.0.1:0 <extra...>`.
    fn command(dir: &TempDir, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Command {
        Tbot::command_with(Path::new(BIN), dir, config, extra, env)
    }

    /// [`Tbot::command`] for another build of the binary (`bin`).
    pub fn command_with(
        bin: &Path,
        dir: &TempDir,
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let cfg = dir.write("tbot.yaml", config);
        let mut args: Vec<String> = vec!["start".into(), "-c".into(), cfg.display().to_string()];
        if !extra.iter().any(|a| a.starts_with("--diag-addr")) {
            args.extend(["--diag-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env_remove("TBOT_CONFIG_PATH")
            .env_remove("TBOT_DEBUG")
            .env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns `cmd` and waits until the log names the bound address.
    pub fn spawn_and_wait_addr(cmd: Command, dir: TempDir) -> Tbot {
        let mut t = Tbot::spawn(cmd, dir);
        let addr = t.wait_log_value(
            "diagnostics service listening",
            "addr",
            Duration::from_secs(10),
        );
        t.addr = addr.and_then(|a| a.parse().ok());
        t
    }

    /// Spawns any tbot command, capturing stderr into the log.
    pub fn spawn(mut cmd: Command, dir: TempDir) -> Tbot {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("start tbot");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TBOT_TEST_ECHO").is_some() {
                    eprintln!("[tbot] {line}");
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Tbot {
            child,
            addr: None,
            log,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap_or_else(|| {
            panic!(
                "tbot did not report a diagnostics address; log:\n{}",
                self.log()
            )
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The value of `key=` on the first log line containing `msg`.
    pub fn wait_log_value(&self, msg: &str, key: &str, timeout: Duration) -> Option<String> {
        if !self.wait_log(msg, timeout) {
            return None;
        }
        let log = self.log();
        let line = log.lines().find(|l| l.contains(msg))?;
        let v = line
            .split(' ')
            .find_map(|w| w.strip_prefix(&format!("{key}=")))?;
        Some(v.trim_matches('"').to_string())
    }

    pub fn get(&self, path: &str) -> Resp {
        get(self.addr(), path)
    }

    /// Polls `path` until `pred` holds (or panics after `timeout`).
    pub fn until(&self, path: &str, timeout: Duration, pred: impl Fn(&Resp) -> bool) -> Resp {
        let end = Instant::now() + timeout;
        loop {
            let r = self.get(path);
            if pred(&r) {
                return r;
            }
            if Instant::now() > end {
                panic!(
                    "condition on {path} not met in {timeout:?}; last: {} {}\nlog:\n{}",
                    r.status,
                    r.body,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit up to `timeout`; None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// VmRSS of the process in bytes.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:") * 1024
    }

    pub fn threads(&self) -> u64 {
        proc_status_kb(self.pid(), "Threads:")
    }

    /// The thread count once the process has settled: every service has
    /// reported (so the renewals' `deep-work` workers, started on the first
    /// job, are there) and the count has not moved for half a second. A
    /// baseline taken earlier counts threads still starting and makes a
    /// "no new threads" check fail by chance.
    pub fn settled_threads(&self) -> u64 {
        self.settled(Tbot::threads)
    }

    /// Descriptors once settled, as [`Tbot::settled_threads`] (the
    /// diagnostics front also takes its reserve of descriptors back 50 ms
    /// after it opens a connection to its serving loop).
    pub fn settled_fds(&self) -> usize {
        self.settled(|t| t.open_fds() as u64) as usize
    }

    /// `count` once every service has reported and it has held for half a
    /// second (at most 10 s more).
    fn settled(&self, count: impl Fn(&Tbot) -> u64) -> u64 {
        assert!(
            self.wait_log("every service has reported", Duration::from_secs(20)),
            "services never all reported:\n{}",
            self.log()
        );
        let end = Instant::now() + Duration::from_secs(10);
        let (mut last, mut same) = (count(self), 0);
        while same < 5 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            let now = count(self);
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// Descriptors the process holds now (panics if /proc cannot tell, so
    /// that a count compared with another is never a silent 0).
    pub fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .count()
    }
}

/// `go tool pprof -top FILE` (Debian's golang-go), with its home and
/// build cache under `home`: the whole output, whatever its status.
pub fn pprof_top(file: &Path, home: &Path) -> std::process::Output {
    Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(file)
        .env("HOME", home)
        .env("GOCACHE", home.join("gocache"))
        .output()
        .expect("go (Debian golang-go) must be installed: run tests/run-all.sh")
}

pub fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Drop for Tbot {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first, so tbot cleans up after itself (sockets, its
            // private directory); SIGKILL if it has not gone in 2 s.
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- tbot log ---\n{}", self.log());
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub raw_body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request, `Connection: close`, every step bounded by 10 s.
pub fn request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Resp> {
    request_timeout(addr, raw, Duration::from_secs(10))
}

pub fn request_timeout(addr: SocketAddr, raw: &[u8], timeout: Duration) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw)?;
    read_response(&mut s, raw.starts_with(b"HEAD "))
}

/// Reads one response: to the end of its Content-Length body (the server
/// may keep the connection open), or to end of stream without one.
pub fn read_response(s: &mut TcpStream, head_request: bool) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_response(&buf[..end + 4])?;
            if let Some(len) = head
                .header("Content-Length")
                .and_then(|l| l.parse::<usize>().ok())
            {
                let want = end + 4 + if head_request { 0 } else { len };
                while buf.len() < want {
                    let n = read_retrying(s, &mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.truncate(want);
                return parse_response(&buf);
            }
            s.read_to_end(&mut buf)?;
            return parse_response(&buf);
        }
        let n = read_retrying(s, &mut chunk)?;
        if n == 0 {
            return parse_response(&buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn parse_response(buf: &[u8]) -> std::io::Result<Resp> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {:?}", String::from_utf8_lossy(buf)),
        )
    };
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw_body = buf[end + 4..].to_vec();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&raw_body).to_string(),
        raw_body,
    })
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    request(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Runs `tbot ARGS...` to completion with a timeout; returns (status, stdout, stderr).
pub fn run_tbot(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("TBOT_CONFIG_PATH").env_remove("TBOT_DEBUG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tbot");
    let end = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.and_then(|s| s.code()), out, err)
}

#[allow(unused_imports)] // not every test file needs it
pub use util::{free_port, read_retrying};
