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

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::credentials::identity_files;
use crate::infra::acl::{Access, Policy};
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
