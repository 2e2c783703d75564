//! Small filesystem helpers shared by the services.

use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700 when it is missing,
/// walking it as [`crate::infra::chase::open_dir`] does (a symlink another user
/// owns is refused). The error names the path and says what is wrong in the
/// operator's words (`/srv/tbot: not a directory`).
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    crate::infra::chase::open_dir(dir, true).map(drop)
}

/// Makes sure the temporary directory (`TMPDIR`, else `/tmp`) is one tbot
/// can write, for the diagnostics socket directory and the CPU profiler's
/// buffer file (pprof keeps its samples in a temporary file). When it is
/// not (a read-only root, no `TMPDIR`: Kubernetes' restricted profile),
/// sets `TMPDIR` to `$XDG_RUNTIME_DIR` when that is writable, else to
/// `storage`, and returns the directory chosen.
///
/// Called once by `tbot start` after the storage directory exists, while
/// no other thread reads the environment.
pub fn settle_temp_dir(storage: &Path) -> Option<std::path::PathBuf> {
    let writable = |d: &Path| {
        use rustix::fs::{access, Access};
        d.is_dir() && access(d, Access::WRITE_OK | Access::EXEC_OK).is_ok()
    };
    if writable(&std::env::temp_dir()) {
        return None;
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty());
    let chosen = runtime
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_absolute() && writable(d))
        .or_else(|| std::path::absolute(storage).ok().filter(|d| writable(d)))?;
    std::env::set_var("TMPDIR", &chosen);
    Some(chosen)
}
