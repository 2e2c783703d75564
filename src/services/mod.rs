//! The services tbot runs, each on its own named thread (see
//! `supervisor.rs`, which depends on this module, not the other way).
//!
//! A service is a type implementing [`Service`]. It reports its health through
//! its [`Context`] and returns from `run` when the context says stop. Adding a
//! service type is one file here, its variant of
//! [`crate::config::ServiceConfig`] (for one users configure), and one arm in
//! [`build`], which also gives the service its [`Key`]: what a reload
//! compares to decide whether it changed.

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{Access, Config, ServiceConfig};
use crate::health::{Health, Status, Update};
use crate::infra::stop::Stop;
use crate::infra::subscribers::{List, Subscription};
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

/// A fan-out of wake-up notices: each subscriber gets its own channel, for
/// as long as it holds its [`Notices`].
#[derive(Default)]
pub struct Bus {
    subscribers: List<Sender<()>>,
}

/// A subscriber's end of a [`Bus`]: dropping it leaves the bus.
pub struct Notices {
    rx: Receiver<()>,
    _entry: Subscription<Sender<()>>,
}

impl Notices {
    /// Yields `()` after each notice (at most one waiting: several notices
    /// in a row read as one).
    pub fn receiver(&self) -> &Receiver<()> {
        &self.rx
    }
}

impl Bus {
    pub fn subscribe(&self) -> Notices {
        // Capacity 1: a pending notice already says "do it now".
        let (tx, rx) = crossbeam_channel::bounded(1);
        Notices {
            rx,
            _entry: self.subscribers.add(tx),
        }
    }

    /// Notifies every subscriber; returns how many there are.
    pub fn publish(&self) -> usize {
        self.subscribers.for_each(|tx| {
            let _ = tx.try_send(());
        });
        self.subscribers.len()
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
        self.reporter().report(status, reason);
    }

    /// This run's health row, for a helper thread that reports on the
    /// service's behalf (a reload's readers, see `readers`).
    pub fn reporter(&self) -> Reporter {
        Reporter {
            name: self.name.clone(),
            instance: self.instance,
            updates: self.updates.clone(),
        }
    }

    pub fn healthy(&self) {
        self.report(Status::Healthy, String::new());
    }

    pub fn unhealthy(&self, reason: impl Into<String>) {
        self.report(Status::Unhealthy, reason);
    }

    /// Never yields a value; becomes ready (disconnected) when tbot stops
    /// this service (at shutdown, or a reload that removes or changes it).
    /// Use it in `crossbeam_channel::select!`.
    pub fn stop(&self) -> &Receiver<()> {
        self.stop.receiver()
    }

    /// Never readable until tbot stops this service (as for
    /// [`Context::stop`]); from then on readable for good.
    /// Poll it for `POLLIN` beside a service's own descriptors to wait for
    /// them or a stop, with no timer. Once it is ready,
    /// [`Context::stopping`] is true. Made on the first call (a service
    /// that never asks holds no descriptor). Errors: no descriptor left.
    pub fn stop_fd(&self) -> std::io::Result<BorrowedFd<'_>> {
        self.stop.fd()
    }

    /// The service's stop signal, for threads of its own that outlive a
    /// borrow of the context (a multiplexer's connections).
    pub fn stop_signal(&self) -> Stop {
        self.stop.clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_set()
    }

    /// Sleeps `d` unless tbot stops first. Returns false when stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        self.stop.sleep(d)
    }
}

/// A service run's health row, apart from its [`Context`].
#[derive(Clone)]
pub struct Reporter {
    name: String,
    instance: u64,
    updates: Sender<Update>,
}

impl Reporter {
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
}

/// What decides whether a reload changes a service: a hash of everything
/// the service is built from (its own section and every top-level setting
/// it reads), as [`build`] gives it. Two services with the same name and
/// key are the same service: a reload keeps it untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key(u64);

impl Key {
    /// The key of a service built from `inputs` (their `Debug` text,
    /// hashed: 64 bits per service rather than a copy of its settings).
    pub fn of(inputs: &impl Debug) -> Key {
        let mut h = std::hash::DefaultHasher::new();
        format!("{inputs:?}").hash(&mut h);
        Key(h.finish())
    }
}

/// One service to run: its unique name, its [`Key`] and the implementation.
pub struct Spec {
    pub name: String,
    pub key: Key,
    /// Its destination's `acls`/`readers`: not in the key, since a reload
    /// applies a change of these alone in place (see `reload::diff`).
    pub access: Option<Access>,
    pub service: Box<dyn Service>,
}

impl Spec {
    fn new(name: &str, inputs: &impl Debug, service: Box<dyn Service>) -> Spec {
        Spec {
            name: name.to_string(),
            key: Key::of(&(name, service.kind(), inputs)),
            access: None,
            service,
        }
    }

    /// A service with a destination, built from `inputs`, whose
    /// `access` `take_access` sets apart from the key.
    fn with_destination<C: Debug + Clone>(
        name: &str,
        inputs: &C,
        take_access: impl FnOnce(&mut C) -> Access,
        service: Box<dyn Service>,
    ) -> Spec {
        let mut keyed = inputs.clone();
        let access = take_access(&mut keyed);
        Spec {
            access: Some(access),
            ..Spec::new(name, &keyed, service)
        }
    }
}

/// Every service of this configuration, internal ones first, each with
/// its [`Key`] (made here, beside the service, from what it is built of:
/// adding a service type is one arm).
pub fn build(config: &Config) -> Vec<Spec> {
    let storage = &config.storage;
    let mut specs = vec![
        Spec::new(
            "identity",
            &(storage, config.renewal_interval),
            Box::new(bot_identity::BotIdentity::new(config)),
        ),
        Spec::new(
            "ca-rotation",
            storage,
            Box::new(ca_rotation::CaRotation::new(config)),
        ),
        Spec::new(
            "heartbeat",
            &(storage, config.heartbeat_interval),
            Box::new(heartbeat::Heartbeat::new(config)),
        ),
    ];
    for s in &config.services {
        specs.push(match s {
            ServiceConfig::Identity(c) => Spec::with_destination(
                &c.name,
                c,
                |c| std::mem::take(&mut c.access),
                Box::new(identity::IdentityOutput::new(c.clone())),
            ),
            // Its ssh_config names the identity output's directory.
            ServiceConfig::SshMultiplexer(m) => Spec::with_destination(
                &m.name,
                &(
                    m.clone(),
                    config.identity(&m.identity).map(|i| i.destination.clone()),
                ),
                |(m, _)| std::mem::take(&mut m.access),
                Box::new(ssh_multiplexer::SshMultiplexer::new(m, config)),
            ),
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
