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

/// Records `name` as the calling thread's full name from now on (a
/// `deep-work` thread takes the name of the service whose job it runs).
pub fn rename_current(name: &str) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(current_tid(), name.to_string());
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

/// The stack of a service thread (see [`spawn_member`]), in bytes: 512 KiB
/// instead of Rust's default 2 MiB. Measured (the lowest written byte of
/// each stack, /proc/PID/mem): in a release build an identity output's
/// thread reaches 8-9 KiB now that its renewal runs on a deep-work
/// thread (`infra::deep_work`), and the deepest service thread, the internal
/// `identity` (the CA's ed25519 work), 17-18 KiB. Unoptimized crypto is far
/// deeper: the whole suite (debug build) overflowed that thread at 32 and
/// 64 KiB and passed at 128 KiB; 512 KiB is four times that. A smaller
/// reservation does not lower the resident size by itself (only touched
/// pages count), but it keeps a stack out of a 2 MiB transparent huge page
/// where THP is `always`, and 1000 services reserve 0.5 GB of address space
/// instead of 2 GB.
pub const SERVICE_STACK_BYTES: usize = 512 * 1024;

/// Why [`within`] returned without the helper's result.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// `bound` passed first.
    TimedOut,
    /// `give_up` said so first.
    Asked,
}

/// Runs `f` on a short-lived detached thread named `name` and waits for its
/// result at most `bound`, asking `give_up` every 50 ms; runs `f` here when
/// no thread can be started. For a call that waits on something outside
/// tbot and cannot be cut short itself (getaddrinfo(3), a read on a mount
/// that hangs): the caller goes on, and the helper ends whenever the call
/// returns, its result dropped.
pub fn within<T, F>(
    name: &str,
    bound: std::time::Duration,
    give_up: impl Fn() -> bool,
    f: F,
) -> Result<T, GaveUp>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = crossbeam_channel::bounded(1);
    let job = std::sync::Arc::new(Mutex::new(Some(f)));
    let helper_job = job.clone();
    let spawned = spawn(name, move || {
        let f = helper_job.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            let _ = tx.send(f());
        }
    });
    if spawned.is_err() {
        let f = job.lock().unwrap_or_else(|p| p.into_inner()).take();
        return f.map(|f| f()).ok_or(GaveUp::Asked);
    }
    let end = Instant::now() + bound;
    loop {
        let slice =
            std::time::Duration::from_millis(50).min(end.saturating_duration_since(Instant::now()));
        match rx.recv_timeout(slice) {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Disconnected) => return Err(GaveUp::Asked),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if give_up() {
            return Err(GaveUp::Asked);
        }
        if Instant::now() >= end {
            return Err(GaveUp::TimedOut);
        }
    }
}

/// Spawns a named thread (see [`spawn`]) with a [`SERVICE_STACK_BYTES`]
/// stack, whose end can be awaited with a deadline: the [`Member`] is
/// added to a [`Group`].
pub fn spawn_member<F>(name: &str, f: F) -> std::io::Result<Member>
where
    F: FnOnce() + Send + 'static,
{
    // Dropped when the thread ends, also by a panic: the receiver then
    // disconnects.
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let owned = name.to_string();
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(SERVICE_STACK_BYTES)
        .spawn(move || {
            let _registration = register_current(&owned);
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
    fn within_gives_up_on_a_call_that_does_not_return() {
        let slow = || std::thread::sleep(Duration::from_secs(5));
        let t0 = Instant::now();
        let r = within("t-slow", Duration::from_millis(100), || false, slow);
        assert_eq!(r, Err(GaveUp::TimedOut));
        let asked = within("t-asked", Duration::from_secs(10), || true, slow);
        assert_eq!(asked, Err(GaveUp::Asked));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(
            within("t-fast", Duration::from_secs(5), || false, || 7),
            Ok(7)
        );
    }

    /// The size of the mapping of /proc/self/maps that holds `addr`.
    fn mapping_size(addr: usize) -> Option<usize> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines().find_map(|l| {
            let (range, _) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a <= addr && addr < b).then_some(b - a)
        })
    }

    /// Set in the child process that [`service_threads_get_the_small_stack`]
    /// runs itself in.
    const STACK_PROBE: &str = "TBOT_TEST_STACK_PROBE";

    #[test]
    fn service_threads_get_the_small_stack() {
        // In a process of its own: glibc hands a new thread the cached stack
        // of any finished one up to four times the size asked (2 MiB for
        // 512 KiB), and other tests' threads finish all the time here.
        if std::env::var_os(STACK_PROBE).is_none() {
            let name = "infra::threads::tests::service_threads_get_the_small_stack";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1"])
                .env(STACK_PROBE, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}");
            assert!(stdout.contains("1 passed"), "{stdout}");
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut g = Group::default();
        g.push(
            spawn_member("t-stack", move || {
                let local = 0u8;
                let _ = tx.send(mapping_size(std::ptr::addr_of!(local) as usize));
            })
            .unwrap(),
        );
        let size = rx.recv().unwrap().expect("the stack is mapped");
        // glibc keeps the thread's descriptor and TLS at the top of it.
        assert!(
            (SERVICE_STACK_BYTES..SERVICE_STACK_BYTES + 64 * 1024).contains(&size),
            "{size}"
        );
        assert_eq!(
            g.join_until(Instant::now() + Duration::from_secs(5)),
            Joined::default()
        );
    }

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
