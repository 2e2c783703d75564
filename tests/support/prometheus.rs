//! A real Prometheus for the tests (Debian's `prometheus` package): started
//! on a free loopback port with a temp config and storage, killed by PID on
//! drop, and asked instant queries over its HTTP API.
//!
//! Include it from an integration test that also has `mod common;`:
//!
//! ```ignore
//! #[path = "support/prometheus.rs"]
//! mod prometheus;
//! ```

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::util::free_port;
use crate::common::{request_timeout, TempDir};

/// A running Prometheus, killed by PID on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `prometheus` can run here (say why when not).
pub fn installed() -> bool {
    let ok = Command::new("prometheus").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: prometheus is not installed (Debian package `prometheus`)");
    }
    ok
}

/// Starts Prometheus with `config` (its YAML) and its storage in `dir`.
pub fn start(dir: &TempDir, config: &str) -> Prometheus {
    let cfg = dir.write("prometheus.yml", config);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus { child, addr }
}

impl Prometheus {
    /// `value[1]` of each result of the instant query `q` (URL-encoded),
    /// or None if it was not answered.
    pub fn query(&self, q: &str) -> Option<Vec<String>> {
        let r = request_timeout(
            self.addr,
            format!("GET /api/v1/query?query={q} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(5),
        )
        .ok()?;
        if r.status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        Some(
            v["data"]["result"]
                .as_array()?
                .iter()
                .filter_map(|s| s["value"][1].as_str().map(str::to_string))
                .collect(),
        )
    }
}
