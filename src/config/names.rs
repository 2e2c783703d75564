//! Service names (`^[a-z0-9_+-]{1,64}$`, the reserved ones, defaults made
//! from a service's type and destination) and the `HOST:PORT` check.

use super::RESERVED_NAMES;

/// Longest service name.
pub const MAX_NAME_LEN: usize = 64;

/// `HOST:PORT` with an IP literal (`[::1]:3001` for IPv6) or a host name.
pub fn check_addr(s: &str) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "invalid address {s:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:3001)"
        ))
    };
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("no port");
    };
    if port.parse::<u16>().is_err() {
        return bad("port must be a number from 0 to 65535");
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !host_ok {
        return bad("bad host");
    }
    Ok(())
}

/// `^[a-z0-9_+-]{1,64}$`, not a reserved name.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME_LEN || !s.chars().all(name_char) {
        return Err(format!(
            "invalid service name {s:?}: use 1 to {MAX_NAME_LEN} characters from a-z, 0-9, '_', '+', '-'"
        ));
    }
    if RESERVED_NAMES.contains(&s) {
        return Err(format!(
            "service name {s:?} is reserved for an internal service"
        ));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '+' | '-')
}

/// The default name of a service: its type and its destination path,
/// sanitised (`identity` at `/opt/machine-id` → `identity-opt-machine-id`).
pub fn default_name(kind: &str, destination: &str) -> String {
    let mut out = String::from(kind);
    let mut dash = true;
    out.push('-');
    for c in destination.chars().flat_map(char::to_lowercase) {
        if name_char(c) && c != '-' {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    truncate(out, MAX_NAME_LEN)
}

pub(super) fn truncate(mut s: String, max: usize) -> String {
    // Names are ASCII, so byte truncation is char truncation.
    s.truncate(max);
    while s.ends_with('-') {
        s.pop();
    }
    s
}
