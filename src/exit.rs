//! tbot's exit codes, the one place they are set (tbot(1), EXIT STATUS).

/// Success: a clean stop, `tbot wait` saw ready, `--oneshot` issued every output.
pub const OK: i32 = 0;
/// Failure: a fatal error, `tbot wait` timed out, an output `--oneshot` could not issue.
pub const FAILURE: i32 = 1;
/// Usage: a bad command line or configuration file.
pub const USAGE: i32 = 2;
