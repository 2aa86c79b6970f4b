//! The client's metrics and spans (feature `metrics`), read from a
//! recording recorder (metrics-util's debugging recorder) and a recording
//! tracing layer, not from log text: requests through real squid (forwarded
//! and tunnelled), refusals by the blocklists, a proxy's 407, a timeout
//! (a silent fake proxy: no real one stays silent on purpose), redirects, and
//! a thousand destinations that must not add a single series.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress::{Error, HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose, Timeouts};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A closed span: its name, its fields as text, and how many `egress::wire`
/// events happened inside it.
#[derive(Clone, Debug, Default)]
struct Captured {
    name: String,
    fields: BTreeMap<String, String>,
    wire_events: usize,
}

impl Captured {
    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("span {} has no {name}: {:?}", self.name, self.fields))
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Keeps every span egress closes.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Captured>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut captured = Captured {
            name: attrs.metadata().name().to_owned(),
            ..Captured::default()
        };
        attrs.record(&mut Fields(&mut captured.fields));
        ctx.span(id).unwrap().extensions_mut().insert(captured);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(c) = span.extensions_mut().get_mut::<Captured>() {
                values.record(&mut Fields(&mut c.fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() == "egress::wire" {
            if let Some(span) = ctx.event_span(event) {
                if let Some(c) = span.extensions_mut().get_mut::<Captured>() {
                    c.wire_events += 1;
                }
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(c) = span.extensions_mut().remove::<Captured>() {
                self.0.lock().unwrap().push(c);
            }
        }
    }
}

/// One series: name, labels, value.
type Series = (String, BTreeMap<String, String>, DebugValue);

/// A test's own recorder and span layer, on a current-thread runtime: every
/// task egress spawns runs on this thread, under them.
struct Observed {
    snapshotter: Snapshotter,
    spans: Spans,
}

impl Observed {
    fn run<T>(f: impl FnOnce(&Observed) -> T) -> T {
        let recorder = DebuggingRecorder::new();
        let observed = Observed {
            snapshotter: recorder.snapshotter(),
            spans: Spans::default(),
        };
        let subscriber = tracing_subscriber::registry().with(observed.spans.clone());
        let _spans = tracing::subscriber::set_default(subscriber);
        metrics::with_local_recorder(&recorder, || f(&observed))
    }

    /// The series now. The debugging recorder hands over what it holds at
    /// each snapshot (counters and histograms restart from nothing, gauges
    /// from 0): take one, then read it.
    fn snapshot(&self) -> Snap {
        Snap(self.series())
    }

    fn series(&self) -> Vec<Series> {
        self.snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let (_, key) = key.into_parts();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (key.name().to_owned(), labels, value)
            })
            .collect()
    }

    /// The closed request spans, oldest first.
    fn requests(&self) -> Vec<Captured> {
        self.spans
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == "http_request")
            .cloned()
            .collect()
    }
}

/// One snapshot of the series.
struct Snap(Vec<Series>);

impl Snap {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| v)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.value(name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            None => Vec::new(),
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.value(name, labels)? {
            DebugValue::Gauge(v) => Some(v.into_inner()),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn outbound(env: &[(&str, &str)], yaml: &str) -> egress::OutboundBuilder {
    let env = ProxyEnv::from_vars(env.iter().copied());
    let yaml = HomeserverYaml::parse(yaml).unwrap();
    let settings = ProxySettings::new(&env, Some(&yaml)).unwrap();
    Outbound::builder(settings).add_ca_file(&world().ca.pem_path)
}

async fn get(out: &Outbound, purpose: Purpose, url: &str) -> Result<(u16, usize), Error> {
    let response = out.client(purpose).follow_redirects(3).get(url).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body.len()))
}

fn squid(auth: bool) -> String {
    let w = world();
    match auth {
        true => format!(
            "http://{USER}:{PASSWORD_ENCODED}@localhost:{}",
            w.squid.auth_port
        ),
        false => format!("http://localhost:{}", w.squid.open_port),
    }
}

#[test]
fn a_forwarded_request_through_squid_is_counted_timed_and_spanned() {
    let w = world();
    let proxy = squid(true);
    Observed::run(|o| {
        runtime().block_on(async {
            let out = outbound(&[("http_proxy", &proxy)], "").build().unwrap();
            let url = w.http_origin.url("localhost", "/observe-forward");
            let (status, len) = get(&out, Purpose::Push, &url).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(len, "origin http /observe-forward".len());
            // Again, on the pooled connection to squid.
            get(&out, Purpose::Push, &url).await.unwrap();

            let o = o.snapshot();
            let labels = [("purpose", "push"), ("route", "forward")];
            let with = |extra: (&'static str, &'static str)| {
                let mut l = labels.to_vec();
                l.push(extra);
                l
            };
            assert_eq!(
                o.counter("egress_client_requests_total", &with(("outcome", "2xx"))),
                2
            );
            assert_eq!(
                o.samples("egress_client_time_to_first_byte_seconds", &labels)
                    .len(),
                2
            );
            let durations = o.samples("egress_client_request_duration_seconds", &labels);
            assert_eq!(durations.len(), 2, "timed when each body ended");
            assert!(
                durations.iter().all(|d| *d > 0.0 && *d < 10.0),
                "{durations:?}"
            );
            // One connection, to squid: TCP only, no CONNECT, no TLS.
            let step = |s| {
                o.samples(
                    "egress_client_connect_seconds",
                    &[("purpose", "push"), ("step", s)],
                )
            };
            assert_eq!(step("tcp").len(), 1);
            assert!(step("connect").is_empty() && step("tls").is_empty());
            assert_eq!(
                o.counter(
                    "egress_client_bytes_total",
                    &[("purpose", "push"), ("direction", "down")]
                ),
                2 * len as u64
            );
            let pool = |state| {
                o.gauge(
                    "egress_client_pool_connections",
                    &[("route", "forward"), ("state", state)],
                )
            };
            assert_eq!(pool("idle"), Some(1.0));
            assert_eq!(pool("busy"), Some(0.0));
        });

        let spans = o.requests();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let span = &spans[0];
        assert_eq!(span.field("otel.name"), "GET");
        assert_eq!(span.field("otel.kind"), "client");
        assert_eq!(span.field("http.request.method"), "GET");
        assert_eq!(span.field("server.address"), "localhost");
        assert_eq!(span.field("server.port"), w.http_origin.port.to_string());
        assert_eq!(
            span.field("url.full"),
            w.http_origin.url("localhost", "/observe-forward")
        );
        assert_eq!(span.field("egress.purpose"), "push");
        assert_eq!(span.field("egress.route"), "forward");
        assert_eq!(
            span.field("egress.proxy"),
            format!("http://{USER}:***@localhost:{}", w.squid.auth_port)
        );
        assert_eq!(span.field("http.response.status_code"), "200");
        assert!(!span.fields.contains_key("error.type"));
        assert!(!span.fields.contains_key("http.request.resend_count"));
        assert!(
            span.wire_events >= 3,
            "the wire lines are events in the span: {span:?}"
        );
        let text = format!("{spans:?}");
        assert!(!text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED));
    });
}

#[test]
fn a_tunnel_through_squid_times_each_step_and_redirects_count() {
    let w = world();
    let proxy = squid(false);
    Observed::run(|o| {
        runtime().block_on(async {
            let out = outbound(&[("https_proxy", &proxy)], "").build().unwrap();
            let target = w.https_origin.url("localhost", "/landed");
            let url = w
                .https_origin
                .url("localhost", &format!("/redirect?to={target}"));
            let (status, _) = get(&out, Purpose::UrlPreview, &url).await.unwrap();
            assert_eq!(status, 200);

            let o = o.snapshot();
            let labels = [("purpose", "url_preview"), ("route", "tunnel")];
            let outcome = |o2: &'static str| {
                let mut l = labels.to_vec();
                l.push(("outcome", o2));
                l
            };
            assert_eq!(
                o.counter("egress_client_requests_total", &outcome("3xx")),
                1
            );
            assert_eq!(
                o.counter("egress_client_requests_total", &outcome("2xx")),
                1
            );
            assert_eq!(
                o.counter(
                    "egress_client_redirects_total",
                    &[("purpose", "url_preview")]
                ),
                1
            );
            // Both hops on one tunnel: one of each step.
            for step in ["tcp", "connect", "tls"] {
                let samples = o.samples(
                    "egress_client_connect_seconds",
                    &[("purpose", "url_preview"), ("step", step)],
                );
                assert_eq!(samples.len(), 1, "{step}");
            }
        });
        let spans = o.requests();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].field("egress.route"), "tunnel");
        assert_eq!(spans[0].field("http.response.status_code"), "302");
        assert_eq!(spans[1].field("http.request.resend_count"), "1");
        assert_eq!(
            spans[1].field("url.full"),
            w.https_origin.url("localhost", "/landed")
        );
    });
}

#[test]
fn refusals_are_counted_by_list_and_errors_by_kind() {
    let w = world();
    Observed::run(|o| {
        runtime().block_on(async {
            // No proxy, default blocklists: an IP literal is refused by the
            // decision, a name resolving to loopback by the resolver.
            let out = outbound(&[], "")
                .resolve("blocked.test", &[Ipv4Addr::LOCALHOST.into()])
                .build()
                .unwrap();
            let literal = w.http_origin.url("127.0.0.1", "/");
            let err = get(&out, Purpose::UrlPreview, &literal).await.unwrap_err();
            assert!(matches!(err, Error::Refused { .. }), "{err}");
            let named = w.http_origin.url("blocked.test", "/");
            let err = get(&out, Purpose::Push, &named).await.unwrap_err();
            assert!(matches!(err, Error::Blocked { .. }), "{err}");

            let snap = o.snapshot();
            assert_eq!(
                snap.counter(
                    "egress_client_requests_total",
                    &[
                        ("purpose", "url_preview"),
                        ("route", "refused"),
                        ("outcome", "refused")
                    ]
                ),
                1
            );
            assert_eq!(
                snap.counter(
                    "egress_client_refusals_total",
                    &[("purpose", "url_preview"), ("list", "url_preview")]
                ),
                1
            );
            assert_eq!(
                snap.counter(
                    "egress_client_requests_total",
                    &[
                        ("purpose", "push"),
                        ("route", "direct"),
                        ("outcome", "blocked")
                    ]
                ),
                1
            );
            assert_eq!(
                snap.counter(
                    "egress_client_refusals_total",
                    &[("purpose", "push"), ("list", "general")]
                ),
                1
            );

            // squid's 407 for a wrong password.
            let wrong = format!(
                "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
                w.squid.auth_port
            );
            let out = outbound(&[("http_proxy", &wrong)], "").build().unwrap();
            let err = get(&out, Purpose::Push, &w.http_origin.url("localhost", "/"))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "proxy_auth");
            assert_eq!(
                o.snapshot().counter(
                    "egress_client_requests_total",
                    &[
                        ("purpose", "push"),
                        ("route", "forward"),
                        ("outcome", "proxy_auth")
                    ]
                ),
                1
            );
        });
        let spans = o.requests();
        let types: Vec<&str> = spans.iter().map(|s| s.field("error.type")).collect();
        assert_eq!(types, ["refused", "blocked", "proxy_auth"]);
        assert!(!format!("{spans:?}").contains(WRONG_PASSWORD));
    });
}

#[test]
fn a_request_whose_time_runs_out_is_counted_as_a_timeout() {
    // A proxy that reads the request and never answers.
    let silent = FakeProxy::start(Fault::Silent);
    let proxy = format!("http://127.0.0.1:{}", silent.port);
    Observed::run(|o| {
        runtime().block_on(async {
            let out = outbound(&[("http_proxy", &proxy)], "")
                .timeouts(Timeouts::DEFAULT.with_request(Duration::from_millis(300)))
                .build()
                .unwrap();
            let err = get(&out, Purpose::Push, "http://origin.test/")
                .await
                .unwrap_err();
            assert!(err.is_timeout(), "{err}");
            let o = o.snapshot();
            assert_eq!(
                o.counter(
                    "egress_client_requests_total",
                    &[
                        ("purpose", "push"),
                        ("route", "forward"),
                        ("outcome", "timeout")
                    ]
                ),
                1
            );
            let took = o.samples(
                "egress_client_request_duration_seconds",
                &[("purpose", "push"), ("route", "forward")],
            );
            assert_eq!(took.len(), 1);
            assert!(took[0] >= 0.3, "{took:?}");
        });
        let spans = o.requests();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].field("error.type"), "timeout");
    });
}

#[test]
fn a_thousand_destinations_add_no_series() {
    let w = world();
    Observed::run(|o| {
        runtime().block_on(async {
            let mut builder = outbound(&[], "ip_range_whitelist: ['127.0.0.1/32']\n")
                // No idle connection kept: a thousand origins, a thousand
                // connections, each closed after its response.
                .max_idle_per_key(0);
            for i in 0..1000 {
                builder = builder.resolve(&format!("d{i}.test"), &[Ipv4Addr::LOCALHOST.into()]);
            }
            let out = builder.build().unwrap();
            let federation_2xx = [
                ("purpose", "federation"),
                ("route", "direct"),
                ("outcome", "2xx"),
            ];
            let (mut after_ten, mut first_ten) = (0, 0);
            for i in 0..1000 {
                for purpose in [Purpose::Federation, Purpose::Push] {
                    let url = w.http_origin.url(&format!("d{i}.test"), "/series");
                    let (status, _) = get(&out, purpose, &url).await.unwrap();
                    assert_eq!(status, 200);
                }
                let missing = w.http_origin.url(&format!("d{i}.test"), "/status/404");
                get(&out, Purpose::Media, &missing).await.unwrap();
                if i == 9 {
                    let snap = o.snapshot();
                    after_ten = snap.0.len();
                    first_ten = snap.counter("egress_client_requests_total", &federation_2xx);
                }
            }
            let snap = o.snapshot();
            let series = &snap.0;
            // Counts since the last snapshot (the recorder hands them over).
            assert_eq!(first_ten, 10);
            assert_eq!(
                snap.counter("egress_client_requests_total", &federation_2xx),
                990
            );
            assert_eq!(series.len(), after_ten, "series grew with destinations");
            // Three purposes, one route: requests (3), two histograms (6),
            // connect steps (3), bytes (3), pool gauges (2).
            assert!(series.len() <= 17, "{} series: {series:?}", series.len());
            for (name, labels, _) in series {
                for value in labels.values() {
                    assert!(
                        !value.contains(".test") && !value.contains("127."),
                        "{name}: {labels:?}"
                    );
                }
            }
        });
    });
}

/// Through the reqwest adapter, egress sees only its resolver and the
/// decision: refusals are counted (a name the resolver refuses, an IP
/// literal `Routing::check` refuses); requests, statuses and times are
/// reqwest's (the manual's observability page says what to add for them).
#[cfg(feature = "reqwest")]
#[test]
fn the_reqwest_adapter_counts_refusals_by_list() {
    use egress::reqwest::Routing;
    let w = world();
    Observed::run(|o| {
        runtime().block_on(async {
            let env = ProxyEnv::from_vars([("", "")]);
            let settings = ProxySettings::new(&env, None).unwrap();
            let routing = Routing::new(Arc::new(settings));
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            let builder = reqwest::Client::builder().tls_backend_preconfigured(tls);
            let client = routing.configure(Purpose::Push, builder).build().unwrap();
            // localhost resolves to loopback: the default blocklist refuses it.
            let err = client
                .get(w.http_origin.url("localhost", "/"))
                .send()
                .await
                .unwrap_err();
            assert!(
                matches!(routing.classify(&err), Some(Error::Blocked { .. })),
                "{err}"
            );
            let literal = w.http_origin.url("127.0.0.1", "/").parse().unwrap();
            assert!(routing.check(Purpose::UrlPreview, &literal).is_err());

            let snap = o.snapshot();
            let refusals = |purpose, list| {
                snap.counter(
                    "egress_client_refusals_total",
                    &[("purpose", purpose), ("list", list)],
                )
            };
            assert_eq!(refusals("push", "general"), 1);
            assert_eq!(refusals("url_preview", "url_preview"), 1);
        });
    });
}
