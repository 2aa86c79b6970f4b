//! The routing decision, side by side with hyper-util's proxy `Matcher` (what
//! reqwest uses) given the same http_proxy / https_proxy / no_proxy values.
//!
//! Run: `cargo bench -p egress --bench route`. Each benchmark decides for
//! four target URLs in turn (a name no entry matches, a name an entry
//! matches, an IP an entry matches, an IP none matches), so one iteration is
//! four decisions; throughput is reported per decision.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use egress::{ProxyEnv, ProxySettings, Purpose, Route};
use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;

const HTTPS_PROXY: &str = "http://alice:secret@proxy.example:3128";

/// `n` no_proxy entries: names, and CIDR ranges outside the default blocklist.
fn no_proxy_value(n: usize) -> String {
    let mut entries = vec![
        "matched.example".to_owned(),
        "45.0.0.0/24".to_owned(),
        ".corp.example".to_owned(),
    ];
    let mut i = 0;
    while entries.len() < n {
        entries.push(if i % 2 == 0 {
            format!("host{i}.zone{}.example", i % 50)
        } else {
            format!("45.{}.{}.0/24", 1 + i / 256, i % 256)
        });
        i += 1;
    }
    entries.truncate(n);
    entries.join(",")
}

fn targets() -> [Uri; 4] {
    [
        "https://matrix.org/_matrix/push/v1/notify".parse().unwrap(),
        "https://a.b.matched.example/path".parse().unwrap(),
        "https://45.0.0.7/path".parse().unwrap(),
        "https://8.8.8.8/path".parse().unwrap(),
    ]
}

fn bench_decisions(c: &mut Criterion) {
    for n in [3usize, 1000] {
        let no_proxy = no_proxy_value(n);
        let env = ProxyEnv::from_vars([
            ("HTTPS_PROXY", HTTPS_PROXY),
            ("NO_PROXY", no_proxy.as_str()),
        ]);
        let settings = ProxySettings::new(&env, None).unwrap();
        let matcher = Matcher::builder()
            .https(HTTPS_PROXY)
            .no(no_proxy.as_str())
            .build();
        let urls = targets();

        // Both must agree on these three targets, or the comparison is unfair.
        let ours: Vec<bool> = urls
            .iter()
            .map(|u| Route::decide(&settings, Purpose::Push, u).proxy().is_some())
            .collect();
        let theirs: Vec<bool> = urls
            .iter()
            .map(|u| matcher.intercept(u).is_some())
            .collect();
        assert_eq!(ours, [true, false, false, true]);
        assert_eq!(ours, theirs);

        let mut group = c.benchmark_group(format!("decide/{n}_no_proxy_entries"));
        group.throughput(Throughput::Elements(urls.len() as u64));
        group.bench_function("egress Route::decide", |b| {
            b.iter(|| {
                for url in &urls {
                    black_box(Route::decide(&settings, Purpose::Push, black_box(url)).kind());
                }
            })
        });
        group.bench_function("hyper-util Matcher::intercept", |b| {
            b.iter(|| {
                for url in &urls {
                    black_box(matcher.intercept(black_box(url)).is_some());
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_decisions);
criterion_main!(benches);
