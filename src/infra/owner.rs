//! Whose a directory is, and the refusal to run on another user's storage
//! directory (as tor and PostgreSQL refuse another user's data directory):
//! a tbot running as root on `_tbot`'s `/var/lib/tbot` would leave root-owned
//! files there that the service, running as `_tbot`, then cannot use.

use std::os::fd::AsFd;
use std::path::Path;

use crate::infra::chase;

/// The name of user `uid` in the user database (getpwuid_r(3), so NSS and
/// systemd's userdb answer too), or None when it has no entry.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value of the plain C struct
        // (null pointers, zero ids); getpwuid_r only writes into it.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `pw`, `buf` (with its true length) and `found` are valid
        // for writes for the duration of the call; the strings it sets point
        // into `buf`, which outlives their use below.
        let rc = unsafe {
            libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found)
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pw.pw_name.is_null() {
            return None;
        }
        // SAFETY: getpwuid_r succeeded: pw_name is a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

/// `name (uid N)`, or `uid N` for a user without a name.
pub fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The owner of the directory `dir`, walked as `chase` walks it; None when
/// it does not exist yet (tbot will create it, as its own).
pub fn dir_owner(dir: &Path) -> Result<Option<u32>, String> {
    let probe = chase::probe_dir(dir)?;
    if probe.missing > 0 {
        return Ok(None);
    }
    let st = rustix::fs::fstat(probe.deepest.fd().as_fd()).map_err(|e| chase::describe(dir, e))?;
    Ok(Some(st.st_uid))
}

/// Refuses a storage directory that exists and belongs to another user than
/// the one running tbot, root included. The error names the owner and
/// suggests the command line that runs as the owner: `sudo -u OWNER ` and
/// `command` (this process's own command line, for the operator to copy).
/// A storage directory that cannot be walked is not judged here: the storage
/// lock and the services report that.
pub fn refuse_foreign_storage(storage: &Path, command: &str) -> Result<(), String> {
    let Ok(Some(owner)) = dir_owner(storage) else {
        return Ok(());
    };
    let me = euid();
    if owner == me {
        return Ok(());
    }
    let sudo_user = user_name(owner).unwrap_or_else(|| format!("#{owner}"));
    let my_name = user_name(me).unwrap_or_else(|| format!("uid {me}"));
    Err(format!(
        "storage directory {} belongs to {}, not to {} who runs this tbot: files written there \
         as {my_name} would be unusable to tbot running as {sudo_user}. Run it as the owner: \
         sudo -u {sudo_user} {command}",
        storage.display(),
        describe_user(owner),
        describe_user(me),
    ))
}

/// This process's command line, as a shell would take it back: arguments
/// with anything but `[A-Za-z0-9_./:=@+,-]` in single quotes (bytes that are
/// not UTF-8, which only the program's own path can still hold here, shown
/// as U+FFFD).
pub fn command_line() -> String {
    shell_words(std::env::args_os().map(|a| a.to_string_lossy().into_owned()))
}

/// `args` joined with spaces, each quoted for a POSIX shell when it needs it.
fn shell_words(args: impl Iterator<Item = String>) -> String {
    args.map(|a| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./:=@+-,".contains(c));
        if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_a_name_and_an_unknown_uid_has_none() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_123), None);
        assert_eq!(describe_user(4_000_000_123), "uid 4000000123");
    }

    #[test]
    fn the_suggested_command_line_survives_a_shell() {
        let words = ["/usr/bin/tbot", "start", "-c", "/etc/my tbot/it's.yaml", ""];
        assert_eq!(
            shell_words(words.iter().map(|w| w.to_string())),
            r"/usr/bin/tbot start -c '/etc/my tbot/it'\''s.yaml' ''"
        );
    }

    #[test]
    fn my_own_or_a_missing_storage_directory_is_fine() {
        let d = crate::testutil::TestDir::new("owner");
        refuse_foreign_storage(&d.0, "tbot start").unwrap();
        refuse_foreign_storage(&d.0.join("not/yet"), "tbot start").unwrap();
        assert_eq!(dir_owner(&d.0.join("not")).unwrap(), None);
        assert_eq!(dir_owner(&d.0).unwrap(), Some(euid()));
    }
}
