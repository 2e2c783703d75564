//! The `/debug/pprof/` pages (debug mode only; the router decides).
//!
//! Independent of the HTTP library: the router ([`super::routes`]) picks
//! the page from the endpoint table and hands over the query values it
//! needs; every page is a [`Response`]. CPU profiles block for seconds: the
//! router returns them as a [`ProfileJob`] that the caller runs on its own
//! thread with [`run_profile`], after taking the process-wide slot with
//! [`try_start_profile`]. The thread list reads /proc for every thread, so
//! it is rendered off the serving loop too ([`super::render`]).

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use pprof::protos::Message;
use serde::Serialize;

use super::endpoints::{Listed, ENDPOINTS};
use super::response::{Response, TEXT};

const DEFAULT_SECONDS: u64 = 30;
const MAX_SECONDS: u64 = 300;
const FREQUENCY_HZ: i32 = 99;
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// A debug page: `X-Content-Type-Options: nosniff`, as Go's net/http/pprof
/// sets.
fn page(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
    Response::new(status, content_type, body).with_header("X-Content-Type-Options", "nosniff")
}

/// A one-line plain-text debug page.
fn message(status: u16, message: &str) -> Response {
    page(status, TEXT, format!("{message}\n").into_bytes())
}

/// The answer when [`try_start_profile`] returns `None`.
pub fn profile_busy() -> Response {
    message(409, "a CPU profile is already running; try again later")
}

/// A path under `/debug/pprof/` that is no page.
pub fn not_found() -> Response {
    message(404, "not found; see /debug/pprof/ for the debug endpoints")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// pprof protobuf, for `go tool pprof`.
    Pprof,
    /// SVG flame graph.
    Flamegraph,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileJob {
    /// Sampling time, validated by [`profile_job`] to 1..=300.
    pub seconds: u64,
    pub kind: ProfileKind,
}

/// The index page: the endpoint table's rows listed on it.
pub fn index() -> Response {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html>\n<head><title>/debug/pprof/</title></head>\n<body>\n\
         <h1>/debug/pprof/</h1>\n<p>Only one CPU profile runs at a time.</p>\n<dl>\n",
    );
    for e in ENDPOINTS.iter().filter(|e| e.listed == Listed::PprofIndex) {
        let link = e.usage.trim_start_matches("/debug/pprof/");
        let name = e.path.trim_start_matches("/debug/pprof/");
        html.push_str(&format!(
            "<dt><a href=\"/debug/pprof/{link}\">{name}</a></dt>\n<dd>{}</dd>\n",
            e.description
        ));
    }
    html.push_str("</dl>\n</body>\n</html>\n");
    page(200, "text/html; charset=utf-8", html.into_bytes())
}

/// A profile of `kind` for the raw `seconds` query value (`None` when
/// absent), or the 400 that says what is wrong with it.
pub fn profile_job(seconds: Option<&str>, kind: ProfileKind) -> Result<ProfileJob, Response> {
    match parse_seconds(seconds) {
        Ok(seconds) => Ok(ProfileJob { seconds, kind }),
        Err(m) => Err(message(400, &m)),
    }
}

/// The `seconds` value: absent means the default, otherwise plain decimal
/// digits in 1..=300.
fn parse_seconds(value: Option<&str>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(DEFAULT_SECONDS);
    };
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(n) if (1..=MAX_SECONDS).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid seconds {value:?}: must be a whole number from 1 to {MAX_SECONDS} (default {DEFAULT_SECONDS})"
        )),
    }
}

static PROFILE_RUNNING: AtomicBool = AtomicBool::new(false);

/// Holds the process-wide profiling slot; dropping it frees the slot.
#[must_use = "dropping the slot frees it at once"]
#[derive(Debug)]
pub struct ProfileSlot {
    _private: (),
}

impl Drop for ProfileSlot {
    fn drop(&mut self) {
        PROFILE_RUNNING.store(false, Ordering::Release);
    }
}

/// One at a time per process: returns None when a profile is already running
/// (caller answers 409, see [`profile_busy`]).
pub fn try_start_profile() -> Option<ProfileSlot> {
    PROFILE_RUNNING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .ok()
        .map(|_| ProfileSlot { _private: () })
}

/// Blocking: samples for `job.seconds` and renders. Called on a dedicated
/// thread, holding the slot (released when this returns).
pub fn run_profile(job: &ProfileJob, _slot: ProfileSlot) -> Response {
    sample_and_render(job).unwrap_or_else(|m| message(500, &m))
}

fn sample_and_render(job: &ProfileJob) -> Result<Response, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| format!("cannot start the CPU profiler: {e}"))?;
    thread::sleep(Duration::from_secs(job.seconds));
    let report = guard
        .report()
        .frames_post_processor(drop_unwinder_frames)
        .build()
        .map_err(|e| format!("cannot build the CPU profile report: {e}"))?;
    drop(guard);

    match job.kind {
        ProfileKind::Pprof => {
            let profile = report
                .pprof()
                .map_err(|e| format!("cannot convert the CPU profile to pprof format: {e}"))?;
            Ok(
                page(200, "application/octet-stream", profile.encode_to_vec())
                    .with_header("Content-Disposition", "attachment; filename=\"profile\""),
            )
        }
        ProfileKind::Flamegraph => {
            let mut svg = Vec::new();
            // pprof 0.15 unwraps the renderer's errors; keep a panic there
            // from taking down the caller's thread.
            panic::catch_unwind(AssertUnwindSafe(|| report.flamegraph(&mut svg)))
                .map_err(|_| "the flame graph renderer panicked".to_string())?
                .map_err(|e| format!("cannot render the flame graph: {e}"))?;
            if svg.is_empty() {
                // pprof writes nothing when there are no samples.
                svg = empty_flamegraph(job.seconds).into_bytes();
            }
            Ok(page(200, "image/svg+xml", svg))
        }
    }
}

/// pprof 0.15 cuts its signal handler from each stack but, in unoptimised
/// builds, keeps the un-inlined unwinder frames above it, which would then
/// own all the flat time. Drop them from the leaf end.
fn drop_unwinder_frames(frames: &mut pprof::Frames) {
    let unwinder = frames
        .frames
        .iter()
        .take_while(|frame| frame.iter().any(|symbol| is_unwinder(&symbol.name())))
        .count();
    frames.frames.drain(..unwinder);
}

fn is_unwinder(name: &str) -> bool {
    name.starts_with("backtrace::") || name.starts_with("<pprof::backtrace::")
}

fn empty_flamegraph(seconds: u64) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n\
         <svg version=\"1.1\" width=\"600\" height=\"40\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"10\" y=\"25\">No CPU samples in {seconds} s: the process was idle.</text></svg>\n"
    )
}

#[derive(Debug, Serialize, PartialEq)]
struct ThreadInfo {
    tid: u32,
    name: String,
    state: char,
    cpu_seconds: f64,
}

/// `?format=` of the thread list: `Ok(true)` for JSON, `Ok(false)` for the
/// text table (also when absent), or the 400 for anything else.
pub fn threads_format(format: Option<&str>) -> Result<bool, Response> {
    match format {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(message(
            400,
            &format!("invalid format {other:?}: must be \"text\" or \"json\""),
        )),
    }
}

/// The thread list, as JSON or a text table. Reads /proc for every
/// thread: run it off the serving loop.
pub fn threads(json: bool) -> Response {
    let list = match list_threads(Path::new("/proc/self/task")) {
        Ok(list) => list,
        Err(m) => return message(500, &m),
    };
    if json {
        match serde_json::to_vec(&list) {
            Ok(body) => page(200, "application/json", body),
            Err(e) => message(500, &format!("cannot encode the thread list: {e}")),
        }
    } else {
        page(200, TEXT, threads_table(&list).into_bytes())
    }
}

fn threads_table(list: &[ThreadInfo]) -> String {
    let mut table = format!("{:<8} {:<5} {:>11}  NAME\n", "TID", "STATE", "CPU_SECONDS");
    for t in list {
        table.push_str(&format!(
            "{:<8} {:<5} {:>11.2}  {}\n",
            t.tid, t.state, t.cpu_seconds, t.name
        ));
    }
    table
}

/// Threads under `task_dir` (`/proc/<pid>/task`), sorted by id. A thread that
/// exits while we read is skipped.
fn list_threads(task_dir: &Path) -> Result<Vec<ThreadInfo>, String> {
    // _SC_CLK_TCK, as the kernel gave it in the auxiliary vector.
    let ticks_per_second = rustix::param::clock_ticks_per_second();
    if ticks_per_second == 0 {
        return Err("clock ticks per second (_SC_CLK_TCK) unknown".into());
    }
    let entries =
        fs::read_dir(task_dir).map_err(|e| format!("cannot list {}: {e}", task_dir.display()))?;
    let mut list = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", task_dir.display()))?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // Unreadable means the thread has gone; skip it.
        let Ok(stat) = fs::read(entry.path().join("stat")) else {
            continue;
        };
        let stat = String::from_utf8_lossy(&stat);
        let Some(fields) = crate::infra::procstat::parse(&stat) else {
            continue;
        };
        // tbot's own threads keep their whole name (the kernel keeps 15 bytes).
        let full = crate::infra::threads::full_name(tid);
        let name = match full.map_or_else(
            || fs::read(entry.path().join("comm")),
            |n| Ok(n.into_bytes()),
        ) {
            Ok(comm) => String::from_utf8_lossy(&comm)
                .trim_end_matches('\n')
                .to_string(),
            Err(_) => fields.comm,
        };
        list.push(ThreadInfo {
            tid,
            name,
            state: fields.state,
            cpu_seconds: fields.cpu_ticks as f64 / ticks_per_second as f64,
        });
    }
    list.sort_by_key(|t| t.tid);
    Ok(list)
}

/// The command line, arguments joined by NUL as Go's /debug/pprof/cmdline does.
pub fn cmdline() -> Response {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<Vec<u8>> = std::env::args_os().map(|a| a.as_bytes().to_vec()).collect();
    page(200, TEXT, args.join(&0u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Mutex, MutexGuard};

    /// Tests that take the profiling slot run one at a time.
    static SLOT_TESTS: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SLOT_TESTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn body(r: &Response) -> &str {
        std::str::from_utf8(&r.body).unwrap()
    }

    // The `seconds` and `format` query values through the router, and 404s
    // under /debug/pprof/: diag::routes's tests.

    #[test]
    fn index_lists_the_tables_debug_rows_and_cmdline_joins_with_nul() {
        let r = index();
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/html"));
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        for name in ["profile", "flamegraph", "threads", "cmdline"] {
            assert!(
                body(&r).contains(&format!("<a href=\"/debug/pprof/{name}")),
                "{name}"
            );
        }
        assert_eq!(body(&r).matches("<dt>").count(), 4);
        let r = not_found();
        assert_eq!(r.status, 404);
        assert!(r.content_type.starts_with("text/plain"));
        let r = cmdline();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/plain; charset=utf-8");
        let want: Vec<String> = std::env::args().collect();
        assert_eq!(body(&r), want.join("\0"));
    }

    #[test]
    fn one_profile_slot_per_process() {
        let _serial = serial();
        let slot = try_start_profile().expect("slot should be free");
        assert!(try_start_profile().is_none(), "second slot while held");
        drop(slot);
        let again = try_start_profile();
        assert!(again.is_some(), "slot should be free after drop");
    }

    #[test]
    fn threads_lists_a_named_thread() {
        let (started_tx, started_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name("tbot-test-xyz".to_string())
            .spawn(move || {
                started_tx.send(()).unwrap();
                let _ = stop_rx.recv();
            })
            .unwrap();
        started_rx.recv().unwrap();
        // Let it reach the blocking recv.
        thread::sleep(Duration::from_millis(50));

        let text_reply = threads(false);
        let json_reply = threads(true);
        stop_tx.send(()).unwrap();
        handle.join().unwrap();

        assert_eq!(text_reply.status, 200);
        let text = body(&text_reply);
        assert!(text.starts_with("TID"), "{text}");
        let row = text
            .lines()
            .find(|l| l.ends_with("  tbot-test-xyz"))
            .unwrap_or_else(|| panic!("no row for the thread in:\n{text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols[0].parse::<u32>().is_ok(), "{row}");
        assert!(["S", "R"].contains(&cols[1]), "{row}");
        assert!(cols[2].parse::<f64>().unwrap() >= 0.0, "{row}");

        assert_eq!(json_reply.status, 200);
        assert_eq!(json_reply.content_type, "application/json");
        let list: Vec<serde_json::Value> = serde_json::from_slice(&json_reply.body).unwrap();
        let ours = list
            .iter()
            .find(|t| t["name"] == "tbot-test-xyz")
            .unwrap_or_else(|| panic!("no entry for the thread in {list:?}"));
        assert!(ours["tid"].as_u64().unwrap() > 0);
        assert!(
            ["S", "R"].contains(&ours["state"].as_str().unwrap()),
            "{ours}"
        );
        assert!(ours["cpu_seconds"].as_f64().unwrap() >= 0.0);
        assert_eq!(list.len(), text.lines().count() - 1);

        assert_eq!(threads_format(Some("xml")).unwrap_err().status, 400);
        assert_eq!(threads_format(Some("json")), Ok(true));
        assert_eq!(threads_format(None), Ok(false));
    }

    #[inline(never)]
    fn burn_cpu_for_profile_test(stop: &AtomicBool) -> u64 {
        let mut x: u64 = 1;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        x
    }

    fn profile_while_busy(kind: ProfileKind) -> Response {
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| burn_cpu_for_profile_test(&stop));
            let slot = try_start_profile().expect("slot should be free");
            let r = run_profile(&ProfileJob { seconds: 1, kind }, slot);
            stop.store(true, Ordering::Relaxed);
            r
        })
    }

    #[test]
    fn cpu_profile_and_flamegraph() {
        let _serial = serial();

        let r = profile_while_busy(ProfileKind::Pprof);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.content_type, "application/octet-stream");
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| *k == "Content-Disposition" && v.contains("filename=\"profile\"")));
        assert!(!r.body.is_empty());
        let profile = pprof::protos::Profile::decode(r.body.as_slice()).unwrap();
        assert!(!profile.sample.is_empty(), "no samples");
        assert!(
            profile
                .string_table
                .iter()
                .any(|s| s.contains("burn_cpu_for_profile_test")),
            "busy function not among the symbols"
        );
        let name_of_location = |id: u64| {
            let loc = profile.location.iter().find(|l| l.id == id).unwrap();
            let line = loc.line.first()?;
            let func = profile.function.iter().find(|f| f.id == line.function_id);
            Some(profile.string_table[func.unwrap().name as usize].clone())
        };
        // A sample whose stack could not be walked has no frames (seen once
        // in a full run): no leaf, so no profiler frame as its leaf either.
        for sample in &profile.sample {
            let Some(leaf) = sample
                .location_id
                .first()
                .and_then(|&id| name_of_location(id))
            else {
                continue;
            };
            assert!(!is_unwinder(&leaf), "profiler frame as leaf: {leaf}");
        }
        assert!(try_start_profile().is_some(), "slot freed after the run");

        let r = profile_while_busy(ProfileKind::Flamegraph);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.content_type, "image/svg+xml");
        let svg = body(&r);
        assert!(svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("<svg"));
        assert!(svg.contains("burn_cpu_for_profile_test"));
    }
}
