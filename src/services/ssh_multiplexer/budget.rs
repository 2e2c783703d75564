//! The multiplexer's share of the open-file limit, so that held relays
//! never starve credential work (renewals, the CA check, the heartbeat)
//! of descriptors.
//!
//! Two bounds: a static cap on connections and lingering refusals fitted
//! to the limit at start ([`fit`]), which bounds threads; and a claim on
//! the descriptors actually left, taken by each relay before it dials
//! ([`claim_relay`]), which bounds descriptors. The static cap alone
//! cannot: what tbot holds at rest grows with the configuration and the
//! code (27 below the limit with an identity output and a multiplexer,
//! measured), and a fixed reserve guessed from it goes stale.
//!
//! The diagnostics front fits its own cap the same way
//! (`diag::front::fit_to_fd_limit`); the two reserves overlap on purpose:
//! either may fill its share, and what is left still carries the rest of
//! the daemon.

use std::sync::Mutex;

/// Descriptors one relayed connection holds: the client's socket, the
/// target's, and a duplicate of each for the target → client thread.
pub const FDS_PER_CONNECTION: u64 = 4;
/// Descriptors assumed kept for everything but relays when the static cap
/// is fitted ([`fit_to`]). Only a first bound: the descriptors really left
/// are checked by [`claim_relay`] for each relay.
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

/// Descriptors that must still be free once a relay has its four: a
/// renewal in progress (the destination walk, a generation directory, the
/// file being written: up to 5), a CA check (2), a heartbeat write (3), a
/// diagnostics request (4: the client's socket, the front's socket to
/// tiny_http and tiny_http's end twice), and a number taken unseen by
/// tiny_http's blocked accept(2) (1), with one to spare.
pub const FDS_HEADROOM: u64 = 16;

/// Descriptors claimed by relays being set up: counted from the check in
/// [`claim_relay`] until the relay holds them (then /proc shows them).
static CLAIMED: Mutex<u64> = Mutex::new(0);

/// A new relay's claim on the three descriptors it still needs (the
/// target's socket and a duplicate of each socket); dropped once the relay
/// holds them, or when it fails before.
pub struct Claim(u64);

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
        *claimed = claimed.saturating_sub(self.0);
    }
}

/// Claims the descriptors a relay needs before its target is dialed, if
/// the open ones (counted in /proc/self/fd, held at rest, by other relays
/// and by clients waiting), those claimed by relays being set up, these
/// three and [`FDS_HEADROOM`] fit under the soft RLIMIT_NOFILE; so a relay
/// never takes what credential work needs, whatever tbot holds at rest
/// (which grows with the configuration: a stop descriptor per service
/// that polls, destination handles, watches). The static cap ([`fit`]) bounds threads
/// and lingering clients; this is what bounds descriptors.
///
/// Errors: `out of file descriptors; try again later` when they do not fit
/// (or /proc/self/fd cannot be opened for want of one). Unlimited or
/// unknown limit, no /proc, or the debug build's `mux-no-fd-budget=on`:
/// always a claim.
pub fn claim_relay() -> Result<Claim, String> {
    const NEEDED: u64 = FDS_PER_CONNECTION - 1;
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    match left_beside(*claimed, NEEDED) {
        Some(true) => {
            *claimed += NEEDED;
            Ok(Claim(NEEDED))
        }
        Some(false) => Err(OUT_OF_DESCRIPTORS.into()),
        None => Ok(Claim(0)),
    }
}

/// What a client is told when the descriptors left are credential work's.
pub const OUT_OF_DESCRIPTORS: &str = "out of file descriptors; try again later";

/// Whether a client just accepted (or refused) may keep its descriptor:
/// the descriptors open now (it included) and those claimed by relays being
/// set up leave [`FDS_HEADROOM`] free under the soft RLIMIT_NOFILE. A
/// client that may not is told [`OUT_OF_DESCRIPTORS`] and closed at once
/// (neither served nor lingering): waiting and lingering clients must not
/// eat the headroom any more than relays may. True, as [`claim_relay`],
/// when the limit or /proc cannot be read, or under `mux-no-fd-budget=on`.
pub fn may_hold_client() -> bool {
    let claimed = *CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    left_beside(claimed, 0) != Some(false)
}

/// Whether `claimed + more` descriptors and the headroom fit beside those
/// open now; `None` when the budget is off or cannot be read (no limit, no
/// /proc, `mux-no-fd-budget=on`).
fn left_beside(claimed: u64, more: u64) -> Option<bool> {
    if crate::infra::failpoints::on("mux-no-fd-budget") {
        return None;
    }
    let limit = soft_nofile()?;
    match open_below(limit) {
        Ok(open) => Some(open + claimed + more + FDS_HEADROOM <= limit),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => Some(false),
        Err(_) => None,
    }
}

/// The process's open descriptors numbered below `limit` (one inherited
/// above it takes no number a relay could have), the one used to count
/// them left out.
fn open_below(limit: u64) -> std::io::Result<u64> {
    let below = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&n| n < limit)
        .count() as u64;
    Ok(below.saturating_sub(1))
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

    #[test]
    fn a_claim_counts_until_dropped() {
        // The test process's limit (1024 or more) leaves room for one.
        let before = *CLAIMED.lock().unwrap();
        let claim = claim_relay().unwrap();
        assert_eq!(*CLAIMED.lock().unwrap(), before + claim.0);
        drop(claim);
        assert_eq!(*CLAIMED.lock().unwrap(), before);
    }
}
