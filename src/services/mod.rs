//! The services tbot runs, each on its own named thread (see `supervisor`).
//!
//! A service is a type implementing [`Service`]. It reports its health through
//! its [`Context`] and returns from `run` when the context says stop. Adding a
//! service is one file here plus one arm in [`build`].

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{Config, ServiceConfig};
use crate::health::{Health, Status, Update};
use crate::infra::stop::Stop;
use crate::metrics::Metrics;

pub mod bot_identity;
pub mod ca;
pub mod ca_rotation;
pub mod heartbeat;
pub mod identity;
pub mod readers;
pub mod ssh_multiplexer;

pub use ssh_multiplexer::drain::Drain;

/// What every service implements.
pub trait Service: Send + 'static {
    /// The service's `type`, as shown in metrics and the heartbeat record.
    fn kind(&self) -> &'static str;

    /// Does the service's work until `ctx.stop()` fires, then returns `Ok`.
    /// Returning early (with an error, `Ok`, or by panicking) makes the
    /// supervisor report the service unhealthy and call `run` again after a
    /// backoff.
    fn run(&mut self, ctx: &Context) -> Result<(), String>;

    /// For a service that keeps connections alive past its own stop (the
    /// multiplexer's relays): a handle to drain them when a reload removes
    /// or changes the service. Taken before the service's thread starts.
    fn drain(&self) -> Option<Drain> {
        None
    }

    /// For a service with a destination: its readers, which a reload that
    /// changes only `acls`/`readers` replaces in place (see `readers`).
    /// Taken before the service's thread starts.
    fn readers(&self) -> Option<readers::Readers> {
        None
    }
}

/// What all services share: built once at start-up.
/// (Each service gets its own configuration when it is built.)
pub struct Shared {
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// "Re-issue now" notices from `ca-rotation` to every identity output.
    pub reissue: Bus,
    /// The CA the identity outputs sign with (see `ca`).
    pub ca: ca::CurrentCa,
}

/// A fan-out of wake-up notices: each subscriber gets its own channel.
#[derive(Default)]
pub struct Bus {
    subscribers: Mutex<Vec<Sender<()>>>,
}

impl Bus {
    pub fn subscribe(&self) -> Receiver<()> {
        // Capacity 1: a pending notice already says "do it now".
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Notifies every live subscriber; forgets the ones that went away.
    pub fn publish(&self) -> usize {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| {
            !matches!(
                tx.try_send(()),
                Err(crossbeam_channel::TrySendError::Disconnected(_))
            )
        });
        subs.len()
    }
}

/// A service's handle on the rest of the daemon.
pub struct Context {
    name: String,
    /// The health row instance this run reports to (see `Health::instance`).
    instance: u64,
    updates: Sender<Update>,
    stop: Stop,
    pub shared: Arc<Shared>,
}

impl Context {
    /// `stop` fires when tbot stops the service.
    pub fn new(
        name: String,
        instance: u64,
        updates: Sender<Update>,
        stop: Stop,
        shared: Arc<Shared>,
    ) -> Context {
        Context {
            name,
            instance,
            updates,
            stop,
            shared,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn report(&self, status: Status, reason: impl Into<String>) {
        // The applier outlives every service; a send can only fail during
        // process teardown, when nobody is left to read the table anyway.
        let _ = self.updates.send(Update {
            service: self.name.clone(),
            instance: self.instance,
            status,
            reason: reason.into(),
        });
    }

    pub fn healthy(&self) {
        self.report(Status::Healthy, String::new());
    }

    pub fn unhealthy(&self, reason: impl Into<String>) {
        self.report(Status::Unhealthy, reason);
    }

    /// Never yields a value; becomes ready (disconnected) when tbot stops.
    /// Use it in `crossbeam_channel::select!`.
    pub fn stop(&self) -> &Receiver<()> {
        self.stop.receiver()
    }

    /// Never readable until tbot stops; from then on readable (end of
    /// file, `POLLIN | POLLHUP`) for good. Poll it for `POLLIN` beside a
    /// service's own descriptors to wait for them or a stop, with no timer.
    /// Once it is ready, [`Context::stopping`] is true.
    pub fn stop_fd(&self) -> BorrowedFd<'_> {
        self.stop.fd()
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_set()
    }

    /// Sleeps `d` unless tbot stops first. Returns false when stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        self.stop.sleep(d)
    }
}

/// One service to run: its unique name and the implementation.
pub struct Spec {
    pub name: String,
    pub service: Box<dyn Service>,
}

/// Every service of this configuration, internal ones first. (What each one
/// is built from is listed by `reload::effective`: keep the two in step.)
pub fn build(config: &Config) -> Vec<Spec> {
    let mut specs = vec![
        Spec {
            name: "identity".into(),
            service: Box::new(bot_identity::BotIdentity::new(config)),
        },
        Spec {
            name: "ca-rotation".into(),
            service: Box::new(ca_rotation::CaRotation::new(config)),
        },
        Spec {
            name: "heartbeat".into(),
            service: Box::new(heartbeat::Heartbeat::new(config)),
        },
    ];
    for s in &config.services {
        let service: Box<dyn Service> = match s {
            ServiceConfig::Identity(c) => Box::new(identity::IdentityOutput::new(c.clone())),
            ServiceConfig::SshMultiplexer(m) => {
                Box::new(ssh_multiplexer::SshMultiplexer::new(m, config))
            }
        };
        specs.push(Spec {
            name: s.name().to_string(),
            service,
        });
    }
    specs
}

/// Times one iteration of a service's loop into the `tbot_task_*` metrics.
pub struct Iteration<'a> {
    ctx: &'a Context,
    task: &'static str,
    started: Instant,
}

impl<'a> Iteration<'a> {
    pub fn start(ctx: &'a Context, task: &'static str) -> Iteration<'a> {
        // Every series of the task exists, at 0, from its first iteration
        // on: a failure counter that appeared only with the first failure
        // would hide that failure from rate() and increase(), and leave
        // ratios of failed to total empty rather than 0.
        ctx.shared.metrics.task_started(ctx.name(), task);
        Iteration {
            ctx,
            task,
            started: Instant::now(),
        }
    }

    fn finish(self, failed: bool) {
        self.ctx.shared.metrics.task_finished(
            self.ctx.name(),
            self.task,
            failed,
            self.started.elapsed().as_secs_f64(),
        );
    }

    pub fn succeeded(self) {
        self.finish(false)
    }

    pub fn failed(self) {
        self.finish(true)
    }
}
