//! The internal `ca-rotation` service: notices when an operator replaces the
//! CA key file and has every identity output re-issue at once.
//!
//! It sleeps on an inotify watch of the storage directory and the stop
//! descriptor, with no timer but a slow safety re-check ([`RECHECK`]). When
//! an event concerns the key file (created, renamed in or out, written,
//! deleted, its attributes changed) or the directory itself, it waits until
//! the directory has been quiet for [`SETTLE`] (a key copied in place in
//! several writes is read once, complete) and checks the key. Where the
//! directory cannot be watched (missing, not a directory, inotify
//! unavailable) it checks every [`POLL`] instead, and tries to watch again
//! before each check.
//!
//! A check `stat`s the key file (cheap); only when the stamp differs from
//! the version last read does it load the key and compare fingerprints (see
//! `issuer`). A new fingerprint becomes the current CA and a notice goes out
//! on the reissue bus. A missing or unreadable key — or a half-written one —
//! makes it `unhealthy` with the error and it checks again at the next event
//! (or poll); the last good CA stays in use meanwhile. So does a key another
//! user owns, or a storage directory (or one above it) that others can
//! write to (`infra::trust`, sshd's StrictModes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::credentials::ca_key_file::KeyFileStamp;
use crate::credentials::issuer::{ca_key_stamp, Issuer, CA_KEY_FILE};
use crate::infra::inotify::{Event, Watch};
use crate::infra::limits::explain;
use crate::infra::poll::{poll, woke, PollFd, PollFlags};
use crate::log;
use crate::services::{Context, Iteration, Service};

/// How often the key file is checked when the storage directory cannot be
/// watched: a rotation is picked up well within 2 s.
pub const POLL: Duration = Duration::from_millis(250);
/// How often the key file is checked anyway while watched, in case an event
/// was missed (a key file that is a hard link changed through another name,
/// for one).
pub const RECHECK: Duration = Duration::from_secs(60);
/// After an event about the key file, the check waits until no further
/// event has come for this long ...
pub const SETTLE: Duration = Duration::from_millis(20);
/// ... but not longer than this after the first event.
pub const SETTLE_MAX: Duration = Duration::from_millis(200);
pub const TASK: &str = "ca-reload";
/// What in the storage directory can change the key file.
const EVENTS: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

pub struct CaRotation {
    storage: PathBuf,
}

impl CaRotation {
    pub fn new(config: &Config) -> CaRotation {
        CaRotation {
            storage: config.storage.clone(),
        }
    }

    /// One check. `seen` is the stamp of the key version last loaded
    /// successfully; it is cleared on failure so that the next check loads
    /// again whatever the stamp says.
    fn check(&self, ctx: &Context, seen: &mut Option<KeyFileStamp>) -> Result<(), String> {
        // Every check, not only when the key changed: a storage directory
        // opened to others is reported before anyone uses it.
        crate::infra::trust::check_dirs(&self.storage)?;
        let stamp = ca_key_stamp(&self.storage).inspect_err(|_| *seen = None)?;
        if *seen == Some(stamp) {
            return Ok(());
        }
        let timer = Iteration::start(ctx, TASK);
        match Issuer::load(&self.storage) {
            Ok(issuer) => {
                timer.succeeded();
                *seen = Some(issuer.stamp());
                super::bot_identity::install(ctx, issuer);
                Ok(())
            }
            Err(e) => {
                timer.failed();
                *seen = None;
                Err(e)
            }
        }
    }
}

impl Service for CaRotation {
    fn kind(&self) -> &'static str {
        "ca-rotation"
    }

    fn run(&mut self, ctx: &Context) -> Result<(), String> {
        // The internal `identity` service creates the key on first start:
        // watch only once it has tried.
        crossbeam_channel::select! {
            recv(ctx.shared.ca.attempted()) -> _ => {},
            recv(ctx.stop()) -> _ => return Ok(()),
        }
        let mut seen = ctx.shared.ca.get().ok().map(|i| i.stamp());
        let mut reported: Option<Result<(), String>> = None;
        let mut watch = None;
        // Why the directory cannot be watched, as last logged.
        let mut unwatched: Option<String> = None;
        // A watch that failed is tried again after a poll's wait, not at
        // once: out of descriptors, that would be a busy loop taking the
        // numbers every other thread needs.
        let mut watch_again = Instant::now();
        loop {
            if ctx.stopping() {
                return Ok(());
            }
            // Watch first, check next: a change after the check is an event.
            if watch.is_none() && Instant::now() >= watch_again {
                watch = self.watch(ctx, &mut unwatched);
            }
            let now = self.check(ctx, &mut seen);
            if reported.as_ref() != Some(&now) {
                match &now {
                    Ok(()) => ctx.healthy(),
                    Err(e) => {
                        log::warn("the bot's CA key is missing or unreadable", &[("error", e)]);
                        ctx.unhealthy(e.clone());
                    }
                }
                reported = Some(now);
            }
            let woke = match &watch {
                Some(w) => self.wait_for_change(ctx, w),
                None if ctx.sleep(POLL) => Woke::Check,
                None => Woke::Stop,
            };
            match woke {
                Woke::Check => {}
                Woke::Stop => return Ok(()),
                Woke::WatchOver => watch = None,
                Woke::WatchFailed(e) => {
                    cannot_watch(ctx, &mut unwatched, e);
                    watch = None;
                    watch_again = Instant::now() + POLL;
                }
            }
        }
    }
}

/// Why [`CaRotation::wait_for_change`] returned.
enum Woke {
    /// The key may have changed, or it is time for the safety re-check.
    Check,
    Stop,
    /// The directory was deleted or moved: check, then watch the path again.
    WatchOver,
    /// The watch failed (the error): check, then watch again or poll.
    WatchFailed(String),
}

/// Logs that the storage directory cannot be watched, unless that is what
/// was logged last (`unwatched`, None while watched).
fn cannot_watch(ctx: &Context, unwatched: &mut Option<String>, e: String) {
    if unwatched.as_ref() != Some(&e) {
        log::info(
            &format!(
                "cannot watch the storage directory; checking the CA key every {}",
                crate::infra::duration::format(POLL)
            ),
            &[("service", &ctx.name()), ("error", &e)],
        );
        *unwatched = Some(e);
    }
}

impl CaRotation {
    /// A watch of the storage directory, or None: then the caller polls.
    /// Logs when watching stops or resumes being possible, and why, once.
    fn watch(&self, ctx: &Context, unwatched: &mut Option<String>) -> Option<Watch> {
        // The stop descriptor first (made once, then kept): the wait needs
        // both.
        let watched = ctx
            .stop_fd()
            .map_err(|e| format!("stop descriptor: {}", explain(&e)))
            .and_then(|_| Watch::dir(&self.storage, EVENTS));
        match watched {
            Ok(w) => {
                if unwatched.take().is_some() {
                    log::info(
                        "watching the storage directory for CA key changes again",
                        &[("service", &ctx.name())],
                    );
                }
                Some(w)
            }
            Err(e) => {
                cannot_watch(ctx, unwatched, e);
                None
            }
        }
    }

    /// Sleeps until the key file may have changed (then until the directory
    /// has settled), [`RECHECK`] has passed, or tbot stops.
    fn wait_for_change(&self, ctx: &Context, w: &Watch) -> Woke {
        let mut due = Instant::now() + RECHECK;
        // Set by the first event about the key: the latest the check waits.
        let mut settle_cap = None;
        loop {
            let stop = match ctx.stop_fd() {
                Ok(fd) => fd,
                Err(e) => return Woke::WatchFailed(format!("stop descriptor: {}", explain(&e))),
            };
            let mut fds = [
                PollFd::new(&stop, PollFlags::IN),
                PollFd::new(w, PollFlags::IN),
            ];
            let timeout = due.saturating_duration_since(Instant::now());
            match poll(&mut fds, Some(timeout)) {
                Ok(_) if woke(&fds[0]) => return Woke::Stop,
                Ok(_) if woke(&fds[1]) => {}
                Ok(_) => return Woke::Check,
                Err(e) => {
                    return Woke::WatchFailed(format!("{}: poll: {e}", self.storage.display()))
                }
            }
            let events = match w.events() {
                Ok(events) => events,
                Err(e) => return Woke::WatchFailed(e),
            };
            if events.iter().any(Event::ends_watch) {
                return Woke::WatchOver;
            }
            // Other files come and go (the heartbeat record): no reason to
            // check. An overflow (no name) may have hidden one.
            if events
                .iter()
                .any(|e| e.name.is_none() || e.names(CA_KEY_FILE))
            {
                let now = Instant::now();
                let cap = *settle_cap.get_or_insert(now + SETTLE_MAX);
                due = (now + SETTLE).min(cap);
            }
        }
    }
}
