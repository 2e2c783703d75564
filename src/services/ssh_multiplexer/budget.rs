//! The multiplexer's share of the open-file limit, so that held relays
//! never starve credential work (renewals, the CA check, the heartbeat)
//! of descriptors.
//!
//! The diagnostics front fits its own cap the same way
//! (`diag::front::fit_to_fd_limit`); the two reserves overlap on purpose:
//! either may fill its share, and what is left still carries the rest of
//! the daemon.

/// Descriptors one relayed connection holds: the client's socket, the
/// target's, and a duplicate of each for the target → client thread.
pub const FDS_PER_CONNECTION: u64 = 4;
/// Descriptors kept for everything but relays: about 18 at rest (stdio,
/// the diagnostics listener and its front ↔ tiny_http sockets, inotify
/// watches, the clock-step timerfd, the multiplexer's listener and
/// destination handle, the /dev/null reserves) plus a renewal in progress
/// (the destination walk, a generation directory, the file being written:
/// up to 5), a CA check (2) and a heartbeat write (3), with some slack.
pub const FDS_RESERVED: u64 = 32;

/// The cap on relayed connections and on refused clients lingering (one
/// descriptor each) that fits `wanted` under the soft RLIMIT_NOFILE after
/// [`FDS_RESERVED`]: `(limit − reserved) / 4` connections, at least 1.
/// Unlimited or unknown: `wanted` and 64 (also with the debug build's
/// failpoint switch `mux-no-fd-budget=on`, for the out-of-descriptors test).
pub fn fit(wanted: usize) -> (usize, usize) {
    if crate::infra::failpoints::on("mux-no-fd-budget") {
        return (wanted, 64);
    }
    match soft_nofile() {
        Some(limit) => fit_to(wanted, limit),
        None => (wanted, 64),
    }
}

/// [`fit`] for the limit `limit`.
pub fn fit_to(wanted: usize, limit: u64) -> (usize, usize) {
    let share = limit.saturating_sub(FDS_RESERVED);
    let conns = (share / FDS_PER_CONNECTION).max(1);
    let conns = wanted.min(usize::try_from(conns).unwrap_or(usize::MAX));
    let lingering = usize::try_from(share / FDS_PER_CONNECTION)
        .unwrap_or(usize::MAX)
        .clamp(1, 64);
    (conns, lingering)
}

fn soft_nofile() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_limit_and_keeps_the_reserve() {
        assert_eq!(fit_to(64, 40), (2, 2));
        assert_eq!(fit_to(64, 48), (4, 4));
        assert_eq!(fit_to(64, 1024), (64, 64));
        assert_eq!(fit_to(10, 1024), (10, 64));
        // Below the reserve: still one, so that the service can work at all.
        assert_eq!(fit_to(64, 20), (1, 1));
    }
}
