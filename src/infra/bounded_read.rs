//! Reading a whole file that may not answer: a FIFO nobody writes, a
//! terminal, a file on a network mount that hangs. The read runs on a
//! short-lived helper thread; the caller waits for it at most a bound, and
//! gives up at once when a stop signal is pending
//! ([`crate::infra::signals::stop_pending`]), so neither start-up nor a
//! reload (both on the main thread, which alone takes SIGTERM) can be held
//! by the file.
//!
//! The helper opens the file without blocking (`O_NONBLOCK`: opening a
//! FIFO with no writer would wait for one) and, for anything but a regular
//! file, waits for data with poll(2) in short slices, so it ends soon after
//! the caller gave up. A regular file's `read(2)` cannot be interrupted: on
//! a mount that hangs, the helper ends when the kernel returns.

use std::io::{self, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags};

use super::poll::{poll, PollFd, PollFlags};
use super::signals::stop_pending;
use super::threads::{within, GaveUp};

/// How often the waiting caller looks for a stop signal, and the helper for
/// a caller that gave up.
const SLICE: Duration = Duration::from_millis(50);

/// The bytes of `path`, or None when there are more than `max`; an error
/// names what failed, including `TimedOut` after `bound` and `Interrupted`
/// when a stop signal arrived first.
pub fn read_whole(path: &Path, max: u64, bound: Duration) -> io::Result<Option<Vec<u8>>> {
    let gave_up = Arc::new(AtomicBool::new(false));
    let helper_gave_up = gave_up.clone();
    let owned: PathBuf = path.to_path_buf();
    let read = move || read_now(&owned, max, &helper_gave_up);
    let result = within("read-file", bound, stop_pending, read);
    let (kind, text) = match result {
        Ok(r) => return r,
        Err(GaveUp::Asked) => (ErrorKind::Interrupted, "a stop signal arrived".to_string()),
        Err(GaveUp::TimedOut) => (
            ErrorKind::TimedOut,
            format!(
                "not read to its end within {} s (a FIFO nobody writes, or a mount that does not answer?)",
                bound.as_secs()
            ),
        ),
    };
    gave_up.store(true, Ordering::SeqCst);
    Err(io::Error::new(kind, text))
}

/// Opens and reads `path` on the calling thread; a non-regular file is
/// polled in slices until its end, or until `gave_up`.
fn read_now(path: &Path, max: u64, gave_up: &AtomicBool) -> io::Result<Option<Vec<u8>>> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let regular = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::RegularFile;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    if regular {
        (&mut file).take(max + 1).read_to_end(&mut bytes)?;
    } else {
        let mut buf = [0u8; 8192];
        while bytes.len() as u64 <= max {
            if gave_up.load(Ordering::SeqCst) {
                return Err(ErrorKind::Interrupted.into());
            }
            let mut fds = [PollFd::new(&file, PollFlags::IN)];
            if poll(&mut fds, Some(SLICE))? == 0 {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    if bytes.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn fifo(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tbot-bounded-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, Mode::from_raw_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn a_fifo_nobody_writes_is_given_up_after_the_bound() {
        let p = fifo("silent");
        let t0 = Instant::now();
        let e = read_whole(&p, 100, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_fifo_is_read_to_its_end_and_a_file_up_to_the_limit() {
        let p = fifo("written");
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || std::fs::write(&p, b"version: v2\n").unwrap())
        };
        let got = read_whole(&p, 100, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(got.as_deref(), Some(&b"version: v2\n"[..]));
        std::fs::write(p.with_extension("f"), b"12345").unwrap();
        assert_eq!(
            read_whole(&p.with_extension("f"), 4, Duration::from_secs(5)).unwrap(),
            None
        );
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(p.with_extension("f"));
    }
}
