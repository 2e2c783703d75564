//! The example alerting rules in contrib/ are valid
//! Prometheus rules and fire when they should: `promtool check rules` and
//! `promtool test rules` (tests/alert_rules_test.yml), and every metric they
//! use is one tbot serves.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tbot-alerts.yml");
const RULES_TEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alert_rules_test.yml");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool must be installed (apt-get install prometheus; tests/run-all.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_example_alert_rules_check_and_pass_their_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS: 2 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", RULES_TEST]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_rules_use_only_metrics_tbot_serves() {
    let rules = std::fs::read_to_string(RULES).unwrap();
    let dir = TempDir::new("alert-metrics");
    let services = format!(
        "  - type: identity\n    name: a\n    principals: [{}]\n    \
         destination: {{type: directory, path: {}}}\n",
        common::util::current_user(),
        dir.join("out").display()
    );
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz/a", Duration::from_secs(10), |r| r.status == 200);
    let body = t.get("/metrics").body;
    let used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tbot_"))
        .collect();
    assert!(used.len() >= 2, "{used:?}");
    for name in used {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} (used in {}) is not served:\n{body}",
            Path::new(RULES).display()
        );
    }
}
