//! The internal `heartbeat` service: once every other service has reported
//! (or 30 s have passed), and then every `heartbeat_interval`, it writes a
//! record of the bot and its services to `storage/heartbeat.json`,
//! atomically.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::infra::atomic_file::parent_dir;
use crate::infra::timefmt;
use crate::services::{Context, Service};

/// The heartbeat file's name in the storage directory.
pub const FILE: &str = "heartbeat.json";
pub const FIRST_REPORT_WAIT: Duration = Duration::from_secs(30);

pub struct Heartbeat {
    path: PathBuf,
    interval: Duration,
    started: Instant,
}

impl Heartbeat {
    pub fn new(config: &Config) -> Heartbeat {
        // The daemon's start, not this service's: a reload that changes
        // `heartbeat_interval` builds a new one, and the uptime goes on.
        static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        Heartbeat {
            path: config.storage.join(FILE),
            interval: config.heartbeat_interval,
            started: *STARTED.get_or_init(Instant::now),
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    hostname: String,
    pid: u32,
    uptime_seconds: u64,
    version: &'a str,
    services: Vec<ServiceRecord>,
}

#[derive(Serialize)]
struct ServiceRecord {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

impl Heartbeat {
    fn write(&self, ctx: &Context) -> Result<(), String> {
        let snap = ctx.shared.health.snapshot();
        let record = Record {
            time: timefmt::rfc3339(SystemTime::now()),
            hostname: crate::infra::host::hostname(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
            services: snap
                .services
                .into_iter()
                .map(|(name, e)| {
                    // Its own entry is this write's: once the record is on
                    // disk, the heartbeat has worked (the table still holds
                    // its report from before, `initializing` at first).
                    let own = name == ctx.name();
                    ServiceRecord {
                        kind: e.kind,
                        status: if own { "healthy" } else { e.status.as_str() },
                        reason: if own { String::new() } else { e.reason },
                        name,
                    }
                })
                .collect(),
        };
        let mut body =
            serde_json::to_vec_pretty(&record).map_err(|e| format!("encoding heartbeat: {e}"))?;
        body.push(b'\n');
        if let Some(dir) = self.path.parent() {
            crate::infra::fsutil::create_private_dir(dir)?;
        }
        crate::infra::atomic_file::write_atomic(&self.path, &body, 0o600)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

impl Service for Heartbeat {
    fn kind(&self) -> &'static str {
        "heartbeat"
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        crate::infra::failpoints::hit("heartbeat-start");
        // Only this service writes the file: temps at start are a killed
        // write's.
        crate::infra::atomic_file::remove_stale_temps(parent_dir(&self.path), &[FILE]);
        ctx.shared
            .health
            .wait_all_reported(ctx.name(), FIRST_REPORT_WAIT, ctx.stop());
        loop {
            if ctx.stopping() {
                return Ok(());
            }
            crate::infra::failpoints::hit("heartbeat");
            let timer = crate::services::Iteration::start(ctx, "heartbeat");
            match self.write(ctx) {
                Ok(()) => {
                    timer.succeeded();
                    ctx.healthy()
                }
                Err(e) => {
                    timer.failed();
                    ctx.unhealthy(e)
                }
            }
            if !ctx.sleep(self.interval) {
                return Ok(());
            }
        }
    }
}
