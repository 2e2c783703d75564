//! A service's readers: its destination's `acls` and `readers` (see
//! `infra::acl`), shared between the service, which applies them to every
//! generation it writes, and a reload, which replaces them and has them
//! applied to the generation in force at once, without a new credential
//! or a new socket.
//!
//! One lock covers the policy: a writer holds it from the ACL step to the
//! switch that publishes the generation (fsyncs included), and so does the
//! helper thread that applies a reload's readers; a writer takes a
//! reload's readers when it takes the lock, so a generation is never
//! published with readers a reload has already replaced. The reload itself
//! (the signal thread) never waits for that lock: it leaves the new readers
//! in a slot guarded by a lock nobody holds for more than a few
//! instructions, and a helper thread `readers-apply` takes the policy lock
//! on its own time (a destination on a hung mount stalls that helper and
//! the service, never SIGHUP or SIGTERM handling).
//!
//! A refusal under `acls: required` of a reload's readers is kept
//! ([`Readers::refusal`]) and reported on the service's health row at once;
//! the next success (a write, or a later reload's readers) clears it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{Config, ServiceConfig};
use crate::credentials::identity_files;
use crate::health::Status;
use crate::infra::acl::{Access, AclMode, Kind, Policy, Reader};
use crate::infra::chase::{open_dir, DirHandle};
use crate::log;
use crate::services::ssh_multiplexer::socket;
use crate::services::Reporter;

/// What the destination holds, which says what the readers are given.
#[derive(Debug, Clone)]
pub enum Layout {
    /// An identity output's generations (`identity_files`).
    Identity(PathBuf),
    /// A multiplexer's `v1.sock` and `ssh_config`.
    Multiplexer(PathBuf),
}

impl Layout {
    fn dest(&self) -> PathBuf {
        match self {
            Layout::Identity(d) | Layout::Multiplexer(d) => d.clone(),
        }
    }
}

/// The longest a reload waits for its readers (and their passages in
/// storage) to be applied before it goes on: they are applied on helper
/// threads, which a write in progress on a slow or hung file system may
/// hold up; the reload, on the signal thread, is not held longer.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Waits for `applied` until `deadline`; logs when it is still pending.
fn waited(applied: &Receiver<()>, deadline: Instant, what: &dyn log::Field) {
    if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = applied.recv_deadline(deadline) {
        log::warn(
            "readers are still being applied in the background (a write in progress on a slow file system?); the reload goes on",
            &[("destination", what)],
        );
    }
}

/// A handle on one service's readers; clones share them.
#[derive(Clone)]
pub struct Readers {
    policy: Arc<Mutex<Policy>>,
    layout: Layout,
    /// The hand-over from a reload, and the last refusal: never held for
    /// more than a few instructions.
    slot: Arc<Mutex<Slot>>,
    /// Rings when a refusal is cleared, for a service that reports its
    /// health from more than this (an identity output re-reports).
    cleared: (Sender<()>, Receiver<()>),
}

#[derive(Default)]
struct Slot {
    /// A reload's readers, not yet applied to the current files, and who
    /// waits for them to be.
    pending: Option<(Access, Sender<()>)>,
    /// A `readers-apply` thread is running (it takes `pending` when it
    /// gets the policy lock, and every later one too).
    applying: bool,
    /// The last refusal (`acls: required`) of a reload's readers.
    refusal: Option<String>,
    /// The service's health row (set by the service when it runs) and
    /// whether a cleared refusal makes it healthy (the multiplexer) or
    /// only rings `cleared` (an identity output).
    row: Option<(Reporter, bool)>,
}

impl Readers {
    pub fn new(service: &str, access: Access, layout: Layout) -> Readers {
        if access.acls == AclMode::Off && !access.readers.is_empty() {
            // As upstream: said, not refused.
            log::info(
                "readers are configured but acls: off; no ACLs are set for them",
                &[("service", &service)],
            );
        }
        Readers {
            policy: Arc::new(Mutex::new(Policy::new(service, access))),
            layout,
            slot: Arc::default(),
            cleared: crossbeam_channel::bounded(1),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy, locked, with a reload's readers if one is waiting: hold
    /// it from the ACL step to the publication.
    pub fn lock(&self) -> MutexGuard<'_, Policy> {
        let mut policy = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, _)) = &self.slot().pending {
            policy.access = a.clone();
        }
        policy
    }

    /// Where a refusal is reported: this run's health row. `healthy_when_cleared`:
    /// the service is healthy whenever it runs (the multiplexer), so a
    /// cleared refusal reports it healthy; otherwise the service re-reports
    /// when [`Readers::cleared`] rings.
    pub fn attach(&self, row: Reporter, healthy_when_cleared: bool) {
        self.slot().row = Some((row, healthy_when_cleared));
    }

    /// The last refusal of a reload's readers (`acls: required`), which
    /// makes the service unhealthy; None once they were applied.
    pub fn refusal(&self) -> Option<String> {
        self.slot().refusal.clone()
    }

    /// Rings when [`Readers::refusal`] was cleared by a reload.
    pub fn cleared(&self) -> &Receiver<()> {
        &self.cleared.1
    }

    /// A write applied the readers in force: an earlier refusal is over.
    pub fn succeeded(&self) {
        self.slot().refusal = None;
    }

    /// A reload's new `acls`/`readers`: handed to a `readers-apply` thread,
    /// which replaces the policy and applies it to what the destination
    /// holds now. Waits for it until `deadline` at most (see
    /// [`APPLY_WAIT`]), then goes on and says so. A refusal under
    /// `acls: required` is logged as an error and makes the service
    /// unhealthy with the reason.
    pub fn replace(&self, access: Access, deadline: Instant) {
        let (done, applied) = crossbeam_channel::bounded(1);
        let (start, service) = {
            let mut slot = self.slot();
            slot.pending = Some((access, done));
            (
                !std::mem::replace(&mut slot.applying, true),
                self.layout.dest(),
            )
        };
        if start {
            let me = self.clone();
            if let Err(e) =
                crate::infra::threads::spawn("readers-apply", move || me.apply_pending())
            {
                // Left pending: the service's next write takes it.
                self.slot().applying = false;
                log::error(
                    "cannot start a thread to apply the new readers; the service's next write applies them",
                    &[("error", &e.to_string())],
                );
                return;
            }
        }
        waited(&applied, deadline, &service.display());
    }

    /// The `readers-apply` thread: applies the latest pending readers, until
    /// none is left.
    fn apply_pending(&self) {
        loop {
            let mut policy = self.lock();
            let access = {
                let mut slot = self.slot();
                let a = slot.pending.take();
                if a.is_none() {
                    slot.applying = false;
                }
                a
            };
            let Some((access, done)) = access else {
                return;
            };
            policy.access = access;
            let applied = match &self.layout {
                Layout::Identity(dest) => identity_files::grant_current(dest, &mut policy),
                Layout::Multiplexer(dest) => socket::grant_current(dest, &mut policy),
            };
            self.record(&policy, applied);
            let _ = done.try_send(());
        }
    }

    /// Logs the outcome of applying a reload's readers and keeps (or clears)
    /// the refusal, reporting it on the service's row.
    fn record(&self, policy: &Policy, applied: Result<(), String>) {
        let readers: Vec<String> = policy
            .access
            .readers
            .iter()
            .map(|r| r.to_string())
            .collect();
        let fields: log::Fields = &[
            ("service", &policy.service),
            ("acls", &policy.access.acls.as_str()),
            ("readers", &readers.join(", ")),
        ];
        let mut slot = self.slot();
        match applied {
            Ok(()) => {
                log::info("readers applied to the destination's current files", fields);
                if slot.refusal.take().is_some() {
                    let _ = self.cleared.0.try_send(());
                    if let Some((row, true)) = &slot.row {
                        row.report(Status::Healthy, String::new());
                    }
                }
            }
            Err(e) => {
                log::error(
                    "readers could not be applied to the destination's current files",
                    &[fields, &[("error", &e)]].concat(),
                );
                let reason = format!("readers: {e}");
                if let Some((row, _)) = &slot.row {
                    row.report(Status::Unhealthy, reason.clone());
                }
                slot.refusal = Some(reason);
            }
        }
    }
}

/// Lets the readers of every destination inside the storage directory reach
/// it: traverse on the storage directory (mode 0700, tbot's own: as
/// packaged, `/var/lib/tbot` for `/var/lib/tbot/machine-id`) and on each
/// directory between it and the destination, for the union of the readers
/// of the destinations below each. Nothing else in storage is opened to
/// them (its files are 0600 with no ACL). Directories outside storage are
/// not changed: each one is reached from the storage directory's handle,
/// one plain name at a time, never through a symbolic link or `..` (a
/// link there, even root's, ends the walk with a warning). Run at start and
/// after each reload; a directory no reader needs any more loses its
/// earlier grants. Refusals are logged as the destinations' `acls` say
/// (`required` wins over `try`).
pub fn grant_passages(config: &Config) {
    // Each directory, relative to storage ("" is storage itself).
    let mut passages: BTreeMap<PathBuf, Access> = BTreeMap::new();
    passages.insert(PathBuf::new(), Access::default());
    for s in &config.services {
        let (dest, access) = match s {
            ServiceConfig::Identity(c) => (&c.destination, &c.access),
            ServiceConfig::SshMultiplexer(m) => (&m.destination, &m.access),
        };
        let Ok(rel) = dest.strip_prefix(&config.storage) else {
            continue;
        };
        if access.acls == AclMode::Off || access.readers.is_empty() {
            continue;
        }
        // storage, then each directory down to the destination's parent.
        let parts: Vec<_> = rel.components().collect();
        let mut dir = PathBuf::new();
        merge(passages.entry(dir.clone()).or_default(), access);
        for c in parts.iter().take(parts.len().saturating_sub(1)) {
            dir.push(c);
            merge(passages.entry(dir.clone()).or_default(), access);
        }
    }
    let wanted = passages.values().any(|a| !a.readers.is_empty());
    let Ok(storage) = open_dir(&config.storage, wanted) else {
        return;
    };
    for (rel, access) in passages {
        let create = !access.readers.is_empty();
        let handle = match walk_down(&storage, &rel, create) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                log::warn(
                    "not giving the readers a passage through the storage directory",
                    &[("error", &e)],
                );
                continue;
            }
        };
        let dir = handle.as_ref().unwrap_or(&storage);
        let mut policy = Policy::new("storage", access);
        if let Err(e) = policy.reapply(&[(dir, None, Kind::Dir)]) {
            log::error(
                "the readers cannot reach their destination in the storage directory",
                &[("error", &e)],
            );
        }
    }
}

/// [`grant_passages`] for a reload, on a `readers-passage` thread: the
/// signal thread never waits on the storage directory's file system. The
/// latest configuration wins: one handed over while a thread is at work is
/// taken by that thread when it is done.
pub fn grant_passages_beside(config: &Config, deadline: Instant) {
    type Pending = (Option<(Config, Sender<()>)>, bool);
    static SLOT: Mutex<Pending> = Mutex::new((None, false));
    let slot = || SLOT.lock().unwrap_or_else(|p| p.into_inner());
    let (done, applied) = crossbeam_channel::bounded(1);
    let start = {
        let mut s = slot();
        s.0 = Some((config.clone(), done));
        !std::mem::replace(&mut s.1, true)
    };
    let work = move || loop {
        let next = {
            let mut s = slot();
            let c = s.0.take();
            s.1 = c.is_some();
            c
        };
        let Some((c, done)) = next else {
            return;
        };
        grant_passages(&c);
        let _ = done.try_send(());
    };
    if start {
        if let Err(e) = crate::infra::threads::spawn("readers-passage", work) {
            slot().1 = false;
            log::error(
                "cannot start a thread to give the readers their passages in storage; the next reload or start does",
                &[("error", &e.to_string())],
            );
            return;
        }
    }
    waited(&applied, deadline, &config.storage.display());
}

/// The directory `rel` below `storage` (None inside: `storage` itself),
/// opened one plain name at a time with `O_NOFOLLOW` and created (0700)
/// when missing and `create`. Ok(None) when it is missing and not
/// `create`. A symbolic link, `..` or anything but a directory is an error.
fn walk_down(
    storage: &DirHandle,
    rel: &Path,
    create: bool,
) -> Result<Option<Option<DirHandle>>, String> {
    let mut cur: Option<DirHandle> = None;
    for c in rel.components() {
        let here = cur.as_ref().unwrap_or(storage);
        let Component::Normal(name) = c else {
            return Err(format!(
                "{}: not a plain name below the storage directory; not followed",
                here.path().join(c).display()
            ));
        };
        let Some(name) = name.to_str() else {
            return Err(format!("{}: not UTF-8", here.path().join(name).display()));
        };
        if create {
            match here.mkdir(name, 0o700) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(crate::infra::chase::describe(&here.join(name), e)),
            }
        } else if here.file_type(name)?.is_none() {
            return Ok(None);
        }
        let next = here.subdir(name).map_err(|e| {
            format!(
                "{e} (a symbolic link or not a directory: passages in storage never follow one)"
            )
        })?;
        cur = Some(next);
    }
    Ok(Some(cur))
}

/// Adds `from`'s readers to `into` (once each); `required` wins.
fn merge(into: &mut Access, from: &Access) {
    if from.acls == AclMode::Required {
        into.acls = AclMode::Required;
    }
    for r in &from.readers {
        if !into.readers.iter().any(|x| same(x, r)) {
            into.readers.push(r.clone());
        }
    }
}

/// The same user or group, however written.
fn same(a: &Reader, b: &Reader) -> bool {
    match (a, b) {
        (Reader::User { uid: x, .. }, Reader::User { uid: y, .. }) => x == y,
        (Reader::Group { gid: x, .. }, Reader::Group { gid: y, .. }) => x == y,
        _ => false,
    }
}
