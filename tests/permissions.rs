//! "Permission denied" as an operator meets it: a destination tbot's user
//! cannot write. As root (CI), tbot runs as `nobody` for this test, since
//! root ignores file modes; as anyone else, it runs as that user.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

fn chown(path: &Path, uid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; gid -1 leaves the group alone.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, u32::MAX) };
    assert_eq!(rc, 0, "chown {}", path.display());
}

#[test]
fn an_unwritable_destination_is_reported_with_the_os_error_and_recovers() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = TempDir::new("perm");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let storage = dir.join("storage");
    let out = dir.join("out");
    std::fs::create_dir(&storage).unwrap();
    std::fs::create_dir(&out).unwrap();
    // tbot's user owns storage; `out` is read-only to it.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
    if root {
        chown(&storage, NOBODY);
    }
    let services = format!(
        "  - type: identity\n    name: locked\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n  - type: identity\n    name: open\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        out.display(),
        storage.join("open").display()
    );
    let cfg = dir.write("tbot.yaml", &config_text(dir.path(), "", &services));
    // `nobody` may not reach the build's binary (a checkout in /root, mode
    // 0700): it runs a copy in the test's own 0755 directory.
    let bin = if root {
        let copy = dir.join("tbot");
        std::fs::copy(BIN, &copy).unwrap();
        copy
    } else {
        BIN.into()
    };
    let mut cmd = Command::new(&bin);
    cmd.arg("start")
        .arg("-c")
        .arg(&cfg)
        .args(["--diag-addr", "127.0.0.1:0"])
        .stdin(Stdio::null());
    if root {
        // SAFETY: setgid/setuid are async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut t = Tbot::spawn_and_wait_addr(cmd, dir);

    let r = t.until("/readyz/locked", Duration::from_secs(10), |r| {
        r.status == 503 && r.body.contains("reason")
    });
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("Permission denied (os error 13)"),
        "{reason}"
    );
    assert!(reason.contains(&out.display().to_string()), "{reason}");
    t.until("/readyz/open", Duration::from_secs(10), |r| r.status == 200);
    assert_eq!(
        t.get("/readyz/identity").status,
        200,
        "the others stay healthy"
    );

    // The operator fixes the permissions; no restart.
    if root {
        chown(&out, NOBODY);
    }
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).unwrap();
    t.until("/readyz/locked", Duration::from_secs(15), |r| {
        r.status == 200
    });
    assert!(out.join("key-cert.pub").exists());
    assert!(matches!(t.child.try_wait(), Ok(None)));
}
