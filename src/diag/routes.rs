//! What each diagnostics endpoint answers. Runs on the serving loop: every
//! function here returns at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::{Header, Method, Request, Response};

use crate::diag::{debug, gzip};
use crate::health::Health;
use crate::log;
use crate::metrics::Metrics;

/// A request method in log lines (as text).
impl crate::log::Field for Method {}

pub struct Ctx {
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// `/debug/pprof/` is served while on; a reload switches it.
    pub debug: Arc<std::sync::atomic::AtomicBool>,
}

/// A `/wait` request waiting for its services to report.
pub struct Parked {
    req: Request,
    service: Option<String>,
    pub deadline: Instant,
}

pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
pub const MAX_WAIT: Duration = Duration::from_secs(300);

const NOT_FOUND: &str = "404 page not found\nendpoints: /livez /readyz /readyz/{service} /wait /wait/{service} /metrics /debug/pprof/ (debug mode)\n";

struct Answer {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn json(status: u16, value: &impl serde::Serialize) -> Answer {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Answer {
                    status,
                    content_type: "application/json",
                    headers: Vec::new(),
                    body,
                }
            }
            Err(e) => Answer::text(500, &format!("encoding JSON: {e}\n")),
        }
    }

    fn send(self, req: Request) {
        // Always Content-Length, never chunked: every body is in memory, and the
        // front relays to clients of any HTTP version.
        let mut resp = Response::from_data(self.body)
            .with_status_code(self.status)
            .with_chunked_threshold(usize::MAX);
        for (name, value) in
            std::iter::once(("Content-Type", self.content_type.to_string())).chain(self.headers)
        {
            if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                resp.add_header(h);
            }
        }
        // The client may have gone; nothing to do about it.
        let _ = req.respond(resp);
    }
}

impl From<debug::Reply> for Answer {
    fn from(r: debug::Reply) -> Answer {
        Answer {
            status: r.status,
            content_type: r.content_type,
            headers: r.headers,
            body: r.body,
        }
    }
}

fn not_found_service(name: &str) -> Answer {
    Answer::json(
        404,
        &serde_json::json!({ "error": format!("Service named {name:?} not found.") }),
    )
}

/// `/readyz` or `/readyz/{name}` as of now.
fn readiness(health: &Health, service: Option<&str>) -> Answer {
    match service {
        None => {
            let snap = health.snapshot();
            Answer::json(snap.status.http_code(), &snap)
        }
        Some(name) => match health.service(name) {
            Some(entry) => Answer::json(entry.status.http_code(), &entry),
            None => not_found_service(name),
        },
    }
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
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
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

/// Answers `req`, or returns it parked (a `/wait` that must wait).
pub fn handle(ctx: &Ctx, req: Request) -> Option<Parked> {
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    // The front names the client (tiny_http only sees its Unix socket).
    let peer = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Tbot-Peer"))
        .map_or_else(String::new, |h| h.value.to_string());
    log::debug(
        "diagnostics request",
        &[("method", req.method()), ("path", &path), ("peer", &peer)],
    );

    if !matches!(req.method(), Method::Get | Method::Head) {
        let mut a = Answer::text(
            405,
            "405 method not allowed: the diagnostics endpoints take GET and HEAD\n",
        );
        a.headers.push(("Allow", "GET, HEAD".into()));
        a.send(req);
        return None;
    }

    let answer = match path {
        "/livez" => Answer::text(200, "OK"),
        "/readyz" => readiness(&ctx.health, None),
        "/metrics" => {
            metrics(ctx, req);
            return None;
        }
        "/wait" => return wait(ctx, req, None, query),
        _ if path.starts_with("/readyz/") || path.starts_with("/wait/") => {
            let (prefix, raw) = path[1..].split_once('/').unwrap_or(("", ""));
            match percent_decode(raw) {
                None => Answer::text(400, "400 bad percent-encoding in the service name\n"),
                Some(name) if prefix == "wait" => return wait(ctx, req, Some(name), query),
                Some(name) => readiness(&ctx.health, Some(&name)),
            }
        }
        _ if ctx.debug.load(std::sync::atomic::Ordering::Relaxed)
            && (path == "/debug/pprof" || path.starts_with("/debug/pprof/")) =>
        {
            match debug::route(&path["/debug/pprof".len()..], query) {
                debug::Action::Reply(r) => r.into(),
                debug::Action::Profile(job) => {
                    match debug::try_start_profile() {
                        None => debug::Reply::profile_busy().into(),
                        Some(slot) => {
                            // Sampling takes seconds: off the serving loop.
                            let spawned = crate::infra::threads::spawn("diag-profile", move || {
                                Answer::from(debug::run_profile(&job, slot)).send(req);
                            });
                            if let Err(e) = spawned {
                                log::error("cannot start the profiling thread", &[("error", &e)]);
                            }
                            return None;
                        }
                    }
                }
            }
        }
        _ => Answer::text(404, NOT_FOUND),
    };
    answer.send(req);
    None
}

/// `/metrics`: the text format, gzip-compressed when the client accepts it
/// (off the loop when large: see [`gzip`]); `Vary: Accept-Encoding` always.
fn metrics(ctx: &Ctx, req: Request) {
    let body = match ctx.metrics.render() {
        Ok(body) => body,
        Err(e) => return Answer::text(500, &format!("{e}\n")).send(req),
    };
    let gzip_ok = req
        .headers()
        .iter()
        .any(|h| h.field.equiv("Accept-Encoding") && gzip::accepted(h.value.as_str()));
    let a = Answer {
        status: 200,
        content_type: crate::metrics::CONTENT_TYPE,
        headers: vec![("Vary", "Accept-Encoding".into())],
        body,
    };
    if !gzip_ok {
        return a.send(req);
    }
    if a.body.len() <= gzip::INLINE_MAX_BYTES {
        return compressed(a).send(req);
    }
    let Some(slot) = gzip::Slot::try_take() else {
        return a.send(req);
    };
    // The request comes back if the thread cannot start.
    let job = Arc::new(std::sync::Mutex::new(Some((a, req))));
    let theirs = job.clone();
    let spawned = crate::infra::threads::spawn("diag-gzip", move || {
        let _slot = slot;
        let taken = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((a, req)) = taken {
            compressed(a).send(req);
        }
    });
    if let Err(e) = spawned {
        log::warn(
            "cannot start a compression thread; answering uncompressed",
            &[("error", &e)],
        );
        if let Some((a, req)) = job.lock().unwrap_or_else(|p| p.into_inner()).take() {
            a.send(req);
        }
    }
}

/// `a` with its body gzip-compressed (unchanged if compression fails).
fn compressed(mut a: Answer) -> Answer {
    if let Ok(gz) = gzip::compress(&a.body) {
        a.body = gz;
        a.headers.push(("Content-Encoding", "gzip".into()));
    }
    a
}

fn wait(ctx: &Ctx, req: Request, service: Option<String>, query: &str) -> Option<Parked> {
    let timeout = match wait_timeout(query) {
        Ok(t) => t,
        Err(e) => {
            Answer::text(400, &format!("400 {e}\n")).send(req);
            return None;
        }
    };
    if let Some(name) = &service {
        if ctx.health.service(name).is_none() {
            not_found_service(name).send(req);
            return None;
        }
    }
    let parked = Parked {
        req,
        service,
        deadline: Instant::now() + timeout,
    };
    answer_ready(ctx, vec![parked]).pop()
}

/// Answers a parked request with the state as of now.
pub fn answer_now(ctx: &Ctx, p: Parked) {
    readiness(&ctx.health, p.service.as_deref()).send(p.req);
}

/// Answers the parked requests whose services have all reported, or whose
/// time is up; returns the rest.
pub fn answer_ready(ctx: &Ctx, parked: Vec<Parked>) -> Vec<Parked> {
    if parked.is_empty() {
        return parked;
    }
    let snap = ctx.health.snapshot();
    let now = Instant::now();
    let mut still = Vec::with_capacity(parked.len());
    for p in parked {
        let reported = match &p.service {
            None => snap.all_reported(),
            Some(name) => snap.services.get(name).is_some_and(|e| e.reported()),
        };
        if reported || now >= p.deadline {
            answer_now(ctx, p);
        } else {
            still.push(p);
        }
    }
    still
}

#[cfg(test)]
mod tests {
    use super::*;

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
