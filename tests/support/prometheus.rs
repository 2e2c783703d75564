//! A real Prometheus (Debian's `prometheus` package) for a test: on a free
//! loopback port, with its configuration and storage in a temp directory,
//! killed by PID on drop; instant queries over its HTTP API.
//!
//! Include it from an integration test that also has `mod common;`:
//!
//! ```ignore
//! #[path = "support/prometheus.rs"]
//! mod prometheus;
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::util::free_port;
use crate::common::{request_timeout, TempDir};

/// Whether `prometheus` cannot be run here; says that the test skips.
pub fn missing() -> bool {
    let installed = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("skipped: prometheus is not installed (Debian package `prometheus`)");
    }
    !installed
}

/// One series of a query's answer: its labels and its value.
pub type Sample = (BTreeMap<String, String>, String);

pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    /// Its configuration and storage.
    pub dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` as its `prometheus.yml` and `files`
    /// (name, text) beside it (rule files, for example).
    pub fn start(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = TempDir::new("prometheus-data");
        let cfg = dir.write("prometheus.yml", config);
        for (name, text) in files {
            dir.write(name, text);
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { addr, child, dir }
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The series an instant query answers now, or None if it did not
    /// answer (not up yet, or an error).
    pub fn query(&self, q: &str) -> Option<Vec<Sample>> {
        let v = self.api(q)?;
        let samples = v["data"]["result"]
            .as_array()?
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1].as_str().unwrap_or("").to_string();
                (labels, value)
            })
            .collect();
        Some(samples)
    }

    /// The raw samples a range-vector query (`metric{...}[30s]`) answers
    /// now, series by series: (scrape time in Unix seconds, value), oldest
    /// first; None if it did not answer.
    #[allow(dead_code)] // tests/alerts_live.rs's; other includers need not use it
    pub fn range(&self, q: &str) -> Option<Vec<Vec<(f64, f64)>>> {
        let v = self.api(q)?;
        let series = v["data"]["result"].as_array()?;
        let samples = series
            .iter()
            .map(|s| {
                s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let at = p[0].as_f64()?;
                        let value = p[1].as_str()?.parse().ok()?;
                        Some((at, value))
                    })
                    .collect()
            })
            .collect();
        Some(samples)
    }

    /// Just the values of [`Prometheus::query`].
    pub fn values(&self, q: &str) -> Option<Vec<String>> {
        self.query(q)
            .map(|v| v.into_iter().map(|(_, value)| value).collect())
    }

    /// The JSON answer of `/api/v1/query?query=q` now, or None if it did
    /// not answer 200 with JSON.
    fn api(&self, q: &str) -> Option<serde_json::Value> {
        let raw = format!(
            "GET /api/v1/query?query={} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            encode(q)
        );
        let r = request_timeout(self.addr, raw.as_bytes(), Duration::from_secs(5)).ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_str(&r.body).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `q` percent-encoded for a query string (everything but letters and
/// digits).
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
