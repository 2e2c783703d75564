//! Small filesystem helpers shared by the services.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700 when it is missing.
/// The error names the path and the OS error.
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}
