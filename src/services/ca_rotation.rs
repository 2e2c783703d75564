//! The internal `ca-rotation` service: notices when an operator replaces the
//! CA key file and has every identity output re-issue at once.
//!
//! Every [`POLL`] it `stat`s the key file (cheap); only when the stamp
//! differs from the version last read does it load the key and compare
//! fingerprints (see `issuer`). A new fingerprint becomes the current CA and
//! a notice goes out on the reissue bus. A missing or unreadable key — or a
//! half-written one — makes it `unhealthy` with the error and it tries again
//! at the next poll; the last good CA stays in use meanwhile.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::issuer::{ca_key_stamp, Issuer, KeyFileStamp};
use crate::services::{Context, Iteration, Service};

/// How often the key file is checked: a rotation is picked up well within 2 s.
pub const POLL: Duration = Duration::from_millis(250);
pub const TASK: &str = "ca-reload";

pub struct CaRotation {
    storage: PathBuf,
}

impl CaRotation {
    pub fn new(config: &Config) -> CaRotation {
        CaRotation {
            storage: config.storage.clone(),
        }
    }

    /// One poll. `seen` is the stamp of the key version last loaded
    /// successfully; it is cleared on failure so that the next poll loads
    /// again whatever the stamp says.
    fn check(&self, ctx: &Context, seen: &mut Option<KeyFileStamp>) -> Result<(), String> {
        let stamp = ca_key_stamp(&self.storage).inspect_err(|_| *seen = None)?;
        if *seen == Some(stamp) {
            return Ok(());
        }
        let timer = Iteration::start(ctx, TASK);
        match Issuer::load(&self.storage) {
            Ok(issuer) => {
                timer.succeeded();
                *seen = Some(issuer.stamp());
                super::bot_identity::install(ctx, issuer);
                Ok(())
            }
            Err(e) => {
                timer.failed();
                *seen = None;
                Err(e)
            }
        }
    }
}

impl Service for CaRotation {
    fn kind(&self) -> &'static str {
        "ca-rotation"
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        // The internal `identity` service creates the key on first start:
        // watch only once it has tried.
        crossbeam_channel::select! {
            recv(ctx.shared.ca.attempted()) -> _ => {},
            recv(ctx.stop()) -> _ => return Ok(()),
        }
        let mut seen = ctx.shared.ca.get().ok().map(|i| i.stamp());
        let mut reported: Option<Result<(), String>> = None;
        loop {
            if ctx.stopping() {
                return Ok(());
            }
            let now = self.check(ctx, &mut seen);
            if reported.as_ref() != Some(&now) {
                match &now {
                    Ok(()) => ctx.healthy(),
                    Err(e) => {
                        crate::log::warn(
                            "the bot's CA key is missing or unreadable",
                            &[("error", e)],
                        );
                        ctx.unhealthy(e.clone());
                    }
                }
                reported = Some(now);
            }
            if !ctx.sleep(POLL) {
                return Ok(());
            }
        }
    }
}
