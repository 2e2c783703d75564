//! The internal `identity` service: the bot's own issuer. On start it loads
//! the CA key from storage, creating it when absent; it installs it as the
//! current CA (see `ca`), which lets the identity outputs issue. Then, every
//! `renewal_interval`, it reads the key again: `healthy` while it is usable,
//! `unhealthy` with the error otherwise (the last good CA stays in use). A
//! failed load is retried after a backoff (1 s, doubling, at most the
//! interval). Attempts count in the `tbot_task_*` metrics as task [`TASK`].

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::credentials::issuer::Issuer;
use crate::log;
use crate::services::ca::Installed;
use crate::services::identity::retry_delay;
use crate::services::{Context, Iteration, Service};

pub const TASK: &str = "ca-check";

pub struct BotIdentity {
    storage: PathBuf,
    interval: Duration,
}

impl BotIdentity {
    pub fn new(config: &Config) -> BotIdentity {
        BotIdentity {
            storage: config.storage.clone(),
            interval: config.renewal_interval,
        }
    }
}

/// Installs a freshly loaded CA, logs what changed and, when it did, tells
/// every identity output to re-issue. Shared with `ca-rotation`.
pub fn install(ctx: &Context, issuer: Issuer) {
    let fingerprint = issuer.fingerprint().to_string();
    let path = issuer.key_path().display().to_string();
    let generated = issuer.generated();
    let ca = &ctx.shared.ca;
    let changed = match ca.install(issuer) {
        Installed::Same => false,
        Installed::First => {
            log_first(&path, &fingerprint, generated);
            true
        }
        Installed::Rotated { previous } => {
            log::info(
                "the bot's CA key changed; re-issuing every identity output",
                &[
                    ("path", &path),
                    ("previous", &previous),
                    ("fingerprint", &fingerprint),
                ],
            );
            true
        }
    };
    if changed {
        ctx.shared.reissue.publish();
    }
    ca.mark_attempted();
}

/// The log lines for the CA's first use in this process: its key's `path`,
/// its `fingerprint`, and whether this process `generated` it. A generated key gets
/// "generated" and a warning that it is the trust root to back up; a key read
/// from storage gets "loaded". Shared with `tbot start --oneshot`.
pub fn log_first(path: &str, fingerprint: &str, generated: bool) {
    let fields: crate::log::Fields = &[("path", &path), ("fingerprint", &fingerprint)];
    if generated {
        log::info("the bot's CA was generated", fields);
        log::warn(
            "back up the CA key: it is the trust root of every certificate tbot issues \
             (servers that trust this CA accept what it signs); if it is lost, every server \
             must be given a new CA to trust",
            &[("path", &path)],
        );
    } else {
        log::info("the bot's CA is loaded", fields);
    }
}

impl Service for BotIdentity {
    fn kind(&self) -> &'static str {
        "identity"
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        let mut failures = 0u32;
        loop {
            let timer = Iteration::start(ctx, TASK);
            // Create the key only if none was ever loaded: a key that goes
            // missing later is an operator's problem to report, not to paper
            // over with a new CA nobody trusts.
            let loaded = if ctx.shared.ca.get().is_ok() {
                Issuer::load(&self.storage)
            } else {
                Issuer::load_or_create(&self.storage)
            };
            let delay = match loaded {
                Ok(issuer) => {
                    timer.succeeded();
                    install(ctx, issuer);
                    ctx.healthy();
                    failures = 0;
                    self.interval
                }
                Err(e) => {
                    timer.failed();
                    ctx.shared.ca.record_failure(&e);
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures, self.interval);
                    log::warn(
                        "the bot's CA is not usable; retrying",
                        &[
                            ("error", &e),
                            ("retry_in", &crate::infra::duration::format(delay)),
                        ],
                    );
                    ctx.unhealthy(e);
                    delay
                }
            };
            if !ctx.sleep(delay) {
                return Ok(());
            }
        }
    }
}
