//! Small std-only helpers shared by the integration tests: declared from
//! `common/mod.rs` (`common::util`), and included by `support/sshd.rs` with
//! `#[path]` so that the sshd harness (which the unit tests include too)
//! needs nothing else.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, close).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// `read`, again when a signal interrupts it. A socket read with a timeout
/// (SO_RCVTIMEO) fails with EINTR on any interruption, not only on a signal
/// with a handler: seen on this project's test machines, where nothing in
/// the test process handles signals.
pub fn read_retrying(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The current user's login name (`id -un`).
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8(out.stdout)
        .expect("user name is UTF-8")
        .trim()
        .to_string()
}

/// xorshift64*: a small deterministic generator (fuzz bytes, kill points).
/// The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A metric's name and labels.
pub type Series = (String, BTreeMap<String, String>);

/// A parsed Prometheus text exposition (`/metrics`): series → value.
/// Comments are skipped; label values must not contain `",`.
pub struct Metrics(pub BTreeMap<Series, f64>);

impl Metrics {
    pub fn parse(body: &str) -> Metrics {
        let mut m = BTreeMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in metrics line {line:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("metrics line {line:?}: {e}"));
            m.insert(parse_series(series), value);
        }
        Metrics(m)
    }

    /// The value of `name` with exactly `labels` (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0.get(&(name.to_string(), labels)).copied()
    }

    /// The value of a sample written as in the exposition:
    /// `name` or `name{k="v",...}`.
    pub fn sample(&self, sample: &str) -> Option<f64> {
        self.0.get(&parse_series(sample)).copied()
    }
}

/// `name{k="v",k2="v2"}` → (name, {k: v, k2: v2}).
fn parse_series(series: &str) -> Series {
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("bad label {kv:?} in {series:?}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    (name.to_string(), labels)
}
