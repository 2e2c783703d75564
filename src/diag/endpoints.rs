//! The one table of diagnostics endpoints. It feeds the router
//! ([`super::routes`]), the 404 text, the `/debug/pprof/` index
//! ([`super::debug`]) and the front's view of each request (the row it
//! finds once, in `request_head.rs`: when it is answered, whether it is a probe's):
//! a new endpoint is one row here and
//! one arm in `routes::route` (a router test holds the arm to the row's
//! [`Answered`]).

/// Which endpoint a row is; the router's `match` names every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Livez,
    Readyz,
    ReadyzService,
    Wait,
    WaitService,
    Metrics,
    PprofIndex,
    Profile,
    Flamegraph,
    Threads,
    Cmdline,
    Status,
}

/// Where a row is listed for people to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// In the 404 text.
    NotFound,
    /// On the `/debug/pprof/` index page.
    PprofIndex,
}

/// When the serving loop answers a row's requests. The front reads it:
/// tiny_http writes the answers on a connection in order, so only
/// requests answered at once are pipelined on its kept connections (an
/// answer queued behind a later one would hold the serving loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// As the loop takes the request.
    AtOnce,
    /// Later, by the `diag-render` thread (`/metrics`, the thread list).
    Rendered,
    /// Its answer may take minutes (a `/wait`, a CPU profile): the front
    /// gives it a connection of its own and a longer response timeout.
    Slow,
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub kind: Kind,
    /// The path it answers. A `prefix` row answers every path that starts
    /// with it (`/readyz/` + a service name, possibly empty). A path that
    /// ends in `/` is answered without it too (`/debug/pprof`).
    pub path: &'static str,
    pub prefix: bool,
    /// Served in debug mode only (`-d`, `debug: true`); else 404.
    pub debug: bool,
    pub answered: Answered,
    /// How the 404 text and the pprof index show it.
    pub usage: &'static str,
    pub listed: Listed,
    /// One line for the pprof index.
    pub description: &'static str,
}

const fn row(
    kind: Kind,
    path: &'static str,
    prefix: bool,
    flags: (bool, Answered),
    usage: &'static str,
    listed: Listed,
    description: &'static str,
) -> Endpoint {
    Endpoint {
        kind,
        path,
        prefix,
        debug: flags.0,
        answered: flags.1,
        usage,
        listed,
        description,
    }
}

/// (debug-only, answered) for [`row`].
const PLAIN: (bool, Answered) = (false, Answered::AtOnce);
const SLOW: (bool, Answered) = (false, Answered::Slow);
const RENDERED: (bool, Answered) = (false, Answered::Rendered);
const DEBUG: (bool, Answered) = (true, Answered::AtOnce);
const DEBUG_SLOW: (bool, Answered) = (true, Answered::Slow);
const DEBUG_RENDERED: (bool, Answered) = (true, Answered::Rendered);

use Kind::*;
use Listed::{NotFound as N, PprofIndex as P};

/// Every endpoint, in the order the 404 text and the index list them.
#[rustfmt::skip]
pub static ENDPOINTS: &[Endpoint] = &[
    row(Livez, "/livez", false, PLAIN, "/livez", N,
        "200 OK while tbot runs."),
    row(Readyz, "/readyz", false, PLAIN, "/readyz", N,
        "Every service's health (JSON): 200 when all are healthy, else 503."),
    row(ReadyzService, "/readyz/", true, PLAIN, "/readyz/{service}", N,
        "One service's health (JSON); 404 for an unknown name."),
    row(Wait, "/wait", false, SLOW, "/wait", N,
        "/readyz once every service has reported (?timeout=, default 30s, at most 5m)."),
    row(WaitService, "/wait/", true, SLOW, "/wait/{service}", N,
        "/readyz/{service} once that service has reported (?timeout= as /wait)."),
    row(Metrics, "/metrics", false, RENDERED, "/metrics", N,
        "Prometheus text format 0.0.4, gzip-compressed when accepted."),
    row(PprofIndex, "/debug/pprof/", false, DEBUG, "/debug/pprof/ (debug mode)", N,
        "This index."),
    row(Profile, "/debug/pprof/profile", false, DEBUG_SLOW, "/debug/pprof/profile?seconds=30", P,
        "CPU profile in pprof protobuf format (for go tool pprof); seconds 1..=300, default 30."),
    row(Flamegraph, "/debug/pprof/flamegraph", false, DEBUG_SLOW, "/debug/pprof/flamegraph?seconds=30", P,
        "CPU profile rendered as an SVG flame graph; seconds 1..=300, default 30."),
    row(Threads, "/debug/pprof/threads", false, DEBUG_RENDERED, "/debug/pprof/threads", P,
        "Every OS thread of the process: id, name, state and CPU time (?format=json for JSON)."),
    row(Cmdline, "/debug/pprof/cmdline", false, DEBUG, "/debug/pprof/cmdline", P,
        "The command line of the process, arguments separated by NUL bytes."),
    row(Status, "/status", false, DEBUG, "/status (debug mode)", N,
        "What tbot status shows: each service's type, status, since when, reason and certificate expiry (JSON)."),
];

impl Endpoint {
    /// Whether this row is a probe's: `/livez`, `/readyz` or
    /// `/readyz/NAME`, the only requests the front serves in its probe room
    /// (see `front/room.rs`; the man page's LIMITS promises them room).
    pub fn probe(&self) -> bool {
        matches!(self.kind, Livez | Readyz | ReadyzService)
    }

    /// Whether this row answers `path` (no query).
    pub fn matches(&self, path: &str) -> bool {
        if self.prefix {
            path.starts_with(self.path)
        } else {
            path == self.path || self.path.strip_suffix('/') == Some(path)
        }
    }
}

/// The row that answers `path` (no query), debug-only rows included only
/// when `debug` is on.
pub fn find(path: &str, debug: bool) -> Option<&'static Endpoint> {
    ENDPOINTS
        .iter()
        .find(|e| (debug || !e.debug) && e.matches(path))
}

/// The place of row `e` in [`ENDPOINTS`] (how the front names a row to
/// the serving loop: `routes::Request::mark`). By its kind, which names
/// one row (a test holds it so), not by address.
pub fn index_of(e: &Endpoint) -> Option<usize> {
    ENDPOINTS.iter().position(|r| r.kind == e.kind)
}

/// The 404 answer's text: the listed endpoints, one line.
pub fn not_found_text() -> String {
    let mut text = String::from("404 page not found\nendpoints:");
    for e in ENDPOINTS.iter().filter(|e| e.listed == Listed::NotFound) {
        text.push(' ');
        text.push_str(e.usage);
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_each_path_is_answered_comes_from_the_table() {
        use Answered::*;
        for (path, want) in [
            ("/wait", Slow),
            ("/wait/a", Slow),
            ("/wait/", Slow),
            ("/debug/pprof/profile", Slow),
            ("/debug/pprof/flamegraph", Slow),
            ("/metrics", Rendered),
            ("/debug/pprof/threads", Rendered),
            ("/livez", AtOnce),
            ("/readyz", AtOnce),
            ("/readyz/wait", AtOnce),
            ("/waiting", AtOnce),
            ("/debug/pprof/", AtOnce),
            ("/debug/pprof", AtOnce),
            ("/nope", AtOnce),
        ] {
            let got = find(path, true).map_or(AtOnce, |e| e.answered);
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn probes_are_livez_and_readyz_only() {
        for path in ["/livez", "/readyz", "/readyz/", "/readyz/a"] {
            assert!(find(path, true).is_some_and(Endpoint::probe), "{path}");
        }
        for path in [
            "/nope",
            "/metrics",
            "/wait",
            "/debug/pprof/",
            "/livez/",
            "/readyzx",
        ] {
            assert!(!find(path, true).is_some_and(Endpoint::probe), "{path}");
        }
    }

    #[test]
    fn lookup_respects_debug_mode_and_trailing_slashes() {
        assert_eq!(find("/livez", false).map(|e| e.kind), Some(Livez));
        assert_eq!(
            find("/readyz/x", false).map(|e| e.kind),
            Some(ReadyzService)
        );
        assert_eq!(find("/readyz/", false).map(|e| e.kind), Some(ReadyzService));
        assert!(find("/livez/", false).is_none());
        assert!(find("/debug/pprof/", false).is_none());
        assert_eq!(find("/debug/pprof", true).map(|e| e.kind), Some(PprofIndex));
        assert_eq!(
            find("/debug/pprof/", true).map(|e| e.kind),
            Some(PprofIndex)
        );
        assert!(find("/debug/pprof/profile/", true).is_none());
    }

    #[test]
    fn not_found_text_lists_the_public_rows() {
        assert_eq!(
            not_found_text(),
            "404 page not found\nendpoints: /livez /readyz /readyz/{service} /wait /wait/{service} /metrics /debug/pprof/ (debug mode) /status (debug mode)\n"
        );
    }

    #[test]
    fn every_row_is_well_formed() {
        for (i, e) in ENDPOINTS.iter().enumerate() {
            assert_eq!(index_of(e), Some(i), "a kind names one row: {e:?}");
            assert!(e.path.starts_with('/'), "{e:?}");
            assert!(e.usage.starts_with(e.path.trim_end_matches('/')), "{e:?}");
            assert!(!e.description.is_empty(), "{e:?}");
            assert_eq!(
                e.listed == Listed::PprofIndex,
                e.debug && e.kind != PprofIndex && e.path.starts_with("/debug/pprof/")
            );
        }
    }
}
