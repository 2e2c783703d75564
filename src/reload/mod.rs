//! Applying a configuration: the one path that `tbot start` (from nothing)
//! and each SIGHUP (from the configuration in force) take, as Prometheus,
//! nginx and HAProxy reload: the same file, the same validation as at
//! start; a file that fails changes nothing.
//!
//! [`Current::apply`] is a transaction: either every change is in force or
//! none is. Every step that can fail comes before the first change:
//! 1. load and validate the file (with the command line's overrides);
//! 2. refuse what needs a restart (`diff::needs_restart`: the storage path,
//!    `diag_max_connections`);
//! 3. the diagnostics service: bind a new `diag_addr` before anything
//!    changes (and, at start, the debug socket), then start it or move it
//!    there (a service that fails to start stops what it had started:
//!    `diag::start`), or take it off TCP (the debug socket stays) or stop
//!    it, and switch debug mode. A failure here ends the apply with
//!    nothing changed.
//!
//! What follows cannot fail:
//! 4. stop the removed and changed services (a stopped multiplexer's relays
//!    drain on a thread of their own, see `services::ssh_multiplexer::drain`);
//! 5. change the health table's rows at once (`Health::change_rows`): no
//!    reader sees half of the new set;
//! 6. give kept services whose only change is their destination's
//!    `acls`/`readers` the new ones, applied to their current files at once
//!    (`services::readers`), and the readers their passages through the
//!    storage directory (`readers::grant_passages_beside`), waiting for
//!    both at most `readers::APPLY_WAIT`;
//! 7. start the changed and added services. A service whose thread cannot
//!    be started (a pids cgroup limit, `RLIMIT_NPROC`) is in force all the
//!    same: its row is `unhealthy` with a reason naming the limit, and it
//!    is started as soon as it can be (`supervisor::Running::retry`, driven
//!    by the daemon's main loop).
//!
//! Which services a configuration adds, changes, removes or keeps is
//! decided by each built service's key (`services::Key`), compared by name
//! (`diff`). Kept services are not touched at all: same thread, same health
//! row. On a SIGHUP, systemd hears `RELOADING=1` (with `MONOTONIC_USEC=`)
//! before and `READY=1` after; a failure also sets `STATUS=`. The log says
//! which happened, and the metrics `tbot_config_last_reload_successful` and
//! `tbot_config_last_reload_success_timestamp_seconds` follow Prometheus'.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::cli::StartArgs;
use crate::config::Config;
use crate::diag::{self, Diag};
use crate::health::{Health, RowChange, Update};
use crate::infra::systemd;
use crate::log;
use crate::metrics::Metrics;
use crate::services::ssh_multiplexer::drain::DRAIN_TIMEOUT;
use crate::services::{self, Shared};
use crate::supervisor::{self, Running};

mod diff;

pub use diff::Diff;

/// CLOCK_MONOTONIC in microseconds, for systemd's `MONOTONIC_USEC=`.
fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Whether `READY=1` has been sent for the start. Until it has, a reload
/// says nothing to systemd (a `READY=1` after it would announce readiness
/// before every service reported). Held for the whole of a reload.
pub type Readiness = Arc<Mutex<bool>>;

/// The configuration in force and everything that runs it, owned by the
/// main thread. Made empty ([`Current::new`]); the first
/// [`Current::apply`] is tbot's start.
pub struct Current {
    args: StartArgs,
    /// None until the first apply.
    config: Option<Arc<Config>>,
    running: Vec<Running>,
    diag: Option<Diag>,
    /// The watchdog's view of the diagnostics loops, made once: each
    /// service an apply starts fills it, one it stops empties it.
    diag_slots: diag::Slots,
    health: Health,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    updates: Sender<Update>,
    readiness: Readiness,
    /// How long a stopped service gets to end its thread.
    stop_grace: Duration,
}

/// What the daemon hands [`Current::new`]: the shared state the services
/// and the diagnostics service are built on.
pub struct Ground {
    pub args: StartArgs,
    pub diag_slots: diag::Slots,
    pub shared: Arc<Shared>,
    pub updates: Sender<Update>,
    pub readiness: Readiness,
    pub stop_grace: Duration,
}

impl Current {
    /// Nothing applied yet: no service, no diagnostics service.
    pub fn new(g: Ground) -> Current {
        Current {
            args: g.args,
            config: None,
            running: Vec::new(),
            diag: None,
            diag_slots: g.diag_slots,
            health: g.shared.health.clone(),
            metrics: g.shared.metrics.clone(),
            shared: g.shared,
            updates: g.updates,
            readiness: g.readiness,
            stop_grace: g.stop_grace,
        }
    }

    /// How many services are in force, and how many of them wait for a
    /// thread (see [`Running::retry_at`]).
    pub fn counts(&self) -> (usize, usize) {
        let waiting = self.running.iter().filter(|r| r.retry_at().is_some());
        (self.running.len(), waiting.count())
    }

    /// When the next waiting service is to be started again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.running.iter().filter_map(Running::retry_at).min()
    }

    /// Starts the waiting services whose time has come.
    pub fn retry_waiting(&mut self) {
        let now = Instant::now();
        for r in &mut self.running {
            if r.retry(now) {
                log::info("service thread started", &[("service", &r.name)]);
            }
        }
    }

    /// Handles one SIGHUP: applies the file anew, and tells the log, the
    /// metrics and systemd how it went. Never fails the process.
    pub fn on_sighup(&mut self) {
        log::info("reloading the configuration", &[("signal", &"SIGHUP")]);
        let readiness = self.readiness.clone();
        let announced = readiness.lock().unwrap_or_else(|p| p.into_inner());
        if *announced {
            systemd::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
        match crate::config::configure(&self.args).and_then(|new| self.apply(new)) {
            Ok(d) => {
                self.metrics.reload_successful.set(1);
                self.metrics
                    .reload_success_timestamp
                    .set(crate::infra::timefmt::unix_now());
                systemd::status::reload_outcome(&self.health, None);
                let list = |v: &[String]| v.join(",");
                log::info(
                    "configuration reloaded; every change is in force",
                    &[
                        ("file", &self.args_file()),
                        ("added", &list(&d.added)),
                        ("removed", &list(&d.removed)),
                        ("changed", &list(&d.changed)),
                        ("kept", &list(&d.kept)),
                        (
                            "readers_changed",
                            &list(&d.readers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()),
                        ),
                        ("waiting_for_a_thread", &self.counts().1),
                    ],
                );
            }
            Err(e) => {
                // Loading the file set the log level from it: back to the
                // configuration in force.
                log::configure(
                    self.args.log_format.unwrap_or(log::Format::Text),
                    self.config.as_ref().is_some_and(|c| c.debug),
                );
                self.metrics.reload_successful.set(0);
                log::error(
                    "configuration reload failed; nothing changed, the previous configuration stays in force",
                    &[("error", &e)],
                );
                systemd::status::reload_outcome(&self.health, Some(&e));
            }
        }
        if *announced {
            systemd::notify("READY=1");
        }
    }

    fn args_file(&self) -> String {
        self.config
            .as_ref()
            .map_or_else(String::new, |c| c.file.clone())
    }

    /// Applies `new` (see the module's steps): Ok with what changed, or an
    /// error and nothing changed.
    pub fn apply(&mut self, new: Config) -> Result<Diff, String> {
        if let Some(why) = self
            .config
            .as_ref()
            .and_then(|c| diff::needs_restart(c, &new))
        {
            return Err(format!("{}: {why}", new.file));
        }
        let specs = services::build(&new);
        let d = diff::diff(
            (self.running.iter()).map(|r| (r.name.as_str(), r.key, r.access.as_ref())),
            (specs.iter()).map(|s| (s.name.as_str(), s.key, s.access.as_ref())),
        );
        // The web configuration's TLS files, read again (a bad one fails here).
        let security = diag::security(&new)?;
        self.apply_diag(&new, security)?;
        // Nothing has changed but the diagnostics service, and nothing can
        // fail from here on.
        self.stop_services(&d);
        let specs: Vec<_> = specs
            .into_iter()
            .filter(|s| d.added.contains(&s.name) || d.changed.contains(&s.name))
            .collect();
        let kind_of = |name: &String| {
            let kind = specs
                .iter()
                .find(|s| &s.name == name)
                .map_or("unknown", |s| s.service.kind());
            (name.clone(), kind)
        };
        self.health.change_rows(&RowChange {
            removed: d.removed.clone(),
            restarted: d.changed.iter().map(kind_of).collect(),
            added: d.added.iter().map(kind_of).collect(),
        });
        let readers_by = Instant::now() + crate::services::readers::APPLY_WAIT;
        for (name, access) in &d.readers {
            if let Some(r) = self.running.iter_mut().find(|r| &r.name == name) {
                if let Some(readers) = &r.readers {
                    readers.replace(access.clone(), readers_by);
                }
                r.access = Some(access.clone());
            }
        }
        crate::services::readers::grant_passages_beside(&new, readers_by);
        for spec in specs {
            self.running
                .push(supervisor::start(spec, &self.updates, &self.shared));
        }
        self.config = Some(Arc::new(new));
        Ok(d)
    }

    /// Stops the removed and changed services and waits for their threads
    /// (each within `stop_grace`); the relays of a stopped multiplexer drain
    /// on a thread of their own for at most [`DRAIN_TIMEOUT`].
    fn stop_services(&mut self, d: &Diff) {
        let (stop, keep): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| d.removed.contains(&r.name) || d.changed.contains(&r.name));
        self.running = keep;
        // Every stop signal first, so that they stop side by side.
        let stopping: Vec<_> = stop.into_iter().map(Running::stop).collect();
        let deadline = Instant::now() + self.stop_grace;
        let drains = supervisor::join_until(
            stopping,
            deadline,
            "service did not stop in time; reloading without waiting for it",
        );
        for (name, drain) in drains {
            let spawned = crate::infra::threads::spawn("mux-drain", move || {
                drain.run(&name, DRAIN_TIMEOUT);
            });
            if let Err(e) = spawned {
                log::warn(
                    "cannot start a thread to drain relays; they end on their own",
                    &[("error", &e)],
                );
            }
        }
    }

    /// Starts, moves or stops the diagnostics service for `new`, and
    /// switches its debug mode and web configuration (`security`). A new
    /// address is bound before anything changes; an error leaves the
    /// service as it was. The debug socket is made at the first apply
    /// (start) only, after the address: the service runs for it with no
    /// `diag_addr`, and a reload that removes `diag_addr` takes the front
    /// off TCP. A reload does not move the socket (`debug_socket:` applies
    /// at the next start).
    fn apply_diag(&mut self, new: &Config, security: diag::Secured) -> Result<(), String> {
        let addr_now = self.config.as_ref().and_then(|c| c.diag_addr.as_ref());
        let tcp = match &new.diag_addr {
            Some(addr) if self.diag.is_none() || addr_now != Some(addr) => Some(diag::bind(addr)?),
            _ => None,
        };
        let local = match self.config {
            None => diag::debug_socket::bind_or_warn(&new.debug_socket),
            Some(_) => None,
        };
        match (self.diag.take(), tcp) {
            (Some(mut d), Some(l)) => {
                let moved = d.move_to(Some(l));
                if moved.is_ok() {
                    d.set_security(security);
                }
                self.diag = Some(d);
                moved?;
            }
            // No diag_addr any more: the front leaves TCP, or the service
            // stops when it has no debug socket.
            (Some(mut d), None) if new.diag_addr.is_none() && addr_now.is_some() => {
                if d.has_debug_socket() {
                    let moved = d.move_to(None);
                    self.diag = Some(d);
                    moved?;
                } else {
                    d.shutdown();
                    log::info("diagnostics service stopped: no diag_addr any more", &[]);
                }
            }
            (Some(mut d), None) => {
                d.set_security(security);
                self.diag = Some(d);
            }
            (None, tcp) if tcp.is_some() || local.is_some() => {
                let options = diag::Options {
                    max_connections: new.diag_max_connections,
                    debug: new.debug,
                    security,
                };
                let (h, m) = (self.health.clone(), self.metrics.clone());
                let l = diag::Listeners { tcp, local };
                self.diag = Some(diag::start(l, options, h, m, &self.diag_slots)?);
            }
            (None, _) => {}
        }
        if let Some(d) = &self.diag {
            d.set_debug(new.debug);
        }
        Ok(())
    }

    /// Stops every service (signals first, then waits until `deadline`),
    /// then the diagnostics service.
    pub fn stop_all(&mut self, deadline: Instant) {
        let stopping: Vec<_> = std::mem::take(&mut self.running)
            .into_iter()
            .map(Running::stop)
            .collect();
        supervisor::join_until(
            stopping,
            deadline,
            "service did not stop in time; exiting anyway",
        );
    }

    /// Stops the diagnostics service, if one runs.
    pub fn stop_diag(&mut self) {
        if let Some(d) = self.diag.take() {
            d.shutdown();
        }
    }
}
