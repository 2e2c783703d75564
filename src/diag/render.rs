//! Pages too costly for the serving loop, rendered on a thread of their
//! own: `/metrics` (gather, encode and gzip took 12 to 21 ms at 1000
//! services) and `/debug/pprof/threads` (a /proc read per thread). While
//! one renders, the loop goes on answering `/livez`, `/readyz` and `/wait`.
//!
//! One long-lived thread, `diag-render`, takes jobs in order from a bounded
//! channel and answers each through the reply it came with. Jobs that
//! queued up while it rendered are taken together, and each distinct page
//! among them is rendered once for all who asked: every one of them asked
//! before that render began, so none gets an answer older than its
//! request (a burst of scrapes costs one render, not one each). The bound
//! is the front's connection cap: every job waits on a client connection
//! the front holds open, so the queue fills only with jobs of clients
//! already gone (a reload moved the front, say). A job that finds it full
//! is answered at once with 503 Service Unavailable (RFC 9110 §15.6.4) and
//! `Retry-After: 1`, so the loop never waits on the renderer. The thread
//! ends at its stop (`infra::stop`), which dropping the [`Renderer`] fires.
//!
//! The systemd watchdog watches this thread as it watches the serving loop
//! ([`Watch::watched`]): a render that wedges (as one on the loop used to
//! wedge the loop) withholds the pings. Its pokes come down the same queue
//! as the jobs: one wake-up for the thread.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::response::Response;
use super::{debug, gzip};
use crate::infra::progress::{Beat, Watched};
use crate::infra::stop::{Stop, Stopper};
use crate::log;
use crate::metrics::Metrics;

/// A page to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// `/metrics`, gzip-compressed when `gzip` (the client accepts it).
    Metrics { gzip: bool },
    /// `/debug/pprof/threads`, as JSON or a text table.
    Threads { json: bool },
}

/// Where a rendered page goes: sends it to its client.
pub type Reply = Box<dyn FnOnce(Response) + Send>;

/// What the thread takes from its queue.
enum Msg {
    Render(Job, Reply),
    /// A watchdog poke: only counts a turn.
    Probe,
}

/// The serving loop's handle on the renderer thread; dropping it stops
/// the thread.
pub struct Renderer {
    jobs: Sender<Msg>,
    _stopper: Stopper,
    watch: Watch,
    /// When the last 503 was logged (at most one a second: clients can
    /// cause them at will).
    last_refusal_log: Cell<Option<Instant>>,
}

/// What the systemd watchdog needs of the renderer (see [`Watch::watched`]).
#[derive(Clone)]
pub struct Watch {
    /// One turn per job or probe taken.
    beat: Beat,
    /// Where a poke goes: the queue (a full one means the thread has work,
    /// and will turn).
    probes: Sender<Msg>,
}

impl Renderer {
    /// Starts `diag-render` with room for `capacity` queued jobs (at
    /// least 1), counting its turns on `beat` (the watchdog's slot, shared
    /// with the renderers of the services before and after this one).
    pub fn spawn(
        metrics: Arc<Metrics>,
        capacity: usize,
        beat: Beat,
    ) -> std::io::Result<(Renderer, JoinHandle<()>)> {
        let (jobs, queue) = crossbeam_channel::bounded(capacity.max(1));
        let (stopper, stop) = Stop::new();
        let turns = beat.clone();
        let thread = crate::infra::threads::spawn("diag-render", move || {
            run(&queue, &stop, &metrics, &turns)
        })?;
        let watch = Watch {
            beat,
            probes: jobs.clone(),
        };
        let renderer = Renderer {
            jobs,
            _stopper: stopper,
            watch,
            last_refusal_log: Cell::new(None),
        };
        Ok((renderer, thread))
    }

    /// The watchdog's view of the thread (held apart from the queue).
    pub fn watch(&self) -> Watch {
        self.watch.clone()
    }

    /// Queues `job`; never blocks. A full queue, or a renderer that is
    /// gone, answers 503 through `reply` at once.
    pub fn submit(&self, job: Job, reply: Reply) {
        let (reason, msg) = match self.jobs.try_send(Msg::Render(job, reply)) {
            Ok(()) => return,
            Err(TrySendError::Full(msg)) => ("busy", msg),
            Err(TrySendError::Disconnected(msg)) => ("stopped", msg),
        };
        let Msg::Render(_, reply) = msg else {
            return;
        };
        let mut last = self.last_refusal_log.get();
        if log::once_a_second(&mut last) {
            log::warn(
                "diagnostics renderer cannot take a page; answered 503",
                &[("reason", &reason), ("job", &format_args!("{job:?}"))],
            );
        }
        self.last_refusal_log.set(last);
        reply(unavailable(reason));
    }
}

impl Watch {
    /// The renderer as the systemd watchdog watches it: a poke queues a
    /// probe (none when the queue is full: the thread has work, and turns
    /// once it takes the next), which the thread counts as a turn.
    pub fn watched(&self) -> Watched {
        let probes = self.probes.clone();
        Watched {
            name: "diag-render",
            beat: self.beat.clone(),
            poke: Box::new(move || {
                let _ = probes.try_send(Msg::Probe);
            }),
        }
    }
}

/// The 503 for a page the renderer cannot take.
fn unavailable(reason: &str) -> Response {
    Response::text(
        503,
        &format!("503 service unavailable: the diagnostics renderer is {reason}; try again\n"),
    )
    .with_header("Retry-After", "1")
}

/// The thread: jobs in order until the stop; a probe only counts a turn.
fn run(queue: &Receiver<Msg>, stop: &Stop, metrics: &Metrics, beat: &Beat) {
    loop {
        let first = crossbeam_channel::select! {
            recv(queue) -> msg => msg.ok(),
            recv(stop.receiver()) -> _ => None,
        };
        beat.beat();
        let Some(first) = first else {
            return;
        };
        let batch: Vec<(Job, Reply)> = std::iter::once(first)
            .chain(queue.try_iter())
            .filter_map(|m| match m {
                Msg::Render(job, reply) => Some((job, reply)),
                Msg::Probe => None,
            })
            .collect();
        answer_batch(batch, metrics);
    }
}

/// Renders each distinct job of `batch` once, in order of first request,
/// and answers every request with its page (a copy is kept only while a
/// later request in the batch still wants it).
fn answer_batch(batch: Vec<(Job, Reply)>, metrics: &Metrics) {
    let jobs: Vec<Job> = batch.iter().map(|(j, _)| *j).collect();
    let mut kept: Vec<(Job, Response)> = Vec::new();
    for (i, (job, reply)) in batch.into_iter().enumerate() {
        let wanted_later = jobs[i + 1..].contains(&job);
        let page = match kept.iter().position(|(j, _)| *j == job) {
            Some(k) if wanted_later => kept[k].1.clone(),
            Some(k) => kept.swap_remove(k).1,
            None => {
                let page = render_guarded(job, metrics);
                if wanted_later {
                    kept.push((job, page.clone()));
                }
                page
            }
        };
        reply(page);
    }
}

/// [`render`], with a panic turned into a 500: a bug in a page must not
/// end the thread.
fn render_guarded(job: Job, metrics: &Metrics) -> Response {
    #[cfg(test)]
    tests::RENDERS.with(|n| n.set(n.get() + 1));
    catch_unwind(AssertUnwindSafe(|| render(job, metrics))).unwrap_or_else(|_| {
        log::error("rendering a diagnostics page panicked", &[]);
        Response::text(500, "500 internal server error: rendering panicked\n")
    })
}

/// Renders `job` (blocking: this is the slow part).
fn render(job: Job, metrics: &Metrics) -> Response {
    match job {
        Job::Metrics { gzip } => metrics_page(metrics, gzip),
        Job::Threads { json } => debug::threads(json),
    }
}

/// `/metrics`: the text format, gzip-compressed when the client accepts it
/// (as Go's promhttp); `Vary: Accept-Encoding` always.
fn metrics_page(metrics: &Metrics, gzip: bool) -> Response {
    // Tests hold a render here (`metrics-render=sleep:MS`).
    crate::infra::failpoints::hit("metrics-render");
    let body = match metrics.render() {
        Ok(body) => body,
        Err(e) => return Response::text(500, &format!("{e}\n")),
    };
    let page = Response::new(200, crate::metrics::CONTENT_TYPE, body)
        .with_header("Vary", "Accept-Encoding");
    if !gzip {
        return page;
    }
    // Uncompressed if compression fails: identity is always acceptable.
    match gzip::compress(&page.body) {
        Ok(gz) => Response { body: gz, ..page }.with_header("Content-Encoding", "gzip"),
        Err(_) => page,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    fn channel_reply() -> (Reply, Receiver<Response>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    #[test]
    fn metrics_plain_and_gzip() {
        let m = Metrics::new();
        let plain = render(Job::Metrics { gzip: false }, &m);
        assert_eq!(plain.status, 200);
        assert_eq!(plain.content_type, crate::metrics::CONTENT_TYPE);
        assert_eq!(plain.header("Vary"), Some("Accept-Encoding"));
        assert_eq!(plain.header("Content-Encoding"), None);
        let text = String::from_utf8(plain.body).unwrap();
        assert!(text.contains("process_threads"), "{text}");

        let gz = render(Job::Metrics { gzip: true }, &m);
        assert_eq!(gz.header("Content-Encoding"), Some("gzip"));
        assert_eq!(gz.header("Vary"), Some("Accept-Encoding"));
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz.body[..])
            .read_to_string(&mut back)
            .unwrap();
        assert!(back.contains("# TYPE process_threads gauge"), "{back}");
    }

    thread_local! {
        /// Renders on this thread (see `render_guarded`).
        pub(super) static RENDERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_batch_renders_each_distinct_page_once() {
        let m = Metrics::new();
        let plain = Job::Metrics { gzip: false };
        let gz = Job::Metrics { gzip: true };
        let threads = Job::Threads { json: false };
        let jobs = [plain, threads, plain, gz, plain];
        let (replies, answers): (Vec<Reply>, Vec<Receiver<Response>>) =
            jobs.iter().map(|_| channel_reply()).unzip();
        RENDERS.with(|n| n.set(0));
        answer_batch(jobs.into_iter().zip(replies).collect(), &m);
        assert_eq!(RENDERS.with(|n| n.get()), 3, "one render per distinct page");
        let got: Vec<Response> = answers.iter().map(|rx| rx.try_recv().unwrap()).collect();
        assert_eq!(got[0], got[2]);
        assert_eq!(got[0], got[4]);
        assert_eq!(got[0].header("Content-Encoding"), None);
        assert_eq!(got[3].header("Content-Encoding"), Some("gzip"));
        assert!(String::from_utf8_lossy(&got[1].body).starts_with("TID"));
    }

    #[test]
    fn jobs_are_answered_in_order_and_a_full_queue_is_503() {
        let (renderer, thread) =
            Renderer::spawn(Arc::new(Metrics::new()), 1, Beat::default()).unwrap();
        // Hold the thread: its first reply blocks until we take it.
        let (hold_tx, hold_rx) = crossbeam_channel::bounded::<Response>(0);
        renderer.submit(
            Job::Threads { json: true },
            Box::new(move |r| {
                let _ = hold_tx.send(r);
            }),
        );
        // Once the thread holds the first job, one more fits in the queue.
        let (queued, queued_rx) = channel_reply();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !renderer.jobs.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "renderer never took the job"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        renderer.submit(Job::Metrics { gzip: false }, queued);
        let (full, full_rx) = channel_reply();
        renderer.submit(Job::Metrics { gzip: false }, full);
        let busy = full_rx.try_recv().expect("a full queue answers at once");
        assert_eq!(busy.status, 503);
        assert_eq!(busy.header("Retry-After"), Some("1"));
        assert!(String::from_utf8_lossy(&busy.body).contains("busy"));

        // Wedged on the first job: a poke is not answered.
        let watched = renderer.watch().watched();
        let turns = watched.beat.count();
        (watched.poke)();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(watched.beat.count(), turns, "a wedged renderer turned");

        let first = hold_rx.recv().unwrap();
        assert_eq!(first.content_type, "application/json");
        assert_eq!(queued_rx.recv().unwrap().status, 200);
        // Free again: the probe and each later poke count a turn.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for _ in 0..3 {
            let before = watched.beat.count();
            (watched.poke)();
            while watched.beat.count() == before {
                assert!(std::time::Instant::now() < deadline, "no turn after a poke");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // The watchdog's poke does not keep the thread alive.
        drop(renderer);
        thread.join().unwrap();
        drop(watched);
    }
}
