//! The configuration file's front door: a byte-order
//! mark at the start is accepted, and nesting deeper than any valid
//! configuration needs is refused before the YAML parser, at once, with the
//! line of the problem. Through the real binary (`tbot start -c FILE`).

mod common;

use common::*;
use std::time::Duration;

/// Generous: only a guard against a hang (the old parser spun for over 20
/// minutes on a 1 MiB file). Not a speed assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn start_with_config(dir: &TempDir, text: &[u8]) -> (Option<i32>, String) {
    let path = dir.join("tbot.yaml");
    std::fs::write(&path, text).unwrap();
    let p = path.display().to_string();
    let (code, _, err) = run_tbot(
        &["start", "-c", &p, "--diag-addr", "127.0.0.1:0"],
        &[],
        HANG_GUARD,
    );
    (code, err)
}

#[test]
fn a_config_saved_with_a_byte_order_mark_loads_every_key() {
    let dir = TempDir::new("bom");
    // Storage on line 2: the field report lost it ("missing field `storage`").
    let cfg = config_text(dir.path(), "heartbeat_interval: 1h\n", "");
    let t = Tbot::start(dir, &format!("\u{feff}{cfg}"), &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
    let storage = t.dir.join("storage");
    assert!(
        storage.join("tbot.lock").exists(),
        "storage from line 2 used"
    );
}

#[test]
fn a_byte_order_mark_elsewhere_is_refused_with_its_place() {
    let dir = TempDir::new("bom-inside");
    let cfg = config_text(dir.path(), "", "");
    let text = format!("{cfg}debug: false\u{feff}\n");
    let (code, err) = start_with_config(&dir, text.as_bytes());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tbot.yaml:3:13: a byte-order mark (U+FEFF) is allowed only at the start"),
        "{err}"
    );
}

fn assert_too_deep(text: &str, line: usize) {
    let dir = TempDir::new("deep");
    let (code, err) = start_with_config(&dir, text.as_bytes());
    assert_eq!(code, Some(2), "refused as a configuration error: {err}");
    assert!(
        err.contains(&format!("tbot.yaml:{line}:")) && err.contains("nested more than 32 levels"),
        "names the line: {err}"
    );
}

#[test]
fn a_mebibyte_of_nested_flow_sequences_is_refused_at_once() {
    let dir = TempDir::new("deep-head");
    let head = config_text(dir.path(), "", "");
    assert_eq!(head.lines().count(), 2);
    let text = format!("{head}services: {}\n", "[".repeat(1 << 20));
    let text = &text[..(1 << 20) - 1];
    assert_too_deep(text, 3);
}

#[test]
fn deeply_nested_flow_mappings_and_the_40k_case_are_refused() {
    let dir = TempDir::new("deep-map");
    let head = config_text(dir.path(), "", "");
    assert_too_deep(&format!("{head}services: {}\n", "{a: ".repeat(100_000)), 3);
    let k40 = format!(
        "{head}services: {}{}\n",
        "[".repeat(40_000),
        "]".repeat(40_000)
    );
    assert_too_deep(&k40, 3);
}

#[test]
fn deep_block_nesting_is_refused_with_its_line() {
    let dir = TempDir::new("deep-block");
    let head = config_text(dir.path(), "", "");
    // Nested sequences on one line, as deep as a MiB allows.
    assert_too_deep(
        &format!("{head}services:\n  {}x\n", "- ".repeat(500_000)),
        4,
    );
    // And by indentation.
    let mut text = format!("{head}services:\n");
    for i in 0..60 {
        text += &format!("{}- k{i}:\n", "  ".repeat(i + 1));
    }
    let (code, err) = start_with_config(&dir, text.as_bytes());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nested more than 32 levels"), "{err}");
}

#[test]
fn a_valid_configuration_with_brackets_in_strings_and_comments_still_loads() {
    let dir = TempDir::new("brackets");
    let services = format!(
        "  - type: identity   # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n    principals: ['[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[', \"{0}\"]\n    destination: {{type: directory, path: '{1}'}}\n",
        "{".repeat(40),
        dir.join("out").display()
    );
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(10), |r| r.status == 200);
}
