//! POSIX ACLs that let a destination's `readers` use what tbot writes there:
//! upstream tbot's `acls: off|try|required` and `readers` (`lib/tbot/botfs`),
//! set through the exacl crate (libacl's `acl_set_file`), never by writing
//! the `system.posix_acl_access` attribute's encoding by hand.
//!
//! The ACL tbot sets is the whole ACL, as upstream's `ConfigureACL` does: the
//! owner (tbot's user) gets `rw-` on a file or socket and `rwx` on a
//! directory (the rights of tbot's own modes 0600 and 0700, whatever the
//! object's mode was), the owning group and others get nothing, and
//! each reader gets the least it needs on that kind of object ([`Kind`]):
//! read on a file, traverse (`x`, not `r`: no listing) on a directory, write
//! on a socket (`connect(2)` needs write permission, unix(7)). The mask is
//! that same right, so no named entry can ever grant more. No reader ever
//! gets write on a file or a directory. With no readers nothing is set
//! (the plain modes: 0600 files, 0700 directories); a reload that removes
//! the readers puts the minimal ACL back where an earlier one granted some.
//! Any ACL set by hand on these objects is replaced (the man page says so):
//! tbot owns the ACLs of what it writes and of its storage directory.
//!
//! Objects are reached through a [`DirHandle`] and an `O_PATH|O_NOFOLLOW`
//! descriptor of the entry, whose `/proc/self/fd/N` name libacl resolves to
//! that very inode (proc(5)): a symlink swapped in after the walk is never
//! followed.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use exacl::{AclEntry, AclOption, Perm};
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::infra::chase::DirHandle;

/// `acls:` of a directory destination (upstream's `botfs.ACLMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AclMode {
    /// No ACLs: the plain modes, whatever `readers` says.
    Off,
    /// Set them; if the file system refuses, warn once and go on without.
    #[default]
    Try,
    /// Set them; if the file system refuses, the write fails (the service
    /// is unhealthy with the reason) and nothing is published.
    Required,
}

impl AclMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AclMode::Off => "off",
            AclMode::Try => "try",
            AclMode::Required => "required",
        }
    }
}

/// One entry of `readers:`, resolved when the configuration was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    User { name: String, uid: u32 },
    Group { name: String, gid: u32 },
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reader::User { name, uid } => write!(f, "user {name} ({uid})"),
            Reader::Group { name, gid } => write!(f, "group {name} ({gid})"),
        }
    }
}

/// A destination's `acls` and `readers`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub acls: AclMode,
    pub readers: Vec<Reader>,
}

/// What an object is, which says what a reader gets on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read (`r--`).
    File,
    /// Traverse (`--x`).
    Dir,
    /// Connect (`-w-`).
    Socket,
}

impl Kind {
    fn reader_perm(self) -> Perm {
        match self {
            Kind::File => Perm::READ,
            Kind::Dir => Perm::EXECUTE,
            Kind::Socket => Perm::WRITE,
        }
    }

    fn owner_perm(self) -> Perm {
        match self {
            Kind::File | Kind::Socket => Perm::READ | Perm::WRITE,
            Kind::Dir => Perm::READ | Perm::WRITE | Perm::EXECUTE,
        }
    }
}

/// The whole ACL of an object of `kind` for `readers`.
fn entries(kind: Kind, readers: &[Reader]) -> Vec<AclEntry> {
    let mut v = vec![
        AclEntry::allow_user("", kind.owner_perm(), None),
        AclEntry::allow_group("", Perm::empty(), None),
        AclEntry::allow_other(Perm::empty(), None),
    ];
    if readers.is_empty() {
        return v;
    }
    v.push(AclEntry::allow_mask(kind.reader_perm(), None));
    for r in readers {
        v.push(match r {
            Reader::User { uid, .. } => {
                AclEntry::allow_user(&uid.to_string(), kind.reader_perm(), None)
            }
            Reader::Group { gid, .. } => {
                AclEntry::allow_group(&gid.to_string(), kind.reader_perm(), None)
            }
        });
    }
    v
}

/// Why an ACL could not be set: the object and the OS error.
#[derive(Debug)]
pub struct Refused {
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl Refused {
    /// The file system has no POSIX ACLs (mounted `noacl`, or one without
    /// extended attributes: ramfs, vfat, some network file systems).
    pub fn unsupported(&self) -> bool {
        matches!(
            self.error.raw_os_error().map(Errno::from_raw_os_error),
            Some(Errno::NOTSUP)
        )
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.error.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::NOTSUP) => {
                "the file system does not support POSIX ACLs (mounted noacl?)".to_string()
            }
            Some(Errno::INVAL) => format!(
                "{} (is a reader's uid or gid not mapped in tbot's user namespace? systemd's PrivateUsers=yes maps none but tbot's)",
                self.error
            ),
            Some(e) => std::io::Error::from(e).to_string(),
            None => self.error.to_string(),
        };
        write!(
            f,
            "{}: setting the readers' ACL: {why}",
            self.path.display()
        )
    }
}

impl crate::log::Field for Refused {}

/// Sets the ACL of the entry `name` of `dir` (of `dir` itself when `name`
/// is None) to `kind`'s ACL for `readers`. The entry must be a `kind`
/// object; a symlink is refused, never followed.
pub fn set(
    dir: &DirHandle,
    name: Option<&str>,
    kind: Kind,
    readers: &[Reader],
) -> Result<(), Refused> {
    let (_fd, proc_path, refused) = open_object(dir, name, kind)?;
    exacl::setfacl(
        &[Path::new(&proc_path)],
        &entries(kind, readers),
        AclOption::ACCESS_ACL,
    )
    .map_err(|e| refused(os_error(e)))
}

/// Whether the entry's ACL has more than the mode bits (a mask, named
/// users or groups): an earlier grant.
fn extended(dir: &DirHandle, name: Option<&str>, kind: Kind) -> Result<bool, Refused> {
    let (_fd, proc_path, refused) = open_object(dir, name, kind)?;
    let acl = exacl::getfacl(Path::new(&proc_path), AclOption::ACCESS_ACL)
        .map_err(|e| refused(os_error(e)))?;
    Ok(acl
        .iter()
        .any(|e| e.kind == exacl::AclEntryKind::Mask || !e.name.is_empty()))
}

/// A way to make a [`Refused`] for an object.
type RefusedAt = Box<dyn Fn(std::io::Error) -> Refused>;

/// Opens the entry `name` of `dir` (`dir` itself when None) with
/// `O_PATH|O_NOFOLLOW`, checks it is a `kind` object, and returns the
/// descriptor (keep it while the path is used), its `/proc/self/fd/N`
/// name, and the maker of its refusals.
fn open_object(
    dir: &DirHandle,
    name: Option<&str>,
    kind: Kind,
) -> Result<(OwnedFd, String, RefusedAt), Refused> {
    let path = name.map_or_else(|| dir.path().to_path_buf(), |n| dir.join(n));
    let refused: RefusedAt = Box::new(move |error| Refused {
        path: path.clone(),
        error,
    });
    let fd = match rfs::openat(
        dir.fd(),
        name.unwrap_or("."),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return Err(refused(e.into())),
    };
    let st = match rfs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return Err(refused(e.into())),
    };
    let (want, what) = match kind {
        Kind::File => (FileType::RegularFile, "regular file"),
        Kind::Dir => (FileType::Directory, "directory"),
        Kind::Socket => (FileType::Socket, "socket"),
    };
    if FileType::from_raw_mode(st.st_mode) != want {
        return Err(refused(std::io::Error::other(format!(
            "not a {what} (a symbolic link or another kind of file: not followed)"
        ))));
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    Ok((fd, proc_path, refused))
}

/// The OS error inside an exacl error: exacl wraps libacl's errno in a
/// message naming the path it was given (here `/proc/self/fd/N`, which
/// tells the operator nothing) and keeps only its kind; the errno is the
/// `(os error N)` its message ends with.
fn os_error(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error().is_some() {
        return e;
    }
    let text = e.to_string();
    let errno = text
        .rsplit_once("(os error ")
        .and_then(|(_, n)| n.strip_suffix(')'))
        .and_then(|n| n.parse::<i32>().ok());
    match errno {
        Some(n) => std::io::Error::from_raw_os_error(n),
        None => e,
    }
}

/// A destination's access, and whether a `try` refusal was warned about:
/// what a service keeps (behind a lock, see `services::readers`) and a
/// reload replaces.
#[derive(Debug)]
pub struct Policy {
    pub access: Access,
    /// The service's name, for the warning.
    pub service: String,
    warned: bool,
}

impl Policy {
    pub fn new(service: &str, access: Access) -> Policy {
        Policy {
            access,
            service: service.to_string(),
            warned: false,
        }
    }

    /// Whether there is anything to grant: ACLs not off, and readers.
    pub fn grants(&self) -> bool {
        self.access.acls != AclMode::Off && !self.access.readers.is_empty()
    }

    /// Gives the readers their rights on new objects, in order; with
    /// nothing to grant, no call at all (new objects have the plain modes,
    /// and a destination directory keeps the mode it was given). A refusal
    /// under `required` is the error (the caller publishes nothing); under
    /// `try` it is warned about once per service and the rest is skipped.
    pub fn apply(&mut self, objects: &[(&DirHandle, Option<&str>, Kind)]) -> Result<(), String> {
        if !self.grants() {
            return Ok(());
        }
        for (dir, name, kind) in objects {
            if let Err(r) = set(dir, *name, *kind, &self.access.readers) {
                return self.refused(&r);
            }
        }
        Ok(())
    }

    /// Applies the policy to objects that may carry an earlier one (a
    /// reload's change, on the current files): as [`Policy::apply`], but
    /// with nothing to grant (`acls: off`, or no readers) it removes every
    /// earlier grant, leaving the plain modes.
    pub fn reapply(&mut self, objects: &[(&DirHandle, Option<&str>, Kind)]) -> Result<(), String> {
        if self.grants() {
            return self.apply(objects);
        }
        self.strip(objects);
        Ok(())
    }

    /// Removes the readers' grants from the objects that have some (an
    /// extended ACL), leaving the plain modes; an object without one is
    /// not touched. Failures are logged, not returned: there is nothing to
    /// fall back to.
    fn strip(&self, objects: &[(&DirHandle, Option<&str>, Kind)]) {
        for (dir, name, kind) in objects {
            let stripped = match extended(dir, *name, *kind) {
                Ok(true) => set(dir, *name, *kind, &[]),
                Ok(false) => Ok(()),
                Err(r) => Err(r),
            };
            match stripped {
                Ok(()) => {}
                Err(r) if r.unsupported() => return,
                Err(r) => crate::log::warn(
                    "could not remove the readers' ACL",
                    &[("service", &self.service), ("error", &r)],
                ),
            }
        }
    }

    fn refused(&mut self, r: &Refused) -> Result<(), String> {
        if self.access.acls == AclMode::Required {
            return Err(format!("{r} (acls: required)"));
        }
        let fields: crate::log::Fields = &[
            ("service", &self.service),
            ("error", r),
            ("readers", &self.readers_text()),
        ];
        let msg = "ACLs for the destination's readers could not be set; going on without them (acls: try)";
        if self.warned {
            crate::log::debug(msg, fields);
        } else {
            self.warned = true;
            crate::log::warn(msg, fields);
        }
        Ok(())
    }

    fn readers_text(&self) -> String {
        let v: Vec<String> = self.access.readers.iter().map(|r| r.to_string()).collect();
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::chase::open_dir;
    use crate::testutil::TestDir;
    use std::fs;

    #[test]
    fn readers_get_the_least_right_and_no_readers_the_plain_modes() {
        let d = TestDir::new("acl-set");
        fs::write(d.0.join("f"), b"x").unwrap();
        fs::create_dir(d.0.join("sub")).unwrap();
        std::os::unix::fs::symlink("f", d.0.join("link")).unwrap();
        let dir = open_dir(&d.0, false).unwrap();
        let readers = [
            Reader::User {
                name: "65534".into(),
                uid: 65534,
            },
            Reader::Group {
                name: "1234".into(),
                gid: 1234,
            },
        ];
        // getfacl(1) from Debian's `acl`, numeric ids.
        let text = |p: &Path| {
            let out = std::process::Command::new("getfacl")
                .args(["-n", "-p"])
                .arg(p)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        match set(&dir, Some("f"), Kind::File, &readers) {
            Err(r) if r.unsupported() => return, // no ACLs where the tests run
            other => other.unwrap(),
        }
        let f = text(&d.0.join("f"));
        assert!(
            f.contains("user:65534:r--") && f.contains("group:1234:r--"),
            "{f}"
        );
        assert!(f.contains("mask::r--") && f.contains("other::---"), "{f}");
        set(&dir, Some("sub"), Kind::Dir, &readers).unwrap();
        let s = text(&d.0.join("sub"));
        assert!(
            s.contains("user:65534:--x") && s.contains("mask::--x"),
            "{s}"
        );
        // A symlink is never followed, and a kind mismatch is refused.
        let e = set(&dir, Some("link"), Kind::File, &readers).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "not a regular file (a symbolic link or another kind of file: not followed)"
            ),
            "{e}"
        );
        assert!(set(&dir, Some("sub"), Kind::File, &readers).is_err());
        // No readers: back to the plain mode, no named entry left.
        set(&dir, Some("f"), Kind::File, &[]).unwrap();
        let f = text(&d.0.join("f"));
        assert!(!f.contains("65534") && !f.contains("mask"), "{f}");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.0.join("f")), 0o600);

        // A reload to no readers takes grants away, and leaves an object
        // that never had any (a directory of mode 0755) as it was.
        fs::set_permissions(d.0.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(d.0.join("open")).unwrap();
        fs::set_permissions(d.0.join("open"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut p = Policy::new(
            "t",
            Access {
                acls: AclMode::Try,
                readers: readers.to_vec(),
            },
        );
        p.apply(&[(&dir, Some("sub"), Kind::Dir)]).unwrap();
        assert!(text(&d.0.join("sub")).contains("user:65534:--x"));
        p.access.readers.clear();
        p.reapply(&[
            (&dir, Some("sub"), Kind::Dir),
            (&dir, Some("open"), Kind::Dir),
        ])
        .unwrap();
        assert!(!text(&d.0.join("sub")).contains("65534"));
        assert_eq!(mode(&d.0.join("sub")), 0o700);
        assert_eq!(mode(&d.0.join("open")), 0o755, "never granted: untouched");
        // Nothing to grant: no call at all on new objects.
        p.apply(&[(&dir, Some("open"), Kind::Dir)]).unwrap();
        assert_eq!(mode(&d.0.join("open")), 0o755);
    }
}
