//! The operator's tools, through the real binary (issue 18): `tbot check`
//! beyond parsing, running as the storage's owner or refusing, the CA
//! announced as generated, shell completions from the flag table (checked
//! with real bash and fish), the build in `--version` and `tbot_info`, the
//! Debian changelog's version, and JSON logs to the last line.
//!
//! The configuration-file classes `check` refuses exactly as `start` does
//! are in tests/cli_config.rs (its `refused` runs both).

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn lchown(path: &Path, uid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; gid -1 leaves the group alone.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid, u32::MAX) };
    assert_eq!(rc, 0, "lchown {}", path.display());
}

/// Every file under `dir` with its size and mode, to see that nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, u64, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            out.push((
                e.path().display().to_string(),
                m.len(),
                m.permissions().mode(),
            ));
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn identity(name: &str, dest: &Path) -> String {
    format!(
        "  - type: identity\n    name: {name}\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dest.display()
    )
}

// ---------------------------------------------------------------------------
// tbot check

#[test]
fn check_passes_a_good_file_and_changes_nothing() {
    let dir = TempDir::new("check-good");
    let services = identity("out", &dir.join("out/deeper"))
        + &format!(
            "  - type: ssh-multiplexer\n    destination: {{type: directory, path: {}}}\n    identity: out\n",
            dir.join("mux").display()
        );
    let cfg = dir.write(
        "tbot.yaml",
        &config_text(dir.path(), "diag_addr: localhost:0\n", &services),
    );
    let before = snapshot(dir.path());
    let (code, out, err) = run_tbot(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!(
            "{}: ok (services: 2, storage: {})\n",
            cfg.display(),
            dir.join("storage").display()
        )
    );
    assert!(err.is_empty(), "{err}");
    assert_eq!(snapshot(dir.path()), before, "check changed the directory");
    // With a storage directory, its CA key and lock as start leaves them.
    let (code, _, err) = run_tbot(&["start", "--oneshot", "-c", cfg.to_str().unwrap()], &[], T);
    assert_eq!(code, Some(0), "{err}");
    let before = snapshot(dir.path());
    let (code, _, err) = run_tbot(&["check", "-c", cfg.to_str().unwrap()], &[], T);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(snapshot(dir.path()), before, "check changed the directory");
}

/// `check` on `cfg_text` (in `dir`, as tbot.yaml): exit 2, and each of
/// `wants` in a `tbot: FILE:LINE:COLUMN: ...` line.
fn check_refuses(dir: &TempDir, cfg_text: &str, wants: &[&str]) -> String {
    let cfg = dir.write("tbot.yaml", cfg_text);
    let cfg_s = cfg.display().to_string();
    let (code, out, err) = run_tbot(&["check", "-c", &cfg_s], &[], T);
    assert_eq!(code, Some(2), "expected exit 2 for {wants:?}: {err}");
    assert!(out.is_empty(), "{out}");
    for want in wants {
        let line = err
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no line with {want:?} in:\n{err}"));
        assert!(line.starts_with(&format!("tbot: {cfg_s}:")), "{line}");
    }
    err
}

#[test]
fn check_refuses_what_start_would_fail_on() {
    // The storage directory is a file.
    let dir = TempDir::new("check-bad");
    std::fs::write(dir.join("storage"), "x").unwrap();
    check_refuses(
        &dir,
        &config_text(dir.path(), "", ""),
        &[":2:", "storage.path: ", "storage: not a directory"],
    );
    // A CA key that is not a key.
    let dir = TempDir::new("check-ca");
    std::fs::create_dir(dir.join("storage")).unwrap();
    std::fs::write(dir.join("storage/ca_key"), "not a key\n").unwrap();
    std::fs::set_permissions(
        dir.join("storage/ca_key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    check_refuses(
        &dir,
        &config_text(dir.path(), "", ""),
        &["storage.path: the bot's CA: ", "ca_key"],
    );
    // A diag_addr host name that does not resolve (.invalid never does: RFC 6761).
    let dir = TempDir::new("check-addr");
    check_refuses(
        &dir,
        &config_text(dir.path(), "diag_addr: tbot-check.invalid:3001\n", ""),
        &[":3:12: diag_addr: resolving tbot-check.invalid:3001: "],
    );
    // A destination through a file.
    let dir = TempDir::new("check-dest");
    std::fs::write(dir.join("file"), "x").unwrap();
    let err = check_refuses(
        &dir,
        &config_text(dir.path(), "", &identity("o", &dir.join("file/out"))),
        &[
            ":7:",
            "services[0].destination.path (o): ",
            "file: not a directory",
        ],
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Needs root: the link and the storage must belong to another user.
#[test]
fn check_refuses_another_users_symlink_and_storage() {
    if !is_root() {
        eprintln!("skipped: making files that belong to another user needs root");
        return;
    }
    let dir = TempDir::new("check-owner");
    std::fs::create_dir(dir.join("real")).unwrap();
    let link = dir.join("planted");
    std::os::unix::fs::symlink(dir.join("real"), &link).unwrap();
    lchown(&link, NOBODY);
    // Two problems at once: each on its own line.
    let storage = dir.join("storage");
    std::fs::create_dir(&storage).unwrap();
    std::fs::write(storage.join("heartbeat.json"), "{}").unwrap();
    lchown(&storage.join("heartbeat.json"), NOBODY);
    let err = check_refuses(
        &dir,
        &config_text(dir.path(), "", &identity("o", &link.join("out"))),
        &[
            "symbolic link owned by uid 65534",
            "heartbeat.json belongs to nobody (uid 65534), not to root (uid 0)",
        ],
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    // The storage directory itself: the rule start enforces, with the hint.
    lchown(&storage, NOBODY);
    let err = check_refuses(
        &dir,
        &config_text(dir.path(), "", ""),
        &["belongs to nobody (uid 65534), not to root (uid 0)"],
    );
    assert!(err.contains("sudo -u nobody "), "{err}");
    assert!(err.contains(" check -c "), "{err}");
    // Run as nobody, the same storage is fine.
    let cfg = dir.join("tbot.yaml");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = as_nobody(&dir, &["check", "-c", cfg.to_str().unwrap()]);
    assert!(ok, "{text}");
}

/// Runs a copy of tbot (the build's may sit in a 0700 /root) as nobody with
/// setpriv; returns (exit 0, stdout + stderr).
fn as_nobody(dir: &TempDir, args: &[&str]) -> (bool, String) {
    let copy = dir.join("tbot-bin");
    if !copy.exists() {
        std::fs::copy(BIN, &copy).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(&copy)
        .args(args)
        .env_remove("TBOT_CONFIG_PATH")
        .output()
        .expect("setpriv (util-linux)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------
// Run as the right user, or say so

#[test]
fn start_refuses_a_storage_directory_of_another_user() {
    if !is_root() {
        eprintln!("skipped: giving the storage directory to another user needs root");
        return;
    }
    // Root on nobody's storage: refused, daemon and --oneshot, nothing written.
    let dir = TempDir::new("owner-root");
    let storage = dir.join("storage");
    std::fs::create_dir(&storage).unwrap();
    lchown(&storage, NOBODY);
    let cfg = dir.write(
        "tbot.yaml",
        &config_text(dir.path(), "", &identity("o", &dir.join("out"))),
    );
    let cfg_s = cfg.to_str().unwrap();
    for args in [
        &["start", "-c", cfg_s, "--diag-addr", "127.0.0.1:0"][..],
        &["start", "--oneshot", "-c", cfg_s][..],
    ] {
        let (code, _, err) = run_tbot(args, &[], T);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        let line = err.lines().find(|l| l.starts_with("tbot: ")).unwrap_or("");
        assert!(
            line.contains(&format!(
                "storage directory {} belongs to nobody (uid 65534), not to root (uid 0)",
                storage.display()
            )),
            "{err}"
        );
        assert!(
            line.contains(&format!("sudo -u nobody {BIN} {}", args.join(" "))),
            "{line}"
        );
        assert_eq!(
            std::fs::read_dir(&storage).unwrap().count(),
            0,
            "wrote in storage"
        );
        assert!(!dir.join("out").exists(), "wrote an output");
    }
    // nobody (setpriv) on root's storage at 0777: root's is accepted (a
    // volume's mount point: nobody can make no root-owned file there), but a
    // storage directory anyone can write is the key swap of issue 17 §4.
    let dir = TempDir::new("owner-nobody");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.join("storage")).unwrap();
    std::fs::set_permissions(dir.join("storage"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = dir.write("tbot.yaml", &config_text(dir.path(), "", ""));
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = as_nobody(&dir, &["start", "--oneshot", "-c", cfg.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("writable by others") && text.contains("mode 0777"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(dir.join("storage")).unwrap().count(), 0);
}

#[test]
fn a_new_ca_is_announced_as_generated_and_to_be_backed_up() {
    let dir = TempDir::new("ca-generated");
    let cfg = dir.write("tbot.yaml", &config_text(dir.path(), "", ""));
    let key = dir.join("storage/ca_key").display().to_string();
    let (code, _, err) = run_tbot(&["start", "--oneshot", "-c", cfg.to_str().unwrap()], &[], T);
    assert_eq!(code, Some(0), "{err}");
    let generated = err
        .lines()
        .find(|l| l.contains("the bot's CA was generated"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(generated.contains(&format!("path={key}")), "{generated}");
    let backup = err
        .lines()
        .find(|l| l.contains("WARN") && l.contains("back up the CA key"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        backup.contains("trust root") && backup.contains(&key),
        "{backup}"
    );
    assert!(!err.contains("CA is loaded"), "{err}");
    // Next time it is read, not made.
    let (code, _, err) = run_tbot(&["start", "--oneshot", "-c", cfg.to_str().unwrap()], &[], T);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("the bot's CA is loaded"), "{err}");
    assert!(
        !err.contains("CA was generated") && !err.contains("back up"),
        "{err}"
    );
    // The daemon says the same on its first start.
    let dir = TempDir::new("ca-generated-daemon");
    let cfg = config_text(dir.path(), "", "");
    let t = Tbot::start(dir, &cfg, &[]);
    assert!(t.wait_log("back up the CA key", T), "{}", t.log());
    assert!(
        t.log().contains("the bot's CA was generated"),
        "{}",
        t.log()
    );
}

// ---------------------------------------------------------------------------
// Completions

/// The commands `tbot help` lists, and the flags each `tbot CMD --help` lists.
fn help_table() -> Vec<(String, Vec<String>)> {
    let (_, help, _) = run_tbot(&["help"], &[], T);
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // The name column: one word, or two (`debug logs`).
        .filter_map(|l| l.trim_start().split("  ").next().map(String::from))
        .collect();
    assert!(commands.len() >= 7, "{help}");
    commands
        .into_iter()
        .map(|c| {
            let mut args: Vec<&str> = c.split(' ').collect();
            args.push("--help");
            let (code, h, _) = run_tbot(&args, &[], T);
            assert_eq!(code, Some(0), "{c} --help");
            let flags: Vec<String> = h
                .lines()
                .skip_while(|l| !l.starts_with("Flags:"))
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .flat_map(|l| {
                    // The names column (the help text after it may say "-d" too).
                    let names: String = l.chars().take(32).collect();
                    names
                        .split([' ', ','])
                        .filter(|w| w.starts_with('-'))
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .collect();
            assert!(flags.contains(&"--help".to_string()), "{c}: {flags:?}");
            (c, flags)
        })
        .collect()
}

fn script(shell: &str) -> String {
    let (code, out, err) = run_tbot(&["completions", shell], &[], T);
    assert_eq!(code, Some(0), "{err}");
    out
}

/// bash's answer for `tbot WORDS...` with the cursor on the last word.
fn bash_complete(script_path: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let prog = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; _tbot; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script_path.display(),
        quoted.join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &prog])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// fish's answer for the command line `line` (`complete -C`), first words only.
fn fish_complete(script_path: &Path, line: &str) -> Option<Vec<String>> {
    let prog = format!("source '{}'; complete -C '{line}'", script_path.display());
    let out = Command::new("fish")
        .args(["--no-config", "-c", &prog])
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('\t').next().map(String::from))
            .collect(),
    )
}

/// A zsh script that types `$2` into an interactive zsh (in a pseudo
/// terminal, zsh's own zpty module) with `$1` on its `fpath` and compinit
/// loaded, presses a key bound to completion, and prints each word the
/// completion system offered as a `ZHIT:word` line.
const ZSH_CAPTURE: &str = r#"
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' ; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'comptest() { compadd() { local -a __hits; builtin compadd -O __hits "$@"; local h; for h in $__hits; do print -r -- "ZHIT:$h"; done >&2; builtin compadd "$@" }; _main_complete; print -r -- "Z$((3+3))END" >&2 }'
zpty -w z 'zle -C comptest-w complete-word comptest; bindkey "^X" comptest-w'
out=""
read_until() {
  integer i=0
  while (( i++ < 400 )) && [[ $out != *$1* ]]; do
    zpty -rt z chunk && out+=$chunk || sleep 0.05
  done
}
zpty -w -n z "$2"$'\x18'
read_until Z6END
zpty -w z $'\x15print Z$((1+1))DONE'
read_until Z2DONE
zpty -d z
print -r -- $out
"#;

/// zsh's answer for the command line `line`, with `dir` holding `_tbot`;
/// None when zsh is not installed.
fn zsh_complete(dir: &Path, line: &str) -> Option<Vec<String>> {
    let capture = dir.join("capture.zsh");
    if !capture.exists() {
        std::fs::write(&capture, ZSH_CAPTURE).unwrap();
    }
    let out = Command::new("timeout")
        .args(["30", "zsh", "-f"])
        .arg(&capture)
        .arg(dir)
        .arg(line)
        .output()
        .ok()
        .filter(|o| o.status.code() != Some(127))?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        text.contains("Z6END"),
        "zsh did not complete {line:?}:\n{text}"
    );
    Some(
        text.split("ZHIT:")
            .skip(1)
            .filter_map(|w| w.split(['\n', ' ', '"', '$']).next())
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect(),
    )
}

#[test]
fn completions_offer_every_command_and_every_flag_of_help() {
    let dir = TempDir::new("completions");
    let table = help_table();
    let bash = dir.write("tbot.bash", &script("bash"));
    let fish = dir.write("tbot.fish", &script("fish"));
    let zsh = script("zsh");
    let zsh_dir = TempDir::new("completions-zsh");
    zsh_dir.write("_tbot", &zsh);
    let zsh_cmds = zsh_complete(zsh_dir.path(), "tbot ");
    let commands: Vec<&str> = table.iter().map(|(c, _)| c.as_str()).collect();
    let got = bash_complete(&bash, &["tbot", ""]);
    let fish_cmds = fish_complete(&fish, "tbot ");
    // A command in two words (`debug logs`): its first word among the
    // commands, its second after the first.
    for c in &commands {
        let (first, second) = c.split_once(' ').unwrap_or((c, ""));
        assert!(
            got.iter().any(|g| g == first),
            "bash lacks command {c}: {got:?}"
        );
        assert!(zsh.contains(&format!("'{first}:")), "zsh lacks command {c}");
        if let Some(z) = &zsh_cmds {
            assert!(z.iter().any(|g| g == first), "zsh lacks command {c}: {z:?}");
        }
        if let Some(f) = &fish_cmds {
            assert!(
                f.iter().any(|g| g == first),
                "fish lacks command {c}: {f:?}"
            );
        }
        if second.is_empty() {
            continue;
        }
        let b = bash_complete(&bash, &["tbot", first, ""]);
        assert!(
            b.iter().any(|g| g == second),
            "bash: tbot {first} lacks {second}: {b:?}"
        );
        assert!(
            zsh.contains(&format!("'{second}:")),
            "zsh lacks command {c}"
        );
        if let Some(z) = zsh_complete(zsh_dir.path(), &format!("tbot {first} ")) {
            assert!(
                z.iter().any(|g| g == second),
                "zsh: tbot {first} lacks {second}: {z:?}"
            );
        }
        if let Some(f) = fish_complete(&fish, &format!("tbot {first} ")) {
            assert!(
                f.iter().any(|g| g == second),
                "fish: tbot {first} lacks {second}: {f:?}"
            );
        }
    }
    for (c, flags) in &table {
        let mut words: Vec<&str> = vec!["tbot"];
        words.extend(c.split(' '));
        words.push("-");
        let got = bash_complete(&bash, &words);
        let fish_got = fish_complete(&fish, &format!("tbot {c} -"));
        let zsh_got = zsh_complete(zsh_dir.path(), &format!("tbot {c} -"));
        for f in flags {
            assert!(got.contains(f), "bash: tbot {c} {f} missing from {got:?}");
            assert!(zsh.contains(f.as_str()), "zsh lacks {f}");
            if let Some(fg) = &fish_got {
                assert!(fg.contains(f), "fish: tbot {c} {f} missing from {fg:?}");
            }
            if let Some(zg) = &zsh_got {
                assert!(zg.contains(f), "zsh: tbot {c} {f} missing from {zg:?}");
            }
        }
    }
    if zsh_cmds.is_none() {
        eprintln!("zsh is not installed (tests/run-all.sh installs it): zsh checked by text only");
    }
    if fish_cmds.is_none() {
        eprintln!(
            "fish is not installed (tests/run-all.sh installs it): fish checked by text only"
        );
        assert!(std::fs::read_to_string(&fish)
            .unwrap()
            .contains("-l log-format"));
    }
    // Values: the log formats, the shells.
    assert_eq!(
        bash_complete(&bash, &["tbot", "start", "--log-format", ""]),
        ["text", "json"]
    );
    assert_eq!(
        bash_complete(&bash, &["tbot", "debug", "logs", "--level", ""]),
        ["debug", "info", "warn", "error"]
    );
    assert_eq!(
        bash_complete(&bash, &["tbot", "debug", "log-level", "w"]),
        ["warn"]
    );
    assert_eq!(
        bash_complete(&bash, &["tbot", "completions", ""]),
        ["bash", "zsh", "fish", "-h", "--help"]
    );
    // Each script is valid for its shell.
    let zsh_file = dir.write("_tbot", &zsh);
    for (shell, file) in [("bash", &bash), ("zsh", &zsh_file), ("fish", &fish)] {
        match Command::new(shell).arg("-n").arg(file).output() {
            Ok(o) => assert!(
                o.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => eprintln!("{shell} is not installed (tests/run-all.sh installs it)"),
        }
    }
}

/// The package ships the scripts from contrib/completions/ (Cargo.toml's
/// assets): they must be what this build writes.
#[test]
fn the_packaged_completions_are_what_the_binary_writes() {
    for (shell, file) in [
        ("bash", "tbot.bash"),
        ("zsh", "_tbot"),
        ("fish", "tbot.fish"),
    ] {
        let shipped =
            std::fs::read_to_string(format!("{ROOT}/contrib/completions/{file}")).unwrap();
        assert!(
            shipped == script(shell),
            "contrib/completions/{file} is stale: run `tbot completions {shell} > contrib/completions/{file}`"
        );
        let cargo = std::fs::read_to_string(format!("{ROOT}/Cargo.toml")).unwrap();
        assert!(
            cargo.contains(&format!("\"contrib/completions/{file}\"")),
            "{file} not in the .deb"
        );
    }
}

// ---------------------------------------------------------------------------
// Version

/// `key: value` lines of `tbot --version` after the first.
fn version_fields() -> (String, Vec<(String, String)>) {
    let (code, out, _) = run_tbot(&["--version"], &[], T);
    assert_eq!(code, Some(0));
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let fields = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (first, fields)
}

#[test]
fn version_names_the_revision_tree_toolchain_and_target() {
    let (first, fields) = version_fields();
    assert_eq!(first, format!("tbot {}", env!("CARGO_PKG_VERSION")));
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["revision", "tree", "rustc", "target"]);
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).unwrap().1.clone();
    assert!(get("rustc").starts_with("rustc 1."), "{fields:?}");
    assert!(get("target").contains("-linux-"), "{fields:?}");
    // This checkout's HEAD (the test's binary was built from it); a source
    // tree without .git (or without git) says "unknown" for both.
    let head = Command::new("git")
        .args(["-C", ROOT, "rev-parse", "HEAD"])
        .output();
    match head {
        Ok(o) if o.status.success() => {
            assert_eq!(get("revision"), String::from_utf8_lossy(&o.stdout).trim());
            assert!(
                ["clean", "dirty"].contains(&get("tree").as_str()),
                "{fields:?}"
            );
        }
        _ => assert_eq!(
            (get("revision"), get("tree")),
            ("unknown".into(), "unknown".into())
        ),
    }
    let (_, version_cmd, _) = run_tbot(&["version"], &[], T);
    let (_, flag, _) = run_tbot(&["--version"], &[], T);
    assert_eq!(version_cmd, flag);
}

#[test]
fn tbot_info_carries_the_same_build_as_version() {
    let (first, fields) = version_fields();
    let dir = TempDir::new("info");
    let cfg = config_text(dir.path(), "", "");
    let t = Tbot::start(dir, &cfg, &[]);
    let body = t.get("/metrics").body;
    let line = body
        .lines()
        .find(|l| l.starts_with("tbot_info{"))
        .unwrap_or_else(|| panic!("{body}"));
    let version = first.trim_start_matches("tbot ");
    assert!(line.contains(&format!("version=\"{version}\"")), "{line}");
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["revision", "tree", "rustc", "target"], "--version");
    for (k, v) in &fields {
        assert!(line.contains(&format!("{k}=\"{v}\"")), "{k}: {line}");
    }
    assert!(line.ends_with("} 1"), "{line}");
}

/// The package's changelog must describe the version it ships: its top
/// entry `tbot (VERSION-REVISION)` carries the crate's version.
#[test]
fn the_debian_changelog_top_entry_is_the_crate_version() {
    let text = std::fs::read_to_string(format!("{ROOT}/contrib/debian/changelog")).unwrap();
    let top = text.lines().next().unwrap_or_default();
    let version = top
        .strip_prefix("tbot (")
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("not a changelog entry: {top}"));
    let upstream = version.rsplit_once('-').map(|(u, _)| u).unwrap_or(version);
    assert_eq!(
        upstream,
        env!("CARGO_PKG_VERSION"),
        "contrib/debian/changelog's top entry ({version}) is not Cargo.toml's version: add an entry"
    );
}

// ---------------------------------------------------------------------------
// JSON logs

fn all_json(what: &str, err: &str) {
    assert!(!err.is_empty(), "{what}: nothing on stderr");
    for l in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["msg"].is_string(),
            "{what}: {l}"
        );
    }
}

#[test]
fn json_logs_stay_json_to_the_last_line_fatal_errors_included() {
    let dir = TempDir::new("json");
    let good = dir.write("good.yaml", &config_text(dir.path(), "", ""));
    let bad = dir.write("bad.yaml", "version: v2\nbogus: 1\n");
    let good_s = good.to_str().unwrap();
    let bad_s = bad.to_str().unwrap();
    let j = ["--log-format", "json"];
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        (
            "usage error",
            vec!["start", j[0], j[1], "--no-such-flag"],
            2,
        ),
        (
            "usage error, flag after",
            vec!["start", "--no-such-flag", "--log-format=json"],
            2,
        ),
        ("bad file", vec!["start", j[0], j[1], "-c", bad_s], 2),
        ("no file", vec!["start", j[0], j[1]], 2),
        (
            "bad address",
            vec!["start", j[0], j[1], "-c", good_s, "--diag-addr", "x"],
            2,
        ),
        (
            "oneshot",
            vec!["start", j[0], j[1], "--oneshot", "-c", good_s],
            0,
        ),
    ];
    for (what, args, want) in cases {
        let (code, _, err) = run_tbot(&args, &[], T);
        assert_eq!(code, Some(want), "{what}: {err}");
        all_json(what, &err);
        if want != 0 {
            let last: serde_json::Value =
                serde_json::from_str(err.lines().last().unwrap()).unwrap();
            assert_eq!(last["level"], "error", "{what}");
            assert_eq!(last["fatal"], true, "{what}");
        }
    }
    // Refused while another tbot holds the storage.
    let t = Tbot::start(
        TempDir::new("json-holder"),
        &config_text(dir.path(), "", ""),
        &[],
    );
    let (code, _, err) = run_tbot(&["start", j[0], j[1], "--oneshot", "-c", good_s], &[], T);
    assert_eq!(code, Some(1), "{err}");
    all_json("storage in use", &err);
    assert!(err.contains("in use by another tbot"), "{err}");
    drop(t);
    // A failed oneshot output: its closing summary too.
    let blocked = dir.write("blocked", "x");
    let cfg = dir.write(
        "fails.yaml",
        &config_text(dir.path(), "", &identity("o", &blocked.join("out"))),
    );
    let (code, _, err) = run_tbot(
        &[
            "start",
            j[0],
            j[1],
            "--oneshot",
            "-c",
            cfg.to_str().unwrap(),
        ],
        &[],
        T,
    );
    assert_eq!(code, Some(1), "{err}");
    all_json("oneshot failure", &err);
    assert!(err.contains("identity outputs failed"), "{err}");
}
