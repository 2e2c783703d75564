//! The systemd readiness protocol (sd_notify), without libsystemd: one
//! datagram to `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) when running under systemd with
/// `Type=notify`. Errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &target)
        }
    });
    match sent {
        Ok(_) => crate::log::debug("notified systemd", &[("state", &state)]),
        Err(e) => crate::log::warn("cannot notify systemd", &[("state", &state), ("error", &e)]),
    }
}
