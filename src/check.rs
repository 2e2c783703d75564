//! `tbot check [-c FILE]`: the configuration judged before it is used, as
//! `sshd -t`, `nginx -t` and `promtool check config` judge theirs.
//!
//! The file is found and loaded exactly as `tbot start` loads it (the same
//! function, the same `file:line:column` errors). Then whatever `start` would
//! fail on and can be known without changing anything:
//!
//! - the storage directory: not another user's (the rule `start` enforces,
//!   see `infra::owner`), readable, writable and searchable by the user
//!   running the check, or creatable when missing; nothing in it left
//!   behind by another user; its CA key, when there is one, readable and a
//!   usable key;
//! - every destination (identity outputs, multiplexer sockets): its path
//!   walked as the services walk it (`infra::chase`): no symbolic link owned
//!   by anyone but root or this user, no file where a directory must be;
//! - `diag_addr`: parsed at load; a host name must resolve.
//! - `web_config_file`: read as `start` reads it, with the certificate, key
//!   and client CA files it names (`file:line:column` in the web
//!   configuration, or the TLS file that does not load).
//!
//! The storage and symlink checks answer for the user running the check:
//! run it as tbot's own user (`sudo -u _tbot tbot check`), as the packaged
//! unit does. Whether a destination is writable is not judged: a service
//! reports that at run time as its health, and recovers once it is fixed.
//!
//! It starts nothing, binds nothing and writes nothing. Exit 0 and one line
//! on stdout when the file is good; exit 2 and one line per problem on
//! stderr (`tbot: FILE:LINE:COLUMN: what`) when it is not.

use std::net::ToSocketAddrs;
use std::path::Path;

use rustix::fs::{Access, AtFlags, FileType};

use crate::cli::StartArgs;
use crate::config::{self, Config, Seg, ServiceConfig};
use crate::credentials::issuer::{Issuer, CA_KEY_FILE};
use crate::infra::{chase, owner};
use crate::{exit, log};

/// Runs the check; returns the exit code.
pub fn run(args: &StartArgs) -> i32 {
    let path = match config::config_path(args) {
        Ok(p) => p,
        Err(e) => {
            log::fatal(&e);
            return exit::USAGE;
        }
    };
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            log::fatal(&e.to_string());
            return exit::USAGE;
        }
    };
    let problems = problems(&config, path);
    if problems.is_empty() {
        println!(
            "{}: ok (services: {}, storage: {})",
            path.display(),
            config.services.len(),
            config.storage.display()
        );
        return exit::OK;
    }
    for p in &problems {
        log::fatal(&p.to_string());
    }
    exit::USAGE
}

/// Every problem found beyond parsing, each located at the node it is about
/// (when the file can be read again to find it).
fn problems(config: &Config, path: &Path) -> Vec<config::Error> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let at = |node: Vec<Seg>, message: String| {
        let (line, column) = config::locate(&text, &node).unwrap_or((0, 0));
        config::Error {
            file: path.display().to_string(),
            line,
            column,
            message,
        }
    };
    let mut out = Vec::new();
    let storage_node = || vec![Seg::Key("storage"), Seg::Key("path")];
    for p in storage(&config.storage) {
        out.push(at(storage_node(), format!("storage.path: {p}")));
    }
    for (i, s) in config.services.iter().enumerate() {
        let dest = match s {
            ServiceConfig::Identity(c) => &c.destination,
            ServiceConfig::SshMultiplexer(c) => &c.destination,
        };
        if let Err(e) = chase::probe_dir(dest) {
            let node = vec![
                Seg::Key("services"),
                Seg::Index(i),
                Seg::Key("destination"),
                Seg::Key("path"),
            ];
            out.push(at(
                node,
                format!("services[{i}].destination.path ({}): {e}", s.name()),
            ));
        }
    }
    if let Some(addr) = &config.diag_addr {
        if let Err(e) = resolves(addr) {
            out.push(at(vec![Seg::Key("diag_addr")], format!("diag_addr: {e}")));
        }
    }
    if let Some(web) = &config.web_config_file {
        // As `start` reads it: the file's own errors, then its TLS files.
        match config::load_web(web) {
            Err(e) => out.push(e),
            Ok(w) => {
                let open = &config.diag_unauthenticated_paths;
                if let Err(e) = crate::diag::Security::build(Some(&w), open) {
                    let node = vec![Seg::Key("web_config_file")];
                    out.push(at(node, format!("web_config_file: {e}")));
                }
            }
        }
    }
    out
}

/// What is wrong with the storage directory for the user running the check.
fn storage(dir: &Path) -> Vec<String> {
    let probe = match chase::probe_dir(dir) {
        Ok(p) => p,
        Err(e) => return vec![e],
    };
    let want = Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK;
    let usable = |h: &chase::DirHandle, access| {
        rustix::fs::accessat(h.fd(), ".", access, AtFlags::EACCESS)
            .map_err(|e| chase::describe(h.path(), e))
    };
    if probe.missing > 0 {
        // start creates it (0700): its deepest existing parent must let it.
        return match usable(&probe.deepest, Access::WRITE_OK | Access::EXEC_OK) {
            Ok(()) => Vec::new(),
            Err(e) => vec![format!(
                "{} is missing and cannot be created: {e}",
                dir.display()
            )],
        };
    }
    if let Err(e) = owner::refuse_foreign_storage(dir, &owner::command_line()) {
        return vec![e];
    }
    if let Err(e) = usable(&probe.deepest, want) {
        return vec![e];
    }
    let mut out = Vec::new();
    let me = owner::euid();
    for name in probe.deepest.entries().unwrap_or_default() {
        let st = match rustix::fs::statat(
            probe.deepest.fd(),
            name.as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(e) => {
                out.push(chase::describe(&dir.join(&name), e));
                continue;
            }
        };
        if st.st_uid != me && FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            out.push(format!(
                "{} belongs to {}, not to {} who runs tbot (left by a tbot run as another user? \
                 chown it back)",
                dir.join(&name).display(),
                owner::describe_user(st.st_uid),
                owner::describe_user(me)
            ));
        }
    }
    if out.is_empty() && dir.join(CA_KEY_FILE).symlink_metadata().is_ok() {
        if let Err(e) = Issuer::load(dir) {
            out.push(format!("the bot's CA: {e}"));
        }
    }
    out
}

/// `addr` (already checked to be `HOST:PORT` at load) resolves to at least
/// one address, as the diagnostics service's bind needs.
fn resolves(addr: &str) -> Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("{addr} resolves to no address")),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}
