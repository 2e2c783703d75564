//! POSIX ACLs that let a destination's `readers` use what tbot writes there:
//! upstream tbot's `acls: off|try|required` and `readers` (`lib/tbot/botfs`),
//! set through the exacl crate (libacl's `acl_set_file`), never by writing
//! the `system.posix_acl_access` attribute's encoding by hand.
//!
//! The ACL tbot sets is the whole ACL, as upstream's `ConfigureACL` does: the
//! owner keeps its mode bits, the owning group and others get nothing, and
//! each reader gets the least it needs on that kind of object ([`Kind`]):
//! read on a file, traverse (`x`, not `r`: no listing) on a directory, write
//! on a socket (`connect(2)` needs write permission, unix(7)). The mask is
//! that same right, so no named entry can ever grant more. No reader ever
//! gets write on a file or a directory. With no readers, the ACL is the
//! minimal one: the plain modes (0600 files, 0700 directories).
//!
//! Objects are reached through a [`DirHandle`] and an `O_PATH|O_NOFOLLOW`
//! descriptor of the entry, whose `/proc/self/fd/N` name libacl resolves to
//! that very inode (proc(5)): a symlink swapped in after the walk is never
//! followed.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};
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
/// object; a symlink is refused (ELOOP), never followed.
pub fn set(
    dir: &DirHandle,
    name: Option<&str>,
    kind: Kind,
    readers: &[Reader],
) -> Result<(), Refused> {
    let path = name.map_or_else(|| dir.path().to_path_buf(), |n| dir.join(n));
    let refused = |error: std::io::Error| Refused {
        path: path.clone(),
        error,
    };
    let fd = rfs::openat(
        dir.fd(),
        name.unwrap_or("."),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| refused(e.into()))?;
    let st = rfs::fstat(&fd).map_err(|e| refused(e.into()))?;
    let want = match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Socket => FileType::Socket,
    };
    if FileType::from_raw_mode(st.st_mode) != want {
        return Err(refused(std::io::Error::other(format!(
            "not a {} (a symbolic link or another kind of file: not followed)",
            match kind {
                Kind::File => "regular file",
                Kind::Dir => "directory",
                Kind::Socket => "socket",
            }
        ))));
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    exacl::setfacl(
        &[Path::new(&proc_path)],
        &entries(kind, readers),
        AclOption::ACCESS_ACL,
    )
    .map_err(|e| refused(os_error(e)))
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

    /// Whether new objects need an ACL call at all: fresh files and
    /// directories have the plain modes already when there is no reader.
    pub fn grants(&self) -> bool {
        self.access.acls != AclMode::Off && !self.access.readers.is_empty()
    }

    /// Sets each object's ACL, in order (`acls: off`: nothing). A refusal
    /// under `required` is the error (the caller publishes nothing); under
    /// `try` it is warned about once per service and the rest is skipped.
    /// With no readers (the minimal ACL, removing earlier grants) a file
    /// system without ACLs is no refusal: nothing can have been granted.
    pub fn apply(&mut self, objects: &[(&DirHandle, Option<&str>, Kind)]) -> Result<(), String> {
        if self.access.acls == AclMode::Off {
            return Ok(());
        }
        for (dir, name, kind) in objects {
            match set(dir, *name, *kind, &self.access.readers) {
                Ok(()) => {}
                Err(r) if r.unsupported() && self.access.readers.is_empty() => return Ok(()),
                Err(r) => return self.refused(&r),
            }
        }
        Ok(())
    }

    /// Applies the policy to objects that already carry an earlier one (a
    /// reload's change, on the current generation): as [`Policy::apply`],
    /// except that `acls: off` removes every reader's grant (the plain
    /// modes) rather than leaving the old ACL in place.
    pub fn reapply(&mut self, objects: &[(&DirHandle, Option<&str>, Kind)]) -> Result<(), String> {
        if self.access.acls == AclMode::Off {
            self.strip(objects);
            return Ok(());
        }
        self.apply(objects)
    }

    /// Removes every reader's grant from the objects (the minimal ACL).
    /// Failures are logged, not returned: there is nothing to fall back to.
    fn strip(&self, objects: &[(&DirHandle, Option<&str>, Kind)]) {
        for (dir, name, kind) in objects {
            match set(dir, *name, *kind, &[]) {
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

/// The uid of the user `name`, or of the number `name` (as upstream, a
/// number is taken as an id, known to the system or not). Errors say what
/// was not found.
pub fn resolve_user(name: &str) -> Result<u32, String> {
    resolve(name, Which::User)
}

/// The gid of the group `name` (or the number `name`); see [`resolve_user`].
pub fn resolve_group(name: &str) -> Result<u32, String> {
    resolve(name, Which::Group)
}

#[derive(Clone, Copy)]
enum Which {
    User,
    Group,
}

/// Looks `name` up in the system's user or group database (NSS, through
/// `getpwnam_r`/`getgrnam_r`), growing the buffer on ERANGE.
fn resolve(name: &str, which: Which) -> Result<u32, String> {
    let what = match which {
        Which::User => "user",
        Which::Group => "group",
    };
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
        return Err(format!("invalid {what} name {name:?}"));
    }
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let cname =
        std::ffi::CString::new(name).map_err(|_| format!("invalid {what} name {name:?}"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let (rc, found) = match which {
            Which::User => {
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
            }
            Which::Group => {
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
        };
        match (rc, found) {
            (0, Some(id)) => return Ok(id),
            (0, None) => {
                return Err(format!(
                    "unknown {what} {name:?}: no such {what} on this system"
                ))
            }
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            (e, _) => {
                return Err(format!(
                    "looking up {what} {name:?}: {}",
                    std::io::Error::from_raw_os_error(e)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::chase::open_dir;
    use crate::testutil::TestDir;
    use std::fs;

    #[test]
    fn names_and_numbers_resolve_and_unknown_names_are_refused() {
        assert_eq!(resolve_user("root"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert_eq!(resolve_group("1234"), Ok(1234));
        let e = resolve_user("no-such-user-tbot-test").unwrap_err();
        assert_eq!(
            e,
            "unknown user \"no-such-user-tbot-test\": no such user on this system"
        );
        assert!(resolve_group("").is_err());
    }

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
        assert_eq!(
            fs::metadata(d.0.join("f")).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
