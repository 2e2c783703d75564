//! The private directory (mode 0700) that holds tiny_http's Unix socket, so
//! only this user reaches the serving loop without going through the front.
//!
//! `BASE/tbot-diag-<random>`, where BASE is `$XDG_RUNTIME_DIR`, the temp dir
//! or /tmp (the first that works). A live instance holds an flock on its
//! directory for its whole life ([`crate::infra::instance_lock::lock_dir`]); a
//! directory whose lock can be taken belongs to a tbot that is gone (SIGKILL,
//! OOM) and is removed at the next start. Nothing here is keyed by a PID:
//! tbots in different PID namespaces (each PID 1) sharing one /tmp must not
//! take each other's directory.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rand_core::RngCore;

use crate::infra::instance_lock::{lock_dir, Held};

const PREFIX: &str = "tbot-diag-";

/// Creates and locks a fresh private directory; the lock lives as long as
/// the returned [`Held`]. The error names the last path tried and why.
pub fn create() -> Result<(PathBuf, Held), String> {
    let mut bases = vec![std::env::temp_dir(), PathBuf::from("/tmp")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        bases.insert(0, PathBuf::from(x));
    }
    let mut last = String::new();
    for base in bases {
        remove_stale(&base);
        // A few tries: another instance's cleanup may remove a directory
        // between its mkdir and its lock (`lock_dir` notices).
        for _ in 0..4 {
            let dir = base.join(format!("{PREFIX}{:016x}", rand_core::OsRng.next_u64()));
            // Unix socket paths are limited to 107 bytes.
            if dir.as_os_str().len() > 80 {
                break;
            }
            if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                last = format!("{}: {e}", dir.display());
                break;
            }
            match lock_dir(&dir) {
                Ok(Some(held)) => return Ok((dir, held)),
                Ok(None) => last = format!("{}: locked by another process", dir.display()),
                Err(e) => last = format!("{}: {e}", dir.display()),
            }
        }
    }
    Err(format!(
        "cannot create a private directory for the diagnostics socket: {last}"
    ))
}

/// Removes the socket directories of tbots that died without cleaning up:
/// ours by owner, and unlocked. A directory is locked and removed in one
/// go, so a live instance never loses its own.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = rustix::process::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(PREFIX)) {
            continue;
        }
        let mine = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !mine {
            continue;
        }
        let path = entry.path();
        if name
            .to_str()
            .is_some_and(|n| n[PREFIX.len()..].contains('-'))
        {
            // `tbot-diag-PID-NANOS`, made by an older tbot, which holds no
            // lock: stale only if no socket in it answers.
            if legacy_is_stale(&path) {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        if let Ok(Some(_held)) = lock_dir(&path) {
            // Removed while the lock is held: no one can be setting up in it.
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// An older tbot's directory (no lock) is stale when none of its sockets
/// accepts a connection, and it is not brand new (an older tbot starting
/// this moment may not have bound its socket yet).
fn legacy_is_stale(dir: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let recent = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().map_or(true, |age| age.as_secs() < 60));
    if recent {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    !entries.flatten().any(|e| {
        e.file_type().is_ok_and(|t| t.is_socket())
            && std::os::unix::net::UnixStream::connect(e.path()).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_directory_survives_another_start_and_a_dead_one_goes() {
        let (live, held) = create().unwrap();
        let (other, other_held) = create().unwrap();
        assert_ne!(live, other);
        // Another instance starting now leaves both alone: both are locked.
        let (third, third_held) = create().unwrap();
        assert!(live.is_dir() && other.is_dir());
        // One dies (its lock goes with it): the next start removes its dir.
        drop(other_held);
        let (fourth, fourth_held) = create().unwrap();
        assert!(!other.exists(), "an unlocked directory is stale");
        assert!(live.is_dir() && third.is_dir() && fourth.is_dir());
        for (d, h) in [(live, held), (third, third_held), (fourth, fourth_held)] {
            std::fs::remove_dir_all(&d).unwrap();
            drop(h);
        }
    }

    #[test]
    fn an_older_tbots_directory_is_removed_only_when_nothing_listens_in_it() {
        use std::os::unix::net::UnixListener;
        let base = std::env::temp_dir();
        let live = base.join(format!(
            "{PREFIX}{}-{:x}",
            std::process::id(),
            rand_core::OsRng.next_u64()
        ));
        let dead = base.join(format!(
            "{PREFIX}{}-{:x}",
            std::process::id(),
            rand_core::OsRng.next_u64()
        ));
        std::fs::create_dir(&live).unwrap();
        std::fs::create_dir(&dead).unwrap();
        let _listening = UnixListener::bind(live.join("http-0.sock")).unwrap();
        drop(UnixListener::bind(dead.join("http-0.sock")).unwrap());
        remove_stale(&base);
        assert!(dead.is_dir(), "a new directory is given time");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for d in [&live, &dead] {
            std::fs::File::open(d).unwrap().set_modified(old).unwrap();
        }
        remove_stale(&base);
        assert!(live.is_dir(), "a socket answers in it: live");
        assert!(!dead.exists(), "nothing answers: stale");
        std::fs::remove_dir_all(&live).unwrap();
    }
}
