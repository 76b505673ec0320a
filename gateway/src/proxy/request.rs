//! Small readers over the request header, allocation-free where the request path needs it.

use pingora_http::RequestHeader;
use std::borrow::Cow;

/// `Host` (HTTP/1) or the URI authority (HTTP/2).
pub fn authority(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Host without `:port` (IPv6 literals keep their brackets), as Istio gateways match it.
pub fn host_without_port(req: &RequestHeader) -> &str {
    let host = authority(req).unwrap_or("");
    strip_port(host)
}

pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

pub fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

pub fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
    })
}

/// `request_protocol` label: Istio reports `http` or `grpc`.
pub fn protocol_label(req: &RequestHeader) -> &'static str {
    let grpc = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        "grpc"
    } else {
        "http"
    }
}

/// Envoy's %PROTOCOL%.
pub fn protocol_name(req: &RequestHeader) -> &'static str {
    match req.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Random (version 4) UUID, as Envoy generates for x-request-id. Bytes, not a `String`: it
/// lives in the request context and goes into a header value, neither of which needs a heap copy.
pub fn uuid_v4() -> [u8; 36] {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    // Where each byte's two hex digits go: the dashes sit at 8, 13, 18 and 23.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (byte, at) in b.into_iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    out
}

/// Two lower-case hex digits per byte value: one load per byte instead of two nibble lookups.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// Appends `v` in decimal: three compares instead of a formatter (addresses, per request).
pub fn push_u8(out: &mut Vec<u8>, v: u8) {
    if v >= 100 {
        out.push(b'0' + v / 100);
    }
    if v >= 10 {
        out.push(b'0' + v / 10 % 10);
    }
    out.push(b'0' + v % 10);
}

/// The x-forwarded-for value sent upstream: the client address appended to what came in.
/// IPv4 addresses are written by hand; `Ipv4Addr`'s `Display` goes through `core::fmt` and was
/// a visible part of the per-request cost.
pub fn forwarded_for(existing: Option<&[u8]>, ip: std::net::IpAddr) -> http::HeaderValue {
    let mut out = Vec::with_capacity(existing.map_or(0, |e| e.len() + 2) + 15);
    if let Some(existing) = existing.filter(|e| !e.is_empty()) {
        out.extend_from_slice(existing);
        out.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u8(&mut out, octet);
            }
        }
        v6 => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    // The incoming value was a valid header value and an address adds only visible ASCII.
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).unwrap_or(http::HeaderValue::from_static(""))
}

/// An RFC 3339 UTC timestamp with milliseconds, kept inline (24 bytes, no allocation).
pub struct Timestamp([u8; 24]);

impl Timestamp {
    /// The text (ASCII) as bytes: what the access log copies, with no UTF-8 check on the way.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Start time of a request that has run for `elapsed`.
pub fn rfc3339_now_minus(elapsed: std::time::Duration) -> Timestamp {
    let start = std::time::SystemTime::now() - elapsed;
    rfc3339(start)
}

thread_local! {
    /// The last second formatted on this thread and its text: every access-log line formats a
    /// timestamp, and most fall in the same second as the one before.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 24])> = const { std::cell::Cell::new((u64::MAX, [0; 24])) };
}

fn rfc3339(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (last, mut out) = LAST_SECOND.get();
    // Digits placed by hand: `format!` with padded integers cost several times as much.
    let put = |out: &mut [u8; 24], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    if last != secs {
        out = *b"0000-00-00T00:00:00.000Z";
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, day) = civil_from_days(days as i64);
        put(&mut out, 0, 4, y.clamp(0, 9999) as u64);
        put(&mut out, 5, 2, u64::from(m));
        put(&mut out, 8, 2, u64::from(day));
        put(&mut out, 11, 2, rem / 3600);
        put(&mut out, 14, 2, rem % 3600 / 60);
        put(&mut out, 17, 2, rem % 60);
        LAST_SECOND.set((secs, out));
    }
    put(&mut out, 20, 3, u64::from(d.subsec_millis()));
    Timestamp(out)
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's civil calendar algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("demoapp.magedu.com:32070"), "demoapp.magedu.com");
        assert_eq!(strip_port("demoapp.magedu.com"), "demoapp.magedu.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn cookies_and_query() {
        let mut req = RequestHeader::build("GET", b"/x?user=7&b", None).unwrap();
        req.insert_header("cookie", "a=1; session=\"abc\"").unwrap();
        assert_eq!(cookie(&req, "session"), Some("abc"));
        assert_eq!(cookie(&req, "missing"), None);
        assert_eq!(query_param(&req, "user"), Some("7"));
        assert_eq!(query_param(&req, "b"), Some(""));
        assert_eq!(query_param(&req, "c"), None);
    }

    #[test]
    fn uuid_shape() {
        let id = uuid_v4();
        let id = std::str::from_utf8(&id).unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "RFC 4122 variant");
        assert_ne!(uuid_v4(), uuid_v4());
    }

    #[test]
    fn small_numbers() {
        for v in [0u8, 7, 10, 99, 100, 101, 199, 255] {
            let mut out = Vec::new();
            push_u8(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let v4: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(forwarded_for(None, v4), "203.0.113.9");
        assert_eq!(forwarded_for(Some(b""), v4), "203.0.113.9");
        assert_eq!(forwarded_for(Some(b"10.0.0.1"), v4), "10.0.0.1, 203.0.113.9");
        assert_eq!(forwarded_for(Some(b"10.0.0.1"), v6), "10.0.0.1, 2001:db8::1");
        assert_eq!(forwarded_for(None, "0.0.0.0".parse().unwrap()), "0.0.0.0");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_880_093_007);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-23T06:41:33.007Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH).as_bytes(), b"1970-01-01T00:00:00.000Z");
        // A new second, the same second again (from the cached prefix), the next day.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_880_093_999);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-23T06:41:33.999Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_880_093_500);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-23T06:41:33.500Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_942_400_001);
        assert_eq!(rfc3339(t).as_bytes(), b"2025-11-24T00:00:00.001Z");
    }
}
