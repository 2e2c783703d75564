//! Small filesystem helpers shared by the services.

use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700 when it is missing,
/// walking it as [`crate::infra::chase::open_dir`] does (a symlink another user
/// owns is refused). The error names the path and says what is wrong in the
/// operator's words (`/srv/tbot: not a directory`).
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    crate::infra::chase::open_dir(dir, true).map(drop)
}
