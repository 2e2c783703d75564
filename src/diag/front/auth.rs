//! Who may ask: the web configuration's TLS, client certificates and basic
//! auth as the front applies them ([`Security`]), and bcrypt checks on a
//! thread of their own ([`Checker`]).
//!
//! As exporter-toolkit (`web/handler.go`): with `basic_auth_users`, every
//! request needs `Authorization: Basic` for one of them, checked with
//! bcrypt, or it gets 401 with `WWW-Authenticate: Basic`; an unknown user
//! costs a bcrypt check as a known one does; a successful check is cached
//! (here: SHA-256 of user, hash and password, at most [`CACHE_ENTRIES`]),
//! so a scrape pays tens of milliseconds once, not every time. Unlike
//! exporter-toolkit, failed checks are not cached (each costs an attacker
//! a bcrypt too), and a check never runs on the front's thread: one bcrypt
//! (about 50 ms at cost 10) would stall every connection. `diag-auth` runs
//! them one at a time, as exporter-toolkit's mutex does, from a bounded
//! queue ([`MAX_PENDING`]; past it, 503), and the connection waits in
//! `State::Auth` meanwhile, bounded by the response timeout.
//!
//! `diag_unauthenticated_paths` (exact paths, for the kubelet's probes)
//! need neither basic auth nor a client certificate. With
//! `RequireAndVerifyClientCert` and such paths, the certificate is asked
//! for at the handshake but required per request (403 without one); without
//! such paths, the handshake itself fails without one, as in Go.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use rustix::event::epoll::EventFlags;

use super::conn::How;
use super::tls::TlsSource;
use super::{Front, State, Then};
use crate::config::{ClientAuth, WebConfig};
use crate::diag::request_head::simple_response;
use crate::log::{self, once_a_second};

/// Successful checks remembered (exporter-toolkit keeps 100).
pub const CACHE_ENTRIES: usize = 100;
/// bcrypt checks queued for `diag-auth` at most.
pub const MAX_PENDING: usize = 32;

/// The hash an unknown user's password is checked against, so that
/// unknown and known users take as long (exporter-toolkit's own).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// The web configuration as the front applies it.
pub struct Security {
    /// None: plain HTTP.
    pub(crate) tls: Option<Mutex<TlsSource>>,
    /// User → bcrypt hash; empty: no basic auth.
    users: BTreeMap<String, String>,
    /// A verified client certificate is required per request.
    cert_per_request: bool,
    /// Paths that need no auth.
    open_paths: Vec<String>,
    /// SHA-256 digests of (user, hash, password) that checked out.
    cache: Mutex<HashSet<[u8; 32]>>,
}

/// The security in force; a reload swaps it, new connections and requests
/// see the new one.
pub type SecurityHandle = Arc<Mutex<Arc<Security>>>;

impl Security {
    /// Whether basic auth is on (passwords are checked, on `diag-auth`).
    pub(super) fn checks_passwords(&self) -> bool {
        !self.users.is_empty()
    }

    /// Plain HTTP, no auth.
    pub fn none() -> Security {
        Security {
            tls: None,
            users: BTreeMap::new(),
            cert_per_request: false,
            open_paths: Vec::new(),
            cache: Mutex::new(HashSet::new()),
        }
    }

    /// From the web configuration (None: plain HTTP, no auth) and the paths
    /// that need no auth. Reads the TLS files: errors name the file.
    pub fn build(web: Option<&WebConfig>, open_paths: &[String]) -> Result<Security, String> {
        let Some(web) = web else {
            return Ok(Security::none());
        };
        let require = web
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth == ClientAuth::RequireAndVerifyClientCert);
        let per_request = require && !open_paths.is_empty();
        let tls = match &web.tls {
            Some(t) => Some(Mutex::new(
                TlsSource::load(t, per_request).map_err(|e| format!("{}: {e}", web.file))?,
            )),
            None => None,
        };
        Ok(Security {
            tls,
            users: web.basic_auth_users.clone(),
            cert_per_request: per_request,
            open_paths: open_paths.to_vec(),
            cache: Mutex::new(HashSet::new()),
        })
    }

    /// TLS with basic auth or a required client certificate: what makes a
    /// non-loopback address safe enough not to warn about.
    pub fn secured(&self, web: Option<&WebConfig>) -> bool {
        let cert = web
            .and_then(|w| w.tls.as_ref())
            .is_some_and(|t| t.client_auth == ClientAuth::RequireAndVerifyClientCert);
        self.tls.is_some() && (!self.users.is_empty() || cert)
    }

    /// The rustls configuration for a new connection (None: plain).
    pub(super) fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        let tls = self.tls.as_ref()?;
        Some(tls.lock().unwrap_or_else(|p| p.into_inner()).config())
    }

    /// Whether requests are judged at all.
    fn gated(&self) -> bool {
        !self.users.is_empty() || self.cert_per_request
    }
}

/// What becomes of a request, by its head.
pub(super) enum Verdict {
    Pass,
    Refuse(Vec<u8>),
    /// A bcrypt check decides.
    Check(Job),
}

/// What a request asks of [`judge`], as the front's one parse of its head
/// found it ([`crate::diag::request_head::Parsed::Forward`]).
pub(super) struct Asked<'a> {
    /// The path: clean, origin-form, no query.
    pub path: &'a str,
    /// The `Authorization` value, if the client sent one.
    pub authorization: Option<&'a [u8]>,
    /// The client showed a verified certificate.
    pub certificate: bool,
}

/// Judges a request by what its head asked.
pub(super) fn judge(sec: &Security, asked: &Asked) -> Verdict {
    if !sec.gated() {
        return Verdict::Pass;
    }
    let path = asked.path;
    if sec.open_paths.iter().any(|p| p == path) {
        return Verdict::Pass;
    }
    if sec.cert_per_request && !asked.certificate {
        return Verdict::Refuse(simple_response(
            403,
            "a verified client certificate is required",
        ));
    }
    if sec.users.is_empty() {
        return Verdict::Pass;
    }
    let credentials = asked.authorization.and_then(basic_credentials);
    let Some((user, password)) = credentials else {
        return Verdict::Refuse(unauthorized());
    };
    let (known, hash) = match sec.users.get(&user) {
        Some(h) => (true, h.clone()),
        None => (false, DUMMY_HASH.to_string()),
    };
    let key = cache_key(&user, &hash, &password);
    if known
        && sec
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
    {
        return Verdict::Pass;
    }
    Verdict::Check(Job {
        conn: 0,
        known,
        hash,
        password,
        key,
    })
}

/// `user:password` of a `Basic` Authorization value (RFC 7617).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, password] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

fn unauthorized() -> Vec<u8> {
    let mut out = simple_response(401, "Unauthorized");
    // RFC 9110 §11.6.1: a 401 names the scheme to use.
    let at = out.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
    out.splice(at..at, b"WWW-Authenticate: Basic\r\n".iter().copied());
    out
}

/// A bcrypt check for `diag-auth`.
pub(super) struct Job {
    /// The connection waiting for it ([`super::Conn::id`]).
    conn: u64,
    known: bool,
    hash: String,
    password: String,
    key: [u8; 32],
}

struct Done {
    conn: u64,
    ok: bool,
    key: [u8; 32],
}

/// The `diag-auth` thread's queue, its answers, and the socket it wakes
/// the front's loop with (in the epoll set while it lives).
pub(super) struct Checker {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
    pub(super) wake: UnixStream,
    pub(super) wake_ev: EventFlags,
}

impl Checker {
    /// Starts `diag-auth`; it ends when the front drops the checker.
    fn spawn() -> io::Result<Checker> {
        let (jobs, jobs_rx) = mpsc::sync_channel::<Job>(MAX_PENDING);
        let (done_tx, done) = mpsc::channel();
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        crate::infra::threads::spawn("diag-auth", move || {
            for job in jobs_rx {
                let ok = bcrypt::verify(&job.password, &job.hash).unwrap_or(false) && job.known;
                let done = Done {
                    conn: job.conn,
                    ok,
                    key: job.key,
                };
                if done_tx.send(done).is_err() {
                    return;
                }
                // A full socket means a wake-up is pending already.
                let _ = (&wake_tx).write(&[0]);
            }
        })?;
        Ok(Checker {
            jobs,
            done,
            wake,
            wake_ev: EventFlags::empty(),
        })
    }
}

impl Front {
    /// Starts `diag-auth` unless it runs: when the front is made with basic
    /// auth on (so that its thread and socket are there before services
    /// may take every descriptor), else at the first check (a reload that
    /// turned basic auth on). An error is logged once a second at most,
    /// and the request waiting for it gets a 503.
    pub(super) fn start_checker(&mut self) {
        if self.checker.is_some() {
            return;
        }
        match Checker::spawn() {
            Ok(c) => self.checker = Some(c),
            Err(e) => {
                if once_a_second(&mut self.last_auth_error) {
                    log::error("diagnostics: cannot start diag-auth", &[("error", &e)]);
                }
            }
        }
    }
}

/// A request waiting for its bcrypt check, then forwarded as it came.
pub(super) struct Pending {
    head: Vec<u8>,
    next: Option<Vec<u8>>,
    how: How,
}

/// The security in force now.
pub(super) fn current(handle: &SecurityHandle) -> Arc<Security> {
    handle.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Front {
    /// Forwards connection `i`'s request, refuses it, or queues its bcrypt
    /// check, by `verdict`.
    pub(super) fn admit_request(
        &mut self,
        i: usize,
        now: Instant,
        verdict: Verdict,
        head: Vec<u8>,
        next: Option<Vec<u8>>,
        how: How,
    ) {
        let mut job = match verdict {
            Verdict::Pass => return self.forward(i, now, head, next, how),
            Verdict::Refuse(out) => {
                return self.conns[i].reply(out, Then::Close, now + self.limits.write_timeout)
            }
            Verdict::Check(job) => job,
        };
        job.conn = self.conns[i].id;
        self.start_checker();
        let queued = match &self.checker {
            Some(c) => c.jobs.try_send(job),
            None => Err(TrySendError::Disconnected(job)),
        };
        let c = &mut self.conns[i];
        match queued {
            Ok(()) => {
                c.state = State::Auth(Pending { head, next, how });
                c.deadline = now + self.limits.response_timeout;
            }
            Err(TrySendError::Full(_)) => c.reply(
                simple_response(503, "too many password checks pending; try again"),
                Then::Close,
                now + self.limits.write_timeout,
            ),
            Err(TrySendError::Disconnected(_)) => {
                self.checker = None;
                c.reply(
                    simple_response(503, "the diagnostics service is busy; try again"),
                    Then::Close,
                    now + self.limits.write_timeout,
                );
            }
        }
    }

    /// `diag-auth` woke the loop: each checked request goes on, or gets 401.
    pub(super) fn checked(&mut self, now: Instant) {
        let Some(checker) = &self.checker else {
            return;
        };
        let mut sink = [0u8; 64];
        while matches!((&checker.wake).read(&mut sink), Ok(n) if n > 0) {}
        let done: Vec<Done> = checker.done.try_iter().collect();
        let sec = current(&self.security);
        for d in done {
            if d.ok {
                let mut cache = sec.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(d.key);
            }
            let Some(i) = self.conns.iter().position(|c| c.id == d.conn) else {
                continue;
            };
            let c = &mut self.conns[i];
            if !matches!(c.state, State::Auth(_)) {
                continue;
            }
            let State::Auth(p) = std::mem::replace(&mut c.state, State::Linger { drained: 0 })
            else {
                continue;
            };
            if d.ok {
                self.forward(i, now, p.head, p.next, p.how);
            } else {
                c.reply(unauthorized(), Then::Close, now + self.limits.write_timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict on a client's head, through the front's one parse of
    /// it (as `conn.rs` does).
    fn judge_head(sec: &Security, auth: &str, target: &str) -> Verdict {
        use crate::diag::request_head::{parse_head, HeadLimits, Parsed, Peer};
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
        let peer = Peer::Tcp("127.0.0.1:9".parse().unwrap());
        let Parsed::Forward {
            head,
            path,
            authorization,
            ..
        } = parse_head(raw.as_bytes(), &HeadLimits::default(), peer)
        else {
            panic!("{target}: not forwarded");
        };
        let asked = Asked {
            path: std::str::from_utf8(&head[path]).unwrap(),
            authorization: authorization.as_deref(),
            certificate: false,
        };
        judge(sec, &asked)
    }

    #[test]
    fn a_successful_check_is_cached_and_open_paths_need_none() {
        let mut sec = Security::none();
        sec.users
            .insert("prometheus".into(), bcrypt::hash("secret", 4).unwrap());
        sec.open_paths.push("/livez".into());
        let good = ("Basic cHJvbWV0aGV1czpzZWNyZXQ=", "/metrics");
        let Verdict::Check(job) = judge_head(&sec, good.0, good.1) else {
            panic!("the first request needs a bcrypt check");
        };
        assert!(job.known && bcrypt::verify(&job.password, &job.hash).unwrap());
        sec.cache.lock().unwrap().insert(job.key);
        assert!(matches!(judge_head(&sec, good.0, good.1), Verdict::Pass));
        // Another password, or an unknown user, is checked again.
        let other = judge_head(&sec, "Basic cHJvbWV0aGV1czpvdGhlcg==", "/metrics");
        assert!(matches!(other, Verdict::Check(_)));
        assert!(matches!(
            judge_head(&sec, "Basic YWxpY2U6c2VjcmV0", "/metrics"),
            Verdict::Check(Job { known: false, .. })
        ));
        assert!(matches!(
            judge_head(&sec, "Bearer x", "/metrics"),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            judge_head(&sec, "Bearer x", "/livez?x=1"),
            Verdict::Pass
        ));
        assert!(matches!(
            judge_head(&sec, "Bearer x", "/livez/"),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn reads_basic_credentials() {
        assert_eq!(
            basic_credentials(b"Basic cHJvbWV0aGV1czpzZWNyZXQ="),
            Some(("prometheus".into(), "secret".into()))
        );
        assert_eq!(basic_credentials(b"Bearer x"), None);
        assert_eq!(basic_credentials(b"Basic !!"), None);
        let r = String::from_utf8(unauthorized()).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\n"),
            "{r}"
        );
    }
}
