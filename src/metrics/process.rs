//! The `process_*` metrics, read from /proc at each scrape.
//!
//! The names, types and help texts are those every Prometheus client
//! exports (Go's included); CPU time and the start time are fractional
//! seconds, as in Go. (The prometheus crate's own collector counts CPU in
//! whole seconds, so a quiet daemon's `rate(process_cpu_seconds_total[5m])`
//! reads 0 with a step now and then; it also pulls in the procfs crate.)
//! `/proc/self/stat` is parsed by [`crate::infra::procstat`], as the thread
//! list of `/debug/pprof/threads` is.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

use crate::infra::procstat;

pub struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_memory: Gauge,
    resident_memory: Gauge,
    start_time: Gauge,
    threads: Gauge,
}

/// The boot time, in seconds since the epoch (`btime` in /proc/stat).
fn boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of /proc/self/stat's
/// times; None if unknown.
fn clock_ticks() -> Option<f64> {
    let v = rustix::param::clock_ticks_per_second();
    (v > 0).then_some(v as f64)
}

impl ProcessCollector {
    pub fn new() -> prometheus::Result<ProcessCollector> {
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))?;
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help));
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )?;
        let resident_memory = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        let threads = gauge("process_threads", "Number of OS threads in the process.")?;
        let mut descs = Vec::new();
        for c in [&cpu as &dyn Collector, &open_fds, &max_fds]
            .into_iter()
            .chain([
                &virtual_memory as &dyn Collector,
                &resident_memory,
                &start_time,
                &threads,
            ])
        {
            descs.extend(c.desc().into_iter().cloned());
        }
        Ok(ProcessCollector {
            descs,
            cpu,
            open_fds,
            max_fds,
            virtual_memory,
            resident_memory,
            start_time,
            threads,
        })
    }

    /// Reads /proc and sets every metric it can; one that cannot be read
    /// keeps its last value (a scrape never fails for it).
    fn update(&self) {
        if let Ok(n) = std::fs::read_dir("/proc/self/fd") {
            // The directory listing holds one descriptor of its own.
            self.open_fds.set(n.count().saturating_sub(1) as f64);
        }
        // Unlimited is RLIM_INFINITY, as the kernel reports it.
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        self.max_fds
            .set(lim.current.unwrap_or(libc::RLIM_INFINITY) as f64);
        let Some(ticks) = clock_ticks() else {
            return;
        };
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| procstat::parse(&t));
        let Some(stat) = stat else {
            return;
        };
        let grown = stat.cpu_ticks as f64 / ticks - self.cpu.get();
        if grown > 0.0 {
            self.cpu.inc_by(grown);
        }
        self.threads.set(stat.threads as f64);
        self.virtual_memory.set(stat.virtual_bytes as f64);
        let page = rustix::param::page_size() as f64;
        self.resident_memory.set(stat.resident_pages as f64 * page);
        if self.start_time.get() == 0.0 {
            if let Some(boot) = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| boot_time(&t))
            {
                self.start_time.set(boot + stat.start_ticks as f64 / ticks);
            }
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        let mut out = Vec::with_capacity(self.descs.len());
        for c in [&self.cpu as &dyn Collector, &self.open_fds, &self.max_fds]
            .into_iter()
            .chain([
                &self.virtual_memory as &dyn Collector,
                &self.resident_memory,
                &self.start_time,
                &self.threads,
            ])
        {
            out.extend(c.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_from_proc_stat() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1700000000.0)
        );
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let c = ProcessCollector::new().unwrap();
        let families = c.collect();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "process_cpu_seconds_total",
                "process_open_fds",
                "process_max_fds",
                "process_virtual_memory_bytes",
                "process_resident_memory_bytes",
                "process_start_time_seconds",
                "process_threads",
            ]
        );
        assert!(c.resident_memory.get() > 0.0);
        assert!(c.threads.get() >= 1.0);
        assert!(c.open_fds.get() >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = c.start_time.get();
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        // Burn some CPU: the counter grows by a fraction of a second.
        let before = c.cpu.get();
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        c.collect();
        assert!(c.cpu.get() > before, "{} then {}", before, c.cpu.get());
    }
}
