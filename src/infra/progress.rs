//! Proof that a loop is still turning, for the systemd watchdog.
//!
//! A loop that must stay responsive (the diagnostics front, serving loop
//! and renderer, the health applier) owns a [`Beat`] and calls [`Beat::beat`] once per turn:
//! one relaxed atomic increment, nothing else, so a loop pays nothing when
//! no watchdog is configured. The watchdog (`systemd::watchdog`)
//! holds a [`Watched`] per loop: the same counter plus a `poke` that makes
//! an idle loop turn once. A loop that does not turn after a poke is wedged.
//!
//! A loop that a reload may stop, start again or replace (the diagnostics
//! service's) is watched through a [`Slot`]: the watchdog's list is made
//! once at start, and the slot follows whichever thread runs the loop now.
//!
//! The loops never wake up on their own for this: with no watchdog nobody
//! pokes, and an idle loop sleeps as long as it did before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    pub poke: Poke,
}

/// A poke (see [`Watched::poke`]).
pub type Poke = Box<dyn Fn() + Send>;

/// A loop that successive threads run in turn, as a reload stops a service
/// and starts another: one turn counter that each of them beats, and the
/// poke of the one running now. While none runs, a poke counts the turn
/// itself: nothing is there to wedge. Cheap to clone (shared).
#[derive(Clone)]
pub struct Slot {
    name: &'static str,
    beat: Beat,
    poke: Arc<Mutex<Option<Poke>>>,
}

impl Slot {
    /// An empty slot for the loop named `name` (see [`Watched::name`]).
    pub fn new(name: &'static str) -> Slot {
        Slot {
            name,
            beat: Beat::default(),
            poke: Default::default(),
        }
    }

    /// The counter a thread running this loop beats.
    pub fn beat(&self) -> Beat {
        self.beat.clone()
    }

    /// Pokes go to `poke` from now on (the loop now running; it beats
    /// [`Slot::beat`]).
    pub fn fill(&self, poke: Poke) {
        *self.lock() = Some(poke);
    }

    /// No thread runs the loop any more: pokes count their turn themselves
    /// from now on, and this counts one for a poke the last thread took as
    /// it stopped.
    pub fn empty(&self) {
        *self.lock() = None;
        self.beat.beat();
    }

    /// The slot as the watchdog sees it.
    pub fn watched(&self) -> Watched {
        let slot = self.clone();
        Watched {
            name: self.name,
            beat: self.beat.clone(),
            poke: Box::new(move || match &*slot.lock() {
                Some(poke) => poke(),
                None => slot.beat.beat(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Poke>> {
        self.poke.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_slot_pokes_the_loop_in_it_and_answers_for_itself_when_empty() {
        let slot = Slot::new("loop");
        let w = slot.watched();
        assert_eq!(w.name, "loop");
        // Empty: a poke is a turn.
        (w.poke)();
        assert_eq!(w.beat.count(), 1);

        // Filled: the poke goes to the loop, whose turns count on the slot.
        let pokes = Arc::new(AtomicU32::new(0));
        let seen = pokes.clone();
        slot.fill(Box::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        (w.poke)();
        assert_eq!(pokes.load(Ordering::SeqCst), 1);
        assert_eq!(w.beat.count(), 1, "a poke the loop has not answered");
        slot.beat().beat();
        assert_eq!(w.beat.count(), 2);

        // Emptied: the poke the loop took as it stopped is answered, and
        // the next ones answer themselves.
        (w.poke)();
        slot.empty();
        assert_eq!(w.beat.count(), 3);
        (w.poke)();
        assert_eq!(w.beat.count(), 4);
        assert_eq!(pokes.load(Ordering::SeqCst), 2);
    }
}
