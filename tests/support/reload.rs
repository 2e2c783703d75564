//! Helpers for reload tests: identity sections, a reload that waits for its
//! log line, a thread's id by name from `/debug/pprof/threads`, and a
//! start whose `diag_addr` a reload can move.
//!
//! Include it from an integration test that also has `mod common;`:
//!
//! ```ignore
//! #[path = "support/reload.rs"]
//! #[allow(dead_code)] // not every test uses every helper
//! mod reload_support;
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::util::current_user;
use crate::common::{Tbot, TempDir, BIN};

/// An identity output `name` writing to `dir/name`, for `principals`.
pub fn identity_as(dir: &Path, name: &str, principals: &str) -> String {
    format!(
        "  - type: identity\n    name: {name}\n    principals: [{principals}]\n    destination: {{type: directory, path: {}}}\n",
        dir.join(name).display()
    )
}

/// An identity output `name` writing to `dir/name`, for the current user.
pub fn identity(dir: &Path, name: &str) -> String {
    identity_as(dir, name, &current_user())
}

/// Writes `text` as the running tbot's configuration file.
pub fn rewrite(t: &Tbot, text: &str) {
    t.dir.write("tbot.yaml", text);
}

/// Log lines that end a reload (applied or failed).
fn reloads_done(t: &Tbot) -> usize {
    t.log()
        .lines()
        .filter(|l| {
            l.contains("configuration reloaded") || l.contains("configuration reload failed")
        })
        .count()
}

/// Sends SIGHUP and waits until the reload has ended; returns its log line.
pub fn reload(t: &Tbot) -> String {
    let before = reloads_done(t);
    t.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(20);
    while reloads_done(t) == before {
        assert!(Instant::now() < end, "no reload ended; log:\n{}", t.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    t.log()
        .lines()
        .rfind(|l| l.contains("configuration reload"))
        .unwrap()
        .to_string()
}

/// [`rewrite`], then [`reload`].
pub fn reload_to(t: &Tbot, text: &str) -> String {
    rewrite(t, text);
    reload(t)
}

/// The id of the one thread named `name` (debug mode).
pub fn tid_of(t: &Tbot, name: &str) -> u64 {
    let threads = t.get("/debug/pprof/threads?format=json").json();
    let found: Vec<u64> = threads
        .as_array()
        .unwrap()
        .iter()
        .filter(|th| th["name"] == name)
        .map(|th| th["tid"].as_u64().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "threads named {name}: {threads}");
    found[0]
}

/// Starts tbot (`Tbot::start_with`, `--diag-addr 127.0.0.1:0`) with its
/// runtime directory (`XDG_RUNTIME_DIR`, where the diagnostics socket
/// directory goes) inside the test's own, so that nothing of it is shared
/// with other tests or tbots on the machine.
pub fn start(dir: TempDir, config: &str, env: &[(&str, &str)]) -> Tbot {
    let runtime = dir.path().display().to_string();
    let mut env = env.to_vec();
    env.push(("XDG_RUNTIME_DIR", &runtime));
    Tbot::start_with(dir, config, &[], &env)
}

/// `tbot start -c FILE` with no --diag-addr flag, so that the file's
/// `diag_addr` rules (a reload can move it), with `env` set and its
/// diagnostics socket directory in the test's own (see [`start`]); waits
/// until the log names the address.
pub fn start_without_flag(dir: TempDir, config: &str, env: &[(&str, &str)]) -> Tbot {
    let cmd = command_without_flag(&dir, config, env);
    Tbot::spawn_and_wait_addr(cmd, dir)
}

/// The command [`start_without_flag`] runs (`config` written to `dir`),
/// for a test whose configuration has no `diag_addr` to wait for.
pub fn command_without_flag(dir: &TempDir, config: &str, env: &[(&str, &str)]) -> Command {
    let cfg = dir.write("tbot.yaml", config);
    let mut cmd = Command::new(BIN);
    cmd.args(["start", "-c"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("TBOT_DEBUG")
        .env_remove("NOTIFY_SOCKET")
        .env("XDG_RUNTIME_DIR", dir.path())
        .envs(env.iter().copied());
    cmd
}
