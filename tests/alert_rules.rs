//! The alerting and recording rules in contrib/ are valid Prometheus rules
//! and fire when they should: `promtool check rules` and `promtool test
//! rules` (contrib/tbot-alerts_test.yml, shipped beside the rules in the
//! .deb: tests/package.rs runs them there); every metric they use is one tbot serves; every alert has a
//! summary, a description and a runbook_url to the man page subsection
//! that explains it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tbot-alerts.yml");
const RULES_TEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/tbot-alerts_test.yml");
const MAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man/tbot.1");

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
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", RULES_TEST]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every rule of the file, as YAML mappings.
fn rules() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(RULES).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let groups = doc["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

#[test]
fn every_alert_explains_itself_and_links_its_man_page_subsection() {
    let man = std::fs::read_to_string(MAN).unwrap();
    let alerts: Vec<serde_yaml::Value> = rules()
        .into_iter()
        .filter(|r| r.get("alert").is_some())
        .collect();
    let names: Vec<&str> = alerts.iter().filter_map(|a| a["alert"].as_str()).collect();
    for expected in [
        "TbotDown",
        "TbotAbsent",
        "TbotReloadFailed",
        "TbotServiceUnhealthy",
        "TbotServiceStuckInitializing",
        "TbotCertificateRenewalOverdue",
        "TbotCertificateExpiringSoon",
        "TbotMultiplexerErrors",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    for a in &alerts {
        let name = a["alert"].as_str().unwrap();
        let notes = &a["annotations"];
        for key in ["summary", "description"] {
            let text = notes[key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name}: {key} is missing or empty");
        }
        assert_eq!(
            notes["runbook_url"].as_str(),
            Some(format!("man:tbot(1)#{name}").as_str()),
            "{name}"
        );
        // mandoc -T html makes a subsection's title its anchor.
        assert!(
            man.contains(&format!("\n.Ss {name}\n")),
            "tbot(1) has no subsection {name}"
        );
        assert!(a["labels"]["severity"].as_str().is_some(), "{name}");
    }
}

#[test]
fn the_rules_use_only_metrics_tbot_serves() {
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
    // The metric names in the expressions (a recorded name, with its
    // colons, is not one).
    let exprs: Vec<String> = rules()
        .iter()
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect();
    let used: Vec<&str> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')))
        .filter(|w| w.starts_with("tbot_"))
        .collect();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} (used in {}) is not served:\n{body}",
            Path::new(RULES).display()
        );
    }
}
