//! The process's resource limits: the open-file limit raised at start, and
//! errors that name the limit that ran out.
//!
//! systemd (and most shells) give a service a soft RLIMIT_NOFILE of 1024
//! and a far higher hard one (524288 since systemd 240): the soft limit
//! is kept low only for programs that still use select(2), whose sets stop
//! at descriptor 1023. tbot never uses select(2) and runs no other program,
//! so, as Go's runtime (1.19 and later) and most daemons do, it raises the
//! soft limit to the hard one at start ([`raise_nofile`]). Every budget
//! sized from the limit (the multiplexer's `budget.rs`, the diagnostics
//! front's cap, `process_max_fds`) reads the limit in force when it is
//! computed, so it sees the raised one.

use std::io;
use std::sync::OnceLock;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft limit before and after [`raise_nofile`], when it changed.
static RAISED: OnceLock<(u64, Option<u64>)> = OnceLock::new();

/// Raises the soft RLIMIT_NOFILE to the hard one (not allowed, already
/// equal or unlimited: nothing changes). Called once, first thing in
/// `main`; [`log_raised`] says what it did once logging is set up.
pub fn raise_nofile() {
    if let Some(r) = raised_nofile() {
        let _ = RAISED.set(r);
    }
}

/// Logs the raise [`raise_nofile`] made, if any.
pub fn log_raised() {
    if let Some((from, to)) = RAISED.get() {
        let to = to.map_or("unlimited".to_string(), |n| n.to_string());
        crate::log::info(
            "raised the open-file limit (soft RLIMIT_NOFILE) to the hard limit",
            &[("from", from), ("to", &to)],
        );
    }
}

fn raised_nofile() -> Option<(u64, Option<u64>)> {
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current?;
    if lim.maximum.is_some_and(|max| max <= before) {
        return None;
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    setrlimit(Resource::Nofile, raised).ok()?;
    Some((before, lim.maximum))
}

/// `e`, with the limit it hit named when it is one: the open-file limit
/// (EMFILE: soft and hard RLIMIT_NOFILE and how many are open) or the
/// system's (ENFILE: `fs.file-max`).
pub fn name_limit(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => named(e),
        _ => e,
    }
}

/// `e` (a thread or descriptor that could not be made) as text, with the
/// limit that refused it named, read now (see [`limit_text`]). An operator
/// reads it in a health row's reason, so it says which knob to turn.
pub fn explain(e: &io::Error) -> String {
    match limit_text(e) {
        Some(named) => format!("{e}: {named}"),
        None => e.to_string(),
    }
}

/// The text of a descriptor's error `e` at `path`, naming the limit when
/// it is one (see [`name_limit`]).
pub fn describe_at(path: &std::path::Path, e: io::Error) -> String {
    format!("{}: {}", path.display(), name_limit(e))
}

fn named(e: io::Error) -> io::Error {
    let Some(named) = limit_text(&e) else {
        return e;
    };
    io::Error::new(e.kind(), format!("{e}: {named}"))
}

/// The words for the limit behind `e`, if one is: for `EMFILE` the soft
/// and hard RLIMIT_NOFILE and how many are open; for `ENFILE` the system's
/// `fs.file-max`; for `EAGAIN` (pthread_create) the nearest pids cgroup's
/// `pids.max` (v2, or v1's `pids` controller) and RLIMIT_NPROC.
fn limit_text(e: &io::Error) -> Option<String> {
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
    match e.raw_os_error()? {
        libc::EMFILE => {
            let lim = getrlimit(Resource::Nofile);
            let open = std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count().saturating_sub(1).to_string())
                .unwrap_or_else(|_| "all".into());
            Some(format!(
                "the open-file limit ran out (RLIMIT_NOFILE soft {}, hard {}; {open} open): raise the hard limit (LimitNOFILE= in the unit, ulimit -Hn)",
                show(lim.current),
                show(lim.maximum)
            ))
        }
        libc::ENFILE => Some("the system-wide open-file limit ran out (fs.file-max)".into()),
        libc::EAGAIN => {
            let nproc = getrlimit(Resource::Nproc);
            let cgroup = pids_limit().map_or_else(
                || "no pids cgroup limit".to_string(),
                |(file, max, current)| {
                    format!("the cgroup's pids.max is {max} ({current} in use; {file})")
                },
            );
            Some(format!(
                "out of threads: {cgroup}, RLIMIT_NPROC soft {} (TasksMax= in the unit, or kernel.threads-max)",
                show(nproc.current)
            ))
        }
        _ => None,
    }
}

/// The nearest pids cgroup limit over this process: (`pids.max` file,
/// its value, `pids.current`), or None when no group up to the root has
/// one.
fn pids_limit() -> Option<(String, String, String)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // `ID:CONTROLLERS:PATH`; v1's pids controller first (a hybrid host's
    // v2 hierarchy may lack it), else the v2 line (`0::PATH`).
    let line = |pids: bool| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let v1 = controllers.split(',').any(|c| c == "pids");
            (if pids { v1 } else { controllers.is_empty() }).then(|| path.to_string())
        })
    };
    let (base, mut path) = match line(true) {
        Some(p) => ("/sys/fs/cgroup/pids", p),
        None => ("/sys/fs/cgroup", line(false)?),
    };
    loop {
        let dir = format!("{base}{}", path.trim_end_matches('/'));
        let file = format!("{dir}/pids.max");
        if let Ok(max) = std::fs::read_to_string(&file) {
            let max = max.trim();
            if max != "max" {
                let current = std::fs::read_to_string(format!("{dir}/pids.current"))
                    .map_or_else(|_| "?".to_string(), |c| c.trim().to_string());
                return Some((file, max.to_string(), current));
            }
        }
        let cut = path.trim_end_matches('/').rfind('/')?;
        path.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_named_and_other_errors_are_kept() {
        let e = name_limit(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(e.to_string().contains("RLIMIT_NOFILE soft"), "{e}");
        let e = name_limit(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
