//! tbot: keeps short-lived SSH credentials fresh, brokers SSH connections,
//! and reports the health of all it runs over HTTP.
//!
//! The data flow, one module per room: `cli` → `config` → `services` (run by
//! `supervisor`, one thread each) → `health` (the table) → `diag` (the
//! diagnostics HTTP service), with `metrics` (tbot's Prometheus registry)
//! beside the table. `daemon` is `tbot start`: it starts tbot's own threads
//! and waits for signals; `reload` applies a configuration, at start and at
//! each SIGHUP. The other commands: `check`, `wait`, `completions`,
//! `proxy_command` (the multiplexer's `ProxyCommand`) and `oneshot`
//! (`tbot start --oneshot`). What they stand on (system calls, waiting and
//! stopping, threads, systemd, formats) is under `infra`; the CA and the
//! files it writes under `credentials`; exit codes are in `exit`, logging
//! in `log`, what the binary is (version, build) in `build_info`.

mod build_info;
mod check;
mod cli;
mod completions;
mod config;
mod credentials;
mod daemon;
mod debug_client;
mod diag;
mod exit;
mod health;
mod http_client;
mod infra;
mod log;
mod metrics;
mod oneshot;
mod proxy_command;
mod reload;
mod services;
mod supervisor;
#[cfg(test)]
mod testutil;
mod wait;

use cli::Command;

fn main() {
    // The first instruction: a SIGHUP or SIGTERM from now on waits for the
    // daemon's signal loop, never kills (see infra::signals).
    if let Err(e) = infra::signals::block() {
        log::fatal(&format!("blocking signals: {e}"));
        exit(exit::FAILURE);
    }
    // Before any thread exists (see infra::malloc).
    infra::malloc::tune();
    let env = |k: &str| std::env::var(k).ok();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(format) = cli::requested_log_format(&args) {
        log::set_format(format);
    }
    let command = match cli::parse(args, &env) {
        Ok(c) => c,
        Err(cli::Usage(msg)) => {
            log::fatal(&msg);
            exit(exit::USAGE);
        }
    };
    // The daemon runs without glibc's per-thread caches: still before any
    // thread exists (see infra::malloc). Returns only if it did not exec.
    let no_exec = match command {
        Command::Start(_) => infra::malloc::exec_without_tcache(),
        _ => None,
    };
    // Before any budget is sized from it (see infra::limits).
    infra::limits::raise_nofile();
    if !matches!(command, Command::Start(_)) {
        // The commands that are not the daemon: signals end them.
        infra::signals::unblock();
    }
    let code = match command {
        Command::Help(cmd) => {
            print!("{}", cli::help(cmd));
            exit::OK
        }
        Command::Version => {
            print!("{}", build_info::long_version());
            exit::OK
        }
        Command::Check(args) => check::run(&args),
        Command::Completions(shell) => {
            print!("{}", completions::script(shell));
            exit::OK
        }
        Command::Wait(args) => wait::run(&args),
        Command::MuxProxy { socket, target } => proxy_command::run(&socket, &target),
        Command::Debug(args) => debug_client::run(&args),
        Command::Start(args) => {
            supervisor::install_panic_hook();
            if let Some(why) = no_exec {
                log::info(
                    "glibc's per-thread malloc caches stay on (more memory, nothing else)",
                    &[("reason", &why)],
                );
            }
            daemon::start(args)
        }
    };
    exit(code);
}

/// Exits with `code` once the log lines queued for stderr are written (a
/// bounded wait: see log::flush).
fn exit(code: i32) -> ! {
    log::flush();
    std::process::exit(code)
}
