//! Live runtime files and the distro's age-based cleaners (issue 17, item
//! 5), through the real binary and a real `systemd-tmpfiles --clean`: with
//! an age of 0 (clean everything, unconditionally) on the directory holding
//! tbot's storage, a multiplexer's socket directory and the diagnostics
//! service's private socket directory (`XDG_RUNTIME_DIR`), nothing of a
//! running tbot goes: tbot holds an flock on each of those directories,
//! which tmpfiles.d(5) documents as the way to exempt a subtree.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// (device, inode) of `p`, or None when it is gone.
fn id(p: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[test]
fn systemd_tmpfiles_clean_leaves_a_running_tbots_files() {
    let Ok(out) = Command::new("systemd-tmpfiles").arg("--version").output() else {
        eprintln!("skipped: systemd-tmpfiles is not installed (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let dir = TempDir::new("tmpfiles");
    // Aged: storage, the multiplexer, the runtime directory. The identity
    // output stays outside (its files are renewed, not runtime files).
    let aged = dir.join("aged");
    std::fs::create_dir(&aged).unwrap();
    let runtime = aged.join("run");
    std::fs::create_dir(&runtime).unwrap();
    let services = identity_and_mux(&dir.join("id"), &aged.join("mux"));
    let cfg = format!(
        "version: v2\nstorage: {{type: directory, path: {}}}\nservices:\n{services}",
        aged.join("storage").display()
    );
    let run = runtime.display().to_string();
    let t = Tbot::start_with(dir, &cfg, &[], &[("XDG_RUNTIME_DIR", &run)]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);

    let watched: Vec<_> = [
        aged.join("mux/v1.sock"),
        aged.join("mux/ssh_config"),
        aged.join("storage/ca_key"),
        aged.join("storage/tbot.lock"),
    ]
    .into_iter()
    .chain(
        std::fs::read_dir(&runtime)
            .unwrap()
            .map(|e| e.unwrap().path()),
    )
    .collect();
    assert!(watched.len() >= 5, "no diagnostics directory in {run}");
    let before: Vec<_> = watched.iter().map(|p| id(p)).collect();
    assert!(before.iter().all(Option::is_some), "{watched:?} {before:?}");

    let conf = t.dir.write(
        "tbot-test-tmpfiles.conf",
        &format!("e {} - - - 0\n", aged.display()),
    );
    // Proof that the run cleans: a file nobody holds goes.
    let sentinel = aged.join("mux-left-over");
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("old"), "x").unwrap();
    let out = Command::new("systemd-tmpfiles")
        .arg("--clean")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-tmpfiles: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !sentinel.join("old").exists(),
        "systemd-tmpfiles cleaned nothing"
    );
    // Right after, with no time for a rebind: the very same files.
    let after: Vec<_> = watched.iter().map(|p| id(p)).collect();
    assert_eq!(before, after, "{watched:?}");
    // And the whole of tbot still works through them.
    let r = t.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!t.log().contains("binding it again"), "{}", t.log());
}
