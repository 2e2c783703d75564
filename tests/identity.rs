//! Identity outputs through the real binary: a real sshd trusting the bot's
//! CA accepts what it writes; CA rotation reaches the outputs within 2 s; a
//! broken destination is reported and recovers; SIGKILL never leaves a
//! broken file; `--oneshot` exit codes; the renewal metrics.

#[path = "support/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;
#[path = "support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::util::Metrics;
use common::*;
use sshd::{current_user, describe, ssh_run, Sshd};

const FILES: [&str; 4] = ["key", "key.pub", "key-cert.pub", "ssh_ca.pub"];

/// One `services:` entry for an identity output.
fn output(name: &str, principal: &str, dest: &Path, extra: &str) -> String {
    format!(
        "  - type: identity\n    name: {name}\n    principals: [{principal}]\n    \
         destination: {{type: directory, path: {}}}\n{extra}",
        dest.display()
    )
}

/// `ssh-keygen ARGS FILE`'s stdout; the test fails with its error.
fn ssh_keygen(args: &[&str], file: &Path) -> String {
    certs::ssh_keygen(args, file).unwrap_or_else(|e| panic!("{e}"))
}

/// `SHA256:...` of a public key (or private key) file.
fn fingerprint(file: &Path) -> String {
    let l = ssh_keygen(&["-l", "-f"], file);
    l.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {l:?}"))
        .to_string()
}

/// The value of a `ssh-keygen -L` field, e.g. "Signing CA" →
/// `ED25519 SHA256:... (using ssh-ed25519)`.
fn cert_field(cert: &Path, field: &str) -> String {
    let l = ssh_keygen(&["-L", "-f"], cert);
    l.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("no {field} in {l}"))
        .to_string()
}

fn cert_signing_ca(cert: &Path) -> String {
    let v = cert_field(cert, "Signing CA");
    v.split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// Why key, key.pub and key-cert.pub do not belong together, if they don't:
/// `ssh-keygen -y -f key` must give the key in key.pub, and the certificate
/// must be for that key.
fn mismatch(dest: &Path) -> Option<String> {
    let derived = ssh_keygen(&["-y", "-f"], &dest.join("key"));
    let written = fs::read_to_string(dest.join("key.pub")).unwrap();
    if derived.split_whitespace().nth(1) != written.split_whitespace().nth(1) {
        return Some(format!("key and key.pub differ in {}", dest.display()));
    }
    let cert_key = cert_field(&dest.join("key-cert.pub"), "Public key");
    let fp = fingerprint(&dest.join("key.pub"));
    (!cert_key.contains(&fp)).then(|| {
        format!(
            "certificate is for {cert_key}, key.pub is {fp} in {}",
            dest.display()
        )
    })
}

fn assert_consistent(dest: &Path) {
    if let Some(m) = mismatch(dest) {
        panic!("{m}");
    }
}

/// The bot's /metrics, parsed.
fn metrics(t: &Tbot) -> Metrics {
    let r = t.get("/metrics");
    assert_eq!(r.status, 200);
    Metrics::parse(&r.body)
}

fn task(m: &Metrics, metric_name: &str, service: &str) -> f64 {
    m.get(
        metric_name,
        &[("name", "output-renewal"), ("service", service)],
    )
    .unwrap_or(0.0)
}

fn healthy(t: &Tbot, name: &str) {
    t.until(&format!("/readyz/{name}"), Duration::from_secs(10), |r| {
        r.status == 200
    });
}

/// Runs `command` over ssh as sshd's user with the identity in `dest`.
fn login(sshd: &Sshd, dest: &Path, command: &str) -> std::process::Output {
    ssh_run(
        sshd.port(),
        &dest.join("key"),
        &dest.join("key-cert.pub"),
        sshd.user(),
        &[],
        command,
    )
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn sshd_trusting_the_bots_ca_accepts_its_certificate_only_for_listed_principals() {
    let dir = TempDir::new("id-sshd");
    let me = current_user();
    let (mine, other) = (dir.join("out/mine"), dir.join("out/other"));
    let services =
        output("mine", &me, &mine, "") + &output("other", "not-the-login-user", &other, "");
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);

    // Every service, internal ones included, reports healthy once the
    // outputs have written their first identity.
    let r = t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let services = r.json()["services"].clone();
    for name in ["identity", "ca-rotation", "heartbeat", "mine", "other"] {
        assert_eq!(services[name]["status"], "healthy", "{name}: {services}");
    }
    let m = metrics(&t);
    for (service, kind) in [
        ("identity", "identity"),
        ("ca-rotation", "ca-rotation"),
        ("mine", "identity"),
    ] {
        let v = m.get(
            "tbot_service_health",
            &[("service", service), ("status", "healthy"), ("type", kind)],
        );
        assert_eq!(v, Some(1.0), "{service} as type {kind}");
    }

    for d in [&mine, &other] {
        for f in FILES {
            let mode = fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert_consistent(d);
    }
    let key_id = format!("tbot/{}/mine", hostname());
    assert_eq!(
        cert_field(&mine.join("key-cert.pub"), "Key ID"),
        format!("\"{key_id}\"")
    );
    let storage_ca = t.dir.join("storage/ca_key");
    assert_eq!(
        cert_signing_ca(&mine.join("key-cert.pub")),
        fingerprint(&storage_ca)
    );

    // sshd re-reads TrustedUserCAKeys per login: it gets its own copy.
    let trusted = t.dir.join("trusted_ca.pub");
    fs::copy(mine.join("ssh_ca.pub"), &trusted).unwrap();
    let sshd = Sshd::start(&trusted);
    let login = |d: &Path| login(&sshd, d, "echo logged-in");

    let out = login(&mine);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "logged-in");
    assert!(
        sshd.wait_for_log(&format!("ID {key_id}"), Duration::from_secs(5)),
        "{}",
        sshd.log()
    );

    // Same CA, same login user, but the certificate does not list it.
    let out = login(&other);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        sshd.wait_for_log("not a listed principal", Duration::from_secs(5)),
        "{}",
        sshd.log()
    );
}

/// Writes a new ed25519 key with ssh-keygen beside storage and renames it
/// over `storage/ca_key` (0600). Returns the new public key file.
fn rotate_ca(dir: &Path, tag: &str) -> PathBuf {
    let new = dir.join(format!("new_ca_{tag}"));
    ssh_keygen(
        &["-q", "-t", "ed25519", "-N", "", "-C", "operator", "-f"],
        &new,
    );
    fs::set_permissions(&new, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&new, dir.join("storage/ca_key")).unwrap();
    new.with_extension("pub")
}

/// Waits until `dest` carries a certificate signed by the CA `ca_fp` and
/// the matching ssh_ca.pub; returns how long that took.
fn wait_for_ca(dest: &Path, ca_fp: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let cert = dest.join("key-cert.pub");
        if cert_signing_ca(&cert) == ca_fp && fingerprint(&dest.join("ssh_ca.pub")) == ca_fp {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_replaced_ca_key_reaches_every_output_within_two_seconds() {
    let dir = TempDir::new("id-rotate");
    let me = current_user();
    let (a, b) = (dir.join("out/a"), dir.join("out/b"));
    // Renewal every 20 minutes: only the rotation notice can re-issue.
    let services = output("a", &me, &a, "") + &output("b", &me, &b, "");
    let cfg = config_text(dir.path(), "renewal_interval: 20m\n", &services);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let old_fp = fingerprint(&t.dir.join("storage/ca_key"));
    assert_eq!(cert_signing_ca(&a.join("key-cert.pub")), old_fp);
    // An sshd that trusts the old CA only (its own copy of ssh_ca.pub).
    let old_trust = t.dir.join("old_ca.pub");
    fs::copy(a.join("ssh_ca.pub"), &old_trust).unwrap();
    let old_sshd = Sshd::start(&old_trust);
    let out = login(&old_sshd, &a, "true");
    assert!(out.status.success(), "{}", describe(&out));

    let new_pub = rotate_ca(t.dir.path(), "1");
    let new_fp = fingerprint(&new_pub);
    assert_ne!(new_fp, old_fp);
    for d in [&a, &b] {
        let took = wait_for_ca(d, &new_fp, Duration::from_secs(5));
        eprintln!("{}: new CA after {took:?}", d.display());
        assert!(
            took.is_some_and(|d| d <= Duration::from_secs(2)),
            "{}: new CA after {took:?}\n{}",
            d.display(),
            t.log()
        );
        assert_consistent(d);
    }
    assert!(t.log().contains("the bot's CA key changed"), "{}", t.log());

    // The rotated CA's certificate is refused until sshd trusts it...
    let out = login(&old_sshd, &a, "true");
    assert!(!out.status.success(), "{}", describe(&out));
    drop(old_sshd);
    // ...and an sshd that trusts only the new CA (the operator's own .pub
    // file) accepts it.
    let sshd = Sshd::start(&new_pub);
    let out = login(&sshd, &a, "true");
    assert!(out.status.success(), "{}", describe(&out));

    // Exactly two issues per output: at start, and on the rotation notice.
    let m = metrics(&t);
    for s in ["a", "b"] {
        assert_eq!(task(&m, "tbot_task_iterations_total", s), 2.0, "{s}");
        // Present at 0, not absent: rate() and ratios see the first failure.
        assert_eq!(
            m.get(
                "tbot_task_iterations_failed_total",
                &[("name", "output-renewal"), ("service", s)]
            ),
            Some(0.0),
            "{s}"
        );
    }
    let r = t.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A tbot with one identity output, `a` (renewal every 20 minutes: only a
/// rotation notice re-issues), once ready; and that output's destination.
fn start_one_output(tag: &str) -> (Tbot, PathBuf) {
    let dir = TempDir::new(tag);
    let out = dir.join("out/a");
    let cfg = config_text(
        dir.path(),
        "renewal_interval: 20m\n",
        &output("a", &current_user(), &out, ""),
    );
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    (t, out)
}

/// Waits until ca-rotation says the key file at `key_path` is missing.
fn wait_key_missing(t: &Tbot, key_path: &Path) {
    let r = t.until("/readyz/ca-rotation", Duration::from_secs(3), |r| {
        r.status == 503
    });
    assert_eq!(
        r.json()["reason"],
        format!(
            "{}: No such file or directory (os error 2)",
            key_path.display()
        )
    );
}

#[test]
fn a_half_written_or_missing_ca_key_is_reported_and_picked_up_once_complete() {
    let (t, out) = start_one_output("id-halfkey");
    let old_fp = fingerprint(&t.dir.join("storage/ca_key"));
    let key_path = t.dir.join("storage/ca_key");

    // The operator copies a new key in place, non-atomically: first half.
    let new = t.dir.join("new_ca");
    ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-f"], &new);
    let bytes = fs::read(&new).unwrap();
    fs::write(&key_path, &bytes[..bytes.len() / 2]).unwrap();
    let r = t.until("/readyz/ca-rotation", Duration::from_secs(3), |r| {
        r.status == 503
    });
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with(&format!(
            "{}: not an OpenSSH private key",
            key_path.display()
        )),
        "{reason}"
    );
    // The outputs keep the last good CA meanwhile.
    assert_eq!(t.get("/readyz/a").status, 200);
    assert_eq!(cert_signing_ca(&out.join("key-cert.pub")), old_fp);

    // The rest of the file: picked up, rotation completes.
    fs::write(&key_path, &bytes).unwrap();
    let new_fp = fingerprint(&new.with_extension("pub"));
    assert!(
        wait_for_ca(&out, &new_fp, Duration::from_secs(3)).is_some(),
        "{}",
        t.log()
    );
    t.until("/readyz/ca-rotation", Duration::from_secs(3), |r| {
        r.status == 200
    });

    // Missing: unhealthy with the OS error; back: healthy, same CA, no re-issue.
    fs::rename(&key_path, t.dir.join("moved_away")).unwrap();
    wait_key_missing(&t, &key_path);
    fs::rename(t.dir.join("moved_away"), &key_path).unwrap();
    t.until("/readyz/ca-rotation", Duration::from_secs(3), |r| {
        r.status == 200
    });
    assert_eq!(cert_signing_ca(&out.join("key-cert.pub")), new_fp);
    assert!(!t.log().contains("restarting"), "{}", t.log());
}

#[test]
fn a_storage_directory_replaced_by_a_copy_is_watched_at_its_path() {
    // ca-rotation waits on an inotify watch of the storage directory, which
    // follows the directory it was set on: moved away, that one is no longer
    // the bot's. Missing, the key is checked on a timer; a new directory at
    // the path is watched in turn, so a rotation in it is picked up at once.
    let (t, out) = start_one_output("id-storage-copy");
    let storage = t.dir.join("storage");
    let away = t.dir.join("storage-away");
    fs::rename(&storage, &away).unwrap();
    wait_key_missing(&t, &storage.join("ca_key"));
    assert!(
        t.wait_log(
            "cannot watch the storage directory; checking the CA key every 250ms",
            Duration::from_secs(3)
        ),
        "{}",
        t.log()
    );

    // A copy, not the same directory moved back.
    fs::create_dir(&storage).unwrap();
    fs::set_permissions(&storage, fs::Permissions::from_mode(0o700)).unwrap();
    fs::copy(away.join("ca_key"), storage.join("ca_key")).unwrap();
    t.until("/readyz/ca-rotation", Duration::from_secs(3), |r| {
        r.status == 200
    });
    assert!(
        t.wait_log(
            "watching the storage directory for CA key changes again",
            Duration::from_secs(3)
        ),
        "{}",
        t.log()
    );
    // A change in the directory that went away is none of the bot's.
    fs::remove_file(away.join("ca_key")).unwrap();
    let new_pub = rotate_ca(t.dir.path(), "1");
    let new_fp = fingerprint(&new_pub);
    let took = wait_for_ca(&out, &new_fp, Duration::from_secs(5));
    assert!(
        took.is_some_and(|d| d <= Duration::from_secs(2)),
        "new CA after {took:?}\n{}",
        t.log()
    );
    assert_eq!(t.get("/readyz").status, 200);
}

#[test]
fn a_broken_destination_is_unhealthy_with_the_os_error_and_recovers_in_place() {
    let dir = TempDir::new("id-unwritable");
    let me = current_user();
    let (a, b) = (dir.join("a/machine-id"), dir.join("b/machine-id"));
    let extra = "    renewal_interval: 1s\n    credential_ttl: 1m\n";
    let services = output("a", &me, &a, extra) + &output("b", &me, &b, extra);
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);

    // A regular file where a's destination directory's parent must be: the
    // write fails with ENOTDIR, for root too (mode bits would not stop root).
    let parent = t.dir.join("a");
    let saved = t.dir.join("a.saved");
    fs::rename(&parent, &saved).unwrap();
    fs::write(&parent, b"not a directory").unwrap();
    let r = t.until("/readyz/a", Duration::from_secs(5), |r| r.status == 503);
    assert_eq!(
        r.json()["reason"],
        format!("{}: not a directory", parent.display()),
        "{}",
        r.body
    );
    let all = t.get("/readyz").json();
    for name in ["identity", "ca-rotation", "heartbeat", "b"] {
        assert_eq!(all["services"][name]["status"], "healthy", "{name}: {all}");
    }
    // It retries on its own (1 s, then capped at the 1 s renewal interval).
    let failed_before = task(&metrics(&t), "tbot_task_iterations_failed_total", "a");
    std::thread::sleep(Duration::from_millis(2500));
    let m = metrics(&t);
    let failed = task(&m, "tbot_task_iterations_failed_total", "a");
    assert!(failed >= failed_before + 1.0, "{failed_before} → {failed}");
    assert_eq!(task(&m, "tbot_task_iterations_failed_total", "b"), 0.0);
    // b keeps renewing beside the broken a (more than its first issue).
    assert!(task(&m, "tbot_task_iterations_total", "b") >= 2.0);
    // The duration histogram counts every iteration, failed ones included.
    for s in ["a", "b"] {
        let count = m.get(
            "tbot_task_iteration_duration_seconds_count",
            &[("name", "output-renewal"), ("service", s)],
        );
        assert_eq!(
            count,
            Some(task(&m, "tbot_task_iterations_total", s)),
            "{s}"
        );
    }

    // The cause goes away: healthy again, same process, no restart.
    fs::remove_file(&parent).unwrap();
    fs::rename(&saved, &parent).unwrap();
    t.until("/readyz/a", Duration::from_secs(5), |r| r.status == 200);
    assert_consistent(&a);
    assert!(!t.log().contains("restarting"), "{}", t.log());
    let m = metrics(&t);
    assert!(
        task(&m, "tbot_task_iterations_total", "a")
            > task(&m, "tbot_task_iterations_failed_total", "a")
    );
}

#[test]
fn sigkill_mid_write_never_leaves_a_broken_file() {
    const OUTPUTS: [&str; 3] = ["a", "b", "c"];
    // The file each run is killed in the middle of writing (the failpoint
    // `stage-half@<file>` holds every output's writer there, half of the
    // file's bytes written). The first run is the first issue, nothing on
    // disk yet; the others overwrite a complete set, each file once.
    const TARGETS: [&str; 5] = [
        "key-cert.pub",
        "ssh_ca.pub",
        "key.pub",
        "key",
        "key-cert.pub",
    ];
    // How long the failpoint holds a write. The kill comes well before (it
    // is checked), so the length costs nothing.
    const PAUSE: Duration = Duration::from_secs(30);
    let dir = TempDir::new("id-sigkill");
    let me = current_user();
    let extra = "    renewal_interval: 100ms\n    credential_ttl: 1m\n";
    let services: String = OUTPUTS
        .iter()
        .map(|n| output(n, &me, &dir.join(&format!("out/{n}")), extra))
        .collect();
    let outs: Vec<PathBuf> = OUTPUTS
        .iter()
        .map(|n| dir.join(&format!("out/{n}")))
        .collect();
    let cfg_text = config_text(dir.path(), "", &services);
    let cfg = dir.write("tbot.yaml", &cfg_text);

    let mut last_pid = 0;
    let mut mid_write = 0;
    let mut misses = Vec::new();
    let mut private_key_temps = 0;
    for (i, target) in TARGETS.into_iter().enumerate() {
        if i == 1 {
            // A complete set in every destination for the next kills to
            // overwrite.
            let (code, _, stderr) = run_tbot(
                &["start", "--oneshot", "-c", cfg.to_str().unwrap()],
                &[],
                Duration::from_secs(20),
            );
            assert_eq!(code, Some(0), "{stderr}");
            for out in &outs {
                assert_consistent(out);
            }
        }
        let before: Vec<BTreeMap<&str, Option<Vec<u8>>>> = outs
            .iter()
            .map(|out| {
                FILES
                    .iter()
                    .map(|f| (*f, fs::read(out.join(f)).ok()))
                    .collect()
            })
            .collect();

        let mut cmd = Command::new(BIN);
        cmd.args(["start", "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env_remove("TBOT_CONFIG_PATH")
            .env_remove("TBOT_DEBUG")
            .env_remove("NOTIFY_SOCKET")
            .env(
                "TBOT_FAILPOINTS",
                format!("stage-half@{target}=sleep:{}", PAUSE.as_millis()),
            );
        let started = Instant::now();
        // The run gets an empty dir of its own to hold; the outputs and the
        // storage stay in `dir` from run to run.
        let mut t = Tbot::spawn(cmd, TempDir::new("id-sigkill-run"));
        last_pid = t.pid();
        // Wait until every output's writer is paused half-way through
        // `target`, then SIGKILL (by PID).
        for out in &outs {
            // The file is written in a new generation directory
            // (`out/..gen-*/target`, see identity_files).
            let needle = format!(
                "failpoint reached name=stage-half@{target} path={}/..gen-",
                out.display()
            );
            let suffix = format!("/{target}");
            let end = Instant::now() + Duration::from_secs(15);
            while !t
                .log()
                .lines()
                .any(|l| l.contains(&needle) && l.ends_with(&suffix))
            {
                assert!(Instant::now() < end, "kill {i}: no {needle:?} in 15 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        t.child.kill().unwrap();
        let killed_after = started.elapsed();
        let status = t.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "kill {i}: {status:?}");
        // Every pause began after the spawn: none had ended at the kill.
        assert!(
            killed_after < PAUSE,
            "kill {i} came {killed_after:?} after the start: the writes may have resumed"
        );

        for (out, before) in outs.iter().zip(&before) {
            // Every write was stopped before its first rename, so each file
            // is what it was before this run: absent, or the complete file
            // of the previous set. A file written in place would show up
            // here: created, or cut short.
            for f in FILES {
                let path = out.join(f);
                let now = fs::read(&path).ok();
                let Some(old) = &before[f] else {
                    assert!(
                        now.is_none(),
                        "kill {i}, mid-write of {target}: {} exists ({} bytes) though no write finished",
                        path.display(),
                        now.map_or(0, |b| b.len())
                    );
                    continue;
                };
                let now = now.unwrap_or_else(|| {
                    panic!(
                        "kill {i}, mid-write of {target}: {} is gone",
                        path.display()
                    )
                });
                // ssh-keygen fails the test on a file it cannot parse.
                match f {
                    "key" => ssh_keygen(&["-y", "-f"], &path),
                    "key-cert.pub" => cert_field(&path, "Public key"),
                    _ => fingerprint(&path),
                };
                assert!(
                    now == *old,
                    "kill {i}, mid-write of {target}: {} changed ({} → {} bytes) though no write finished",
                    path.display(),
                    old.len(),
                    now.len()
                );
            }
            if before["key"].is_some() {
                assert_consistent(out);
            }

            // The unpublished generation the kill left: no file in it
            // readable by anyone but the owner (they hold private keys), and
            // the target's holds part of its contents, the proof that the
            // kill came mid-write.
            let mut target_temp = false;
            let current = fs::read_link(out.join("..data")).ok();
            for entry in fs::read_dir(out).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("..gen-") || current.as_deref() == Some(Path::new(&name)) {
                    continue;
                }
                for file in fs::read_dir(entry.path()).unwrap() {
                    let file = file.unwrap();
                    let fname = file.file_name().to_string_lossy().into_owned();
                    let meta = file.metadata().unwrap();
                    let mode = meta.permissions().mode() & 0o7777;
                    assert_eq!(
                        mode & 0o077,
                        0,
                        "kill {i}: {}/{name}/{fname} is mode {mode:o}",
                        out.display()
                    );
                    if fname == "key" {
                        private_key_temps += 1;
                    }
                    if fname == target && meta.len() > 0 {
                        target_temp = true;
                    }
                }
            }
            if target_temp {
                mid_write += 1;
            } else {
                misses.push(format!(
                    "kill {i}: no partial temp of {target} in {}",
                    out.display()
                ));
            }
        }
    }
    assert_eq!(
        mid_write,
        TARGETS.len() * OUTPUTS.len(),
        "kills that did not land mid-write: {misses:?}"
    );
    // The mode check above saw private keys (whole or half written).
    let key_kills = TARGETS.iter().filter(|t| **t == "key").count();
    assert!(
        private_key_temps >= key_kills * OUTPUTS.len(),
        "{private_key_temps} temp files of key checked"
    );

    // A clean start removes the temp files killed writers left behind: those
    // the kills above left (the last one, mid-way through key-cert.pub, left
    // four in each destination) and planted ones. The PID in a temp's name
    // says nothing (a container's tbot is PID 1 on every start): plant them
    // under the last killed process's PID, under PID 1 and under this test's
    // PID, the last two alive. The heartbeat cleans its file's temps in
    // storage.
    let planted = [last_pid, 1, std::process::id()];
    for out in &outs {
        for pid in planted {
            // Temp files of the flat layout's writer, from before an upgrade.
            fs::write(out.join(format!(".key.tmp.{pid}.99.1")), b"stale").unwrap();
        }
    }
    let storage = dir.join("storage");
    for pid in planted {
        fs::write(
            storage.join(format!(".heartbeat.json.tmp.{pid}.99.1")),
            b"{",
        )
        .unwrap();
    }
    let mut t = Tbot::start(dir, &cfg_text, &[]);
    for n in OUTPUTS {
        healthy(&t, n);
    }
    t.until("/readyz/heartbeat", Duration::from_secs(10), |r| {
        r.status == 200
    });
    // Stop it cleanly first: a renewal every 100 ms would otherwise be
    // replacing the files while they are checked, and a clean stop leaves
    // no temp file of its own.
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let stale_in = |d: &Path| -> Vec<String> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp.") || n.contains("_tmp"))
            .collect()
    };
    for out in &outs {
        let stale = stale_in(out);
        assert!(stale.is_empty(), "{}: {stale:?}", out.display());
        let generations = fs::read_dir(out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("..gen-")
            })
            .count();
        assert_eq!(generations, 1, "{}", out.display());
        assert_consistent(out);
    }
    let stale = stale_in(&storage);
    assert!(stale.is_empty(), "{}: {stale:?}", storage.display());
}

#[test]
fn oneshot_issues_every_output_once_and_exits_with_the_outcome() {
    let dir = TempDir::new("id-oneshot");
    let me = current_user();
    let (good, bad) = (dir.join("out/good"), dir.join("blocker/out"));
    fs::write(dir.join("blocker"), b"a file, not a directory").unwrap();
    let port = free_port();
    let mux = format!(
        "  - type: ssh-multiplexer\n    destination: {{type: directory, path: {}}}\n    identity: good\n",
        dir.join("mux").display()
    );
    let top = format!("diag_addr: 127.0.0.1:{port}\n");
    let ok_cfg = dir.write(
        "ok.yaml",
        &config_text(dir.path(), &top, &(output("good", &me, &good, "") + &mux)),
    );
    let bad_cfg = dir.write(
        "bad.yaml",
        &config_text(
            dir.path(),
            &top,
            &(output("good", &me, &good, "") + &output("bad", &me, &bad, "")),
        ),
    );

    let started = Instant::now();
    let (code, stdout, stderr) = run_tbot(
        &["start", "--oneshot", "-c", ok_cfg.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.starts_with(&format!("ok good {} valid_before=", good.display())),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        !stderr.contains("diagnostics service listening"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipping") && stderr.contains("ssh-multiplexer"),
        "{stderr}"
    );
    assert!(!dir.join("mux").exists(), "the multiplexer does not run");
    assert_consistent(&good);
    let first_cert = fs::read(good.join("key-cert.pub")).unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));

    let (code, stdout, stderr) = run_tbot(
        &["start", "--oneshot", "-c", bad_cfg.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let err = format!("{}: not a directory", dir.join("blocker").display());
    assert!(
        stderr.contains(&format!(
            "tbot: oneshot: 1 of 2 identity outputs failed: bad: {err}"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("FAILED bad {} {err}", bad.display())),
        "{stdout}"
    );
    assert!(stdout.contains("ok good "), "{stdout}");
    // The good output was still issued, fresh, by the same CA.
    assert_ne!(fs::read(good.join("key-cert.pub")).unwrap(), first_cert);
    assert_consistent(&good);
    assert_eq!(
        cert_signing_ca(&good.join("key-cert.pub")),
        fingerprint(&dir.join("storage/ca_key"))
    );
}
