//! One record per request `egress serve` handled: what the CLI prints as a
//! JSON line.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::Write as _;

use crate::BlocklistKind;

/// What serve decided for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Checked and relayed (the status says how the target answered).
    Allowed,
    /// Refused by policy: blocklist, domain globs, credentials, limits.
    Denied,
    /// Allowed, but the target could not be reached (DNS, connect, parent).
    Failed,
}

impl Decision {
    /// `allowed`, `denied` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Failed => "failed",
        }
    }
}

/// One handled request.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RequestLog {
    /// When the request arrived.
    pub time: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// The policy of the listener it came to.
    pub policy: BlocklistKind,
    /// `CONNECT`, `GET`, ….
    pub method: String,
    /// `host:port` for CONNECT, the URL for forwarded requests.
    pub target: String,
    /// The checked address serve connected to (or asked the parent for).
    pub resolved: Option<SocketAddr>,
    /// The decision.
    pub decision: Decision,
    /// Why: the blocklist range, the glob, the failure, or `checked`.
    pub reason: String,
    /// The parent proxy used, masked.
    pub upstream: Option<String>,
    /// The status serve answered with.
    pub status: u16,
    /// Bytes from the client to the target (bodies; tunnel bytes).
    pub bytes_up: u64,
    /// Bytes from the target to the client.
    pub bytes_down: u64,
    /// From the request to the end of the response (or tunnel).
    pub duration: Duration,
}

impl RequestLog {
    /// The record as one JSON object (written field by field: this runs
    /// once per request).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(384);
        let string = |out: &mut Vec<u8>, key: &str, value: &str| {
            out.extend_from_slice(b"\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut *out, value).expect("writing to a Vec");
            out.push(b',');
        };
        out.push(b'{');
        string(&mut out, "time", &rfc3339(self.time));
        string(&mut out, "client", &self.client.to_string());
        string(&mut out, "policy", super::policy_name(self.policy));
        string(&mut out, "http.request.method", &self.method);
        string(&mut out, "target", &self.target);
        match self.resolved {
            Some(addr) => string(&mut out, "resolved", &addr.to_string()),
            None => out.extend_from_slice(b"\"resolved\":null,"),
        }
        string(&mut out, "decision", self.decision.as_str());
        string(&mut out, "reason", &self.reason);
        match &self.upstream {
            Some(upstream) => string(&mut out, "egress.proxy", upstream),
            None => out.extend_from_slice(b"\"egress.proxy\":null,"),
        }
        let millis = (self.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        let _ = write!(
            out,
            "\"http.response.status_code\":{},\"bytes_up\":{},\"bytes_down\":{},\"duration_ms\":{}}}",
            self.status, self.bytes_up, self.bytes_down, millis
        );
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

/// `2026-11-28T02:29:36.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_object_with_every_field() {
        let record = RequestLog {
            time: UNIX_EPOCH,
            client: "127.0.0.1:5000".parse().unwrap(),
            policy: BlocklistKind::UrlPreview,
            method: "GET".into(),
            target: "http://x.test/\"quoted\"\n".into(),
            resolved: None,
            decision: Decision::Denied,
            reason: "10.0.0.5 is in 10.0.0.0/8 of ip_range_blacklist".into(),
            upstream: Some("http://corp:8080".into()),
            status: 403,
            bytes_up: 1,
            bytes_down: 2,
            duration: Duration::from_micros(1500),
        };
        let value: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "time": "1970-01-01T00:00:00.000Z", "client": "127.0.0.1:5000",
                "policy": "url_preview", "http.request.method": "GET", "target": "http://x.test/\"quoted\"\n",
                "resolved": null, "decision": "denied",
                "reason": "10.0.0.5 is in 10.0.0.0/8 of ip_range_blacklist",
                "egress.proxy": "http://corp:8080", "http.response.status_code": 403, "bytes_up": 1, "bytes_down": 2,
                "duration_ms": 1.5,
            })
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_833_376_123);
        assert_eq!(rfc3339(t), "2026-11-28T02:36:16.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
