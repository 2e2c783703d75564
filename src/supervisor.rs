//! Runs each service on its own named OS thread and keeps it running.
//!
//! A service whose `run` returns early, fails or panics is reported
//! `unhealthy` with the reason (the panic message for a panic) and started
//! again after an exponential backoff (1 s, 2 s, 4 s … 60 s). The backoff
//! resets once a run has lasted longer than the longest backoff. Nothing a
//! service does can take the process down.
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

use crate::health::Update;
use crate::infra::backoff::Backoff;
use crate::infra::stop::{Stop, Stopper};
use crate::infra::threads::{spawn_member, Group, Member};
use crate::log;
use crate::services::{Context, Drain, Shared, Spec};

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

/// A spawned service thread, with its own stop signal: a reload stops one
/// service without touching the others.
pub struct Running {
    pub name: String,
    thread: Member,
    /// Dropping it stops the service (see [`Running::stop`]).
    stop: Stopper,
    /// For a multiplexer, its live relays (see [`Drain`]).
    pub drain: Option<Drain>,
    /// For a service with a destination, its readers (see `services::readers`).
    pub readers: Option<crate::services::readers::Readers>,
}

impl Running {
    /// Tells the service to stop (without waiting).
    pub fn stop(self) -> Stopping {
        self.stop.fire();
        Stopping {
            name: self.name,
            thread: self.thread,
            drain: self.drain,
        }
    }
}

/// A service told to stop.
pub struct Stopping {
    pub name: String,
    thread: Member,
    pub drain: Option<Drain>,
}

/// Waits until the threads of `stopping` have ended or `deadline` (all in
/// one [`Group`]); logs each that did not stop in time (with `late`, which
/// says what happens next) and each that panicked. Returns their drains.
pub fn join_until(stopping: Vec<Stopping>, deadline: Instant, late: &str) -> Vec<(String, Drain)> {
    let mut group = Group::default();
    let mut drains = Vec::new();
    for s in stopping {
        group.push(s.thread);
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

/// Starts every service on a thread named after it, each with its own stop
/// signal. Each service's updates carry the instance number its health row
/// has now (see `Health::instance`): rows first, then threads.
pub fn start(
    specs: Vec<Spec>,
    updates: &Sender<Update>,
    shared: &Arc<Shared>,
) -> std::io::Result<Vec<Running>> {
    let mut running = Vec::with_capacity(specs.len());
    for spec in specs {
        running.push(start_one(spec, updates, shared)?);
    }
    Ok(running)
}

/// Starts one service (see [`start`]).
pub fn start_one(
    spec: Spec,
    updates: &Sender<Update>,
    shared: &Arc<Shared>,
) -> std::io::Result<Running> {
    let named = crate::infra::limits::name_limit;
    let (stopper, stop) = Stop::new().map_err(named)?;
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
    let thread = spawn_member(&spec.name, move || supervise(spec.service, ctx))
        .map_err(crate::infra::limits::name_task_limit)?;
    Ok(Running {
        name: spec.name,
        thread,
        stop: stopper,
        drain,
        readers,
    })
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
