//! What every Bulwark binary exports about itself: `bulwark_build_info{version, revision}` and
//! the process's own metrics under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …), read from `/proc` on each
//! scrape; and the text of a scrape that holds them beside the binary's own metrics. The
//! metrics reference page is held against every registry by [`reference`].

pub mod reference;

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Metric, Registry};

/// The version this binary was built as (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit this binary was built from (`git rev-parse --short=12 HEAD` at build time, or
/// `BULWARK_REVISION` when set), `unknown` when neither was there.
pub const REVISION: &str = env!("BULWARK_REVISION");

/// `version (revision)`, what `--version` prints.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BULWARK_REVISION"),
    ")"
);

/// A registry that remembers what was registered in it — every metric's exposed family name
/// and type, whether or not it has a series yet (a scrape leaves out families without one) —
/// so that the metrics reference can be held against it.
#[derive(Debug)]
pub struct Registrar {
    registry: Registry,
    prefix: String,
    registered: BTreeMap<String, String>,
}

impl Registrar {
    /// Metrics named `{prefix}_{name}`.
    pub fn with_prefix(prefix: &str) -> Registrar {
        Registrar {
            registry: Registry::with_prefix(prefix),
            prefix: prefix.to_string(),
            registered: BTreeMap::new(),
        }
    }

    /// As [`Registry::register`].
    pub fn register(
        &mut self,
        name: impl Into<String>,
        help: impl Into<String>,
        metric: impl Metric,
    ) {
        let name = name.into();
        let kind = match metric.metric_type() {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Info => "info",
            MetricType::Unknown => "unknown",
        };
        self.registered
            .insert(format!("{}_{name}", self.prefix), kind.to_string());
        self.registry.register(name, help, metric);
    }

    /// The registry, and every family registered in it with its type.
    pub fn finish(self) -> (Registry, BTreeMap<String, String>) {
        (self.registry, self.registered)
    }
}

/// Registers `build_info{version, revision}` (always 1), named with the registrar's prefix
/// (`bulwark_build_info`).
pub fn register_build_info(registry: &mut Registrar) {
    let info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    info.get_or_create(&vec![("version", VERSION), ("revision", REVISION)])
        .set(1);
    registry.register(
        "build_info",
        "The version and the commit this binary was built from; always 1",
        info,
    );
}

/// A registry of the process's own metrics, without a prefix: `process_*`.
pub fn process_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The text of a scrape: every registry's metrics, then the end marker.
pub fn encode(out: &mut String, registries: &[&Registry]) -> fmt::Result {
    for registry in registries {
        encode_registry(out, registry)?;
    }
    encode_eof(out)
}

/// Reads `/proc/self` on each scrape. A figure that cannot be read (no `/proc`: not Linux) is
/// left out rather than reported as zero.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = me.stat() {
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let page = procfs::page_size();
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                (stat.rss * page) as f64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize as f64,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                stat.num_threads as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                fds as f64,
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_scrape_has_the_build_and_the_process() {
        let mut own = Registrar::with_prefix("bulwark");
        register_build_info(&mut own);
        let (own, registered) = own.finish();
        assert_eq!(
            registered.into_iter().collect::<Vec<_>>(),
            [("bulwark_build_info".to_string(), "gauge".to_string())]
        );
        let process = process_registry();
        let mut text = String::new();
        encode(&mut text, &[&own, &process]).expect("encodes");
        let build =
            format!("bulwark_build_info{{version=\"{VERSION}\",revision=\"{REVISION}\"}} 1");
        assert!(text.contains(&build), "{text}");
        assert!(
            sample(&text, "process_cpu_seconds_total").is_some(),
            "{text}"
        );
        let rss = sample(&text, "process_resident_memory_bytes").expect("rss");
        assert!(rss > 1_000_000.0, "{rss}");
        assert!(
            sample(&text, "process_open_fds").is_some_and(|n| n >= 3.0),
            "{text}"
        );
        let started = sample(&text, "process_start_time_seconds").expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            (now - 3600.0..=now + 1.0).contains(&started),
            "started {started}, now {now}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
