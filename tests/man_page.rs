//! The man page is well-formed (mandoc -T lint) and documents the CLI.

use std::process::Command;

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
