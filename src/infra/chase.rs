//! Opening an output directory without following symlinks that another user
//! planted, and writing into it only through the opened handle.
//!
//! The path is walked one component at a time from `/` (or the working
//! directory for a relative path), each component opened with
//! `openat(O_PATH|O_NOFOLLOW)` relative to the directory handle before it,
//! as systemd's `chase()` does. A component that is a symbolic link is
//! followed only when it is owned by root or by tbot's own effective user:
//! a link owned by anyone else is refused, which is the rule the kernel's
//! `fs.protected_symlinks` applies in sticky world-writable directories
//! (`/tmp`), applied everywhere. Missing directories are created (0700) when
//! asked. Every later write — temp file, rename, symlink, removal, fsync —
//! goes through the final [`DirHandle`] (`openat`, `renameat`, `unlinkat`
//! relative to it), so swapping a component for a symlink after the walk
//! changes nothing. A path with no symlink in it at all is opened in one
//! `openat2(RESOLVE_NO_SYMLINKS)` call, which refuses every link on the way
//! (the walk then judges them).
//!
//! Errors are one line in the operator's words, naming the path walked so
//! far: `/srv/out/key: not a directory`,
//! `/tmp/x/pub/out: symbolic link owned by uid 65534 ...`.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

/// Symlinks followed in one walk before giving up, as the kernel's ELOOP.
const MAX_LINKS: usize = 40;

/// A directory opened by [`open_dir`] (`O_RDONLY|O_DIRECTORY`), with the
/// path it was opened as, for messages.
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
    /// The call that opened it also made it (`mkdirat` succeeded): it is
    /// empty, 0700 and tbot's, and nothing can be in it that tbot did not
    /// put there (see [`DirHandle::created`]).
    created: bool,
}

/// A file [`DirHandle::create_unsynced`] wrote, not yet fsynced.
#[derive(Debug)]
pub struct Unsynced {
    file: std::fs::File,
    path: PathBuf,
}

impl Unsynced {
    /// fsyncs the file (its contents and its inode: durable from now on)
    /// and drops its pages from the page cache, where they would be
    /// charged to tbot's cgroup for good, 4 KiB or more a file (ssh reads
    /// these files once a connection, from the disk). Errors name the file.
    pub fn sync(self) -> Result<(), String> {
        self.file
            .sync_all()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let _ = rfs::fadvise(&self.file, 0, None, rfs::Advice::DontNeed);
        Ok(())
    }
}

/// Starts writing `file`'s dirty pages to the disk without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which rustix does not wrap):
/// the files of a generation are then on their way together, and each
/// fsync after them finds its data written or being written. Only a hint
/// to the kernel: durability still comes from the fsync alone, so an
/// error here changes nothing and is ignored.
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) takes a descriptor this function borrows
    // (open for its whole call), two offsets and flags; it touches no
    // memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Whether `uid` may own a symlink that tbot follows: root or tbot's own
/// effective user (see the module documentation).
pub fn trusted_link_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// The message for an OS error at `path`, in the operator's words where the
/// raw text misleads (`ENOTDIR` / `EEXIST` on a file where a directory is
/// expected read "not a directory").
pub fn describe(path: &Path, e: Errno) -> String {
    match e {
        Errno::NOTDIR => format!("{}: not a directory", path.display()),
        // Out of descriptors: which limit, and what to raise.
        other => crate::infra::limits::describe_at(path, std::io::Error::from(other)),
    }
}

/// Opens the directory `path` by walking it from the root (see the module
/// documentation), creating missing components with mode 0700 when
/// `create`. Errors: `<path so far>: <reason>`.
pub fn open_dir(path: &Path, create: bool) -> Result<DirHandle, String> {
    // The common case in one call: a path without any symbolic link in it
    // (RESOLVE_NO_SYMLINKS, openat2(2)) has none to judge, and opening it
    // is what the walk would end with. A missing directory: the walk goes
    // on from its deepest ancestor opened that way. Anything else (a link
    // on the way, an error to describe, a kernel without openat2) takes the
    // walk from the start.
    let opened = rfs::openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    );
    let found = match opened {
        Ok(fd) => {
            return Ok(DirHandle {
                fd,
                path: path.to_path_buf(),
                created: false,
            })
        }
        Err(Errno::NOENT) => from_ancestor(path, create),
        Err(_) => None,
    };
    let mut walk = match found {
        Some(walk) => walk,
        None => Walk::new(path, create)?,
    };
    while let Some(name) = walk.todo.pop_front() {
        walk.step(name)?;
    }
    walk.finish(path)
}

/// How much of a directory path exists: see [`probe_dir`].
#[derive(Debug)]
pub struct Probe {
    /// The deepest directory of the path that exists (the path itself when
    /// `missing` is 0).
    pub deepest: DirHandle,
    /// How many components are missing below it (what [`open_dir`] with
    /// `create` would make).
    pub missing: usize,
}

/// Walks `path` as [`open_dir`] does (the same symlink rule, the same
/// errors) but creates nothing and changes nothing: it stops at the first
/// component that does not exist. For `tbot check`.
pub fn probe_dir(path: &Path) -> Result<Probe, String> {
    let mut walk = Walk::new(path, false)?;
    while let Some(name) = walk.todo.pop_front() {
        if name != ".." {
            match rfs::statat(&walk.cur, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => {
                    walk.todo.push_front(name);
                    break;
                }
                Err(e) => return Err(describe(&walk.walked.join(&name), e)),
                Ok(_) => {}
            }
        }
        walk.step(name)?;
    }
    let missing = walk.todo.len();
    let shown = walk.walked.clone();
    Ok(Probe {
        deepest: walk.finish(&shown)?,
        missing,
    })
}

impl Walk {
    /// A walk of `path` from `/` (absolute) or the working directory.
    fn new(path: &Path, create: bool) -> Result<Walk, String> {
        let start = if path.is_absolute() { "/" } else { "." };
        let base = rfs::openat(CWD, start, path_flags(), Mode::empty())
            .map_err(|e| describe(Path::new(start), e))?;
        Ok(Walk {
            cur: base,
            walked: PathBuf::from(if path.is_absolute() { "/" } else { "" }),
            todo: components(path),
            links: 0,
            create,
            made: false,
        })
    }

    /// The directory the walk ended in, opened for reading, as `path`.
    fn finish(self, path: &Path) -> Result<DirHandle, String> {
        if self.made {
            // Made by the last step and opened for reading there.
            return Ok(DirHandle {
                fd: self.cur,
                path: path.to_path_buf(),
                created: true,
            });
        }
        let shown = if self.walked.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            self.walked.clone()
        };
        let fd = rfs::openat(
            &self.cur,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| describe(&shown, e))?;
        Ok(DirHandle {
            fd,
            path: path.to_path_buf(),
            created: false,
        })
    }
}

/// A walk of the rest of `path` from its deepest existing ancestor that has
/// no symbolic link in it (opened with RESOLVE_NO_SYMLINKS), for a path of
/// plain names only; None when there is none (the walk starts at the root).
fn from_ancestor(path: &Path, create: bool) -> Option<Walk> {
    if !path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
    {
        return None;
    }
    for ancestor in path.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() || ancestor == Path::new("/") {
            return None;
        }
        match rfs::openat2(
            CWD,
            ancestor,
            path_flags(),
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(cur) => {
                let rest = path.strip_prefix(ancestor).ok()?;
                return Some(Walk {
                    cur,
                    walked: ancestor.to_path_buf(),
                    todo: components(rest),
                    links: 0,
                    create,
                    made: false,
                });
            }
            Err(Errno::NOENT) => continue,
            Err(_) => return None,
        }
    }
    None
}

fn path_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

struct Walk {
    cur: OwnedFd,
    /// The real path of `cur` (symlinks resolved), for messages.
    walked: PathBuf,
    todo: VecDeque<OsString>,
    links: usize,
    create: bool,
    /// The last step made `cur` (and opened it for reading).
    made: bool,
}

impl Walk {
    fn step(&mut self, name: OsString) -> Result<(), String> {
        self.made = false;
        if name == ".." {
            self.cur = rfs::openat(&self.cur, "..", path_flags(), Mode::empty())
                .map_err(|e| describe(&self.walked, e))?;
            self.walked.pop();
            return Ok(());
        }
        self.walked.push(&name);
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rfs::openat(&self.cur, name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if self.create => {
                match rfs::mkdirat(&self.cur, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) => return self.enter_made(&name),
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(describe(&self.walked, e)),
                }
                rfs::openat(&self.cur, name.as_os_str(), flags, Mode::empty())
                    .map_err(|e| describe(&self.walked, e))?
            }
            Err(e) => return Err(describe(&self.walked, e)),
        };
        let st = rfs::fstat(&fd).map_err(|e| describe(&self.walked, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                self.cur = fd;
                Ok(())
            }
            FileType::Symlink => self.follow(&fd, st.st_uid),
            _ => Err(format!("{}: not a directory", self.walked.display())),
        }
    }

    /// Enters the directory `name` this step just made: opened for reading
    /// at once, never through a symlink (`O_DIRECTORY|O_NOFOLLOW`: a name
    /// swapped for anything but a directory since the `mkdirat` is an
    /// error), so no `fstat` is needed and [`Walk::finish`] need not open
    /// it again.
    fn enter_made(&mut self, name: &OsStr) -> Result<(), String> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        self.cur = rfs::openat(&self.cur, name, flags, Mode::empty())
            .map_err(|e| describe(&self.walked, e))?;
        self.made = true;
        Ok(())
    }

    /// Follows the symlink opened as `link` (owned by `uid`), or refuses it.
    fn follow(&mut self, link: &OwnedFd, uid: u32) -> Result<(), String> {
        if !trusted_link_owner(uid) {
            return Err(format!(
                "{}: symbolic link owned by uid {uid}, neither root nor tbot's user (uid {}); refusing to follow it",
                self.walked.display(),
                rustix::process::geteuid().as_raw()
            ));
        }
        self.links += 1;
        if self.links > MAX_LINKS {
            return Err(describe(&self.walked, Errno::LOOP));
        }
        // The link itself (empty path on an O_PATH descriptor): no race with
        // a swap of the name since it was opened.
        let target =
            rfs::readlinkat(link, "", Vec::new()).map_err(|e| describe(&self.walked, e))?;
        let target = PathBuf::from(OsStr::from_bytes(target.to_bytes()));
        self.walked.pop();
        if target.is_absolute() {
            self.cur = rfs::openat(CWD, "/", path_flags(), Mode::empty())
                .map_err(|e| describe(Path::new("/"), e))?;
            self.walked = PathBuf::from("/");
        }
        for c in components(&target).into_iter().rev() {
            self.todo.push_front(c);
        }
        Ok(())
    }
}

impl DirHandle {
    /// The path the directory was opened as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the [`open_dir`] that opened this directory made it: then
    /// it was empty when opened, mode 0700 and tbot's, so a writer may skip
    /// looking for what an earlier one left there.
    pub fn created(&self) -> bool {
        self.created
    }

    /// `path/name`, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the subdirectory `name` without following a symlink there.
    pub fn subdir(&self, name: &str) -> Result<DirHandle, String> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| describe(&self.join(name), e))?;
        Ok(DirHandle {
            fd,
            path: self.join(name),
            created: false,
        })
    }

    /// Creates `name` (`O_EXCL`, never through a symlink) with exactly
    /// `mode`, writes `contents`, fsyncs it and drops its pages from the
    /// page cache (`POSIX_FADV_DONTNEED`). `step` is called half-way
    /// through the write in debug builds (for the failpoints), after it in
    /// release builds. The file is removed again on
    /// any error.
    pub fn create_file(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        step: impl FnOnce(&Path),
    ) -> Result<(), String> {
        self.create_unsynced(name, contents, mode, step)?
            .sync()
            .inspect_err(|_| {
                let _ = rfs::unlinkat(&self.fd, name, AtFlags::empty());
            })
    }

    /// [`DirHandle::create_file`] up to the fsync: the file is written but
    /// not yet durable, and not removed if [`Unsynced::sync`] fails later.
    /// For a writer that writes several files and then fsyncs them one
    /// after the other, so that the file system writes them out together
    /// (see `identity_files`). A failed write removes the file.
    pub fn create_unsynced(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        step: impl FnOnce(&Path),
    ) -> Result<Unsynced, String> {
        let path = self.join(name);
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| describe(&path, e))?;
        let written = (|| {
            // The umask may have narrowed the mode; set it before any byte.
            rfs::fchmod(&fd, Mode::from_raw_mode(mode))?;
            let mut file = std::fs::File::from(fd);
            // Debug builds write it in two halves, `step` between them
            // (the failpoints); release builds in one go.
            let half = if cfg!(debug_assertions) {
                contents.len() / 2
            } else {
                contents.len()
            };
            let (first, rest) = contents.split_at(half);
            std::io::Write::write_all(&mut file, first)?;
            step(&path);
            if !rest.is_empty() {
                std::io::Write::write_all(&mut file, rest)?;
            }
            start_writeback(&file);
            Ok::<std::fs::File, std::io::Error>(file)
        })();
        match written {
            Ok(file) => Ok(Unsynced { file, path }),
            Err(e) => {
                let _ = rfs::unlinkat(&self.fd, name, AtFlags::empty());
                Err(format!("{}: {e}", path.display()))
            }
        }
    }

    /// Reads the regular file `name` (never through a symlink), at most
    /// `max` bytes.
    pub fn read_file(&self, name: &str, max: u64) -> Result<Vec<u8>, String> {
        let path = self.join(name);
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| describe(&path, e))?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::from(fd), max),
            &mut out,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(out)
    }

    /// Replaces `name` with `contents` atomically: a temp file beside it,
    /// renamed over it, the directory fsynced; all through this handle.
    pub fn write_atomic(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), String> {
        let tmp = format!(".{name}.tmp.{}.0.0", std::process::id());
        let _ = rfs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        self.create_file(&tmp, contents, mode, |_| {})?;
        if let Err(e) = self.rename(&tmp, name) {
            let _ = rfs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        self.sync()
    }

    /// `renameat(from, to)` inside this directory; the error names `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(|e| describe(&self.join(to), e))
    }

    /// Creates the symlink `name -> target`.
    pub fn symlink(&self, target: &str, name: &str) -> Result<(), String> {
        rfs::symlinkat(target, &self.fd, name).map_err(|e| describe(&self.join(name), e))
    }

    /// The target of the symlink `name`, or None if `name` is missing or
    /// not a symlink.
    pub fn read_link(&self, name: &str) -> Option<String> {
        let t = rfs::readlinkat(&self.fd, name, Vec::new()).ok()?;
        t.into_string().ok()
    }

    /// What `name` is (not following a symlink), or None if missing.
    pub fn file_type(&self, name: &str) -> Result<Option<FileType>, String> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(describe(&self.join(name), e)),
        }
    }

    /// Creates the subdirectory `name` with `mode`.
    pub fn mkdir(&self, name: &str, mode: u32) -> Result<(), Errno> {
        rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode))
    }

    /// Removes the file or symlink `name`; a missing one is fine.
    pub fn remove_file(&self, name: &str) -> Result<(), String> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(describe(&self.join(name), e)),
        }
    }

    /// Removes the subdirectory `name` and the files in it (one level: the
    /// generation directories hold files only).
    pub fn remove_dir_with_files(&self, name: &str) -> Result<(), String> {
        let sub = self.subdir(name)?;
        for entry in sub.entries()? {
            sub.remove_file(&entry)?;
        }
        match rfs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(describe(&self.join(name), e)),
        }
    }

    /// The names in this directory, without `.` and `..`.
    pub fn entries(&self) -> Result<Vec<String>, String> {
        let dir = rfs::Dir::read_from(&self.fd).map_err(|e| describe(&self.path, e))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| describe(&self.path, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            names.push(String::from_utf8_lossy(name).into_owned());
        }
        Ok(names)
    }

    /// fsyncs the directory, so that renames and creations in it are durable.
    pub fn sync(&self) -> Result<(), String> {
        rfs::fsync(&self.fd).map_err(|e| describe(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn creates_missing_directories_and_follows_own_links() {
        let d = TestDir::new("chase");
        let real = d.0.join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, d.0.join("link")).unwrap();
        symlink("../real", d.0.join("real").join("up")).unwrap();
        let h = open_dir(&d.0.join("link/up/new/deeper"), true).unwrap();
        h.write_atomic("f", b"x", 0o600).unwrap();
        assert_eq!(fs::read(real.join("new/deeper/f")).unwrap(), b"x");
        assert!(open_dir(&d.0.join("missing"), false).is_err());
        // From the deepest existing ancestor: the error names the first
        // missing directory, as the walk from the root does.
        let missing = d.0.join("real/gone");
        assert_eq!(
            open_dir(&missing.join("deeper"), false).unwrap_err(),
            format!(
                "{}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn a_file_in_the_way_is_not_a_directory() {
        let d = TestDir::new("chase-file");
        fs::write(d.0.join("plain"), b"x").unwrap();
        let p = d.0.join("plain");
        assert_eq!(
            open_dir(&p, true).unwrap_err(),
            format!("{}: not a directory", p.display())
        );
        assert_eq!(
            open_dir(&p.join("sub"), true).unwrap_err(),
            format!("{}: not a directory", p.display())
        );
    }

    #[test]
    fn probe_creates_nothing_and_says_what_is_missing() {
        let d = TestDir::new("chase-probe");
        let real = d.0.join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, d.0.join("link")).unwrap();
        let p = probe_dir(&d.0.join("link/a/b")).unwrap();
        assert_eq!(p.missing, 2);
        assert_eq!(p.deepest.path(), real);
        assert!(!real.join("a").exists());
        let p = probe_dir(&d.0.join("link")).unwrap();
        assert_eq!(p.missing, 0);
        fs::write(real.join("f"), b"x").unwrap();
        let e = probe_dir(&d.0.join("link/f/x")).unwrap_err();
        assert_eq!(e, format!("{}: not a directory", real.join("f").display()));
    }

    #[test]
    fn link_loops_end() {
        let d = TestDir::new("chase-loop");
        symlink("b", d.0.join("a")).unwrap();
        symlink("a", d.0.join("b")).unwrap();
        let e = open_dir(&d.0.join("a"), true).unwrap_err();
        assert!(e.contains("symbolic links"), "{e}");
    }
}
