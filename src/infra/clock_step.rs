//! Notices when the wall clock is stepped (set by an operator, NTP's step,
//! a VM resumed), so that certificate validity, which is wall-clock time,
//! is re-checked at once rather than when a monotonic timer runs out.
//!
//! One thread (`clock-step`, started on the first [`subscribe`]) sleeps on a
//! `timerfd` on `CLOCK_REALTIME` armed with
//! `TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET` far in the future: the
//! kernel wakes it when the realtime clock is set (timerfd_create(2)), and
//! nothing else does. There is no poll: an idle tbot is not woken by this
//! check. Where the kernel cannot give that notice (no timerfd), steps are
//! not noticed, which is logged once; each renewal still comes at its time.
//!
//! A clock the kernel does not see move (libfaketime's) gets the same notice
//! in debug builds through the failpoint `clock-set-by-faketime=on`: a write
//! to the file `FAKETIME_TIMESTAMP_FILE` names (the faked clock being set) is
//! delivered as the kernel's notice is (`tests/credential_expiry.rs`).
//!
//! Each notice is sent to every live [`Subscription`]; a subscription ends
//! (leaves the list, an `infra::subscribers` list) when its subscriber drops
//! it, so the list holds the services running now, not every service ever
//! started.

use std::os::fd::OwnedFd;
use std::sync::{Once, OnceLock};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender};
use rustix::time::{
    clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
    TimerfdFlags, TimerfdTimerFlags, Timespec,
};

use crate::infra::poll::{poll, woke, PollFd, PollFlags};
use crate::infra::subscribers::{self, List};

/// Live subscriptions' senders.
fn subscribers() -> &'static List<Sender<()>> {
    static LIST: OnceLock<List<Sender<()>>> = OnceLock::new();
    LIST.get_or_init(List::default)
}

/// A subscriber's end: [`Subscription::notices`] receives `()` soon after
/// each wall-clock step (at most one waiting notice: several steps in a row
/// read as one). Dropping it ends the subscription.
pub struct Subscription {
    _entry: subscribers::Subscription<Sender<()>>,
    rx: Receiver<()>,
}

impl Subscription {
    /// The channel to wait on (`select!`).
    pub fn notices(&self) -> &Receiver<()> {
        &self.rx
    }
}

/// Subscribes to wall-clock steps until the [`Subscription`] is dropped.
/// The first call starts the `clock-step` thread.
pub fn subscribe() -> Subscription {
    static START: Once = Once::new();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let entry = subscribers().add(tx);
    START.call_once(|| {
        if let Err(e) = crate::infra::threads::spawn("clock-step", watch) {
            crate::log::warn(
                "cannot watch the wall clock for steps; renewals follow the monotonic clock",
                &[("error", &e)],
            );
        }
    });
    Subscription { _entry: entry, rx }
}

fn notify() {
    // A full channel already holds a notice.
    subscribers().for_each(|tx| {
        let _ = tx.try_send(());
    });
}

/// A realtime timerfd that becomes readable only when the clock is set.
fn arm() -> rustix::io::Result<OwnedFd> {
    let fd = timerfd_create(
        TimerfdClockId::Realtime,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    )?;
    rearm(&fd)?;
    Ok(fd)
}

/// Arms `fd` 100 years ahead, to be cancelled (made readable, its read
/// failing with `ECANCELED`) when the realtime clock is set.
fn rearm(fd: &OwnedFd) -> rustix::io::Result<()> {
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
    .map(|_| ())
}

fn watch() {
    let timer = match arm() {
        Ok(t) => t,
        Err(e) => {
            crate::log::warn(
                "no timerfd: wall-clock steps are not noticed; each renewal comes at its time",
                &[("error", &std::io::Error::from(e))],
            );
            return;
        }
    };
    let faked = faked::watch();
    loop {
        let mut fds = vec![PollFd::new(&timer, PollFlags::IN)];
        if let Some(w) = &faked {
            fds.push(PollFd::new(w, PollFlags::IN));
        }
        if let Err(e) = poll(&mut fds, None) {
            crate::log::warn(
                "cannot wait for wall-clock steps any more",
                &[("error", &e)],
            );
            return;
        }
        let mut stepped = false;
        if woke(&fds[0]) {
            // ECANCELED: the clock was set. Either way, arm it again.
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&timer, &mut buf);
            if let Err(e) = rearm(&timer) {
                crate::log::warn(
                    "cannot re-arm the wall-clock step timer; later steps are not noticed",
                    &[("error", &std::io::Error::from(e))],
                );
            }
            stepped = true;
        }
        let faked_woke = fds.get(1).is_some_and(woke);
        drop(fds);
        if faked_woke {
            stepped |= faked.as_ref().is_some_and(faked::set);
        }
        if stepped {
            crate::log::info(
                "the wall clock was stepped; checking certificates",
                &[("now", &crate::infra::timefmt::rfc3339(SystemTime::now()))],
            );
            notify();
        }
    }
}

/// The failpoint `clock-set-by-faketime` (debug builds): libfaketime's clock
/// file, watched so that setting it gives the kernel's notice.
#[cfg(debug_assertions)]
mod faked {
    use crate::infra::inotify::Watch;
    use std::path::PathBuf;

    pub struct Faked {
        watch: Watch,
        name: String,
    }

    impl std::os::fd::AsFd for Faked {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.watch.as_fd()
        }
    }

    /// The watch on the directory of `FAKETIME_TIMESTAMP_FILE`, when the
    /// failpoint is on.
    pub fn watch() -> Option<Faked> {
        if !crate::infra::failpoints::on("clock-set-by-faketime") {
            return None;
        }
        let file = PathBuf::from(std::env::var_os("FAKETIME_TIMESTAMP_FILE")?);
        let name = file.file_name()?.to_string_lossy().into_owned();
        let dir = file.parent()?;
        let watch = Watch::dir(dir, libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO)
            .map_err(|e| crate::log::warn("failpoint clock-set-by-faketime", &[("error", &e)]))
            .ok()?;
        Some(Faked { watch, name })
    }

    /// Whether the clock file was written since the last call.
    pub fn set(f: &Faked) -> bool {
        f.watch
            .events()
            .unwrap_or_default()
            .iter()
            .any(|e| e.names(&f.name))
    }
}

#[cfg(not(debug_assertions))]
mod faked {
    pub enum Faked {}

    impl std::os::fd::AsFd for Faked {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            match *self {}
        }
    }

    pub fn watch() -> Option<Faked> {
        None
    }

    pub fn set(f: &Faked) -> bool {
        match *f {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No other unit test subscribes (only a running identity output does).
    #[test]
    fn a_subscription_ends_with_its_subscriber() {
        let before = subscribers().len();
        let a = subscribe();
        let b = subscribe();
        assert_eq!(subscribers().len(), before + 2);
        drop(a);
        assert_eq!(subscribers().len(), before + 1);
        notify();
        assert_eq!(b.notices().try_recv(), Ok(()));
        drop(b);
        assert_eq!(subscribers().len(), before);
    }
}
