//! Hostile and broken paths, through the real
//! binary: a destination through a symlink another user planted is refused
//! and reported, for identity outputs and the multiplexer alike, while links
//! of root's or tbot's own keep working; errors of CA loading and output
//! writing say what is wrong in the operator's words.

#[path = "support/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::util::current_user;
use common::*;

/// The user the tests plant links as: `nobody`, by number (no user made).
const NOBODY: u32 = 65534;

fn identity(name: &str, dest: &Path) -> String {
    format!(
        "  - type: identity\n    name: {name}\n    principals: [{}]\n    \
         destination: {{type: directory, path: {}}}\n",
        current_user(),
        dest.display()
    )
}

fn multiplexer(name: &str, identity: &str, dest: &Path) -> String {
    format!(
        "  - type: ssh-multiplexer\n    name: {name}\n    identity: {identity}\n    \
         destination: {{type: directory, path: {}}}\n",
        dest.display()
    )
}

/// The JSON body of a response, or Null (a plain-text 503 when busy).
fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_default()
}

/// The reason `/readyz/<name>` gives once the service is unhealthy.
fn unhealthy_reason(t: &Tbot, name: &str) -> String {
    let r = t.until(&format!("/readyz/{name}"), Duration::from_secs(10), |r| {
        r.status == 503 && json(r)["status"] == "unhealthy"
    });
    json(&r)["reason"].as_str().unwrap_or_default().to_string()
}

/// Waits until `/readyz/<name>` gives `reason`.
fn wait_reason(t: &Tbot, name: &str, reason: &str) {
    t.until(&format!("/readyz/{name}"), Duration::from_secs(10), |r| {
        json(r)["reason"] == reason
    });
}

/// `ln -s target link` as uid 65534, through setpriv (util-linux).
fn plant_link_as_nobody(target: &Path, link: &Path) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "ln",
            "-s",
        ])
        .arg(target)
        .arg(link)
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert!(
        out.status.success(),
        "setpriv ln -s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = fs::symlink_metadata(link).unwrap();
    assert!(meta.is_symlink());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
}

#[test]
fn a_destination_through_another_users_symlink_is_refused_and_reported() {
    if !is_root() {
        eprintln!(
            "skipped: planting a symlink owned by another user needs root (setpriv --reuid=65534); CI runs the suite as root"
        );
        return;
    }
    let dir = TempDir::new("hostile-link");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A sticky, world-writable directory (/tmp's mode) holding the
    // destinations, and root's directories the planted links point at.
    let public = dir.join("pub");
    fs::create_dir(&public).unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o1777)).unwrap();
    let rootdir = dir.join("rootdir");
    fs::create_dir(&rootdir).unwrap();
    fs::write(rootdir.join("key"), b"root's own file\n").unwrap();
    fs::write(rootdir.join("ssh_ca.pub"), b"root's own CA\n").unwrap();
    let rootmux = dir.join("rootmux");
    fs::create_dir(&rootmux).unwrap();
    plant_link_as_nobody(&rootdir, &public.join("out"));
    plant_link_as_nobody(&rootmux, &public.join("mux"));
    // A link of tbot's own user (root here) in the path: followed.
    fs::create_dir(dir.join("real")).unwrap();
    symlink(dir.join("real"), dir.join("mine")).unwrap();

    let services = identity("a", &public.join("out"))
        + &identity("b", &dir.join("mine/b"))
        + &multiplexer("m", "b", &public.join("mux"));
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);

    let refused = |link: &Path| {
        format!(
            "{}: symbolic link owned by uid {NOBODY}, neither root nor tbot's user (uid 0); refusing to follow it",
            link.display()
        )
    };
    assert_eq!(unhealthy_reason(&t, "a"), refused(&public.join("out")));
    assert_eq!(unhealthy_reason(&t, "m"), refused(&public.join("mux")));
    t.until("/readyz/b", Duration::from_secs(10), |r| r.status == 200);
    certs::assert_whole_set(&t.dir.join("real/b"));

    // It keeps retrying, and never writes through the links.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(unhealthy_reason(&t, "a"), refused(&public.join("out")));
    let mut names: Vec<String> = fs::read_dir(&rootdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["key", "ssh_ca.pub"]);
    assert_eq!(fs::read(rootdir.join("key")).unwrap(), b"root's own file\n");
    assert_eq!(
        fs::read(rootdir.join("ssh_ca.pub")).unwrap(),
        b"root's own CA\n"
    );
    assert_eq!(fs::read_dir(&rootmux).unwrap().count(), 0);
}

#[test]
fn ca_key_and_destination_errors_say_what_is_wrong() {
    let dir = TempDir::new("op-errors");
    let storage = dir.join("storage");
    fs::create_dir(&storage).unwrap();
    let key = storage.join("ca_key");
    fs::write(&key, b"hello world\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    // Regular files where destination directories must be.
    let plain = dir.join("plain");
    fs::write(&plain, b"x").unwrap();
    let plain2 = dir.join("plain2");
    fs::write(&plain2, b"x").unwrap();
    let services = identity("a", &plain)
        + &identity("b", &plain.join("below"))
        + &identity("ok", &dir.join("ok"))
        + &multiplexer("m", "ok", &plain2);
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);

    let garbage = format!(
        "{}: not an OpenSSH private key (it does not begin with \"-----BEGIN OPENSSH PRIVATE KEY-----\")",
        key.display()
    );
    assert_eq!(unhealthy_reason(&t, "ca-rotation"), garbage);
    assert!(
        unhealthy_reason(&t, "ok").ends_with(&garbage),
        "{}",
        t.log()
    );
    assert!(!t.log().contains("NUL byte"), "{}", t.log());

    // Emptied: said so.
    fs::write(&key, b"").unwrap();
    let empty = format!("{}: empty file; not an OpenSSH private key", key.display());
    wait_reason(&t, "ca-rotation", &empty);

    // A real key: the outputs with a directory work, the others say why not.
    fs::remove_file(&key).unwrap();
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    t.until("/readyz/ok", Duration::from_secs(10), |r| r.status == 200);
    let not_a_dir = |p: &Path| format!("{}: not a directory", p.display());
    wait_reason(&t, "a", &not_a_dir(&plain));
    wait_reason(&t, "b", &not_a_dir(&plain));
    wait_reason(&t, "m", &not_a_dir(&plain2));
    assert!(!t.log().contains("os error 17"), "{}", t.log());
}
