//! A hardened container (issue 17, item 2), through the real binary: a
//! mount namespace whose every mount is read-only but the storage
//! directory and the identity output (bind mounts), `TMPDIR` and
//! `XDG_RUNTIME_DIR` unset: Kubernetes' restricted profile. tbot starts,
//! issues, serves its diagnostics, and takes a CPU profile (pprof keeps its
//! samples in a temporary file). Root only (mount namespaces); skipped with
//! the reason otherwise.

mod common;
use common::util::free_port;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shell run in the new mount namespace: `dirs` bound on themselves
/// (so they stay writable), then every other mount made read-only, except
/// the kernel's (/proc, /sys, /dev) and /mnt, then `tbot ARGS` in place of
/// the shell, with no TMPDIR or XDG_RUNTIME_DIR.
fn read_only_root_script(dirs: &[&Path]) -> String {
    let mut s = String::from("set -e\nmount --make-rprivate /\n");
    for d in dirs {
        s += &format!("mount --bind '{0}' '{0}'\n", d.display());
    }
    let keep: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    s += &format!(
        "for m in $(awk '{{print $5}}' /proc/self/mountinfo | sort -u); do\n\
         \x20 case \"$m\" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/mnt|/mnt/*) continue;; esac\n\
         \x20 case \" {} \" in *\" $m \"*) continue;; esac\n\
         \x20 mount -o remount,bind,ro \"$m\"\n\
         done\n\
         touch /tbot-ro-probe 2>/dev/null && {{ echo 'the root is writable' >&2; exit 97; }}\n\
         exec env -u TMPDIR -u XDG_RUNTIME_DIR \"$@\"\n",
        keep.join(" ")
    );
    s
}

#[test]
fn it_runs_on_a_read_only_root_with_only_its_own_directories_writable() {
    run_hardened("ro-root", None);
}

/// The same, as a UID that no passwd entry names (Kubernetes' restricted
/// profile may pick any): the storage and output directories are that
/// UID's, tbot runs as it (setpriv after the mounts).
#[test]
fn it_runs_there_as_an_arbitrary_uid() {
    run_hardened("ro-root-uid", Some(54321));
}

fn run_hardened(tag: &str, uid: Option<u32>) {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (a mount namespace with a read-only root)");
        return;
    }
    for tool in ["unshare", "setpriv"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("skipped: {tool}(1) is not installed (util-linux)");
            return;
        }
    }
    let dir = TempDir::new(tag);
    let storage = dir.join("storage");
    let out = dir.join("out");
    std::fs::create_dir(&storage).unwrap();
    std::fs::create_dir(&out).unwrap();
    if let Some(uid) = uid {
        for d in [&storage, &out] {
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
        }
    }
    let cfg = format!(
        "version: v2\ndebug: true\nstorage: {{type: directory, path: {}}}\nservices:\n\
         \x20 - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        storage.display(),
        out.display()
    );
    let cfg_path = dir.write("tbot.yaml", &cfg);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(read_only_root_script(&[&storage, &out]))
        .arg("sh");
    if let Some(uid) = uid {
        cmd.arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups");
    }
    cmd.arg(BIN)
        .args(["start", "-c"])
        .arg(&cfg_path)
        .args(["--diag-addr", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("NOTIFY_SOCKET");
    let mut t = Tbot::spawn(cmd, dir);
    t.addr = Some(addr.parse().unwrap());
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(s)) = t.child.try_wait() {
            panic!("tbot exited ({s}) on a read-only root:\n{}", t.log());
        }
        let raw = b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        if let Ok(r) = request_timeout(t.addr(), raw, Duration::from_secs(1)) {
            if r.status == 200 {
                break;
            }
        }
        assert!(Instant::now() < end, "not ready:\n{}", t.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let cert = std::fs::metadata(t.dir.join("out/key-cert.pub")).unwrap();
    if let Some(uid) = uid {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(cert.uid(), uid, "tbot did not run as uid {uid}");
    }
    // The CPU profiler's buffer file needs a writable temporary directory.
    let raw =
        b"GET /debug/pprof/profile?seconds=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let r = request_timeout(t.addr(), raw, Duration::from_secs(15)).unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, t.log());
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(10)).expect("stopped");
    assert_eq!(status.code(), Some(0), "{}", t.log());
}
