//! Every Prometheus metric tbot exports, on one registry of its own.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::health::status::Status;

pub mod process;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Metrics {
    registry: Registry,
    service_health: IntGaugeVec,
    pub task_iterations: IntCounterVec,
    pub task_iterations_failed: IntCounterVec,
    pub task_iteration_duration: HistogramVec,
    pub mux_started: IntCounter,
    pub mux_handled: IntCounterVec,
    pub mux_in_flight: IntGauge,
    certificate_expiry: GaugeVec,
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
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let service_health = int_gauge_vec(
            &r,
            "tbot_service_health",
            "Health of each tbot service: 1 for its current status, 0 for the others.",
            &["service", "type", "status"],
        )?;
        let task_iterations = int_counter_vec(
            &r,
            "tbot_task_iterations_total",
            "Iterations of a service's renewal loop.",
            &["service", "name"],
        )?;
        let task_iterations_failed = int_counter_vec(
            &r,
            "tbot_task_iterations_failed_total",
            "Iterations of a service's renewal loop that failed.",
            &["service", "name"],
        )?;
        let task_iteration_duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "tbot_task_iteration_duration_seconds",
                    "Time taken by one iteration of a service's renewal loop.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["service", "name"],
            )?,
        )?;
        let (mux_started, mux_handled, mux_in_flight) = mux_metrics(&r)?;
        let certificate_expiry = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "tbot_identity_certificate_expiry_timestamp_seconds",
                    "When the certificate an identity output last wrote expires (its valid_before), in Unix seconds.",
                ),
                &["service"],
            )?,
        )?;
        let (reload_successful, reload_success_timestamp) = reload_metrics(&r)?;
        Ok(Metrics {
            registry: r,
            certificate_expiry,
            reload_successful,
            reload_success_timestamp,
            service_health,
            task_iterations,
            task_iterations_failed,
            task_iteration_duration,
            mux_started,
            mux_handled,
            mux_in_flight,
        })
    }

    #[cfg(test)]
    pub fn new() -> Metrics {
        Metrics::try_new().expect("static metric definitions are valid")
    }

    pub fn set_service_health(&self, service: &str, kind: &str, status: Status) {
        for s in Status::ALL {
            self.service_health
                .with_label_values(&[service, kind, s.as_str()])
                .set(i64::from(s == status));
        }
    }

    /// Records the `valid_before` (Unix seconds) of the certificate the
    /// identity output `service` wrote last.
    pub fn set_certificate_expiry(&self, service: &str, unix_seconds: f64) {
        self.certificate_expiry
            .with_label_values(&[service])
            .set(unix_seconds);
    }

    /// Drops `service`'s expiry series (the service stopped or was removed).
    pub fn remove_certificate_expiry(&self, service: &str) {
        let _ = self.certificate_expiry.remove_label_values(&[service]);
    }

    /// Drops the `tbot_service_health` series of `service` (every type and status).
    pub fn remove_service_health(&self, service: &str) {
        remove_series_of(&self.service_health, service, |labels| {
            let _ = self.service_health.remove_label_values(labels);
        });
    }

    /// Drops every series labelled `service="NAME"`: for a service a reload
    /// removed, so that nothing stale stays in `/metrics`.
    pub fn remove_service(&self, service: &str) {
        self.remove_service_health(service);
        self.remove_certificate_expiry(service);
        remove_series_of(&self.task_iterations, service, |l| {
            let _ = self.task_iterations.remove_label_values(l);
        });
        remove_series_of(&self.task_iterations_failed, service, |l| {
            let _ = self.task_iterations_failed.remove_label_values(l);
        });
        remove_series_of(&self.task_iteration_duration, service, |l| {
            let _ = self.task_iteration_duration.remove_label_values(l);
        });
    }

    /// The text exposition format 0.0.4.
    pub fn render(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| format!("encoding metrics: {e}"))?;
        Ok(out)
    }
}

/// Calls `remove` with the label values (in the vector's label order) of
/// every series of `vec` whose `service` label is `service`.
fn remove_series_of(vec: &impl Collector, service: &str, remove: impl Fn(&[&str])) {
    let desc_labels: Vec<String> = vec
        .desc()
        .first()
        .map(|d| d.variable_labels.clone())
        .unwrap_or_default();
    for family in vec.collect() {
        for m in family.get_metric() {
            let pairs = m.get_label();
            if !pairs
                .iter()
                .any(|p| p.name() == "service" && p.value() == service)
            {
                continue;
            }
            let values: Vec<&str> = desc_labels
                .iter()
                .filter_map(|name| {
                    pairs
                        .iter()
                        .find(|p| p.name() == name.as_str())
                        .map(|p| p.value())
                })
                .collect();
            remove(&values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_expiry_is_set_per_service_and_removed_with_it() {
        let m = Metrics::new();
        m.set_certificate_expiry("a", 1_796_022_633.0);
        m.set_certificate_expiry("b", 1_796_000_000.0);
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        assert!(text.contains(
            "tbot_identity_certificate_expiry_timestamp_seconds{service=\"a\"} 1796022633\n"
        ));
        m.remove_certificate_expiry("a");
        m.remove_certificate_expiry("never-set");
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        assert!(!text.contains("service=\"a\""), "{text}");
        assert!(text.contains("{service=\"b\"} 1796000000\n"), "{text}");
    }
}
