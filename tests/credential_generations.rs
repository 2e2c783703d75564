//! One generation, always: `key`, `key.pub`,
//! `key-cert.pub` and `ssh_ca.pub` change as a whole. tbot is SIGKILLed at
//! every write and rename step of an issue (the debug build's failpoints
//! `identity-step-1` … `identity-step-13`, see `identity_files`); after each
//! kill, and after the next start, the key matches its certificate, the
//! certificate is signed by the `ssh_ca.pub` beside it, and the next start
//! leaves no temp file or stale generation behind.

#[path = "support/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use certs::assert_whole_set;
use common::util::current_user;
use common::*;

/// The steps `identity_files::write_identity` numbers.
const STEPS: usize = 13;
const FILES: [&str; 4] = ["key", "key.pub", "key-cert.pub", "ssh_ca.pub"];

fn output(name: &str, dest: &Path) -> String {
    output_renewed(name, dest, "100ms")
}

/// [`output`] renewed every `renewal`.
fn output_renewed(name: &str, dest: &Path, renewal: &str) -> String {
    format!(
        "  - type: identity\n    name: {name}\n    principals: [{}]\n    \
         renewal_interval: {renewal}\n    credential_ttl: 1m\n    \
         destination: {{type: directory, path: {}}}\n",
        current_user(),
        dest.display()
    )
}

/// What is in `dest` besides the layout: anything but `..data`, the one
/// generation it points at, and the four links through it.
fn leftovers(dest: &Path) -> Vec<String> {
    let current = fs::read_link(dest.join("..data"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut extra: Vec<String> = fs::read_dir(dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "..data" && *n != current && !FILES.contains(&n.as_str()))
        .collect();
    for f in FILES {
        let link = fs::read_link(dest.join(f))
            .map(|p| p.display().to_string())
            .ok();
        if link != Some(format!("..data/{f}")) {
            extra.push(format!("{f} is not the link ..data/{f}: {link:?}"));
        }
    }
    extra.sort();
    extra
}

fn oneshot(cfg: &Path) {
    let (code, _, stderr) = run_tbot(
        &["start", "--oneshot", "-c", cfg.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{stderr}");
}

/// Starts tbot on `cfg` with the failpoint `identity-step-<n>` holding
/// every write that reaches it for 30 s.
fn start_held_at(cfg: &Path, n: usize) -> Tbot {
    let mut cmd = Command::new(BIN);
    cmd.args(["start", "-c"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("NOTIFY_SOCKET")
        .env("TBOT_FAILPOINTS", format!("identity-step-{n}=sleep:30000"));
    Tbot::spawn(cmd, TempDir::new("gen-kill-run"))
}

/// Starts tbot with the failpoint `identity-step-<n>` holding every write
/// there, waits until both outputs' writers are held, and SIGKILLs it.
fn kill_at_step(cfg: &Path, n: usize, outs: &[&Path]) {
    let mut t = start_held_at(cfg, n);
    let needle = format!("failpoint reached name=identity-step-{n} ");
    let reached = |log: &str| log.matches(&needle).count();
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while reached(&t.log()) < outs.len() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(reached(&t.log()), outs.len(), "step {n}:\n{}", t.log());
    t.child.kill().unwrap();
    let status = t.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "step {n}: {status:?}");
}

#[test]
fn a_kill_at_any_step_of_an_issue_leaves_a_whole_set() {
    let dir = TempDir::new("gen-kill");
    let (a, b) = (dir.join("out/a"), dir.join("out/b"));
    let cfg_text = config_text(dir.path(), "", &(output("a", &a) + &output("b", &b)));
    let cfg = dir.write("tbot.yaml", &cfg_text);
    let outs = [a.as_path(), b.as_path()];

    // b starts in the old flat layout (regular files), as an earlier tbot
    // left it: the first kills land while it is being moved over.
    oneshot(&cfg);
    for f in FILES {
        let bytes = fs::read(b.join(f)).unwrap();
        fs::remove_file(b.join(f)).unwrap();
        fs::write(b.join(f), bytes).unwrap();
        fs::set_permissions(b.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    for name in fs::read_dir(&b).unwrap() {
        let name = name.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            let p = b.join(&name);
            if p.is_symlink() {
                fs::remove_file(p).unwrap();
            } else {
                fs::remove_dir_all(p).unwrap();
            }
        }
    }
    assert_whole_set(&b);

    for n in 1..=STEPS {
        let before: Vec<Vec<u8>> = outs
            .iter()
            .map(|o| fs::read(o.join("key-cert.pub")).unwrap())
            .collect();
        kill_at_step(&cfg, n, &outs);
        for (out, old) in outs.iter().zip(&before) {
            assert_whole_set(out);
            let now = fs::read(out.join("key-cert.pub")).unwrap();
            // Before the switch (step 8) the old set is in force; from it on,
            // the new one.
            assert_eq!(now == *old, n < 8, "step {n}: {}", out.display());
        }
        // The next start cleans up and issues a whole set.
        oneshot(&cfg);
        for out in outs {
            assert_whole_set(out);
            assert_eq!(leftovers(out), Vec::<String>::new(), "after step {n}");
        }
    }
    // ssh reads the key through the link with the certificate beside it,
    // and refuses a key others can read: the file behind the link is 0600.
    for out in outs {
        for f in FILES {
            let mode = fs::metadata(out.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", out.join(f).display());
        }
    }
}

/// The first write into a destination tbot makes (every output's first
/// start): the directory is known empty, so `..data` is made in place by
/// one symlinkat, with no `..data_tmp` and no rename (step 7 is not on its
/// way), and the links without looking for old ones. A kill at any other
/// step leaves nothing published or one whole generation behind `..data`
/// (the links come after it, as on every write); the next start then
/// finishes a whole set and leaves nothing else.
#[test]
fn a_kill_at_any_step_of_a_first_write_leaves_nothing_or_a_whole_set() {
    let dir = TempDir::new("gen-first");
    let links = |out: &Path| -> Vec<String> {
        FILES
            .iter()
            .filter(|f| fs::symlink_metadata(out.join(f)).is_ok())
            .map(|f| {
                let target = fs::read_link(out.join(f)).unwrap();
                assert_eq!(target, Path::new("..data").join(f), "{}", out.display());
                f.to_string()
            })
            .collect()
    };
    for n in (1..=STEPS).filter(|&n| n != 7) {
        let (a, b) = (dir.join(&format!("s{n}/a")), dir.join(&format!("s{n}/b")));
        let cfg_text = config_text(dir.path(), "", &(output("a", &a) + &output("b", &b)));
        let cfg = dir.write("tbot.yaml", &cfg_text);
        let outs = [a.as_path(), b.as_path()];
        kill_at_step(&cfg, n, &outs);
        for out in outs {
            let data = fs::symlink_metadata(out.join("..data")).is_ok();
            assert_eq!(data, n >= 8, "step {n}: ..data in {}", out.display());
            if data {
                // The generation is whole; the links made so far lead to it.
                assert_whole_set(&out.join("..data"));
                assert_eq!(links(out).len(), n.saturating_sub(8).min(4), "step {n}");
            } else {
                assert_eq!(links(out), Vec::<String>::new(), "step {n}");
            }
            assert!(!out.join("..data_tmp").exists(), "step {n}");
        }
        oneshot(&cfg);
        for out in outs {
            assert_whole_set(out);
            assert_eq!(leftovers(out), Vec::<String>::new(), "after step {n}");
        }
    }

    // Held at step 7 (the renewal's ..data_tmp), first writes go by it:
    // both outputs are written and healthy all the same. Renewed every
    // 50 s (under the 1 m TTL): with 100 ms, a renewal held at step 7 (its
    // ..data_tmp and generation, rightly there) raced the check below (CI,
    // once).
    let (a, b) = (dir.join("s7/a"), dir.join("s7/b"));
    let outputs = output_renewed("a", &a, "50s") + &output_renewed("b", &b, "50s");
    let cfg_text = config_text(dir.path(), "", &outputs);
    let cfg = dir.write("tbot.yaml", &cfg_text);
    let t = start_held_at(&cfg, 7);
    let written = |log: &str| log.matches("identity output written").count();
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while written(&t.log()) < 2 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(written(&t.log()), 2, "{}", t.log());
    assert!(!t.log().contains("name=identity-step-7 "), "{}", t.log());
    for out in [&a, &b] {
        assert_whole_set(out);
        assert_eq!(leftovers(out), Vec::<String>::new());
    }
}
