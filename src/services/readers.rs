//! A service's readers: its destination's `acls` and `readers` (see
//! `infra::acl`), shared between the service, which applies them to every
//! generation it writes, and a reload, which replaces them and applies them
//! to the generation in force at once, without a new credential or a new
//! socket.
//!
//! One lock covers both: a writer holds it from the ACL step to the switch
//! that publishes the generation, and a reload holds it while it replaces
//! the policy and applies it; so a generation is never published with
//! readers a reload has already replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{Config, ServiceConfig};
use crate::credentials::identity_files;
use crate::infra::acl::{Access, AclMode, Kind, Policy, Reader};
use crate::infra::chase::open_dir;
use crate::log;
use crate::services::ssh_multiplexer::socket;

/// What the destination holds, which says what the readers are given.
#[derive(Debug, Clone)]
pub enum Layout {
    /// An identity output's generations (`identity_files`).
    Identity(PathBuf),
    /// A multiplexer's `v1.sock` and `ssh_config`.
    Multiplexer(PathBuf),
}

/// A handle on one service's readers; clones share them.
#[derive(Clone)]
pub struct Readers {
    policy: Arc<Mutex<Policy>>,
    layout: Layout,
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
        }
    }

    /// The policy, locked: hold it from the ACL step to the publication.
    pub fn lock(&self) -> MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload's new `acls`/`readers`: replaces the policy and applies it
    /// to what the destination holds now. A refusal is logged (as an error
    /// under `acls: required`); the service's next write reports it in its
    /// health.
    pub fn replace(&self, access: Access) {
        let mut policy = self.lock();
        policy.access = access;
        let applied = match &self.layout {
            Layout::Identity(dest) => identity_files::grant_current(dest, &mut policy),
            Layout::Multiplexer(dest) => socket::grant_current(dest, &mut policy),
        };
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
        match applied {
            Ok(()) => log::info("readers applied to the destination's current files", fields),
            Err(e) => log::error(
                "readers could not be applied to the destination's current files",
                &[fields, &[("error", &e)]].concat(),
            ),
        }
    }
}

/// Lets the readers of every destination inside the storage directory reach
/// it: traverse on the storage directory (mode 0700, tbot's own: as
/// packaged, `/var/lib/tbot` for `/var/lib/tbot/machine-id`) and on each
/// directory between it and the destination, for the union of the readers
/// of the destinations below each. Nothing else in storage is opened to
/// them (its files are 0600 with no ACL). Directories outside storage are
/// not changed. Run at start and after each reload; a directory no reader
/// needs any more loses its earlier grants. Refusals are logged as the
/// destinations' `acls` say (`required` wins over `try`).
pub fn grant_passages(config: &Config) {
    let mut passages: BTreeMap<PathBuf, Access> = BTreeMap::new();
    passages.insert(config.storage.clone(), Access::default());
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
        let mut dir = config.storage.clone();
        merge(passages.entry(dir.clone()).or_default(), access);
        for c in parts.iter().take(parts.len().saturating_sub(1)) {
            dir.push(c);
            merge(passages.entry(dir.clone()).or_default(), access);
        }
    }
    for (dir, access) in passages {
        let Ok(handle) = open_dir(&dir, !access.readers.is_empty()) else {
            continue;
        };
        let mut policy = Policy::new("storage", access);
        if let Err(e) = policy.reapply(&[(&handle, None, Kind::Dir)]) {
            log::error(
                "the readers cannot reach their destination in the storage directory",
                &[("error", &e)],
            );
        }
    }
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
