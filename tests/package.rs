//! The Debian package (issue 8): lintian-clean, symbols kept for profiles,
//! the alert rules with their tests, a hardened unit, and an end-to-end run on a booted Debian bookworm in
//! systemd-nspawn: install, supervision by systemd, reload, upgrade, purge.
//! The .deb is built here with `cargo deb` (tests/run-all.sh installs
//! cargo-deb, lintian, debootstrap and systemd-container).

#[path = "support/debpkg.rs"]
mod debpkg;
#[path = "package/e2e.rs"]
mod e2e;
#[path = "support/nspawn.rs"]
mod nspawn;

use debpkg::{debs, run, ROOT};
use std::process::Command;

/// lintian (bookworm) reports no error and no warning; the tags it would
/// report are overridden in contrib/debian/lintian-overrides, which ships
/// in the package, and only those.
#[test]
fn lintian_reports_no_error_or_warning() {
    let d = debs();
    let (_, text) = run(Command::new("lintian")
        .args(["--pedantic", "--show-overrides"])
        .arg(&d.v1));
    let tags: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: ") || l.starts_with("P: "))
        .collect();
    assert!(tags.is_empty(), "lintian:\n{text}");
    // The overrides file is the one in use: each override was needed.
    let overridden = text.lines().filter(|l| l.starts_with("O: ")).count();
    let listed = overrides().len();
    assert_eq!(
        overridden, listed,
        "an override lintian no longer needs:\n{text}"
    );
}

/// Every override has a one-line reason: the comment line just above it.
#[test]
fn each_lintian_override_has_a_reason() {
    let text = std::fs::read_to_string(format!("{ROOT}/contrib/debian/lintian-overrides")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("tbot: ") {
            let reason = i.checked_sub(1).map(|j| lines[j]).unwrap_or("");
            assert!(
                reason.starts_with("# ") && reason.len() > 20,
                "override without a reason above it: {l}"
            );
        }
    }
    assert!(!overrides().is_empty());
}

fn overrides() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{ROOT}/contrib/debian/lintian-overrides")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("tbot: "))
        .map(String::from)
        .collect()
}

/// The installed binary keeps its symbol table (so that profiles name
/// tbot's functions) and carries no debug info. cargo-deb strips binaries
/// unless told otherwise: this fails when it does.
#[test]
fn the_packaged_binary_keeps_its_symbol_table_but_no_debug_info() {
    let d = debs();
    let x = d.dir.join("extracted");
    let (ok, text) = run(Command::new("dpkg-deb").arg("-x").arg(&d.v1).arg(&x));
    assert!(ok, "dpkg-deb -x: {text}");
    let bin = x.join("usr/bin/tbot");
    let (ok, syms) = run(Command::new("nm").args(["-C", "--defined-only"]).arg(&bin));
    assert!(ok, "nm: {syms}");
    let tbot_syms = syms.lines().filter(|l| l.contains(" tbot::")).count();
    assert!(
        tbot_syms > 100,
        "{tbot_syms} tbot:: symbols in the packaged binary"
    );
    let (ok, sections) = run(Command::new("readelf").args(["-S", "-W"]).arg(&bin));
    assert!(ok, "readelf: {sections}");
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".debug_line"),
        "debug info in the packaged binary:\n{sections}"
    );
}

/// The alert rules ship with their promtool tests beside them, and those
/// pass where the package installs them (issue 19): the test file names
/// the rules by a path relative to itself.
#[test]
fn the_packaged_alert_rules_pass_their_tests_where_installed() {
    let d = debs();
    let x = d.dir.join("extracted-alerts");
    let (ok, text) = run(Command::new("dpkg-deb").arg("-x").arg(&d.v1).arg(&x));
    assert!(ok, "dpkg-deb -x: {text}");
    let examples = x.join("usr/share/doc/tbot/examples");
    for f in ["tbot-alerts.yml", "tbot-alerts_test.yml"] {
        assert!(examples.join(f).is_file(), "{f} is not in the package");
    }
    let (ok, text) = run(Command::new("promtool")
        .args(["test", "rules", "tbot-alerts_test.yml"])
        .current_dir(&examples));
    assert!(
        ok && text.contains("SUCCESS"),
        "promtool test rules:\n{text}"
    );
}

/// `systemd-analyze security` rates the shipped unit at most 2.0 ("OK").
/// The booted test checks the installed unit the same way.
#[test]
fn the_unit_is_rated_ok_by_systemd_analyze_security() {
    let (_, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("{ROOT}/contrib/tbot.service")));
    let score = e2e::exposure(&text);
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

/// The whole life of the package on a booted systemd: see package/e2e.rs.
#[test]
fn the_package_installs_and_runs_under_a_booted_systemd() {
    if !debpkg::is_root() {
        eprintln!(
            "skipped: booting Debian in systemd-nspawn (debootstrap, nsenter) needs root; \
             CI runs tests/run-all.sh as root"
        );
        return;
    }
    e2e::run_all(debs());
}
