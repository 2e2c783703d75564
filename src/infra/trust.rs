//! Files tbot trusts (the CA key), checked the way sshd's `StrictModes`
//! checks a user's keys (OpenSSH `auth.c`, `safe_path`): the file must be
//! owned by tbot's user or root, and so must the directory that holds it
//! and every directory above it, none of them writable by group or others.
//! A directory above the holding one may be writable by others when it is
//! sticky (`/tmp`): others can add names there but not rename or remove
//! ours. Otherwise another local user could move their own key over the
//! CA's and have tbot sign with it (and publish it as `ssh_ca.pub`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether `uid` may own what tbot trusts: root or tbot's effective user.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// The file described by `meta` (at `path`) is owned by tbot's user or
/// root; the error says who owns it and why that matters.
pub fn check_file_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if trusted_owner(meta.uid()) {
        return Ok(());
    }
    Err(format!(
        "{}: owned by uid {}, not by tbot's user (uid {}) or root; refusing a key another user could have put there",
        path.display(),
        meta.uid(),
        rustix::process::geteuid().as_raw()
    ))
}

/// `dir` (the directory holding a trusted file) and every directory above
/// it: owned by tbot's user or root, not writable by group or others (above
/// `dir`, unless sticky). The error names the first that is not, and why.
pub fn check_dirs(dir: &Path) -> Result<(), String> {
    check_from(dir, true, true)
}

/// [`check_dirs`] at load, for the storage directory, which tbot creates
/// when it is missing: then its nearest existing ancestor and those above
/// it are checked as directories above the holding one. The storage
/// directory's own owner is left to `infra::owner` (which refuses any
/// owner but tbot's user, and says how to run as it); its mode is checked
/// here.
pub fn check_dirs_to_be(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => check_from_existing(p),
            _ => Ok(()),
        },
        _ => check_from(dir, true, false),
    }
}

fn check_from_existing(dir: &Path) -> Result<(), String> {
    let mut d = dir;
    while std::fs::symlink_metadata(d).is_err() {
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => return Ok(()),
        }
    }
    check_from(d, false, true)
}

/// `holding`: `dir` holds the trusted file (no sticky exception); then
/// `holding_owner` says whether its owner is judged here.
fn check_from(dir: &Path, mut holding: bool, holding_owner: bool) -> Result<(), String> {
    let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for d in dir.ancestors() {
        let meta = match std::fs::metadata(d) {
            Ok(m) => m,
            // A holding directory that is gone holds nothing to trust: the
            // file's own access says what is missing.
            Err(e) if holding && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", d.display())),
        };
        let mode = meta.mode() & 0o7777;
        if holding && !holding_owner && meta.uid() != rustix::process::geteuid().as_raw() {
            // Another user's storage directory: `infra::owner` refuses it,
            // whatever its mode, and says how to run as its owner.
            return Ok(());
        }
        if !trusted_owner(meta.uid()) {
            return Err(format!(
                "{}: owned by uid {}, not by tbot's user or root; another user could replace the CA key below it",
                d.display(),
                meta.uid()
            ));
        }
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (holding || !sticky) {
            return Err(format!(
                "{}: writable by group or others (mode {mode:04o}); another user could replace the CA key: chmod go-w {}",
                d.display(),
                d.display()
            ));
        }
        holding = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_writable_by_others_is_refused_and_a_sticky_one_above_is_not() {
        let d = TestDir::new("trust");
        let storage = d.0.join("storage");
        std::fs::create_dir(&storage).unwrap();
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_dirs(&storage).unwrap();
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dirs(&storage).unwrap_err();
        assert!(e.contains("mode 0777"), "{e}");
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_dirs(&storage).unwrap_err();
        assert!(e.contains("mode 1777"), "{e}");
    }
}
