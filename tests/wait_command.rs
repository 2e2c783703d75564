//! `tbot wait` against a running bot.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn returns_0_once_the_bot_is_ready() {
    let dir = TempDir::new("wait-ok");
    let cfg = config_text(dir.path(), "", "");
    let t = Tbot::start_with(
        dir,
        &cfg,
        &[],
        &[("TBOT_FAILPOINTS", "heartbeat-start=sleep:1500")],
    );
    let addr = t.addr().to_string();
    let t0 = Instant::now();
    let (code, _, err) = run_tbot(
        &["wait", "--diag-addr", &addr, "--timeout", "20s"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "returned before the service reported"
    );
    let (code, _, err) = run_tbot(
        &["wait", "--diag-addr", &addr, "--service", "heartbeat"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn times_out_with_exit_1_naming_what_was_not_ready() {
    let dir = TempDir::new("wait-bad");
    let cfg = config_text(dir.path(), "heartbeat_interval: 200ms\n", "");
    std::fs::write(dir.join("storage"), "a file, so the heartbeat cannot write").unwrap();
    let t = Tbot::start(dir, &cfg, &[]);
    let addr = t.addr().to_string();
    let t0 = Instant::now();
    let (code, _, err) = run_tbot(
        &["wait", "--diag-addr", &addr, "--timeout", "2s"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        t0.elapsed() >= Duration::from_secs(2) && t0.elapsed() < Duration::from_secs(8),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        err.contains("not ready after 2s")
            && err.contains("heartbeat is unhealthy")
            && err.contains("os error"),
        "{err}"
    );

    let (code, _, err) = run_tbot(
        &[
            "wait",
            "--diag-addr",
            &addr,
            "--service",
            "ghost",
            "--timeout",
            "1s",
        ],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("HTTP 404: Service named \"ghost\" not found."),
        "{err}"
    );
}

#[test]
fn retries_until_the_bot_starts() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            run_tbot(
                &["wait", "--diag-addr", &addr, "--timeout", "20s"],
                &[],
                Duration::from_secs(30),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1200));
    let dir = TempDir::new("wait-late");
    let cfg = config_text(dir.path(), "", "");
    let _t = Tbot::start(dir, &cfg, &["--diag-addr", &addr]);
    let (code, _, err) = waiter.join().unwrap();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn gives_up_on_a_bot_that_never_comes() {
    let addr = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let (code, _, err) = run_tbot(
        &["wait", "--diag-addr", &addr, "--timeout", "1s"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}
