//! A descriptor budget: under an open-file limit of 80,
//! 200 multiplexer clients (relays to a silent target held open, and more
//! waiting) do not starve credential work: renewals (every second), the CA
//! check and the heartbeat keep succeeding, and clients past the fitted cap
//! or past the descriptors left are refused with the reason.
//!
//! Why 80: this configuration holds 27 descriptors at rest below the limit
//! (measured; a stop socket pair per service, the diagnostics' and the
//! multiplexer's handles, watches, reserves), and up to 6 more once the
//! diagnostics front keeps its connections to tiny_http (3, two
//! descriptors each). Under 64 that left as few as 31, and in one CI-style
//! run no relay was granted beside credential work's headroom
//! (`ssh_multiplexer::budget::FDS_HEADROOM`, 16), the 8 waiting clients and the 8
//! lingering refusals. Under 80 the static cap alone (12 relays, 12
//! lingering refusals: 27 + 6 + 48 + 12 > 80) would still run tbot out of
//! descriptors; each relay's claim on the descriptors left is what keeps
//! credential work going.

#[path = "support/certs.rs"]
#[allow(dead_code)]
mod certs;
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::util::{current_user, Metrics};
use common::*;

const NOFILE: u64 = 80;
const CLIENTS: usize = 200;

fn task(m: &Metrics, metric: &str) -> f64 {
    m.get(metric, &[("name", "output-renewal"), ("service", "id")])
        .unwrap_or(0.0)
}

/// /metrics, parsed (None when the diagnostics service answers a plain
/// 503: it shares the descriptor limit, and says so).
fn metrics(t: &Tbot) -> Option<Metrics> {
    let r = t.get("/metrics");
    (r.status == 200).then(|| Metrics::parse(&r.body))
}

/// A TCP target that accepts and holds every connection, silent.
fn silent_target() -> (u16, std::sync::mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn two_hundred_multiplexer_clients_at_nofile_80_do_not_stop_renewals() {
    let dir = TempDir::new("fd-budget");
    let services = format!(
        "  - type: identity\n    name: id\n    principals: [{user}]\n    \
         renewal_interval: 1s\n    credential_ttl: 1m\n    \
         destination: {{type: directory, path: {id}}}\n\
         \x20 - type: ssh-multiplexer\n    name: mux\n    identity: id\n    \
         destination: {{type: directory, path: {mux}}}\n",
        user = current_user(),
        id = dir.join("id").display(),
        mux = dir.join("mux").display(),
    );
    let cfg = config_text(dir.path(), "heartbeat_interval: 1s\n", &services);
    let t = Tbot::start_with_nofile(dir, &cfg, NOFILE);
    for name in ["id", "mux", "heartbeat"] {
        t.until(&format!("/readyz/{name}"), Duration::from_secs(10), |r| {
            r.status == 200
        });
    }
    let cap: usize = t
        .wait_log_value(
            "ssh multiplexer connection cap lowered to fit the open-file limit",
            "cap",
            Duration::from_secs(1),
        )
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no lowered cap in the log\n{}", t.log()));
    let socket = t.dir.join("mux/v1.sock");
    let (port, accepted) = silent_target();
    let m0 = metrics(&t).expect("metrics before the clients");

    // 200 clients, each asking for the silent target and then holding on.
    let request = format!("127.0.0.1:{port}\0");
    let clients: Vec<UnixStream> = (0..CLIENTS)
        .filter_map(|_| {
            let mut c = UnixStream::connect(&socket).ok()?;
            let _ = c.write_all(request.as_bytes());
            Some(c)
        })
        .collect();
    assert!(clients.len() >= CLIENTS / 2, "{} connected", clients.len());

    // For at least 5 seconds of held relays and refusals, and until 3
    // renewals (due every second) have been made: renewals go on. Counted,
    // not timed: on a loaded machine one renewal (its fsyncs) takes up to
    // 2 s; what descriptors starve is whether they succeed.
    std::thread::sleep(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let (renewed, failed) = loop {
        let m1 = metrics(&t).expect("metrics with the clients held");
        let count = |metric| task(&m1, metric) - task(&m0, metric);
        let renewed = count("tbot_task_iterations_total");
        let failed = count("tbot_task_iterations_failed_total");
        if renewed >= 3.0 || started.elapsed() > Duration::from_secs(30) {
            break (renewed, failed);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(renewed >= 3.0, "{renewed} renewals in 35 s\n{}", t.log());
    assert_eq!(failed, 0.0, "failed renewals\n{}", t.log());
    for name in ["id", "mux", "heartbeat", "ca-rotation"] {
        assert_eq!(
            t.get(&format!("/readyz/{name}")).status,
            200,
            "{name}\n{}",
            t.log()
        );
    }
    assert!(!t.log().contains("Too many open files"), "{}", t.log());
    certs::assert_whole_set(&t.dir.join("id"));

    // The relays held are within the fitted cap, the others were told why.
    let held: Vec<TcpStream> = accepted.try_iter().collect();
    assert!(
        !held.is_empty() && held.len() <= cap,
        "{} relays held, cap {cap}",
        held.len()
    );
    let mut refused = 0;
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = c.read(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.contains("too many connections") || text.contains("out of file descriptors") {
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no client was told why it was refused");
}
