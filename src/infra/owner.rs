//! Whose a directory is, and the refusal to run on another user's storage
//! directory (as tor and PostgreSQL refuse another user's data directory):
//! a tbot running as root on `_tbot`'s `/var/lib/tbot` would leave root-owned
//! files there that the service, running as `_tbot`, then cannot use.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use crate::infra::{chase, signals, threads};

/// The longest tbot waits for one answer from the user or group database
/// (NSS: files, systemd's userdb, sssd, LDAP...). A lookup is made on a
/// helper thread; one that has not answered by then is given up (the
/// thread is left to finish on its own) with an error that says so, so a
/// stuck directory service cannot hang a start, `tbot check` or a reload.
pub const NSS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` (a lookup in the user or group database) beside the caller
/// (`threads::within`) and waits at most [`NSS_TIMEOUT`] for its answer,
/// or until SIGTERM/SIGINT is pending; `what` names it in the error.
fn bounded<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    threads::within("nss-lookup", NSS_TIMEOUT, signals::stop_pending, f).map_err(|why| match why {
        threads::GaveUp::TimedOut => format!(
            "{what}: the user/group database (NSS) did not answer within {} s; is a directory service (sssd, LDAP) hanging?",
            NSS_TIMEOUT.as_secs()
        ),
        threads::GaveUp::Asked => format!("{what}: lookup cut short by a stop signal"),
    })
}

/// Calls a `get*_r` function with a buffer, growing it on ERANGE up to
/// 1 MiB; `call` returns its return code and what it found. The one ERANGE
/// loop of every user and group lookup.
fn with_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Result<Option<T>, std::io::Error> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        match call(&mut buf) {
            (0, found) => return Ok(found),
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            (e, _) => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// The name of user `uid` in the user database (getpwuid_r(3), so NSS and
/// systemd's userdb answer too), or None when it has no entry, the lookup
/// fails or it takes longer than [`NSS_TIMEOUT`].
pub fn user_name(uid: u32) -> Option<String> {
    bounded("looking up a user name", move || {
        with_buffer(|buf| {
            // SAFETY: an all-zero passwd is a valid value of the plain C
            // struct (null pointers, zero ids); getpwuid_r only writes it.
            let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: `pw`, `buf` (with its true length) and `found` are
            // valid for writes for the call; the strings it sets point into
            // `buf`, which outlives their use below.
            let rc =
                unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
            if rc != 0 || found.is_null() || pw.pw_name.is_null() {
                return (rc, None);
            }
            // SAFETY: getpwuid_r succeeded: pw_name is a NUL-terminated string in `buf`.
            let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
            (0, Some(name.to_string_lossy().into_owned()))
        })
        .ok()
        .flatten()
    })
    .ok()
    .flatten()
}

/// The largest id a reader may name: `(uid_t)-1` (4294967295) means "no
/// change" to chown(2) and is no user or group anywhere.
const MAX_ID: u32 = u32::MAX - 1;

/// Refuses `(uid_t)-1`; see [`MAX_ID`].
pub fn check_id(id: u64, what: &str) -> Result<u32, String> {
    match u32::try_from(id) {
        Ok(id) if id <= MAX_ID => Ok(id),
        _ => Err(format!("invalid {what} id {id}: at most {MAX_ID}")),
    }
}

/// The uid of the user `name`, or of the number `name` (as upstream, a
/// number is taken as an id, known to the system or not). Errors say what
/// was not found, or that the database did not answer in time.
pub fn resolve_user(name: &str) -> Result<u32, String> {
    resolve(name, "user")
}

/// The gid of the group `name` (or the number `name`); see [`resolve_user`].
pub fn resolve_group(name: &str) -> Result<u32, String> {
    resolve(name, "group")
}

/// Looks `name` up in the user or group database (`getpwnam_r`/
/// `getgrnam_r`), within [`NSS_TIMEOUT`].
fn resolve(name: &str, what: &'static str) -> Result<u32, String> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
        return Err(format!("invalid {what} name {name:?}"));
    }
    if let Ok(id) = name.parse::<u64>() {
        return check_id(id, what);
    }
    let cname =
        std::ffi::CString::new(name).map_err(|_| format!("invalid {what} name {name:?}"))?;
    let found = bounded(&format!("looking up {what} {name:?}"), move || {
        with_buffer(|buf| {
            if what == "user" {
                // SAFETY: zeroed is a valid `passwd` (pointers null, ids 0).
                let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
                let mut out: *mut libc::passwd = std::ptr::null_mut();
                // SAFETY: every pointer is valid for the call; `buf` is
                // writable for `buf.len()` bytes and outlives it.
                let rc = unsafe {
                    libc::getpwnam_r(
                        cname.as_ptr(),
                        &mut pwd,
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut out,
                    )
                };
                (rc, (!out.is_null()).then_some(pwd.pw_uid))
            } else {
                // SAFETY: zeroed is a valid `group` (pointers null, id 0).
                let mut grp: libc::group = unsafe { std::mem::zeroed() };
                let mut out: *mut libc::group = std::ptr::null_mut();
                // SAFETY: as for getpwnam_r above.
                let rc = unsafe {
                    libc::getgrnam_r(
                        cname.as_ptr(),
                        &mut grp,
                        buf.as_mut_ptr(),
                        buf.len(),
                        &mut out,
                    )
                };
                (rc, (!out.is_null()).then_some(grp.gr_gid))
            }
        })
    })?;
    match found {
        Ok(Some(id)) => check_id(id.into(), what),
        Ok(None) => Err(format!(
            "unknown {what} {name:?}: no such {what} on this system"
        )),
        Err(e) => Err(format!("looking up {what} {name:?}: {e}")),
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
    fn names_and_numbers_resolve_and_unknown_names_are_refused() {
        assert_eq!(resolve_user("root"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert_eq!(resolve_group("1234"), Ok(1234));
        assert_eq!(resolve_user("4294967294"), Ok(4_294_967_294));
        let e = resolve_user("4294967295").unwrap_err();
        assert_eq!(e, "invalid user id 4294967295: at most 4294967294");
        let e = resolve_user("no-such-user-tbot-test").unwrap_err();
        assert_eq!(
            e,
            "unknown user \"no-such-user-tbot-test\": no such user on this system"
        );
        assert!(resolve_group("").is_err());
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
