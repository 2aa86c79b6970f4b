//! The client's metrics, through the `metrics` facade (feature `metrics`):
//! the homeserver installs the recorder (its exporter), egress only counts.
//!
//! Labels take a bounded set of values (purposes, route kinds, status
//! classes, error kinds, connect steps, blocklists): no host, URL or address
//! is ever a label, so the number of series does not grow with the number of
//! destinations. Destinations go into the request span instead.
//!
//! Handles are registered with the recorder on first use and kept, so a
//! request costs a few atomic operations and no lookup; a recorder installed
//! after a series' first use does not see that series (install it before
//! the first request, as the `metrics` crate advises). Without the feature,
//! every method here is empty and inlined away.

use std::time::Duration;

#[cfg(test)]
use crate::Purpose;
use crate::{BlocklistKind, Error, Route};

/// The four route kinds, as the `route` label spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RouteKind {
    Direct,
    Forward,
    Tunnel,
    Refused,
}

impl RouteKind {
    pub(crate) fn of(route: &Route<'_>) -> RouteKind {
        match route {
            Route::Direct { .. } => RouteKind::Direct,
            Route::Forward { .. } => RouteKind::Forward,
            Route::Tunnel { .. } => RouteKind::Tunnel,
            Route::Refused { .. } => RouteKind::Refused,
        }
    }

    /// `direct`, `forward`, `tunnel` or `refused`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RouteKind::Direct => "direct",
            RouteKind::Forward => "forward",
            RouteKind::Tunnel => "tunnel",
            RouteKind::Refused => "refused",
        }
    }
}

/// A step of making a connection, as the `step` label spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectStep {
    /// Resolving (direct) and TCP, to the origin or the proxy.
    Tcp,
    /// TLS with an `https://` proxy.
    ProxyTls,
    /// `CONNECT` through the proxy, up to its answer.
    Connect,
    /// TLS with the origin (inside the tunnel when there is one).
    Tls,
}

impl ConnectStep {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            ConnectStep::Tcp => "tcp",
            ConnectStep::ProxyTls => "proxy_tls",
            ConnectStep::Connect => "connect",
            ConnectStep::Tls => "tls",
        }
    }
}

/// The `outcome` label of a response: its status class.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn status_class(status: u16) -> (usize, &'static str) {
    match status {
        100..=199 => (0, "1xx"),
        200..=299 => (1, "2xx"),
        300..=399 => (2, "3xx"),
        400..=499 => (3, "4xx"),
        _ => (4, "5xx"),
    }
}

/// The `list` label: which of Synapse's blocklists refused an address (also
/// serve's listener policy names, `serve::policy_name`).
pub(crate) fn list_name(kind: BlocklistKind) -> &'static str {
    match kind {
        BlocklistKind::General => "general",
        BlocklistKind::Federation => "federation",
        BlocklistKind::UrlPreview => "url_preview",
    }
}

#[cfg(feature = "metrics")]
pub(crate) use self::on::Instruments;

#[cfg(not(feature = "metrics"))]
pub(crate) use self::off::Instruments;

/// The metric names, with the `egress_client_` prefix.
#[cfg(feature = "metrics")]
pub(crate) mod names {
    pub(crate) const REQUESTS: &str = "egress_client_requests_total";
    pub(crate) const REQUEST_DURATION: &str = "egress_client_request_duration_seconds";
    pub(crate) const TIME_TO_FIRST_BYTE: &str = "egress_client_time_to_first_byte_seconds";
    pub(crate) const CONNECT_DURATION: &str = "egress_client_connect_seconds";
    pub(crate) const POOL_CONNECTIONS: &str = "egress_client_pool_connections";
    pub(crate) const REDIRECTS: &str = "egress_client_redirects_total";
    pub(crate) const BYTES: &str = "egress_client_bytes_total";
    pub(crate) const REFUSALS: &str = "egress_client_refusals_total";
}

#[cfg(feature = "metrics")]
mod on {
    use std::sync::OnceLock;
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram, Unit};

    use super::names::*;
    use super::{status_class, ConnectStep, RouteKind};
    use crate::Purpose;

    const PURPOSES: usize = Purpose::ALL.len();
    const ROUTES: usize = 4;
    const STEPS: usize = 4;
    const CLASSES: usize = 5;

    /// One purpose on one route.
    #[derive(Default)]
    struct Slot {
        /// By status class.
        responses: [OnceLock<Counter>; CLASSES],
        duration: OnceLock<Histogram>,
        first_byte: OnceLock<Histogram>,
    }

    #[derive(Default)]
    struct PerPurpose {
        routes: [Slot; ROUTES],
        steps: [OnceLock<Histogram>; STEPS],
        /// Up (request bodies), down (response bodies).
        bytes: [OnceLock<Counter>; 2],
        redirects: OnceLock<Counter>,
    }

    /// The client's metric handles, made on first use.
    pub(crate) struct Instruments {
        purposes: Box<[PerPurpose; PURPOSES]>,
        /// Idle, busy; by pool route (direct, forward, tunnel).
        pool: [[OnceLock<Gauge>; 2]; 3],
    }

    fn route_index(route: RouteKind) -> usize {
        route as usize
    }

    /// Purposes are declared in the order of `Purpose::ALL` (a unit test
    /// checks it), so the discriminant is the index.
    fn purpose_index(purpose: Purpose) -> usize {
        purpose as usize
    }

    impl Instruments {
        pub(crate) fn new() -> Instruments {
            describe();
            Instruments {
                purposes: Box::default(),
                pool: Default::default(),
            }
        }

        fn purpose(&self, purpose: Purpose) -> &PerPurpose {
            &self.purposes[purpose_index(purpose)]
        }

        /// A response's head arrived `took` after the request started.
        pub(crate) fn response(
            &self,
            purpose: Purpose,
            route: RouteKind,
            status: u16,
            took: Duration,
        ) {
            let slot = &self.purpose(purpose).routes[route_index(route)];
            let (class, label) = status_class(status);
            slot.responses[class]
                .get_or_init(|| {
                    metrics::counter!(REQUESTS, "purpose" => purpose.name(), "route" => route.as_str(), "outcome" => label)
                })
                .increment(1);
            slot.first_byte
                .get_or_init(|| {
                    metrics::histogram!(TIME_TO_FIRST_BYTE, "purpose" => purpose.name(), "route" => route.as_str())
                })
                .record(took);
        }

        /// The request (or its response body) ended `took` after it started.
        pub(crate) fn finished(&self, purpose: Purpose, route: RouteKind, took: Duration) {
            self.purpose(purpose).routes[route_index(route)]
                .duration
                .get_or_init(|| {
                    metrics::histogram!(REQUEST_DURATION, "purpose" => purpose.name(), "route" => route.as_str())
                })
                .record(took);
        }

        /// The request failed with `kind` (an [`Error::kind`], `timeout` or
        /// `cancelled`) after `took`. Rare: the handle is looked up each time.
        pub(crate) fn failed(
            &self,
            purpose: Purpose,
            route: RouteKind,
            kind: &'static str,
            took: Duration,
        ) {
            metrics::counter!(REQUESTS, "purpose" => purpose.name(), "route" => route.as_str(), "outcome" => kind)
                .increment(1);
            self.finished(purpose, route, took);
        }

        pub(crate) fn connect_step(&self, purpose: Purpose, step: ConnectStep, took: Duration) {
            self.purpose(purpose).steps[step as usize]
                .get_or_init(|| {
                    metrics::histogram!(CONNECT_DURATION, "purpose" => purpose.name(), "step" => step.as_str())
                })
                .record(took);
        }

        pub(crate) fn redirect(&self, purpose: Purpose) {
            self.purpose(purpose)
                .redirects
                .get_or_init(|| metrics::counter!(REDIRECTS, "purpose" => purpose.name()))
                .increment(1);
        }

        /// Body bytes sent (`up`) or received.
        pub(crate) fn bytes(&self, purpose: Purpose, up: bool, n: u64) {
            if n == 0 {
                return;
            }
            let direction = if up { "up" } else { "down" };
            self.purpose(purpose).bytes[usize::from(!up)]
                .get_or_init(|| metrics::counter!(BYTES, "purpose" => purpose.name(), "direction" => direction))
                .increment(n);
        }

        /// A blocklist refused an address (or an IP literal).
        pub(crate) fn refused(&self, purpose: Purpose, list: &'static str) {
            metrics::counter!(REFUSALS, "purpose" => purpose.name(), "list" => list).increment(1);
        }

        /// The pool's count of idle and busy connections on a route kind.
        pub(crate) fn pool(&self, route: RouteKind, idle: usize, busy: usize) {
            let gauges = &self.pool[route_index(route).min(2)];
            let gauge = |i: usize, state: &'static str| {
                gauges[i].get_or_init(|| {
                    metrics::gauge!(POOL_CONNECTIONS, "route" => route.as_str(), "state" => state)
                })
            };
            gauge(0, "idle").set(idle as f64);
            gauge(1, "busy").set(busy as f64);
        }
    }

    /// Units and help texts, given to the recorder in use (at each
    /// `Outbound` build: rare, and a recorder keeps the last).
    fn describe() {
        metrics::describe_counter!(
            REQUESTS,
            "Requests (each redirect hop counts) by purpose, route and outcome: the response's status class, or the error kind"
        );
        metrics::describe_histogram!(
            REQUEST_DURATION,
            Unit::Seconds,
            "From the routing decision to the end of the response body (or the error)"
        );
        metrics::describe_histogram!(
            TIME_TO_FIRST_BYTE,
            Unit::Seconds,
            "From the routing decision to the response head"
        );
        metrics::describe_histogram!(
            CONNECT_DURATION,
            Unit::Seconds,
            "Each step of making a new connection: tcp (with DNS), proxy_tls, connect (the CONNECT exchange), tls"
        );
        metrics::describe_gauge!(
            POOL_CONNECTIONS,
            "Pooled connections by route (direct, forward, tunnel) and state (idle, busy)"
        );
        metrics::describe_counter!(REDIRECTS, "Redirects followed");
        metrics::describe_counter!(
            BYTES,
            Unit::Bytes,
            "Body bytes: up is request bodies sent, down is response bodies received"
        );
        metrics::describe_counter!(
            REFUSALS,
            "Connections refused by a blocklist (an IP literal or a resolved address), by list"
        );
    }

    impl std::fmt::Debug for Instruments {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Instruments")
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use super::{ConnectStep, RouteKind};
    use crate::Purpose;

    /// Without the `metrics` feature: nothing.
    #[derive(Debug)]
    pub(crate) struct Instruments;

    impl Instruments {
        pub(crate) fn new() -> Instruments {
            Instruments
        }
        #[inline(always)]
        pub(crate) fn connect_step(&self, _: Purpose, _: ConnectStep, _: Duration) {}
        #[inline(always)]
        pub(crate) fn redirect(&self, _: Purpose) {}
        #[inline(always)]
        pub(crate) fn refused(&self, _: Purpose, _: &'static str) {}
        #[inline(always)]
        pub(crate) fn pool(&self, _: RouteKind, _: usize, _: usize) {}
    }
}

/// One request's measurements, from the routing decision to the end of its
/// response body: counted once, when the response head arrives or the
/// request fails; timed when the body ends, or when it (or the request) is
/// dropped. Empty without the feature.
pub(crate) struct Meter {
    #[cfg(feature = "metrics")]
    on: Option<MeterOn>,
}

#[cfg(feature = "metrics")]
struct MeterOn {
    instruments: std::sync::Arc<Instruments>,
    purpose: crate::Purpose,
    route: RouteKind,
    start: std::time::Instant,
    /// The request's deadline: dropped before a response and past it, the
    /// request timed out; before it, it was cancelled.
    deadline: tokio::time::Instant,
    /// The response head arrived (or the failure was counted).
    counted: bool,
    bytes_down: u64,
}

impl Meter {
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn start(
        instruments: &std::sync::Arc<Instruments>,
        purpose: crate::Purpose,
        route: RouteKind,
        deadline: tokio::time::Instant,
    ) -> Meter {
        Meter {
            #[cfg(feature = "metrics")]
            on: Some(MeterOn {
                instruments: instruments.clone(),
                purpose,
                route,
                start: std::time::Instant::now(),
                deadline,
                counted: false,
                bytes_down: 0,
            }),
        }
    }

    /// The response head arrived; the request body (`up` bytes) was sent.
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn response(&mut self, status: u16, up: u64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &mut self.on {
            m.counted = true;
            m.instruments
                .response(m.purpose, m.route, status, m.start.elapsed());
            m.instruments.bytes(m.purpose, true, up);
        }
    }

    /// The request failed: counted and timed now.
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables, unused_mut))]
    pub(crate) fn failed(mut self, error: &Error) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.on.take() {
            m.instruments
                .failed(m.purpose, m.route, error.kind(), m.start.elapsed());
        }
    }

    /// Response body bytes received.
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn body_bytes(&mut self, n: usize) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &mut self.on {
            m.bytes_down += n as u64;
        }
    }

    /// The response body ended: timed now.
    #[inline(always)]
    pub(crate) fn finish(&mut self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = self.on.take() {
            m.finish();
        }
    }
}

#[cfg(feature = "metrics")]
impl MeterOn {
    fn finish(self) {
        if !self.counted {
            let kind = if tokio::time::Instant::now() >= self.deadline {
                "timeout"
            } else {
                "cancelled"
            };
            self.instruments
                .failed(self.purpose, self.route, kind, self.start.elapsed());
            return;
        }
        self.instruments.bytes(self.purpose, false, self.bytes_down);
        self.instruments
            .finished(self.purpose, self.route, self.start.elapsed());
    }
}

#[cfg(feature = "metrics")]
impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A clock for the metrics: `Instant::now()` with the feature, nothing without.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock(#[cfg(feature = "metrics")] std::time::Instant);

impl Clock {
    #[inline(always)]
    pub(crate) fn start() -> Clock {
        Clock(
            #[cfg(feature = "metrics")]
            std::time::Instant::now(),
        )
    }

    /// Time since [`Clock::start`] (zero without the feature).
    #[inline(always)]
    pub(crate) fn elapsed(self) -> Duration {
        #[cfg(feature = "metrics")]
        return self.0.elapsed();
        #[cfg(not(feature = "metrics"))]
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(101).1, "1xx");
        assert_eq!(status_class(204).1, "2xx");
        assert_eq!(status_class(308).1, "3xx");
        assert_eq!(status_class(404).1, "4xx");
        assert_eq!(status_class(503).1, "5xx");
        assert_eq!(status_class(999).1, "5xx");
    }

    #[test]
    fn a_purpose_s_discriminant_is_its_index_in_all() {
        // The metrics' slots are indexed by the discriminant.
        for (i, p) in Purpose::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?}");
        }
    }
}
