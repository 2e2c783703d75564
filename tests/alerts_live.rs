//! contrib/tbot-alerts.yml with real processes: a real Prometheus (Debian's
//! `prometheus`) loads the rules and scrapes a real tbot, which the test
//! drives into each failure in turn: a reload of a broken file, unwritable
//! destinations (left so until a certificate's renewal is overdue and it is
//! close to expiry), a service held in its start (the debug build's
//! `service-hold@NAME` failpoint), multiplexer requests it refuses, tbot
//! killed, and at last its target gone from Prometheus' service discovery.
//! Each expected alert must show firing in Prometheus' `ALERTS` (HTTP API)
//! within its `for:` plus two evaluation intervals of Prometheus showing
//! the failure (the scrape time of the first sample with the failing value,
//! read back through its API), and while tbot is healthy, with a 5-minute
//! credential_ttl (and a 1-minute one), none may fire.
//!
//! To keep this short, the test loads a copy of the rules with every `for:`
//! lowered to [`FOR`] (as tbot(1), ALERTS, says to try them; the
//! certificate alerts have none), and Prometheus scrapes every second and
//! evaluates every [`EVAL`]. Every process it starts is stopped by PID.

mod common;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/reload.rs"]
#[allow(dead_code)] // not every helper is used here
mod reload_support;

use common::util::Metrics;
use common::*;
use prometheus::Prometheus;
use reload_support::{identity, reload_to};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RULES: &str = include_str!("../contrib/tbot-alerts.yml");
/// What every `for:` of the rules is lowered to.
const FOR: Duration = Duration::from_secs(6);
/// Prometheus' evaluation interval (it scrapes every second).
const EVAL: Duration = Duration::from_secs(2);
/// How long a healthy tbot is watched for alerts: three renewals.
const HEALTHY_FOR: Duration = Duration::from_secs(32);

/// The rules with every `for:` lowered to [`FOR`].
fn shortened(rules: &str) -> String {
    let mut n = 0;
    let text: String = rules
        .lines()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            if l.trim_start().starts_with("for:") {
                n += 1;
                format!("{}for: {}s\n", &l[..indent], FOR.as_secs())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(n >= 6, "only {n} for: lines in the rules");
    text
}

/// How long `alert` must hold before it fires in the shortened rules:
/// [`FOR`] if it has a `for:` line, else nothing.
fn hold(alert: &str) -> Duration {
    let doc: serde_yaml::Value = serde_yaml::from_str(RULES).unwrap();
    let rule = doc["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .find(|r| r["alert"].as_str() == Some(alert))
        .unwrap_or_else(|| panic!("no alert {alert} in the rules"));
    if rule.get("for").is_some() {
        FOR
    } else {
        Duration::ZERO
    }
}

/// Now, in Unix seconds (Prometheus' clock: the same machine's).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits (at most 30 s from now, or from `after` if later) until
/// Prometheus holds a sample of `selector` (one series) scraped after
/// `after` (Unix seconds) for which `failing(scrape time, value)` holds,
/// and returns the scrape time of the first one: when Prometheus first
/// showed the failure.
fn shown(p: &Prometheus, selector: &str, after: f64, failing: impl Fn(f64, f64) -> bool) -> f64 {
    let q = format!("{selector}[40s]");
    let end = unix_now().max(after) + 30.0;
    loop {
        let samples = p.range(&q).unwrap_or_default();
        assert!(samples.len() <= 1, "{selector}: more than one series");
        let first = samples
            .iter()
            .flatten()
            .find(|(at, v)| *at > after && failing(*at, *v));
        if let Some((at, _)) = first {
            return *at;
        }
        assert!(
            unix_now() < end,
            "Prometheus never showed {selector} failing; it has {samples:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Scrapes the job `tbot` every second, its targets from `targets.json`
/// (file service discovery, as a fleet's would come and go).
const PROMETHEUS_CONFIG: &str = "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 2s
rule_files: [tbot-alerts.yml]
scrape_configs:
  - job_name: tbot
    file_sd_configs:
      - files: [targets.json]
";

/// tbot's configuration: the output `a`, a 5-minute credential renewed
/// every 10 s, and `short`, a 1-minute one (a 2-minute lifetime with the
/// 60 s backdate: its renewal is overdue 12 s after its due time), both
/// under `DIR/a/`; the multiplexer `mux` (`DIR/mux/v1.sock`); and `more`
/// services.
fn tbot_config(dir: &Path, more: &str) -> String {
    let me = common::util::current_user();
    let out = |name: &str| dir.join("a").join(name).display().to_string();
    let services = format!(
        "  - type: identity\n    name: a\n    principals: [{me}]\n    destination: {{type: directory, path: {}}}\n\
         \x20 - type: identity\n    name: short\n    principals: [{me}]\n    credential_ttl: 1m\n    destination: {{type: directory, path: {}}}\n\
         \x20 - type: ssh-multiplexer\n    name: mux\n    identity: a\n    destination: {{type: directory, path: {}}}\n{more}",
        out("machine-id"),
        out("short"),
        dir.join("mux").display()
    );
    config_text(
        dir,
        "credential_ttl: 5m\nrenewal_interval: 10s\n",
        &services,
    )
}

/// By tbot's certificate times for `service` (as its /metrics gives them),
/// as the rules judge them: its due time, how far past it a scrape must be
/// for its renewal to be overdue (a tenth of the lifetime, or half the time
/// from the due time to the expiry if less), and from when its expiry is
/// close (a fifth of the lifetime before it). In Unix seconds.
fn certificate_deadlines(t: &Tbot, service: &str) -> (f64, f64, f64) {
    let m = Metrics::parse(&t.get("/metrics").body);
    let get = |what: &str| {
        let name = format!("tbot_identity_certificate_{what}_timestamp_seconds");
        m.get(&name, &[("service", service)])
            .unwrap_or_else(|| panic!("{name}{{service={service}}} not served"))
    };
    let (after, before, renew) = (get("valid_after"), get("expiry"), get("renewal"));
    let lifetime = before - after;
    let margin = (0.1 * lifetime).min(0.5 * (before - renew));
    (renew, margin, before - 0.2 * lifetime)
}

/// Every alert Prometheus shows now (name, state, labels), for messages.
fn alerts(p: &Prometheus) -> Vec<String> {
    p.query("ALERTS")
        .unwrap_or_default()
        .into_iter()
        .map(|(labels, _)| format!("{labels:?}"))
        .collect()
}

/// Waits until `name` fires with the labels `with`, at most its `for:`
/// ([`hold`]) plus two [`EVAL`]s after `since` (Unix seconds: when
/// Prometheus first showed the failure, or when the rule's condition came
/// true), and not before `since`; returns how long it took.
fn fires(p: &Prometheus, name: &str, with: &[(&str, &str)], since: f64) -> Duration {
    let budget = hold(name) + 2 * EVAL;
    let q = format!("ALERTS{{alertname=\"{name}\",alertstate=\"firing\"}}");
    loop {
        let firing = p.query(&q).unwrap_or_default().into_iter().any(|(l, _)| {
            with.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        });
        let now = unix_now();
        assert!(
            !firing || now >= since,
            "{name} {with:?} fired {:.1} s before its condition holds",
            since - now
        );
        let took = Duration::from_secs_f64((now - since).max(0.0));
        if firing {
            eprintln!(
                "{name} {with:?}: firing {:.1} s after Prometheus showed its failure",
                took.as_secs_f64()
            );
            return took;
        }
        assert!(
            took <= budget,
            "{name} {with:?} not firing within {budget:?}; ALERTS: {:?}",
            alerts(p)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Watches a healthy tbot for [`HEALTHY_FOR`]: no alert fires (one
/// pending, for a scrape slowed by a loaded machine, is only reported), and
/// the recording rules give the fleet view of it.
fn nothing_fires_while_healthy(p: &Prometheus, t: &Tbot) {
    let up = Instant::now() + Duration::from_secs(30);
    while p.values("up{job=\"tbot\"}").as_deref() != Some(&["1".to_string()][..]) {
        assert!(Instant::now() < up, "Prometheus never scraped tbot");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The alert Prometheus may hold from before its first scrape
    // (TbotAbsent, pending) is gone at the next evaluations.
    std::thread::sleep(2 * EVAL);
    let end = Instant::now() + HEALTHY_FOR;
    while Instant::now() < end {
        let shown = alerts(p);
        let firing: Vec<&String> = shown.iter().filter(|a| a.contains("\"firing\"")).collect();
        assert!(firing.is_empty(), "alerts firing while healthy: {firing:?}");
        if !shown.is_empty() {
            eprintln!("pending while healthy: {shown:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        p.values("instance:tbot_service_unhealthy:sum").as_deref(),
        Some(&["0".to_string()][..]),
        "the recording rules are loaded and evaluated"
    );
    let m = Metrics::parse(&t.get("/metrics").body);
    let expiry = ["a", "short"]
        .map(|s| {
            m.get(
                "tbot_identity_certificate_expiry_timestamp_seconds",
                &[("service", s)],
            )
            .unwrap()
        })
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    let soonest = p.values("instance:tbot_identity_certificate_expiry_timestamp_seconds:min");
    let soonest: f64 = match soonest.as_deref() {
        Some([v]) => v.parse().unwrap(),
        other => panic!("soonest expiry: {other:?}"),
    };
    // A renewal may come between the two reads (one every 10 s).
    assert!((expiry - soonest).abs() <= 15.0, "{expiry} vs {soonest}");
}

#[test]
fn each_failure_fires_its_alert_in_a_real_prometheus_and_health_fires_none() {
    if prometheus::missing() {
        return;
    }
    let dir = TempDir::new("alerts-live");
    let good = tbot_config(dir.path(), "");
    let failpoints = [("TBOT_FAILPOINTS", "service-hold@held=on")];
    let mut t = reload_support::start(dir, &good, &failpoints);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let rules = shortened(RULES);
    let targets = format!("[{{\"targets\": [\"{}\"]}}]", t.addr());
    let p = Prometheus::start(
        PROMETHEUS_CONFIG,
        &[("tbot-alerts.yml", &rules), ("targets.json", &targets)],
    );
    assert!(PROMETHEUS_CONFIG.contains(&format!("evaluation_interval: {}s", EVAL.as_secs())));

    nothing_fires_while_healthy(&p, &t);

    // A reload of a file tbot refuses.
    let before = unix_now();
    let line = reload_to(&t, "version: v2\nstorage: [not, a, mapping]\n");
    assert!(line.contains("configuration reload failed"), "{line}");
    let reload = "tbot_config_last_reload_successful{job=\"tbot\"}";
    let since = shown(&p, reload, before, |_, v| v == 0.0);
    fires(&p, "TbotReloadFailed", &[("job", "tbot")], since);
    let line = reload_to(&t, &good);
    assert!(line.contains("configuration reloaded"), "{line}");

    // Destinations tbot cannot write (a file where their directories'
    // parent must be: ENOTDIR, which stops root too), at the next renewal.
    let (parent, saved) = (t.dir.join("a"), t.dir.join("a.saved"));
    let before = unix_now();
    std::fs::rename(&parent, &saved).unwrap();
    std::fs::write(&parent, b"not a directory").unwrap();
    t.until("/readyz/short", Duration::from_secs(30), |r| {
        r.status == 503
    });
    // Its last certificate is the one it wrote before: its times are final.
    let (due, margin, close) = certificate_deadlines(&t, "short");
    let health = |s: &str| {
        format!("tbot_service_health{{job=\"tbot\",service=\"{s}\",status=\"unhealthy\"}}")
    };
    let since = shown(&p, &health("a"), before, |_, v| v == 1.0);
    fires(&p, "TbotServiceUnhealthy", &[("service", "a")], since);
    // Left so, `short` (renewed every 10 s) is not renewed in time (a
    // scrape past its due time by the margin), then close to expiry.
    let short = [("service", "short")];
    let renewal =
        "tbot_identity_certificate_renewal_timestamp_seconds{job=\"tbot\",service=\"short\"}";
    let overdue = shown(&p, renewal, due, |at, r| at - r > margin);
    fires(&p, "TbotCertificateRenewalOverdue", &short, overdue);
    fires(
        &p,
        "TbotCertificateExpiringSoon",
        &short,
        overdue.max(close),
    );
    std::fs::remove_file(&parent).unwrap();
    std::fs::rename(&saved, &parent).unwrap();
    t.until("/readyz/a", Duration::from_secs(30), |r| r.status == 200);

    // A service whose start never ends.
    let held = identity(t.dir.path(), "held");
    let line = reload_to(&t, &tbot_config(t.dir.path(), &held));
    assert!(line.contains("configuration reloaded"), "{line}");
    t.until("/readyz/held", Duration::from_secs(10), |r| {
        r.body.contains("initializing")
    });
    let held = "tbot_service_health{job=\"tbot\",service=\"held\",status=\"initializing\"}";
    let since = shown(&p, held, 0.0, |_, v| v == 1.0);
    fires(
        &p,
        "TbotServiceStuckInitializing",
        &[("service", "held")],
        since,
    );

    // Multiplexer requests it refuses: 20 at once are 4 a minute over the
    // 5-minute window, all of them errors.
    let socket = t.dir.join("mux/v1.sock");
    for _ in 0..20 {
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(b"nonsense\0").unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.contains("no port"), "{answer:?}");
    }
    let errors = "tbot_ssh_multiplexer_requests_handled_total{job=\"tbot\",status=\"ERROR\"}";
    let since = shown(&p, errors, 0.0, |_, v| v >= 20.0);
    fires(&p, "TbotMultiplexerErrors", &[("job", "tbot")], since);

    // tbot killed.
    let before = unix_now();
    let _ = t.child.kill();
    let _ = t.child.wait();
    let since = shown(&p, "up{job=\"tbot\"}", before, |_, v| v == 0.0);
    fires(&p, "TbotDown", &[("job", "tbot")], since);

    // Its target gone from service discovery (Prometheus then marks its
    // series stale; after a whole job is removed from the configuration it
    // does not, and absent() holds only once its 5-minute lookback has passed).
    p.dir.write("targets.json", "[]");
    let gone = Instant::now() + Duration::from_secs(30);
    while p.values("up{job=\"tbot\"}").is_none_or(|v| !v.is_empty()) {
        assert!(
            Instant::now() < gone,
            "Prometheus still has the target; its log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its series went stale at a scrape time this test cannot read back;
    // that is before now.
    fires(&p, "TbotAbsent", &[("job", "tbot")], unix_now());
}
