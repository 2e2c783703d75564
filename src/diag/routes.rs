//! The router: which answer each diagnostics request gets. Pure: no I/O,
//! no HTTP library. [`route`] reads the endpoint table
//! ([`super::endpoints`]) and the health table, and returns an [`Action`]
//! for the caller ([`super::http`]) to carry out on the serving loop:
//! answer now, park a `/wait`, hand a page to the renderer, or start a
//! CPU profile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::endpoints::{self, Endpoint, Kind};
use super::render::Job;
use super::response::Response;
use super::{debug, gzip};
use crate::health::{Entry, Health, Snapshot};
use crate::metrics::Metrics;

/// What the router reads besides the request.
pub struct Ctx {
    pub health: Health,
    /// For `/status` (certificate expiry).
    pub metrics: Arc<Metrics>,
    /// `/debug/pprof/` is served while on; a reload switches it.
    pub debug: Arc<AtomicBool>,
}

/// What the router needs of a request, as the front decided it: the
/// front judges the client's head once (`parse_head` in `request_head.rs`, which
/// calls this module: not the other way), finds the endpoint row, and
/// hands its decision to the serving loop in the one header of the
/// canonical head it writes for tiny_http ([`Request::mark`],
/// [`MARK_HEADER`]). The router reads that decision and parses nothing.
/// Its method is GET or HEAD, the same answer for both (`Response::wire`
/// drops a HEAD's body): the front refuses every other method with 405
/// and `Allow` before any routing.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The row that answers the path whatever the debug mode (debug-only
    /// rows included: the router applies the mode); None: no row (404).
    pub endpoint: Option<&'static Endpoint>,
    /// The path, still percent-encoded, without the query.
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// The client accepts gzip (its `Accept-Encoding`, judged by the
    /// front with [`gzip::accepted`]).
    pub gzip: bool,
    /// It came over the local debug socket (the front says so): the debug
    /// endpoints are served whatever the mode.
    pub local: bool,
}

/// The header of the canonical head that carries the front's decision to
/// the serving loop: `<row index or -> <path length> [gzip] [local]`,
/// space-separated (the path length splits the target from its query
/// without a search). Only the front writes it: no client header is passed
/// on to tiny_http.
pub const MARK_HEADER: &str = "X-Tbot-Route";

impl<'a> Request<'a> {
    /// The front's decision for a client's `target` (path and optional
    /// `?query`, origin-form, clean): the row is found here, once.
    pub fn decide(target: &'a str, accept_encoding: Option<&str>, local: bool) -> Request<'a> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            endpoint: endpoints::find(path, true),
            path,
            query,
            gzip: accept_encoding.is_some_and(gzip::accepted),
            local,
        }
    }

    /// The value of [`MARK_HEADER`] for this decision.
    pub fn mark(&self) -> String {
        let mut out = match self.endpoint.and_then(endpoints::index_of) {
            Some(i) => i.to_string(),
            None => "-".to_string(),
        };
        out.push(' ');
        out.push_str(&self.path.len().to_string());
        if self.gzip {
            out.push_str(" gzip");
        }
        if self.local {
            out.push_str(" local");
        }
        out
    }

    /// The decision the front wrote for `target` as `mark`; None for a
    /// request that does not carry one (it was not sent by the front).
    pub fn marked(target: &'a str, mark: Option<&str>) -> Option<Request<'a>> {
        let mut words = mark?.split(' ');
        let endpoint = match words.next()? {
            "-" => None,
            i => Some(endpoints::ENDPOINTS.get(i.parse::<usize>().ok()?)?),
        };
        let path_len = words.next()?.parse::<usize>().ok()?;
        let (path, rest) = (target.get(..path_len)?, target.get(path_len..)?);
        let query = match rest.strip_prefix('?') {
            Some(query) => query,
            None if rest.is_empty() => "",
            None => return None,
        };
        let mut req = Request {
            endpoint,
            path,
            query,
            gzip: false,
            local: false,
        };
        for w in words {
            match w {
                "gzip" => req.gzip = true,
                "local" => req.local = true,
                _ => return None,
            }
        }
        Some(req)
    }
}

/// What the caller does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer now.
    Respond(Response),
    /// A `/wait`: answer with [`readiness`] once `service` (every service
    /// when `None`) has reported, or after `timeout`.
    Park {
        service: Option<String>,
        timeout: Duration,
    },
    /// Hand to the renderer thread (see [`super::render`]).
    Render(Job),
    /// Start a CPU profile on its own thread, if none runs (else 409).
    Profile(debug::ProfileJob),
}

/// How long a `/wait` without `?timeout=` waits.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `?timeout=` a `/wait` takes; longer is 400.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The answer to `req`.
pub fn route(ctx: &Ctx, req: &Request) -> Action {
    let debug = ctx.debug.load(Ordering::Relaxed) || req.local;
    let Some(e) = req.endpoint.filter(|e| debug || !e.debug) else {
        return Action::Respond(if debug && req.path.starts_with("/debug/pprof/") {
            debug::not_found()
        } else {
            Response::text(404, &endpoints::not_found_text())
        });
    };
    let param = |key| query_param(req.query, key);
    match e.kind {
        Kind::Livez => Action::Respond(Response::text(200, "OK")),
        Kind::Readyz => Action::Respond(readiness(&ctx.health, None)),
        Kind::Wait => wait(ctx, None, req.query),
        Kind::ReadyzService | Kind::WaitService => match service_name(e, req.path) {
            Err(r) => Action::Respond(r),
            Ok(name) if e.kind == Kind::WaitService => wait(ctx, Some(name), req.query),
            Ok(name) => Action::Respond(readiness(&ctx.health, Some(&name))),
        },
        Kind::Metrics => Action::Render(Job::Metrics { gzip: req.gzip }),
        Kind::PprofIndex => Action::Respond(debug::index()),
        Kind::Profile | Kind::Flamegraph => {
            let kind = if e.kind == Kind::Profile {
                debug::ProfileKind::Pprof
            } else {
                debug::ProfileKind::Flamegraph
            };
            debug::profile_job(param("seconds"), kind).map_or_else(Action::Respond, Action::Profile)
        }
        Kind::Threads => match debug::threads_format(param("format")) {
            Ok(json) => Action::Render(Job::Threads { json }),
            Err(r) => Action::Respond(r),
        },
        Kind::Cmdline => Action::Respond(debug::cmdline()),
        Kind::Status => Action::Respond(status(ctx)),
    }
}

/// `/status`: every service's row with what `tbot status` shows beyond
/// `/readyz`: its type, since when it has had its status, and when the
/// certificate it last wrote expires (identity outputs). The code is
/// `/readyz`'s. Times are RFC 3339, null when not known.
fn status(ctx: &Ctx) -> Response {
    use crate::infra::timefmt::rfc3339_millis;
    use std::time::{SystemTime, UNIX_EPOCH};
    let snap = ctx.health.snapshot();
    let now = SystemTime::now();
    let unix_now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let time = |t: Option<SystemTime>| t.map(rfc3339_millis);
    let services: Vec<serde_json::Value> = snap
        .services
        .iter()
        .map(|(name, e)| {
            let expiry = ctx.metrics.certificate_expiry(name);
            let for_seconds = e
                .since
                .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
            serde_json::json!({
                "name": name,
                "type": e.kind,
                "status": e.status,
                "reason": e.reason,
                "since": time(e.since),
                "for_seconds": for_seconds,
                "updated_at": time(e.updated_at),
                "certificate_expires_at": expiry
                    .map(|s| rfc3339_millis(UNIX_EPOCH + Duration::from_secs_f64(s.max(0.0)))),
                // Negative once expired.
                "certificate_remaining_seconds": expiry.map(|s| (s - unix_now).floor() as i64),
            })
        })
        .collect();
    let body = serde_json::json!({
        "status": snap.status,
        "now": rfc3339_millis(now),
        "services": services,
    });
    Response::json(snap.status.http_code(), &body)
}

/// The decoded service name after a prefix row's path, or the 400.
fn service_name(e: &Endpoint, path: &str) -> Result<String, Response> {
    percent_decode(&path[e.path.len()..])
        .ok_or_else(|| Response::text(400, "400 bad percent-encoding in the service name\n"))
}

/// 404 for a service name the table does not hold, as upstream words it.
fn not_found_service(name: &str) -> Response {
    Response::json(
        404,
        &serde_json::json!({ "error": format!("Service named {name:?} not found.") }),
    )
}

/// `/readyz` or `/readyz/{name}` as of now; the code from
/// [`crate::health::Status::http_code`].
pub fn readiness(health: &Health, service: Option<&str>) -> Response {
    match service {
        None => readiness_of(&health.snapshot(), None),
        // One row: not a copy of the whole table.
        Some(name) => entry_answer(name, health.service(name).as_ref()),
    }
}

/// The same answer as [`readiness`], from a snapshot already taken (the
/// parked `/wait` requests released in one pass share one).
pub fn readiness_of(snap: &Snapshot, service: Option<&str>) -> Response {
    match service {
        None => Response::json(snap.status.http_code(), snap),
        Some(name) => entry_answer(name, snap.services.get(name)),
    }
}

/// `/readyz/{name}`'s answer for the row found under `name`, if any.
fn entry_answer(name: &str, entry: Option<&Entry>) -> Response {
    match entry {
        Some(entry) => Response::json(entry.status.http_code(), entry),
        None => not_found_service(name),
    }
}

fn wait(ctx: &Ctx, service: Option<String>, query: &str) -> Action {
    let timeout = match wait_timeout(query) {
        Ok(t) => t,
        Err(e) => return Action::Respond(Response::text(400, &format!("400 {e}\n"))),
    };
    if let Some(name) = &service {
        if ctx.health.service(name).is_none() {
            return Action::Respond(not_found_service(name));
        }
    }
    Action::Park { service, timeout }
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The raw value of `key` in a query string (`""` for a bare `key`).
pub(crate) fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

/// `?timeout=` for /wait: a Go duration or whole seconds, up to MAX_WAIT.
fn wait_timeout(query: &str) -> Result<Duration, String> {
    let Some(v) = query_param(query, "timeout") else {
        return Ok(DEFAULT_WAIT);
    };
    let v = percent_decode(v).ok_or("bad percent-encoding in timeout")?;
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => crate::infra::duration::parse(&v)?,
    };
    if d > MAX_WAIT {
        return Err(format!(
            "timeout {v:?} is too long: at most {}",
            crate::infra::duration::format(MAX_WAIT)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Applier, Status, Update};
    use crate::metrics::Metrics;
    use debug::{ProfileJob, ProfileKind};
    use endpoints::Answered;

    /// Services `a` (reported healthy) and `b` (initializing); debug as
    /// given.
    fn ctx(debug: bool) -> Ctx {
        let metrics = Arc::new(Metrics::new());
        let health = Health::new([("a", "identity"), ("b", "heartbeat")], metrics.clone());
        let (tx, updates) = crossbeam_channel::unbounded();
        tx.send(Update {
            service: "a".into(),
            instance: health.instance("a").unwrap(),
            status: Status::Healthy,
            reason: String::new(),
        })
        .unwrap();
        drop(tx);
        Applier {
            health: health.clone(),
            updates,
        }
        .run();
        Ctx {
            health,
            metrics,
            debug: Arc::new(AtomicBool::new(debug)),
        }
    }

    fn get(ctx: &Ctx, target: &str) -> Action {
        route(ctx, &Request::decide(target, None, false))
    }

    #[test]
    fn readiness_from_a_snapshot_is_the_same_answer() {
        let c = ctx(false);
        let snap = c.health.snapshot();
        for service in [None, Some("a"), Some("b"), Some("nope")] {
            let from_snap = readiness_of(&snap, service);
            assert_eq!(from_snap, readiness(&c.health, service), "{service:?}");
            assert!(!from_snap.body.is_empty());
        }
        assert_eq!(readiness_of(&snap, Some("nope")).status, 404);
    }

    /// The answer, which must be immediate.
    fn respond(action: Action) -> Response {
        match action {
            Action::Respond(r) => r,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn body(r: &Response) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    fn json(r: &Response) -> serde_json::Value {
        assert_eq!(r.content_type, "application/json");
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn livez_and_readyz() {
        let c = ctx(false);
        let r = respond(get(&c, "/livez"));
        assert_eq!((r.status, body(&r).as_str()), (200, "OK"));
        let r = respond(get(&c, "/livez?verbose"));
        assert_eq!(r.status, 200, "a query changes nothing");

        let r = respond(get(&c, "/readyz"));
        assert_eq!(r.status, 503, "b is initializing");
        let j = json(&r);
        assert_eq!(j["status"], "unhealthy");
        assert_eq!(j["services"]["a"]["status"], "healthy");
        assert_eq!(j["services"]["b"]["status"], "initializing");

        let r = respond(get(&c, "/readyz/a"));
        assert_eq!(
            (r.status, json(&r)["status"].clone()),
            (200, "healthy".into())
        );
        let r = respond(get(&c, "/readyz/%62"));
        assert_eq!(
            (r.status, json(&r)["status"].clone()),
            (503, "initializing".into())
        );
    }

    #[test]
    fn unknown_service_and_bad_escapes() {
        let c = ctx(false);
        for target in ["/readyz/nope", "/wait/nope", "/wait/nope?timeout=1s"] {
            let r = respond(get(&c, target));
            assert_eq!(r.status, 404, "{target}");
            assert_eq!(
                json(&r),
                serde_json::json!({"error": "Service named \"nope\" not found."})
            );
        }
        let r = respond(get(&c, "/readyz/"));
        assert_eq!(json(&r)["error"], "Service named \"\" not found.");
        for target in ["/readyz/%zz", "/wait/%ff", "/readyz/a%"] {
            let r = respond(get(&c, target));
            assert_eq!(r.status, 400, "{target}");
            assert!(body(&r).contains("percent-encoding"), "{target}");
        }
    }

    #[test]
    fn wait_parks_with_its_timeout_or_is_400() {
        let c = ctx(false);
        let park = |service: Option<&str>, secs: f64| Action::Park {
            service: service.map(str::to_string),
            timeout: Duration::from_secs_f64(secs),
        };
        assert_eq!(get(&c, "/wait"), park(None, 30.0));
        assert_eq!(get(&c, "/wait?timeout=5"), park(None, 5.0));
        assert_eq!(get(&c, "/wait/b?x=1&timeout=1500ms"), park(Some("b"), 1.5));
        assert_eq!(get(&c, "/wait/a?timeout=5m"), park(Some("a"), 300.0));
        for bad in ["timeout=301s", "timeout=soon", "timeout=%zz", "timeout="] {
            let r = respond(get(&c, &format!("/wait?{bad}")));
            assert_eq!(r.status, 400, "{bad}");
            assert!(body(&r).starts_with("400 "), "{bad}: {}", body(&r));
        }
    }

    #[test]
    fn metrics_goes_to_the_renderer_with_gzip_as_accepted() {
        let c = ctx(false);
        let metrics = |ae| route(&c, &Request::decide("/metrics", ae, false));
        assert_eq!(metrics(None), Action::Render(Job::Metrics { gzip: false }));
        assert_eq!(
            metrics(Some("gzip, deflate")),
            Action::Render(Job::Metrics { gzip: true })
        );
        assert_eq!(
            metrics(Some("gzip;q=0")),
            Action::Render(Job::Metrics { gzip: false })
        );
    }

    #[test]
    fn not_found_text_comes_from_the_table() {
        let c = ctx(false);
        for target in [
            "/nope",
            "/",
            "/livez/",
            "/readyz2",
            "/metrics/x",
            "/%6Civez",
        ] {
            let r = respond(get(&c, target));
            assert_eq!(r.status, 404, "{target}");
            assert_eq!(body(&r), endpoints::not_found_text(), "{target}");
        }
        let text = endpoints::not_found_text();
        for e in endpoints::ENDPOINTS.iter().filter(|e| !e.debug) {
            assert!(text.contains(e.usage), "{} missing from {text}", e.usage);
        }
    }

    /// The front pipelines requests by the table's `answered` (see
    /// `endpoints::Answered`): the router must act as the row says, or a
    /// page answered later would have requests queued behind it.
    #[test]
    fn every_row_is_routed_as_its_answered_says() {
        let c = ctx(true);
        for e in endpoints::ENDPOINTS {
            let mut target = e.path.to_string();
            if e.prefix {
                target.push('a');
            }
            if matches!(e.kind, Kind::Profile | Kind::Flamegraph) {
                target.push_str("?seconds=1");
            }
            let got = match get(&c, &target) {
                Action::Respond(_) => Answered::AtOnce,
                Action::Render(_) => Answered::Rendered,
                Action::Park { .. } | Action::Profile(_) => Answered::Slow,
            };
            assert_eq!(got, e.answered, "{target}");
        }
    }

    #[test]
    fn debug_pages_only_in_debug_mode() {
        let off = ctx(false);
        let on = ctx(true);
        let debug_targets = [
            "/debug/pprof",
            "/debug/pprof/",
            "/debug/pprof/profile?seconds=1",
            "/debug/pprof/flamegraph",
            "/debug/pprof/threads",
            "/debug/pprof/cmdline",
        ];
        for target in debug_targets {
            let r = respond(get(&off, target));
            assert_eq!(r.status, 404, "{target}");
            assert_eq!(body(&r), endpoints::not_found_text());
        }
        for target in ["/debug/pprof", "/debug/pprof/"] {
            let r = respond(get(&on, target));
            assert_eq!(r.status, 200);
            assert!(r.content_type.starts_with("text/html"));
        }
        let r = respond(get(&on, "/debug/pprof/cmdline"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(
            get(&on, "/debug/pprof/threads"),
            Action::Render(Job::Threads { json: false })
        );
        assert_eq!(
            get(&on, "/debug/pprof/threads?format=json"),
            Action::Render(Job::Threads { json: true })
        );
        assert_eq!(
            respond(get(&on, "/debug/pprof/threads?format=xml")).status,
            400
        );
        for target in [
            "/debug/pprof/nope",
            "/debug/pprof/profile/",
            "/debug/pprof//",
            "/debug/pprof/threads/x",
        ] {
            let r = respond(get(&on, target));
            assert_eq!(r.status, 404, "{target}");
            assert!(body(&r).contains("see /debug/pprof/"), "{target}");
        }
        // A reload switches it for the next request.
        on.debug.store(false, Ordering::Relaxed);
        assert_eq!(respond(get(&on, "/debug/pprof/")).status, 404);
    }

    #[test]
    fn profile_seconds_default_and_bounds() {
        let c = ctx(true);
        for (query, want) in [
            ("", 30),
            ("debug=1", 30),
            ("seconds=1", 1),
            ("seconds=300", 300),
            ("seconds=007", 7),
            ("foo=bar&seconds=5", 5),
            ("seconds=5&seconds=abc", 5),
        ] {
            assert_eq!(
                get(&c, &format!("/debug/pprof/profile?{query}")),
                Action::Profile(ProfileJob {
                    seconds: want,
                    kind: ProfileKind::Pprof
                }),
                "query {query:?}"
            );
        }
        assert_eq!(
            get(&c, "/debug/pprof/flamegraph?seconds=2"),
            Action::Profile(ProfileJob {
                seconds: 2,
                kind: ProfileKind::Flamegraph
            })
        );
    }

    #[test]
    fn profile_seconds_invalid_forms_are_400() {
        let c = ctx(true);
        for query in [
            "seconds=0",
            "seconds=301",
            "seconds=-1",
            "seconds=abc",
            "seconds=1.5",
            "seconds=",
            "seconds",
            "seconds=+5",
            "seconds= 5",
            "seconds=99999999999999999999999",
        ] {
            for path in ["/debug/pprof/profile", "/debug/pprof/flamegraph"] {
                let r = respond(get(&c, &format!("{path}?{query}")));
                assert_eq!(r.status, 400, "{path}?{query}");
                assert!(r.content_type.starts_with("text/plain"));
                let text = body(&r);
                assert!(text.contains("1 to 300"), "{text}");
                assert_eq!(text.lines().count(), 1, "{text}");
            }
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("my%2Dservice").as_deref(),
            Some("my-service")
        );
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            percent_decode("%+1"),
            None,
            "from_str_radix takes a sign; a URL does not"
        );
    }

    #[test]
    fn wait_timeouts() {
        assert_eq!(wait_timeout(""), Ok(DEFAULT_WAIT));
        assert_eq!(wait_timeout("timeout=5"), Ok(Duration::from_secs(5)));
        assert_eq!(
            wait_timeout("x=1&timeout=1500ms"),
            Ok(Duration::from_millis(1500))
        );
        assert!(wait_timeout("timeout=301s").is_err());
        assert!(wait_timeout("timeout=soon").is_err());
    }
}
