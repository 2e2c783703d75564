//! Named threads, and a registry of their full names.
//!
//! Linux keeps only 15 bytes of a thread's name (`/proc/self/task/*/comm`);
//! the registry keeps the whole name per thread id so `/debug/pprof/threads`
//! can show `identity-opt-machine-id` rather than `identity-opt-ma`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

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
