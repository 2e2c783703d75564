//! Files tbot trusts (the CA key), checked the way sshd's `StrictModes`
//! checks a user's keys (OpenSSH `auth.c`, `safe_path`), on the resolved
//! path (sshd realpaths first): the file must be owned by tbot's user or
//! root, and so must the directory that holds it and every directory above
//! it. The holding directory must not be writable by others, nor by a group
//! tbot is not in: otherwise another local user could move their own key
//! over the CA's and have tbot sign with it (and publish it as
//! `ssh_ca.pub`). A holding directory writable by one of tbot's own groups
//! is accepted: Kubernetes' `fsGroup` volume (root:GROUP, mode 2775) is
//! one, and its group is the pod's own.
//!
//! Unlike sshd, a directory *above* the holding one may be writable by
//! group or others, sticky or not: a volume's mount point (emptyDir, 0777
//! root) with the storage directory below it. Whoever can write there can
//! rename the holding directory away, not change what is in it; a
//! directory put in its place is theirs, and is refused by the rule above
//! at the next load (and the key by its owner, read from the opened file).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::infra::chase::trusted_link_owner as trusted_owner;
use crate::infra::owner::{describe_user, euid};

/// Whether `gid` is tbot's effective group or one of its supplementary
/// groups (getgroups(2)).
fn my_group(gid: u32) -> bool {
    if gid == rustix::process::getegid().as_raw() {
        return true;
    }
    rustix::process::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// The file described by `meta` (at `path`) is owned by tbot's user or
/// root; the error says who owns it and why that matters.
pub fn check_file_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if trusted_owner(meta.uid()) {
        return Ok(());
    }
    Err(format!(
        "{}: owned by {}, not by tbot's user ({}) or root; refusing a key another user could have put there",
        path.display(),
        describe_user(meta.uid()),
        describe_user(euid())
    ))
}

/// `dir` (the directory holding a trusted file) and every directory above
/// it, resolved: owned by tbot's user or root; `dir` itself not writable by
/// others nor by a group tbot is not in (see the module documentation). The
/// error names the first that is not, and why.
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
    crate::infra::failpoints::hit_in_write("trust-walk", dir);
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

/// `holding`: `dir` holds the trusted file (its mode is judged); then
/// `holding_owner` says whether its owner is judged here.
fn check_from(dir: &Path, mut holding: bool, holding_owner: bool) -> Result<(), String> {
    let dir = match std::fs::canonicalize(dir) {
        Ok(d) => d,
        // A holding directory that is gone holds nothing to trust: the
        // file's own access says what is missing.
        Err(e) if holding && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for d in dir.ancestors() {
        let meta = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        if holding && !holding_owner && meta.uid() != euid() && meta.uid() != 0 {
            // Another user's storage directory: `infra::owner` refuses it,
            // whatever its mode, and says how to run as its owner.
            return Ok(());
        }
        if !trusted_owner(meta.uid()) {
            return Err(format!(
                "{}: owned by {}, not by tbot's user or root; another user could replace the CA key below it",
                d.display(),
                describe_user(meta.uid())
            ));
        }
        let mode = meta.mode() & 0o7777;
        let open = mode & 0o002 != 0 || (mode & 0o020 != 0 && !my_group(meta.gid()));
        if holding && open {
            return Err(format!(
                "{}: writable by others or by a group tbot is not in (mode {mode:04o}, group {}); another user could replace the CA key: chmod go-w {}",
                d.display(),
                meta.gid(),
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
    fn the_holding_directory_is_judged_and_an_open_one_above_is_not() {
        let d = TestDir::new("trust");
        let storage = d.0.join("storage");
        std::fs::create_dir(&storage).unwrap();
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        check_dirs(&storage).unwrap();
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_dirs(&storage).unwrap_err();
        assert!(e.contains("mode 1777"), "{e}");
        // Writable by tbot's own group (fsGroup): accepted.
        std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o2770)).unwrap();
        check_dirs(&storage).unwrap();
        // By a group tbot is not in: refused (root only can give it one).
        if euid() == 0 {
            std::os::unix::fs::chown(&storage, None, Some(54_321)).unwrap();
            let e = check_dirs(&storage).unwrap_err();
            assert!(e.contains("group 54321"), "{e}");
        }
        // Through a symlink: the resolved directory is judged.
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&storage, &link).unwrap();
        assert_eq!(check_dirs(&link).is_err(), euid() == 0);
    }
}
