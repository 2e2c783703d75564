//! Integration-test harness: a real OpenSSH `sshd` on a free loopback port.
//!
//! Include it from an integration test (each file in `tests/` is its own
//! crate, so no `mod.rs` is needed):
//!
//! ```ignore
//! #[path = "support/sshd.rs"]
//! #[allow(dead_code)] // not every test uses every helper
//! mod sshd;
//! ```
//!
//! [`Sshd::start`] runs `/usr/sbin/sshd -D -e -f <config>` as the current
//! user (root or not) with a freshly generated host key in its own temp dir,
//! trusting the given CA public key file (`TrustedUserCAKeys`) and nothing
//! else: no authorized_keys, no passwords, no PAM. With no
//! `AuthorizedPrincipalsFile`, sshd accepts a certificate only if it lists the
//! login user's name, so log in as [`current_user`].
//! Dropping the `Sshd` kills and reaps the listener by PID and removes the
//! temp dir; if the test is panicking, the sshd log is printed first.
//!
//! Requirements: `openssh-server` and `openssh-client` installed (Debian:
//! `apt-get install -y openssh-client openssh-server`). As root, sshd needs
//! its privilege-separation directory `/run/sshd`; the harness creates it when
//! missing. A non-root sshd needs none, but can only log in as its own user.
//! With `UsePAM no`, the login account must not be locked (`!` in shadow).
//!
//! The ssh helpers run the real `ssh` client with `BatchMode`, no host key
//! checking, only the given identity and a connect timeout. `extra_args` go
//! first on the command line, and ssh keeps the first value it sees for an
//! option, so `-o Name=value` in `extra_args` overrides the defaults here;
//! `-F path` in `extra_args` replaces the default `-F /dev/null` (which keeps
//! the machine's own ssh_config out of the tests).

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// Some test crates include the harness without a `common` module
// (tests/sshd_harness.rs): include the std-only helpers directly. A test
// crate with `mod common;` as well compiles them twice, which is harmless.
#[path = "../common/util.rs"]
#[allow(clippy::duplicate_mod)]
mod util;
pub use util::current_user;
use util::free_port;

pub const SSHD: &str = "/usr/sbin/sshd";
/// How long `start` waits for sshd to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// `ConnectTimeout` given to ssh, in seconds.
pub const CONNECT_TIMEOUT_SECS: u32 = 5;

pub struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
    user: String,
}

impl Sshd {
    /// Starts sshd trusting the CA public key in `trusted_ca_pub`.
    pub fn start(trusted_ca_pub: &Path) -> Sshd {
        Sshd::start_with(trusted_ca_pub, "")
    }

    /// Like [`start`](Sshd::start), with `extra_config` lines appended to
    /// sshd_config (sshd keeps the first value of a keyword, so these can
    /// only add keywords not set here).
    pub fn start_with(trusted_ca_pub: &Path, extra_config: &str) -> Sshd {
        let ca = fs::canonicalize(trusted_ca_pub)
            .unwrap_or_else(|e| panic!("{}: {e}", trusted_ca_pub.display()));
        ensure_privsep_dir();
        let dir = unique_temp_dir("sshd");
        let host_key = dir.join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "tbot-test-host",
                "-f",
            ])
            .arg(&host_key)
            .output()
            .expect("ssh-keygen (openssh-client) must be installed");
        assert!(
            out.status.success(),
            "ssh-keygen host key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = current_user();

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                sshd_config(&dir, &host_key, &ca, port, extra_config),
            )
            .expect("write sshd_config");
            let log_path = dir.join("sshd.log");
            let log = fs::File::create(&log_path).expect("create sshd.log");
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{SSHD}: {e} (apt-get install openssh-server)"));
            let mut sshd = Sshd {
                child,
                port,
                dir: dir.clone(),
                user: user.clone(),
            };
            match sshd.wait_listening() {
                Ok(()) => return sshd,
                Err(log) => {
                    last_log = log;
                    // Dropping would remove the shared dir; kill and reap only.
                    let _ = sshd.child.kill();
                    let _ = sshd.child.wait();
                    std::mem::forget(sshd);
                    if !last_log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("sshd did not start:\n{last_log}");
    }

    /// Waits until sshd logs that it listens and the port accepts a TCP
    /// connection. On failure returns the log.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let want = format!("Server listening on 127.0.0.1 port {}", self.port);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("sshd exited with {status}:\n{}", self.log()));
            }
            if self.log().contains(&want)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sshd not listening after {START_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user whose name certificates must list (the current user).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// sshd's PID (the listener).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// sshd's temp dir (config, host key, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything sshd logged so far (`-e`: its stderr).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.join("sshd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits (bounded) until the log contains `needle`; sshd may write a
    /// line just after the client has already exited.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host public key line (`ssh-ed25519 AAAA... tbot-test-host`), for
    /// tests that want a known_hosts entry: `[127.0.0.1]:PORT <line>`.
    pub fn host_public_key(&self) -> String {
        fs::read_to_string(self.dir.join("ssh_host_ed25519_key.pub"))
            .expect("read host public key")
            .trim()
            .to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only; per-connection sshd
        // processes have their own session and end with their client.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sshd log ({}) ---\n{}", self.dir.display(), self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn sshd_config(dir: &Path, host_key: &Path, ca: &Path, port: u16, extra: &str) -> String {
    let mut c = format!(
        "\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid}
TrustedUserCAKeys {ca}
AuthorizedKeysFile none
AuthorizedPrincipalsFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
X11Forwarding no
AllowTcpForwarding yes
MaxStartups 64
LogLevel VERBOSE
",
        host_key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        ca = ca.display(),
    );
    // OpenSSH 9.8+ penalises addresses that fail to authenticate, which would
    // make the refusal tests lock out the tests that follow them.
    if openssh_version() >= (9, 8) {
        c.push_str("PerSourcePenalties no\n");
    }
    c.push_str(extra);
    c
}

/// OpenSSH version from `ssh -V` (e.g. `OpenSSH_9.2p1` → (9, 2)); (0, 0) if unknown.
pub fn openssh_version() -> (u32, u32) {
    let Ok(out) = Command::new("ssh").arg("-V").output() else {
        return (0, 0);
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(rest) = text.split("OpenSSH_").nth(1) else {
        return (0, 0);
    };
    let mut nums = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}

/// As root, sshd refuses to start without its privilege-separation chroot
/// directory (`Missing privilege separation directory: /run/sshd`).
fn ensure_privsep_dir() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let dir = Path::new("/run/sshd");
    if is_root && !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = fs::DirBuilder::new().mode(0o755).create(dir);
    }
}

/// A new empty directory under the system temp dir (0700).
pub fn unique_temp_dir(tag: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "tbot-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The options every helper passes, after `extra_args` (see module docs).
fn base_args(extra_args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    if !extra_args.contains(&"-F") {
        args.extend(["-F".into(), "/dev/null".into()]);
    }
    for o in [
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=no".to_string(),
        "UserKnownHostsFile=/dev/null".to_string(),
        "GlobalKnownHostsFile=/dev/null".to_string(),
        "IdentityAgent=none".to_string(),
        "LogLevel=ERROR".to_string(),
        format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
    ] {
        args.push("-o".into());
        args.push(o);
    }
    args
}

/// `ssh` to `user@127.0.0.1:port` with exactly `key` and `cert`, ready for
/// more arguments (the remote command) before running.
pub fn ssh_command(port: u16, key: &Path, cert: &Path, user: &str, extra_args: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(base_args(extra_args))
        .arg("-o")
        .arg("IdentitiesOnly=yes")
        .arg("-o")
        .arg(format!("IdentityFile={}", key.display()))
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args(["-p", &port.to_string(), "-l", user, "127.0.0.1"])
        .stdin(Stdio::null());
    cmd
}

/// Runs `command` over ssh (see [`ssh_command`]) and returns its output.
pub fn ssh_run(
    port: u16,
    key: &Path,
    cert: &Path,
    user: &str,
    extra_args: &[&str],
    command: &str,
) -> Output {
    ssh_command(port, key, cert, user, extra_args)
        .arg("--")
        .arg(command)
        .output()
        .expect("run ssh (openssh-client)")
}

/// Runs `ssh -F config [extra_args] destination -- command`: host, port,
/// user, identity and certificate come from the test's own ssh_config.
pub fn ssh_run_config(
    config: &Path,
    extra_args: &[&str],
    destination: &str,
    command: &str,
) -> Output {
    let mut args: Vec<&str> = extra_args.to_vec();
    let config = config.to_str().expect("config path is UTF-8");
    args.extend(["-F", config]);
    Command::new("ssh")
        .args(base_args(&args))
        .arg(destination)
        .arg("--")
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh (openssh-client)")
}

/// Prints an ssh `Output` for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
