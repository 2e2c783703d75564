//! The open-file limit (issue 17, item 5), through the real binary: tbot
//! raises the soft RLIMIT_NOFILE to the hard one at start, so a
//! configuration that needs more descriptors than the soft limit runs; when
//! the hard limit itself is too low, the error names the limit.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

/// A configuration with `n` identity outputs renewed hourly.
fn outputs(dir: &TempDir, n: usize) -> String {
    let mut services = String::new();
    for i in 0..n {
        services += &format!(
            "  - type: identity\n    name: out{i}\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
            dir.join(&format!("out{i}")).display()
        );
    }
    config_text(
        dir.path(),
        "credential_ttl: 2h\nrenewal_interval: 1h\n",
        &services,
    )
}

/// `tbot start` with RLIMIT_NOFILE soft `soft`, hard `hard`.
fn command(dir: &TempDir, config: &str, soft: u64, hard: u64) -> std::process::Command {
    let mut cmd = Tbot::command_with(Path::new(BIN), dir, config, &[], &[]);
    limit_nofile(&mut cmd, soft, hard);
    cmd
}

/// The soft "Max open files" of `pid`, from /proc/PID/limits.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_one() {
    let dir = TempDir::new("nofile-raise");
    let cfg = outputs(&dir, 60);
    let cmd = command(&dir, &cfg, 64, 4096);
    let mut t = Tbot::spawn_and_wait_addr(cmd, dir);
    let r = t.until("/readyz", Duration::from_secs(60), |r| r.status == 200);
    assert_eq!(r.status, 200);
    assert_eq!(soft_nofile(t.pid()), 4096);
    assert!(
        t.log().contains("raised the open-file limit"),
        "{}",
        t.log()
    );
    assert!(
        t.open_fds() > 64,
        "the case needs more than the soft limit: {}",
        t.open_fds()
    );
    let m = t.get("/metrics").body;
    assert!(m.contains("process_max_fds 4096"), "{m}");
    t.signal(libc::SIGTERM);
    assert_eq!(
        t.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn a_hard_limit_too_low_is_named() {
    let dir = TempDir::new("nofile-low");
    let cfg = outputs(&dir, 60);
    let cmd = command(&dir, &cfg, 64, 64);
    let mut t = Tbot::spawn(cmd, dir);
    let status = t.wait_exit(Duration::from_secs(30)).expect("tbot exits");
    assert_eq!(status.code(), Some(1), "{}", t.log());
    let log = t.log();
    assert!(
        log.contains("RLIMIT_NOFILE soft 64, hard 64") && log.contains("LimitNOFILE="),
        "{log}"
    );
}

#[test]
fn a_renewal_out_of_descriptors_names_the_limit() {
    let dir = TempDir::new("nofile-renewal");
    let services = format!(
        "  - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("out").display()
    );
    let cfg = config_text(
        dir.path(),
        "credential_ttl: 1m\nrenewal_interval: 300ms\n",
        &services,
    );
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    // The limit drops under tbot's feet to what it holds now: the next
    // renewal's first new descriptor fails with EMFILE.
    let open = t.open_fds() as u64;
    let lim = libc::rlimit {
        rlim_cur: open,
        rlim_max: 4096,
    };
    // SAFETY: prlimit(2) on our own child, with a valid struct.
    let rc = unsafe {
        libc::prlimit(
            t.pid() as i32,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let log = t.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("service=web") && l.contains("Too many open files"))
        {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < end,
            "no EMFILE in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        reason.contains(&format!("RLIMIT_NOFILE soft {open}, hard 4096")),
        "{reason}"
    );
}
