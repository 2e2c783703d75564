//! The command line and the configuration file, through the real binary:
//! exit codes, every class of configuration error with file:line:column,
//! flag-over-file precedence, default service names.

mod common;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[test]
fn help_version_and_usage_errors() {
    let (code, out, _) = run_tbot(&["help"], &[], T);
    assert_eq!(code, Some(0));
    for c in [
        "start",
        "check",
        "wait",
        "ssh-multiplexer-proxy-command",
        "completions",
        "version",
    ] {
        assert!(out.contains(c), "help lacks {c}:\n{out}");
    }
    let (code, out, _) = run_tbot(&["start", "--help"], &[], T);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("--diag-addr")
            && out.contains("TBOT_CONFIG_PATH")
            && out.contains("--oneshot"),
        "{out}"
    );
    let (code, out, _) = run_tbot(&["wait", "-h"], &[], T);
    assert_eq!(code, Some(0));
    assert!(out.contains("--timeout"), "{out}");
    let (code, out, _) = run_tbot(&["--version"], &[], T);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("tbot "), "{out}");

    for args in [
        &[][..],
        &["frobnicate"][..],
        &["start", "--no-such-flag"][..],
        &["start", "--log-format", "xml"][..],
        &["start", "--diag-addr", "nonsense"][..],
        &["wait"][..],
        &["wait", "--diag-addr", "127.0.0.1:1", "--timeout", "soon"][..],
    ] {
        let (code, _, err) = run_tbot(args, &[], T);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("tbot: ") && err.lines().count() == 1,
            "{args:?}: one-line message expected, got {err:?}"
        );
    }
    let (code, _, err) = run_tbot(&["start"], &[], T);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("-c FILE") && err.contains("TBOT_CONFIG_PATH"),
        "{err}"
    );
}

/// Runs `tbot start` on `text` and expects exit 2 with `want` in the one-line
/// message, and nothing started (no storage directory created); then
/// `tbot check` on it, which must refuse it (exit 2) with the very same line.
fn refused(text: &str, want: &str) {
    let dir = TempDir::new("cfg");
    let cfg = dir.write("tbot.yaml", text);
    let cfg_s = cfg.display().to_string();
    let (code, _, err) = run_tbot(
        &["start", "-c", &cfg_s, "--diag-addr", "127.0.0.1:0"],
        &[],
        T,
    );
    assert_eq!(code, Some(2), "expected exit 2 for {want:?}; stderr: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("tbot: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.starts_with(&format!("tbot: {cfg_s}:")), "{line}");
    assert!(line.contains(want), "wanted {want:?} in {line:?}");
    assert!(
        !err.contains("diagnostics service listening"),
        "started anyway: {err}"
    );
    assert!(
        !dir.join("storage").exists(),
        "a refused config must write nothing"
    );
    let (code, out, check_err) = run_tbot(&["check", "-c", &cfg_s], &[], T);
    assert_eq!(
        code,
        Some(2),
        "check: expected exit 2 for {want:?}: {check_err}"
    );
    assert_eq!(
        check_err.lines().collect::<Vec<_>>(),
        [line],
        "check and start differ"
    );
    assert!(out.is_empty(), "check printed {out:?}");
    assert!(!dir.join("storage").exists(), "check wrote something");
}

const HEAD: &str = "version: v2\nstorage: {type: directory, path: STORAGE}\n";

fn with_storage(text: &str) -> String {
    // Storage inside the temp dir is checked by `refused`; a relative path
    // resolves against the config file's directory.
    text.replace("STORAGE", "storage")
}

#[test]
fn every_class_of_configuration_error_is_refused_with_its_location() {
    let svc = |body: &str| with_storage(&format!("{HEAD}services:\n  - type: identity\n{body}"));
    let cases: Vec<(String, &str)> = vec![
        (with_storage(&format!("{HEAD}colour: blue\n")), ":3:1: unknown field `colour`"),
        (with_storage(&format!("{HEAD}debug: maybe\n")), ":3:8: debug: invalid type"),
        (with_storage(&format!("{HEAD}credential_ttl: 5 minutes\n")), ":3:17: credential_ttl: invalid duration"),
        (with_storage(&format!("{HEAD}renewal_interval: -5m\n")), ":3:19: renewal_interval: invalid duration"),
        (with_storage(&format!("{HEAD}diag_addr: localhost\n")), ":3:12: diag_addr: invalid address"),
        (with_storage(&format!("{HEAD}diag_addr: 127.0.0.1:99999\n")), ":3:12: diag_addr: invalid address"),
        (with_storage(&format!("{HEAD}diag_max_connections: 0\n")), ":3:23: diag_max_connections: invalid count"),
        (with_storage(&format!("{HEAD}credential_ttl: 10m\nrenewal_interval: 10m\n")), ":4:19: renewal_interval: renewal_interval (10m0s) must be shorter than credential_ttl (10m0s)"),
        ("version: v2\n".to_string(), ":1:1: missing field `storage`"),
        (with_storage("version: v1\nstorage: {type: directory, path: STORAGE}\n"), ":1:10: version: unsupported version"),
        (with_storage("version: v2\nstorage: {type: s3, path: STORAGE}\n"), "storage.type: unknown variant `s3`"),
        (with_storage(&format!("{HEAD}services:\n  - type: kerberos\n")), ":4:11: services[0].type: unknown variant `kerberos`"),
        (svc("    principals: [a]\n"), ":4:5: services[0]: missing field `destination`"),
        (svc("    destination: {type: directory, path: out}\n"), ":4:5: services[0]: an identity service needs at least one entry in `principals`"),
        (svc("    principals: [a]\n    destination: {type: directory, path: out}\n    nmae: x\n"), ":7:5: services[0]: unknown field `nmae`"),
        (svc("    name: Bad_Name\n    principals: [a]\n    destination: {type: directory, path: out}\n"), ":5:11: services[0].name: invalid service name \"Bad_Name\""),
        (svc(&format!("    name: {}\n    principals: [a]\n    destination: {{type: directory, path: out}}\n", "a".repeat(65))), ":5:11: services[0].name: invalid service name"),
        (svc("    name: ca-rotation\n    principals: [a]\n    destination: {type: directory, path: out}\n"), ":5:11: services[0].name: service name \"ca-rotation\" is reserved"),
        (svc("    name: x\n    principals: [a]\n    destination: {type: directory, path: out}\n  - type: identity\n    name: x\n    principals: [a]\n    destination: {type: directory, path: out2}\n"), ":9:11: services[1].name: service name \"x\" is used twice"),
        (svc("    principals: [a]\n    destination: {type: directory, path: out}\n    renewal_interval: 2h\n"), ":7:23: services[0].renewal_interval: renewal_interval (2h0m0s) must be shorter than credential_ttl (1h0m0s)"),
        (svc("    principals: [\"a b\"]\n    destination: {type: directory, path: out}\n"), ":5:18: services[0].principals[0]: invalid principal"),
        (with_storage(&format!("{HEAD}services:\n  - type: ssh-multiplexer\n    destination: {{type: directory, path: mux}}\n    identity: ghost\n")), ":6:15: services[0].identity: \"ghost\" is not the name of an identity service"),
        (with_storage(&format!("{HEAD}services:\n  - type: ssh-multiplexer\n    destination: {{type: directory, path: mux}}\n    principals: [a]\n")), ":6:17: services[0].principals: field `principals` does not apply to a ssh-multiplexer service"),
        (svc("    principals: [a]\n    destination: {type: directory, path: out}\n  - type: identity\n    principals: [a]\n    destination: {type: directory, path: out}\n"), "services[1].destination.path: destination out is already used by services[0]"),
        (with_storage(&format!("{HEAD}services: [\n")), ":4:1: "),
        ("\t- not yaml: [".to_string(), ":1:1: "),
        // The error's own place is said once, in front; another place stays.
        (
            "version: v2\nstorage: {type: directory, path: x\nservices: []\n".to_string(),
            ":3:9: did not find expected ',' or '}', while parsing a flow mapping at line 2 column 10",
        ),
    ];
    for (text, want) in cases {
        refused(&text, want);
    }
}

#[test]
fn missing_or_unreadable_config_file() {
    for cmd in ["start", "check"] {
        let (code, _, err) = run_tbot(&[cmd, "-c", "/nonexistent/tbot.yaml"], &[], T);
        assert_eq!(code, Some(2), "{cmd}");
        assert!(
            err.contains("/nonexistent/tbot.yaml: No such file or directory"),
            "{cmd}: {err}"
        );
    }
    let (code, _, err) = run_tbot(&["check"], &[], T);
    assert_eq!(code, Some(2));
    assert!(err.contains("-c FILE"), "{err}");
    let dir = TempDir::new("cfgdir");
    let d = dir.path().display().to_string();
    let (code, _, err) = run_tbot(&["start", "-c", &d], &[], T);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&d), "{err}");
    // A wrong path to an endless file is refused, not read into memory.
    let (code, _, err) = run_tbot(&["start", "-c", "/dev/zero"], &[], T);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/dev/zero: larger than 1 MiB"), "{err}");
    // A pipe is read like a file (`-c <(generate-config)`): the error is
    // about its second line.
    let mut child = std::process::Command::new(BIN)
        .args(["start", "-c", "/dev/stdin"])
        .env_remove("TBOT_CONFIG_PATH")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"version: v2\nbogus: 1\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/dev/stdin:2:1: unknown field `bogus`"),
        "{err}"
    );
}

#[test]
fn flags_override_the_file_and_say_so() {
    let dir = TempDir::new("override");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file_addr = taken.local_addr().unwrap().to_string();
    let cfg = config_text(
        dir.path(),
        &format!("diag_addr: {file_addr}\ndebug: false\n"),
        "",
    );
    // The file's port is busy, so only the flag's address can work.
    let t = Tbot::start(dir, &cfg, &["--diag-addr", "127.0.0.1:0", "-d"]);
    assert_ne!(t.addr().to_string(), file_addr);
    assert_eq!(t.get("/livez").status, 200);
    let log = t.log();
    assert!(
        log.contains("--diag-addr overrides diag_addr from the configuration file"),
        "{log}"
    );
    assert!(
        log.contains("debug mode enabled on the command line over debug: false in the file by=-d"),
        "{log}"
    );
    // -d turned debug mode on: the debug endpoints exist.
    assert_eq!(t.get("/debug/pprof/cmdline").status, 200);
}

#[test]
fn environment_supplies_config_and_debug() {
    let dir = TempDir::new("env");
    let cfg = dir.write("tbot.yaml", &config_text(dir.path(), "", ""));
    let cfg_s = cfg.display().to_string();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "start",
        "--diag-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ])
    .env("TBOT_CONFIG_PATH", &cfg_s)
    .env("TBOT_DEBUG", "1")
    .stdin(std::process::Stdio::null());
    let mut t = Tbot::spawn(cmd, dir);
    assert!(
        t.wait_log("diagnostics service listening", T),
        "{}",
        t.log()
    );
    let log = t.log();
    let line = log
        .lines()
        .find(|l| l.contains("diagnostics service listening"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    // Typed: a boolean, not the string "true".
    assert_eq!(v["debug"], true);
    let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    t.addr = Some(addr);
    assert_eq!(t.get("/debug/pprof/cmdline").status, 200);
    assert!(log.contains("by\":\"TBOT_DEBUG"), "{log}");
    // Every line is one JSON object.
    for l in log.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

#[test]
fn default_names_come_from_type_and_destination_and_survive_reordering() {
    let a = "  - type: identity\n    principals: [a]\n    destination: {type: directory, path: out/a.b}\n";
    let b = "  - type: identity\n    principals: [a]\n    destination: {type: directory, path: out/a b}\n";
    let c = "  - type: identity\n    name: my-service-123\n    principals: [a]\n    destination: {type: directory, path: out/c}\n";
    let mut seen = Vec::new();
    let mut pairs = Vec::new();
    for order in [format!("{a}{b}{c}"), format!("{c}{b}{a}")] {
        let dir = TempDir::new("names");
        let root = dir.path().display().to_string();
        let cfg = config_text(dir.path(), "", &order);
        let t = Tbot::start(dir, &cfg, &[]);
        let v = t.until("/readyz", T, |r| r.status == 200).json();
        let mut names: Vec<String> = v["services"].as_object().unwrap().keys().cloned().collect();
        names.sort();
        seen.push(names);
        // Which name writes which destination (relative to the run's dir),
        // from the log: a suffix must not move to the other output.
        // The log reaches the test through a pipe: wait for all three.
        let end = std::time::Instant::now() + T;
        while t.log().matches("identity output written").count() < 3
            && std::time::Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = t.log();
        let mut written: Vec<(String, String)> = log
            .lines()
            .filter(|l| l.contains("identity output written"))
            .map(|l| {
                let field = |k: &str| {
                    let rest = &l[l.find(&format!(" {k}=")).unwrap() + k.len() + 2..];
                    let v = if let Some(q) = rest.strip_prefix('"') {
                        &q[..q.find('"').unwrap()]
                    } else {
                        rest.split(' ').next().unwrap()
                    };
                    v.replace(&root, "")
                };
                (field("service"), field("destination"))
            })
            .collect();
        written.sort();
        pairs.push(written);
    }
    assert_eq!(seen[0], seen[1], "names changed with the order");
    assert_eq!(pairs[0].len(), 3, "{:?}", pairs[0]);
    assert_eq!(pairs[0], pairs[1], "a name moved to another output");
    for want in [
        "identity-out-a-b",
        "identity-out-a-b-2",
        "my-service-123",
        "heartbeat",
    ] {
        assert!(
            seen[0].iter().any(|n| n == want),
            "{want} not in {:?}",
            seen[0]
        );
    }
}
