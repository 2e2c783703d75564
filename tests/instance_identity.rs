//! A live tbot is told apart by the locks it holds, never by its PID:
//! two tbots in different PID namespaces sharing a
//! runtime directory keep their own diagnostics socket directory, and a
//! second tbot on the same storage directory refuses to start.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config_file(dir: &TempDir, storage_of: &Path) -> String {
    dir.write("tbot.yaml", &config_text(storage_of, "", ""))
        .display()
        .to_string()
}

#[test]
fn a_second_daemon_on_the_same_storage_refuses_to_start() {
    let a = TempDir::new("lock-a");
    let storage_of = a.path().to_path_buf();
    let a = Tbot::start(a, &config_text(&storage_of, "", ""), &[]);
    a.until("/readyz", Duration::from_secs(10), |r| r.status == 200);

    let b = TempDir::new("lock-b");
    let cfg = config_file(&b, &storage_of);
    let (code, _, err) = run_tbot(
        &["start", "-c", &cfg, "--diag-addr", "127.0.0.1:0"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "the second tbot must exit 1; stderr:\n{err}");
    let storage = storage_of.join("storage");
    assert!(
        err.contains(&format!(
            "storage directory {} is in use by another tbot",
            storage.display()
        )),
        "stderr must say why:\n{err}"
    );
    assert!(
        !err.contains("diagnostics service listening"),
        "refused before anything started:\n{err}"
    );
    // The first is untouched.
    assert_eq!(a.get("/livez").status, 200);
    assert_eq!(a.get("/readyz").status, 200);

    // Once the first has gone, the storage is free again.
    let mut a = a;
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(5)).is_some());
    let again = Tbot::start(b, &config_text(&storage_of, "", ""), &[]);
    again.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
}

#[test]
fn oneshot_on_a_storage_a_daemon_holds_is_refused() {
    let a = TempDir::new("lock-oneshot");
    let storage_of = a.path().to_path_buf();
    let a = Tbot::start(a, &config_text(&storage_of, "", ""), &[]);
    let b = TempDir::new("lock-oneshot-b");
    let cfg = config_file(&b, &storage_of);
    let (code, _, err) = run_tbot(
        &["start", "-c", &cfg, "--oneshot"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "stderr:\n{err}");
    assert!(err.contains("is in use by another tbot"), "{err}");
    assert_eq!(a.get("/livez").status, 200);
}

/// `unshare --pid --fork --mount-proc --kill-child tbot start ...`: tbot is
/// PID 1 of its own PID namespace, as in a container.
fn start_in_pid_namespace(dir: TempDir, runtime: &Path) -> Tbot {
    let cfg = config_file(&dir, dir.path());
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", BIN])
        .args(["start", "-c", &cfg, "--diag-addr", "127.0.0.1:0"])
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Tbot::spawn_and_wait_addr(cmd, dir)
}

fn socket_dirs(runtime: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(runtime)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tbot-diag-"))
        .collect();
    v.sort();
    v
}

fn refuses_connections(t: &Tbot, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect(t.addr()).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn two_pid_namespaces_sharing_a_runtime_dir_keep_their_own_socket_dirs() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for unshare --pid (new PID namespaces)");
        return;
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --pid --fork --mount-proc does not work here");
        return;
    }
    let runtime = TempDir::new("shared-runtime");
    let a = start_in_pid_namespace(TempDir::new("ns-a"), runtime.path());
    assert_eq!(a.get("/livez").status, 200);
    let b = start_in_pid_namespace(TempDir::new("ns-b"), runtime.path());
    // Both are PID 1: with directories keyed by PID, B's start removed A's.
    assert_eq!(a.get("/livez").status, 200, "A lost its socket directory");
    assert_eq!(b.get("/livez").status, 200);
    a.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    b.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    assert_eq!(socket_dirs(runtime.path()).len(), 2);

    // A dies without cleaning up (SIGKILL reaches it through --kill-child)
    // and restarts, again as PID 1: B keeps working, A's old directory goes.
    let a_dir = TempDir::new("ns-a2");
    a.signal(libc::SIGKILL);
    assert!(refuses_connections(&a, Duration::from_secs(10)));
    drop(a);
    let left = socket_dirs(runtime.path());
    assert_eq!(left.len(), 2, "the killed one left its directory: {left:?}");
    let a2 = start_in_pid_namespace(a_dir, runtime.path());
    assert_eq!(b.get("/livez").status, 200, "B lost its socket directory");
    assert_eq!(a2.get("/livez").status, 200);
    a2.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    b.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let now = socket_dirs(runtime.path());
    assert_eq!(now.len(), 2, "the stale directory was not removed: {now:?}");
    assert!(!now.contains(&left[0]) || !now.contains(&left[1]));
}
