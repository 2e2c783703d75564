//! The diagnostics port over TLS, with basic auth and client certificates,
//! in Prometheus exporter-toolkit's web configuration (issue 20), through
//! the real binary and real clients: curl, a real Prometheus, rustls as a
//! client for the hostile cases, and `openssl` for the certificates (a CA,
//! two server certificates, a client certificate; made per test in its
//! temp dir).

mod common;
#[path = "support/prometheus.rs"]
mod prometheus;
use common::*;
use prometheus::Prometheus;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test PKI in `dir`: `ca.crt`; `server.crt`/`server.key` (CN tbot-1)
/// and `server2.crt`/`server2.key` (CN tbot-2) for 127.0.0.1; a client
/// certificate `client.crt`/`client.key` (CN prometheus); all P-256.
fn pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=tbot test CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn, ext) in [
        ("server", "tbot-1", "server.ext"),
        ("server2", "tbot-2", "server.ext"),
        ("client", "prometheus", "client.ext"),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={cn}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
}

const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret-scrape";

/// A bcrypt hash of [`PASSWORD`] (cost 5, htpasswd -B's default).
fn hash() -> String {
    bcrypt::hash(PASSWORD, 5).unwrap()
}

/// A tbot with `web` as its web configuration (written to `web.yml`) and
/// `top` added to its tbot.yaml.
fn start(tag: &str, web: &str, top: &str) -> Tbot {
    start_at(tag, web, top, "127.0.0.1:0")
}

/// [`start`] on `addr`.
fn start_at(tag: &str, web: &str, top: &str, addr: &str) -> Tbot {
    let dir = TempDir::new(tag);
    pki(dir.path());
    dir.write("web.yml", web);
    let cfg = config_text(dir.path(), &format!("web_config_file: web.yml\n{top}"), "");
    let t = Tbot::start(dir, &cfg, &["--diag-addr", addr]);
    t.addr();
    t
}

#[test]
fn beyond_loopback_only_tls_with_authentication_goes_without_a_warning() {
    const WARNING: &str = "the diagnostics service listens on a non-loopback address";
    let secured = start_at("tls-any-auth", &tls_basic_auth(), "", "0.0.0.0:0");
    let cert = start_at("tls-any-cert", TLS_CLIENT_CERT, "", "0.0.0.0:0");
    let tls_only = start_at(
        "tls-any-open",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        "",
        "0.0.0.0:0",
    );
    let auth_only = start_at(
        "tls-any-plain",
        &format!("basic_auth_users:\n  {USER}: {}\n", hash()),
        "",
        "0.0.0.0:0",
    );
    for t in [&secured, &cert] {
        assert!(!t.log().contains(WARNING), "{}", t.log());
    }
    for t in [&tls_only, &auth_only] {
        assert!(t.log().contains(WARNING), "{}", t.log());
    }
    // Basic auth over plain HTTP works too (exporter-toolkit allows it).
    let port = auth_only.addr().port();
    let r = get(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic"));
}

fn tls_basic_auth() -> String {
    format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  {USER}: {}\n",
        hash()
    )
}

/// curl's flags for the CA and the client certificate.
const WITH_CERT: [&str; 6] = [
    "--cacert",
    "ca.crt",
    "--cert",
    "client.crt",
    "--key",
    "client.key",
];

const TLS_CLIENT_CERT: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n";

/// curl's HTTP status for `url` (0: no HTTP answer) and its exit code.
fn curl(dir: &Path, args: &[&str], url: &str) -> (u16, i32) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, out.status.code().unwrap_or(-1))
}

fn url(t: &Tbot, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", t.addr().port())
}

#[test]
fn curl_with_basic_auth_and_kubelet_style_probes() {
    let t = start(
        "tls-basic",
        &tls_basic_auth(),
        "diag_unauthenticated_paths: [/livez, /readyz]\n",
    );
    let dir = t.dir.path();
    let auth = format!("{USER}:{PASSWORD}");
    let ok = ["--cacert", "ca.crt", "-u", auth.as_str()];
    assert_eq!(
        curl(dir, &ok, &url(&t, "/metrics")),
        (200, 0),
        "{}",
        t.log()
    );
    // The cached check: as good the second time.
    assert_eq!(curl(dir, &ok, &url(&t, "/metrics")), (200, 0));
    let wrong = format!("{USER}:wrong");
    let bad = ["--cacert", "ca.crt", "-u", wrong.as_str()];
    assert_eq!(curl(dir, &bad, &url(&t, "/metrics")).0, 401);
    assert_eq!(
        curl(dir, &["--cacert", "ca.crt"], &url(&t, "/metrics")).0,
        401
    );
    let other = format!("someone:{PASSWORD}");
    let unknown = ["--cacert", "ca.crt", "-u", other.as_str()];
    assert_eq!(curl(dir, &unknown, &url(&t, "/metrics")).0, 401);
    // Not listed: still needs auth.
    assert_eq!(
        curl(dir, &["--cacert", "ca.crt"], &url(&t, "/debug/pprof/")).0,
        401
    );
    // The kubelet: no verification, no credentials, a new connection each time.
    for _ in 0..5 {
        assert_eq!(curl(dir, &["-k"], &url(&t, "/livez")), (200, 0));
    }
    assert_eq!(curl(dir, &["-k"], &url(&t, "/readyz?verbose")).0, 200);
    // Verified against the CA, by name.
    assert_eq!(
        curl(dir, &["--cacert", "ca.crt"], &url(&t, "/livez")).0,
        200
    );
    // Plain HTTP to the TLS port gets no answer, and harms nothing.
    let plain = format!("http://127.0.0.1:{}/livez", t.addr().port());
    assert_ne!(curl(dir, &[], &plain).0, 200);
    assert_eq!(curl(dir, &["-k"], &url(&t, "/livez")).0, 200);
    // Off loopback this would not warn: TLS and auth.
    assert!(t.log().contains("diagnostics service listening"));
}

#[test]
fn curl_with_and_without_a_client_certificate() {
    // Debug mode: failed handshakes are logged at debug level.
    let t = start("tls-cert", TLS_CLIENT_CERT, "debug: true\n");
    let dir = t.dir.path();
    let with = WITH_CERT;
    assert_eq!(
        curl(dir, &with, &url(&t, "/metrics")),
        (200, 0),
        "{}",
        t.log()
    );
    // Without one the handshake fails (no HTTP answer at all).
    let (code, exit) = curl(dir, &["--cacert", "ca.crt"], &url(&t, "/metrics"));
    assert_eq!(code, 0);
    assert_ne!(exit, 0);
    assert!(
        t.wait_log("diagnostics TLS handshake failed", Duration::from_secs(5)),
        "{}",
        t.log()
    );
    // A certificate from another CA: refused too.
    let other = TempDir::new("tls-other-ca");
    pki(other.path());
    let theirs = [
        "--cacert",
        "ca.crt",
        "--cert",
        other
            .join("client.crt")
            .to_str()
            .unwrap()
            .to_string()
            .leak(),
        "--key",
        other
            .join("client.key")
            .to_str()
            .unwrap()
            .to_string()
            .leak(),
    ];
    assert_eq!(curl(dir, &theirs, &url(&t, "/metrics")).0, 0);
    assert_eq!(curl(dir, &with, &url(&t, "/livez")).0, 200);
}

#[test]
fn client_certificate_required_per_request_beside_open_probe_paths() {
    let t = start(
        "tls-cert-open",
        TLS_CLIENT_CERT,
        "diag_unauthenticated_paths: [/livez]\n",
    );
    let dir = t.dir.path();
    let with = WITH_CERT;
    assert_eq!(curl(dir, &with, &url(&t, "/metrics")).0, 200, "{}", t.log());
    assert_eq!(curl(dir, &["-k"], &url(&t, "/livez")).0, 200);
    assert_eq!(curl(dir, &["-k"], &url(&t, "/metrics")).0, 403);
}

#[test]
fn a_bad_web_configuration_stops_the_start_with_its_place() {
    let dir = TempDir::new("tls-bad");
    pki(dir.path());
    dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cert_fil: x\n",
    );
    let cfg = config_text(dir.path(), "web_config_file: web.yml\n", "");
    let out = run_tbot_start(&dir, &cfg);
    assert!(out.contains("web.yml:4:3: "), "{out}");
    assert!(out.contains("unknown field `cert_fil`"), "{out}");
    // A key that does not match the certificate.
    dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server2.key\n",
    );
    let out = run_tbot_start(&dir, &cfg);
    assert!(
        out.contains("server.crt and") && out.contains("server2.key"),
        "{out}"
    );
}

#[test]
fn tbot_check_judges_the_web_configuration_as_start_does() {
    let dir = TempDir::new("tls-check");
    pki(dir.path());
    let cfg = dir.write(
        "tbot.yaml",
        &config_text(dir.path(), "web_config_file: web.yml\n", ""),
    );
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_tbot"))
            .args(["check", "-c", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    dir.write("web.yml", &tls_basic_auth());
    assert_eq!(check().0, Some(0), "{}", check().1);
    dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cert_fil: x\n",
    );
    let (code, err) = check();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("web.yml:4:3: ") && err.contains("cert_fil"),
        "{err}"
    );
    dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server2.key\n",
    );
    let (code, err) = check();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tbot.yaml:3:18: web_config_file: ") && err.contains("server2.key"),
        "{err}"
    );
}

/// `tbot start` that is expected to fail: its stderr.
fn run_tbot_start(dir: &TempDir, cfg: &str) -> String {
    let cfg = dir.write("tbot.yaml", cfg);
    let out = Command::new(env!("CARGO_BIN_EXE_tbot"))
        .args([
            "start",
            "-c",
            cfg.to_str().unwrap(),
            "--diag-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The subject of the certificate a new connection gets.
fn served_subject(dir: &Path, addr: SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -CAfile ca.crt </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Replaces `to` by `from` atomically (a copy, then rename(2)), as a cron
/// job or cert-manager's symlink swap would.
fn replace(dir: &Path, from: &str, to: &str) {
    let tmp = dir.join(format!("{to}.new"));
    std::fs::copy(dir.join(from), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(to)).unwrap();
}

/// A TCP relay on a free loopback port to `upstream` that closes each
/// connection once it has been idle for 300 ms: a scraper behind it opens
/// a new connection (and TLS handshake) for every scrape, 1 s apart. Counts
/// the connections it relayed.
fn closing_relay(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(up) = TcpStream::connect(upstream) else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || relay_until_idle(client, up));
        }
    });
    (addr, count)
}

fn relay_until_idle(a: TcpStream, b: TcpStream) {
    let tick = Some(Duration::from_millis(10));
    let (Ok(()), Ok(())) = (a.set_read_timeout(tick), b.set_read_timeout(tick)) else {
        return;
    };
    let mut buf = [0u8; 16 * 1024];
    let mut last = Instant::now();
    loop {
        for (mut from, mut to) in [(&a, &b), (&b, &a)] {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) if to.write_all(&buf[..n]).is_ok() => last = Instant::now(),
                Ok(_) => return,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
        if last.elapsed() > Duration::from_millis(300) {
            return;
        }
    }
}

/// Polls `q` until it answers `want` (within `within`); the last answer.
fn until_query(prom: &Prometheus, q: &str, want: &[&str], within: Duration) -> Option<Vec<String>> {
    let end = Instant::now() + within;
    loop {
        let got = prom.values(q);
        if got
            .as_ref()
            .is_some_and(|g| g.iter().map(String::as_str).eq(want.iter().copied()))
        {
            return got;
        }
        if Instant::now() > end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_over_https_with_basic_auth_and_with_a_client_certificate() {
    if prometheus::missing() {
        return;
    }
    let basic = start("tls-prom-basic", &tls_basic_auth(), "");
    let cert = start("tls-prom-cert", TLS_CLIENT_CERT, "");
    let (bdir, cdir) = (basic.dir.path(), cert.dir.path());
    // Each of job basic's scrapes on a new connection (see below).
    let (basic_relay, relayed) = closing_relay(basic.addr());
    let job = |name: &str, target: SocketAddr, tls: String, extra: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n{tls}{extra}    static_configs:\n      - targets: ['{target}']\n"
        )
    };
    let ca = |dir: &Path| format!("      ca_file: {}\n", dir.join("ca.crt").display());
    let jobs = [
        job(
            "basic",
            basic_relay,
            ca(bdir),
            &format!("    basic_auth:\n      username: {USER}\n      password: {PASSWORD}\n"),
        ),
        job(
            "wrong",
            basic.addr(),
            ca(bdir),
            &format!("    basic_auth:\n      username: {USER}\n      password: nope\n"),
        ),
        job(
            "cert",
            cert.addr(),
            format!(
                "{}      cert_file: {}\n      key_file: {}\n",
                ca(cdir),
                cdir.join("client.crt").display(),
                cdir.join("client.key").display()
            ),
            "",
        ),
    ];
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}",
            jobs.concat()
        ),
        &[],
    );
    let minute = Duration::from_secs(60);
    for (job, up) in [("basic", "1"), ("cert", "1"), ("wrong", "0")] {
        let q = format!("up{{job=\"{job}\"}}");
        assert_eq!(
            until_query(&prom, &q, &[up], minute).as_deref(),
            Some(&[up.to_string()][..]),
            "up{{job={job}}}\ntbot:\n{}\nprometheus:\n{}",
            basic.log(),
            prom.log()
        );
    }
    for job in ["basic", "cert"] {
        let q = format!("tbot_info{{job=\"{job}\"}}");
        assert_eq!(
            until_query(&prom, &q, &["1"], minute).as_deref(),
            Some(&["1".to_string()][..]),
            "samples of {job}"
        );
    }
    // The wrong password's scrape: 401, as Prometheus reports it on its
    // targets page, and as curl sees it.
    let targets = request_timeout(
        prom.addr,
        b"GET /api/v1/targets HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&targets.body).unwrap();
    let error = v["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["job"] == "wrong")
        .map(|t| t["lastError"].as_str().unwrap_or("").to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("401 Unauthorized")),
        "{error:?}"
    );
    let wrong = format!("{USER}:nope");
    assert_eq!(
        curl(
            bdir,
            &["--cacert", "ca.crt", "-u", wrong.as_str()],
            &url(&basic, "/metrics")
        )
        .0,
        401
    );

    // The certificate renewed on disk while Prometheus scrapes: new
    // connections get it, no scrape fails.
    assert!(served_subject(bdir, basic.addr()).contains("tbot-1"));
    replace(bdir, "server2.key", "server.key");
    replace(bdir, "server2.crt", "server.crt");
    let end = Instant::now() + Duration::from_secs(10);
    while !served_subject(bdir, basic.addr()).contains("tbot-2") {
        assert!(
            Instant::now() < end,
            "the new certificate is not served\n{}",
            basic.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Three more scrapes or more, each on a new connection: with the new
    // certificate, verified by Prometheus against the CA.
    let before = relayed.load(Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(30);
    while relayed.load(Ordering::SeqCst) < before + 3 {
        assert!(Instant::now() < end, "Prometheus opened no new connections");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let q = "min_over_time(up{job=\"basic\"}[30s])";
    assert_eq!(
        prom.values(q).as_deref(),
        Some(&["1".to_string()][..]),
        "a scrape failed"
    );
    let q = "count_over_time(up{job=\"basic\"}[5s])";
    assert!(prom.values(q).is_some_and(|v| v.len() == 1 && v[0] != "0"));
    assert!(basic
        .log()
        .contains("diagnostics TLS certificate reloaded from disk"));
}

#[test]
fn files_that_do_not_load_keep_the_previous_certificate() {
    let t = start(
        "tls-rotate-bad",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        "",
    );
    let dir = t.dir.path();
    assert!(served_subject(dir, t.addr()).contains("tbot-1"));
    // Garbage where the certificate was: still tbot-1, one warning.
    std::fs::write(dir.join("server.crt.new"), "not a certificate\n").unwrap();
    std::fs::rename(dir.join("server.crt.new"), dir.join("server.crt")).unwrap();
    for _ in 0..3 {
        assert!(
            served_subject(dir, t.addr()).contains("tbot-1"),
            "{}",
            t.log()
        );
    }
    const WARNING: &str = "diagnostics TLS files changed but do not load";
    assert_eq!(t.log().matches(WARNING).count(), 1, "{}", t.log());
    // The new certificate first, its key a moment later (a cron job's two
    // renames): the mismatched pair is not used, the matched one is.
    replace(dir, "server2.crt", "server.crt");
    assert!(
        served_subject(dir, t.addr()).contains("tbot-1"),
        "{}",
        t.log()
    );
    assert_eq!(t.log().matches(WARNING).count(), 2, "{}", t.log());
    replace(dir, "server2.key", "server.key");
    assert!(
        served_subject(dir, t.addr()).contains("tbot-2"),
        "{}",
        t.log()
    );
}

// ---------------------------------------------------------------------------
// Hostile clients over TLS.

/// A rustls client for `addr` trusting `dir/ca.crt`.
fn tls_connect(
    dir: &Path,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)] // as tbot's (src/diag/front/tls.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// What comes back on `s` until it closes (or times out).
fn read_all(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_clients_over_tls() {
    // TLS without auth: the front's own limits are what is tested.
    let t = start(
        "tls-hostile",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        "diag_max_connections: 16\n",
    );
    let dir = t.dir.path().to_path_buf();
    let addr = t.addr();
    let threads = t.settled_threads();
    let rss = t.rss_bytes();

    // Clients that open the handshake and stall: a record header only,
    // a whole ClientHello never followed up, a bare connection. More than
    // the cap: the oldest is closed to make room, and a real client is
    // still served at once.
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(addr).unwrap();
        match i % 3 {
            0 => s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap(),
            1 => {
                let mut c = tls_connect(&dir, addr);
                // Sends the ClientHello, then reads nothing and says no more.
                let _ = c.conn.write_tls(&mut c.sock);
                stalled.push(c.sock);
                continue;
            }
            _ => {}
        }
        stalled.push(s);
    }
    let started = Instant::now();
    let mut c = tls_connect(&dir, addr);
    c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_all(&mut c);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}\n{}", t.log());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A buffer each, not a thread (about 13 KiB each in a release build).
    assert!(
        t.rss_bytes() < rss + 16 * 1024 * 1024,
        "RSS {} -> {}",
        rss,
        t.rss_bytes()
    );
    assert!(
        t.threads() <= threads + 1,
        "threads {} -> {}",
        threads,
        t.threads()
    );

    // Bytes that are not TLS, and a ClientHello followed by garbage: the
    // connection closes, nothing else happens.
    let mut rng = common::util::Rng(20);
    let noise: Vec<u8> = (0..4096).map(|_| rng.below(256) as u8).collect();
    for junk in [
        noise.clone(),
        [&[0x16, 0x03, 0x01, 0x10, 0x00][..], &noise].concat(),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&junk);
        let started = Instant::now();
        let r = read_all(&mut s);
        assert!(!r.contains("HTTP/1.1"), "{r}");
        assert!(started.elapsed() < Duration::from_secs(4), "not closed");
    }

    // Over TLS as over plain HTTP: a head too large (431), a body (413),
    // a method (405).
    for (req, want) in [
        (
            format!(
                "GET /livez HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
            "431",
        ),
        (
            "GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_string(),
            "413",
        ),
        ("POST /livez HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "405"),
    ] {
        let mut c = tls_connect(&dir, addr);
        let _ = c.write_all(req.as_bytes());
        let r = read_all(&mut c);
        assert!(r.starts_with(&format!("HTTP/1.1 {want}")), "{want}: {r}");
    }

    // Keep-alive and pipelining over TLS: three requests in one write.
    let mut c = tls_connect(&dir, addr);
    c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_all(&mut c);
    assert_eq!(r.matches("HTTP/1.1 200").count(), 3, "{r}");

    // A client that sends its request and shuts down its sending side
    // (close_notify, then FIN) still gets its answer.
    let mut c = tls_connect(&dir, addr);
    c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    c.conn.send_close_notify();
    c.flush().unwrap();
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let r = read_all(&mut c);
    assert!(r.starts_with("HTTP/1.1 200"), "half-closed: {r}");

    // Requests decrypted together beyond one read of the front (4 KiB):
    // the rest waits inside TLS, where epoll cannot see it, and must still
    // be answered.
    let mut c = tls_connect(&dir, addr);
    let pad = "p".repeat(3000);
    let one = format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    let last =
        format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n");
    c.write_all(format!("{one}{one}{last}").as_bytes()).unwrap();
    let r = read_all(&mut c);
    assert_eq!(r.matches("HTTP/1.1 200").count(), 3, "{r}");

    // A slow head over TLS: 408 when the head timeout (10 s) passes, the
    // handshake's time included; the stalled handshakes are gone by then.
    let mut slow = tls_connect(&dir, addr);
    slow.write_all(b"GET /livez HTTP/1.1\r\n").unwrap();
    let r = read_all(&mut slow);
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let mut closed = false;
        for _ in 0..8 {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    closed = e.kind() == std::io::ErrorKind::ConnectionReset;
                    break;
                }
            }
        }
        assert!(closed, "a stalled handshake was not closed");
    }
    // And the server still serves.
    let mut c = tls_connect(&dir, addr);
    c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_all(&mut c).starts_with("HTTP/1.1 200"));
}

/// Whether `GET /livez` over a new TLS connection gets 200 (within 2 s).
fn livez_over_tls(dir: &Path, addr: SocketAddr) -> bool {
    let mut c = tls_connect(dir, addr);
    let _ = c.sock.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    read_all(&mut c).starts_with("HTTP/1.1 200")
}

#[test]
fn clients_that_never_read_over_tls_are_cut_off_by_the_write_timeout() {
    // As tests/hostile.rs over plain HTTP: four slots, four clients that
    // pipeline thousands of /metrics requests over TLS and never read. Once
    // their socket buffers and TLS' are full, every slot is stuck writing,
    // and the write timeout (10 s) frees them.
    let t = start(
        "tls-wtimeout",
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
        "diag_max_connections: 4\n",
    );
    let dir = t.dir.path().to_path_buf();
    let addr = t.addr();
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5000);
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let pipelined = pipelined.clone();
            let mut c = tls_connect(&dir, addr);
            c.sock
                .set_write_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            std::thread::spawn(move || {
                let _ = c.write_all(&pipelined);
                c // held, never read
            })
        })
        .collect();
    let held: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    std::thread::sleep(Duration::from_secs(2));
    // No newcomer comes to take their slots (tests/pressure.rs has that):
    // the write timeout alone must close them, descriptors and all.
    let full = t.open_fds();
    let filled_at = Instant::now();
    while t.open_fds() + 4 > full {
        assert!(
            filled_at.elapsed() < Duration::from_secs(16),
            "{} descriptors open {:?} after the slots filled ({full} then): no write timeout",
            t.open_fds(),
            filled_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(livez_over_tls(&dir, addr));
    drop(held);
}

#[test]
fn password_checks_never_stall_the_other_connections() {
    // A cost at which one check takes 0.4 s or more here (debug builds
    // and load slow bcrypt down): four wrong passwords queue 1.6 s or more
    // of bcrypt, and a probe of an open path beside them is answered at
    // once, since the checks run on `diag-auth`.
    let mut cost = 6;
    let hash = loop {
        let started = Instant::now();
        let hash = bcrypt::hash(PASSWORD, cost).unwrap();
        if started.elapsed() >= Duration::from_millis(400) || cost == 15 {
            break hash;
        }
        cost += 1;
    };
    let web = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  {USER}: {hash}\n"
    );
    let t = start("tls-bcrypt", &web, "diag_unauthenticated_paths: [/livez]\n");
    let dir = t.dir.path().to_path_buf();
    let addr = t.addr();
    let wrong: Vec<_> = (0..4)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let auth = format!("{USER}:wrong-{i}");
                curl(
                    &dir,
                    &["--cacert", "ca.crt", "-u", auth.as_str()],
                    &format!("https://{addr}/metrics"),
                )
                .0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut c = tls_connect(&dir, addr);
    c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_all(&mut c).starts_with("HTTP/1.1 200"));
    let took = started.elapsed();
    for w in wrong {
        assert_eq!(w.join().unwrap(), 401);
    }
    assert!(
        took < Duration::from_millis(1000),
        "/livez took {took:?} beside bcrypt checks"
    );
}

#[test]
fn sighup_rereads_the_web_configuration_and_a_bad_one_changes_nothing() {
    let t = start("tls-reload", &tls_basic_auth(), "");
    let dir: PathBuf = t.dir.path().to_path_buf();
    let auth = format!("{USER}:{PASSWORD}");
    let ok = ["--cacert", "ca.crt", "-u", auth.as_str()];
    assert_eq!(curl(&dir, &ok, &url(&t, "/metrics")).0, 200);
    // A bad file: the reload fails, TLS and auth stay.
    std::fs::write(dir.join("web.yml"), "tls_server_config:\n  nope: 1\n").unwrap();
    t.signal(libc::SIGHUP);
    assert!(
        t.wait_log("configuration reload failed", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    assert!(t.log().contains("web.yml:2:3"), "{}", t.log());
    assert_eq!(curl(&dir, &ok, &url(&t, "/metrics")).0, 200);
    assert_eq!(
        curl(&dir, &["--cacert", "ca.crt"], &url(&t, "/metrics")).0,
        401
    );
    // Another user: the old password is refused from the next request on.
    let hash = bcrypt::hash("other", 5).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  ops: {hash}\n"),
    )
    .unwrap();
    t.signal(libc::SIGHUP);
    assert!(
        t.wait_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    assert_eq!(curl(&dir, &ok, &url(&t, "/metrics")).0, 401);
    assert_eq!(
        curl(
            &dir,
            &["--cacert", "ca.crt", "-u", "ops:other"],
            &url(&t, "/metrics")
        )
        .0,
        200
    );
}
