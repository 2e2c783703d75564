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
//! queue to empty.

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
    let Some(tx) = queue() else {
        // A closed stderr must not take the daemon down: drop the line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        return;
    };
    let len = line.len();
    if QUEUED.fetch_add(len, Ordering::SeqCst) + len > MAX_QUEUED_BYTES {
        QUEUED.fetch_sub(len, Ordering::SeqCst);
        DROPPED.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if tx.send(line).is_err() {
        QUEUED.fetch_sub(len, Ordering::SeqCst);
    }
}

/// Waits until every queued line is written, at most [`FLUSH_BOUND`]:
/// called once before the process exits.
pub fn flush() {
    let end = Instant::now() + FLUSH_BOUND;
    while QUEUED.load(Ordering::SeqCst) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
}
