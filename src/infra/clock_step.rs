//! Notices when the wall clock is stepped (set by an operator, NTP's step,
//! a VM resumed), so that certificate validity, which is wall-clock time,
//! is re-checked at once rather than when a monotonic timer runs out.
//!
//! One thread (`clock-step`, started on the first [`subscribe`]) sleeps on a
//! `timerfd` on `CLOCK_REALTIME` armed with
//! `TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET` far in the future: the
//! kernel wakes it when the realtime clock is set (timerfd_create(2)). As a
//! fallback — no timerfd, or a clock the kernel does not see move (a time
//! namespace, libfaketime) — it also compares the wall clock against
//! `CLOCK_MONOTONIC` every [`POLL`] and reports a change of their offset by
//! more than [`STEP`]. Each step is sent to every subscriber.

use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rustix::time::{
    clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
    TimerfdFlags, TimerfdTimerFlags, Timespec,
};

/// How often the fallback compares the wall clock with the monotonic clock.
pub const POLL: Duration = Duration::from_secs(2);
/// A change of the wall clock's offset from the monotonic clock larger than
/// this is a step (slewing by NTP moves it by at most 0.5 ms/s).
pub const STEP: Duration = Duration::from_secs(1);

static SUBSCRIBERS: Mutex<Vec<Sender<()>>> = Mutex::new(Vec::new());

/// A channel that receives `()` soon after each wall-clock step (at most one
/// waiting notice: several steps in a row read as one).
pub fn subscribe() -> Receiver<()> {
    static START: Once = Once::new();
    let (tx, rx) = crossbeam_channel::bounded(1);
    SUBSCRIBERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(tx);
    START.call_once(|| {
        if let Err(e) = crate::infra::threads::spawn("clock-step", watch) {
            crate::log::warn(
                "cannot watch the wall clock for steps; renewals follow the monotonic clock",
                &[("error", &e)],
            );
        }
    });
    rx
}

fn notify() {
    let mut subs = SUBSCRIBERS.lock().unwrap_or_else(|p| p.into_inner());
    // A full channel already holds a notice; a disconnected one is dropped.
    subs.retain(|tx| {
        !matches!(
            tx.try_send(()),
            Err(crossbeam_channel::TrySendError::Disconnected(_))
        )
    });
}

/// The wall clock as libc sees it (what certificates are checked against)
/// minus the monotonic clock, in nanoseconds.
fn offset_ns() -> i128 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let mono = clock_gettime(ClockId::Monotonic);
    wall - (i128::from(mono.tv_sec) * 1_000_000_000 + i128::from(mono.tv_nsec))
}

/// A realtime timerfd that fires only when the clock is set, or None.
fn arm() -> Option<std::os::fd::OwnedFd> {
    let fd = timerfd_create(
        TimerfdClockId::Realtime,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )
    .ok()?;
    rearm(&fd).then_some(fd)
}

fn rearm(fd: &std::os::fd::OwnedFd) -> bool {
    let now = clock_gettime(ClockId::Realtime);
    let far = Itimerspec {
        it_interval: Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: Timespec {
            tv_sec: now.tv_sec.saturating_add(100 * 365 * 86_400),
            tv_nsec: 0,
        },
    };
    timerfd_settime(
        fd,
        TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET,
        &far,
    )
    .is_ok()
}

fn watch() {
    let timer = arm();
    let mut last = offset_ns();
    loop {
        // Without a timer, only the poll of the offset below.
        let fired = match &timer {
            Some(t) => crate::infra::poll::wait_readable(t, POLL).unwrap_or_else(|_| {
                std::thread::sleep(POLL);
                false
            }),
            None => {
                std::thread::sleep(POLL);
                false
            }
        };
        let mut stepped = false;
        if fired {
            if let Some(t) = &timer {
                // ECANCELED: the clock was set. Either way, arm it again.
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(t, &mut buf);
                rearm(t);
                stepped = true;
            }
        }
        let now = offset_ns();
        if (now - last).unsigned_abs() > STEP.as_nanos() {
            stepped = true;
        }
        last = now;
        if stepped {
            crate::log::info(
                "the wall clock was stepped; checking certificates",
                &[("now", &crate::infra::timefmt::rfc3339(SystemTime::now()))],
            );
            notify();
        }
    }
}
