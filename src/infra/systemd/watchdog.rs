//! The systemd watchdog (`WatchdogSec=`; sd_watchdog_enabled(3)):
//! `WATCHDOG=1` every half of `$WATCHDOG_USEC`, but only while tbot's loops
//! respond, so that systemd restarts a wedged tbot.
//!
//! The loops watched ([`crate::infra::progress`]): the health applier
//! (`health`: every service report, and so every restart the supervisor
//! reports, goes through it), and the diagnostics service's front, which
//! holds every client connection (`diag-front`), the serving loop behind it
//! and its page renderer (`diag-http`, `diag-render`). The list is made at
//! start, and always names all four: the diagnostics loops are slots
//! (`diag::Slots`) that follow whichever service is current, across any
//! sequence of reloads (one started by a reload that adds `diag_addr`, a
//! front that a reload moves). While no diagnostics service runs (no
//! `diag_addr`, or a reload removed it) they count as turning, and the
//! pings follow the applier alone.
//!
//! Each period the thread (`sd-watchdog`) checks that every loop turned
//! since it was last poked, pings only if all did, then pokes them again.
//! A loop that did not turn is not poked again until it does (pokes would
//! only pile up behind it). So a ping at time T says every loop answered
//! within the period before T, and a loop wedged after T stops the pings:
//! systemd acts at T + `WATCHDOG_USEC` at the latest.
//!
//! Nothing runs and nothing is poked unless `$WATCHDOG_USEC` is set (and
//! `$WATCHDOG_PID`, when set, is this process) and `$NOTIFY_SOCKET` is set:
//! without a watchdog, tbot's idle loops wake no more often than before.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::infra::progress::Watched;
use crate::log;

/// The ping period (half of `WATCHDOG_USEC`) from the environment, or None
/// when no watchdog applies to this process.
pub fn period_from_env() -> Option<Duration> {
    if !super::notify_socket_set() {
        return None;
    }
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    match period(usec.as_deref(), pid.as_deref(), std::process::id()) {
        Ok(p) => p,
        Err(e) => {
            log::warn("systemd watchdog not used", &[("reason", &e)]);
            None
        }
    }
}

/// The shortest ping period: a `WatchdogSec=` of a few microseconds must
/// not turn the watchdog thread into a busy loop flooding systemd.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Half of `usec` (microseconds, decimal, > 0) but at least [`MIN_PERIOD`],
/// if `pid` is unset or is `own_pid` (sd_watchdog_enabled(3): the variables
/// may be inherited by a child the watchdog is not meant for). An
/// unparsable value is an error.
fn period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        match pid.parse::<u32>() {
            Ok(p) if p == own_pid => {}
            Ok(_) => return Ok(None),
            Err(_) => return Err(format!("WATCHDOG_PID={pid:?} is not a process id")),
        }
    }
    match usec.parse::<u64>() {
        Ok(u) if u > 0 => Ok(Some((Duration::from_micros(u) / 2).max(MIN_PERIOD))),
        _ => Err(format!(
            "WATCHDOG_USEC={usec:?} is not a positive number of microseconds"
        )),
    }
}

/// Starts the `sd-watchdog` thread when a watchdog applies (see
/// [`period_from_env`]); it ends when `stop` disconnects.
pub fn start(watched: Vec<Watched>, stop: &Receiver<()>) -> Result<(), String> {
    let Some(period) = period_from_env() else {
        return Ok(());
    };
    let names: Vec<&str> = watched.iter().map(|w| w.name).collect();
    log::info(
        "systemd watchdog enabled",
        &[
            ("ping_every", &crate::infra::duration::format(period)),
            ("watching", &names.join(",")),
        ],
    );
    let stop = stop.clone();
    crate::infra::threads::spawn("sd-watchdog", move || run(watched, period, &stop))
        .map(drop)
        .map_err(|e| format!("sd-watchdog thread: {e}"))
}

fn run(watched: Vec<Watched>, period: Duration, stop: &Receiver<()>) {
    let mut gate = Gate::new(watched);
    let mut next = Instant::now() + period;
    loop {
        if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = stop.recv_deadline(next) {
            return;
        }
        next += period;
        let now = Instant::now();
        if next < now {
            // The thread itself was held up: start counting from now.
            next = now + period;
        }
        if gate.check() && !super::is_stopping() {
            super::notify("WATCHDOG=1");
        }
    }
}

/// The responsiveness check over the watched loops.
struct Gate {
    watched: Vec<Watched>,
    /// Each loop's turn count when it was last poked.
    seen: Vec<u64>,
    /// Whether the loop missed the last check (logged once per episode).
    stuck: Vec<bool>,
}

impl Gate {
    /// Records where each loop is and pokes it.
    fn new(watched: Vec<Watched>) -> Gate {
        let seen = watched.iter().map(|w| w.beat.count()).collect();
        let stuck = vec![false; watched.len()];
        for w in &watched {
            (w.poke)();
        }
        Gate {
            watched,
            seen,
            stuck,
        }
    }

    /// True when every loop turned since its last poke. Pokes those that
    /// did; logs a loop that stops or starts responding again.
    fn check(&mut self) -> bool {
        let mut all = true;
        for (i, w) in self.watched.iter().enumerate() {
            let now = w.beat.count();
            if now != self.seen[i] {
                self.seen[i] = now;
                (w.poke)();
                if std::mem::replace(&mut self.stuck[i], false) {
                    log::info(
                        "responding again; watchdog pings resume",
                        &[("loop", &w.name)],
                    );
                }
            } else {
                all = false;
                if !std::mem::replace(&mut self.stuck[i], true) {
                    log::error(
                        "not responding; watchdog pings withheld so that systemd restarts tbot",
                        &[("loop", &w.name)],
                    );
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::progress::Beat;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn period_is_half_of_watchdog_usec_for_this_process_only() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(period(Some("1000000"), None, 7), Ok(half));
        assert_eq!(period(Some("1000000"), Some("7"), 7), Ok(half));
        assert_eq!(period(Some("1000000"), Some("8"), 7), Ok(None));
        assert_eq!(period(None, Some("7"), 7), Ok(None));
        assert_eq!(period(Some("2"), None, 7), Ok(Some(MIN_PERIOD)));
        assert!(period(Some("0"), None, 7).is_err());
        assert!(period(Some("1s"), None, 7).is_err());
        assert!(period(Some("1000000"), Some("x"), 7).is_err());
    }

    /// A loop that turns when poked unless `wedged`.
    fn fake(wedged: Arc<AtomicBool>, pokes: Arc<AtomicU32>) -> Watched {
        let beat = Beat::default();
        let b = beat.clone();
        Watched {
            name: "fake",
            beat,
            poke: Box::new(move || {
                pokes.fetch_add(1, Ordering::SeqCst);
                if !wedged.load(Ordering::SeqCst) {
                    b.beat();
                }
            }),
        }
    }

    #[test]
    fn a_wedged_loop_withholds_the_ping_until_it_turns_again() {
        let (w1, p1) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let (w2, p2) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let mut g = Gate::new(vec![
            fake(w1.clone(), p1.clone()),
            fake(w2.clone(), p2.clone()),
        ]);
        assert!(g.check());
        assert!(g.check());
        w2.store(true, Ordering::SeqCst);
        assert!(
            g.check(),
            "the poke that found it wedged came after this check"
        );
        assert!(!g.check());
        assert!(!g.check());
        // Not poked again while wedged: pokes would pile up behind it.
        let pokes_while_wedged = p2.load(Ordering::SeqCst);
        assert!(!g.check());
        assert_eq!(p2.load(Ordering::SeqCst), pokes_while_wedged);
        // The other loop keeps being poked.
        assert!(p1.load(Ordering::SeqCst) > pokes_while_wedged);
        // It gets unstuck (its pending poke is answered): pings resume.
        w2.store(false, Ordering::SeqCst);
        g.watched[1].beat.beat();
        assert!(g.check());
        assert!(g.check());
    }
}
