//! Readers of a destination (upstream tbot's `acls` and `readers`), through
//! the real binary, as root, with real unprivileged users made for the test
//! (`useradd`, removed after) and a real sshd: a reader reads the key and
//! logs in with the certificate, directly and through the multiplexer's
//! `ssh_config`; a non-reader is refused both; this holds after a renewal
//! and after a CA rotation; a reload that changes the readers applies them
//! to the current generation at once; on a file system without ACLs
//! (ramfs), `acls: try` warns and works and `acls: required` is unhealthy.
//! The socket is bound under its real path (`ss -x`). A destination inside
//! the storage directory is reachable, and nothing else there. An unknown
//! user is refused with file:line:column, at start and at a reload.
//!
//! Every test but the last needs root (useradd, setpriv, mount) and says so
//! when it skips.

#[path = "support/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;
#[path = "support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sshd::{describe, ssh_command, Sshd};

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!(
                "skipped: needs root (useradd, setpriv, a real sshd logging in as other users)"
            );
            return;
        }
    };
}

/// A system user made for one test, with a shell and an unlocked (but
/// passwordless) account so that sshd (UsePAM no) lets it log in with a
/// certificate; removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new(tag: &str) -> TestUser {
        static N: AtomicU32 = AtomicU32::new(0);
        // At most 32 characters, unique to this run.
        let name = format!(
            "tbr{tag}{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("useradd")
            .args(["-M", "-d", "/", "-s", "/bin/sh", "-U", "-p", "*", &name])
            .output()
            .expect("useradd (passwd) must be installed");
        assert!(out.status.success(), "useradd {name}: {}", describe(&out));
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }

    /// `cmd`, run as this user (setpriv, util-linux), HOME=/.
    fn run(&self, cmd: &Command) -> Output {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env("HOME", "/")
            .stdin(std::process::Stdio::null());
        c.output().expect("setpriv (util-linux) must be installed")
    }

    fn cat(&self, file: &Path) -> Output {
        let mut c = Command::new("cat");
        c.arg(file);
        self.run(&c)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// The identity output `id` (principals: every user given) and the
/// multiplexer `mux` on it, each with `readers_yaml` (a `readers:` line or
/// nothing) and `acls`.
fn config(dir: &Path, principals: &[&str], acls: &str, readers: &[&TestUser]) -> String {
    let list: Vec<String> = readers
        .iter()
        .map(|u| format!("{{user: {}}}", u.name))
        .collect();
    let access = format!("acls: {acls}, readers: [{}]", list.join(", "));
    config_text(
        dir,
        "credential_ttl: 1m\nrenewal_interval: 6s\n",
        &format!(
            "  - type: identity\n    name: id\n    principals: [{}]\n    \
             destination: {{type: directory, path: {}, {access}}}\n  \
             - type: ssh-multiplexer\n    name: mux\n    identity: id\n    \
             destination: {{type: directory, path: {}, {access}}}\n",
            principals.join(", "),
            dir.join("out").display(),
            dir.join("mux").display(),
        ),
    )
}

/// Waits until every service is healthy.
fn wait_ready(t: &Tbot) {
    let r = t.until("/readyz", Duration::from_secs(15), |r| r.status == 200);
    assert_eq!(r.status, 200, "{}\n{}", r.body, t.log());
}

/// `user` logs in as itself with the key and certificate it reads from
/// `out`, directly: `id -un` over ssh. Retried a few times: a renewal
/// between ssh's reads of `key` and `key-cert.pub` gives a mismatched
/// pair once (an ACL refusal fails every time).
fn login_direct(user: &TestUser, sshd: &Sshd, out: &Path) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let mut cmd = ssh_command(
            sshd.port(),
            &out.join("key"),
            &out.join("key-cert.pub"),
            &user.name,
            &[],
        );
        cmd.arg("--").arg("id -un");
        let o = user.run(&cmd);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == user.name {
            return Ok(());
        }
        last = describe(&o);
    }
    Err(last)
}

/// `user` logs in through the multiplexer: `ssh -F <ssh_config>`, retried
/// as [`login_direct`].
fn login_mux(user: &TestUser, sshd: &Sshd, ssh_config: &Path) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F"]).arg(ssh_config).args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentityAgent=none",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            "-p",
            &sshd.port().to_string(),
            "-l",
            &user.name,
            "127.0.0.1",
            "--",
            "id -un",
        ]);
        let o = user.run(&cmd);
        if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == user.name {
            return Ok(());
        }
        last = describe(&o);
    }
    Err(last)
}

/// A copy of the multiplexer's ssh_config anyone may read (its text is no
/// secret), so that a non-reader's refusal is the socket's, not the file's.
fn public_copy(ssh_config: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("ssh_config.copy");
    fs::copy(ssh_config, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    copy
}

/// The whole promise for one state of the output: the reader reads the
/// key and logs in directly and through the multiplexer; the non-reader
/// cannot read the key, nor the ssh_config, nor connect to the socket.
fn check(reader: &TestUser, other: &TestUser, sshd: &Sshd, dir: &Path, when: &str) {
    let out = dir.join("out");
    let mux = dir.join("mux");
    let key = reader.cat(&out.join("key"));
    assert!(
        key.status.success() && String::from_utf8_lossy(&key.stdout).contains("PRIVATE KEY"),
        "{when}: the reader cannot read the key: {}",
        describe(&key)
    );
    login_direct(reader, sshd, &out)
        .unwrap_or_else(|e| panic!("{when}: the reader's direct login failed: {e}"));
    login_mux(reader, sshd, &mux.join("ssh_config")).unwrap_or_else(|e| {
        panic!("{when}: the reader's login through the multiplexer failed: {e}")
    });

    let key = other.cat(&out.join("key"));
    assert!(
        !key.status.success() && String::from_utf8_lossy(&key.stderr).contains("Permission denied"),
        "{when}: a non-reader read the key: {}",
        describe(&key)
    );
    let cert = other.cat(&out.join("key-cert.pub"));
    assert!(
        !cert.status.success(),
        "{when}: a non-reader read the certificate"
    );
    assert!(
        login_direct(other, sshd, &out).is_err(),
        "{when}: a non-reader logged in"
    );
    let conf = other.cat(&mux.join("ssh_config"));
    assert!(
        !conf.status.success(),
        "{when}: a non-reader read ssh_config"
    );
    let copy = public_copy(&mux.join("ssh_config"), dir);
    let e =
        login_mux(other, sshd, &copy).expect_err("a non-reader logged in through the multiplexer");
    assert!(
        e.contains("v1.sock: Permission denied"),
        "{when}: the non-reader was not refused by the socket: {e}"
    );
}

/// The Signing CA fingerprint of `out/key-cert.pub`.
fn signing_ca(out: &Path) -> String {
    certs::cert_field(&out.join("key-cert.pub"), "Signing CA").unwrap_or_default()
}

/// Waits until `out`'s certificate differs from `before` (a new generation).
fn wait_new_cert(out: &Path, before: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if fs::read_to_string(out.join("key-cert.pub")).unwrap_or_default() != before {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no new certificate after {what}");
}

#[test]
fn a_reader_logs_in_directly_and_through_the_multiplexer_after_renewal_and_rotation() {
    need_root!();
    let reader = TestUser::new("r");
    let other = TestUser::new("n");
    let dir = TempDir::new("readers");
    let path = dir.path().to_path_buf();
    // Both users are principals: only the ACLs tell them apart.
    let cfg = config(&path, &[&reader.name, &other.name], "required", &[&reader]);
    let t = Tbot::start(dir, &cfg, &[]);
    wait_ready(&t);
    let out = path.join("out");
    // sshd trusts the first CA, and the next one the test rotates to.
    let trusted = path.join("trusted_cas");
    fs::copy(out.join("ssh_ca.pub"), &trusted).unwrap();
    let sshd = Sshd::start(&trusted);

    check(&reader, &other, &sshd, &path, "first generation");

    let cert = fs::read_to_string(out.join("key-cert.pub")).unwrap();
    wait_new_cert(&out, &cert, "a renewal");
    check(&reader, &other, &sshd, &path, "after a renewal");

    // CA rotation: a new key in storage; the output re-issues at once.
    let before = signing_ca(&out);
    let new = path.join("new_ca");
    certs::ssh_keygen(
        &["-q", "-t", "ed25519", "-N", "", "-C", "rotated", "-f"],
        &new,
    )
    .unwrap();
    let mut cas = fs::read_to_string(&trusted).unwrap();
    cas += &fs::read_to_string(new.with_extension("pub")).unwrap();
    fs::write(&trusted, cas).unwrap();
    fs::rename(&new, path.join("storage/ca_key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while signing_ca(&out) == before {
        assert!(Instant::now() < deadline, "no certificate from the new CA");
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&reader, &other, &sshd, &path, "after a CA rotation");
}

#[test]
fn a_reload_that_changes_the_readers_applies_them_to_the_current_generation_at_once() {
    need_root!();
    let first = TestUser::new("a");
    let second = TestUser::new("b");
    let dir = TempDir::new("readers-reload");
    let path = dir.path().to_path_buf();
    let principals = [first.name.as_str(), second.name.as_str()];
    // A long renewal interval: no new generation comes by itself.
    let cfg = config(&path, &principals, "try", &[&first])
        .replace("renewal_interval: 6s", "renewal_interval: 30s");
    let t = Tbot::start(dir, &cfg, &[]);
    wait_ready(&t);
    let out = path.join("out");
    let generation = fs::read_link(out.join("..data")).unwrap();
    assert!(first.cat(&out.join("key")).status.success());
    assert!(!second.cat(&out.join("key")).status.success());

    let cfg = config(&path, &principals, "try", &[&second])
        .replace("renewal_interval: 6s", "renewal_interval: 30s");
    fs::write(path.join("tbot.yaml"), cfg).unwrap();
    t.signal(libc::SIGHUP);
    assert!(
        t.wait_log("readers_changed=id,mux", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    // At once, on the generation in force: same ..data, no new credential.
    assert_eq!(fs::read_link(out.join("..data")).unwrap(), generation);
    let key = second.cat(&out.join("key"));
    assert!(key.status.success(), "new reader: {}", describe(&key));
    let key = first.cat(&out.join("key"));
    assert!(
        !key.status.success(),
        "the removed reader still reads the key"
    );
    let conf = second.cat(&path.join("mux/ssh_config"));
    assert!(
        conf.status.success(),
        "new reader, ssh_config: {}",
        describe(&conf)
    );
    assert!(!first.cat(&path.join("mux/ssh_config")).status.success());
    // The services were kept: not restarted, still healthy.
    assert!(!t.log().contains("ssh multiplexer stopped"), "{}", t.log());
    wait_ready(&t);

    // An unknown user: the reload is refused with file:line:column, and
    // the readers in force stay.
    let bad = config(&path, &principals, "try", &[&second])
        .replace("renewal_interval: 6s", "renewal_interval: 30s")
        .replace(
            &format!("{{user: {}}}", second.name),
            "{user: no-such-user-tbot-test}",
        );
    fs::write(path.join("tbot.yaml"), bad).unwrap();
    t.signal(libc::SIGHUP);
    assert!(
        t.wait_log("configuration reload failed", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let file = path.join("tbot.yaml").display().to_string();
    assert!(
        t.log().contains(&format!("{file}:9:"))
            && t.log()
                .contains("unknown user \\\"no-such-user-tbot-test\\\""),
        "{}",
        t.log()
    );
    assert!(second.cat(&out.join("key")).status.success());

    // acls: off takes every grant away again (the plain modes).
    let cfg = config(&path, &principals, "off", &[&second])
        .replace("renewal_interval: 6s", "renewal_interval: 30s");
    fs::write(path.join("tbot.yaml"), cfg).unwrap();
    t.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.cat(&out.join("key")).status.success() {
        assert!(
            Instant::now() < deadline,
            "acls: off left the grant: {}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A ramfs (no extended attributes, so no ACLs) mounted for a test,
/// unmounted on drop.
struct Ramfs(PathBuf);

impl Ramfs {
    fn mount(at: &Path) -> Ramfs {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "ramfs", "-o", "mode=0755", "tbot-test"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount ramfs: {}", describe(&out));
        Ramfs(at.to_path_buf())
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        // The mount point, and the test's directory it was in (emptied by
        // its TempDir, which could not remove the mount point).
        let _ = fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[test]
fn without_acl_support_try_warns_and_works_and_required_is_unhealthy() {
    need_root!();
    let reader = TestUser::new("f");
    let dir = TempDir::new("readers-noacl");
    let path = dir.path().to_path_buf();
    let fs_dir = Ramfs::mount(&path.join("ramfs"));
    let probe = fs_dir.0.join("probe");
    fs::write(&probe, b"").unwrap();
    let setfacl = Command::new("setfacl")
        .args(["-m", "u:0:r"])
        .arg(&probe)
        .output()
        .unwrap();
    assert!(
        !setfacl.status.success(),
        "ramfs took an ACL here: this test cannot run"
    );
    let services = |acls: &str| {
        format!(
            "  - type: identity\n    name: id\n    principals: [{r}]\n    \
             destination: {{type: directory, path: {}/out, acls: {acls}, readers: [{{user: {r}}}]}}\n  \
             - type: ssh-multiplexer\n    name: mux\n    identity: id\n    \
             destination: {{type: directory, path: {}/mux, acls: {acls}, readers: [{{user: {r}}}]}}\n",
            fs_dir.0.display(),
            fs_dir.0.display(),
            r = reader.name,
        )
    };

    let t = Tbot::start(dir, &config_text(&path, "", &services("try")), &[]);
    wait_ready(&t);
    let warning = "ACLs for the destination's readers could not be set";
    let log = t.log();
    assert!(log.contains(warning), "{log}");
    assert!(log.contains("does not support POSIX ACLs"), "{log}");
    // Once per service, not once per write.
    assert_eq!(log.matches(warning).count(), 2, "{log}");
    // It works: the files are there, in the plain modes.
    let key = fs_dir.0.join("out/key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!reader.cat(&key).status.success());
    drop(t);

    let dir = TempDir::new("readers-noacl-req");
    let cfg = config_text(dir.path(), "", &services("required"));
    let t = Tbot::start(dir, &cfg, &[]);
    for name in ["id", "mux"] {
        let r = t.until(&format!("/readyz/{name}"), Duration::from_secs(15), |r| {
            r.status == 503 && r.body.contains("does not support POSIX ACLs")
        });
        assert!(
            r.status == 503 && r.body.contains("acls: required"),
            "{name}: {}\n{}",
            r.body,
            t.log()
        );
    }
    drop(t);
    drop(fs_dir);
}

#[test]
fn ss_shows_the_sockets_real_path() {
    need_root!();
    let dir = TempDir::new("readers-ss");
    let path = dir.path().to_path_buf();
    let t = Tbot::start(dir, &config(&path, &["root"], "try", &[]), &[]);
    wait_ready(&t);
    let sock = path.join("mux/v1.sock");
    let out = Command::new("ss")
        .args(["-xlpn"])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("pid={},", t.pid())))
        .collect();
    assert!(
        ours.iter()
            .any(|l| l.contains(&format!(" {} ", sock.display()))),
        "ss does not show {} for tbot:\n{}",
        sock.display(),
        ours.join("\n")
    );
    assert!(
        !ours.iter().any(|l| l.contains("/proc/self/fd")),
        "{}",
        ours.join("\n")
    );
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

#[test]
fn a_destination_inside_storage_is_reachable_and_nothing_else_there() {
    need_root!();
    let reader = TestUser::new("s");
    let other = TestUser::new("t");
    let dir = TempDir::new("readers-storage");
    let path = dir.path().to_path_buf();
    let storage = path.join("storage");
    // As packaged: /var/lib/tbot (0700) and /var/lib/tbot/machine-id.
    let services = |readers: &str| {
        format!(
            "  - type: identity\n    name: machine-id\n    principals: [{}]\n    \
             destination: {{type: directory, path: {}, readers: [{readers}]}}\n",
            reader.name,
            storage.join("machine-id").display()
        )
    };
    let cfg = config_text(&path, "", &services(&format!("{{user: {}}}", reader.name)));
    let t = Tbot::start(dir, &cfg, &[]);
    wait_ready(&t);
    let key = storage.join("machine-id/key");
    let r = reader.cat(&key);
    assert!(
        r.status.success(),
        "the reader cannot reach the key: {}",
        describe(&r)
    );
    // Traverse only: no listing of storage, no CA key.
    let mut ls = Command::new("ls");
    ls.arg(&storage);
    assert!(
        !reader.run(&ls).status.success(),
        "the reader lists storage"
    );
    assert!(!reader.cat(&storage.join("ca_key")).status.success());
    assert!(
        !other.cat(&key).status.success(),
        "a non-reader reaches the key"
    );
    let acl = getfacl(&storage);
    assert!(
        acl.contains(&format!("user:{}:--x", reader.uid)) && acl.contains("other::---"),
        "{acl}"
    );

    // A reload without readers takes the passage away too.
    fs::write(
        path.join("tbot.yaml"),
        config_text(&path, "", &services("")),
    )
    .unwrap();
    t.signal(libc::SIGHUP);
    assert!(
        t.wait_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let acl = getfacl(&storage);
    assert!(!acl.contains(&format!("user:{}:", reader.uid)), "{acl}");
    assert!(!reader.cat(&key).status.success());
}

#[test]
fn an_unknown_reader_is_refused_at_start_with_file_line_and_column() {
    // No root needed: nothing is started.
    let dir = TempDir::new("readers-unknown");
    let cfg = config_text(
        dir.path(),
        "",
        &format!(
            "  - type: identity\n    principals: [x]\n    destination:\n      type: directory\n      \
             path: {}\n      readers:\n        - group: root\n        - user: no-such-user-tbot-test\n",
            dir.join("out").display()
        ),
    );
    let file = dir.write("tbot.yaml", &cfg);
    let (code, _, err) = run_tbot(
        &["start", "-c", file.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:11:17: ", file.display()))
            && err.contains("unknown user \"no-such-user-tbot-test\""),
        "{err}"
    );
    assert!(!dir.join("out").exists(), "nothing written");
}
