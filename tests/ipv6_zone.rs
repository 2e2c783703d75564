//! What OpenSSH's `ProxyCommand` passes on, the multiplexer carries (issue
//! 17, item 6), through the real binary: an IPv6 link-local target with a
//! zone (`fe80::1%lo` as `%h`) is dialed on that interface; a zone that
//! names no interface, or one after something else than an IPv6 address, is
//! refused with a reason that names the rule (RFC 4007).
//!
//! tbot runs in a network namespace of its own (`unshare -n`) where `lo`
//! carries `fe80::1`; the target server joins that namespace from a thread
//! of this test (setns(2)). The multiplexer's socket is a file, so the test
//! reaches it from outside. Root only; skipped with the reason otherwise.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ERROR_PREFIX: &str = "tbot ssh-multiplexer error: ";

/// A TCP echo server on `[fe80::1%lo]` in the network namespace of process
/// `pid`; its port. Its thread ends with the test process.
fn echo_in_netns(pid: u32) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        // SAFETY: setns(2) on an open namespace descriptor, for this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        // In a fresh namespace, lo is interface 1.
        let addr = SocketAddrV6::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), 0, 0, 1);
        let l = TcpListener::bind(addr).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

/// Sends `request` and `payload` to the multiplexer at `socket`; returns
/// all it answers until it closes.
fn ask(socket: &Path, request: &str, payload: &[u8]) -> String {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    c.write_all(b"\0").unwrap();
    c.write_all(payload).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(payload) || out.ends_with(b"\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_link_local_target_with_a_zone_is_carried() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (a network namespace with fe80::1 on lo)");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: ip(8) is not installed (iproute2)");
        return;
    }
    let dir = TempDir::new("zone");
    let services = identity_and_mux(&dir.join("id"), &dir.join("mux"));
    let cfg_text = config_text(dir.path(), "", &services);
    let inner = Tbot::command_with(Path::new(BIN), &dir, &cfg_text, &[], &[]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c"])
        .arg("ip link set lo up && ip -6 addr add fe80::1/64 dev lo nodad && exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("TBOT_CONFIG_PATH")
        .env_remove("NOTIFY_SOCKET");
    let t = Tbot::spawn(cmd, dir);
    assert!(
        t.wait_log("ssh multiplexer listening", Duration::from_secs(20)),
        "{}",
        t.log()
    );
    let port = echo_in_netns(t.pid());
    let socket = t.dir.join("mux/v1.sock");

    let got = ask(&socket, &format!("fe80::1%lo:{port}"), b"through the zone");
    assert_eq!(got, "through the zone", "{}", t.log());
    // By index too (lo is 1), bracketed as ssh's %h:%p may give it.
    let got = ask(&socket, &format!("[fe80::1%1]:{port}"), b"by index");
    assert_eq!(got, "by index");

    let got = ask(&socket, &format!("fe80::1%nosuchif0:{port}"), b"x");
    assert!(
        got.starts_with(ERROR_PREFIX) && got.contains("RFC 4007"),
        "{got}"
    );
    assert!(got.contains("nosuchif0"), "{got}");
    let got = ask(&socket, &format!("10.0.0.1%lo:{port}"), b"x");
    assert!(
        got.starts_with(ERROR_PREFIX) && got.contains("RFC 4007"),
        "{got}"
    );
}
