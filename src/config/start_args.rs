//! The configuration `tbot start` runs: the file named on the command line
//! (or in `TBOT_CONFIG_PATH`) with the command line's overrides, each logged.
//! Read at start and again on every reload.

use std::path::Path;

use crate::cli::StartArgs;
use crate::log::{self, Format};

use super::Config;

/// The configuration file the command line names (`-c` or
/// `TBOT_CONFIG_PATH`), or the error that there is none. `tbot start` and
/// `tbot check` find it the same way.
pub fn config_path(args: &StartArgs) -> Result<&Path, String> {
    match &args.config {
        Some(path) => Ok(path),
        None => Err("no configuration file: pass -c FILE or set TBOT_CONFIG_PATH".into()),
    }
}

/// Loads the configuration and applies command-line overrides, logging each.
pub fn configure(args: &StartArgs) -> Result<Config, String> {
    let path = config_path(args)?;
    let mut config = super::load(path).map_err(|e| e.to_string())?;
    config.file = path.display().to_string();
    log::configure(
        args.log_format.unwrap_or(Format::Text),
        config.debug || args.debug == Some(true),
    );
    if let Some(addr) = &args.diag_addr {
        if let Some(file) = config.diag_addr.as_ref().filter(|f| *f != addr) {
            log::info(
                "--diag-addr overrides diag_addr from the configuration file",
                &[("flag", addr), ("file", file)],
            );
        }
        config.diag_addr = Some(addr.clone());
    }
    if let Some(web) = &args.web_config_file {
        if let Some(file) = config.web_config_file.as_ref().filter(|f| *f != web) {
            log::info(
                "--web-config-file overrides web_config_file from the configuration file",
                &[("flag", &web.display()), ("file", &file.display())],
            );
        }
        config.web_config_file = Some(web.clone());
    }
    // Read on every start and reload: a bad file fails either, and a
    // reload then changes nothing.
    if let Some(web) = &config.web_config_file {
        config.web = Some(super::load_web(web).map_err(|e| e.to_string())?);
    }
    if args.debug == Some(true) && !config.debug {
        let source = if args.debug_from_env {
            "TBOT_DEBUG"
        } else {
            "-d"
        };
        log::info(
            "debug mode enabled on the command line over debug: false in the file",
            &[("by", &source)],
        );
        config.debug = true;
    }
    log::info(
        "configuration loaded",
        &[
            ("file", &config.file),
            (
                "from",
                &if args.config_from_env {
                    "TBOT_CONFIG_PATH"
                } else {
                    "-c"
                },
            ),
            ("services", &config.services.len()),
            (
                "credential_ttl",
                &crate::infra::duration::format(config.credential_ttl),
            ),
            (
                "renewal_interval",
                &crate::infra::duration::format(config.renewal_interval),
            ),
            ("debug", &config.debug),
        ],
    );
    Ok(config)
}
