//! Configuration reload on SIGHUP, as Prometheus, nginx and HAProxy do it:
//! the same file, the same validation as at start; a file that fails
//! changes nothing; one that passes is applied service by service.
//!
//! Order of a reload ([`Live::reload`]), chosen so that every step that can
//! fail comes before the first change:
//! 1. load and validate the file (with the command line's overrides);
//! 2. refuse what needs a restart (`diff::needs_restart`: the storage path,
//!    `diag_max_connections`);
//! 3. bind a new `diag_addr`, if it moved (a failure ends the reload here);
//! 4. stop the removed and changed services (a stopped multiplexer's relays
//!    drain on a thread of their own, see `services::ssh_multiplexer::drain`);
//! 5. change the health table's rows at once (`Health::change_rows`): no
//!    reader sees half of the new set;
//! 6. start the changed and added services; give kept services whose only
//!    change is their destination's `acls`/`readers` the new ones, applied
//!    to their current files at once (`services::readers`);
//! 7. move, start or stop the diagnostics service and switch debug mode
//!    (the systemd watchdog follows it: `diag::Slots`).
//!
//! Kept services are not touched at all: same thread, same health row.
//! systemd hears `RELOADING=1` (with `MONOTONIC_USEC=`) before and `READY=1`
//! after; a failure also sets `STATUS=`. The metrics
//! `tbot_config_last_reload_successful` and
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

/// CLOCK_MONOTONIC in microseconds, for systemd's `MONOTONIC_USEC=`.
fn monotonic_usec() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Whether `READY=1` has been sent for the start. Until it has, a reload
/// says nothing to systemd (a `READY=1` after it would announce readiness
/// before every service reported). Held for the whole of a reload.
pub type Readiness = Arc<Mutex<bool>>;

/// Everything a reload may change, owned by the main thread.
pub struct Live {
    pub args: StartArgs,
    pub config: Arc<Config>,
    pub running: Vec<Running>,
    pub diag: Option<Diag>,
    /// The watchdog's view of the diagnostics loops, made at start: each
    /// service a reload starts fills it, one it stops empties it.
    pub diag_slots: diag::Slots,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<Shared>,
    pub updates: Sender<Update>,
    pub readiness: Readiness,
    /// How long a stopped service gets to end its thread.
    pub stop_grace: Duration,
}

/// The names a successful reload acted on.
type Applied = diff::Diff;

impl Live {
    /// Handles one SIGHUP: reloads, and tells the log, the metrics and
    /// systemd how it went. Never fails the process.
    pub fn on_sighup(&mut self) {
        log::info("reloading the configuration", &[("signal", &"SIGHUP")]);
        let readiness = self.readiness.clone();
        let announced = readiness.lock().unwrap_or_else(|p| p.into_inner());
        if *announced {
            systemd::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
        match self.reload() {
            Ok(d) => {
                self.metrics.reload_successful.set(1);
                self.metrics
                    .reload_success_timestamp
                    .set(crate::infra::timefmt::unix_now());
                systemd::status::reload_outcome(&self.health, None);
                let list = |v: &[String]| v.join(",");
                log::info(
                    "configuration reloaded",
                    &[
                        ("file", &self.config.file),
                        ("added", &list(&d.added)),
                        ("removed", &list(&d.removed)),
                        ("changed", &list(&d.changed)),
                        ("kept", &list(&d.kept)),
                        (
                            "readers_changed",
                            &list(&d.readers.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()),
                        ),
                    ],
                );
            }
            Err(e) => {
                // Loading the file set the log level from it: back to the
                // configuration in force.
                log::configure(
                    self.args.log_format.unwrap_or(log::Format::Text),
                    self.config.debug,
                );
                self.metrics.reload_successful.set(0);
                log::error(
                    "configuration reload failed; the previous configuration stays in force",
                    &[("error", &e)],
                );
                systemd::status::reload_outcome(&self.health, Some(&e));
            }
        }
        if *announced {
            systemd::notify("READY=1");
        }
    }

    /// Applies the configuration file anew (see the module's steps).
    fn reload(&mut self) -> Result<Applied, String> {
        let new = crate::config::configure(&self.args)?;
        if let Some(why) = diff::needs_restart(&self.config, &new) {
            return Err(format!("{}: {why}", new.file));
        }
        let listener = match &new.diag_addr {
            Some(addr) if self.config.diag_addr.as_ref() != Some(addr) => Some(diag::bind(addr)?),
            _ => None,
        };
        let d = diff::diff(&self.config, &new);
        // Nothing has changed yet. From here on, what can still fail (a
        // thread or the diagnostics service that cannot start: out of
        // memory or descriptors) leaves the new set applied as far as it
        // got, and is reported as a failed reload.
        self.stop_services(&d);
        let mut specs: Vec<_> = services::build(&new)
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
        for (name, access) in &d.readers {
            if let Some(r) = self.running.iter().find(|r| &r.name == name) {
                if let Some(readers) = &r.readers {
                    readers.replace(access.clone());
                }
            }
        }
        let mut failed = Vec::new();
        for spec in specs.drain(..) {
            let name = spec.name.clone();
            match supervisor::start_one(spec, &self.updates, &self.shared) {
                Ok(r) => self.running.push(r),
                Err(e) => failed.push(format!("{name}: cannot start its thread: {e}")),
            }
        }
        crate::services::readers::grant_passages(&new);
        let moved = self.apply_diag(&new, listener);
        self.config = Arc::new(new);
        moved?;
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        Ok(d)
    }

    /// Stops the removed and changed services and waits for their threads
    /// (each within `stop_grace`); the relays of a stopped multiplexer drain
    /// on a thread of their own for at most [`DRAIN_TIMEOUT`].
    fn stop_services(&mut self, d: &diff::Diff) {
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

    /// Moves, starts or stops the diagnostics service and switches debug
    /// mode. `listener` is the new address, bound before anything changed.
    fn apply_diag(
        &mut self,
        new: &Config,
        listener: Option<std::net::TcpListener>,
    ) -> Result<(), String> {
        if new.diag_addr.is_none() {
            match self.diag.take() {
                // The debug socket stays: only the TCP port goes.
                Some(mut d) if d.has_debug_socket() => {
                    if self.config.diag_addr.is_some() {
                        d.move_to(None)?;
                    }
                    d.set_debug(new.debug);
                    self.diag = Some(d);
                }
                Some(d) => {
                    d.shutdown();
                    log::info("diagnostics service stopped: no diag_addr any more", &[]);
                }
                None => {}
            }
            return Ok(());
        }
        match (listener, &mut self.diag) {
            (Some(l), Some(d)) => d.move_to(Some(l))?,
            (Some(l), None) => {
                // Started without a debug socket (it could not be made at
                // start); a reload does not retry it.
                self.diag = Some(diag::start(
                    diag::Listeners {
                        tcp: Some(l),
                        local: None,
                    },
                    diag::Options {
                        max_connections: new.diag_max_connections,
                        debug: new.debug,
                    },
                    self.health.clone(),
                    self.metrics.clone(),
                    &self.diag_slots,
                )?);
            }
            (None, _) => {}
        }
        if let Some(d) = &self.diag {
            d.set_debug(new.debug);
        }
        Ok(())
    }

    /// Stops every service (signals first, then waits until `deadline`).
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
}
