//! The truth about expiry, and clock steps, through the
//! real binary under libfaketime (Debian package `faketime`): the wall clock
//! of the running, multi-threaded tbot is stepped by rewriting the file
//! `FAKETIME_TIMESTAMP_FILE` names (read on every call with
//! `FAKETIME_NO_CACHE=1`); the monotonic clock is left alone
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as in a real step. The kernel's timerfd
//! does not see a faked step, so these tests prove the behaviour (renewed
//! within seconds, unhealthy with the reason), whichever mechanism gives it.

#[path = "support/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::util::{current_user, Metrics};
use common::*;

const EXPIRY: &str = "tbot_identity_certificate_expiry_timestamp_seconds";

/// The libfaketime preload library, from the Debian package `faketime`.
fn libfaketime() -> PathBuf {
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ] {
        let p = Path::new(dir).join("faketime/libfaketime.so.1");
        if p.exists() {
            return p;
        }
    }
    panic!("libfaketime not found: apt-get install faketime (tests/run-all.sh does)");
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// tbot with one identity output `a` (20 min renewal, 1 h lifetime, the
/// defaults) under libfaketime, its clock offset read from `clock`.
fn start_faked(tag: &str) -> (Tbot, PathBuf, PathBuf) {
    let dir = TempDir::new(tag);
    let clock = dir.join("faketime");
    fs::write(&clock, "+0\n").unwrap();
    let dest = dir.join("out");
    let services = format!(
        "  - type: identity\n    name: a\n    principals: [{}]\n    \
         renewal_interval: 20m\n    credential_ttl: 1h\n    \
         destination: {{type: directory, path: {}}}\n",
        current_user(),
        dest.display()
    );
    let cfg = config_text(dir.path(), "", &services);
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("TBOT_FAILPOINTS", "clock-set-by-faketime=on"),
    ];
    let t = Tbot::start_with(dir, &cfg, &[], &env);
    t.until("/readyz/a", Duration::from_secs(10), |r| r.status == 200);
    (t, clock, dest)
}

/// The expiry metric of `a` (None while absent, or when the diagnostics
/// service answers a plain 503 "busy": asked again).
fn expiry(t: &Tbot) -> Option<f64> {
    let r = t.get("/metrics");
    if r.status != 200 {
        return None;
    }
    Metrics::parse(&r.body).get(EXPIRY, &[("service", "a")])
}

/// Waits (at most `within`) until the expiry metric satisfies `pred`.
fn wait_expiry(t: &Tbot, within: Duration, what: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let end = Instant::now() + within;
    loop {
        if let Some(e) = expiry(t).filter(|e| pred(*e)) {
            return e;
        }
        assert!(
            Instant::now() < end,
            "{what}: not within {within:?}; expiry {:?}, now {}\n{}",
            expiry(t),
            now_unix(),
            t.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The certificate's `valid_before`, from `ssh-keygen -L` (`Valid: from X
/// to Y`, UTC), in Unix seconds, through date(1).
fn cert_valid_before(cert: &Path) -> f64 {
    let valid = certs::cert_field(cert, "Valid").unwrap();
    let to = valid.split(" to ").nth(1).unwrap();
    let out = std::process::Command::new("date")
        .args(["-u", "-d", to, "+%s"])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The JSON body, or Null (a plain-text 503 when busy).
fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_default()
}

#[test]
fn a_clock_step_either_way_renews_within_seconds() {
    let (t, clock, dest) = start_faked("expiry-step");
    let first = wait_expiry(&t, Duration::from_secs(5), "the first expiry", |_| true);
    let now = now_unix();
    assert!((first - (now + 3600.0)).abs() < 30.0, "{first} vs {now}");
    assert_eq!(first, cert_valid_before(&dest.join("key-cert.pub")));

    // +2 h: the certificate (1 h) has expired; a new one within seconds,
    // not at the next renewal 20 min of monotonic time away.
    fs::write(&clock, "+2h\n").unwrap();
    let stepped = wait_expiry(&t, Duration::from_secs(8), "renewed after +2h", |e| {
        e > now_unix() + 7200.0
    });
    t.until("/readyz/a", Duration::from_secs(5), |r| r.status == 200);
    certs::assert_whole_set(&dest);
    assert_eq!(stepped, cert_valid_before(&dest.join("key-cert.pub")));

    // Back to −2 h: the certificate is not valid yet (issued 4 h ahead);
    // renewed again within seconds.
    fs::write(&clock, "-2h\n").unwrap();
    let back = wait_expiry(&t, Duration::from_secs(8), "renewed after -2h", |e| {
        e < now_unix()
    });
    assert!((back - (now_unix() - 3600.0)).abs() < 60.0, "{back}");
    t.until("/readyz/a", Duration::from_secs(5), |r| r.status == 200);
    certs::assert_whole_set(&dest);
}

#[test]
fn a_certificate_not_valid_now_is_unhealthy_at_once_with_the_reason() {
    let (t, clock, dest) = start_faked("expiry-truth");
    // Renewals fail from now on (a directory where the switch's temporary
    // link goes), the certificate on disk stays.
    let blocker = dest.join("..data_tmp");
    fs::create_dir_all(blocker.join("x")).unwrap();
    let cert = dest.join("key-cert.pub").display().to_string();

    let reason = |want: &str| {
        let r = t.until("/readyz/a", Duration::from_secs(8), |r| {
            r.status == 503 && json(r)["reason"].as_str().is_some_and(|s| s.contains(want))
        });
        json(&r)["reason"].as_str().unwrap().to_string()
    };
    fs::write(&clock, "-2h\n").unwrap();
    let r = reason("certificate not valid until");
    assert!(
        r.starts_with(&format!("{cert}: certificate not valid until ")),
        "{r}"
    );
    assert!(r.contains("; renewing failed: "), "{r}");
    assert!(r.contains("..data_tmp"), "{r}");

    fs::write(&clock, "+2h\n").unwrap();
    let r = reason("certificate expired at");
    assert!(
        r.starts_with(&format!("{cert}: certificate expired at ")),
        "{r}"
    );

    // The cause goes: renewed, healthy, a whole set valid now.
    fs::remove_dir_all(&blocker).unwrap();
    t.until("/readyz/a", Duration::from_secs(20), |r| r.status == 200);
    assert!(expiry(&t).unwrap() > now_unix() + 7200.0);
    certs::assert_whole_set(&dest);
}
