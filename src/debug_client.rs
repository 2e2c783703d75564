//! `tbot status` and `tbot debug ...`: clients of a running bot's local
//! debug socket, found from its configuration file (`-c`, as `teleport
//! debug` finds its agent's): `debug_socket:`, else `<storage>/debug.sock`.
//!
//! Each sends one HTTP/1.1 request with `Connection: close` and reads the
//! answer to its end ([`crate::http_client`]). When the socket cannot be reached, the error says
//! where tbot looked and why: no such file, permission denied (the socket
//! is for tbot's user and root), or nobody listening.

use std::io::{self, ErrorKind, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::cli::{Ask, DebugArgs};
use crate::{exit, http_client, log};

/// How long a request may take beyond its own work (a profile's seconds).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the command; returns the exit code (`tbot status`: 0 when every
/// service is healthy, 1 otherwise; the others 0 on success; 1 when the
/// bot cannot be reached or refuses, or a log stream ends; 2 for a
/// configuration that does not load, or a profile asked for on a
/// terminal).
pub fn run(args: &DebugArgs) -> i32 {
    let config = match crate::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            log::fatal(&format!(
                "{e} (the running bot's configuration names its debug socket)"
            ));
            return exit::USAGE;
        }
    };
    // Absolute, for the messages (a relative -c makes relative paths).
    let sock = std::path::absolute(&config.debug_socket).unwrap_or(config.debug_socket);
    let done = match &args.ask {
        Ask::Status => status(&sock),
        Ask::LogLevel(level) => log_level(&sock, *level),
        Ask::Profile { seconds } => profile(&sock, *seconds),
        Ask::Logs(level) => follow(&sock, *level),
    };
    match done {
        Ok(code) => code,
        Err(e) => {
            log::fatal(&e);
            exit::FAILURE
        }
    }
}

/// Connects to the debug socket at `path`, or says where and why not.
fn connect(path: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::NotFound => {
                "no such file (is tbot running with this configuration?)".to_string()
            }
            ErrorKind::PermissionDenied => {
                "permission denied (the debug socket is for tbot's own user and root: try sudo -u _tbot, or sudo)".to_string()
            }
            ErrorKind::ConnectionRefused => {
                "nobody listening (tbot is not running; the socket is left from an earlier run)".to_string()
            }
            _ => e.to_string(),
        };
        format!("cannot reach tbot's debug socket {}: {why}", path.display())
    })
}

/// One request; the answer's status code, and its body once it is all
/// read (`body_to`: None keeps it, Some writes a 200's body there as it
/// comes, and then the body returned is empty, or `[0]` when the reader
/// of `body_to` went away first: `| head`).
fn request(
    path: &Path,
    head: &str,
    body: &[u8],
    timeout: Option<Duration>,
    body_to: Option<&mut dyn Write>,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = connect(path)?;
    let at = |e: io::Error| format!("debug socket {}: {e}", path.display());
    s.set_read_timeout(timeout).map_err(at)?;
    let req = format!(
        "{head}Host: localhost\r\nConnection: close\r\nUser-Agent: tbot/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut request = req.into_bytes();
    request.extend_from_slice(body);
    let head = http_client::send(&mut s, &request).map_err(at)?;
    let status = head.status;
    let mut rest = head.body_start;
    match body_to {
        Some(out) if status == 200 => {
            let copied = out
                .write_all(&rest)
                .and_then(|()| out.flush())
                .and_then(|()| io::copy(&mut s, out).map(|_| ()));
            // A reader gone (`| head`) ends the copy, not with an error.
            rest.clear();
            match copied {
                Err(e) if e.kind() == ErrorKind::BrokenPipe => rest.push(0),
                Err(e) => return Err(at(e)),
                Ok(()) => {}
            }
        }
        _ => {
            s.read_to_end(&mut rest).map_err(at)?;
        }
    }
    Ok((status, rest))
}

/// A refusal's text, for the error line.
fn refusal(status: u16, body: &[u8]) -> String {
    format!(
        "tbot answered {status}: {}",
        String::from_utf8_lossy(body).trim()
    )
}

fn log_level(sock: &Path, level: Option<u8>) -> Result<i32, String> {
    let (status, body) = match level {
        None => request(
            sock,
            "GET /log-level HTTP/1.1\r\n",
            b"",
            Some(TIMEOUT),
            None,
        )?,
        Some(l) => {
            let name = log::level_name(l);
            let head = format!(
                "PUT /log-level HTTP/1.1\r\nContent-Length: {}\r\n",
                name.len()
            );
            request(sock, &head, name.as_bytes(), Some(TIMEOUT), None)?
        }
    };
    if status != 200 {
        return Err(refusal(status, &body));
    }
    println!("{}", String::from_utf8_lossy(&body).trim());
    Ok(exit::OK)
}

fn profile(sock: &Path, seconds: u64) -> Result<i32, String> {
    if io::stdout().is_terminal() {
        log::fatal("a CPU profile is binary: redirect it to a file (tbot debug profile > cpu.pb)");
        return Ok(exit::USAGE);
    }
    let head = format!("GET /debug/pprof/profile?seconds={seconds} HTTP/1.1\r\n");
    let timeout = TIMEOUT + Duration::from_secs(seconds);
    let (status, body) = request(sock, &head, b"", Some(timeout), None)?;
    if status != 200 {
        return Err(refusal(status, &body));
    }
    let mut out = io::stdout().lock();
    out.write_all(&body)
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the profile to stdout: {e}"))?;
    Ok(exit::OK)
}

fn follow(sock: &Path, level: Option<u8>) -> Result<i32, String> {
    let head = match level {
        Some(l) => format!("GET /debug/logs?level={} HTTP/1.1\r\n", log::level_name(l)),
        None => "GET /debug/logs HTTP/1.1\r\n".to_string(),
    };
    let mut out = io::stdout().lock();
    // No timeout: lines come when tbot logs them.
    let (status, body) = request(sock, &head, b"", None, Some(&mut out))?;
    if status != 200 {
        return Err(refusal(status, &body));
    }
    if !body.is_empty() {
        // Our reader left (`| head`): done.
        return Ok(exit::OK);
    }
    // Only tbot ends a stream: it stopped, or it dropped this follower
    // for not keeping up (its log says which).
    Err(format!(
        "the log stream from {} ended: tbot stopped, or dropped this follower for falling behind",
        sock.display()
    ))
}

/// `tbot status`: one line per service, then the exit code (0 when every
/// service is healthy).
fn status(sock: &Path) -> Result<i32, String> {
    let (code, body) = request(sock, "GET /status HTTP/1.1\r\n", b"", Some(TIMEOUT), None)?;
    if code != 200 && code != 503 {
        return Err(refusal(code, &body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("debug socket {}: /status: {e}", sock.display()))?;
    let colour = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    print!("{}", status_lines(&v, colour));
    let healthy = v["status"] == "healthy";
    Ok(if healthy { exit::OK } else { exit::FAILURE })
}

/// The lines `tbot status` prints for a `/status` answer: a header, then
/// one line per service (name, type, status, for how long, the
/// certificate's remaining lifetime or `-`, the reason). `colour`: the
/// status in green, yellow or red (ANSI).
pub fn status_lines(v: &serde_json::Value, colour: bool) -> String {
    let secs = |x: &serde_json::Value| x.as_i64();
    let dur = |s: i64| crate::infra::duration::format(Duration::from_secs(s.unsigned_abs()));
    let rows: Vec<[String; 6]> = v["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
            let cert = match secs(&s["certificate_remaining_seconds"]) {
                Some(r) if r < 0 => format!("expired {} ago", dur(r)),
                Some(r) => format!("{} left", dur(r)),
                None => "-".into(),
            };
            let since = secs(&s["for_seconds"]).map_or("-".into(), dur);
            [
                text("name"),
                text("type"),
                text("status"),
                since,
                cert,
                text("reason"),
            ]
        })
        .collect();
    let header = ["SERVICE", "TYPE", "STATUS", "FOR", "CERTIFICATE", "REASON"].map(String::from);
    let mut width = [0usize; 5];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, r) in std::iter::once(&header).chain(&rows).enumerate() {
        for (c, cell) in r.iter().enumerate().take(5) {
            let pad = " ".repeat(width[c] - cell.chars().count() + 2);
            let paint = match cell.as_str() {
                _ if !colour || c != 2 || i == 0 => "",
                "healthy" => "\x1b[32m",
                "initializing" => "\x1b[33m",
                _ => "\x1b[31m",
            };
            let reset = if paint.is_empty() { "" } else { "\x1b[0m" };
            out += &format!("{paint}{cell}{reset}{pad}");
        }
        out += r[5].as_str();
        out = out.trim_end().to_string();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_line_up_and_colour_only_when_asked() {
        let v = serde_json::json!({"status": "unhealthy", "services": [
            {"name": "identity", "type": "identity", "status": "healthy", "reason": "",
             "for_seconds": 90, "certificate_remaining_seconds": null},
            {"name": "id-out", "type": "identity", "status": "unhealthy",
             "reason": "/opt/x: permission denied", "for_seconds": 5,
             "certificate_remaining_seconds": 3540},
        ]});
        let plain = status_lines(&v, false);
        assert_eq!(
            plain,
            "SERVICE   TYPE      STATUS     FOR    CERTIFICATE  REASON\n\
             identity  identity  healthy    1m30s  -\n\
             id-out    identity  unhealthy  5s     59m0s left   /opt/x: permission denied\n"
        );
        assert!(!plain.contains('\x1b'));
        let coloured = status_lines(&v, true);
        assert!(coloured.contains("\x1b[32mhealthy\x1b[0m"));
        assert!(coloured.contains("\x1b[31munhealthy\x1b[0m"));
    }

    #[test]
    fn an_unreachable_socket_says_where_and_why() {
        let dir = crate::testutil::TestDir::new("dbg-client");
        let path: std::path::PathBuf = dir.0.join("debug.sock");
        let e = connect(&path).unwrap_err();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("no such file"),
            "{e}"
        );
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = connect(&path).unwrap_err();
        assert!(e.contains("nobody listening"), "{e}");
    }
}
