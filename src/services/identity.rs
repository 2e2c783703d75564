//! The user service `identity`: one identity output. It keeps a fresh
//! ed25519 key pair and user certificate from the bot's CA in its destination
//! directory (`key`, `key.pub`, `key-cert.pub`, `ssh_ca.pub`, see
//! `identity_files`).
//!
//! It issues at start, then every `renewal_interval` of wall-clock time,
//! and at once when `ca-rotation` announces a new CA on the reissue bus, when
//! the certificate it wrote expires, or when a wall-clock step (see
//! `clock_step`) leaves it expired or not yet valid. It is `healthy` only
//! while that certificate is valid now (`valid_after <= now < valid_before`):
//! an expired or not-yet-valid one is reported at once, with the reason.
//! `tbot_identity_certificate_expiry_timestamp_seconds{service}` gives its
//! `valid_before`, `..._valid_after_timestamp_seconds` its `valid_after`
//! and `..._renewal_timestamp_seconds` when this service is due to replace
//! it (the expiry alerts judge it against its own lifetime; the series are
//! removed when the service stops).
//!
//! A failed attempt makes it `unhealthy` with the error (and, when the
//! certificate on disk is no longer valid, that first) and it tries again
//! after a backoff (1 s, doubling, at most the renewal interval) without
//! leaving its loop; the first success makes it `healthy` again. Every attempt is counted in
//! the `tbot_task_*` metrics as task [`TASK`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;

use crate::config::IdentityConfig;
use crate::credentials::identity_files;
use crate::credentials::issuer::Issuer;
use crate::infra::backoff::Backoff;
use crate::infra::deep_work;
use crate::infra::timefmt;
use crate::log;
use crate::metrics::series::CertificateTimes;
use crate::services::readers::{Layout, Readers};
use crate::services::{Context, Iteration, Notices, Service};

/// The `name` label of this service's `tbot_task_*` metrics.
pub const TASK: &str = "output-renewal";
/// The first retry delay after a failure; it doubles up to the renewal interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

pub struct IdentityOutput {
    config: IdentityConfig,
    key_id: String,
    /// Subscribed once, so that a supervisor restart keeps the subscription;
    /// it leaves the bus with the service.
    reissue: Option<Notices>,
    /// The destination's readers, which a reload may replace.
    readers: Readers,
}

impl IdentityOutput {
    pub fn new(config: IdentityConfig) -> IdentityOutput {
        let key_id = key_id(&crate::infra::host::hostname(), &config.name);
        let readers = readers_of(&config);
        IdentityOutput {
            config,
            key_id,
            reissue: None,
            readers,
        }
    }
}

/// The readers of `config`'s destination, as configured.
fn readers_of(config: &IdentityConfig) -> Readers {
    Readers::new(
        &config.name,
        config.access.clone(),
        Layout::Identity(config.destination.clone()),
    )
}

/// The certificate's key id: names the bot (by host) and the output.
pub fn key_id(hostname: &str, service: &str) -> String {
    format!("tbot/{hostname}/{service}")
}

/// How long to wait before retrying after `failures` failures in a row
/// (1 s, 2 s, 4 s …, never more than `cap`).
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    Backoff {
        first: FIRST_RETRY,
        max: cap,
    }
    .delay(failures)
}

/// Issues a credential for `config` from `issuer` and writes it to the
/// destination. Returns the certificate's expiry.
pub fn issue_to(
    config: &IdentityConfig,
    issuer: &Issuer,
    key_id: &str,
) -> Result<SystemTime, String> {
    issue_validity(config, issuer, key_id, &readers_of(config), false).map(|v| v.valid_before)
}

/// The validity window of the certificate an output wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
}

impl Validity {
    /// Why the certificate is not valid at `now` (OpenSSH accepts it while
    /// `valid_after <= now < valid_before`), or None while it is.
    pub fn problem(&self, now: SystemTime) -> Option<String> {
        if now < self.valid_after {
            Some(format!(
                "certificate not valid until {} (now {}; the clock was stepped back?)",
                timefmt::rfc3339(self.valid_after),
                timefmt::rfc3339(now)
            ))
        } else if now >= self.valid_before {
            Some(format!(
                "certificate expired at {} (now {})",
                timefmt::rfc3339(self.valid_before),
                timefmt::rfc3339(now)
            ))
        } else {
            None
        }
    }
}

/// Issues and writes a credential; `clean`: remove an interrupted write's
/// leftovers first (see `identity_files::write_identity`).
fn issue_validity(
    config: &IdentityConfig,
    issuer: &Issuer,
    key_id: &str,
    readers: &Readers,
    clean: bool,
) -> Result<Validity, String> {
    let cred = issuer.issue(&config.principals, key_id, config.credential_ttl)?;
    identity_files::write_identity(
        &config.destination,
        &cred,
        &issuer.ca_public_openssh(),
        &mut readers.lock(),
        clean,
    )?;
    Ok(Validity {
        valid_after: cred.valid_after,
        valid_before: cred.valid_before,
    })
}

enum Wake {
    Timer,
    /// A refusal of a reload's readers was cleared: report again.
    Readers,
    Reissue,
    ClockStep,
    Stop,
}

/// Waits until the wall-clock time `until`, or less when a reissue notice
/// comes, the wall clock is stepped or tbot stops.
fn wait(
    ctx: &Context,
    (reissue, steps, readers): (&Receiver<()>, &Receiver<()>, &Receiver<()>),
    until: SystemTime,
) -> Wake {
    let d = until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    crossbeam_channel::select! {
        recv(ctx.stop()) -> _ => Wake::Stop,
        recv(reissue) -> msg => match msg {
            Ok(()) => Wake::Reissue,
            // The bus is gone (teardown): plain sleep.
            Err(_) => if ctx.sleep(d) { Wake::Timer } else { Wake::Stop },
        },
        recv(steps) -> _ => Wake::ClockStep,
        recv(readers) -> _ => Wake::Readers,
        default(d) => Wake::Timer,
    }
}

/// What the loop knows: the certificate on disk and the last attempt.
struct State {
    /// What an interrupted write left in the destination is still to be
    /// removed (this run has not yet had a deep-work job): the next job
    /// does it before anything else.
    clean: bool,
    held: Option<Validity>,
    /// The last attempt's error; None after a success.
    error: Option<String>,
    failures: u32,
    /// Wall-clock time of the next renewal (or retry).
    next_attempt: SystemTime,
}

impl IdentityOutput {
    /// One attempt: the current CA, a new credential, the files. The
    /// credential and the files are made on a shared deep-work thread (see
    /// `infra::deep_work`): their stack depth and freed blocks would
    /// otherwise stay with every identity service's thread for good, and
    /// at most `deep_work::WORKERS` attempts run at once, whatever the
    /// number of outputs. The first job of a run also removes what an
    /// interrupted write left (`st.clean`), before it writes: one job, one
    /// hand-over, where a start used to take two. None: tbot stopped the
    /// service before the attempt began.
    fn renew(&self, ctx: &Context, st: &mut State) -> Option<Result<(Validity, String), String>> {
        let issuer = match ctx.shared.ca.get() {
            Ok(i) => i,
            Err(e) => {
                if std::mem::take(&mut st.clean) {
                    let dest = self.config.destination.clone();
                    deep_work::run(ctx.name(), ctx.stop(), move || {
                        identity_files::remove_stale_temps(&dest)
                    })?;
                }
                return Some(Err(e));
            }
        };
        let (config, key_id) = (self.config.clone(), self.key_id.clone());
        let readers = self.readers.clone();
        let clean = std::mem::take(&mut st.clean);
        deep_work::run(ctx.name(), ctx.stop(), move || {
            issue_validity(&config, &issuer, &key_id, &readers, clean)
                .map(|v| (v, issuer.fingerprint().to_string()))
        })
    }

    /// Renews now and records the outcome in `st` (and the logs and
    /// metrics). False: tbot stopped the service before the attempt began.
    fn attempt(&self, ctx: &Context, st: &mut State) -> bool {
        // This attempt uses the current CA: notices so far are answered.
        if let Some(r) = &self.reissue {
            while r.receiver().try_recv().is_ok() {}
        }
        let timer = Iteration::start(ctx, TASK);
        let Some(result) = self.renew(ctx, st) else {
            return false;
        };
        let now = SystemTime::now();
        match result {
            Ok((v, ca)) => {
                timer.succeeded();
                let fields: crate::log::Fields = &[
                    ("service", &ctx.name()),
                    ("destination", &self.config.destination.display()),
                    ("valid_before", &timefmt::rfc3339(v.valid_before)),
                    ("ca", &ca),
                ];
                if st.error.is_none() && st.held.is_some() {
                    log::debug("identity output renewed", fields);
                } else {
                    log::info("identity output written", fields);
                }
                st.held = Some(v);
                st.error = None;
                self.readers.succeeded();
                st.failures = 0;
                st.next_attempt = now + self.config.renewal_interval;
                let unix = |t: SystemTime| {
                    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                    d.as_secs_f64()
                };
                let times = CertificateTimes {
                    valid_after: unix(v.valid_after),
                    valid_before: unix(v.valid_before),
                    renew_at: unix(st.next_attempt),
                };
                ctx.shared.metrics.set_certificate(ctx.name(), times);
            }
            Err(e) => {
                timer.failed();
                st.failures = st.failures.saturating_add(1);
                let delay = retry_delay(st.failures, self.config.renewal_interval);
                log::warn(
                    "identity output failed; retrying",
                    &[
                        ("service", &ctx.name()),
                        ("error", &e),
                        ("retry_in", &crate::infra::duration::format(delay)),
                    ],
                );
                st.error = Some(e);
                st.next_attempt = now + delay;
            }
        }
        true
    }

    /// Reports the truth: healthy only while the certificate on disk is
    /// valid now and the last attempt succeeded.
    fn report(&self, ctx: &Context, st: &State, now: SystemTime) {
        let problem = st.held.and_then(|v| v.problem(now)).map(|p| {
            format!(
                "{}: {p}",
                self.config
                    .destination
                    .join(identity_files::CERT_FILE)
                    .display()
            )
        });
        match (problem, &st.error) {
            (Some(p), Some(e)) => ctx.unhealthy(format!("{p}; renewing failed: {e}")),
            (Some(p), None) => ctx.unhealthy(p),
            (None, Some(e)) => ctx.unhealthy(e.clone()),
            // A reload's readers refused under `acls: required`.
            (None, None) => match self.readers.refusal() {
                Some(r) => ctx.unhealthy(r),
                None => ctx.healthy(),
            },
        }
    }
}

/// Whether to renew now: the time has come, or the certificate is not
/// valid now and the last attempt did not just fail (a failure waits for
/// its retry time).
fn due(st: &State, now: SystemTime) -> bool {
    let invalid = st.held.is_some_and(|v| v.problem(now).is_some());
    now >= st.next_attempt || (invalid && st.error.is_none())
}

impl Service for IdentityOutput {
    fn kind(&self) -> &'static str {
        "identity"
    }

    fn readers(&self) -> Option<Readers> {
        Some(self.readers.clone())
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        let reissue = self
            .reissue
            .get_or_insert_with(|| ctx.shared.reissue.subscribe())
            .receiver()
            .clone();
        // Ends when this run does.
        let steps = crate::infra::clock_step::subscribe();
        self.readers.attach(ctx.reporter(), false);
        let readers = self.readers.cleared().clone();
        // Before the first attempt, wait for the internal `identity` service
        // to have tried loading the CA.
        crossbeam_channel::select! {
            recv(ctx.shared.ca.attempted()) -> _ => {},
            recv(ctx.stop()) -> _ => return Ok(()),
        }
        // This service owns its destination: no other writer is running,
        // so the first attempt's job removes an interrupted write's
        // leftovers.
        let mut st = State {
            clean: true,
            held: None,
            error: None,
            failures: 0,
            next_attempt: SystemTime::now(),
        };
        let mut renew_now = true;
        loop {
            if ctx.stopping() {
                break;
            }
            if renew_now && !self.attempt(ctx, &mut st) {
                break;
            }
            let now = SystemTime::now();
            self.report(ctx, &st, now);
            // Wake for the next attempt, or when the certificate expires.
            let mut until = st.next_attempt;
            if let Some(v) = st.held.filter(|v| v.problem(now).is_none()) {
                until = until.min(v.valid_before);
            }
            let wake = wait(ctx, (&reissue, steps.notices(), &readers), until);
            let now = SystemTime::now();
            renew_now = match wake {
                Wake::Stop => break,
                Wake::Reissue => {
                    log::info(
                        "the bot's CA changed; re-issuing now",
                        &[("service", &ctx.name())],
                    );
                    true
                }
                Wake::ClockStep | Wake::Timer | Wake::Readers => due(&st, now),
            };
        }
        // Stopped (shut down, or removed by a reload): its series goes too.
        ctx.shared.metrics.remove_certificate(ctx.name());
        Ok(())
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
    fn validity_and_due_follow_the_wall_clock() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let v = Validity {
            valid_after: t(1000),
            valid_before: t(4600),
        };
        assert_eq!(v.problem(t(1000)), None);
        assert_eq!(v.problem(t(4599)), None);
        let early = v.problem(t(999)).unwrap();
        assert!(
            early.starts_with("certificate not valid until 1970-01-01T00:16:40Z"),
            "{early}"
        );
        let late = v.problem(t(4600)).unwrap();
        assert!(
            late.starts_with("certificate expired at 1970-01-01T01:16:40Z"),
            "{late}"
        );

        let mut st = State {
            clean: false,
            held: Some(v),
            error: None,
            failures: 0,
            next_attempt: t(2200),
        };
        assert!(!due(&st, t(2000)));
        assert!(due(&st, t(2200)), "renewal time");
        assert!(due(&st, t(500)), "stepped back before valid_after");
        assert!(due(&st, t(9000)), "stepped past valid_before");
        // After a failure, an invalid certificate waits for the retry time.
        st.error = Some("disk full".into());
        st.next_attempt = t(9001);
        assert!(!due(&st, t(9000)));
        assert!(due(&st, t(9001)));
    }

    #[test]
    fn key_id_names_bot_and_service() {
        assert_eq!(key_id("web-1", "my-output"), "tbot/web-1/my-output");
    }
}
