//! tiny_http plumbing, and nothing else: a `tiny_http::Request` read into
//! what the router needs (the front's decision, [`routes::Request::marked`]), the router's [`Action`]
//! carried out, and a [`Response`] written back. The serving loop
//! (`mod.rs`) calls [`handle`] for each request and keeps the parked
//! `/wait` requests ([`Parked`]).

use std::io::Write;
use std::time::{Instant, SystemTime};

use tiny_http::Method;

use super::debug;
use super::render::Renderer;
use super::response::Response;
use super::routes::{self, Action, Ctx};
use crate::log;

/// A request method in log lines (as text).
impl crate::log::Field for Method {}

/// Writes `resp` as the answer to `req`, as [`Response::wire`] makes it,
/// through tiny_http's writer for the request (`Request::into_writer`: the
/// answers on one connection still go out in order). `Content-Length`
/// (but for 1xx, 204 and 304, which have no body), never chunked: every
/// body is in memory, and the front relays to clients of any HTTP version.
///
/// Not `Request::respond`: for each answer, that builds tiny_http `Header`s
/// (two strings each), formats a `Date`, and writes the head in about 25
/// small writes, each taking a lock. This is one buffer and one write, or
/// two for a body over [`INLINE_BODY_BYTES`] (not copied).
pub fn send(resp: Response, req: tiny_http::Request) {
    let (mut head, body) = resp.wire(*req.method() == Method::Head, SystemTime::now());
    let mut w = req.into_writer();
    let written = if body.len() <= INLINE_BODY_BYTES {
        head.extend_from_slice(&body);
        w.write_all(&head)
    } else {
        w.write_all(&head).and_then(|()| w.write_all(&body))
    };
    // The client may have gone; nothing to do about it.
    let _ = written.and_then(|()| w.flush());
}

/// Bodies up to this size are copied behind their head and go in one write.
const INLINE_BODY_BYTES: usize = 16 * 1024;

/// The value of header `name` (ASCII case ignored), if present.
fn header<'r>(req: &'r tiny_http::Request, name: &'static str) -> Option<&'r str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// A `/wait` request waiting for its services to report.
pub struct Parked {
    req: tiny_http::Request,
    service: Option<String>,
    pub deadline: Instant,
}

/// Routes `req` and carries out the answer; returns it parked if it is a
/// `/wait` that must wait.
pub fn handle(ctx: &Ctx, renderer: &Renderer, req: tiny_http::Request) -> Option<Parked> {
    let action = {
        let url = req.url();
        let Some(r) = routes::Request::marked(url, header(&req, routes::MARK_HEADER)) else {
            // Only the front writes to tiny_http's private socket, and it
            // marks every request: this one it did not write.
            send(Response::text(400, "not a request from the front"), req);
            return None;
        };
        // The front names the client (tiny_http only sees its Unix socket).
        if log::debug_enabled() {
            log::debug(
                "diagnostics request",
                &[
                    ("method", req.method()),
                    ("path", &r.path),
                    ("peer", &header(&req, "X-Tbot-Peer").unwrap_or_default()),
                ],
            );
        }
        routes::route(ctx, &r)
    };
    match action {
        Action::Respond(resp) => send(resp, req),
        Action::Park { service, timeout } => {
            let parked = Parked {
                req,
                service,
                deadline: Instant::now() + timeout,
            };
            return answer_ready(ctx, vec![parked]).pop();
        }
        Action::Render(job) => renderer.submit(job, Box::new(move |resp| send(resp, req))),
        Action::Profile(job) => profile(job, req),
    }
    None
}

/// Starts a CPU profile on a `diag-profile` thread (sampling takes
/// seconds), or answers 409 when one runs already.
fn profile(job: debug::ProfileJob, req: tiny_http::Request) {
    let Some(slot) = debug::try_start_profile() else {
        return send(debug::profile_busy(), req);
    };
    // A thread that cannot start drops the request: tiny_http answers 500.
    let spawned = crate::infra::threads::spawn("diag-profile", move || {
        send(debug::run_profile(&job, slot), req);
    });
    if let Err(e) = spawned {
        log::error("cannot start the profiling thread", &[("error", &e)]);
    }
}

/// Answers a parked request with the state as of now.
pub fn answer_now(ctx: &Ctx, p: Parked) {
    send(routes::readiness(&ctx.health, p.service.as_deref()), p.req);
}

/// Answers the parked requests whose services have all reported, or whose
/// time is up; returns the rest. One snapshot of the table serves them
/// all, and the overall answer is encoded once for every request that
/// waits on all services.
pub fn answer_ready(ctx: &Ctx, parked: Vec<Parked>) -> Vec<Parked> {
    if parked.is_empty() {
        return parked;
    }
    let snap = ctx.health.snapshot();
    let now = Instant::now();
    let mut overall: Option<Response> = None;
    let mut still = Vec::with_capacity(parked.len());
    for p in parked {
        let reported = match &p.service {
            None => snap.all_reported(),
            Some(name) => snap.services.get(name).is_some_and(|e| e.reported()),
        };
        if reported || now >= p.deadline {
            let resp = match p.service.as_deref() {
                None => overall
                    .get_or_insert_with(|| routes::readiness_of(&snap, None))
                    .clone(),
                one => routes::readiness_of(&snap, one),
            };
            send(resp, p.req);
        } else {
            still.push(p);
        }
    }
    still
}
