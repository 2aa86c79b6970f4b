//! serve's Prometheus metrics (the `prometheus-client` crate, text format).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) decision: &'static str,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListLabels {
    pub(crate) list: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub(crate) direction: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    /// By blocklist, as the client's `egress_client_refusals_total`.
    pub(crate) refusals: Family<ListLabels, Counter>,
    pub(crate) active_tunnels: Gauge,
    pub(crate) bytes: Family<DirectionLabels, Counter>,
    pub(crate) dns_seconds: Histogram,
    pub(crate) connect_seconds: Histogram,
    pub(crate) reloads: Counter,
    pub(crate) log_lines_dropped: Counter,
    pub(crate) memory_trims: Counter,
    pub(crate) trimmed_rss: Gauge,
    /// `egress_serve_heap_in_use_bytes`, read from the allocator at each
    /// scrape ([`ServeConfig::heap_in_use`](super::ServeConfig::heap_in_use)).
    heap_in_use: Option<(Gauge, fn() -> u64)>,
}

impl Metrics {
    pub(crate) fn new(heap_in_use: Option<fn() -> u64>) -> Metrics {
        let mut registry = Registry::with_prefix("egress_serve");
        let requests = Family::<RequestLabels, Counter>::default();
        let refusals = Family::<ListLabels, Counter>::default();
        let active_tunnels = Gauge::default();
        let bytes = Family::<DirectionLabels, Counter>::default();
        // 0.5 ms .. ~16 s
        let dns_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let connect_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let reloads = Counter::default();
        let log_lines_dropped = Counter::default();
        let memory_trims = Counter::default();
        let trimmed_rss = Gauge::default();
        registry.register(
            "requests",
            "Requests (CONNECT and forwarded) by decision and reason",
            requests.clone(),
        );
        registry.register(
            "refusals",
            "Requests refused because an address of the target is in the listener's blocklist, by list (general, federation, url_preview)",
            refusals.clone(),
        );
        registry.register(
            "active_tunnels",
            "Open CONNECT tunnels",
            active_tunnels.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed; up is client to target",
            bytes.clone(),
        );
        registry.register(
            "dns_seconds",
            "Time to resolve a target name",
            dns_seconds.clone(),
        );
        registry.register(
            "connect_seconds",
            "Time to connect to a target or parent proxy (with CONNECT through the parent)",
            connect_seconds.clone(),
        );
        registry.register("reloads", "Policy reloads (SIGHUP)", reloads.clone());
        registry.register(
            "log_lines_dropped",
            "Request log lines dropped because the log's output was too slow",
            log_lines_dropped.clone(),
        );
        registry.register(
            "memory_trims",
            "Times freed memory was handed back to the kernel (malloc_trim, glibc only)",
            memory_trims.clone(),
        );
        registry.register(
            "memory_trimmed_rss_bytes",
            "Resident memory right after the last trim: what serve holds, without the allocator's kept free pages (0 before the first trim)",
            trimmed_rss.clone(),
        );
        let heap_in_use = heap_in_use.map(|read| {
            let gauge = Gauge::default();
            registry.register(
                "heap_in_use_bytes",
                "Bytes allocated and not yet freed, as the allocator counts them (glibc's mallinfo2), read at each scrape",
                gauge.clone(),
            );
            (gauge, read)
        });
        Metrics {
            registry,
            requests,
            refusals,
            active_tunnels,
            bytes,
            dns_seconds,
            connect_seconds,
            reloads,
            log_lines_dropped,
            memory_trims,
            trimmed_rss,
            heap_in_use,
        }
    }

    pub(crate) fn count(&self, decision: &'static str, reason: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { decision, reason })
            .inc();
    }

    pub(crate) fn refused(&self, list: &'static str) {
        self.refusals.get_or_create(&ListLabels { list }).inc();
    }

    pub(crate) fn bytes(&self, up: u64, down: u64) {
        self.bytes
            .get_or_create(&DirectionLabels { direction: "up" })
            .inc_by(up);
        self.bytes
            .get_or_create(&DirectionLabels { direction: "down" })
            .inc_by(down);
    }

    pub(crate) fn observe(histogram: &Histogram, took: Duration) {
        histogram.observe(took.as_secs_f64());
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        if let Some((gauge, read)) = &self.heap_in_use {
            gauge.set(i64::try_from(read()).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
