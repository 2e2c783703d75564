//! The package's life on a booted Debian bookworm (one container boot, the
//! steps in order): install, ready as `_tbot`, `STATUS=` and journald
//! priorities, hardening score, the multiplexer dialing out and a CPU
//! profile under the unit, the watchdog, reload, `tbot check` before a
//! reload and a start (a broken file fails `systemctl reload` and ends the
//! unit `failed`), root refused on `_tbot`'s storage, an upgrade keeping the
//! operator's edit, stop, remove, purge.

use crate::debpkg::Debs;
use crate::nspawn::{self, Container};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DROP_IN_DIR: &str = "/etc/systemd/system/tbot.service.d";

pub fn run_all(debs: &Debs) {
    let cache = Path::new(crate::debpkg::ROOT).join("target").join("nspawn");
    let tree = nspawn::tree(&cache);
    let bind = format!("{}:/debs", debs.dir.display());
    let c = Container::boot(&tree, &[bind], &debs.dir.join("nspawn.log"));
    let v1 = format!("/debs/{}", debs.v1.file_name().unwrap().to_string_lossy());
    let v2 = format!(
        "/debs/upgrade/{}",
        debs.v2.file_name().unwrap().to_string_lossy()
    );
    install_and_serve(&c, &v1);
    debug_socket_under_the_unit(&c);
    status_and_journal_priorities(&c);
    multiplexer_and_profile_under_the_unit(&c, debs);
    watchdog_restarts_a_stopped_tbot(&c);
    reload_keeps_it_running(&c);
    readers_of_the_packaged_outputs(&c);
    root_is_refused_on_the_services_storage(&c);
    a_broken_file_fails_reload_and_ends_the_unit_failed(&c);
    upgrade_keeps_the_operators_edit(&c, &v2);
    stop_is_clean(&c);
    remove_then_purge_leave_nothing(&c);
}

fn install_and_serve(c: &Container, deb: &str) {
    c.ok(&format!("apt-get install -y -q {deb}"));
    let state = c.ok("systemctl is-active tbot; systemctl is-enabled tbot");
    assert_eq!(
        state.split_whitespace().collect::<Vec<_>>(),
        ["active", "enabled"]
    );
    let pid = main_pid(c);
    let user = c.ok(&format!("stat -c %U /proc/{pid}"));
    assert_eq!(user.trim(), "_tbot", "tbot runs as {user}");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
    let r = mux_get(c, "/readyz");
    assert_eq!(r.0, 200, "/readyz: {}", String::from_utf8_lossy(&r.1));
    let perms =
        c.ok("stat -L -c '%a %U' /var/lib/tbot /var/lib/tbot/machine-id/key-cert.pub /run/tbot");
    assert_eq!(
        perms.lines().collect::<Vec<_>>(),
        ["700 _tbot", "600 _tbot", "755 _tbot"],
        "state, output and runtime directories"
    );
    // The diagnostics' private socket directory: under the unit's
    // XDG_RUNTIME_DIR, not a fallback.
    let run = c.ok("ls /run/tbot");
    assert!(run.contains("tbot-diag-"), "/run/tbot: {run}");
    // The operator's tools come with it.
    let shipped = c.ok(
        "ls /usr/share/bash-completion/completions/tbot /usr/share/zsh/vendor-completions/_tbot \
         /usr/share/fish/vendor_completions.d/tbot.fish && tbot --version",
    );
    assert!(shipped.contains("revision: "), "{shipped}");
    let sec = c.ok("systemd-analyze security --no-pager tbot.service");
    let score = exposure(&sec);
    assert!(score <= 2.0, "installed unit's exposure {score}:\n{sec}");
}

/// The debug socket under the hardened unit (User=_tbot): `tbot status`
/// as root works from the packaged configuration with no flag; another
/// user is refused.
fn debug_socket_under_the_unit(c: &Container) {
    let perms = c.ok("stat -c '%a %U' /var/lib/tbot/debug.sock");
    assert_eq!(perms.trim(), "600 _tbot", "debug.sock");
    let status = c.ok("tbot status");
    for name in ["identity", "heartbeat", "ca-rotation"] {
        assert!(
            status.contains(name) && status.contains("healthy"),
            "tbot status:\n{status}"
        );
    }
    assert_eq!(c.ok("tbot debug log-level").trim(), "info");
    let nobody =
        c.ok("setpriv --reuid=65534 --regid=65534 --clear-groups tbot status 2>&1; echo exit=$?");
    assert!(
        nobody.contains("permission denied") && nobody.contains("exit=1"),
        "tbot status as nobody: {nobody}"
    );
}

/// `STATUS=` names the health; `journalctl -p warning` shows tbot's
/// warning about an unwritable output and none of its info lines.
fn status_and_journal_priorities(c: &Container) {
    let (ok, status) = c.until("systemctl show -p StatusText --value tbot", secs(10), |s| {
        s.contains("healthy")
    });
    assert!(ok, "StatusText does not name the health: {status:?}");
    c.ok("chmod 0500 /var/lib/tbot/machine-id && systemctl restart tbot");
    let (ok, status) = c.until("systemctl show -p StatusText --value tbot", secs(15), |s| {
        s.contains("unhealthy") && s.contains("machine-id")
    });
    assert!(
        ok,
        "StatusText does not name the failing output: {status:?}"
    );
    let journal = "journalctl --no-pager -o cat -t tbot -u tbot";
    let (ok, warnings) = c.until(&format!("{journal} -p warning"), secs(10), |s| {
        s.contains("machine-id") && s.contains("ermission denied")
    });
    assert!(ok, "journalctl -p warning -u tbot:\n{warnings}");
    assert!(
        !warnings.contains("INFO"),
        "info lines at warning priority:\n{warnings}"
    );
    let all = c.ok(&format!("{journal} -p debug"));
    assert!(all.contains("INFO"), "no info line at all? {all}");
    c.ok("chmod 0700 /var/lib/tbot/machine-id && systemctl restart tbot");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
}

/// Debug mode by a drop-in: the
/// multiplexer dials 127.0.0.1:3001 over TCP, and a CPU profile fetched
/// through it names tbot's functions in `go tool pprof -top`.
///
/// The profiler drops a sample taken while a thread runs in libc (its
/// blocklist: unwinding there is not signal-safe), and most of tbot's CPU
/// under a plain `/metrics` load is system calls made through libc: a 2 s
/// profile once came back with no sample at all (CI, 0 of 0). So the load
/// asks for gzip (compression runs in tbot's own code), the profile runs
/// 4 s, and one profile without tbot's functions is taken again once.
fn multiplexer_and_profile_under_the_unit(c: &Container, debs: &Debs) {
    drop_in(c, "debug.conf", "Environment=TBOT_DEBUG=1");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
    let r = mux_get(c, "/readyz");
    assert_eq!(
        r.0,
        200,
        "/readyz through the multiplexer: {}",
        String::from_utf8_lossy(&r.1)
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, sock) = (stop.clone(), mux_socket(c));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http_over(&sock, "/metrics", "Accept-Encoding: gzip\r\n");
            }
        })
    };
    let mut top = String::new();
    for _ in 0..2 {
        top = profile_top(c, debs);
        if top.contains("tbot::") {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join();
    assert!(
        top.contains("tbot::"),
        "no tbot function in the installed tbot's profile (twice):\n{top}"
    );
}

/// A 4 s CPU profile through the multiplexer, as `go tool pprof -top`
/// prints it.
fn profile_top(c: &Container, debs: &Debs) -> String {
    let r = mux_get(c, "/debug/pprof/profile?seconds=4");
    assert_eq!(r.0, 200, "profile: {}", String::from_utf8_lossy(&r.1));
    let file = debs.dir.join("cpu.pb");
    std::fs::write(&file, &r.1).unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&file)
        .env("HOME", &debs.dir)
        .env("GOCACHE", debs.dir.join("gocache"))
        .output()
        .expect("go (golang-go) for go tool pprof");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With WatchdogSec=2s tbot keeps pinging (still the same process after
/// several periods); stopped with SIGSTOP it is restarted by systemd.
fn watchdog_restarts_a_stopped_tbot(c: &Container) {
    drop_in(c, "watchdog.conf", "WatchdogSec=2s\\nTimeoutAbortSec=5s");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
    let (pid, restarts) = (main_pid(c), n_restarts(c));
    std::thread::sleep(secs(5));
    assert_eq!(
        (main_pid(c), n_restarts(c)),
        (pid, restarts),
        "tbot was restarted while responsive (no WATCHDOG=1 pings?)\n{}",
        c.sh("journalctl --no-pager -u tbot -n 20").1
    );
    c.ok("systemctl kill -s SIGSTOP tbot");
    let (ok, state) = c.until(
        "systemctl show -p NRestarts,ActiveState,MainPID tbot",
        secs(30),
        |s| {
            s.contains("ActiveState=active")
                && !s.contains(&format!("MainPID={pid}\n"))
                && !s.contains("NRestarts=0\n")
        },
    );
    assert!(
        ok,
        "a stopped tbot was not restarted by the watchdog: {state}"
    );
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
}

/// `systemctl reload` (SIGHUP) leaves the same process running.
fn reload_keeps_it_running(c: &Container) {
    let pid = main_pid(c);
    c.ok("systemctl reload tbot");
    std::thread::sleep(secs(2));
    let state = c.ok("systemctl is-active tbot || true");
    assert_eq!(state.trim(), "active");
    assert_eq!(main_pid(c), pid, "reload replaced tbot's process");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
}

/// The packaged config's commented `readers` for `deploy`, uncommented and
/// reloaded under the shipped unit: `deploy` reads the key and certificate
/// and may connect to the multiplexer's socket, another user may not; back
/// to the shipped file, `deploy` loses them again. (Under `PrivateUsers=yes`
/// no other user is mapped into tbot's user namespace and the ACLs could
/// not name `deploy`.)
fn readers_of_the_packaged_outputs(c: &Container) {
    c.ok("useradd --system --no-create-home deploy && useradd --system --no-create-home other");
    c.ok("cp /etc/tbot/tbot.yaml /root/tbot.yaml.shipped && \
          sed -i 's/^      # readers:$/      readers:/; s/^      #   - user: deploy$/        - user: deploy/' \
          /etc/tbot/tbot.yaml && systemctl reload tbot");
    // Within `secs`: a reload is applied after `systemctl reload` returns.
    let can_within = |user: &str, test: &str, secs: u32| {
        c.sh(&format!(
            "for i in $(seq {n}); do setpriv --reuid {user} --regid {user} --clear-groups \
             sh -c '{test}' >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1",
            n = secs * 2
        ))
        .0
    };
    let key = "cat /var/lib/tbot/machine-id/key /var/lib/tbot/machine-id/key-cert.pub";
    let mux = "test -w /run/tbot/mux/v1.sock -a -r /run/tbot/mux/ssh_config";
    assert!(
        can_within("deploy", key, 15),
        "deploy cannot read its key: {}",
        c.sh("ls -la /var/lib/tbot /var/lib/tbot/machine-id; journalctl -u tbot -n 20 --no-pager")
            .1
    );
    assert!(
        can_within("deploy", mux, 5),
        "deploy cannot use the multiplexer"
    );
    assert!(!can_within("other", key, 1), "another user reads the key");
    assert!(
        !can_within("other", mux, 1),
        "another user may use the multiplexer"
    );
    c.ok("cp /root/tbot.yaml.shipped /etc/tbot/tbot.yaml && systemctl reload tbot");
    let gone = "! cat /var/lib/tbot/machine-id/key";
    assert!(
        can_within("deploy", gone, 15),
        "deploy still reads the key after its reader entry went"
    );
}

/// `tbot start --oneshot` as root on the package's storage (owned by
/// `_tbot`) refuses, names the owner and says how to run as it, and leaves no
/// root-owned file there; `tbot check` as `_tbot` passes.
fn root_is_refused_on_the_services_storage(c: &Container) {
    let (ok, out) = c.sh("tbot start --oneshot -c /etc/tbot/tbot.yaml; echo exit=$?");
    assert!(ok && out.contains("exit=2"), "{out}");
    assert!(
        out.contains("belongs to _tbot") && out.contains("sudo -u _tbot tbot start --oneshot"),
        "{out}"
    );
    let root_owned = c.ok("find /var/lib/tbot -user root");
    assert!(root_owned.trim().is_empty(), "root's files: {root_owned}");
    let (ok, out) = c.sh("tbot check -c /etc/tbot/tbot.yaml; echo exit=$?");
    assert!(
        ok && out.contains("exit=2") && out.contains("sudo -u _tbot"),
        "{out}"
    );
    c.ok("setpriv --reuid _tbot --regid _tbot --init-groups tbot check -c /etc/tbot/tbot.yaml");
}

/// A broken configuration file: `systemctl reload` fails with the reason and
/// the running tbot keeps going with its configuration; a restart fails and
/// the unit ends `failed` at once, not retried, with the reason in the
/// default `systemctl status`, instead of restarting every 5 s forever.
fn a_broken_file_fails_reload_and_ends_the_unit_failed(c: &Container) {
    let pid = main_pid(c);
    c.ok("cp /etc/tbot/tbot.yaml /root/tbot.yaml.good && echo 'bogus: 1' >> /etc/tbot/tbot.yaml");
    let (ok, out) = c.sh("systemctl reload tbot");
    assert!(!ok, "systemctl reload of a broken file succeeded: {out}");
    let status = c.sh("systemctl status --no-pager -n 20 tbot").1;
    assert!(status.contains("unknown field `bogus`"), "{status}");
    assert_eq!(
        c.ok("systemctl is-active tbot").trim(),
        "active",
        "a failed reload stopped tbot"
    );
    assert_eq!(main_pid(c), pid, "a failed reload replaced tbot");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");

    let (ok, _) = c.sh("systemctl restart tbot");
    assert!(!ok, "a restart on a broken file succeeded");
    let state = c.ok("systemctl show -p ActiveState,Result,ExecMainStatus tbot");
    assert!(
        state.contains("ActiveState=failed") && state.contains("ExecMainStatus=2"),
        "a broken file did not end the unit failed at once: {state}"
    );
    // Failed for good: no retry after RestartSec=5s (the manual restart
    // reset the counter: read it after).
    let restarts = n_restarts(c);
    std::thread::sleep(secs(7));
    let later = c.ok("systemctl show -p ActiveState tbot");
    assert!(later.contains("ActiveState=failed"), "{later}");
    assert_eq!(n_restarts(c), restarts, "restarted on a broken file");
    // The plain `systemctl status` (its last 10 lines) names the reason.
    let status = c.sh("systemctl status --no-pager tbot").1;
    assert!(
        status.contains("unknown field `bogus`") && status.contains("failed"),
        "{status}"
    );
    // Fixed: it starts again.
    c.ok("cp /root/tbot.yaml.good /etc/tbot/tbot.yaml && systemctl start tbot");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
}

/// An upgrade restarts tbot with the new package and keeps the operator's
/// edit of the conffile (no prompt: the package's copy did not change).
fn upgrade_keeps_the_operators_edit(c: &Container, deb: &str) {
    c.ok(&format!(
        "rm -r {DROP_IN_DIR} && systemctl daemon-reload && systemctl restart tbot"
    ));
    c.ok("sed -i 's/^renewal_interval: 20m/renewal_interval: 19m # operator edit/' /etc/tbot/tbot.yaml");
    let pid = main_pid(c);
    c.ok(&format!("apt-get install -y -q {deb}"));
    let version = c.ok("dpkg-query -W -f '${Version}' tbot");
    assert!(version.ends_with("-2"), "upgraded to {version}");
    let conf = c.ok("cat /etc/tbot/tbot.yaml");
    assert!(
        conf.contains("19m # operator edit"),
        "the edit was lost:\n{conf}"
    );
    assert_ne!(main_pid(c), pid, "not restarted on upgrade");
    c.ok("tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
    let log = c.ok("journalctl --no-pager -o cat -t tbot -u tbot -n 200");
    assert!(
        log.contains("renewal_interval=19m"),
        "the edited config is not in use:\n{log}"
    );
}

fn stop_is_clean(c: &Container) {
    c.ok("systemctl stop tbot");
    let s =
        c.ok("systemctl show -p ActiveState,Result,ExecMainStatus tbot; ls /run/tbot 2>&1 || true");
    for want in ["ActiveState=inactive", "Result=success", "ExecMainStatus=0"] {
        assert!(s.contains(want), "after systemctl stop: {s}");
    }
    assert!(s.contains("No such file"), "/run/tbot left after stop: {s}");
    c.ok("systemctl start tbot && tbot wait --diag-addr 127.0.0.1:3001 --timeout 20s");
}

/// remove: stopped, program gone, config and state kept (Debian's rule);
/// purge: nothing of tbot left but the system user, kept on purpose.
fn remove_then_purge_leave_nothing(c: &Container) {
    c.ok("apt-get remove -y -q tbot");
    let s = c.ok("systemctl is-active tbot || true; ls /usr/bin/tbot 2>&1 || true; ls /etc/tbot /var/lib/tbot");
    assert!(s.starts_with("inactive") || s.starts_with("unknown"), "{s}");
    assert!(
        s.contains("No such file"),
        "/usr/bin/tbot after remove: {s}"
    );
    assert!(
        s.contains("tbot.yaml") && s.contains("ca_key"),
        "config or state lost on remove: {s}"
    );
    c.ok("apt-get purge -y -q tbot");
    let left = c.ok(
        "find /etc /usr /var /run /opt /srv -xdev -name '*tbot*' 2>/dev/null; \
         dpkg-query -W -f '${Status}\\n' tbot 2>&1; pgrep -u _tbot || true; getent passwd _tbot",
    );
    let lines: Vec<&str> = left.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].contains("no packages found")
            && lines[1].starts_with("_tbot:"),
        "left after purge (only the system user should stay):\n{left}"
    );
}

/// Adds `/etc/systemd/system/tbot.service.d/NAME` with `[Service]` and
/// `lines` (printf escapes), and restarts tbot with it.
fn drop_in(c: &Container, name: &str, lines: &str) {
    c.ok(&format!(
        "mkdir -p {DROP_IN_DIR} && printf '[Service]\\n{lines}\\n' > {DROP_IN_DIR}/{name} \
         && systemctl daemon-reload && systemctl restart tbot"
    ));
}

fn main_pid(c: &Container) -> u32 {
    let s = c.ok("systemctl show -p MainPID --value tbot");
    s.trim().parse().unwrap_or_else(|_| panic!("MainPID: {s}"))
}

fn n_restarts(c: &Container) -> u32 {
    let s = c.ok("systemctl show -p NRestarts --value tbot");
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("NRestarts: {s}"))
}

/// The "Overall exposure level" figure of `systemd-analyze security`.
pub fn exposure(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.split("Overall exposure level for tbot.service:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
}

fn mux_socket(c: &Container) -> std::path::PathBuf {
    c.host_path("/run/tbot/mux/v1.sock")
}

/// GET `path` from tbot's diagnostics at 127.0.0.1:3001 in the container,
/// through its own multiplexer (which dials it over TCP, in the container's
/// network namespace): the host reaches the socket through /proc/PID/root.
fn mux_get(c: &Container, path: &str) -> (u16, Vec<u8>) {
    http_over(&mux_socket(c), path, "")
        .unwrap_or_else(|e| panic!("GET {path} through the multiplexer: {e}"))
}

/// `GET path` (HTTP/1.0, `extra` header lines) through the multiplexer's
/// socket to 127.0.0.1:3001: (status, body).
fn http_over(sock: &Path, path: &str, extra: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(secs(30)))?;
    s.write_all(b"127.0.0.1:3001\0")?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: tbot\r\n{extra}\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let bad = || std::io::Error::other(format!("not HTTP: {:?}", String::from_utf8_lossy(&buf)));
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, buf[end + 4..].to_vec()))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
