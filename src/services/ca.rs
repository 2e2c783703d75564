//! The bot's CA as the services share it: the one issuer the identity
//! outputs sign with.
//!
//! The internal `identity` service fills it on start (loading or creating the
//! key in storage); `ca-rotation` and `identity`'s periodic re-check install
//! a newly loaded key when its fingerprint differs, then announce it on the
//! reissue bus. A failed reload never empties it: while an operator is midway
//! through replacing the key file, the last good CA keeps signing and the
//! services that noticed the failure report it.

use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};

use crate::credentials::issuer::Issuer;

pub struct CurrentCa {
    state: Mutex<State>,
    /// Dropped after the first load attempt, which disconnects `attempted_rx`.
    attempted_tx: Mutex<Option<Sender<()>>>,
    attempted_rx: Receiver<()>,
}

struct State {
    issuer: Option<Arc<Issuer>>,
    /// Why there is no issuer (the last load error), for the outputs' reports.
    error: String,
}

/// What [`CurrentCa::install`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// There was no CA before.
    First,
    /// A CA with another fingerprint was replaced; it had this fingerprint.
    Rotated { previous: String },
    /// The same key was loaded again; nothing changed.
    Same,
}

impl Default for CurrentCa {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        CurrentCa {
            state: Mutex::new(State {
                issuer: None,
                error: "the bot's CA has not been loaded yet".into(),
            }),
            attempted_tx: Mutex::new(Some(tx)),
            attempted_rx: rx,
        }
    }
}

impl CurrentCa {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single assignment: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the wait on [`attempted`](CurrentCa::attempted). The loader
    /// calls it after announcing a first install on the reissue bus, so that
    /// no output issues before that notice (and then again because of it).
    pub fn mark_attempted(&self) {
        self.attempted_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// The CA to sign with, or why there is none.
    pub fn get(&self) -> Result<Arc<Issuer>, String> {
        let s = self.lock();
        s.issuer.clone().ok_or_else(|| s.error.clone())
    }

    /// Makes `issuer` the current CA unless it has the current fingerprint.
    /// Call [`mark_attempted`](CurrentCa::mark_attempted) afterwards.
    pub fn install(&self, issuer: Issuer) -> Installed {
        let mut s = self.lock();
        let outcome = match &s.issuer {
            None => Installed::First,
            Some(old) if old.fingerprint() == issuer.fingerprint() => Installed::Same,
            Some(old) => Installed::Rotated {
                previous: old.fingerprint().to_string(),
            },
        };
        if outcome != Installed::Same {
            s.issuer = Some(Arc::new(issuer));
        }
        outcome
    }

    /// Records a failed load. A CA already loaded stays in use; without one,
    /// `error` becomes the reason [`get`](CurrentCa::get) gives.
    pub fn record_failure(&self, error: &str) {
        {
            let mut s = self.lock();
            if s.issuer.is_none() {
                s.error = format!("the bot's CA could not be loaded: {error}");
            }
        }
        self.mark_attempted();
    }

    /// Disconnects (becomes ready in `select!`) once the first load attempt
    /// has finished, successfully or not. Never yields a value.
    pub fn attempted(&self) -> &Receiver<()> {
        &self.attempted_rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use crossbeam_channel::TryRecvError;

    /// Empty while waiting for the first attempt, Disconnected after it.
    fn attempted(ca: &CurrentCa) -> Option<TryRecvError> {
        ca.attempted().try_recv().err()
    }

    #[test]
    fn install_tells_first_same_and_rotated_apart() {
        let d = TestDir::new("current-ca");
        let ca = CurrentCa::default();
        assert_eq!(attempted(&ca), Some(TryRecvError::Empty));
        assert_eq!(
            ca.get().unwrap_err(),
            "the bot's CA has not been loaded yet"
        );

        ca.record_failure("ca_key: broken");
        assert_eq!(attempted(&ca), Some(TryRecvError::Disconnected));
        assert_eq!(
            ca.get().unwrap_err(),
            "the bot's CA could not be loaded: ca_key: broken"
        );

        let fresh = CurrentCa::default();
        assert_eq!(
            fresh.install(Issuer::load_or_create(&d.0).unwrap()),
            Installed::First
        );
        fresh.mark_attempted();
        assert_eq!(attempted(&fresh), Some(TryRecvError::Disconnected));

        let a = Issuer::load(&d.0).unwrap();
        let fp_a = a.fingerprint().to_string();
        assert_eq!(ca.install(a), Installed::First);
        assert_eq!(ca.get().unwrap().fingerprint(), fp_a);
        assert_eq!(ca.install(Issuer::load(&d.0).unwrap()), Installed::Same);

        // A failure after a successful load keeps the loaded CA.
        ca.record_failure("ca_key: half written");
        assert_eq!(ca.get().unwrap().fingerprint(), fp_a);

        std::fs::remove_file(d.0.join(crate::credentials::issuer::CA_KEY_FILE)).unwrap();
        let b = Issuer::load_or_create(&d.0).unwrap();
        let fp_b = b.fingerprint().to_string();
        assert_eq!(ca.install(b), Installed::Rotated { previous: fp_a });
        assert_eq!(ca.get().unwrap().fingerprint(), fp_b);
    }
}
