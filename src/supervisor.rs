//! Runs each service on its own named OS thread and keeps it running.
//!
//! A service whose `run` returns early, fails or panics is reported
//! `unhealthy` with the reason (the panic message for a panic) and started
//! again after an exponential backoff (1 s, 2 s, 4 s … 60 s). The backoff
//! resets once a run has lasted longer than the longest backoff. Nothing a
//! service does can take the process down.
//!
//! A service whose thread cannot be started (`EAGAIN` under a pids cgroup
//! limit or `RLIMIT_NPROC`) fails like one whose `run` fails: its row is
//! `unhealthy` with a reason that names the limit (`limits::explain`),
//! and the start is tried again after the same backoff ([`Running::retry`],
//! called by the daemon's main loop at [`Running::retry_at`]).
//!
//! Every report and every restart reaches the health table through the
//! applier thread (`health`); that is the supervision path the systemd
//! watchdog proves alive ([`crate::health::watched`]). A service stuck in
//! its own work (a hung mount, a slow peer) is not a wedged supervisor and
//! does not stop the pings: it shows in its status and `updated_at`.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::Access;
use crate::health::Update;
use crate::infra::backoff::Backoff;
use crate::infra::limits::explain;
use crate::infra::stop::{Stop, Stopper};
use crate::infra::threads::{spawn_member, Group, Member};
use crate::log;
use crate::services::{Context, Drain, Key, Service, Shared, Spec};

/// How long the `service-hold@NAME` failpoint holds a start (debug builds).
const HELD: Duration = Duration::from_secs(24 * 3600);
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const RESTART: Backoff = Backoff {
    first: FIRST_BACKOFF,
    max: MAX_BACKOFF,
};

/// Installs a panic hook that logs one line through tbot's logger (instead
/// of the default multi-line stderr message) and names the thread.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed").to_string();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error(
            "thread panicked",
            &[
                ("thread", &name),
                ("panic", &panic_message(info.payload())),
                ("at", &location),
            ],
        );
    }));
}

/// The text of a panic payload (`panic!("...")` gives `&str` or `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// A service tbot runs, with its own stop signal: a reload stops one
/// service without touching the others.
pub struct Running {
    pub name: String,
    /// What it was built from (see [`Key`]): a reload keeps it if unchanged.
    pub key: Key,
    /// Its destination's `acls`/`readers`, apart from the key: a reload
    /// that changes only these replaces them in place (`readers`).
    pub access: Option<Access>,
    state: State,
    /// Dropping it stops the service (see [`Running::stop`]).
    stop: Stopper,
    /// For a multiplexer, its live relays (see [`Drain`]).
    pub drain: Option<Drain>,
    /// For a service with a destination, its readers (see `services::readers`).
    pub readers: Option<crate::services::readers::Readers>,
}

enum State {
    /// Its thread runs.
    Started(Member),
    /// Its thread could not be started: tried again at `retry_at`. (The
    /// job is taken out only for the moment of the retry.)
    Waiting {
        job: Option<Job>,
        retry_at: Instant,
        delay: Duration,
    },
}

/// What a service thread runs.
struct Job {
    service: Box<dyn Service>,
    ctx: Context,
}

impl Running {
    /// Tells the service to stop (without waiting).
    pub fn stop(self) -> Stopping {
        self.stop.fire();
        Stopping {
            name: self.name,
            thread: match self.state {
                State::Started(m) => Some(m),
                State::Waiting { .. } => None,
            },
            drain: self.drain,
        }
    }

    /// When its thread is to be tried again (None: it runs).
    pub fn retry_at(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { retry_at, .. } => Some(*retry_at),
            State::Started(_) => None,
        }
    }

    /// Tries again to start the thread if it is waiting and its time has
    /// come (see [`Running::retry_at`]). True when it started.
    pub fn retry(&mut self, now: Instant) -> bool {
        let State::Waiting {
            job,
            retry_at,
            delay,
        } = &mut self.state
        else {
            return false;
        };
        if *retry_at > now {
            return false;
        }
        let Some(j) = job.take() else {
            return false;
        };
        self.state = launch(&self.name, j, Some(*delay));
        self.retry_at().is_none()
    }
}

/// Starts `job`'s thread; if it cannot be started, reports the service
/// unhealthy (naming the limit) and returns it waiting, `previous` (the
/// last delay, None at the first try) backed off.
fn launch(name: &str, job: Job, previous: Option<Duration>) -> State {
    let slot = Arc::new(std::sync::Mutex::new(Some(job)));
    let inside = slot.clone();
    let take =
        |s: &std::sync::Mutex<Option<Job>>| s.lock().unwrap_or_else(|p| p.into_inner()).take();
    let error = match spawn_member(name, move || {
        if let Some(job) = take(&inside) {
            supervise(job.service, job.ctx);
        }
    }) {
        Ok(m) => return State::Started(m),
        Err(e) => e,
    };
    let Some(job) = take(&slot) else {
        unreachable!("a thread that was not started did not take its job")
    };
    let delay = RESTART.after(previous);
    let reason = format!("cannot start its thread: {}", explain(&error));
    log::error(
        "service cannot start; retrying",
        &[
            ("service", &name),
            ("reason", &reason),
            ("retry_in", &crate::infra::duration::format(delay)),
        ],
    );
    job.ctx.unhealthy(reason);
    State::Waiting {
        job: Some(job),
        retry_at: Instant::now() + delay,
        delay,
    }
}

/// A service told to stop.
pub struct Stopping {
    pub name: String,
    thread: Option<Member>,
    pub drain: Option<Drain>,
}

/// Waits until the threads of `stopping` have ended or `deadline` (all in
/// one [`Group`]); logs each that did not stop in time (with `late`, which
/// says what happens next) and each that panicked. Returns their drains.
pub fn join_until(stopping: Vec<Stopping>, deadline: Instant, late: &str) -> Vec<(String, Drain)> {
    let mut group = Group::default();
    let mut drains = Vec::new();
    for s in stopping {
        if let Some(t) = s.thread {
            group.push(t);
        }
        if let Some(d) = s.drain {
            drains.push((s.name, d));
        }
    }
    let joined = group.join_until(deadline);
    for name in &joined.late {
        log::warn(late, &[("service", name)]);
    }
    for name in &joined.panicked {
        log::error(
            "service thread panicked while stopping",
            &[("service", name)],
        );
    }
    drains
}

/// Starts one service on a thread named after it, with its own stop
/// signal. Its updates carry the instance number its health row has now
/// (see `Health::instance`): rows first, then threads. A thread that
/// cannot be started leaves the service waiting (see [`Running::retry`]).
pub fn start(spec: Spec, updates: &Sender<Update>, shared: &Arc<Shared>) -> Running {
    let (stopper, stop) = Stop::new();
    let instance = shared.health.instance(&spec.name).unwrap_or(0);
    let ctx = Context::new(
        spec.name.clone(),
        instance,
        updates.clone(),
        stop,
        shared.clone(),
    );
    let drain = spec.service.drain();
    let readers = spec.service.readers();
    let job = Job {
        service: spec.service,
        ctx,
    };
    Running {
        state: launch(&spec.name, job, None),
        name: spec.name,
        key: spec.key,
        access: spec.access,
        stop: stopper,
        drain,
        readers,
    }
}

fn supervise(mut service: Box<dyn crate::services::Service>, ctx: Context) {
    // Debug builds: `service-hold@NAME=on` holds the service NAME in its
    // start (`initializing`) until it is stopped, as a start that never
    // ends would (how the suite proves the stuck-initializing alert).
    if cfg!(debug_assertions)
        && crate::infra::failpoints::on(&format!("service-hold@{}", ctx.name()))
        && !ctx.sleep(HELD)
    {
        return;
    }
    let mut backoff = None;
    loop {
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| service.run(&ctx)));
        if ctx.stopping() {
            return;
        }
        let reason = match outcome {
            Ok(Ok(())) => "service stopped unexpectedly".to_string(),
            Ok(Err(e)) => e,
            Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
        };
        let delay = delay_before_restart(backoff, started.elapsed());
        backoff = Some(delay);
        log::error(
            "service failed; restarting",
            &[
                ("service", &ctx.name()),
                ("reason", &reason),
                ("restart_in", &crate::infra::duration::format(delay)),
            ],
        );
        ctx.unhealthy(reason);
        if !ctx.sleep(delay) {
            return;
        }
    }
}

/// The delay before the next restart, given the previous one (None before
/// the first) and how long the failed run lasted:
/// 1 s, then doubling up to 60 s while the service keeps failing at once;
/// back to 1 s after a run that lasted longer than the cap.
fn delay_before_restart(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(d) if ran_for <= MAX_BACKOFF => RESTART.after(Some(d)),
        _ => RESTART.after(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_1s_to_60s_and_reset_after_a_long_run() {
        let quick = Duration::from_millis(5);
        let mut seen = Vec::new();
        let mut d = None;
        for _ in 0..9 {
            let next = delay_before_restart(d, quick);
            seen.push(next.as_secs());
            d = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // A run longer than the cap means the service had recovered.
        assert_eq!(
            delay_before_restart(d, Duration::from_secs(61)),
            FIRST_BACKOFF
        );
        assert_eq!(
            delay_before_restart(Some(Duration::from_secs(8)), Duration::from_secs(60)),
            Duration::from_secs(16)
        );
    }

    #[test]
    fn panic_messages_are_extracted() {
        let p = catch_unwind(|| panic!("boom {}", 7))
            .err()
            .map(|p| panic_message(p.as_ref()));
        assert_eq!(p.as_deref(), Some("boom 7"));
        let p = catch_unwind(|| panic!("static"))
            .err()
            .map(|p| panic_message(p.as_ref()));
        assert_eq!(p.as_deref(), Some("static"));
    }
}
