//! The man page is well-formed (mandoc -T lint) and documents the CLI,
//! every diagnostics endpoint and every metric family, as the real binary
//! serves them.

mod common;
use common::util::current_user;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

#[test]
fn mandoc_lint_is_clean() {
    let out = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning", "man/tbot.1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("mandoc must be installed: run tests/run-all.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "mandoc -T lint:\n{text}"
    );
}

#[test]
fn mandoc_lint_would_catch_a_broken_page() {
    let dir = std::env::temp_dir().join(format!("tbot-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.1");
    std::fs::write(&bad, ".Dd\n.Dt BAD 1\n.Sh NAME\n.Bl -tag\n.It x\n").unwrap();
    let out = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success() || !out.stdout.is_empty() || !out.stderr.is_empty());
}

#[test]
fn help_commands_appear_in_the_man_page() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/tbot.1")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_tbot"))
        .arg("help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.len() >= 5, "{help}");
    for c in commands {
        assert!(
            man.contains(&format!(".Cm {}", c.replace('-', "\\-"))),
            "man page lacks command {c}"
        );
    }
}

/// The man page with mdoc's escapes undone: `\&` removed, `\-` as `-`.
fn man_text() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/tbot.1"))
        .unwrap()
        .replace("\\&", "")
        .replace("\\-", "-")
}

/// The lines of section `.Sh NAME` (up to the next `.Sh`).
fn section<'a>(man: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!(".Sh {name}");
    man.lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| !l.starts_with(".Sh "))
        .collect()
}

/// The paths named by the `.It` items of DIAGNOSTICS SERVICE: the word
/// after each `Pa` (`.It Pa /wait , Pa /wait/NAME` names both).
fn documented_paths(man: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for line in section(man, "DIAGNOSTICS SERVICE") {
        if let Some(rest) = line.strip_prefix(".It ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            for w in words.windows(2).filter(|w| w[0] == "Pa") {
                paths.insert(endpoint_key(w[1]));
            }
        }
    }
    paths
}

/// A path without its query and placeholder: `/readyz/{service}`,
/// `/readyz/NAME` and `/readyz/` are all `/readyz/`.
fn endpoint_key(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let (dir, last) = path.rsplit_once('/').unwrap_or(("", path));
    let placeholder = (last.starts_with('{') && last.ends_with('}'))
        || (!last.is_empty() && last.chars().all(|c| c.is_ascii_uppercase()));
    if placeholder {
        format!("{dir}/")
    } else {
        path.to_string()
    }
}

/// A metric family: its type and label names (`le` of a histogram left out).
#[derive(Debug, PartialEq)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

/// The entries of the Metrics list (`.Ss Metrics` in DIAGNOSTICS SERVICE):
/// `.It Li NAME{LABEL,LABEL=VALUES}`, the body starting with the type.
fn documented_metrics(man: &str) -> BTreeMap<String, Family> {
    let lines: Vec<&str> = section(man, "DIAGNOSTICS SERVICE")
        .into_iter()
        .skip_while(|l| *l != ".Ss Metrics")
        .skip(1)
        .take_while(|l| !l.starts_with(".Ss "))
        .collect();
    let mut out = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(head) = line.strip_prefix(".It Li ") else {
            continue;
        };
        let (name, labels) = match head.trim().split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head.trim(), ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| l.split('=').next().unwrap_or(l).to_string())
            .collect();
        let kind = lines
            .get(i + 1)
            .and_then(|body| body.split_whitespace().next())
            .unwrap_or("")
            .trim_matches(|c: char| !c.is_ascii_alphabetic())
            .to_ascii_lowercase();
        let dup = out.insert(name.to_string(), Family { kind, labels });
        assert!(dup.is_none(), "{name} is listed twice in the man page");
    }
    out
}

/// The families of a /metrics scrape, from its `# TYPE` lines and the label
/// names of their samples.
fn scraped_metrics(body: &str) -> BTreeMap<String, Family> {
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            out.insert(
                name.to_string(),
                Family {
                    kind: kind.to_string(),
                    labels: BTreeSet::new(),
                },
            );
        }
    }
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..end];
        let family = ["", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let name = sample.strip_suffix(suffix)?;
                out.contains_key(name).then(|| name.to_string())
            })
            .unwrap_or_else(|| panic!("sample of no # TYPE family: {line}"));
        let f = out.get_mut(&family).unwrap();
        if let Some(labels) = line[end..].strip_prefix('{') {
            for name in label_names(labels) {
                if !(f.kind == "histogram" && name == "le") {
                    f.labels.insert(name);
                }
            }
        }
    }
    out
}

/// The label names of `k="v",k2="v2"}...` (values may hold escaped quotes).
fn label_names(mut s: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, rest)) = s.split_once("=\"") {
        names.push(name.trim_start_matches(',').to_string());
        let mut escaped = false;
        let close = rest
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unterminated label value in {s}"));
        s = &rest[close + 1..];
        if s.starts_with('}') {
            break;
        }
    }
    names
}

#[test]
fn label_names_and_endpoint_keys() {
    assert_eq!(label_names(r#"a="x,\"y\"",b="",c="}"} 1"#), ["a", "b", "c"]);
    assert_eq!(endpoint_key("/readyz/{service}"), "/readyz/");
    assert_eq!(endpoint_key("/readyz/NAME"), "/readyz/");
    assert_eq!(endpoint_key("/readyz"), "/readyz");
    assert_eq!(endpoint_key("/debug/pprof/"), "/debug/pprof/");
    assert_eq!(
        endpoint_key("/debug/pprof/profile?seconds=30"),
        "/debug/pprof/profile"
    );
}

/// Every metric family and endpoint the real binary serves, with an
/// identity output and a multiplexer (so that every family has series),
/// is in the man page; every metric documented there is served.
#[test]
fn every_metric_family_and_endpoint_is_in_the_man_page() {
    let dir = TempDir::new("man");
    let services = format!(
        "  - type: identity\n    name: id\n    principals: [{user}]\n    destination: {{type: directory, path: {id}}}\n\
         \x20 - type: ssh-multiplexer\n    name: mux\n    identity: id\n    destination: {{type: directory, path: {mux}}}\n",
        user = current_user(),
        id = dir.join("id").display(),
        mux = dir.join("mux").display(),
    );
    let cfg = config_text(dir.path(), "", &services);
    let t = Tbot::start(dir, &cfg, &["-d"]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let man = man_text();
    let mut problems = Vec::new();

    let metrics = t.get("/metrics");
    assert_eq!(metrics.status, 200);
    let scraped = scraped_metrics(&metrics.body);
    for name in [
        "tbot_info",
        "tbot_service_health",
        "tbot_task_iteration_duration_seconds",
        "tbot_ssh_multiplexer_requests_handled_total",
        "process_threads",
    ] {
        assert!(
            scraped.contains_key(name),
            "no {name} in:\n{}",
            metrics.body
        );
    }
    let documented = documented_metrics(&man);
    for (name, family) in &scraped {
        if !man.contains(name.as_str()) {
            problems.push(format!("metric {name} is not in the man page"));
        }
        match documented.get(name) {
            None => problems.push(format!(
                "metric {name} ({}) has no entry in the Metrics list",
                family.kind
            )),
            Some(d) if d != family => problems.push(format!(
                "metric {name}: the man page says {d:?}, /metrics serves {family:?}"
            )),
            Some(_) => {}
        }
    }
    for name in documented.keys().filter(|n| !scraped.contains_key(*n)) {
        problems.push(format!(
            "the man page lists {name}, which /metrics does not serve"
        ));
    }

    let paths = documented_paths(&man);
    let index = t.get("/debug/pprof/");
    assert_eq!(index.status, 200, "{}", index.body);
    let linked: Vec<&str> = index
        .body
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(linked.len() >= 4, "{}", index.body);
    // The 404 answer lists the top-level endpoints.
    let not_found = t.get("/no-such-endpoint");
    assert_eq!(not_found.status, 404);
    let listed: Vec<&str> = not_found
        .body
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .collect();
    let top = [
        "/livez",
        "/readyz",
        "/readyz/",
        "/wait",
        "/wait/",
        "/metrics",
        "/debug/pprof/",
    ];
    let listed_keys: BTreeSet<String> = listed.iter().map(|p| endpoint_key(p)).collect();
    for p in top {
        assert!(
            listed_keys.contains(p),
            "404 body lacks {p}: {}",
            not_found.body
        );
    }
    let every: BTreeSet<&str> = linked.iter().chain(&listed).chain(&top).copied().collect();
    for p in every {
        if !paths.contains(&endpoint_key(p)) {
            problems.push(format!(
                "endpoint {p} has no item in DIAGNOSTICS SERVICE (documented: {paths:?})"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
