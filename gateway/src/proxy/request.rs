//! What the gateway adds to a request on its way upstream: x-request-id and x-forwarded-for.

/// Random (version 4) UUID, as Envoy generates for x-request-id. Bytes, not a `String`: it
/// lives in the request context and goes into a header value, neither of which needs a heap copy.
pub(crate) fn uuid_v4() -> [u8; 36] {
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
pub(crate) fn push_u8(out: &mut Vec<u8>, v: u8) {
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
pub(crate) fn forwarded_for(existing: Option<&[u8]>, ip: std::net::IpAddr) -> http::HeaderValue {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

/// A gRPC request's `grpc-timeout` (1 to 8 digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`),
/// or `None` when the request is not gRPC or has none (or an unreadable one, which gRPC
/// servers ignore too).
pub(crate) fn grpc_timeout(req: &pingora_http::RequestHeader) -> Option<std::time::Duration> {
    use std::time::Duration;
    let content_type = req.headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    // gRPC, not gRPC-Web (whose clients send the header for the browser's own use).
    if !content_type.starts_with(b"application/grpc") || content_type.starts_with(b"application/grpc-web") {
        return None;
    }
    let value = req.headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod grpc_timeout_tests {
    use super::grpc_timeout;
    use std::time::Duration;

    fn req(content_type: &str, timeout: &str) -> pingora_http::RequestHeader {
        let mut r = pingora_http::RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        r.insert_header("content-type", content_type).unwrap();
        r.insert_header("grpc-timeout", timeout).unwrap();
        r
    }

    #[test]
    fn units_and_what_is_not_read() {
        assert_eq!(grpc_timeout(&req("application/grpc", "250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&req("application/grpc+proto", "2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&req("application/grpc", "1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&req("application/grpc", "100u")), Some(Duration::from_micros(100)));
        for (ct, t) in [
            ("application/grpc", "123456789S"),
            ("application/grpc", "5x"),
            ("application/grpc", "S"),
            ("application/grpc-web", "1S"),
            ("application/json", "1S"),
        ] {
            assert_eq!(grpc_timeout(&req(ct, t)), None, "{ct} {t}");
        }
    }
}
