//! The `Via` header (RFC 9110 §7.6.3): serve adds itself to every request it
//! forwards or tunnels through a parent, under a name of its own, and refuses
//! a request whose `Via` already names it, which is a forwarding loop (a
//! parent, or a parent's parent, that sends traffic back to serve).

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

/// This process's name in `Via`: `egress-` and 8 random hex digits, so that
/// two serve instances chained on purpose do not take each other for a loop.
#[derive(Debug, Clone)]
pub(crate) struct Via {
    name: String,
    /// `1.1 name` and `1.0 name`, for requests that came without a `Via`.
    alone: [HeaderValue; 2],
}

impl Via {
    /// A new random name.
    pub(crate) fn random() -> Via {
        let mut bytes = [0u8; 4];
        // The name only tells instances apart: if the system's randomness
        // fails, the process id and the time still do.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            bytes = (std::process::id() ^ nanos).to_be_bytes();
        }
        Via::named(&format!("egress-{:08x}", u32::from_be_bytes(bytes)))
    }

    /// A fixed name (for the fuzz target and tests).
    pub(crate) fn named(name: &str) -> Via {
        let alone = |protocol: &str| {
            HeaderValue::from_str(&format!("{protocol} {name}")).expect("a token is a header value")
        };
        Via {
            name: name.to_owned(),
            alone: [alone("1.1"), alone("1.0")],
        }
    }

    /// This instance's name, as it appears in `Via`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The request's `Via` when one of its entries names this instance.
    pub(crate) fn loop_in(&self, headers: &HeaderMap) -> Option<String> {
        headers.get_all(header::VIA).iter().find_map(|value| {
            let text = String::from_utf8_lossy(value.as_bytes());
            // Each entry is `protocol received-by [comment]`. A comment may
            // hold commas; its words can only match by naming us, which a
            // comment has no reason to.
            let ours = text.split(',').any(|entry| {
                entry
                    .split_ascii_whitespace()
                    .nth(1)
                    .is_some_and(|by| by.eq_ignore_ascii_case(&self.name))
            });
            ours.then(|| text.into_owned())
        })
    }

    /// The `Via` to send onward: what the request carried, then this
    /// instance, received over `version`.
    pub(crate) fn onward(&self, headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
        let ours = &self.alone[usize::from(version == Version::HTTP_10)];
        let earlier: Vec<&str> = headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if earlier.is_empty() {
            return Some(ours.clone());
        }
        let ours = ours.to_str().expect("built from a str");
        HeaderValue::from_str(&format!("{}, {ours}", earlier.join(", "))).ok()
    }

    /// Replaces the `Via` in `headers` with [`onward`](Via::onward)'s.
    pub(crate) fn add(&self, headers: &mut HeaderMap, version: Version) {
        if let Some(value) = self.onward(headers, version) {
            headers.insert(header::VIA, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(vias: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for via in vias {
            headers.append(header::VIA, HeaderValue::from_str(via).unwrap());
        }
        headers
    }

    #[test]
    fn names_differ_between_instances() {
        let (a, b) = (Via::random(), Via::random());
        assert!(a.name().starts_with("egress-") && a.name().len() == 15);
        assert_ne!(a.name(), b.name());
    }

    #[test]
    fn a_request_that_names_us_is_a_loop_and_others_are_not() {
        let via = Via::named("egress-0badcafe");
        assert_eq!(via.loop_in(&headers(&[])), None);
        assert_eq!(
            via.loop_in(&headers(&["1.1 squid (squid/6.13)", "1.1 egress-12345678"])),
            None
        );
        // A name that only starts like ours is another instance.
        assert_eq!(via.loop_in(&headers(&["1.1 egress-0badcafe2"])), None);
        assert_eq!(
            via.loop_in(&headers(&["1.0 fred, 1.1 EGRESS-0BADCAFE (x, y)"])),
            Some("1.0 fred, 1.1 EGRESS-0BADCAFE (x, y)".to_owned())
        );
        assert!(via
            .loop_in(&headers(&["1.1 squid", "1.1 egress-0badcafe"]))
            .is_some());
    }

    #[test]
    fn onward_keeps_what_came_and_adds_us_with_the_version_received() {
        let via = Via::named("egress-0badcafe");
        assert_eq!(
            via.onward(&headers(&[]), Version::HTTP_11).unwrap(),
            "1.1 egress-0badcafe"
        );
        let mut two = headers(&["1.0 fred", "1.1 squid"]);
        via.add(&mut two, Version::HTTP_10);
        assert_eq!(
            two.get_all(header::VIA).iter().collect::<Vec<_>>(),
            ["1.0 fred, 1.1 squid, 1.0 egress-0badcafe"]
        );
    }
}
