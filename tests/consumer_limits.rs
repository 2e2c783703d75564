//! A configuration is judged by what its consumers accept (issue 17, item
//! 4), through the real binary: what OpenSSH (more than 256 principals) or
//! the kernel (a Unix socket path over 107 bytes) will not take, and values
//! tbot cannot honour (an interval that would spin, a TTL below a
//! certificate's one-second resolution), are refused at load with
//! `file:line:column`; an error quotes bad input on one bounded line.

mod common;
use common::*;

use std::process::Command;
use std::time::Duration;

/// `tbot start -c FILE` on `text`: (exit code, stderr).
fn start(dir: &TempDir, text: &str, extra: &[&str]) -> (Option<i32>, String) {
    let cfg = dir.write("tbot.yaml", text).display().to_string();
    let mut args = vec!["start", "-c", &cfg];
    args.extend_from_slice(extra);
    let (code, _, err) = run_tbot(&args, &[], Duration::from_secs(30));
    (code, err)
}

fn identity(dir: &TempDir, extra: &str, principals: &[String]) -> String {
    let services = format!(
        "  - type: identity\n    name: web\n    principals:\n{}    destination: {{type: directory, path: {}}}\n{extra}",
        principals.iter().map(|p| format!("      - {p}\n")).collect::<String>(),
        dir.join("out").display()
    );
    config_text(dir.path(), "", &services)
}

fn principals(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i}")).collect()
}

#[test]
fn more_principals_than_openssh_takes_are_refused_at_their_place() {
    let dir = TempDir::new("cl-principals");
    let text = identity(&dir, "", &principals(257));
    let (code, err) = start(&dir, &text, &[]);
    assert_eq!(code, Some(2), "{err}");
    // The 257th entry: line 6 is `principals:`, the first entry line 7.
    let cfg = dir.join("tbot.yaml").display().to_string();
    assert!(err.contains(&format!("{cfg}:263:9: ")), "{err}");
    assert!(err.contains("at most 256"), "{err}");

    // 256: issued, and OpenSSH reads the certificate.
    let text = identity(&dir, "", &principals(256));
    let (code, err) = start(&dir, &text, &["--oneshot"]);
    assert_eq!(code, Some(0), "{err}");
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(dir.join("out/key-cert.pub"))
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("p255"));
}

#[test]
fn a_socket_path_the_kernel_cannot_bind_is_refused_at_load() {
    let dir = TempDir::new("cl-sock");
    let long = dir.join(&"m".repeat(110)).display().to_string();
    let services = format!(
        "  - type: identity\n    name: id\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n\
         \x20 - type: ssh-multiplexer\n    name: mux\n    identity: id\n    destination:\n      type: directory\n      path: {long}\n",
        dir.join("id").display()
    );
    let (code, err) = start(&dir, &config_text(dir.path(), "", &services), &[]);
    assert_eq!(code, Some(2), "{err}");
    let cfg = dir.join("tbot.yaml").display().to_string();
    assert!(err.contains(&format!("{cfg}:13:13: ")), "{err}");
    assert!(err.contains("at most 107"), "{err}");
}

#[test]
fn durations_tbot_cannot_honour_are_refused() {
    let dir = TempDir::new("cl-dur");
    for (top, place, words) in [
        ("renewal_interval: 1ns\n", ":3:19: ", "shorter than 10ms"),
        ("heartbeat_interval: 1us\n", ":3:21: ", "shorter than 10ms"),
        (
            "credential_ttl: 500ms\n",
            ":3:17: ",
            "whole number of seconds",
        ),
        (
            "credential_ttl: 1500ms\n",
            ":3:17: ",
            "whole number of seconds",
        ),
    ] {
        let (code, err) = start(&dir, &config_text(dir.path(), top, ""), &[]);
        assert_eq!(code, Some(2), "{top}: {err}");
        assert!(err.contains(place) && err.contains(words), "{top}: {err}");
    }
}

#[test]
fn bad_input_is_quoted_on_one_bounded_line() {
    let dir = TempDir::new("cl-quote");
    let huge = "k".repeat(100_000);
    for text in [
        config_text(dir.path(), &format!("{huge}: 1\n"), ""),
        config_text(dir.path(), "\"a\\nFORGED line\": 1\n", ""),
        config_text(
            dir.path(),
            "",
            &format!("  - type: identity\n    principals: [\"{huge}\"]\n    destination: {{type: directory, path: /x}}\n"),
        ),
    ] {
        let (code, err) = start(&dir, &text, &[]);
        assert_eq!(code, Some(2), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].len() < 1200, "{} bytes: {}", lines[0].len(), &lines[0][..300]);
    }
}

#[test]
fn yaml_merge_keys_that_upstream_accepts_are_accepted() {
    let dir = TempDir::new("cl-merge");
    let services = format!(
        "  - &web\n    type: identity\n    name: web\n    principals: [a, b]\n    destination: {{type: directory, path: {}}}\n\
         \x20 - <<: *web\n    name: web2\n    destination: {{type: directory, path: {}}}\n",
        dir.join("a").display(),
        dir.join("b").display()
    );
    let (code, err) = start(
        &dir,
        &config_text(dir.path(), "", &services),
        &["--oneshot"],
    );
    assert_eq!(code, Some(0), "{err}");
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(dir.join("b/key-cert.pub"))
        .output()
        .expect("ssh-keygen (openssh-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tbot/") && text.contains("/web2"), "{text}");
    assert!(
        text.contains("\n                b\n") || text.contains(" b\n"),
        "{text}"
    );
}
