//! Signals at any moment of start-up (issue 17, item 5), through the real
//! binary: the configuration is a FIFO the test holds open, so tbot is
//! caught reading it. A SIGHUP then never kills (it was status 129); a
//! SIGTERM stops it cleanly (status 0).

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn mkfifo(path: &Path) -> PathBuf {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    path.to_path_buf()
}

/// tbot started on a FIFO configuration, and the FIFO's write end, open
/// (so tbot's read waits for the text).
fn start_on_fifo(tag: &str) -> (Tbot, std::fs::File, String) {
    let dir = TempDir::new(tag);
    let text = config_text(dir.path(), "", "");
    let fifo = mkfifo(&dir.join("tbot.fifo"));
    let mut cmd = Tbot::command_with(Path::new(BIN), &dir, "", &[], &[]);
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
