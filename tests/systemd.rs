//! systemd integration through the real binary, without systemd: a Unix
//! datagram socket stands in for `$NOTIFY_SOCKET` (path and abstract `@name`
//! forms), a plain file for the journal stream.
//! - `STATUS=` follows health changes, is coalesced when a service flaps,
//!   and ends with `STOPPING=1`;
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC`, withheld while the serving
//!   loop, the renderer, the front or the health applier is wedged
//!   (debug-build failpoints), kept up after a reload moves the front or
//!   stops the service, withheld again when a service that a reload started
//!   wedges, only for the process `WATCHDOG_PID` names;
//! - priority prefixes on stderr only under a matching `JOURNAL_STREAM`.
//!
//! Timing bounds are loose (several times the expected figure): they tell a
//! ping every 500 ms from none at all, not measure latency.

mod common;
use common::util::free_port;
use common::*;

#[path = "support/reload.rs"]
#[allow(dead_code)]
mod reload_support;
use reload_support::{command_without_flag, reload_to, start, start_without_flag};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A stand-in for systemd's notification socket: every datagram received,
/// with its arrival time.
struct NotifySocket {
    /// The value for `$NOTIFY_SOCKET`.
    addr: String,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn at_path(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).unwrap();
        NotifySocket::collect(sock, path.display().to_string())
    }

    fn abstract_name(tag: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tbot-test-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket::collect(sock, format!("@{name}"))
    }

    fn collect(sock: UnixDatagram, addr: String) -> NotifySocket {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        // Ends with the test process.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        NotifySocket { addr, got }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// The arrival times of the datagrams whose text is exactly `text`.
    fn times_of(&self, text: &str) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, t)| t == text)
            .map(|(at, _)| at)
            .collect()
    }

    /// Every `STATUS=` value, in order.
    fn statuses(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .flat_map(|(_, t)| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until the latest `STATUS=` value is `want`; panics after 10 s.
    fn wait_last_status(&self, want: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.statuses().last().map(String::as_str) != Some(want) {
            assert!(
                Instant::now() < end,
                "{want:?} expected: {:?}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until some datagram satisfies `pred`; panics after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            if let Some((_, t)) = self.all().into_iter().find(|(_, t)| pred(t)) {
                return t;
            }
            assert!(
                Instant::now() < end,
                "no datagram {what} in {timeout:?}; got {:?}",
                self.all().iter().map(|(_, t)| t).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A config with one identity output, `web`, renewed every `every`, into
/// `dir/out`.
fn one_output(dir: &TempDir, every: &str) -> String {
    let services = format!(
        "  - type: identity\n    name: web\n    principals: [a]\n    destination: {{type: directory, path: {}}}\n",
        dir.join("out").display()
    );
    config_text(
        dir.path(),
        &format!("credential_ttl: 1m\nrenewal_interval: {every}\n"),
        &services,
    )
}

/// Makes the output's destination unusable (a regular file where its
/// directory was; root cannot write there either), or usable again.
fn break_output(dir: &Path, broken: bool) {
    let out = dir.join("out");
    if broken {
        // tbot may re-create the directory between the two steps: again.
        for _ in 0..100 {
            let _ = std::fs::remove_dir_all(&out);
            if std::fs::write(&out, "not a directory").is_ok() {
                return;
            }
        }
        panic!("{} stays a directory", out.display());
    } else {
        let _ = std::fs::remove_file(&out);
    }
}

#[test]
fn status_lines_follow_health_changes_and_end_with_stopping() {
    let dir = TempDir::new("sd-status");
    let cfg = one_output(&dir, "300ms");
    let notify = NotifySocket::at_path(&dir.join("notify.sock"));
    let mut t = start(
        dir,
        &cfg,
        &[
            ("NOTIFY_SOCKET", &notify.addr),
            // Keeps one service initializing for a while after start.
            ("TBOT_FAILPOINTS", "heartbeat-start=sleep:1500"),
            // A watchdog meant for another process: no pings from this one.
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let first = notify.wait_for("STATUS=", Duration::from_secs(10), |t| {
        t.starts_with("STATUS=")
    });
    assert!(
        first.starts_with("STATUS=4 services: ") && first.contains("initializing"),
        "{first}"
    );
    notify.wait_for("READY=1", Duration::from_secs(10), |t| t == "READY=1");
    let healthy = "STATUS=4 services: 4 healthy";
    notify.wait_for(healthy, Duration::from_secs(10), |t| t == healthy);

    break_output(t.dir.path(), true);
    let down = notify.wait_for("naming web", Duration::from_secs(10), |t| {
        t.starts_with("STATUS=4 services: 3 healthy, 1 unhealthy (web: ")
    });
    let out = t.dir.join("out").display().to_string();
    assert!(down.contains(&out), "the reason names the path: {down}");
    assert_eq!(down.lines().count(), 1, "{down:?}");

    break_output(t.dir.path(), false);
    notify.wait_last_status(&healthy[7..]);

    t.signal(libc::SIGTERM);
    assert_eq!(
        t.wait_exit(Duration::from_secs(3)).and_then(|s| s.code()),
        Some(0)
    );
    std::thread::sleep(Duration::from_millis(100));
    let all: Vec<String> = notify.all().into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        all.last().map(String::as_str),
        Some("STOPPING=1\nSTATUS=stopping on SIGTERM"),
        "{all:?}"
    );
    assert!(!all.iter().any(|d| d.contains("WATCHDOG")), "{all:?}");
}

#[test]
fn a_flapping_service_does_not_flood_systemd() {
    let dir = TempDir::new("sd-flap");
    let cfg = one_output(&dir, "40ms");
    let notify = NotifySocket::at_path(&dir.join("notify.sock"));
    let t = start(dir, &cfg, &[("NOTIFY_SOCKET", &notify.addr)]);
    let healthy = "STATUS=4 services: 4 healthy";
    notify.wait_for(healthy, Duration::from_secs(10), |t| t == healthy);
    let before = notify.statuses().len();
    let changes = || {
        t.log()
            .matches("service status changed service=web")
            .count()
    };
    let changes_before = changes();
    let start = Instant::now();
    let mut broken = false;
    // At least 3 s and 12 changes (a loaded machine writes slower), at
    // most 15 s.
    while start.elapsed() < Duration::from_secs(3)
        || (changes() - changes_before < 12 && start.elapsed() < Duration::from_secs(15))
    {
        broken = !broken;
        break_output(t.dir.path(), broken);
        std::thread::sleep(Duration::from_millis(90));
    }
    let elapsed = start.elapsed().as_secs_f64();
    break_output(t.dir.path(), false);
    let flaps = changes() - changes_before;
    let sent = notify.statuses().len() - before;
    assert!(flaps >= 12, "the service did not flap: {flaps} changes");
    // At most one line per second (the coalescing gap), plus the edges.
    assert!(
        (sent as f64) <= elapsed + 2.0,
        "{sent} STATUS= lines for {flaps} changes in {elapsed:.1} s"
    );
    // The last line still tells the truth once it settles.
    notify.wait_last_status(&healthy[7..]);
}

/// The gaps between consecutive `WATCHDOG=1` pings after `from`.
fn ping_gaps(notify: &NotifySocket, from: Instant) -> Vec<Duration> {
    let pings: Vec<Instant> = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= from)
        .collect();
    pings.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn watchdog_pings_stop_while_the_serving_loop_is_wedged() {
    pings_stop_while_one_request_wedges("wd", "diag-request", "diag-http");
}

#[test]
fn watchdog_pings_stop_while_the_front_is_wedged() {
    // The front owns every client socket: wedged, it fails every probe
    // while the serving loop behind it idles happily.
    pings_stop_while_one_request_wedges("wd-front", "diag-front-accept", "diag-front");
}

/// Starts tbot with failpoint `point` sleeping 6 s, checks that it pings
/// every 500 ms, then sends one request, which reaches `point` and wedges
/// `loop_name`: the pings stop, the log names the loop, and once the
/// request is answered the pings resume.
fn pings_stop_while_one_request_wedges(tag: &str, point: &str, loop_name: &str) {
    let dir = TempDir::new(&format!("sd-{tag}"));
    let cfg = config_text(dir.path(), "", "");
    let notify = NotifySocket::abstract_name(tag);
    // Long enough that the window checked below (from 2.5 s into the
    // wedge to its last 0.5 s) would hold about six pings if the watchdog
    // pinged regardless, and far from the request's own delays under load.
    let wedge = Duration::from_millis(6000);
    let t = start(
        dir,
        &cfg,
        &[
            ("NOTIFY_SOCKET", &notify.addr),
            ("WATCHDOG_USEC", "1000000"),
            (
                "TBOT_FAILPOINTS",
                &format!("{point}=sleep:{}", wedge.as_millis()),
            ),
        ],
    );
    notify.wait_for("READY=1", Duration::from_secs(10), |t| t == "READY=1");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2600));
    let mut gaps = ping_gaps(&notify, started);
    assert!(gaps.len() >= 3, "pings: {gaps:?}");
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    // Half of WATCHDOG_USEC (500 ms), give or take a loaded machine: a
    // ping every full period (1 s) or a burst would be out of range.
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(900)).contains(&median),
        "pings every 500 ms expected: {gaps:?}"
    );

    one_request_wedges(&t, &notify, t.addr(), wedge, loop_name);
}

/// Log lines that contain `what` and name `loop_name`.
fn log_lines_naming(t: &Tbot, what: &str, loop_name: &str) -> usize {
    let name = format!("loop={loop_name}");
    t.log()
        .lines()
        .filter(|l| l.contains(what) && l.contains(&name))
        .count()
}

/// Sends one request to `addr`, which reaches a failpoint sleeping `wedge`
/// and wedges `loop_name`: the pings stop, the log names the loop (anew),
/// and once the request is answered the pings resume.
#[track_caller]
fn one_request_wedges(
    t: &Tbot,
    notify: &NotifySocket,
    addr: std::net::SocketAddr,
    wedge: Duration,
    loop_name: &str,
) {
    let withheld = || log_lines_naming(t, "not responding; watchdog pings withheld", loop_name);
    let again = || log_lines_naming(t, "responding again", loop_name);
    let (withheld_before, again_before) = (withheld(), again());
    // One request wedges the loop for `wedge`.
    let wedged_at = Instant::now();
    let client = std::thread::spawn(move || get(addr, "/livez").status);
    std::thread::sleep(wedge - Duration::from_millis(500));
    // A ping is due for a period in which the loop still turned: within a
    // period (500 ms) of the wedge, none after. The request may take a
    // while to reach the loop on a loaded machine: the window starts 2.5 s
    // into the wedge.
    let late: Vec<Instant> = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|at| *at > wedged_at + Duration::from_millis(2500))
        .collect();
    assert!(
        late.is_empty(),
        "pings while {loop_name} was wedged, {:?} after the wedge; all pings (ms from the wedge): {:?}",
        late.iter().map(|at| *at - wedged_at).collect::<Vec<_>>(),
        notify
            .times_of("WATCHDOG=1")
            .iter()
            .map(|at| at.duration_since(wedged_at).as_millis())
            .collect::<Vec<_>>()
    );
    assert!(withheld() > withheld_before, "{}", t.log());
    // The request is answered once the loop moves again, and pings resume.
    assert_eq!(client.join().unwrap(), 200);
    let resumed = Instant::now();
    notify.wait_for("a ping after the wedge", Duration::from_secs(10), |_| {
        notify.times_of("WATCHDOG=1").iter().any(|at| *at > resumed)
    });
    let end = Instant::now() + Duration::from_secs(10);
    while again() == again_before {
        assert!(Instant::now() < end, "{}", t.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wedged_metrics_render_withholds_the_watchdog_pings() {
    // /metrics renders off the serving loop, on diag-render: a render
    // that wedges there must stop the pings as one on the loop did.
    let dir = TempDir::new("sd-wd-render");
    let cfg = config_text(dir.path(), "", "");
    let notify = NotifySocket::abstract_name("wd-render");
    let t = start(
        dir,
        &cfg,
        &[
            ("NOTIFY_SOCKET", &notify.addr),
            ("WATCHDOG_USEC", "1000000"),
            ("TBOT_FAILPOINTS", "metrics-render=sleep:5000"),
        ],
    );
    notify.wait_for("READY=1", Duration::from_secs(10), |t| t == "READY=1");
    let addr = t.addr();
    let scrape = std::thread::spawn(move || get(addr, "/metrics").status);
    assert!(
        t.wait_log("loop=diag-render", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    let withheld = t.log().lines().any(|l| {
        l.contains("not responding; watchdog pings withheld") && l.contains("loop=diag-render")
    });
    assert!(withheld, "{}", t.log());
    // The serving loop itself answers meanwhile.
    assert_eq!(get(addr, "/livez").status, 200);
    assert_eq!(scrape.join().unwrap(), 200);
    let resumed = Instant::now();
    notify.wait_for("a ping after the render", Duration::from_secs(10), |_| {
        notify.times_of("WATCHDOG=1").iter().any(|at| *at > resumed)
    });
}

/// Waits for the watchdog to start and checks that it watches the health
/// applier and the diagnostics loops: all four, with or without a
/// diagnostics service (`diag::Slots`).
#[track_caller]
fn watchdog_watches_every_loop(t: &Tbot) {
    assert!(
        t.wait_log("systemd watchdog enabled", Duration::from_secs(10)),
        "{}",
        t.log()
    );
    assert!(
        t.log()
            .contains("watching=health,diag-http,diag-render,diag-front\n"),
        "{}",
        t.log()
    );
}

/// Waits 3 s after a reload that ended at `from` and checks that the pings
/// went on: two at least from `from` + 1 s on (a poke the old loops took
/// just before the reload may go unanswered within a period), and nothing
/// logged as not responding meanwhile.
#[track_caller]
fn pings_after_a_reload(notify: &NotifySocket, t: &Tbot, from: Instant) {
    let alarms = || t.log().matches("not responding").count();
    let alarms_before = alarms();
    std::thread::sleep(Duration::from_millis(3000));
    let pings = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|at| *at > from + Duration::from_secs(1))
        .count();
    // About four in the 2 s window; none if the watchdog still waited on
    // loops that the reload stopped.
    assert!(
        pings >= 2,
        "{pings} pings after the reload; log:\n{}",
        t.log()
    );
    assert_eq!(alarms(), alarms_before, "{}", t.log());
}

/// A configuration in `dir` with `diag_addr` on `port`.
fn diag_at(dir: &Path, port: u16) -> String {
    config_text(dir, &format!("diag_addr: 127.0.0.1:{port}\n"), "")
}

/// Reloads to a configuration without `diag_addr`: the TCP front stops
/// (the service stays for the debug socket, on a front of its own), and
/// the pings go on ([`pings_after_a_reload`]).
#[track_caller]
fn reload_without_diag(t: &Tbot, notify: &NotifySocket, dir: &Path) {
    let line = reload_to(t, &config_text(dir, "", ""));
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(
        t.log().contains("diagnostics service moved") && t.log().contains(" to=none"),
        "{}",
        t.log()
    );
    pings_after_a_reload(notify, t, Instant::now());
}

#[test]
fn the_watchdog_follows_the_diagnostics_service_through_reloads() {
    // A reload that moves diag_addr replaces the front: the watchdog's
    // pokes must wake the new one (idle, with no client, it sleeps in
    // epoll_wait without a limit) and its turns must count. A reload that
    // removes diag_addr stops the service: its loops are gone, not wedged.
    let dir = TempDir::new("sd-wd-move");
    let d = dir.path().to_path_buf();
    let notify = NotifySocket::abstract_name("wd-move");
    let env = [
        ("NOTIFY_SOCKET", notify.addr.as_str()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    let t = start_without_flag(dir, &diag_at(&d, free_port()), &env);
    watchdog_watches_every_loop(&t);
    notify.wait_for("READY=1", Duration::from_secs(10), |t| t == "READY=1");

    let second = free_port();
    let line = reload_to(&t, &diag_at(&d, second));
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(t.log().contains("diagnostics service moved"), "{}", t.log());
    pings_after_a_reload(&notify, &t, Instant::now());
    let new_addr = format!("127.0.0.1:{second}").parse().unwrap();
    assert_eq!(get(new_addr, "/livez").status, 200);

    reload_without_diag(&t, &notify, &d);
}

#[test]
fn the_watchdog_watches_a_diagnostics_service_that_a_reload_starts() {
    // tbot starts without diag_addr, and the watchdog's list is made then:
    // it must still cover the service a reload adds, and the one a later
    // reload adds back after another removed it. Each service is wedged
    // once (its serving loop, on a request), and must stop the pings.
    let dir = TempDir::new("sd-wd-add");
    let d = dir.path().to_path_buf();
    let notify = NotifySocket::abstract_name("wd-add");
    let wedge = Duration::from_millis(6000);
    // Every request wedges the loop: none is sent but the two below.
    let failpoint = format!("diag-request=sleep:{}", wedge.as_millis());
    let env = [
        ("NOTIFY_SOCKET", notify.addr.as_str()),
        ("WATCHDOG_USEC", "1000000"),
        ("TBOT_FAILPOINTS", failpoint.as_str()),
    ];
    let cmd = command_without_flag(&dir, &config_text(&d, "", ""), &env);
    let t = Tbot::spawn(cmd, dir);
    // The diagnostics loops are on the list with no service yet.
    watchdog_watches_every_loop(&t);
    notify.wait_for("READY=1", Duration::from_secs(10), |t| t == "READY=1");

    for round in ["added", "added back"] {
        let port = free_port();
        let line = reload_to(&t, &diag_at(&d, port));
        assert!(line.contains("configuration reloaded"), "{round}: {line}");
        assert!(
            t.log().contains(&format!(
                "diagnostics service listening addr=127.0.0.1:{port}"
            )),
            "{round}: {}",
            t.log()
        );
        pings_after_a_reload(&notify, &t, Instant::now());
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        one_request_wedges(&t, &notify, addr, wedge, "diag-http");
        if round == "added" {
            reload_without_diag(&t, &notify, &d);
        }
    }
}

#[test]
fn without_diag_addr_the_watchdog_follows_the_health_applier() {
    let dir = TempDir::new("sd-wd-nodiag");
    let cfg = dir.write("tbot.yaml", &one_output(&dir, "200ms"));
    let notify = NotifySocket::at_path(&dir.join("notify.sock"));
    // WATCHDOG_PID must name tbot, not this test: a shell sets it to its
    // own PID and execs tbot, which keeps that PID.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["start", "-c"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_remove("TBOT_CONFIG_PATH")
        .env("NOTIFY_SOCKET", &notify.addr)
        .env("WATCHDOG_USEC", "600000")
        .env("TBOT_FAILPOINTS", "health-unhealthy=sleep:5000");
    let dir_path = dir.path().to_path_buf();
    let mut t = Tbot::spawn(sh, dir);
    // The diagnostics loops are listed too, and count as turning while no
    // service runs (a reload may start one).
    watchdog_watches_every_loop(&t);
    notify.wait_for("READY=1", Duration::from_secs(10), |t| t == "READY=1");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1300));
    assert!(ping_gaps(&notify, started).len() >= 2, "{:?}", notify.all());

    break_output(&dir_path, true);
    let broke = Instant::now();
    std::thread::sleep(Duration::from_millis(4500));
    let late = notify
        .times_of("WATCHDOG=1")
        .into_iter()
        // The next renewal (200 ms) fails and wedges the applier for 5 s; a
        // period (300 ms) later the pings stop. Checked from 2.5 s on, so a
        // renewal late on a loaded machine does not count, while a watchdog
        // that pinged regardless would send about six pings in the window.
        .filter(|at| *at > broke + Duration::from_millis(2500))
        .count();
    assert_eq!(late, 0, "pings while the applier was wedged");
    assert!(t.log().contains("loop=health"), "{}", t.log());
    break_output(&dir_path, false);
    t.signal(libc::SIGTERM);
    assert!(t.wait_exit(Duration::from_secs(15)).is_some());
}

/// Runs tbot (debug mode, one panicking service, one broken output,
/// notifications: lines at every level) with stderr going to a file, `JOURNAL_STREAM` set to
/// `journal(device, inode)` of that file; stops it once the broken output
/// was reported; returns the file's text.
fn stderr_to_file(tag: &str, journal: impl Fn(u64, u64) -> String, extra: &[&str]) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new(tag);
    std::fs::write(dir.join("out"), "not a directory").unwrap();
    let cfg = one_output(&dir, "1s");
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    // Under -d each datagram sent is logged at debug level.
    let notify = NotifySocket::at_path(&dir.join("notify.sock"));
    let runtime = dir.path().display().to_string();
    let env = [("XDG_RUNTIME_DIR", runtime.as_str())];
    let mut cmd = Tbot::command_with(Path::new(BIN), &dir, &cfg, extra, &env);
    cmd.arg("-d")
        .env("NOTIFY_SOCKET", &notify.addr)
        .env("JOURNAL_STREAM", journal(meta.dev(), meta.ino()))
        .env("TBOT_FAILPOINTS", "heartbeat=panic:1")
        .stderr(log);
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let text = || std::fs::read_to_string(&log_path).unwrap();
    while !(text().contains("service failed; restarting")
        && text().contains("identity output failed"))
    {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tbot did not log what was expected:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    text()
}

/// The sd-daemon(3) prefix a line of this level must carry.
fn prefix_for(line: &str) -> &'static str {
    for (level, prefix) in [
        ("DEBUG", "<7>"),
        ("INFO ", "<6>"),
        ("WARN ", "<4>"),
        ("ERROR", "<3>"),
        ("\"level\":\"debug\"", "<7>"),
        ("\"level\":\"info\"", "<6>"),
        ("\"level\":\"warn\"", "<4>"),
        ("\"level\":\"error\"", "<3>"),
    ] {
        if line.contains(level) {
            return prefix;
        }
    }
    panic!("no level in {line:?}")
}

#[test]
fn log_lines_carry_priorities_when_stderr_is_the_journal() {
    let text = stderr_to_file("journal", |dev, ino| format!("{dev}:{ino}"), &[]);
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let want = prefix_for(line);
        assert!(line.starts_with(want), "{want} expected: {line:?}\n{text}");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 4, "every level appears: {seen:?}\n{text}");
}

#[test]
fn json_lines_under_the_journal_are_prefix_then_one_object() {
    let text = stderr_to_file(
        "journal-json",
        |dev, ino| format!("{dev}:{ino}"),
        &["--log-format", "json"],
    );
    for line in text.lines() {
        let want = prefix_for(line);
        let rest = line
            .strip_prefix(want)
            .unwrap_or_else(|| panic!("{want} expected: {line:?}"));
        let v: serde_json::Value = serde_json::from_str(rest).unwrap();
        assert!(v["msg"].is_string(), "{rest}");
    }
}

#[test]
fn no_prefixes_when_journal_stream_names_another_file() {
    // Inherited from a parent whose stderr was the journal: same device,
    // another inode; then the variable's form is not even valid.
    let other_inode = |dev: u64, ino: u64| format!("{dev}:{}", ino + 1);
    let garbage = |_: u64, _: u64| "garbage".to_string();
    for text in [
        stderr_to_file("journal-other", other_inode, &[]),
        stderr_to_file("journal-bad", garbage, &[]),
    ] {
        assert!(text.lines().count() > 5, "{text}");
        for line in text.lines() {
            assert!(line.starts_with("20"), "no prefix expected: {line:?}");
        }
    }
}

#[test]
fn a_configuration_error_is_an_error_in_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("journal-fatal");
    let cfg = dir.write("tbot.yaml", "version: v2\nbogus: 1\n");
    let log_path = dir.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let status = Command::new(BIN)
        .args(["start", "-c"])
        .arg(&cfg)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stderr(log)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.starts_with("<3>tbot: "), "{text:?}");
    assert!(text.contains("bogus"), "{text:?}");
    assert!(text.lines().all(|l| l.starts_with('<')), "{text:?}");
}

#[test]
fn a_notification_socket_that_is_gone_is_one_warning_not_a_flood() {
    let dir = TempDir::new("sd-gone");
    let cfg = config_text(dir.path(), "", "");
    let gone = dir.join("no-such.sock").display().to_string();
    let t = start(
        dir,
        &cfg,
        &[("NOTIFY_SOCKET", &gone), ("WATCHDOG_USEC", "40000")],
    );
    // Pings every 20 ms, each failing, and STATUS= and READY=1 too.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(t.get("/livez").status, 200);
    let log = t.log();
    let warnings = log.matches("WARN  cannot notify systemd").count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains(&format!("socket={gone}")), "{log}");
}
