//! `tbot start`: configuration → services → health table → diagnostics,
//! then wait for signals: SIGHUP reloads (see `reload`), SIGINT/SIGTERM stop
//! everything in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::StartArgs;
use crate::config::Config;
use crate::health::{Applier, Health};
use crate::infra::instance_lock::StorageLockError;
use crate::infra::signals::Signal;
use crate::infra::{signals, systemd};
use crate::log::{self, Format};
use crate::metrics::Metrics;
use crate::reload::{Live, Readiness};
use crate::services::{self, Bus, Shared};
use crate::{diag, exit, supervisor};

/// How long services get to stop after a signal before tbot exits anyway.
const STOP_GRACE: Duration = Duration::from_millis(1200);

pub fn start(args: StartArgs) -> i32 {
    log::configure(
        args.log_format.unwrap_or(Format::Text),
        args.debug == Some(true),
    );
    crate::infra::limits::log_raised();
    let config = match crate::config::configure(&args) {
        Ok(c) => Arc::new(c),
        // A stop that cut the configuration's read short (a FIFO path that
        // nobody writes) is a clean stop, not a bad file.
        Err(_) if signals::stop_pending() => {
            log::info(
                "stopped before starting: a stop signal arrived while reading the configuration",
                &[],
            );
            return exit::OK;
        }
        Err(e) => {
            log::fatal(&e);
            return exit::USAGE;
        }
    };
    // Never as another user than the storage's owner (root included).
    let command = crate::infra::owner::command_line();
    if let Err(e) = crate::infra::owner::refuse_foreign_storage(&config.storage, &command) {
        log::fatal(&e);
        return exit::USAGE;
    }
    // One tbot per storage directory, daemon or --oneshot: held until exit.
    let _storage_lock = match crate::infra::instance_lock::lock_storage(&config.storage) {
        Ok(held) => Some(held),
        Err(StorageLockError::InUse(e)) => {
            log::error("cannot start", &[("error", &e)]);
            log::fatal(&e);
            return exit::FAILURE;
        }
        Err(StorageLockError::Unusable(e)) => {
            log::warn(
                "cannot lock the storage directory; starting without the lock (the services using it will report the problem)",
                &[("error", &e)],
            );
            None
        }
    };
    if let Some(dir) = crate::infra::fsutil::settle_temp_dir(&config.storage) {
        log::info(
            "the temporary directory is not writable; using this one (TMPDIR)",
            &[("directory", &dir.display())],
        );
    }
    crate::services::readers::grant_passages(&config);
    if args.oneshot {
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

fn run(args: StartArgs, config: Arc<Config>) -> Result<(), String> {
    let metrics = Arc::new(Metrics::try_new().map_err(|e| format!("metrics: {e}"))?);
    let specs = services::build(&config);
    let health = Health::new(
        specs.iter().map(|s| (s.name.as_str(), s.service.kind())),
        metrics.clone(),
    );

    // The port first: a busy or bad address stops tbot before any service
    // has touched the disk.
    let listener = match &config.diag_addr {
        Some(addr) => Some(diag::bind(addr)?),
        None => None,
    };

    let (updates_tx, updates_rx) = crossbeam_channel::unbounded();
    let applier = Applier {
        health: health.clone(),
        updates: updates_rx,
    };
    let applier = crate::infra::threads::spawn("health", move || applier.run())
        .map_err(|e| format!("health thread: {e}"))?;
    // For the watchdog: whichever diagnostics service is current.
    let diag_slots = diag::Slots::default();
    let diag = start_diag(listener, &config, &health, &metrics, &diag_slots)?;

    let shared = Arc::new(Shared {
        health: health.clone(),
        metrics: metrics.clone(),
        reissue: Bus::default(),
        ca: Default::default(),
    });
    let running = supervisor::start(specs, &updates_tx, &shared)
        .map_err(|e| format!("starting services: {e}"))?;
    // Stopped by dropping `stop_tx` (the readiness notifier, the watchdog
    // and the status line all end with it).
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let mut watched = vec![crate::health::watched(&health, &updates_tx)];
    watched.extend(diag_slots.watched());
    systemd::watchdog::start(watched, &stop_rx)?;
    systemd::status::start(&health, &stop_rx)?;
    log::info(
        "tbot started",
        &[
            ("version", &crate::build_info::VERSION),
            ("revision", &crate::build_info::REVISION),
            ("services", &running.len()),
        ],
    );

    let readiness: Readiness = Default::default();
    let notifier = notify_ready(health.clone(), stop_rx, readiness.clone())?;
    let mut live = Live {
        args,
        config,
        running,
        diag,
        diag_slots,
        health,
        metrics,
        shared,
        updates: updates_tx,
        readiness,
        stop_grace: STOP_GRACE,
    };

    let signal = loop {
        match signals::wait() {
            Signal::Reload => live.on_sighup(),
            Signal::Stop(name) => break name,
        }
    };
    log::info("stopping", &[("signal", &signal)]);
    systemd::stopping(signal);
    drop(stop_tx);
    shut_down(live, notifier, applier);
    log::info("stopped", &[]);
    Ok(())
}

/// The local debug socket (`debug_socket:`, else `<storage>/debug.sock`).
/// One that cannot be made is a warning, not a failed start: tbot's work
/// does not depend on it (a storage directory tbot cannot write is its
/// services' to report).
fn bind_debug_socket(config: &Config) -> Option<diag::debug_socket::DebugSocket> {
    match diag::debug_socket::bind(&config.debug_socket) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn(
                "no debug socket: tbot status and tbot debug will not reach this bot",
                &[("error", &e)],
            );
            None
        }
    }
}

/// The diagnostics service on `listener` (None: no `diag_addr`) and the
/// debug socket (neither: none runs), watched through `slots`.
fn start_diag(
    listener: Option<std::net::TcpListener>,
    config: &Config,
    health: &Health,
    metrics: &Arc<Metrics>,
    slots: &diag::Slots,
) -> Result<Option<diag::Diag>, String> {
    let l = diag::Listeners {
        tcp: listener,
        local: bind_debug_socket(config),
    };
    if l.tcp.is_none() && l.local.is_none() {
        return Ok(None);
    }
    let options = diag::Options {
        max_connections: config.diag_max_connections,
        debug: config.debug,
    };
    diag::start(l, options, health.clone(), metrics.clone(), slots).map(Some)
}

/// After the stop signal: the services (within [`STOP_GRACE`]), the
/// readiness notifier, the diagnostics service, then the health applier
/// (which ends once every sender of updates is gone with `live`).
fn shut_down(
    mut live: Live,
    notifier: std::thread::JoinHandle<()>,
    applier: std::thread::JoinHandle<()>,
) {
    live.stop_all(Instant::now() + STOP_GRACE);
    let _ = notifier.join();
    if let Some(d) = live.diag.take() {
        d.shutdown();
    }
    drop(live);
    // It ends once every sender of updates is gone; a service that did not
    // stop in time still holds one, so it is joined only if it has ended.
    if applier.is_finished() && applier.join().is_err() {
        log::error("the health applier thread panicked", &[]);
    }
}

/// Sends `READY=1` once every service has reported (and records that it
/// did, for reloads); gives up when `stop` disconnects.
fn notify_ready(
    health: Health,
    stop: crossbeam_channel::Receiver<()>,
    readiness: Readiness,
) -> Result<std::thread::JoinHandle<()>, String> {
    crate::infra::threads::spawn("sd-notify", move || {
        let stopping = || {
            matches!(
                stop.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            )
        };
        while !stopping() {
            if health.wait_all_reported("", Duration::from_secs(3600), &stop) {
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
