//! Signals at any moment of start-up (issue 17, item 5), through the real
//! binary: the configuration is a FIFO the test holds open, so tbot is
//! caught reading it. A SIGHUP then never kills (it was status 129); a
//! SIGTERM stops it cleanly (status 0).

mod common;
use common::*;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// tbot started on a FIFO configuration, and the FIFO's write end, open
/// (so tbot's read waits for the text).
fn start_on_fifo(tag: &str) -> (Tbot, std::fs::File, String) {
    start_on_fifo_with(tag, &[])
}

/// [`start_on_fifo`] with `extra` flags (`--oneshot`).
fn start_on_fifo_with(tag: &str, extra: &[&str]) -> (Tbot, std::fs::File, String) {
    let dir = TempDir::new(tag);
    let text = config_text(dir.path(), "", "");
    let fifo = mkfifo(&dir.join("tbot.fifo"));
    let mut cmd = Tbot::command_with(Path::new(BIN), &dir, "", extra, &[]);
    cmd.arg("-c").arg(&fifo);
    let t = Tbot::spawn(cmd, dir);
    // Opening the write end waits for tbot's read end.
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    (t, writer, text)
}

#[test]
fn a_sighup_while_the_configuration_is_read_does_not_kill() {
    let (mut t, mut writer, text) = start_on_fifo("sig-hup-start");
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        t.child.try_wait().unwrap().is_none(),
        "tbot ended on SIGHUP: {:?}",
        t.child.try_wait()
    );
    writer.write_all(text.as_bytes()).unwrap();
    drop(writer);
    // It starts; the SIGHUP that waited is a reload (of a FIFO nobody
    // writes now: it fails within its bound, and tbot runs on).
    assert!(
        t.wait_log("tbot started", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    assert!(t.wait_log("reload", Duration::from_secs(15)), "{}", t.log());
    assert!(t.child.try_wait().unwrap().is_none(), "{}", t.log());
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(5)).expect("stopped");
    assert_eq!(status.code(), Some(0), "{}", t.log());
}

#[test]
fn a_sigterm_while_the_configuration_is_read_stops_cleanly() {
    let (mut t, writer, _) = start_on_fifo("sig-term-start");
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(5)).expect("stopped");
    drop(writer);
    assert_eq!(status.code(), Some(0), "{}", t.log());
    assert!(t.log().contains("stop signal"), "{}", t.log());
}

/// A oneshot's exit 0 means every output was issued: a SIGTERM while it
/// reads its configuration is a failure (1), not a clean stop.
#[test]
fn a_sigterm_while_a_oneshot_reads_its_configuration_is_a_failure() {
    let (mut t, writer, _) = start_on_fifo_with("sig-term-oneshot", &["--oneshot"]);
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(5)).expect("stopped");
    drop(writer);
    assert_eq!(status.code(), Some(1), "{}", t.log());
    assert!(t.log().contains("no output was issued"), "{}", t.log());
}

/// tbot started with the failpoint `point` sleeping a minute (a disk wait
/// at start that does not answer: a hung mount under the storage path),
/// then SIGTERM: the exit status, within 5 s.
fn sigterm_during(point: &str, tag: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = TempDir::new(tag);
    let cfg = config_text(dir.path(), "", "");
    let spec = format!("{point}=sleep:60000");
    let cmd = Tbot::command_with(
        Path::new(BIN),
        &dir,
        &cfg,
        extra,
        &[("TBOT_FAILPOINTS", &spec)],
    );
    let mut t = Tbot::spawn(cmd, dir);
    assert!(
        t.wait_log(
            &format!("failpoint reached name={point}"),
            Duration::from_secs(10)
        ),
        "{}",
        t.log()
    );
    t.signal(libc::SIGTERM);
    let code = t.wait_exit(Duration::from_secs(5)).map(|s| s.code());
    (code.expect("still running 5 s after SIGTERM"), t.log())
}

/// The disk waits the main thread makes before services start (the
/// StrictModes walk of the storage path at load, the storage lock) do not
/// hold SIGTERM: the daemon stops with 0, a oneshot fails with 1.
#[test]
fn a_sigterm_during_a_disk_wait_at_start_is_taken() {
    for (point, extra, code) in [
        ("trust-walk", &[][..], 0),
        ("storage-lock", &[][..], 0),
        ("storage-lock", &["--oneshot"][..], 1),
    ] {
        let (got, log) = sigterm_during(point, &format!("sig-disk-{point}"), extra);
        assert_eq!(got, Some(code), "{point} {extra:?}: {log}");
    }
}
