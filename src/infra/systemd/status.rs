//! `STATUS=`: one human line for `systemctl status` (and `systemctl show -p
//! StatusText`), following the health table.
//!
//! A thread (`sd-status`, only when `$NOTIFY_SOCKET` is set) sleeps until
//! the applier applies an update, then sends the table's summary if it
//! changed. Datagrams are at least [`MIN_GAP`] apart: changes inside the
//! gap are coalesced into the one line sent when it ends, so a flapping
//! service cannot flood systemd. The first line goes out at start, before
//! every service has reported; the last one at stop ([`super::stopping`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::health::{Health, Snapshot, Status};

/// The shortest time between two `STATUS=` datagrams.
pub const MIN_GAP: Duration = Duration::from_secs(1);

/// How many unhealthy services the line names (the others are counted).
const NAMED: usize = 3;
/// How many characters of each reason the line keeps.
const REASON_CHARS: usize = 80;
/// How many characters of a failed reload's error the line keeps (it
/// starts with `FILE:LINE:COLUMN`).
const RELOAD_ERROR_CHARS: usize = 200;

/// The error of the last reload when it failed (the previous configuration
/// is still in force); `None` at start and after a reload that applied.
static RELOAD_FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// Records a reload's outcome for the status line (`Some(error)` when it
/// failed) and, under systemd, sends the line at once: the failure stays
/// on it, after the health summary, until a reload applies.
pub fn reload_outcome(health: &Health, error: Option<&str>) {
    *RELOAD_FAILURE.lock().unwrap_or_else(|p| p.into_inner()) =
        error.map(|e| cut(e, RELOAD_ERROR_CHARS));
    if super::notify_socket_set() && !super::is_stopping() {
        super::notify(&format!("STATUS={}", line(health)));
    }
}

/// The health summary, then the failed reload if the last one failed.
fn line(health: &Health) -> String {
    let mut line = summary(&health.snapshot());
    if let Some(e) = &*RELOAD_FAILURE.lock().unwrap_or_else(|p| p.into_inner()) {
        line += "; reload failed, running the previous configuration: ";
        line += e;
    }
    line
}

/// The one-line summary, e.g.
/// `5 services: 4 healthy, 1 unhealthy (web: permission denied)`;
/// counts in the order healthy, unhealthy, initializing, zero counts left
/// out. At most [`NAMED`] unhealthy services are named with their reason
/// (first line only, at most [`REASON_CHARS`] characters), the rest counted
/// as `+N more`.
pub fn summary(s: &Snapshot) -> String {
    let count = |st: Status| s.services.values().filter(|e| e.status == st).count();
    let n = s.services.len();
    let mut line = format!("{n} service{}", if n == 1 { "" } else { "s" });
    let mut parts = Vec::new();
    let healthy = count(Status::Healthy);
    if healthy > 0 {
        parts.push(format!("{healthy} healthy"));
    }
    let unhealthy: Vec<String> = s
        .services
        .iter()
        .filter(|(_, e)| e.status == Status::Unhealthy)
        .map(|(name, e)| match one_line(&e.reason) {
            r if r.is_empty() => name.clone(),
            r => format!("{name}: {r}"),
        })
        .collect();
    if !unhealthy.is_empty() {
        let mut named = unhealthy[..unhealthy.len().min(NAMED)].join("; ");
        if unhealthy.len() > NAMED {
            named += &format!("; +{} more", unhealthy.len() - NAMED);
        }
        parts.push(format!("{} unhealthy ({named})", unhealthy.len()));
    }
    let initializing = count(Status::Initializing);
    if initializing > 0 {
        parts.push(format!("{initializing} initializing"));
    }
    if !parts.is_empty() {
        line += ": ";
        line += &parts.join(", ");
    }
    line
}

/// The first line of `reason`, control characters as spaces, cut to
/// [`REASON_CHARS`] characters (with `…` when cut).
fn one_line(reason: &str) -> String {
    cut(reason, REASON_CHARS)
}

/// The first line of `text`, control characters as spaces, cut to `max`
/// characters (with `…` when cut).
fn cut(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("").trim();
    let mut out: String = first
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if first.chars().count() > max {
        out.push('…');
    }
    out
}

/// Starts the `sd-status` thread when `$NOTIFY_SOCKET` is set; it sends
/// its first line once `after` disconnects (the daemon's first apply: the
/// table is empty before it) and ends when `stop` disconnects. Without
/// `$NOTIFY_SOCKET` nothing is started and the table has no extra listener.
pub fn start(health: &Health, stop: &Receiver<()>, after: &Receiver<()>) -> Result<(), String> {
    if !super::notify_socket_set() {
        return Ok(());
    }
    // Capacity 1: a pending notice already says "look again".
    let (changed_tx, changed) = crossbeam_channel::bounded(1);
    // Held by the thread: the subscription ends with it.
    let subscription = health.on_change(move || {
        let _ = changed_tx.try_send(());
    });
    let (health, stop, after) = (health.clone(), stop.clone(), after.clone());
    crate::infra::threads::spawn("sd-status", move || {
        let _subscription = subscription;
        select! {
            recv(after) -> _ => {}
            recv(stop) -> _ => return,
        }
        run(&health, &changed, &stop)
    })
    .map(drop)
    .map_err(|e| format!("sd-status thread: {e}"))
}

fn run(health: &Health, changed: &Receiver<()>, stop: &Receiver<()>) {
    let mut last = String::new();
    let mut sent_at: Option<Instant> = None;
    loop {
        let line = line(health);
        if line != last {
            let wait = sent_at.map_or(Duration::ZERO, |t| MIN_GAP.saturating_sub(t.elapsed()));
            if !wait.is_zero() {
                // Coalesce: whatever the table says once the gap is over.
                select! {
                    recv(stop) -> _ => return,
                    default(wait) => continue,
                }
            }
            if super::is_stopping() {
                return;
            }
            super::notify(&format!("STATUS={line}"));
            last = line;
            sent_at = Some(Instant::now());
        }
        select! {
            recv(changed) -> r => if r.is_err() { return },
            recv(stop) -> _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Entry;
    use std::collections::BTreeMap;

    fn snap(rows: &[(&str, Status, &str)]) -> Snapshot {
        let services: BTreeMap<String, Entry> = rows
            .iter()
            .map(|(n, st, r)| {
                (
                    n.to_string(),
                    Entry {
                        kind: "identity",
                        status: *st,
                        reason: r.to_string(),
                        updated_at: None,
                        since: None,
                        instance: 1,
                    },
                )
            })
            .collect();
        Snapshot {
            status: Status::Unhealthy,
            services,
        }
    }

    #[test]
    fn a_failed_reload_stays_on_the_line_until_one_applies() {
        let m = std::sync::Arc::new(crate::metrics::Metrics::new());
        let h = Health::new([("a", "identity")], m);
        reload_outcome(&h, Some("/etc/tbot/tbot.yaml:3:1: unknown field `x`\nmore"));
        assert_eq!(
            line(&h),
            "1 service: 1 initializing; reload failed, running the previous \
             configuration: /etc/tbot/tbot.yaml:3:1: unknown field `x`"
        );
        reload_outcome(&h, None);
        assert_eq!(line(&h), "1 service: 1 initializing");
    }

    #[test]
    fn names_the_unhealthy_services_and_counts_the_rest() {
        use Status::*;
        let s = snap(&[
            ("a", Healthy, ""),
            ("b", Healthy, ""),
            ("c", Healthy, ""),
            ("d", Healthy, ""),
            ("web", Unhealthy, "permission denied"),
        ]);
        assert_eq!(
            summary(&s),
            "5 services: 4 healthy, 1 unhealthy (web: permission denied)"
        );
        let s = snap(&[("a", Initializing, ""), ("b", Healthy, "")]);
        assert_eq!(summary(&s), "2 services: 1 healthy, 1 initializing");
        let s = snap(&[("only", Initializing, "")]);
        assert_eq!(summary(&s), "1 service: 1 initializing");
        assert_eq!(summary(&snap(&[])), "0 services");
    }

    #[test]
    fn keeps_the_line_one_short_line() {
        use Status::*;
        let long = "x".repeat(200);
        let s = snap(&[
            ("a", Unhealthy, "first\nsecond"),
            ("b", Unhealthy, "tab\there"),
            ("c", Unhealthy, &long),
            ("d", Unhealthy, ""),
            ("e", Unhealthy, "e"),
        ]);
        let line = summary(&s);
        assert!(!line.contains('\n') && !line.contains('\t'), "{line}");
        assert!(line.starts_with("5 services: 5 unhealthy (a: first; b: tab here; c: xxxxxxxx"));
        assert!(line.ends_with("xxx…; +2 more)"), "{line}");
        assert!(line.chars().count() < 200, "{line}");
    }
}
