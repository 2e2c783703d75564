//! Every Prometheus metric tbot exports, on one registry of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::health::status::Status;

pub mod process;
pub mod series;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// tbot's metrics: process-wide ones on a prometheus registry, and the
/// series kept per service in a [`series::Table`] of their own.
pub struct Metrics {
    registry: Registry,
    /// `tbot_service_health`, `tbot_task_*` and
    /// `tbot_identity_certificate_*_timestamp_seconds`.
    series: Mutex<series::Table>,
    /// The length of the last scrape: the next one's buffer starts that
    /// large (no regrowth and copying while writing).
    last_len: AtomicUsize,
    pub mux_started: IntCounter,
    pub mux_handled: IntCounterVec,
    pub mux_in_flight: IntGauge,
    /// `tbot_config_last_reload_successful`, as Prometheus'
    /// `prometheus_config_last_reload_successful`: 1 after the start and
    /// after a reload that applied, 0 after one that failed.
    pub reload_successful: IntGauge,
    /// `tbot_config_last_reload_success_timestamp_seconds`: Unix time of the
    /// last configuration that applied (the start counts).
    pub reload_success_timestamp: Gauge,
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int_gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn int_counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// The SSH multiplexer's request counters: started, handled (by status)
/// and in flight.
fn mux_metrics(r: &Registry) -> prometheus::Result<(IntCounter, IntCounterVec, IntGauge)> {
    let started = register(
        r,
        IntCounter::new(
            "tbot_ssh_multiplexer_requests_started_total",
            "Connections the SSH multiplexer has accepted on its socket, including those it refused.",
        )?,
    )?;
    let handled = int_counter_vec(
        r,
        "tbot_ssh_multiplexer_requests_handled_total",
        "Connections the SSH multiplexer has finished: OK once a relay to the target ended, ERROR if refused or the target was unreachable.",
        &["status"],
    )?;
    // Both outcomes exist from the start, so rate() works before the first error.
    handled.with_label_values(&["OK"]);
    handled.with_label_values(&["ERROR"]);
    let in_flight = register(
        r,
        IntGauge::new(
            "tbot_ssh_multiplexer_requests_in_flight",
            "Connections the SSH multiplexer is handling now (reading the target, dialing or relaying).",
        )?,
    )?;
    Ok((started, handled, in_flight))
}

/// Whether the last configuration load applied, and when one last did (the
/// start counts as one that applied).
fn reload_metrics(r: &Registry) -> prometheus::Result<(IntGauge, Gauge)> {
    let successful = register(
        r,
        IntGauge::new(
            "tbot_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful (1) or not (0).",
        )?,
    )?;
    successful.set(1);
    let timestamp = register(
        r,
        Gauge::new(
            "tbot_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration load (start or reload), in seconds since the Unix epoch.",
        )?,
    )?;
    timestamp.set(crate::infra::timefmt::unix_now());
    Ok((successful, timestamp))
}

impl Metrics {
    /// Every metric, registered on a new registry. Errors: a definition
    /// prometheus refuses (a bad name or label), which tests rule out.
    pub fn try_new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        r.register(Box::new(crate::metrics::process::ProcessCollector::new()?))?;

        let info = int_gauge_vec(
            &r,
            "tbot_info",
            "Information about this tbot build; always 1.",
            &["version", "revision", "tree", "rustc", "target"],
        )?;
        {
            use crate::build_info as b;
            info.with_label_values(&[b::VERSION, b::REVISION, b::TREE, b::RUSTC, b::TARGET])
                .set(1);
        }
        let (mux_started, mux_handled, mux_in_flight) = mux_metrics(&r)?;
        let (reload_successful, reload_success_timestamp) = reload_metrics(&r)?;
        Ok(Metrics {
            registry: r,
            series: Mutex::default(),
            last_len: AtomicUsize::new(0),
            reload_successful,
            reload_success_timestamp,
            mux_started,
            mux_handled,
            mux_in_flight,
        })
    }

    #[cfg(test)]
    pub fn new() -> Metrics {
        Metrics::try_new().expect("static metric definitions are valid")
    }

    fn series(&self) -> MutexGuard<'_, series::Table> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `tbot_service_health{service, type}`: 1 for `status`, 0 for the others.
    pub fn set_service_health(&self, service: &str, kind: &str, status: Status) {
        self.series().set_health(service, kind, status);
    }

    /// Records the times (Unix seconds) of the certificate the identity
    /// output `service` wrote last: `..._expiry_`, `..._valid_after_` and
    /// `..._renewal_timestamp_seconds`.
    pub fn set_certificate(&self, service: &str, times: series::CertificateTimes) {
        self.series().set_certificate(service, times);
    }

    /// When the certificate `service` last wrote expires (Unix seconds), if
    /// it is an identity output that wrote one.
    pub fn certificate_expiry(&self, service: &str) -> Option<f64> {
        self.series().expiry(service)
    }

    /// Drops `service`'s certificate series (the service stopped or was
    /// removed).
    pub fn remove_certificate(&self, service: &str) {
        self.series().remove_certificate(service);
    }

    /// Drops the `tbot_service_health` series of `service` (every type and status).
    pub fn remove_service_health(&self, service: &str) {
        self.series().remove_health(service);
    }

    /// Makes the `tbot_task_*` series of `service`'s `task` exist, at 0.
    pub fn task_started(&self, service: &str, task: &str) {
        self.series().touch_task(service, task);
    }

    /// Counts one iteration of `service`'s `task` that took `seconds`.
    pub fn task_finished(&self, service: &str, task: &str, failed: bool, seconds: f64) {
        self.series().record_task(service, task, failed, seconds);
    }

    /// Drops every series labelled `service="NAME"`: for a service a reload
    /// removed, so that nothing stale stays in `/metrics`.
    pub fn remove_service(&self, service: &str) {
        let mut t = self.series();
        t.remove_health(service);
        t.remove_certificate(service);
        t.remove_tasks(service);
    }

    /// The text exposition format 0.0.4: the registry's families and the
    /// per-service ones, all sorted by name, as `Registry::gather` sorts.
    pub fn render(&self) -> Result<Vec<u8>, String> {
        let gathered = self.registry.gather();
        let mut out = Vec::with_capacity(self.last_len.load(Ordering::Relaxed) + 4096);
        let encode = |family: &prometheus::proto::MetricFamily, out: &mut Vec<u8>| {
            TextEncoder::new()
                .encode(std::slice::from_ref(family), out)
                .map_err(|e| format!("encoding metrics: {e}"))
        };
        {
            let table = self.series();
            let mut ours = series::families().into_iter().peekable();
            for family in &gathered {
                while let Some(f) = ours.next_if(|f| f.name() < family.name()) {
                    table.write(f, &mut out);
                }
                encode(family, &mut out)?;
            }
            for f in ours {
                table.write(f, &mut out);
            }
        }
        self.last_len.store(out.len(), Ordering::Relaxed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_times_are_set_per_service_and_removed_with_it() {
        let m = Metrics::new();
        let at = |valid_before: f64| series::CertificateTimes {
            valid_after: valid_before - 3660.0,
            valid_before,
            renew_at: valid_before - 2400.0,
        };
        m.set_certificate("a", at(1_796_022_633.0));
        m.set_certificate("b", at(1_796_000_000.0));
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        for line in [
            "tbot_identity_certificate_expiry_timestamp_seconds{service=\"a\"} 1796022633\n",
            "tbot_identity_certificate_valid_after_timestamp_seconds{service=\"a\"} 1796018973\n",
            "tbot_identity_certificate_renewal_timestamp_seconds{service=\"a\"} 1796020233\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
        m.remove_certificate("a");
        m.remove_certificate("never-set");
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        assert!(!text.contains("service=\"a\""), "{text}");
        assert!(text.contains("{service=\"b\"} 1796000000\n"), "{text}");
    }
}
