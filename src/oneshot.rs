//! `tbot start --oneshot`: load (or create) the bot's CA, issue every
//! identity output once, report each result, and exit: 0 when all
//! succeeded, 1 otherwise. No diagnostics service, no long-running services
//! (an `ssh-multiplexer` only makes sense while tbot runs; it is skipped).
//!
//! The report: one line per identity output on stdout
//! (`ok <name> <destination> valid_before=<time>` or
//! `FAILED <name> <destination> <error>`), every result in the log, and
//! when something failed, a closing line on stderr naming each failure.

use crate::config::{Config, ServiceConfig};
use crate::credentials::identity_files::remove_stale_temps;
use crate::credentials::issuer::Issuer;
use crate::exit;
use crate::infra::timefmt;
use crate::log;
use crate::services::identity::{issue_to, key_id};

pub fn run(config: &Config) -> i32 {
    let issuer = match Issuer::load_or_create(&config.storage) {
        Ok(i) => i,
        Err(e) => {
            log::error("the bot's CA is not usable", &[("error", &e)]);
            log::fatal(&format!("oneshot: the bot's CA: {e}"));
            return exit::FAILURE;
        }
    };
    crate::services::bot_identity::log_first(
        &issuer.key_path().display().to_string(),
        issuer.fingerprint(),
        issuer.generated(),
    );
    let host = crate::infra::host::hostname();
    let mut outputs = 0;
    let mut failures = Vec::new();
    for s in &config.services {
        let c = match s {
            ServiceConfig::Identity(c) => c,
            ServiceConfig::SshMultiplexer(_) => {
                log::info(
                    "oneshot: skipping a service that only runs in the daemon",
                    &[("service", &s.name()), ("type", &s.kind())],
                );
                continue;
            }
        };
        outputs += 1;
        let dest = c.destination.display();
        remove_stale_temps(&c.destination);
        match issue_to(c, &issuer, &key_id(&host, &c.name)) {
            Ok(valid_before) => {
                let until = timefmt::rfc3339(valid_before);
                log::info(
                    "identity output written",
                    &[
                        ("service", &c.name),
                        ("destination", &dest),
                        ("valid_before", &until),
                    ],
                );
                println!("ok {} {dest} valid_before={until}", c.name);
            }
            Err(e) => {
                log::error(
                    "identity output failed",
                    &[("service", &c.name), ("destination", &dest), ("error", &e)],
                );
                println!("FAILED {} {dest} {e}", c.name);
                failures.push(format!("{}: {e}", c.name));
            }
        }
    }
    if failures.is_empty() {
        log::info("oneshot: done", &[("identity_outputs", &outputs)]);
        exit::OK
    } else {
        log::fatal(&format!(
            "oneshot: {} of {outputs} identity outputs failed: {}",
            failures.len(),
            failures.join("; ")
        ));
        exit::FAILURE
    }
}
