//! The user service `identity`: one identity output. It keeps a fresh
//! ed25519 key pair and user certificate from the bot's CA in its destination
//! directory (`key`, `key.pub`, `key-cert.pub`, `ssh_ca.pub`, see
//! `identity_files`).
//!
//! It issues at start, then every `renewal_interval`, and at once when
//! `ca-rotation` announces a new CA on the reissue bus. A failed attempt
//! makes it `unhealthy` with the error and it tries again after a backoff
//! (1 s, doubling, at most the renewal interval) without leaving its loop;
//! the first success makes it `healthy` again. Every attempt is counted in
//! the `tbot_task_*` metrics as task [`TASK`].

use std::time::{Duration, SystemTime};

use crossbeam_channel::Receiver;

use crate::config::IdentityConfig;
use crate::issuer::Issuer;
use crate::services::{Context, Iteration, Service};
use crate::{identity_files, log, timefmt};

/// The `name` label of this service's `tbot_task_*` metrics.
pub const TASK: &str = "output-renewal";
/// The first retry delay after a failure; it doubles up to the renewal interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

pub struct IdentityOutput {
    config: IdentityConfig,
    key_id: String,
    /// Subscribed once, so that a supervisor restart keeps the subscription.
    reissue: Option<Receiver<()>>,
}

impl IdentityOutput {
    pub fn new(config: IdentityConfig) -> IdentityOutput {
        let key_id = key_id(&crate::services::heartbeat::hostname(), &config.name);
        IdentityOutput {
            config,
            key_id,
            reissue: None,
        }
    }
}

/// The certificate's key id: names the bot (by host) and the output.
pub fn key_id(hostname: &str, service: &str) -> String {
    format!("tbot/{hostname}/{service}")
}

/// How long to wait before retrying after `failures` failures in a row
/// (1 s, 2 s, 4 s …, never more than `cap`).
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(cap)
}

/// Issues a credential for `config` from `issuer` and writes it to the
/// destination. Returns the certificate's expiry.
pub fn issue_to(
    config: &IdentityConfig,
    issuer: &Issuer,
    key_id: &str,
) -> Result<SystemTime, String> {
    let cred = issuer.issue(&config.principals, key_id, config.credential_ttl)?;
    identity_files::write_identity(&config.destination, &cred, &issuer.ca_public_openssh())?;
    Ok(cred.valid_before)
}

enum Wake {
    Timer,
    Reissue,
    Stop,
}

/// Waits `d`, or less when a reissue notice comes or tbot stops.
fn wait(ctx: &Context, reissue: &Receiver<()>, d: Duration) -> Wake {
    crossbeam_channel::select! {
        recv(ctx.stop()) -> _ => Wake::Stop,
        recv(reissue) -> msg => match msg {
            Ok(()) => Wake::Reissue,
            // The bus is gone (teardown): plain sleep.
            Err(_) => if ctx.sleep(d) { Wake::Timer } else { Wake::Stop },
        },
        default(d) => Wake::Timer,
    }
}

impl IdentityOutput {
    /// One attempt: the current CA, a new credential, the files.
    fn renew(&self, ctx: &Context) -> Result<(SystemTime, String), String> {
        let issuer = ctx.shared.ca.get()?;
        let valid_before = issue_to(&self.config, &issuer, &self.key_id)?;
        Ok((valid_before, issuer.fingerprint().to_string()))
    }
}

impl Service for IdentityOutput {
    fn kind(&self) -> &'static str {
        "identity"
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        let reissue = self
            .reissue
            .get_or_insert_with(|| ctx.shared.reissue.subscribe())
            .clone();
        // Before the first attempt, wait for the internal `identity` service
        // to have tried loading the CA.
        crossbeam_channel::select! {
            recv(ctx.shared.ca.attempted()) -> _ => {},
            recv(ctx.stop()) -> _ => return Ok(()),
        }
        // This service owns its destination: no other writer is running.
        identity_files::remove_stale_temps(&self.config.destination);
        let mut failures = 0u32;
        let mut healthy = false;
        loop {
            if ctx.stopping() {
                return Ok(());
            }
            // This attempt uses the current CA: notices so far are answered.
            while reissue.try_recv().is_ok() {}
            let timer = Iteration::start(ctx, TASK);
            let delay = match self.renew(ctx) {
                Ok((valid_before, ca)) => {
                    timer.succeeded();
                    let fields: crate::log::Fields = &[
                        ("service", &ctx.name()),
                        ("destination", &self.config.destination.display()),
                        ("valid_before", &timefmt::rfc3339(valid_before)),
                        ("ca", &ca),
                    ];
                    if healthy {
                        log::debug("identity output renewed", fields);
                    } else {
                        log::info("identity output written", fields);
                    }
                    ctx.healthy();
                    healthy = true;
                    failures = 0;
                    self.config.renewal_interval
                }
                Err(e) => {
                    timer.failed();
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures, self.config.renewal_interval);
                    log::warn(
                        "identity output failed; retrying",
                        &[
                            ("service", &ctx.name()),
                            ("error", &e),
                            ("retry_in", &crate::duration::format(delay)),
                        ],
                    );
                    ctx.unhealthy(e);
                    healthy = false;
                    delay
                }
            };
            match wait(ctx, &reissue, delay) {
                Wake::Stop => return Ok(()),
                Wake::Reissue => log::info(
                    "the bot's CA changed; re-issuing now",
                    &[("service", &ctx.name())],
                ),
                Wake::Timer => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_one_second_up_to_the_cap() {
        let cap = Duration::from_secs(20 * 60);
        let got: Vec<u64> = (1..=12).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1200]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        // A renewal interval under a second caps every retry.
        let fast = Duration::from_millis(100);
        assert_eq!(retry_delay(1, fast), fast);
        assert_eq!(retry_delay(5, fast), fast);
    }

    #[test]
    fn key_id_names_bot_and_service() {
        assert_eq!(key_id("web-1", "my-output"), "tbot/web-1/my-output");
    }
}
