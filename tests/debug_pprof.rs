//! Debug mode: /debug/pprof/ endpoints, read by real tools (go tool pprof),
//! and never stalling the serving loop.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Held by the tests that load tbot with requests and by the one that times
/// /livez during a profile: the timing is of tbot's serving loop, not of
/// this binary's own load generator competing for the same two cores.
static CPU_HEAVY: Mutex<()> = Mutex::new(());

fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

fn start_debug(services: &str) -> Tbot {
    let dir = TempDir::new("pprof");
    let cfg = config_text(dir.path(), "", services);
    Tbot::start(dir, &cfg, &["-d"])
}

/// Keeps the daemon's CPU busy with requests until dropped. They ask for
/// gzip: the profiler drops every sample taken while a thread runs in libc
/// (its blocklist), and most of a plain `/metrics` answer's CPU is system
/// calls made through libc, so a short profile could come back without a
/// tbot function (the package test's once came back with no sample at
/// all); compression runs in tbot's own code.
struct Load(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

fn load(addr: std::net::SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let _ = request(
                        addr,
                        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
                    );
                }
            })
        })
        .collect();
    Load(stop, threads)
}

/// GETs `path` (a profile: it takes seconds) while [`load`] keeps tbot busy.
fn get_under_load(t: &Tbot, path: &str) -> Resp {
    let busy = load(t.addr());
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = request_timeout(t.addr(), raw.as_bytes(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    drop(busy);
    r
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn cpu_profile_is_read_by_go_tool_pprof_and_names_tbot_functions() {
    let _serial = cpu_heavy();
    let t = start_debug("");
    let text = profile_top(&t);
    assert!(
        text.contains("tbot::"),
        "no tbot function in the profile:\n{text}"
    );
}

/// The build operators run: `[profile.release]` strips debug info but must
/// keep the symbol table, or profiles name no function.
#[test]
fn the_release_build_keeps_its_symbols_for_profiles() {
    let _serial = cpu_heavy();
    // Built here if `cargo test` did not (tests/run-all.sh builds it first,
    // so this is a quick up-to-date check).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "tbot", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo build --release");
    assert!(
        out.status.success(),
        "cargo build --release: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release = std::path::Path::new(BIN)
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("release")
        .join("tbot");
    let dir = TempDir::new("pprof-release");
    let cfg = config_text(dir.path(), "", "");
    let t = Tbot::spawn_and_wait_addr(Tbot::command_with(&release, &dir, &cfg, &["-d"], &[]), dir);
    let text = profile_top(&t);
    assert!(
        text.contains("tbot::"),
        "no tbot function in the release build's profile:\n{text}"
    );
}

/// Takes a 2 s CPU profile while the daemon serves /metrics in a loop, and
/// returns what `go tool pprof -top` makes of it.
fn profile_top(t: &Tbot) -> String {
    let r = get_under_load(t, "/debug/pprof/profile?seconds=2");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert!(r
        .header("Content-Disposition")
        .is_some_and(|d| d.contains("filename=")));
    let file = t.dir.join("cpu.pb");
    std::fs::write(&file, &r.raw_body).unwrap();
    let out = pprof_top(&file, t.dir.path());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "go tool pprof failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn flamegraph_is_well_formed_svg() {
    let _serial = cpu_heavy();
    let t = start_debug("");
    let r = get_under_load(&t, "/debug/pprof/flamegraph?seconds=1");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Content-Type"), Some("image/svg+xml"));
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&r.body, opts)
        .unwrap_or_else(|e| panic!("not XML: {e}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
}

#[test]
fn profiling_never_stalls_the_serving_loop_and_runs_one_at_a_time() {
    let _serial = cpu_heavy();
    let t = start_debug("");
    let addr = t.addr();
    let profile = std::thread::spawn(move || {
        request_timeout(
            addr,
            b"GET /debug/pprof/profile?seconds=5 HTTP/1.1\r\nHost: t\r\n\r\n",
            Duration::from_secs(30),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let second = t.get("/debug/pprof/profile?seconds=1");
    assert_eq!(second.status, 409, "{}", second.body);
    let flame = t.get("/debug/pprof/flamegraph?seconds=1");
    assert_eq!(
        flame.status, 409,
        "one sampler at a time, whatever the format"
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let t0 = Instant::now();
        let r = t.get("/livez");
        slowest = slowest.max(t0.elapsed());
        assert_eq!(r.status, 200);
    }
    eprintln!("slowest of 100 /livez during a profile: {slowest:?}");
    // A serving loop held by the 5 s profile would show seconds; the bound
    // leaves room for a loaded CI machine (it was 100 ms).
    assert!(
        slowest < Duration::from_secs(1),
        "slowest /livez during a profile: {slowest:?}"
    );
    assert_eq!(t.get("/readyz").status, 200);
    let r = profile.join().unwrap().unwrap();
    assert_eq!(r.status, 200);
    // The slot is free again.
    assert_eq!(t.get("/debug/pprof/profile?seconds=1").status, 200);
}

#[test]
fn threads_are_listed_by_service_name() {
    // Names longer than the 15 bytes the kernel keeps for a thread: a
    // default one (type + destination) and the multiplexer's.
    let svc = "  - type: identity\n    name: my-service-123\n    principals: [a]\n    destination: {type: directory, path: out}\n  - type: identity\n    principals: [a]\n    destination: {type: directory, path: opt/machine-id}\n  - type: ssh-multiplexer\n    destination: {type: directory, path: mux}\n    identity: my-service-123\n";
    // Debug mode from the file this time (`debug: true`), not -d.
    let dir = TempDir::new("pprof-threads");
    let cfg = config_text(dir.path(), "debug: true\n", svc);
    let t = Tbot::start(dir, &cfg, &[]);
    let r = t.get("/debug/pprof/threads");
    assert_eq!(r.status, 200);
    for name in [
        "heartbeat",
        "my-service-123",
        "identity-opt-machine-id",
        "ssh-multiplexer-mux",
        "diag-http",
        "diag-front",
        "diag-render",
        "health",
    ] {
        assert!(
            r.body
                .lines()
                .any(|l| l.split_whitespace().last() == Some(name)),
            "no thread {name}:\n{}",
            r.body
        );
    }
    let j = t.get("/debug/pprof/threads?format=json").json();
    let names: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for name in [
        "my-service-123",
        "identity-opt-machine-id",
        "ssh-multiplexer-mux",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert!(j[0]["tid"].is_u64() && j[0]["state"].is_string() && j[0]["cpu_seconds"].is_f64());
}

#[test]
fn index_cmdline_and_bad_parameters() {
    let t = start_debug("");
    let r = t.get("/debug/pprof/");
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    for ep in ["profile", "flamegraph", "threads", "cmdline"] {
        assert!(
            r.body.contains(&format!("/debug/pprof/{ep}")),
            "index lacks {ep}"
        );
    }
    let r = t.get("/debug/pprof/cmdline");
    assert_eq!(r.status, 200);
    let args: Vec<&str> = r.body.split('\0').collect();
    assert!(
        args[0].ends_with("tbot") && args.contains(&"start") && args.contains(&"-d"),
        "{args:?}"
    );
    for bad in ["0", "301", "-1", "abc", "1.5", ""] {
        let r = t.get(&format!("/debug/pprof/profile?seconds={bad}"));
        assert_eq!(r.status, 400, "seconds={bad}");
        assert!(r.body.contains("300"), "{}", r.body);
    }
    assert_eq!(t.get("/debug/pprof/nope").status, 404);
}
