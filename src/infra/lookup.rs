//! Name lookups that may not answer: getaddrinfo(3) cannot be cut short,
//! and its own bound (resolv.conf's timeout × attempts × servers, per
//! family) is not ours. Every lookup tbot makes (the diagnostics address at
//! start and reload, `tbot wait`, `tbot check`, a multiplexer's target)
//! goes through [`lookup`]: it runs on a short-lived helper thread
//! ([`threads::within`]), the caller waits at most a bound and gives up at
//! once when asked (a stop signal, a stopping service), and the helper ends
//! whenever the resolver returns.
//!
//! Helpers given up on still wait on the resolver; a resolver that never
//! answers would pile them up, one thread each, for every new lookup. At
//! most [`MAX_IN_FLIGHT`] helpers run at once: past that a lookup is
//! refused at once, with the reason.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::threads::{self, GaveUp};

/// Lookup helpers alive at once, whether or not their caller still waits.
pub const MAX_IN_FLIGHT: usize = 32;

/// Helpers alive now.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A helper's place among [`MAX_IN_FLIGHT`], given back when it ends.
struct InFlight;

impl InFlight {
    fn take() -> Option<InFlight> {
        IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The addresses of `addr` (anything [`ToSocketAddrs`] takes: `"host:port"`,
/// `(host, port)`), looked up within `bound`, or sooner given up when
/// `give_up` says so (asked every 50 ms). Errors, each starting `resolving SHOWN: ` (`shown` is the name as
/// the operator wrote it): the resolver's own error, no addresses, no
/// answer within `bound`, cut short, or too many lookups already waiting.
pub fn lookup<A>(
    addr: A,
    shown: &str,
    bound: Duration,
    give_up: impl Fn() -> bool,
) -> Result<Vec<SocketAddr>, String>
where
    A: ToSocketAddrs + Send + 'static,
{
    let fail = |why: String| format!("resolving {shown}: {why}");
    let Some(place) = InFlight::take() else {
        return Err(fail(format!(
            "{MAX_IN_FLIGHT} name lookups are already waiting on the resolver; try again later"
        )));
    };
    let resolve = move || {
        let _place = place;
        addr.to_socket_addrs().map(Iterator::collect::<Vec<_>>)
    };
    let addrs = match threads::within("lookup", bound, give_up, resolve) {
        Ok(r) => r.map_err(|e| fail(e.to_string()))?,
        Err(GaveUp::TimedOut) => {
            let d = super::duration::format(bound);
            return Err(fail(format!("no answer within {d}")));
        }
        Err(GaveUp::Asked) => return Err(fail("cut short: stopping".to_string())),
    };
    if addrs.is_empty() {
        return Err(fail("no addresses".to_string()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_resolves_a_give_up_cuts_short_and_past_the_cap_is_refused() {
        let a = lookup(
            "127.0.0.1:22",
            "127.0.0.1:22",
            Duration::from_secs(5),
            || false,
        );
        assert_eq!(a.unwrap(), vec!["127.0.0.1:22".parse().unwrap()]);
        let e = lookup(
            ("localhost", 22),
            "localhost",
            Duration::from_secs(5),
            || true,
        );
        // The helper may answer before the first give-up check.
        if let Err(e) = e {
            assert_eq!(e, "resolving localhost: cut short: stopping");
        }
        let held: Vec<_> = std::iter::from_fn(InFlight::take).collect();
        let e = lookup("127.0.0.1:22", "x", Duration::from_secs(5), || false).unwrap_err();
        assert!(e.contains("already waiting on the resolver"), "{e}");
        drop(held);
    }
}
