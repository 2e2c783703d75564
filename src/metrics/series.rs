//! The series tbot keeps per service (`tbot_service_health`, the
//! `tbot_task_*` family, and per identity output the
//! `tbot_identity_certificate_*_timestamp_seconds` gauges),
//! held in one table of plain numbers and written straight into the text
//! exposition format 0.0.4.
//!
//! At 1000 services these are about 20 000 samples (the histogram alone is
//! 15 lines a service). Kept as prometheus-crate vectors, every scrape
//! cloned each series into a protobuf family (its labels too), sorted the
//! families' metrics and encoded them again: most of a 12-24 ms scrape,
//! and about 1 KiB per series of descriptors and label copies. Here a
//! scrape walks the table once, in the order the crate's `Registry::gather`
//! gives (families by name, samples by label values in label-name order),
//! and writes the same bytes the crate's `TextEncoder` wrote (the unit
//! test compares both).

use std::collections::BTreeMap;
use std::io::Write;

use crate::health::status::Status;

/// `tbot_task_iteration_duration_seconds`' upper bounds, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The families of the table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    ServiceHealth,
    TaskIterations,
    TaskIterationsFailed,
    TaskIterationDuration,
    CertificateExpiry,
    CertificateValidAfter,
    CertificateRenewal,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::ServiceHealth => "tbot_service_health",
            Family::TaskIterations => "tbot_task_iterations_total",
            Family::TaskIterationsFailed => "tbot_task_iterations_failed_total",
            Family::TaskIterationDuration => "tbot_task_iteration_duration_seconds",
            Family::CertificateExpiry => "tbot_identity_certificate_expiry_timestamp_seconds",
            Family::CertificateValidAfter => {
                "tbot_identity_certificate_valid_after_timestamp_seconds"
            }
            Family::CertificateRenewal => "tbot_identity_certificate_renewal_timestamp_seconds",
        }
    }

    /// The HELP text (none needs escaping).
    pub fn help(self) -> &'static str {
        match self {
            Family::ServiceHealth => {
                "Health of each tbot service: 1 for its current status, 0 for the others."
            }
            Family::TaskIterations => "Iterations of a service's renewal loop.",
            Family::TaskIterationsFailed => "Iterations of a service's renewal loop that failed.",
            Family::TaskIterationDuration => {
                "Time taken by one iteration of a service's renewal loop."
            }
            Family::CertificateExpiry => {
                "When the certificate an identity output last wrote expires (its valid_before), in Unix seconds."
            }
            Family::CertificateValidAfter => {
                "When the certificate an identity output last wrote became valid (its valid_after, backdated 60 s for clock skew), in Unix seconds."
            }
            Family::CertificateRenewal => {
                "When tbot is due to renew the certificate an identity output last wrote (renewal_interval after it wrote it), in Unix seconds."
            }
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Family::ServiceHealth
            | Family::CertificateExpiry
            | Family::CertificateValidAfter
            | Family::CertificateRenewal => "gauge",
            Family::TaskIterations | Family::TaskIterationsFailed => "counter",
            Family::TaskIterationDuration => "histogram",
        }
    }
}

/// Every family of the table, sorted by name (as the registry writes them).
pub fn families() -> [Family; 7] {
    let mut all = [
        Family::ServiceHealth,
        Family::TaskIterations,
        Family::TaskIterationsFailed,
        Family::TaskIterationDuration,
        Family::CertificateExpiry,
        Family::CertificateValidAfter,
        Family::CertificateRenewal,
    ];
    all.sort_by_key(|f| f.name());
    all
}

/// The times of the certificate an identity output last wrote, in Unix
/// seconds: what the expiry alerts need to judge it against its own
/// lifetime (`valid_before - valid_after`) and tbot's renewal schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CertificateTimes {
    /// Its `valid_after` (tbot backdates it by `issuer::BACKDATE`).
    pub valid_after: f64,
    /// Its `valid_before`.
    pub valid_before: f64,
    /// When tbot is due to replace it: the write plus `renewal_interval`.
    pub renew_at: f64,
}

/// One task of one service: its counters and duration histogram.
#[derive(Default)]
struct Task {
    iterations: u64,
    failed: u64,
    /// Observations per bucket (not cumulative); past the last bound only
    /// in `count`.
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The per-service series. Services by name, tasks by task name then
/// service (the `name` label sorts before `service`).
#[derive(Default)]
pub struct Table {
    health: BTreeMap<String, (String, Status)>,
    certificates: BTreeMap<String, CertificateTimes>,
    tasks: BTreeMap<String, BTreeMap<String, Task>>,
}

impl Table {
    /// `service` (of type `kind`) is now `status`.
    pub fn set_health(&mut self, service: &str, kind: &str, status: Status) {
        match self.health.get_mut(service) {
            Some(row) => {
                if row.0 != kind {
                    row.0 = kind.to_string();
                }
                row.1 = status;
            }
            None => {
                self.health
                    .insert(service.to_string(), (kind.to_string(), status));
            }
        }
    }

    pub fn remove_health(&mut self, service: &str) {
        self.health.remove(service);
    }

    pub fn set_certificate(&mut self, service: &str, times: CertificateTimes) {
        match self.certificates.get_mut(service) {
            Some(v) => *v = times,
            None => {
                self.certificates.insert(service.to_string(), times);
            }
        }
    }

    /// When `service`'s certificate expires, in Unix seconds, if it wrote one.
    pub fn expiry(&self, service: &str) -> Option<f64> {
        self.certificates.get(service).map(|c| c.valid_before)
    }

    pub fn remove_certificate(&mut self, service: &str) {
        self.certificates.remove(service);
    }

    /// Calls `f` with the series of `service`'s `task`, made (at 0) if new.
    fn with_task(&mut self, service: &str, task: &str, f: impl FnOnce(&mut Task)) {
        if !self.tasks.contains_key(task) {
            self.tasks.insert(task.to_string(), BTreeMap::new());
        }
        if let Some(by_service) = self.tasks.get_mut(task) {
            if !by_service.contains_key(service) {
                by_service.insert(service.to_string(), Task::default());
            }
            if let Some(t) = by_service.get_mut(service) {
                f(t);
            }
        }
    }

    /// Makes the series of `service`'s `task` exist (at 0 until recorded).
    pub fn touch_task(&mut self, service: &str, task: &str) {
        self.with_task(service, task, |_| {});
    }

    /// One iteration of `service`'s `task` that took `seconds`, failed or
    /// not (as the crate's histogram: the first bucket whose bound is at
    /// least `seconds` counts it).
    pub fn record_task(&mut self, service: &str, task: &str, failed: bool, seconds: f64) {
        self.with_task(service, task, |t| {
            t.iterations += 1;
            t.failed += u64::from(failed);
            if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
                t.buckets[i] += 1;
            }
            t.count += 1;
            t.sum += seconds;
        });
    }

    /// Drops every task series labelled `service`.
    pub fn remove_tasks(&mut self, service: &str) {
        self.tasks.retain(|_, by_service| {
            by_service.remove(service);
            !by_service.is_empty()
        });
    }

    /// Whether `family` has no sample now (the registry leaves such a
    /// family out, HELP and TYPE included).
    fn is_empty(&self, family: Family) -> bool {
        match family {
            Family::ServiceHealth => self.health.is_empty(),
            Family::CertificateExpiry
            | Family::CertificateValidAfter
            | Family::CertificateRenewal => self.certificates.is_empty(),
            _ => self.tasks.is_empty(),
        }
    }

    /// Writes `family` (HELP, TYPE, samples) to `out`; nothing when it has
    /// no sample.
    pub fn write(&self, family: Family, out: &mut Vec<u8>) {
        if self.is_empty(family) {
            return;
        }
        let name = family.name();
        let _ = writeln!(out, "# HELP {name} {}", family.help());
        let _ = writeln!(out, "# TYPE {name} {}", family.kind());
        // Each series' `name{labels` is built once and repeated for its
        // lines; values go through itoa, not core::fmt (at 1000 services
        // this is ~20 000 lines a scrape).
        let mut head = Vec::with_capacity(160);
        match family {
            Family::ServiceHealth => self.write_health(out, &mut head),
            Family::CertificateExpiry
            | Family::CertificateValidAfter
            | Family::CertificateRenewal => {
                for (service, c) in &self.certificates {
                    let v = match family {
                        Family::CertificateValidAfter => c.valid_after,
                        Family::CertificateRenewal => c.renew_at,
                        _ => c.valid_before,
                    };
                    head.clear();
                    label(&mut head, "{service", service);
                    sample(out, [name, ""], &head, "", Value::Float(v));
                }
            }
            Family::TaskIterationDuration => self.write_durations(out, &mut head),
            Family::TaskIterations | Family::TaskIterationsFailed => {
                let failed = family == Family::TaskIterationsFailed;
                self.each_task(|task, service, t| {
                    task_labels(&mut head, task, service);
                    let v = if failed { t.failed } else { t.iterations };
                    sample(out, [name, ""], &head, "", Value::Int(v));
                });
            }
        }
    }

    fn each_task(&self, mut f: impl FnMut(&str, &str, &Task)) {
        for (task, by_service) in &self.tasks {
            for (service, t) in by_service {
                f(task, service, t);
            }
        }
    }

    fn write_health(&self, out: &mut Vec<u8>, head: &mut Vec<u8>) {
        let mut statuses = Status::ALL;
        statuses.sort_by_key(|s| s.as_str());
        for (service, (kind, status)) in &self.health {
            for s in statuses {
                head.clear();
                label(head, "{service", service);
                label(head, ",status", s.as_str());
                label(head, ",type", kind);
                let v = Value::Int(u64::from(s == *status));
                sample(out, [Family::ServiceHealth.name(), ""], head, "", v);
            }
        }
    }

    fn write_durations(&self, out: &mut Vec<u8>, head: &mut Vec<u8>) {
        let name = Family::TaskIterationDuration.name();
        let les = DURATION_BUCKETS.map(|b| format!(",le=\"{b}\""));
        self.each_task(|task, service, t| {
            task_labels(head, task, service);
            let mut cumulative = 0;
            for (le, n) in les.iter().zip(t.buckets) {
                cumulative += n;
                sample(out, [name, "_bucket"], head, le, Value::Int(cumulative));
            }
            let count = Value::Int(t.count);
            sample(out, [name, "_bucket"], head, ",le=\"+Inf\"", count);
            sample(out, [name, "_sum"], head, "", Value::Float(t.sum));
            sample(out, [name, "_count"], head, "", count);
        });
    }
}

#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One line: `<name><suffix><head><tail>} <value>\n`. A float is written
/// as Rust's `Display` writes it (what the crate's encoder used): an
/// integral one without a fraction, so through itoa when it is exact.
fn sample(out: &mut Vec<u8>, [name, suffix]: [&str; 2], head: &[u8], tail: &str, v: Value) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(b"} ");
    let mut digits = itoa::Buffer::new();
    match v {
        Value::Int(n) => out.extend_from_slice(digits.format(n).as_bytes()),
        // Below 2^53 an integral f64 is exactly its i64; -0.0 keeps its sign.
        Value::Float(f)
            if f.fract() == 0.0 && f.abs() < 9.0e15 && f.to_bits() != (-0.0f64).to_bits() =>
        {
            out.extend_from_slice(digits.format(f as i64).as_bytes())
        }
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
    }
    out.push(b'\n');
}

/// `{name="<task>",service="<service>"` into `head` (cleared first).
fn task_labels(head: &mut Vec<u8>, task: &str, service: &str) {
    head.clear();
    label(head, "{name", task);
    label(head, ",service", service);
}

/// `<lead>="<value>"`, the value escaped as the text format asks
/// (backslash, double quote and line feed as `\\`, `\"`, `\n`).
fn label(out: &mut Vec<u8>, lead: &str, value: &str) {
    out.extend_from_slice(lead.as_bytes());
    out.extend_from_slice(b"=\"");
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{
        Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
        TextEncoder,
    };

    /// The same series kept the way tbot kept them before: prometheus
    /// vectors on a registry, encoded by the crate.
    struct Crate {
        r: Registry,
        health: IntGaugeVec,
        iterations: IntCounterVec,
        failed: IntCounterVec,
        duration: HistogramVec,
        /// valid_before, valid_after, renew_at.
        certificate: [GaugeVec; 3],
    }

    impl Crate {
        fn new() -> Crate {
            let r = Registry::new();
            let opts = |f: Family| Opts::new(f.name(), f.help());
            let health =
                IntGaugeVec::new(opts(Family::ServiceHealth), &["service", "type", "status"])
                    .unwrap();
            let task = ["service", "name"];
            let iterations = IntCounterVec::new(opts(Family::TaskIterations), &task).unwrap();
            let failed = IntCounterVec::new(opts(Family::TaskIterationsFailed), &task).unwrap();
            let d = Family::TaskIterationDuration;
            let duration = HistogramVec::new(
                HistogramOpts::new(d.name(), d.help()).buckets(DURATION_BUCKETS.to_vec()),
                &task,
            )
            .unwrap();
            let certificate = [
                Family::CertificateExpiry,
                Family::CertificateValidAfter,
                Family::CertificateRenewal,
            ]
            .map(|f| GaugeVec::new(opts(f), &["service"]).unwrap());
            r.register(Box::new(health.clone())).unwrap();
            r.register(Box::new(iterations.clone())).unwrap();
            r.register(Box::new(failed.clone())).unwrap();
            r.register(Box::new(duration.clone())).unwrap();
            for g in &certificate {
                r.register(Box::new(g.clone())).unwrap();
            }
            Crate {
                r,
                health,
                iterations,
                failed,
                duration,
                certificate,
            }
        }

        fn set_health(&self, service: &str, kind: &str, status: Status) {
            for s in Status::ALL {
                self.health
                    .with_label_values(&[service, kind, s.as_str()])
                    .set(i64::from(s == status));
            }
        }

        fn record(&self, service: &str, task: &str, failed: bool, seconds: f64) {
            let l = [service, task];
            self.iterations.with_label_values(&l).inc();
            self.failed.with_label_values(&l).inc_by(u64::from(failed));
            self.duration.with_label_values(&l).observe(seconds);
        }

        fn text(&self) -> String {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&self.r.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        }
    }

    fn text(t: &Table) -> String {
        let mut out = Vec::new();
        for f in families() {
            t.write(f, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_the_bytes_the_crates_encoder_wrote() {
        let (ours, theirs) = (&mut Table::default(), Crate::new());
        assert_eq!(text(ours), "");
        assert_eq!(theirs.text(), "");
        // Names that sort differently as strings and as numbers, labels
        // that need escaping, several tasks, every bucket and past the last.
        let services = ["id-1", "id-10", "id-2", "b\\\"q\nx", "z"];
        for (i, s) in services.iter().enumerate() {
            let kind = if i % 2 == 0 { "identity" } else { "heartbeat" };
            ours.set_health(s, kind, Status::ALL[i % 3]);
            theirs.set_health(s, kind, Status::ALL[i % 3]);
            for task in ["output-renewal", "ca-check"] {
                ours.touch_task(s, task);
                theirs.record(s, task, false, 0.0);
                theirs.iterations.with_label_values(&[s, task]).reset();
                theirs.duration.remove_label_values(&[s, task]).unwrap();
                theirs.duration.with_label_values(&[s, task]);
            }
            for (j, secs) in [0.001, 0.005, 0.0051, 0.3, 7.0, 31.0, 1e-9, 29.99]
                .into_iter()
                .enumerate()
                .skip(i)
            {
                ours.record_task(s, "output-renewal", j % 3 == 0, secs);
                theirs.record(s, "output-renewal", j % 3 == 0, secs);
            }
            let times = CertificateTimes {
                valid_before: 1_796_022_633.0 + i as f64 * 0.25,
                valid_after: 1_796_018_973.0 - i as f64,
                renew_at: 1_796_020_233.5,
            };
            ours.set_certificate(s, times);
            let values = [times.valid_before, times.valid_after, times.renew_at];
            for (g, v) in theirs.certificate.iter().zip(values) {
                g.with_label_values(&[s]).set(v);
            }
        }
        assert_eq!(text(ours), theirs.text());
        // A status change, a type change, a removal.
        ours.set_health("z", "identity", Status::Healthy);
        theirs.set_health("z", "identity", Status::Healthy);
        ours.remove_health("id-2");
        ours.set_health("id-2", "ssh-multiplexer", Status::Unhealthy);
        for s in Status::ALL {
            let _ = theirs
                .health
                .remove_label_values(&["id-2", "identity", s.as_str()]);
        }
        theirs.set_health("id-2", "ssh-multiplexer", Status::Unhealthy);
        ours.remove_tasks("id-10");
        ours.remove_certificate("id-10");
        ours.remove_health("id-10");
        for task in ["output-renewal", "ca-check"] {
            theirs
                .iterations
                .remove_label_values(&["id-10", task])
                .unwrap();
            theirs.failed.remove_label_values(&["id-10", task]).unwrap();
            theirs
                .duration
                .remove_label_values(&["id-10", task])
                .unwrap();
        }
        for g in &theirs.certificate {
            g.remove_label_values(&["id-10"]).unwrap();
        }
        for s in Status::ALL {
            let _ = theirs
                .health
                .remove_label_values(&["id-10", "heartbeat", s.as_str()]);
        }
        let now = text(ours);
        assert_eq!(now, theirs.text());
        assert!(!now.contains("id-10"), "{now}");
        assert!(now.contains("tbot_task_iteration_duration_seconds_bucket{name=\"output-renewal\",service=\"z\",le=\"+Inf\"} 4\n"), "{now}");
    }
}
