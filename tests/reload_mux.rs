//! Reload and the SSH multiplexer: an SSH session relayed through
//! a multiplexer that a reload keeps goes on working (real OpenSSH client and
//! sshd); the relays of a multiplexer that a reload removes are drained for
//! a bounded time (10 s, `DRAIN_TIMEOUT`), then cut.

mod common;
use common::*;

#[path = "support/mux_peers.rs"]
mod mux_peers;
#[path = "support/reload.rs"]
#[allow(dead_code)]
mod reload_support;
#[path = "support/sshd.rs"]
#[allow(dead_code)]
mod sshd;
use mux_peers::{echo_server, round_trip, ssh};
use reload_support::{identity, reload_to, start, tid_of};

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The drain bound of src/services/ssh_multiplexer/drain.rs, as the man page states it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn mux(dir: &Path, name: &str, extra: &str) -> String {
    format!(
        "  - type: ssh-multiplexer\n    name: {name}\n    identity: id\n    destination: {{type: directory, path: {}}}\n{extra}",
        dir.join(name).display()
    )
}

#[test]
fn an_ssh_session_through_a_kept_multiplexer_survives_a_reload() {
    let dir = TempDir::new("reload-ssh");
    let d = dir.path().to_path_buf();
    let cfg = config_text(
        &d,
        "debug: true\n",
        &[identity(&d, "id"), mux(&d, "mux", "")].concat(),
    );
    let t = start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let mux_tid = tid_of(&t, "mux");
    let trusted = d.join("trusted_ca.pub");
    std::fs::copy(d.join("id").join("ssh_ca.pub"), &trusted).unwrap();
    let sshd = sshd::Sshd::start(&trusted);
    let ssh_config = d.join("mux").join("ssh_config");

    // An interactive session: each line sent comes back from sshd's side.
    let mut child = ssh(&ssh_config, sshd.port(), sshd.user(), "cat")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut echo = |text: &str| {
        stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{text}\n"), "sshd log:\n{}", sshd.log());
    };
    echo("before the reload");

    // Add an identity output and change the heartbeat: the multiplexer and
    // its identity output are kept.
    let new = config_text(
        &d,
        "debug: true\nheartbeat_interval: 5m\n",
        &[
            identity(&d, "id"),
            mux(&d, "mux", ""),
            identity(&d, "extra"),
        ]
        .concat(),
    );
    let line = reload_to(&t, &new);
    assert!(
        line.contains("added=extra")
            && line.contains("changed=heartbeat")
            && line.contains("kept=ca-rotation,id,identity,mux"),
        "{line}"
    );
    echo("after the reload");
    // Not restarted: the same accept thread.
    assert_eq!(tid_of(&t, "mux"), mux_tid);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    echo("still there");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());

    // A new session through the same socket works too.
    let out = ssh(&ssh_config, sshd.port(), sshd.user(), "echo new")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "new\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_removed_multiplexer_drains_its_relays_then_cuts_them() {
    let dir = TempDir::new("reload-drain");
    let d = dir.path().to_path_buf();
    let cfg = config_text(
        &d,
        "",
        &[
            identity(&d, "id"),
            mux(&d, "gone", ""),
            mux(&d, "changed", ""),
        ]
        .concat(),
    );
    let t = start(dir, &cfg, &[]);
    t.until("/readyz", Duration::from_secs(20), |r| r.status == 200);
    let port = echo_server(b"");
    let relay = |name: &str| {
        let mut s = UnixStream::connect(d.join(name).join("v1.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(format!("127.0.0.1:{port}\0").as_bytes())
            .unwrap();
        round_trip(&mut s, b"hello");
        s
    };
    let mut on_gone = relay("gone");
    let mut on_changed = relay("changed");

    let new = config_text(
        &d,
        "",
        &[
            identity(&d, "id"),
            mux(&d, "changed", "    max_connections: 8\n"),
        ]
        .concat(),
    );
    let line = reload_to(&t, &new);
    let reloaded = Instant::now();
    assert!(
        line.contains("removed=gone") && line.contains("changed=changed"),
        "{line}"
    );
    assert!(!d.join("gone").join("v1.sock").exists());
    // Draining: the live relays still carry bytes.
    round_trip(&mut on_gone, b"during the drain");
    round_trip(&mut on_changed, b"during the drain");
    // The changed multiplexer listens again, with its new configuration.
    t.until("/readyz/changed", Duration::from_secs(10), |r| {
        r.status == 200
    });
    let mut fresh = relay("changed");
    // Past the drain bound, the old relays are cut; the new one is not.
    let mut buf = [0u8; 16];
    for s in [&mut on_gone, &mut on_changed] {
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a drained relay was not cut");
    }
    let waited = reloaded.elapsed();
    assert!(
        waited >= DRAIN_TIMEOUT - Duration::from_millis(500)
            && waited < DRAIN_TIMEOUT + Duration::from_secs(5),
        "cut after {waited:?}"
    );
    round_trip(&mut fresh, b"new relay unaffected");
    // The harness copies tbot's stderr on another thread: wait for the line
    // rather than read the log the instant the relay ended.
    assert!(
        t.wait_log(
            "relays still open after the drain timeout; cut",
            Duration::from_secs(5)
        ),
        "{}",
        t.log()
    );
}
