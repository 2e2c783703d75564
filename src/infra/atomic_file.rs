//! Crash-safe file replacement: readers see either the old file or the new
//! one, never a truncated or half-written one, even if the process is killed.
//!
//! The recipe: create a uniquely named temp file in the target's directory
//! (`O_EXCL`, final mode set before any byte is written), write everything,
//! fsync it, `rename(2)` it over the target, fsync the directory so the rename
//! itself survives a power cut. On any error the temp file is removed.
//!
//! [`write_atomic`] does it for one file. [`StagedFile`] splits the recipe in
//! two (stage = write + fsync, commit = rename) so that several related files
//! can all be written first and then swapped in back to back (see
//! `identity_files`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Replaces `path` with `contents` atomically; the file has exactly `mode`
/// (not filtered by the umask). The directory must already exist.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    StagedFile::stage(path, contents, mode)?.commit()?;
    sync_dir(parent_dir(path))
}

/// A fully written, fsynced temp file waiting to be renamed over its target.
/// Dropping it without [`commit`](StagedFile::commit) removes the temp file.
#[derive(Debug)]
pub struct StagedFile {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl StagedFile {
    /// Writes `contents` to a new temp file beside `path` and fsyncs it.
    /// The target is not touched.
    pub fn stage(path: &Path, contents: &[u8], mode: u32) -> io::Result<StagedFile> {
        let (mut file, tmp) = create_temp(path, mode)?;
        let staged = StagedFile {
            tmp,
            target: path.to_path_buf(),
            done: false,
        };
        // The umask may have narrowed the mode given to open(2); fix it on the
        // descriptor before any content exists. Errors drop `staged`, which
        // removes the temp file.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        write_contents(&mut file, path, contents)?;
        file.sync_all()?;
        drop(file);
        Ok(staged)
    }

    /// Renames the temp file over the target. The caller fsyncs the directory
    /// afterwards ([`sync_dir`]) once all its renames are done.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.target)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `contents` to the temp file for `path`. Debug builds write it in
/// two halves with the failpoint `stage-half` (`stage-half@<file name>`)
/// between them, so that the tests can SIGKILL tbot while a file is half
/// written; release builds write it in one go.
#[cfg(debug_assertions)]
fn write_contents(file: &mut File, path: &Path, contents: &[u8]) -> io::Result<()> {
    let (first, rest) = contents.split_at(contents.len() / 2);
    file.write_all(first)?;
    crate::infra::failpoints::hit_in_write("stage-half", path);
    file.write_all(rest)
}

#[cfg(not(debug_assertions))]
fn write_contents(file: &mut File, _path: &Path, contents: &[u8]) -> io::Result<()> {
    file.write_all(contents)
}

/// fsyncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the temp files that a writer killed mid-write (power cut,
/// SIGKILL) left in `dir` for the targets `names`: every
/// `.<name>.tmp.<pid>.<n>.<nanos>`, whatever the PID. The PID cannot tell a
/// live writer from a dead one (in a container tbot is PID 1 on every
/// start), so call this only where nothing else can be writing those
/// targets: when the service that owns them starts, before its first write.
/// Such files can hold private keys. Removals are logged; failures are
/// logged and otherwise ignored (the next start tries again).
pub fn remove_stale_temps(dir: &Path, names: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !names.iter().any(|n| is_temp_of(file_name, n)) {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => crate::log::info(
                "removed a temp file left by an interrupted write",
                &[("path", &path.display())],
            ),
            Err(e) => crate::log::warn(
                "could not remove a stale temp file",
                &[("path", &path.display()), ("error", &e)],
            ),
        }
    }
}

/// Whether `file_name` is a temp file [`create_temp`] makes for target
/// `name`: `.<name>.tmp.<pid>.<n>.<nanos>`, three decimal numbers.
pub fn is_temp_of(file_name: &str, name: &str) -> bool {
    let Some(numbers) = file_name
        .strip_prefix('.')
        .and_then(|r| r.strip_prefix(name))
        .and_then(|r| r.strip_prefix(".tmp."))
    else {
        return false;
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates `.<name>.tmp.<pid>.<n>.<nanos>` beside `path` with `O_EXCL`,
/// retrying with a new name if one happens to exist.
fn create_temp(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = parent_dir(path);
    let mut last_err = None;
    for _ in 0..16 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}.{n}.{nanos}", std::process::id()));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("could not create a temp file")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn creates_and_replaces_with_exact_mode() {
        let d = TestDir::new("atomic");
        let p = d.0.join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(mode_of(&p), 0o600);

        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"two, longer", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        assert_eq!(mode_of(&p), 0o640, "mode is set, not inherited or umasked");
        assert_eq!(entries(&d.0), vec!["f".to_string()], "no temp file left");
    }

    #[test]
    fn dropped_stage_leaves_target_and_no_temp() {
        let d = TestDir::new("atomic-drop");
        let p = d.0.join("f");
        write_atomic(&p, b"old", 0o600).unwrap();
        let staged = StagedFile::stage(&p, b"new", 0o600).unwrap();
        assert_eq!(entries(&d.0).len(), 2, "temp file exists while staged");
        assert_eq!(
            fs::read(&p).unwrap(),
            b"old",
            "target untouched until commit"
        );
        drop(staged);
        assert_eq!(entries(&d.0), vec!["f".to_string()]);
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn temp_names_are_recognised() {
        let d = TestDir::new("atomic-names");
        let staged = StagedFile::stage(&d.0.join("key.pub"), b"x", 0o600).unwrap();
        let tmp = entries(&d.0).pop().unwrap();
        assert!(is_temp_of(&tmp, "key.pub"), "{tmp}");
        assert!(!is_temp_of(&tmp, "key"), "{tmp}");
        drop(staged);
        assert!(is_temp_of(".key.tmp.1.0.123", "key"));
        assert!(!is_temp_of("key", "key"));
        assert!(!is_temp_of(".key.tmp.notes", "key"));
        assert!(!is_temp_of(".key.tmp.1.2", "key"));
        assert!(!is_temp_of(".key.tmp.1.2.3.4", "key"));
        assert!(!is_temp_of(".key.tmp.x.2.3", "key"));
        assert!(!is_temp_of(".other.tmp.1.2.3", "key"));
    }

    #[test]
    fn stale_temps_are_removed_whatever_the_pid() {
        let d = TestDir::new("atomic-stale");
        // PID 1 and our own PID are alive: the writer is gone all the same
        // (a container's tbot is PID 1 on every start).
        let ours = format!(".key.tmp.{}.1.2", std::process::id());
        let planted = [".key.tmp.1.1.2", ".key.tmp.0.1.2", ".f.tmp.7.0.9", &ours];
        let kept = [".key.tmp.notes", ".other.tmp.1.1.2", "key", "f"];
        for n in planted.iter().chain(&kept) {
            fs::write(d.0.join(n), b"x").unwrap();
        }
        remove_stale_temps(&d.0, &["key", "f"]);
        let mut want: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(entries(&d.0), want);
        // A missing directory is nothing to clean.
        remove_stale_temps(&d.0.join("missing"), &["key"]);
    }

    #[test]
    fn error_when_directory_missing_and_no_litter() {
        let d = TestDir::new("atomic-err");
        let p = d.0.join("missing").join("f");
        let e = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);

        // Renaming over a directory fails after staging: the temp is removed.
        let target = d.0.join("adir");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_atomic(&target, b"x", 0o600).is_err());
        assert_eq!(entries(&d.0), vec!["adir".to_string()]);
    }
}
