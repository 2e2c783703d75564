//! contrib/tbot-alerts.yml with real processes: a real Prometheus (Debian's
//! `prometheus`) loads the rules and scrapes a real tbot, which the test
//! drives into each failure in turn: a reload of a broken file, unwritable
//! destinations (left so until a certificate's renewal is overdue and it is
//! close to expiry), a service held in its start (the debug build's
//! `service-hold@NAME` failpoint), multiplexer requests it refuses, tbot
//! killed, and at last its target gone from Prometheus' service discovery.
//! Each expected alert must show firing in Prometheus' `ALERTS` (HTTP API)
//! within its `for:` plus two evaluation intervals of tbot showing the
//! failure, and while tbot is healthy, with a 5-minute credential_ttl (and
//! a 1-minute one), none may fire.
//!
//! To keep this short, the test loads a copy of the rules with every `for:`
//! lowered to [`FOR`] (as tbot(1), ALERTS, says to try them), and
//! Prometheus scrapes every second and evaluates every [`EVAL`]. Every
//! process it starts is stopped by PID.

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
use std::time::{Duration, Instant};

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
    assert!(n >= 7, "only {n} for: lines in the rules");
    text
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

/// When, by tbot's certificate times for `service` (as its /metrics gives
/// them), its renewal is overdue and its expiry close, as the rules judge
/// them: the due time plus a tenth of the lifetime; the later of that and a
/// fifth of the lifetime before the expiry. As instants of this clock.
fn certificate_deadlines(t: &Tbot, service: &str) -> (Instant, Instant) {
    let m = Metrics::parse(&t.get("/metrics").body);
    let get = |what: &str| {
        let name = format!("tbot_identity_certificate_{what}_timestamp_seconds");
        m.get(&name, &[("service", service)])
            .unwrap_or_else(|| panic!("{name}{{service={service}}} not served"))
    };
    let (after, before, renew) = (get("valid_after"), get("expiry"), get("renewal"));
    let lifetime = before - after;
    let overdue = renew + 0.1 * lifetime;
    let close = overdue.max(before - 0.2 * lifetime);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = |unix: f64| {
        let now_i = Instant::now();
        if unix >= now {
            now_i + Duration::from_secs_f64(unix - now)
        } else {
            now_i - Duration::from_secs_f64(now - unix)
        }
    };
    (at(overdue), at(close))
}

/// Every alert Prometheus shows now (name, state, labels), for messages.
fn alerts(p: &Prometheus) -> Vec<String> {
    p.query("ALERTS")
        .unwrap_or_default()
        .into_iter()
        .map(|(labels, _)| format!("{labels:?}"))
        .collect()
}

/// Waits until `name` fires with the labels `with`, at most [`FOR`] plus
/// two [`EVAL`]s after `since` (when tbot showed the failure, or when the
/// rule's condition comes true), and not before `since`; returns how long
/// it took.
fn fires(p: &Prometheus, name: &str, with: &[(&str, &str)], since: Instant) -> Duration {
    let budget = FOR + 2 * EVAL;
    let q = format!("ALERTS{{alertname=\"{name}\",alertstate=\"firing\"}}");
    loop {
        let firing = p.query(&q).unwrap_or_default().into_iter().any(|(l, _)| {
            with.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        });
        assert!(
            !firing || Instant::now() >= since,
            "{name} {with:?} fired {:?} before its condition holds",
            since - Instant::now()
        );
        let took = since.elapsed();
        if firing {
            eprintln!(
                "{name} {with:?}: firing {:.1} s after its failure showed",
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
    let line = reload_to(&t, "version: v2\nstorage: [not, a, mapping]\n");
    assert!(line.contains("configuration reload failed"), "{line}");
    fires(&p, "TbotReloadFailed", &[("job", "tbot")], Instant::now());
    let line = reload_to(&t, &good);
    assert!(line.contains("configuration reloaded"), "{line}");

    // Destinations tbot cannot write (a file where their directories'
    // parent must be: ENOTDIR, which stops root too), at the next renewal.
    let (parent, saved) = (t.dir.join("a"), t.dir.join("a.saved"));
    std::fs::rename(&parent, &saved).unwrap();
    std::fs::write(&parent, b"not a directory").unwrap();
    t.until("/readyz/a", Duration::from_secs(30), |r| r.status == 503);
    let since = Instant::now();
    t.until("/readyz/short", Duration::from_secs(30), |r| {
        r.status == 503
    });
    // Its last certificate is the one it wrote before: its times are final.
    let (overdue, close) = certificate_deadlines(&t, "short");
    fires(&p, "TbotServiceUnhealthy", &[("service", "a")], since);
    // Left so, `short` (renewed every 10 s) is not renewed in time, then
    // close to expiry.
    let short = [("service", "short")];
    fires(&p, "TbotCertificateRenewalOverdue", &short, overdue);
    fires(&p, "TbotCertificateExpiringSoon", &short, close);
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
    let since = Instant::now();
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
    let errors = "tbot_ssh_multiplexer_requests_handled_total{status=\"ERROR\"}";
    t.until("/metrics", Duration::from_secs(10), |r| {
        Metrics::parse(&r.body).sample(errors) == Some(20.0)
    });
    fires(
        &p,
        "TbotMultiplexerErrors",
        &[("job", "tbot")],
        Instant::now(),
    );

    // tbot killed.
    let _ = t.child.kill();
    let _ = t.child.wait();
    fires(&p, "TbotDown", &[("job", "tbot")], Instant::now());

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
    fires(&p, "TbotAbsent", &[("job", "tbot")], Instant::now());
}
