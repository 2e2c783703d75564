//! tbot's exit codes, the one place they are set (tbot(1), EXIT STATUS).

/// Success: a clean stop, `tbot wait` saw ready, `--oneshot` issued every output.
pub const OK: i32 = 0;
/// Failure: a fatal error, `tbot wait` timed out, an output `--oneshot` could not issue.
pub const FAILURE: i32 = 1;
/// Usage: tbot cannot run as asked, and running it again as it is will not
/// help: a bad command line or configuration file (`tbot check` found a
/// problem), or a storage directory that belongs to another user. Nothing
/// was started. The packaged unit does not restart tbot on it
/// (`RestartPreventExitStatus=2`).
pub const USAGE: i32 = 2;
