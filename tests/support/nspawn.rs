//! A booted Debian bookworm for package tests: a minimal tree made by
//! debootstrap from the Debian mirror apt is configured with (cached under
//! target/nspawn/), booted with `systemd-nspawn --ephemeral --boot` (the
//! cached tree stays clean), driven with `nsenter` into the container's
//! systemd (PID 1 in there), stopped by PID. Needs root.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Packages on top of debootstrap's minbase: a booting systemd, and the
/// package's dependencies that minbase lacks (the container has no network
/// to fetch them: see [`Container::boot`]).
const INCLUDE: &str = "systemd,systemd-sysv,dbus,procps";
const SUITE: &str = "bookworm";

/// The cached tree, made on first use. Made in a temporary directory and
/// renamed into place only once debootstrap succeeded, so an interrupted
/// run is never taken for a finished tree.
pub fn tree(cache: &Path) -> PathBuf {
    // Named after what is in it: a change of INCLUDE makes a new tree.
    let done = cache.join(format!("{SUITE}-minbase+{}", INCLUDE.replace(',', "+")));
    if done.join("usr/lib/systemd/systemd").exists() {
        return done;
    }
    std::fs::create_dir_all(cache).unwrap();
    remove_stale_temporaries(cache);
    let tmp = cache.join(format!("{SUITE}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mirror = debian_mirror();
    let out = Command::new("timeout")
        .args(["600", "debootstrap", "--variant=minbase"])
        .arg(format!("--include={INCLUDE}"))
        .arg(SUITE)
        .arg(&tmp)
        .arg(&mirror)
        .output()
        .expect("debootstrap (tests/run-all.sh installs it)");
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        panic!(
            "debootstrap {SUITE} from {mirror} failed:\n{}{}",
            tail(&String::from_utf8_lossy(&out.stdout), 20),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    std::fs::rename(&tmp, &done).unwrap();
    done
}

/// Temporary trees of runs whose process is gone (killed mid-debootstrap).
fn remove_stale_temporaries(cache: &Path) {
    let prefix = format!("{SUITE}.tmp-");
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The first Debian archive URI in apt's sources (deb822 `URIs:` in
/// /etc/apt/sources.list.d/*.sources, or a `deb` line of sources.list),
/// skipping the security archive; deb.debian.org when there is none.
pub fn debian_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy().to_string();
            if name.ends_with(".sources") || name.ends_with(".list") {
                texts.push(std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in texts {
        for line in text.lines().map(str::trim) {
            let uris = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect::<Vec<_>>()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                // deb [options] URI suite components
                rest.split_whitespace()
                    .filter(|w| w.contains("://"))
                    .take(1)
                    .collect()
            } else {
                continue;
            };
            if let Some(u) = uris.into_iter().find(|u| !u.contains("security")) {
                return u.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A booted container. Dropping it stops it by PID: SIGTERM to nspawn (a
/// clean poweroff, the ephemeral copy removed), SIGKILL after a while.
pub struct Container {
    nspawn: Child,
    /// The container's systemd, as a PID of this (the host's) namespace.
    pub pid1: u32,
    log: PathBuf,
}

impl Container {
    /// Boots `tree` with `binds` (`HOST:CONTAINER`, read-only) and its own
    /// network namespace (only loopback: tbot's ports do not meet the
    /// host's), and waits until systemd is up. `log` gets nspawn's output.
    pub fn boot(tree: &Path, binds: &[String], log: &Path) -> Container {
        let out = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(tree)
            .args(["--ephemeral", "--register=no", "--keep-unit", "--boot"])
            .args(["--private-network", "--console=passive"]);
        for b in binds {
            cmd.arg(format!("--bind-ro={b}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // A test process killed before Drop runs: nspawn still gets SIGTERM
        // (when the spawning thread, which outlives the Container, exits).
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let nspawn = cmd
            .spawn()
            .expect("systemd-nspawn (tests/run-all.sh installs systemd-container)");
        let mut c = Container {
            nspawn,
            pid1: 0,
            log: log.to_path_buf(),
        };
        c.pid1 = c.find_pid1(Duration::from_secs(30));
        // Until its bus is up, systemctl cannot ask; then --wait waits for
        // the boot to finish.
        let (ok, state) = c.until(
            "systemctl is-system-running --wait; systemctl --failed --no-legend",
            Duration::from_secs(90),
            |s| s.starts_with("running") || s.starts_with("degraded"),
        );
        assert!(
            ok,
            "the container's systemd did not come up: {state}\n{}",
            c.log_tail()
        );
        c
    }

    /// The child of nspawn that runs systemd.
    fn find_pid1(&mut self, timeout: Duration) -> u32 {
        let end = Instant::now() + timeout;
        let me = self.nspawn.id();
        while Instant::now() < end {
            if let Ok(Some(st)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited: {st}\n{}", self.log_tail());
            }
            for t in std::fs::read_dir(format!("/proc/{me}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for c in children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok())
                {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                    if comm.trim() == "systemd" {
                        return c;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no systemd under systemd-nspawn after {timeout:?}\n{}",
            self.log_tail()
        );
    }

    /// Runs `script` with sh inside the container (all its namespaces),
    /// bounded to 60 s; returns (exit 0, stdout + stderr).
    pub fn sh(&self, script: &str) -> (bool, String) {
        self.sh_timeout(60, script)
    }

    /// [`Container::sh`] with a bound in seconds.
    pub fn sh_timeout(&self, secs: u32, script: &str) -> (bool, String) {
        let mut cmd = Command::new("timeout");
        cmd.arg(secs.to_string())
            .arg("nsenter")
            .arg("-t")
            .arg(self.pid1.to_string())
            .args(["-a", "sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        let out = cmd.output().expect("nsenter");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// [`Container::sh`], panicking with the output when it fails.
    pub fn ok(&self, script: &str) -> String {
        let (ok, text) = self.sh(script);
        assert!(ok, "in the container: {script}\n{text}");
        text
    }

    /// Polls `script` every 200 ms until `pred` holds on its output or
    /// `timeout` passes; returns the last output and whether it held.
    pub fn until(
        &self,
        script: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (bool, String) {
        let end = Instant::now() + timeout;
        loop {
            let (_, text) = self.sh(script);
            if pred(&text) {
                return (true, text);
            }
            if Instant::now() >= end {
                return (false, text);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The path of `p` (absolute, in the container) as seen from the host,
    /// through the root of the container's PID 1.
    pub fn host_path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid1))
    }

    /// The last lines of nspawn's output (the container's console).
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        tail(&s, 40)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let pid = self.nspawn.id() as i32;
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A container that does not power off: its PID 1 takes the whole
        // PID namespace with it, then nspawn.
        if self.pid1 != 0 {
            // SAFETY: as above; pid1 is the container's init, found under nspawn.
            unsafe { libc::kill(self.pid1 as i32, libc::SIGKILL) };
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}
