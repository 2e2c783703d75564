//! Peers for tests of the SSH multiplexer: a loopback echo server, a byte
//! round trip through a relay, and an OpenSSH client that uses the ssh_config
//! the multiplexer writes.
//!
//! Include it from an integration test that also has `mod common;`:
//!
//! ```ignore
//! #[path = "support/mux_peers.rs"]
//! #[allow(dead_code)] // not every test uses every helper
//! mod mux_peers;
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::util::read_retrying;

/// A loopback TCP server that optionally sends a banner first (as an SSH
/// server does), then echoes everything and half-closes after the client's
/// EOF. Its threads end with the test process.
pub fn echo_server(banner: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut w) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = w.try_clone().unwrap();
                if w.write_all(banner).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match read_retrying(&mut r, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Sends `data` through a relay to an echo server and reads it back.
pub fn round_trip(s: &mut UnixStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
}

/// `ssh -F <ssh_config> -p PORT user@127.0.0.1 -- command`, host key
/// checking off (the ssh_config leaves it to the user), nothing else of the
/// machine's or the user's own.
pub fn ssh(config: &Path, port: u16, user: &str, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F").arg(config);
    for o in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "GlobalKnownHostsFile=/dev/null",
        "IdentityAgent=none",
        "LogLevel=ERROR",
        "ConnectTimeout=30",
    ] {
        cmd.args(["-o", o]);
    }
    cmd.args(["-p", &port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .args(["--", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}
