//! Facts about the host tbot runs on.

/// The kernel's host name (`/proc/sys/kernel/hostname`), or `unknown`: for
/// the heartbeat record and the certificates' key ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
