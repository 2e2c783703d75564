//! Files tbot trusts are checked as sshd's StrictModes checks them (issue
//! 17, item 4), through the real binary. The case: the storage directory
//! at mode 0777, another local user moves their own key (0600, theirs) over
//! `ca_key`. tbot must not sign with it nor publish it as `ssh_ca.pub`, and
//! must say why (`/readyz` 503). Root only (it plays the other user with
//! chown); skipped with the reason otherwise.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const OTHER_UID: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh ed25519 key at `path`, owned by `uid`, mode 0600.
fn foreign_key(path: &Path, uid: u32) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

fn one_output(dir: &TempDir) -> String {
    let services = format!(
        "  - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("out").display()
    );
    config_text(
        dir.path(),
        "credential_ttl: 1m\nrenewal_interval: 1s\n",
        &services,
    )
}

/// Starts tbot, then (storage at 0777 when `open`) moves another user's key
/// over `ca_key`: `/readyz` must turn 503 with `why`, and `ssh_ca.pub` stay
/// the old CA through several renewals.
fn swap_in_a_foreign_key(tag: &str, open: bool, why: &str) {
    if !is_root() {
        eprintln!("skipped: needs root (plays another user with chown)");
        return;
    }
    let dir = TempDir::new(tag);
    let cfg = one_output(&dir);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let ca_pub = t.dir.join("out/ssh_ca.pub");
    let before = std::fs::read(&ca_pub).unwrap();
    let storage = t.dir.join("storage");
    if open {
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let theirs = storage.join("theirs");
    foreign_key(&theirs, OTHER_UID);
    std::fs::rename(&theirs, storage.join("ca_key")).unwrap();
    let r = t.until("/readyz", Duration::from_secs(5), |r| r.status == 503);
    assert!(r.body.contains(why), "{}", r.body);
    // Several renewals later (every second), still the old CA everywhere.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read(&ca_pub).unwrap(),
        before,
        "tbot published another user's key"
    );
}

#[test]
fn another_users_key_in_an_open_storage_directory_is_refused() {
    swap_in_a_foreign_key("trust-swap", true, "mode 0777");
}

#[test]
fn another_users_key_is_refused_even_in_a_closed_directory() {
    swap_in_a_foreign_key("trust-owner", false, "owned by uid 65534");
}

#[test]
fn an_open_storage_directory_is_refused_at_load_with_its_place() {
    let dir = TempDir::new("trust-load");
    let storage = dir.join("storage");
    std::fs::create_dir(&storage).unwrap();
    std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = dir.write("tbot.yaml", &one_output(&dir));
    let cfg_s = cfg.display().to_string();
    let (code, _, err) = run_tbot(&["start", "-c", &cfg_s], &[], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{cfg_s}:2:")) && err.contains("mode 0777"),
        "{err}"
    );
}
