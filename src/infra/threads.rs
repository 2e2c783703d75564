//! Named threads, and a registry of their full names.
//!
//! Linux keeps only 15 bytes of a thread's name (`/proc/self/task/*/comm`);
//! the registry keeps the whole name per thread id so `/debug/pprof/threads`
//! can show `identity-opt-machine-id` rather than `identity-opt-ma`.
//!
//! A [`Group`] joins threads by one deadline and names every thread that
//! panicked or did not stop.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};

fn registry() -> &'static Mutex<HashMap<u32, String>> {
    static NAMES: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    NAMES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The kernel's id of the calling thread.
pub fn current_tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Records the calling thread's full name until it exits.
pub fn register_current(name: &str) -> Registration {
    let tid = current_tid();
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(tid, name.to_string());
    Registration { tid }
}

/// Removes the thread's entry when dropped (when the thread ends).
pub struct Registration {
    tid: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        registry()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tid);
    }
}

/// The full name a tbot thread registered, if any.
pub fn full_name(tid: u32) -> Option<String> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&tid)
        .cloned()
}

/// Spawns a thread with this name, registered for its whole life.
pub fn spawn<F, T>(name: &str, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let owned = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _registration = register_current(&owned);
            f()
        })
}

/// Spawns a named thread (see [`spawn`]) whose end can be awaited with a
/// deadline: the [`Member`] is added to a [`Group`].
pub fn spawn_member<F>(name: &str, f: F) -> std::io::Result<Member>
where
    F: FnOnce() + Send + 'static,
{
    // Dropped when the thread ends, also by a panic: the receiver then
    // disconnects.
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let handle = spawn(name, move || {
        let _done = done_tx;
        f()
    })?;
    Ok(Member {
        name: name.to_string(),
        handle,
        done,
    })
}

/// A thread of a [`Group`]: its name, handle, and a receiver that
/// disconnects when it ends.
pub struct Member {
    pub name: String,
    handle: JoinHandle<()>,
    done: Receiver<()>,
}

/// Threads awaited together, by one deadline, as `lsp-server`'s
/// `IoThreads::join` awaits its threads (but without re-raising a panic:
/// a panic is named instead).
#[derive(Default)]
pub struct Group(Vec<Member>);

/// What [`Group::join_until`] found: the names of the threads that
/// panicked and of those still running at the deadline (left detached).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Joined {
    pub panicked: Vec<String>,
    pub late: Vec<String>,
}

impl Group {
    pub fn push(&mut self, m: Member) {
        self.0.push(m);
    }

    /// Waits for every thread until `deadline`, with no polling (each
    /// thread's end wakes the wait), and joins the ones that ended.
    pub fn join_until(self, deadline: Instant) -> Joined {
        let mut joined = Joined::default();
        for m in self.0 {
            match m.done.recv_deadline(deadline) {
                Err(RecvTimeoutError::Disconnected) => {
                    if m.handle.join().is_err() {
                        joined.panicked.push(m.name);
                    }
                }
                // Nothing is ever sent: only the timeout is left.
                _ => joined.late.push(m.name),
            }
        }
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_group_names_the_threads_that_panicked_or_did_not_stop() {
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        let mut g = Group::default();
        g.push(spawn_member("t-ok", || {}).unwrap());
        g.push(spawn_member("t-panics", || panic!("on purpose")).unwrap());
        g.push(
            spawn_member("t-stuck", move || {
                let _ = wait.recv();
            })
            .unwrap(),
        );
        let started = Instant::now();
        let joined = g.join_until(Instant::now() + Duration::from_secs(3));
        assert_eq!(
            joined,
            Joined {
                panicked: vec!["t-panics".into()],
                late: vec!["t-stuck".into()],
            }
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(release);
    }
}
