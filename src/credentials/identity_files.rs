//! Writes an issued credential into an identity output's destination
//! directory as one generation: `key`, `key.pub`, `key-cert.pub` and
//! `ssh_ca.pub` change together in one atomic step, or not at all, even if
//! tbot is killed at any moment.
//!
//! The layout (Kubernetes' `AtomicWriter` for projected volumes does the
//! same):
//!
//! ```text
//! DEST/..gen-<secs>.<nanos>/{key,key.pub,key-cert.pub,ssh_ca.pub}   0700 / 0600
//! DEST/..data -> ..gen-<secs>.<nanos>
//! DEST/key -> ..data/key  (and key.pub, key-cert.pub, ssh_ca.pub)
//! ```
//!
//! A write makes a new generation directory, writes the four files in it,
//! then fsyncs them (one after the other once all are written, so that the
//! file system writes them out together) and the directory, then points a
//! new symlink `..data_tmp` at it and renames that over `..data`: that
//! `rename(2)` is the one step that switches every file at once. Into a
//! destination this write made (empty: there is no `..data` to replace),
//! `..data` itself is made with one `symlinkat(2)`, as atomic, and the
//! links are made without looking for old ones first. The paths users configure (`DEST/key`, which
//! ssh reads with `key-cert.pub` beside it) are symlinks through `..data`
//! that never change; they are made (or, for a destination from the old
//! flat layout, swapped in over the regular files, one rename each) after
//! the switch. Older generations are removed last. A kill before the switch
//! leaves the old set in force plus an unpublished generation, which
//! [`remove_stale_temps`] (run when the output starts, before its first
//! write) removes.
//!
//! Every step goes through a directory handle from [`crate::infra::chase`], so a
//! destination path with a symlink another user planted is refused.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::credentials::issuer::Credential;
use crate::infra::acl::{Kind, Policy};
use crate::infra::chase::{open_dir, DirHandle};

pub const KEY_FILE: &str = "key";
pub const PUBLIC_KEY_FILE: &str = "key.pub";
pub const CERT_FILE: &str = "key-cert.pub";
pub const CA_FILE: &str = "ssh_ca.pub";
/// The four files [`write_identity`] writes.
pub const FILES: [&str; 4] = [CA_FILE, PUBLIC_KEY_FILE, KEY_FILE, CERT_FILE];
/// Mode of every file written.
pub const FILE_MODE: u32 = 0o600;
/// The symlink naming the current generation.
pub const DATA_LINK: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// Prefix of generation directories.
pub const GEN_PREFIX: &str = "..gen-";

/// Writes `cred` and the CA public key line `ca_pub` into `dest` as a new
/// generation, creating `dest` (0700) if missing. The generation carries
/// the readers' ACLs of `readers` before it is published (see
/// [`grant_generation`]). `clean`: first remove what an interrupted write
/// left (see [`remove_stale_temps`]; for the output's first write since it
/// started). Errors are one line: `<path>: <reason>`.
pub fn write_identity(
    dest: &Path,
    cred: &Credential,
    ca_pub: &str,
    readers: &mut Policy,
    clean: bool,
) -> Result<(), String> {
    let dir = open_dir(dest, true)?;
    // A directory this call made holds nothing: no leftovers, no old layout.
    if clean && !dir.created() {
        remove_leftovers(&dir);
    }
    if !dir.created() && dir.read_link(DATA_LINK).is_none() {
        migrate_flat(&dir, readers)?;
    }
    let files: [(&str, &[u8]); 4] = [
        (CA_FILE, ca_pub.as_bytes()),
        (PUBLIC_KEY_FILE, cred.public_key_openssh.as_bytes()),
        (KEY_FILE, cred.private_key_openssh.as_bytes()),
        (CERT_FILE, cred.certificate_openssh.as_bytes()),
    ];
    publish(&dir, &files, readers, true)
}

/// A destination from the old flat layout (regular files, no `..data`):
/// publishes the files there as they are, as a first generation, and swaps
/// each for its link to identical contents; so a kill at any point leaves
/// a matching set, and the new credential then comes in the one switch.
fn migrate_flat(dir: &DirHandle, readers: &mut Policy) -> Result<(), String> {
    let mut old: Vec<(&str, Vec<u8>)> = Vec::new();
    for name in FILES {
        if dir.file_type(name)? == Some(rustix::fs::FileType::RegularFile) {
            old.push((name, dir.read_file(name, 64 * 1024)?));
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    crate::log::info(
        "moving an identity destination to the generation layout",
        &[("destination", &dir.path().display())],
    );
    let files: Vec<(&str, &[u8])> = old.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    publish(dir, &files, readers, false)
}

/// Writes `files` as a new generation, grants the readers, switches
/// `..data` to it, makes the links, removes older generations (in a
/// destination this write made, [`DirHandle::created`], there are none,
/// and `..data` and the links are made in place). `steps`: reach the
/// failpoints.
fn publish(
    dir: &DirHandle,
    files: &[(&str, &[u8])],
    readers: &mut Policy,
    steps: bool,
) -> Result<(), String> {
    let step = |n: usize, path: &Path| {
        if steps {
            step(n, path)
        }
    };
    let gen_name = make_generation(dir)?;
    step(1, &dir.join(&gen_name));
    let written = write_generation(dir, &gen_name, files, &step)
        .and_then(|()| grant_generation(dir, &gen_name, files, readers));
    if let Err(e) = written {
        let _ = dir.remove_dir_with_files(&gen_name);
        return Err(e);
    }
    // The switch: ..data_tmp -> the new generation, renamed over ..data;
    // into an empty destination, ..data made at once (as atomic: it is
    // there, whole, or not at all).
    if !(dir.created() && dir.symlink(&gen_name, DATA_LINK).is_ok()) {
        dir.remove_file(DATA_TMP)?;
        dir.symlink(&gen_name, DATA_TMP)?;
        step(7, &dir.join(DATA_TMP));
        dir.rename(DATA_TMP, DATA_LINK)?;
    }
    step(8, &dir.join(DATA_LINK));
    for (n, (name, _)) in files.iter().enumerate() {
        let target = format!("{DATA_LINK}/{name}");
        if !(dir.created() && dir.symlink(&target, name).is_ok()) {
            ensure_link(dir, name)?;
        }
        step(9 + n, &dir.join(name));
    }
    dir.sync()?;
    step(13, dir.path());
    if dir.created() {
        return Ok(());
    }
    remove_old_generations(dir, Some(&gen_name))
}

/// Creates a fresh, empty generation directory (0700); returns its name.
fn make_generation(dir: &DirHandle) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    for n in 0..100u32 {
        let name = format!(
            "{GEN_PREFIX}{}.{:09}{}",
            now.as_secs(),
            now.subsec_nanos(),
            if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            }
        );
        match dir.mkdir(&name, 0o700) {
            Ok(()) => return Ok(name),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(crate::infra::chase::describe(&dir.join(&name), e)),
        }
    }
    Err(format!(
        "{}: could not create a new generation directory",
        dir.path().display()
    ))
}

/// Writes every file in the generation directory, then fsyncs each and
/// the directory itself: all written before the first fsync, so that the
/// file system writes their blocks and inodes out together rather than
/// one fsync each (the inodes of one directory share a block). Nothing is
/// published until all are durable; on an error the caller removes the
/// whole generation.
fn write_generation(
    dir: &DirHandle,
    gen_name: &str,
    files: &[(&str, &[u8])],
    step: &dyn Fn(usize, &Path),
) -> Result<(), String> {
    let gen = dir.subdir(gen_name)?;
    let mut written = Vec::with_capacity(files.len());
    for (n, (name, contents)) in files.iter().enumerate() {
        let contents = with_newline(contents);
        written.push(gen.create_unsynced(name, &contents, FILE_MODE, |p| {
            crate::infra::failpoints::hit_in_write("stage-half", p)
        })?);
        step(2 + n, &gen.join(name));
    }
    for file in written {
        file.sync()?;
    }
    gen.sync()?;
    step(6, gen.path());
    Ok(())
}

/// Gives the readers their rights on a generation before it is published:
/// traverse on the destination and the generation directory, read on each
/// file (`infra::acl`). With nothing to grant, nothing is done: the new
/// generation has the plain modes already. A refusal under
/// `acls: required` is the error.
fn grant_generation(
    dir: &DirHandle,
    gen_name: &str,
    files: &[(&str, &[u8])],
    readers: &mut Policy,
) -> Result<(), String> {
    if !readers.grants() {
        return Ok(());
    }
    let gen = dir.subdir(gen_name)?;
    let mut objects = vec![(dir, None, Kind::Dir), (&gen, None, Kind::Dir)];
    objects.extend(
        files
            .iter()
            .map(|(name, _)| (&gen, Some(*name), Kind::File)),
    );
    readers.apply(&objects)
}

/// Applies `readers` to the generation in force (a reload changed them):
/// the destination, the generation `..data` names, its files. A
/// destination with no generation yet is nothing to do.
pub fn grant_current(dest: &Path, readers: &mut Policy) -> Result<(), String> {
    let Ok(dir) = open_dir(dest, false) else {
        return Ok(());
    };
    let Some(gen_name) = dir
        .read_link(DATA_LINK)
        .filter(|g| g.starts_with(GEN_PREFIX) && !g.contains('/'))
    else {
        return readers.reapply(&[(&dir, None, Kind::Dir)]);
    };
    let gen = dir.subdir(&gen_name)?;
    let mut objects = vec![(&dir, None, Kind::Dir), (&gen, None, Kind::Dir)];
    for name in FILES {
        if gen.file_type(name)? == Some(rustix::fs::FileType::RegularFile) {
            objects.push((&gen, Some(name), Kind::File));
        }
    }
    readers.reapply(&objects)
}

/// Makes `DEST/name` the symlink `..data/name` unless it already is. A
/// regular file there (the old flat layout) is replaced in one rename.
fn ensure_link(dir: &DirHandle, name: &str) -> Result<(), String> {
    let target = format!("{DATA_LINK}/{name}");
    match dir.read_link(name) {
        Some(t) if t == target => return Ok(()),
        // Nothing there (a first write): made in place, in one call that
        // fails on anything already there (which the rename below replaces).
        None if dir.symlink(&target, name).is_ok() => return Ok(()),
        _ => {}
    }
    if let Some(rustix::fs::FileType::Directory) = dir.file_type(name)? {
        return Err(format!(
            "{}: is a directory; expected a file or a symbolic link",
            dir.join(name).display()
        ));
    }
    let tmp = format!(".{name}.link_tmp");
    dir.remove_file(&tmp)?;
    dir.symlink(&target, &tmp)?;
    dir.rename(&tmp, name)
}

/// Removes every generation directory but `keep` (the one `..data` points
/// at when None), a leftover `..data_tmp`, and the temp files of the old
/// flat layout's writer.
fn remove_old_generations(dir: &DirHandle, keep: Option<&str>) -> Result<(), String> {
    let current = match keep {
        Some(k) => Some(k.to_string()),
        None => dir.read_link(DATA_LINK),
    };
    for name in dir.entries()? {
        let stale_gen = name.starts_with(GEN_PREFIX) && current.as_deref() != Some(&name);
        let stale_file = name == DATA_TMP
            || (name.ends_with(".link_tmp") && name.starts_with('.'))
            || FILES
                .iter()
                .any(|f| crate::infra::atomic_file::is_temp_of(&name, f));
        if stale_gen {
            dir.remove_dir_with_files(&name)?;
        } else if stale_file {
            dir.remove_file(&name)?;
        } else {
            continue;
        }
        crate::log::debug(
            "removed a leftover of an earlier write",
            &[("path", &dir.join(&name).display())],
        );
    }
    Ok(())
}

/// Removes what an interrupted [`write_identity`] left in `dest`: an
/// unpublished generation (it can hold a private key), `..data_tmp`, temp
/// files. Only for the destination's owner, before its first write. A
/// missing destination is nothing to clean; other failures are logged.
pub fn remove_stale_temps(dest: &Path) {
    let Ok(dir) = open_dir(dest, false) else {
        return;
    };
    remove_leftovers(&dir);
}

/// [`remove_stale_temps`] in an opened destination.
fn remove_leftovers(dir: &DirHandle) {
    if let Err(e) = remove_old_generations(dir, None) {
        crate::log::warn(
            "could not remove the leftovers of an interrupted write",
            &[("error", &e)],
        );
    }
}

/// The failpoint `identity-step-<n>` (debug builds), reached after step `n`
/// of a write: 1 generation made, 2-5 each file written, 6 generation
/// fsynced, 7 `..data_tmp` made, 8 `..data` switched, 9-12 each link
/// ensured, 13 destination fsynced. The tests kill tbot at each.
#[cfg(debug_assertions)]
fn step(n: usize, path: &Path) {
    crate::infra::failpoints::hit_in_write(&format!("identity-step-{n}"), path);
}

#[cfg(not(debug_assertions))]
#[inline(always)]
fn step(_n: usize, _path: &Path) {}

/// OpenSSH files end with a newline; the one-line encodings come without.
fn with_newline(contents: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(contents.len() + 1));
    v.extend_from_slice(contents);
    if !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::issuer::Issuer;
    use crate::testutil::TestDir;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Duration;

    fn plain() -> Policy {
        Policy::new("t", crate::infra::acl::Access::default())
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn issue(i: &Issuer, user: &str) -> Credential {
        i.issue(&[user.to_string()], "tbot-test", Duration::from_secs(600))
            .unwrap()
    }

    #[test]
    fn writes_the_four_files_0600_and_replaces_them() {
        let d = TestDir::new("identity");
        let issuer = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let dest = d.0.join("out").join("machine-id");
        let c1 = issue(&issuer, "deploy");
        write_identity(&dest, &c1, &issuer.ca_public_openssh(), &mut plain(), false).unwrap();
        assert_eq!(mode_of(&dest), 0o700);
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 6, "{names:?}");
        assert_eq!(names[0], "..data");
        assert!(names[1].starts_with(GEN_PREFIX), "{names:?}");
        assert_eq!(names[2..], ["key", "key-cert.pub", "key.pub", "ssh_ca.pub"]);
        for n in &names[2..] {
            assert_eq!(
                fs::read_link(dest.join(n)).unwrap(),
                Path::new("..data").join(n)
            );
            assert_eq!(mode_of(&dest.join(n)), 0o600, "{n}");
            assert!(fs::read(dest.join(n)).unwrap().ends_with(b"\n"), "{n}");
        }
        assert_eq!(mode_of(&dest.join(&names[1])), 0o700);
        assert_eq!(
            fs::read_to_string(dest.join("ssh_ca.pub")).unwrap(),
            format!("{}\n", issuer.ca_public_openssh())
        );

        // ssh-keygen accepts the key file (it refuses keys that are too open)
        // and derives the public key we wrote.
        let y = Command::new("ssh-keygen")
            .args(["-y", "-f"])
            .arg(dest.join("key"))
            .output()
            .unwrap();
        assert!(y.status.success(), "{}", String::from_utf8_lossy(&y.stderr));
        let derived = String::from_utf8(y.stdout).unwrap();
        let written = fs::read_to_string(dest.join("key.pub")).unwrap();
        assert_eq!(
            derived.split_whitespace().nth(1),
            written.split_whitespace().nth(1)
        );

        let c2 = issue(&issuer, "deploy");
        write_identity(&dest, &c2, &issuer.ca_public_openssh(), &mut plain(), false).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("key-cert.pub")).unwrap(),
            format!("{}\n", c2.certificate_openssh)
        );
        assert_eq!(
            fs::read_dir(&dest).unwrap().count(),
            6,
            "one generation, no temp files left"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let d = TestDir::new("identity-err");
        let issuer = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let cred = issue(&issuer, "deploy");
        let file = d.0.join("plain");
        fs::write(&file, b"x").unwrap();
        // A file where the destination directory should be.
        let e = write_identity(&file, &cred, "ca", &mut plain(), false).unwrap_err();
        assert_eq!(e, format!("{}: not a directory", file.display()));
        let e = write_identity(&file.join("sub"), &cred, "ca", &mut plain(), false).unwrap_err();
        assert_eq!(e, format!("{}: not a directory", file.display()));
        // A directory where a file's link should be: the new generation is
        // published, the error names the file, and the next write after the
        // cause is gone succeeds.
        let dest = d.0.join("dest");
        fs::create_dir_all(dest.join(CERT_FILE).join("x")).unwrap();
        let e = write_identity(&dest, &cred, "ca", &mut plain(), false).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: is a directory; expected a file or a symbolic link",
                dest.join(CERT_FILE).display()
            )
        );
        fs::remove_dir_all(dest.join(CERT_FILE)).unwrap();
        write_identity(&dest, &cred, "ca", &mut plain(), false).unwrap();
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 6);
    }

    #[test]
    fn a_flat_destination_is_migrated_and_leftovers_removed() {
        let d = TestDir::new("identity-migrate");
        let issuer = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let dest = d.0.join("out");
        fs::create_dir(&dest).unwrap();
        for f in FILES {
            fs::write(dest.join(f), b"old flat file\n").unwrap();
        }
        // An interrupted write's leftovers.
        fs::create_dir(dest.join("..gen-1.000000001")).unwrap();
        fs::write(dest.join("..gen-1.000000001").join("key"), b"half").unwrap();
        fs::write(dest.join(".key.tmp.1.0.7"), b"half").unwrap();
        remove_stale_temps(&dest);
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 4);
        let c = issue(&issuer, "deploy");
        write_identity(&dest, &c, &issuer.ca_public_openssh(), &mut plain(), false).unwrap();
        for f in FILES {
            assert!(
                fs::symlink_metadata(dest.join(f)).unwrap().is_symlink(),
                "{f}"
            );
        }
        assert_eq!(
            fs::read_to_string(dest.join(CERT_FILE)).unwrap(),
            format!("{}\n", c.certificate_openssh)
        );
    }
}
