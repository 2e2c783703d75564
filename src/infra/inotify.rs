//! inotify(7), for the services that wait for a change in a directory
//! instead of looking at it on a timer.
//!
//! A [`Watch`] is one inotify instance with one watch on one directory. Its
//! descriptor is nonblocking: poll it for `POLLIN`, then [`Watch::events`]
//! reads what is queued. Every error names the watched directory.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::inotify;

/// Size of `struct inotify_event` before its name.
const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
/// A read takes whole events only; this holds at least one with the longest
/// name (NAME_MAX, 255 bytes) and typically dozens.
const BUFFER: usize = 4096;
/// Reads per [`Watch::events`]: a directory changing faster than the events
/// can be read cannot hold the caller in the loop (the rest stay queued and
/// the descriptor readable).
const MAX_READS: usize = 16;

/// One event: its mask (`IN_*`) and, for an event about an entry of the
/// directory, the entry's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub mask: u32,
    pub name: Option<OsString>,
}

impl Event {
    /// True if the event is about the entry `name`.
    pub fn names(&self, name: &str) -> bool {
        self.name.as_deref() == Some(OsStr::new(name))
    }

    /// True if the watch is gone or no longer on the directory at its path:
    /// the directory was deleted or moved (`IN_DELETE_SELF`,
    /// `IN_MOVE_SELF`), or the kernel removed the watch (`IN_IGNORED`, as
    /// on an unmount). Watch the path again for what comes next.
    pub fn ends_watch(&self) -> bool {
        self.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0
    }
}

/// One inotify instance watching one directory.
pub struct Watch {
    file: File,
    dir: PathBuf,
}

impl Watch {
    /// Watches the directory `dir` for the events in `mask` (`IN_*`;
    /// `IN_ONLYDIR` is added: anything but a directory is an error).
    pub fn dir(dir: &Path, mask: u32) -> Result<Watch, String> {
        let at = |what: &str, e: rustix::io::Errno| format!("{}: {what}: {e}", dir.display());
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .map_err(|e| at("inotify_init1", e))?;
        let flags = inotify::WatchFlags::from_bits_retain(mask) | inotify::WatchFlags::ONLYDIR;
        inotify::add_watch(&fd, dir, flags).map_err(|e| at("inotify_add_watch", e))?;
        Ok(Watch {
            file: File::from(fd),
            dir: dir.to_path_buf(),
        })
    }

    /// The events queued now, oldest first; none if nothing is queued. An
    /// `IN_Q_OVERFLOW` event (no name) says that events were lost.
    pub fn events(&self) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        let mut buf = [0u8; BUFFER];
        for _ in 0..MAX_READS {
            let n = match (&self.file).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(format!(
                        "{}: reading inotify events: {e}",
                        self.dir.display()
                    ))
                }
            };
            parse(&buf[..n], &mut events).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        }
        Ok(events)
    }
}

/// Appends the events in `buf`, what one read(2) returned: each a
/// `struct inotify_event` (wd, mask, cookie, len; native-endian 32-bit
/// fields) followed by `len` bytes of name, NUL-padded.
fn parse(buf: &[u8], events: &mut Vec<Event>) -> Result<(), String> {
    let field = |at: usize| {
        buf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let mut at = 0;
    while at < buf.len() {
        let (Some(mask), Some(len)) = (field(at + 4), field(at + 12)) else {
            return Err(format!("truncated inotify event at byte {at}"));
        };
        let start = at + HEADER;
        let end = start.saturating_add(len as usize);
        let Some(raw) = buf.get(start..end) else {
            return Err(format!("truncated inotify event name at byte {at}"));
        };
        let name: Vec<u8> = raw.iter().copied().take_while(|&b| b != 0).collect();
        events.push(Event {
            mask,
            name: (!name.is_empty()).then(|| OsString::from_vec(name)),
        });
        at = end;
    }
    Ok(())
}

/// The descriptor to poll for `POLLIN`.
impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::poll::wait_readable;
    use crate::testutil::TestDir;
    use std::time::Duration;

    const MASK: u32 = libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF;

    fn wait(w: &Watch) -> Vec<Event> {
        assert!(wait_readable(w, Duration::from_secs(5)).unwrap());
        w.events().unwrap()
    }

    #[test]
    fn events_name_the_entry_and_say_when_the_watch_ends() {
        let d = TestDir::new("inotify");
        let dir = d.0.join("watched");
        std::fs::create_dir(&dir).unwrap();
        let w = Watch::dir(&dir, MASK).unwrap();
        assert_eq!(w.events().unwrap(), [], "nothing queued yet");

        std::fs::write(dir.join("a-longer-name"), b"x").unwrap();
        std::fs::rename(dir.join("a-longer-name"), dir.join("b")).unwrap();
        std::fs::remove_file(dir.join("b")).unwrap();
        let got = wait(&w);
        let summary: Vec<(u32, &str)> = got
            .iter()
            .map(|e| (e.mask, e.name.as_deref().and_then(|n| n.to_str()).unwrap()))
            .collect();
        assert_eq!(
            summary,
            [
                (libc::IN_CREATE, "a-longer-name"),
                (libc::IN_MOVED_FROM, "a-longer-name"),
                (libc::IN_MOVED_TO, "b"),
                (libc::IN_DELETE, "b"),
            ]
        );
        assert!(got[3].names("b") && !got[3].names("a-longer-name"));
        assert!(!got.iter().any(Event::ends_watch));

        std::fs::rename(&dir, d.0.join("moved")).unwrap();
        let got = wait(&w);
        assert!(got.iter().any(Event::ends_watch), "{got:?}");
        assert!(got.iter().all(|e| e.name.is_none()), "{got:?}");
    }

    #[test]
    fn errors_name_the_path() {
        let d = TestDir::new("inotify-err");
        let missing = d.0.join("missing");
        let e = Watch::dir(&missing, MASK).err().unwrap();
        assert_eq!(
            e,
            format!(
                "{}: inotify_add_watch: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let file = d.0.join("file");
        std::fs::write(&file, b"").unwrap();
        let e = Watch::dir(&file, MASK).err().unwrap();
        assert!(
            e.starts_with(&format!(
                "{}: inotify_add_watch: Not a directory",
                file.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_short_buffer_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert!(parse(&[0; HEADER - 1], &mut out).is_err());
        let mut one = vec![0u8; HEADER];
        one[12..16].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse(&one, &mut out).unwrap_err().contains("name"));
        one.extend_from_slice(b"ab\0\0\0\0\0\0");
        one[4..8].copy_from_slice(&libc::IN_CREATE.to_ne_bytes());
        parse(&one, &mut out).unwrap();
        assert_eq!(
            out,
            [Event {
                mask: libc::IN_CREATE,
                name: Some("ab".into())
            }]
        );
    }
}
