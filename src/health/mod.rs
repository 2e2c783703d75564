//! The health table: what every service last said about itself.
//!
//! Services never touch the table. They send [`Update`]s over a crossbeam
//! channel; one thread ([`Applier::run`]) applies them under the mutex, logs
//! every status change, keeps the `tbot_service_health` gauges in step and
//! wakes whoever waits for a change (the diagnostics loop's `/wait`, the
//! heartbeat, systemd readiness and `STATUS=`). There is one way to wait
//! for a change: [`Health::on_change`], whose subscription ends with its
//! holder; [`Health::wait_all_reported`] is built on it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::infra::progress::{Beat, Watched};
use crate::infra::subscribers::{List, Subscription};
use crate::log;
use crate::metrics::Metrics;

pub mod status;

pub use status::Status;

/// One service's report, as sent by the service's thread.
#[derive(Clone, Debug)]
pub struct Update {
    pub service: String,
    /// Which run of the service sent it (see [`Health::instance`]): an
    /// update from an instance a reload has since stopped is dropped.
    pub instance: u64,
    pub status: Status,
    pub reason: String,
}

impl Update {
    /// A liveness probe for the applier (see [`watched`]): it is counted
    /// and otherwise ignored. No service has an empty name.
    pub fn probe() -> Update {
        Update {
            service: String::new(),
            instance: 0,
            status: Status::Initializing,
            reason: String::new(),
        }
    }

    fn is_probe(&self) -> bool {
        self.service.is_empty()
    }
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    #[serde(skip)]
    pub kind: &'static str,
    pub status: Status,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(serialize_with = "crate::infra::timefmt::serialize_opt_rfc3339")]
    pub updated_at: Option<SystemTime>,
    /// Since when the row has had its status (its first report, or the
    /// last change of status); None while initializing. Not in `/readyz`
    /// (the seed's shape); `tbot status` shows it.
    #[serde(skip)]
    pub since: Option<SystemTime>,
    /// The running instance of the service that may update this row.
    #[serde(skip)]
    pub instance: u64,
}

impl Entry {
    pub fn reported(&self) -> bool {
        self.updated_at.is_some()
    }
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    /// The last instance number handed out (see [`Health::instance`]).
    last_instance: u64,
}

impl Table {
    /// Every service but `except` has reported at least once.
    fn all_reported_but(&self, except: &str) -> bool {
        self.entries
            .iter()
            .all(|(name, e)| name == except || e.reported())
    }

    /// Adds (or resets) a row as `initializing`, for a fresh instance.
    fn insert_initializing(&mut self, name: &str, kind: &'static str) {
        self.last_instance += 1;
        self.entries.insert(
            name.to_string(),
            Entry {
                kind,
                status: Status::Initializing,
                reason: String::new(),
                updated_at: None,
                since: None,
                instance: self.last_instance,
            },
        );
    }
}

/// A point-in-time copy of (part of) the table, as the endpoints render it.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub status: Status,
    pub services: BTreeMap<String, Entry>,
}

impl Snapshot {
    fn of(entries: BTreeMap<String, Entry>) -> Snapshot {
        let status = overall(entries.values());
        Snapshot {
            status,
            services: entries,
        }
    }

    pub fn all_reported(&self) -> bool {
        self.services.values().all(Entry::reported)
    }
}

/// The overall status: `healthy` when every service is, else `unhealthy`
/// (a service still `initializing` makes it unhealthy), as upstream tbot's
/// readyz reports it; never `initializing` (each row keeps its own).
/// An empty set is healthy.
fn overall<'a>(mut entries: impl Iterator<Item = &'a Entry>) -> Status {
    if entries.all(|e| e.status == Status::Healthy) {
        Status::Healthy
    } else {
        Status::Unhealthy
    }
}

/// A callback run after each applied update and each change of rows (on
/// the thread that made it; it must not block).
pub type Listener = Box<dyn Fn() + Send>;

/// Shared handle on the table. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<Table>>,
    metrics: Arc<Metrics>,
    /// Called after every change (see [`Health::on_change`]).
    listeners: List<Listener>,
    /// One turn per update (or probe) the applier has taken.
    applier_beat: Beat,
}

impl Health {
    /// A table with every service registered as `initializing`.
    pub fn new<'a>(
        services: impl IntoIterator<Item = (&'a str, &'static str)>,
        metrics: Arc<Metrics>,
    ) -> Health {
        let mut table = Table::default();
        for (name, kind) in services {
            metrics.set_service_health(name, kind, Status::Initializing);
            table.insert_initializing(name, kind);
        }
        Health {
            inner: Arc::new(Mutex::new(table)),
            metrics,
            listeners: List::default(),
            applier_beat: Beat::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the table half-updated
        // (every update is a single insert, and a reload's row changes
        // cannot panic), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` after each change of the table (an applied update, on the
    /// applier thread; a reload's change of rows) for as long as the
    /// returned subscription is held. The one way to wait for a change:
    /// `f` wakes the waiter (a channel, tiny_http's unblock).
    #[must_use = "dropping the subscription ends it at once"]
    pub fn on_change(&self, f: impl Fn() + Send + 'static) -> Subscription<Listener> {
        self.listeners.add(Box::new(f))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::of(self.lock().entries.clone())
    }

    /// `None` when no service has that name.
    pub fn service(&self, name: &str) -> Option<Entry> {
        self.lock().entries.get(name).cloned()
    }

    /// The instance number of the service's current row: what its
    /// [`Update`]s must carry to be applied. `None` when no service has that name.
    pub fn instance(&self, name: &str) -> Option<u64> {
        self.lock().entries.get(name).map(|e| e.instance)
    }

    /// A reload's change to the set of rows, applied at once under the
    /// table's lock, so that no reader (`/readyz`, `/wait`, the heartbeat)
    /// ever sees half of it: `removed` rows go (with every metric series of
    /// theirs), `restarted` and `added` rows start over as `initializing`
    /// under a fresh instance number, so that a late update from a stopped
    /// instance is dropped rather than shown as the new one's.
    pub fn change_rows(&self, change: &RowChange) {
        let mut table = self.lock();
        for name in &change.removed {
            table.entries.remove(name);
            self.metrics.remove_service(name);
        }
        for (name, kind) in &change.restarted {
            // Same type: its loop's counters go on. Another type (the name
            // now names another service): every old series goes.
            if table.entries.get(name).is_some_and(|e| e.kind == *kind) {
                self.metrics.remove_service_health(name);
            } else {
                self.metrics.remove_service(name);
            }
            table.insert_initializing(name, kind);
            self.metrics
                .set_service_health(name, kind, Status::Initializing);
        }
        for (name, kind) in &change.added {
            table.insert_initializing(name, kind);
            self.metrics
                .set_service_health(name, kind, Status::Initializing);
        }
        drop(table);
        self.changed();
    }

    /// Runs the listeners.
    fn changed(&self) {
        self.listeners.for_each(|f| f());
    }

    /// Blocks until every service but `except` has reported at least once,
    /// `timeout`, or `stop` disconnects. Returns whether they all had. No
    /// timer: the waiter sleeps until a change ([`Health::on_change`]).
    pub fn wait_all_reported(&self, except: &str, timeout: Duration, stop: &Receiver<()>) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        // Capacity 1: a pending notice already says "look again".
        let (tx, changes) = crossbeam_channel::bounded::<()>(1);
        // Before the first look: a change after it is not missed.
        let _subscription = self.on_change(move || {
            let _ = tx.try_send(());
        });
        loop {
            if self.lock().all_reported_but(except) {
                return true;
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            crossbeam_channel::select! {
                recv(changes) -> _ => {}
                recv(stop) -> _ => return self.lock().all_reported_but(except),
                default(left) => {}
            }
        }
    }

    /// Applies one update. Returns true when the status or reason changed.
    fn apply(&self, u: Update) -> bool {
        let mut table = self.lock();
        let Some(entry) = table
            .entries
            .get_mut(&u.service)
            .filter(|e| e.instance == u.instance)
        else {
            // A service a reload has stopped (or restarted) may still have
            // had an update in the channel.
            log::debug(
                "health update from a stopped service instance ignored",
                &[("service", &u.service), ("instance", &u.instance)],
            );
            return false;
        };
        let changed = entry.status != u.status || entry.reason != u.reason;
        let first = entry.updated_at.is_none();
        let previous = entry.status;
        // The time of the service's last report, as in Go's tbot: a healthy
        // service that keeps reporting shows a recent time; one whose loop
        // has stalled shows an old one.
        let now = SystemTime::now();
        entry.updated_at = Some(now);
        if first || entry.status != u.status {
            entry.since = Some(now);
        }
        entry.status = u.status;
        entry.reason = u.reason.clone();
        let kind = entry.kind;
        drop(table);
        if changed || first {
            self.metrics.set_service_health(&u.service, kind, u.status);
            let fields: [(&str, &dyn log::Field); 4] = [
                ("service", &u.service),
                ("from", &previous.as_str()),
                ("to", &u.status.as_str()),
                ("reason", &u.reason),
            ];
            let n = if u.reason.is_empty() { 3 } else { 4 };
            match u.status {
                Status::Unhealthy => log::warn("service status changed", &fields[..n]),
                _ => log::info("service status changed", &fields[..n]),
            }
        }
        self.changed();
        changed
    }
}

/// What a reload changes in the table (see [`Health::change_rows`]): names,
/// and for new rows the service's `type`.
#[derive(Debug, Default)]
pub struct RowChange {
    pub removed: Vec<String>,
    pub restarted: Vec<(String, &'static str)>,
    pub added: Vec<(String, &'static str)>,
}

/// The one place updates are applied: run on its own thread until every
/// sender is gone.
pub struct Applier {
    pub health: Health,
    pub updates: Receiver<Update>,
}

impl Applier {
    pub fn run(self) {
        for u in self.updates.iter() {
            self.health.applier_beat.beat();
            if u.is_probe() {
                continue;
            }
            if u.status == Status::Unhealthy {
                // Tests wedge the applier here (`health-unhealthy=sleep:MS`).
                crate::infra::failpoints::hit("health-unhealthy");
            }
            self.health.apply(u);
        }
    }
}

/// The applier as the systemd watchdog watches it: every service report
/// passes through it, so while it turns, supervision and health reporting
/// work. A poke is a probe sent down the same channel as the reports (it
/// queues behind them and never blocks: the channel is unbounded).
pub fn watched(health: &Health, updates: &Sender<Update>) -> Watched {
    let updates = updates.clone();
    Watched {
        name: "health",
        beat: health.applier_beat.clone(),
        poke: Box::new(move || {
            let _ = updates.send(Update::probe());
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Health {
        let m = Arc::new(Metrics::new());
        Health::new([("a", "identity"), ("b", "heartbeat")], m)
    }

    fn report_healthy(h: &Health, name: &str) {
        h.apply(Update {
            instance: h.instance(name).unwrap(),
            service: name.into(),
            status: Status::Healthy,
            reason: String::new(),
        });
    }

    #[test]
    fn waiting_for_every_report_wakes_on_the_last_one_or_the_stop() {
        let h = table();
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        // "b" excepted: "a" is the one awaited.
        let waiter = {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                (
                    h.wait_all_reported("b", Duration::from_secs(60), &stop),
                    started.elapsed(),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        report_healthy(&h, "a");
        let (all, took) = waiter.join().unwrap();
        assert!(all);
        assert!(took < Duration::from_secs(30), "{took:?}");
        // Already true: at once.
        assert!(h.wait_all_reported("b", Duration::ZERO, &stop));
        // Not true: the timeout, or the stop.
        assert!(!h.wait_all_reported("", Duration::from_millis(20), &stop));
        let waiter = {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || h.wait_all_reported("", Duration::from_secs(60), &stop))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(stop_tx);
        assert!(!waiter.join().unwrap());
        // No listener is left behind.
        assert_eq!(h.listeners.len(), 0);
    }

    #[test]
    fn overall_status_follows_the_worst_service() {
        let h = table();
        assert_eq!(h.snapshot().status, Status::Unhealthy);
        assert_eq!(h.snapshot().services["a"].status, Status::Initializing);
        assert!(!h.snapshot().all_reported());
        h.apply(Update {
            instance: h.instance("a").unwrap(),
            service: "a".into(),
            status: Status::Healthy,
            reason: String::new(),
        });
        assert_eq!(h.snapshot().status, Status::Unhealthy);
        assert_eq!(h.snapshot().services["b"].status, Status::Initializing);
        h.apply(Update {
            instance: h.instance("b").unwrap(),
            service: "b".into(),
            status: Status::Healthy,
            reason: String::new(),
        });
        assert_eq!(h.snapshot().status, Status::Healthy);
        assert!(h.snapshot().all_reported());
        h.apply(Update {
            instance: h.instance("a").unwrap(),
            service: "a".into(),
            status: Status::Unhealthy,
            reason: "boom".into(),
        });
        let s = h.snapshot();
        assert_eq!(s.status, Status::Unhealthy);
        assert_eq!(s.services["a"].reason, "boom");
    }

    fn healthy(h: &Health, name: &str, instance: u64) -> bool {
        h.apply(Update {
            instance,
            service: name.into(),
            status: Status::Healthy,
            reason: String::new(),
        })
    }

    #[test]
    fn a_reload_changes_rows_at_once_and_drops_stale_updates() {
        let h = table();
        let (a0, b0) = (h.instance("a").unwrap(), h.instance("b").unwrap());
        assert!(healthy(&h, "a", a0));
        assert!(healthy(&h, "b", b0));
        h.change_rows(&RowChange {
            removed: vec!["b".into()],
            restarted: vec![("a".into(), "identity")],
            added: vec![("c".into(), "ssh-multiplexer")],
        });
        let s = h.snapshot();
        assert_eq!(s.services.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(s.services["a"].status, Status::Initializing);
        assert!(s.services["a"].updated_at.is_none());
        // The old instance of `a` and the removed `b` are not heard.
        assert!(!healthy(&h, "a", a0));
        assert!(!healthy(&h, "b", b0));
        assert_eq!(h.service("a").unwrap().status, Status::Initializing);
        assert!(h.service("b").is_none());
        assert!(healthy(&h, "a", h.instance("a").unwrap()));
        let text = String::from_utf8(h.metrics.render().unwrap()).unwrap();
        assert!(!text.contains("service=\"b\""), "{text}");
        assert!(text.contains("tbot_service_health{service=\"c\",status=\"initializing\",type=\"ssh-multiplexer\"} 1"), "{text}");
    }

    #[test]
    fn a_restart_keeps_a_loops_counters_unless_the_name_changed_type() {
        let h = table();
        let task = |name: &str| {
            h.metrics
                .task_finished(name, "output-renewal", false, 0.001)
        };
        task("a");
        task("b");
        h.change_rows(&RowChange {
            restarted: vec![("a".into(), "identity"), ("b".into(), "ssh-multiplexer")],
            ..RowChange::default()
        });
        let text = String::from_utf8(h.metrics.render().unwrap()).unwrap();
        assert!(
            text.contains("tbot_task_iterations_total{name=\"output-renewal\",service=\"a\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("service=\"b\",status=\"healthy\",type=\"heartbeat\""),
            "{text}"
        );
        assert!(
            !text.contains("name=\"output-renewal\",service=\"b\""),
            "{text}"
        );
        assert_eq!(h.service("b").unwrap().kind, "ssh-multiplexer");
    }

    #[test]
    fn probes_turn_the_applier_and_change_nothing() {
        let h = table();
        let (tx, rx) = crossbeam_channel::unbounded();
        let w = watched(&h, &tx);
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        let _subscription = h.on_change(move || {
            *s.lock().unwrap() += 1;
        });
        (w.poke)();
        (w.poke)();
        drop(tx);
        drop(w);
        Applier {
            health: h.clone(),
            updates: rx,
        }
        .run();
        assert_eq!(h.applier_beat.count(), 2);
        assert_eq!(*seen.lock().unwrap(), 0, "a probe is not a health change");
        assert!(!h.snapshot().all_reported());
    }

    #[test]
    fn a_listener_ends_with_its_subscription() {
        let h = table();
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (kept, once) = (calls.clone(), calls.clone());
        let _kept = h.on_change(move || {
            kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let dropped = h.on_change(move || {
            once.fetch_add(100, std::sync::atomic::Ordering::Relaxed);
        });
        h.changed();
        drop(dropped);
        h.changed();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 102);
        assert_eq!(h.listeners.len(), 1);
    }

    #[test]
    fn unknown_service_updates_are_ignored() {
        let h = table();
        assert!(!h.apply(Update {
            instance: 1,
            service: "zzz".into(),
            status: Status::Healthy,
            reason: String::new()
        }));
        assert!(h.service("zzz").is_none());
    }
}
