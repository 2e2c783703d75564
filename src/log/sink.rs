//! Where log lines go: standard error, written by one thread of its own
//! (`log-writer`), so that no other thread ever waits on whoever reads it.
//!
//! A stderr nobody drains (a full pipe, a stuck journald, a paused
//! terminal) blocks `write(2)` for good. Before, the thread that logged
//! blocked with it: the serving loop, a renewal, or the main thread on its
//! way to stopping. Now a line is queued; the queue holds at most
//! [`MAX_QUEUED_BYTES`], and a line that does not fit is dropped and
//! counted. Once the writer gets through again, one warning says how many
//! were dropped. At exit, [`flush`] waits at most [`FLUSH_BOUND`] for the
//! queue to empty. The line saying why tbot exits ([`write_fatal`]) is
//! never dropped for the limit. When the writer is gone (its thread could
//! not start, or ended), a line is written directly, only if stderr can
//! take it now ([`direct`]): never waited on, never lost silently.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

/// The most bytes of log lines waiting for stderr. A burst of lines fits
/// many times over; past it, lines are dropped rather than waited for.
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// How long [`flush`] waits at exit for queued lines to be written.
pub const FLUSH_BOUND: Duration = Duration::from_secs(1);

/// Bytes queued or being written.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Lines dropped since the last report of them.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The writer's queue; None when its thread could not be started (then
/// lines are written directly, as before).
fn queue() -> Option<&'static Sender<String>> {
    static QUEUE: OnceLock<Option<Sender<String>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<String>();
            let writer = move || {
                for line in rx {
                    let _ = std::io::stderr().lock().write_all(line.as_bytes());
                    QUEUED.fetch_sub(line.len(), Ordering::SeqCst);
                    let dropped = DROPPED.swap(0, Ordering::SeqCst);
                    if dropped > 0 {
                        let note = super::dropped_line(dropped);
                        let _ = std::io::stderr().lock().write_all(note.as_bytes());
                    }
                }
            };
            // Not an infra::threads::spawn: that one logs, and logging
            // starts this thread.
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(writer)
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Queues one whole line (ending in a newline) for stderr; never waits.
pub fn write(line: String) {
    queue_line(line, false);
}

/// [`write`] for a fatal error: past [`MAX_QUEUED_BYTES`] too, so that the
/// one line saying why tbot exits is not the one dropped.
pub fn write_fatal(line: String) {
    queue_line(line, true);
}

fn queue_line(line: String, fatal: bool) {
    let Some(tx) = queue() else {
        return direct(&line);
    };
    let len = line.len();
    if QUEUED.fetch_add(len, Ordering::SeqCst) + len > MAX_QUEUED_BYTES && !fatal {
        QUEUED.fetch_sub(len, Ordering::SeqCst);
        DROPPED.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if let Err(e) = tx.send(line) {
        // The writer ended: write it here, if stderr takes it now.
        QUEUED.fetch_sub(len, Ordering::SeqCst);
        direct(&e.0);
    }
}

/// Writes `line` to stderr from the calling thread only if stderr can take
/// it now (poll(2) says writable: a pipe then has room for PIPE_BUF bytes,
/// so at most that much is written); otherwise it is counted as dropped.
fn direct(line: &str) {
    use crate::infra::poll::{poll, PollFd, PollFlags};
    let stderr = std::io::stderr();
    let writable = {
        let mut fds = [PollFd::new(&stderr, PollFlags::OUT)];
        matches!(poll(&mut fds, Some(Duration::ZERO)), Ok(n) if n > 0)
            && fds[0].revents().contains(PollFlags::OUT)
    };
    if !writable {
        DROPPED.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let bytes = &line.as_bytes()[..line.len().min(libc::PIPE_BUF)];
    let _ = stderr.lock().write_all(bytes);
}

/// Waits until every queued line is written, at most [`FLUSH_BOUND`]:
/// called once before the process exits.
pub fn flush() {
    let end = Instant::now() + FLUSH_BOUND;
    while QUEUED.load(Ordering::SeqCst) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
}
