//! `tbot start`: the health table, tbot's own threads, then the
//! configuration applied to an empty set (`reload::Current::apply`, the
//! same path a SIGHUP takes); then wait for signals: SIGHUP reloads,
//! SIGINT/SIGTERM stop everything in order. Between signals the main loop
//! starts the services that were waiting for a thread (see `supervisor`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::StartArgs;
use crate::config::Config;
use crate::health::{Applier, Health};
use crate::infra::bounded_read::{beside, DISK_BOUND};
use crate::infra::instance_lock::{Held, StorageLockError};
use crate::infra::signals::Signal;
use crate::infra::stop::Stop;
use crate::infra::{signals, systemd};
use crate::log::{self, Format};
use crate::metrics::Metrics;
use crate::reload::{Current, Ground, Readiness};
use crate::services::{Bus, Shared};
use crate::{diag, exit};

/// How long services get to stop after a signal before tbot exits anyway.
const STOP_GRACE: Duration = Duration::from_millis(1200);

pub fn start(args: StartArgs) -> i32 {
    log::configure(
        args.log_format.unwrap_or(Format::Text),
        args.debug == Some(true),
    );
    crate::infra::limits::log_raised();
    // (Tests: a panic of the main thread, whose line must not be lost.)
    crate::infra::failpoints::hit("daemon-start");
    let config = match crate::config::configure(&args) {
        Ok(c) => Arc::new(c),
        // A stop that cut the configuration's read short (a FIFO path that
        // nobody writes) is a clean stop, not a bad file.
        Err(_) if signals::stop_pending() => {
            return stopped_before_starting(&args, "reading the configuration");
        }
        Err(e) => {
            log::fatal(&e);
            return exit::USAGE;
        }
    };
    let _storage_lock = match prepare_storage(&args, &config) {
        Ok(held) => held,
        Err(code) => return code,
    };
    // On the main thread: it sets TMPDIR, which no other thread may read
    // meanwhile (its checks are access(2) calls on directories the lock
    // above has just reached).
    if let Some(dir) = crate::infra::fsutil::settle_temp_dir(&config.storage) {
        log::info(
            "the temporary directory is not writable; using this one (TMPDIR)",
            &[("directory", &dir.display())],
        );
    }
    if args.oneshot {
        // (The daemon's apply does this, at start as at each reload.)
        let by = Instant::now() + crate::services::readers::APPLY_WAIT;
        crate::services::readers::grant_passages_beside(&config, by);
        // Signals get their default action back: they end a oneshot.
        signals::unblock();
        return crate::oneshot::run(&config);
    }
    // Signals were blocked by main's first instruction: they reach
    // `signals::wait` only.
    match run(args, config) {
        Ok(()) => exit::OK,
        // A wait at start that a stop cut short (a name lookup): clean.
        Err(e) if signals::stop_pending() => {
            log::info(
                "stopped before starting",
                &[("signal", &"SIGTERM or SIGINT"), ("error", &e)],
            );
            exit::OK
        }
        Err(e) => {
            log::error("tbot failed", &[("error", &e)]);
            log::fatal(&e);
            exit::FAILURE
        }
    }
}

/// Refuses another user's storage directory and locks it (one tbot per
/// storage directory, daemon or --oneshot: held until exit), beside the
/// main thread within `DISK_BOUND` (see `beside`). Err: the exit code, the
/// reason already logged.
fn prepare_storage(args: &StartArgs, config: &Config) -> Result<Option<Held>, i32> {
    let storage = config.storage.clone();
    let command = crate::infra::owner::command_line();
    let prepared = beside("storage-owner", DISK_BOUND, move || {
        crate::infra::owner::refuse_foreign_storage(&storage, &command)
            .map_err(|e| (e, exit::USAGE))?;
        match crate::infra::instance_lock::lock_storage(&storage) {
            Ok(held) => Ok(Some(held)),
            Err(StorageLockError::InUse(e)) => {
                log::error("cannot start", &[("error", &e)]);
                Err((e, exit::FAILURE))
            }
            Err(StorageLockError::Unusable(e)) => {
                log::warn(
                    "cannot lock the storage directory; starting without the lock (the services using it will report the problem)",
                    &[("error", &e)],
                );
                Ok(None)
            }
        }
    });
    match prepared {
        Ok(Ok(held)) => Ok(held),
        Ok(Err((e, code))) => {
            log::fatal(&e);
            Err(code)
        }
        Err(_) if signals::stop_pending() => Err(stopped_before_starting(
            args,
            "preparing the storage directory",
        )),
        Err(e) => {
            log::fatal(&format!(
                "storage directory {}: {e}",
                config.storage.display()
            ));
            Err(exit::FAILURE)
        }
    }
}

/// A stop signal arrived while `during` (before any service started): a
/// clean stop for the daemon (exit 0); for a oneshot, whose 0 means every
/// output was issued, a failure (exit 1).
fn stopped_before_starting(args: &StartArgs, during: &str) -> i32 {
    let message = format!("stopped before starting: a stop signal arrived while {during}");
    if args.oneshot {
        log::fatal(&format!("{message}; no output was issued"));
        return exit::FAILURE;
    }
    log::info(&message, &[]);
    exit::OK
}

fn run(args: StartArgs, config: Arc<Config>) -> Result<(), String> {
    let metrics = Arc::new(Metrics::try_new().map_err(|e| format!("metrics: {e}"))?);
    // Empty: the first apply adds every row.
    let health = Health::new([], metrics.clone());
    let (updates_tx, updates_rx) = crossbeam_channel::unbounded();
    let applier = Applier {
        health: health.clone(),
        updates: updates_rx,
    };
    let applier = crate::infra::threads::spawn("health", move || applier.run())
        .map_err(|e| format!("health thread: {e}"))?;

    // tbot's own threads before any service's: a limit on threads that
    // the services reach leaves these running (and the services waiting).
    let (stopper, stop) = Stop::new();
    systemd::open_notify_socket();
    let diag_slots = diag::Slots::default();
    let mut watched = vec![crate::health::watched(&health, &updates_tx)];
    watched.extend(diag_slots.watched());
    systemd::watchdog::start(watched, stop.receiver())?;
    let readiness: Readiness = Default::default();
    // Opened (disconnected) once the first apply has worked: until then
    // the table is empty, and nothing is said to systemd. A failed apply
    // fires the stop first, so that these threads end saying nothing.
    let (applied, first_apply) = crossbeam_channel::bounded::<()>(0);
    systemd::status::start(&health, stop.receiver(), &first_apply)?;
    let notifier = notify_ready(health.clone(), stop, readiness.clone(), first_apply)?;

    let shared = Arc::new(Shared {
        health,
        metrics,
        reissue: Bus::default(),
        ca: Default::default(),
    });
    let mut current = Current::new(Ground {
        args,
        diag_slots,
        shared,
        updates: updates_tx,
        readiness,
        stop_grace: STOP_GRACE,
    });
    // Start is an apply to the empty set. A failure (the diagnostics
    // address is busy, say) has changed nothing: tbot exits.
    if let Err(e) = current.apply(Arc::unwrap_or_clone(config)) {
        drop(stopper);
        return Err(e);
    }
    drop(applied);
    let (services, waiting) = current.counts();
    log::info(
        "tbot started",
        &[
            ("version", &crate::build_info::VERSION),
            ("revision", &crate::build_info::REVISION),
            ("services", &services),
            ("waiting_for_a_thread", &waiting),
        ],
    );

    let signal = loop {
        let timeout = current
            .next_retry()
            .map(|t| t.saturating_duration_since(Instant::now()));
        match signals::wait_timeout(timeout) {
            Some(Signal::Reload) => current.on_sighup(),
            Some(Signal::Stop(name)) => break name,
            None => current.retry_waiting(),
        }
    };
    log::info("stopping", &[("signal", &signal)]);
    systemd::stopping(signal);
    // The readiness notifier, the watchdog and the status line end with it.
    drop(stopper);
    shut_down(current, notifier, applier);
    log::info("stopped", &[]);
    Ok(())
}

/// After the stop signal: the services (within [`STOP_GRACE`]), the
/// readiness notifier, the diagnostics service, then the health applier
/// (which ends once every sender of updates is gone with `current`).
fn shut_down(
    mut current: Current,
    notifier: std::thread::JoinHandle<()>,
    applier: std::thread::JoinHandle<()>,
) {
    current.stop_all(Instant::now() + STOP_GRACE);
    let _ = notifier.join();
    current.stop_diag();
    drop(current);
    // It ends once every sender of updates is gone; a service that did not
    // stop in time still holds one, so it is joined only if it has ended.
    if applier.is_finished() && applier.join().is_err() {
        log::error("the health applier thread panicked", &[]);
    }
}

/// Sends `READY=1` once the first apply is done (`first_apply`
/// disconnects) and every service has reported (and records that it did,
/// for reloads); gives up at `stop`.
fn notify_ready(
    health: Health,
    stop: Stop,
    readiness: Readiness,
    first_apply: crossbeam_channel::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>, String> {
    crate::infra::threads::spawn("sd-notify", move || {
        crossbeam_channel::select! {
            recv(first_apply) -> _ => {}
            recv(stop.receiver()) -> _ => return,
        }
        while !stop.is_set() {
            if health.wait_all_reported("", Duration::from_secs(3600), stop.receiver()) {
                // Under the lock: a reload in progress finishes first.
                let mut ready = readiness.lock().unwrap_or_else(|p| p.into_inner());
                log::info("every service has reported", &[]);
                systemd::notify("READY=1");
                *ready = true;
                return;
            }
        }
    })
    .map_err(|e| format!("sd-notify thread: {e}"))
}
