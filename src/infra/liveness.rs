//! Proof that a loop is still turning, for the systemd watchdog.
//!
//! A loop that must stay responsive (the diagnostics front, serving loop
//! and renderer, the health applier) owns a [`Beat`] and calls [`Beat::beat`] once per turn:
//! one relaxed atomic increment, nothing else, so a loop pays nothing when
//! no watchdog is configured. The watchdog (`systemd::watchdog`)
//! holds a [`Watched`] per loop: the same counter plus a `poke` that makes
//! an idle loop turn once. A loop that does not turn after a poke is wedged.
//!
//! The loops never wake up on their own for this: with no watchdog nobody
//! pokes, and an idle loop sleeps as long as it did before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A turn counter. Cheap to clone (an `Arc`).
#[derive(Clone, Default)]
pub struct Beat(Arc<AtomicU64>);

impl Beat {
    /// Called by the loop once per turn.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A loop as the watchdog sees it.
pub struct Watched {
    /// The loop's thread name (`diag-front`, `diag-http`, `health`), for
    /// the log.
    pub name: &'static str,
    pub beat: Beat,
    /// Makes the loop turn once soon (it must not block the caller).
    pub poke: Box<dyn Fn() + Send>,
}
