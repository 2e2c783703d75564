//! The small shared gate for the services' deep work: an identity
//! renewal (its ed25519 key and certificate, and the generation of files it
//! writes) runs on [`WORKERS`] shared `deep-work` threads, one job each at
//! a time, first come first served.
//!
//! Why not on the service's own thread: stack pages stay resident once
//! touched, and glibc keeps a cache of freed blocks per thread (its tcache)
//! until the thread ends; on a service thread both would stay for the
//! service's life, once per service. Why not a helper thread per job (what
//! this replaced, `run_beside`): 500 outputs starting at once ran 500
//! helpers at once, each with its kernel stack, its thread structures and
//! its stack pages; the cgroup memory peak was 48-65 MB, and a 32 MB limit
//! OOM-killed tbot. Here the deep work costs [`WORKERS`] threads, whatever
//! the number of services, and starts no thread per job.
//!
//! Why eight, not one a core: most of a renewal's time is fsync(2) waiting
//! for the disk, not CPU, and the file system commits together the fsyncs
//! that wait at once. Two workers made 1,000 outputs write almost one after
//! the other (5.6 s from exec to all healthy, where 1,000 helpers took
//! 1.3 s). Writing on the outputs' own threads instead (only the signing
//! here) overlapped every fsync but cost 4 MB more at 500 outputs (their
//! freed blocks), enough to be OOM-killed under 32 MB again (the shared
//! 2-core VM; `tests/bench/service_cost.sh`).
//!
//! The workers start on the first job and then sleep on the queue: no
//! timer wakes them. If no worker can be started (a pids limit), the job
//! runs on the caller's thread, and the next job tries to start one again.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use crate::infra::threads;

/// Threads that run the deep work (see the module documentation).
pub const WORKERS: usize = 8;

/// A queued job: the name its worker takes while running it (the service's,
/// for `/debug/pprof/threads`), and the work.
struct Job {
    name: String,
    run: Box<dyn FnOnce() + Send>,
}

struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    started: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Queues `job`, starting workers up to [`WORKERS`]; gives it back when
/// no worker runs.
fn submit(job: Job) -> Result<(), Job> {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let pool = pool.get_or_insert_with(|| {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pool { tx, rx, started: 0 }
    });
    while pool.started < WORKERS {
        let rx = pool.rx.clone();
        match threads::spawn("deep-work", move || work(rx)) {
            Ok(_) => pool.started += 1,
            Err(e) => {
                crate::log::warn(
                    "cannot start a deep-work thread; its work runs on the service's thread",
                    &[("error", &e)],
                );
                break;
            }
        }
    }
    if pool.started == 0 {
        return Err(job);
    }
    // The pool holds a receiver: a send cannot fail.
    pool.tx.send(job).map_err(|e| e.into_inner())
}

/// A worker: runs jobs as they come, for good.
fn work(jobs: Receiver<Job>) {
    for job in jobs.iter() {
        threads::rename_current(&job.name);
        (job.run)();
        threads::rename_current("deep-work");
    }
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const ABANDONED: u8 = 2;

/// Runs `f` on a deep-work thread (see the module documentation) and
/// returns its result, or None when `stop` becomes readable (disconnects)
/// before `f` has started: `f` then never runs. Once started, `f` is
/// waited for whatever `stop` does, so that a stopped service has no write
/// of its own still going on. A panic in `f` is resumed on the caller.
/// `name` names the worker while it runs `f`.
pub fn run<T, F>(name: &str, stop: &Receiver<()>, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = crossbeam_channel::bounded(1);
    let state = Arc::new(AtomicU8::new(QUEUED));
    let job_state = state.clone();
    let job = Job {
        name: name.to_string(),
        run: Box::new(move || {
            if job_state
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
            }
        }),
    };
    if let Err(job) = submit(job) {
        (job.run)();
    }
    let result = crossbeam_channel::select! {
        recv(rx) -> r => r,
        recv(stop) -> _ => {
            let abandoned = state
                .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if abandoned {
                return None;
            }
            rx.recv()
        }
    };
    match result {
        Ok(Ok(v)) => Some(v),
        Ok(Err(payload)) => resume_unwind(payload),
        // The job is only ever dropped after it ran (and sent), or abandoned.
        Err(_) => unreachable!("a started deep-work job always answers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn runs_on_a_worker_named_for_the_job_and_resumes_a_panic() {
        let (_keep, stop) = crossbeam_channel::bounded::<()>(0);
        let here = threads::current_tid();
        let (tid, full) = run("id-with-a-long-name", &stop, || {
            let tid = threads::current_tid();
            (tid, threads::full_name(tid))
        })
        .unwrap();
        assert_ne!(tid, here);
        assert_eq!(full.as_deref(), Some("id-with-a-long-name"));
        let owned = String::from("owned");
        assert_eq!(run("t", &stop, move || owned.len()), Some(5));
        let payload = catch_unwind(|| run("t-panics", &stop, || panic!("on purpose")))
            .expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"on purpose"));
        // The workers survive a panic.
        assert_eq!(run("t", &stop, || 7), Some(7));
    }

    #[test]
    fn a_stopped_caller_abandons_a_job_not_started() {
        let (_keep, never) = crossbeam_channel::bounded::<()>(0);
        // Hold every worker.
        let (release, held) = crossbeam_channel::bounded::<()>(0);
        let (started_tx, started) = crossbeam_channel::unbounded();
        let holders: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (held, started_tx, never) = (held.clone(), started_tx.clone(), never.clone());
                std::thread::spawn(move || {
                    run("t-hold", &never, move || {
                        let _ = started_tx.send(());
                        let _ = held.recv();
                    })
                })
            })
            .collect();
        for _ in 0..WORKERS {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let ran = Arc::new(AtomicU8::new(0));
        let r = ran.clone();
        assert_eq!(
            run("t-stopped", &stop, move || r.store(1, Ordering::SeqCst)),
            None
        );
        drop(release);
        for h in holders {
            h.join().unwrap();
        }
        // Queued behind the holders, then skipped.
        assert_eq!(run("t-after", &never, || 1), Some(1));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
