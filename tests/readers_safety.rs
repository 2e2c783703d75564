//! Readers (`acls`, `readers`) where they could go wrong, through the real
//! binary: a destination with `..` or equal to storage is refused at load
//! with file:line:column; a symbolic link inside storage (root's or tbot's
//! own) never carries the readers' passage to the directory it names; a
//! reload never waits for a write in progress to hand over new readers;
//! a reload's readers refused under `acls: required` turn the service
//! unhealthy at once, and a later reload that works clears it.
//!
//! The last test needs root (it mounts a ramfs, which has no ACLs) and
//! says so when it skips; the others run as any user.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `getfacl -n -p PATH` (Debian's `acl`).
fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["-n", "-p"])
        .arg(path)
        .output()
        .expect("getfacl (acl) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An identity output `id` at `dest` (written as given) with `access`
/// (`acls: ..., readers: [...]`).
fn identity(dest: &str, access: &str) -> String {
    format!(
        "  - type: identity\n    name: id\n    principals: [root]\n    \
         destination: {{type: directory, path: {dest}, {access}}}\n"
    )
}

/// `tbot check` and `tbot start` on `cfg`: both exit 2 with `expect`
/// placed at file:line:column.
fn refused(dir: &TempDir, cfg: &str, at: &str, expect: &str) {
    let file = dir.write("tbot.yaml", cfg);
    for cmd in ["check", "start"] {
        let (code, _, err) = run_tbot(
            &[cmd, "-c", file.to_str().unwrap()],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(
            err.contains(&format!("{}:{at}: ", file.display())) && err.contains(expect),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn a_destination_with_dot_dot_or_equal_to_storage_is_refused_at_load() {
    let dir = TempDir::new("rsafe-dotdot");
    let storage = dir.join("storage");
    // `storage/../out`: the walk would leave storage, and the readers'
    // passage would land on the storage directory's parent.
    let dest = format!("{}/../out", storage.display());
    let cfg = config_text(
        dir.path(),
        "",
        &identity(&dest, "readers: [{user: \"65534\"}]"),
    );
    refused(&dir, &cfg, "7:42", "`..` is not allowed");
    // Two entries `a/../b` and `b` were one destination under two names.
    let twin = format!(
        "{}{}",
        identity(&format!("{}/a/../b", dir.path().display()), "acls: off"),
        identity(&format!("{}/b", dir.path().display()), "acls: off")
            .replace("name: id", "name: id2"),
    );
    let cfg = config_text(dir.path(), "", &twin);
    refused(&dir, &cfg, "7:42", "`..` is not allowed");
    // Storage itself: its readers would traverse the CA key's directory.
    let cfg = config_text(
        dir.path(),
        "",
        &identity(
            &storage.display().to_string(),
            "readers: [{user: \"65534\"}]",
        ),
    );
    refused(&dir, &cfg, "7:42", "is the storage directory");
    // (uid_t)-1 is no user.
    let cfg = config_text(
        dir.path(),
        "",
        &identity(
            &format!("{}/o", dir.path().display()),
            "readers: [{user: 4294967295}]",
        ),
    );
    let line7 = cfg.lines().nth(6).unwrap();
    let at = format!("7:{}", line7.find("4294967295").unwrap() + 1);
    refused(&dir, &cfg, &at, "invalid user or group id 4294967295");
    assert!(!dir.join("out").exists() && !dir.join("b").exists());
}

#[test]
fn a_symlink_in_storage_never_carries_the_readers_passage_out_of_it() {
    let dir = TempDir::new("rsafe-link");
    let path = dir.path().to_path_buf();
    let storage = path.join("storage");
    let shared = path.join("shared");
    fs::create_dir_all(&storage).unwrap();
    fs::set_permissions(&storage, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    // Owned by this user (root as CI runs it): a link tbot's walk follows.
    std::os::unix::fs::symlink(&shared, storage.join("out")).unwrap();
    let before = getfacl(&shared);
    let dest = storage.join("out/id");
    let cfg = config_text(
        &path,
        "",
        &identity(&dest.display().to_string(), "readers: [{user: \"65534\"}]"),
    );
    let t = Tbot::start(dir, &cfg, &[]);
    let r = t.until("/readyz", Duration::from_secs(15), |r| r.status == 200);
    assert_eq!(r.status, 200);
    // The target's ACL and mode are as they were.
    assert_eq!(getfacl(&shared), before, "{}", t.log());
    assert_eq!(
        fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(
        t.wait_log("not giving the readers a passage", Duration::from_secs(5)),
        "{}",
        t.log()
    );
    // Storage itself got its passage.
    let acl = getfacl(&storage);
    assert!(acl.contains("user:65534:--x"), "{acl}");
}

#[test]
fn a_reload_hands_over_new_readers_without_waiting_for_a_write_in_progress() {
    let dir = TempDir::new("rsafe-wait");
    let path = dir.path().to_path_buf();
    let out = path.join("out").display().to_string();
    let cfg = config_text(&path, "", &identity(&out, "acls: try"));
    // The first write holds the readers' lock for 60 s half-way through
    // writing `key` (debug builds' failpoint), as a hung mount would.
    let t = Tbot::start_with(
        dir,
        &cfg,
        &[],
        &[("TBOT_FAILPOINTS", "stage-half@key=sleep:60000")],
    );
    assert!(
        t.wait_log("failpoint reached", Duration::from_secs(15)),
        "{}",
        t.log()
    );
    fs::write(
        path.join("tbot.yaml"),
        config_text(
            &path,
            "",
            &identity(&out, "acls: try, readers: [{user: \"65534\"}]"),
        ),
    )
    .unwrap();
    let sent = Instant::now();
    t.signal(libc::SIGHUP);
    assert!(
        t.wait_log("configuration reloaded", Duration::from_secs(10)),
        "the reload waited for the write:\n{}",
        t.log()
    );
    eprintln!("reloaded {:?} after SIGHUP", sent.elapsed());
    assert!(
        t.log()
            .contains("readers are still being applied in the background"),
        "{}",
        t.log()
    );
}

struct Ramfs(PathBuf);

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn a_reloads_readers_refused_under_required_make_the_service_unhealthy_at_once() {
    if !is_root() {
        eprintln!("skipped: needs root (mounts a ramfs, a file system without ACLs)");
        return;
    }
    let dir = TempDir::new("rsafe-req");
    let path = dir.path().to_path_buf();
    let ram = path.join("ramfs");
    fs::create_dir_all(&ram).unwrap();
    let m = Command::new("mount")
        .args(["-t", "ramfs", "-o", "mode=0755", "tbot-test"])
        .arg(&ram)
        .output()
        .unwrap();
    assert!(m.status.success(), "mount ramfs: {m:?}");
    let ram = Ramfs(ram);
    let services = |acls: &str| {
        let access = format!("acls: {acls}, readers: [{{user: \"65534\"}}]");
        format!(
            "{}  - type: ssh-multiplexer\n    name: mux\n    identity: id\n    \
             destination: {{type: directory, path: {}/mux, {access}}}\n",
            identity(&format!("{}/out", ram.0.display()), &access),
            ram.0.display()
        )
    };
    let t = Tbot::start(dir, &config_text(&path, "", &services("try")), &[]);
    let r = t.until("/readyz", Duration::from_secs(15), |r| r.status == 200);
    assert_eq!(r.status, 200);
    fs::write(
        path.join("tbot.yaml"),
        config_text(&path, "", &services("required")),
    )
    .unwrap();
    t.signal(libc::SIGHUP);
    // At once: not at the next renewal (20 min) or never (the multiplexer).
    for name in ["id", "mux"] {
        let r = t.until(&format!("/readyz/{name}"), Duration::from_secs(5), |r| {
            r.status == 503
        });
        assert!(
            r.body.contains("acls: required") && r.body.contains("POSIX ACLs"),
            "{name}: {}",
            r.body
        );
    }
    // A reload that can be honoured makes them healthy again.
    fs::write(
        path.join("tbot.yaml"),
        config_text(&path, "", &services("try")),
    )
    .unwrap();
    t.signal(libc::SIGHUP);
    for name in ["id", "mux"] {
        t.until(&format!("/readyz/{name}"), Duration::from_secs(5), |r| {
            r.status == 200
        });
    }
    drop(t);
    drop(ram);
}

/// A shared object whose `getpwnam_r` and `getgrnam_r` never answer (they
/// sleep 120 s), as a stuck sssd or LDAP server: built once with gcc under
/// `target/`, loaded with LD_PRELOAD.
fn hanging_nss() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-fixtures");
    fs::create_dir_all(&dir).unwrap();
    let so = dir.join(format!("hanging-nss-{}.so", std::process::id()));
    let src = dir.join(format!("hanging-nss-{}.c", std::process::id()));
    fs::write(
        &src,
        "#include <unistd.h>\n#include <pwd.h>\n#include <grp.h>\n\
         int getpwnam_r(const char *n, struct passwd *p, char *b, size_t l, struct passwd **r)\
         { sleep(120); *r = 0; return 0; }\n\
         int getgrnam_r(const char *n, struct group *g, char *b, size_t l, struct group **r)\
         { sleep(120); *r = 0; return 0; }\n",
    )
    .unwrap();
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("gcc must be installed");
    let _ = fs::remove_file(&src);
    assert!(out.status.success(), "gcc: {out:?}");
    so
}

#[test]
fn a_user_database_that_never_answers_fails_the_load_within_its_bound() {
    let dir = TempDir::new("rsafe-nss");
    let cfg = config_text(
        dir.path(),
        "",
        &identity(
            &format!("{}/o", dir.path().display()),
            "readers: [{user: some-directory-user}]",
        ),
    );
    let file = dir.write("tbot.yaml", &cfg);
    let so = hanging_nss();
    let started = Instant::now();
    let (code, _, err) = run_tbot(
        &["check", "-c", file.to_str().unwrap()],
        &[("LD_PRELOAD", so.to_str().unwrap())],
        Duration::from_secs(30),
    );
    let took = started.elapsed();
    assert_eq!(code, Some(2), "still waiting after {took:?}: {err}");
    assert!(
        err.contains("did not answer within 10 s") && err.contains("some-directory-user"),
        "{err}"
    );
    assert!(took < Duration::from_secs(25), "{took:?}");

    // SIGTERM during the lookup at start ends it at once.
    let mut child = Command::new(BIN)
        .args([
            "start",
            "-c",
            file.to_str().unwrap(),
            "--diag-addr",
            "127.0.0.1:0",
        ])
        .env("LD_PRELOAD", &so)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if sent.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = fs::remove_file(&so);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "not stopped within 5 s of SIGTERM"
    );
}
