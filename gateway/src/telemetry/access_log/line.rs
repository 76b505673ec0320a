//! The access log line: its fields (taken from the exchange record), the parts prepared once
//! per cluster or route, and the hand-written JSON encoding (held byte for byte to serde_json's by the tests).

/// Field names follow Envoy's default access log vocabulary as Istio prints it. Borrowed so
/// a request serialises its line straight from its own state: one buffer, no field copies.
/// The fields that describe the route, cluster and endpoint come pre-encoded ([`Prepared`]),
/// built once when the configuration is compiled.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// RFC 3339 text (ASCII, see `telemetry::timestamp::Timestamp::as_bytes`); written without escaping,
    /// like `method` (a token: no quotes, backslashes or control bytes), `protocol` and
    /// `response_flags` (the gateway's own vocabulary).
    pub(crate) start_time: &'a [u8],
    pub(crate) method: &'a str,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) protocol: &'static str,
    pub(crate) response_code: u16,
    pub(crate) response_flags: &'static str,
    /// Why the gateway answered itself where a flag alone does not say (Envoy's
    /// `%RESPONSE_CODE_DETAILS%`); the field is left out when unset.
    pub(crate) response_code_details: Option<&'a str>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) duration: u64,
    pub(crate) upstream_service_time: Option<u64>,
    pub(crate) upstream_host: Option<&'a Prepared<UpstreamHost>>,
    pub(crate) upstream_cluster: Option<&'a Prepared<UpstreamCluster>>,
    pub(crate) route_name: Option<&'a Prepared<RouteName>>,
    pub(crate) request_id: Option<RequestId<'a>>,
    pub(crate) x_forwarded_for: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
    pub(crate) downstream_remote_address: Option<std::net::SocketAddr>,
}

/// `request_id`: the request's own header, or the id the gateway generated for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RequestId<'a> {
    Header(&'a str),
    /// Lower-case hex and dashes: nothing to check or escape.
    Generated(&'a [u8; 36]),
}

/// A field whose value is fixed by the configuration (the endpoint's address, the cluster's and
/// the route's names): its key, punctuation and escaped value encoded once, when the runtime is
/// compiled, and copied into each line whole. `K` names the field, so one cannot be passed
/// where another belongs.
pub(crate) struct Prepared<K> {
    /// `,"key":value` exactly as the line carries it.
    encoded: Box<[u8]>,
    key: std::marker::PhantomData<K>,
}

impl<K> std::fmt::Debug for Prepared<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.encoded))
    }
}

/// The key of a [`Prepared`] field.
pub(crate) trait Key {
    /// `,"key":`
    const KEY: &'static [u8];
    /// `,"key":null`, for requests without the field.
    const NULL: &'static [u8];
}

macro_rules! keys {
    ($($(#[$doc:meta])* $name:ident = $key:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) enum $name {}
        impl Key for $name {
            const KEY: &'static [u8] = concat!(",\"", $key, "\":").as_bytes();
            const NULL: &'static [u8] = concat!(",\"", $key, "\":null").as_bytes();
        }
    )*};
}

keys! {
    /// `upstream_host`: the endpoint's address.
    UpstreamHost = "upstream_host";
    /// `upstream_cluster`: the cluster's name.
    UpstreamCluster = "upstream_cluster";
    /// `route_name`: the route's name.
    RouteName = "route_name";
}

impl<K: Key> Prepared<K> {
    fn encode(write: impl FnOnce(&mut Vec<u8>)) -> Prepared<K> {
        let mut encoded = K::KEY.to_vec();
        write(&mut encoded);
        Prepared { encoded: encoded.into_boxed_slice(), key: std::marker::PhantomData }
    }

    /// The field with a string value (escaped here, once).
    pub(crate) fn string(value: &str) -> Prepared<K> {
        Self::encode(|out| string(out, value))
    }

    /// The field with an address value.
    pub(crate) fn address(value: std::net::SocketAddr) -> Prepared<K> {
        Self::encode(|out| address(out, value))
    }

    fn write(field: Option<&Self>, out: &mut Vec<u8>) {
        out.extend_from_slice(field.map_or(K::NULL, |f| &f.encoded));
    }

    fn len(field: Option<&Self>) -> usize {
        field.map_or(0, |f| f.encoded.len())
    }
}

impl<'a> Entry<'a> {
    /// The line's fields for an exchange that started at `start_time`.
    pub(crate) fn of(
        x: &crate::telemetry::Exchange<'a>,
        start_time: &'a crate::telemetry::timestamp::Timestamp,
    ) -> Entry<'a> {
        Entry {
            start_time: start_time.as_bytes(),
            method: x.method(),
            authority: x.authority(),
            path: x.path(),
            protocol: x.protocol_name(),
            response_code: x.code,
            response_flags: x.flags.as_str(),
            response_code_details: x.details,
            bytes_received: x.bytes_received,
            bytes_sent: x.bytes_sent,
            duration: x.duration.as_millis() as u64,
            upstream_service_time: x.upstream_service_time,
            upstream_host: x.endpoint_telemetry().map(|e| &e.log_host),
            upstream_cluster: x.cluster_telemetry().map(|t| &t.log_name),
            route_name: x.route_name,
            request_id: x.request_id(),
            x_forwarded_for: x.x_forwarded_for(),
            user_agent: x.user_agent(),
            downstream_remote_address: x.downstream,
        }
    }

    /// The JSON line (with its newline), written field by field. serde_json's derive produced
    /// the same bytes at about twice the instructions: it escapes strings byte by byte and
    /// formats numbers and addresses through `core::fmt`. The unit tests hold the output equal
    /// to serde_json's.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        // One reservation for the whole line, so the copies below do not each check for room
        // to grow (they still check, but never take the slow path).
        out.reserve(LINE_OVERHEAD + self.variable_len());
        debug_assert!(![self.start_time, self.method.as_bytes(), self.protocol.as_bytes()]
            .iter()
            .any(|s| needs_escape(s)));
        debug_assert!(!needs_escape(self.response_flags.as_bytes()));
        // Each key goes out with the punctuation around it in one copy; a string value's
        // closing quote goes with the next key, and the next value's opening quote too.
        out.extend_from_slice(b"{\"start_time\":\"");
        out.extend_from_slice(self.start_time);
        out.extend_from_slice(b"\",\"method\":\"");
        out.extend_from_slice(self.method.as_bytes());
        out.extend_from_slice(b"\",\"authority\":\"");
        contents(out, self.authority);
        out.extend_from_slice(b"\",\"path\":\"");
        contents(out, self.path);
        out.extend_from_slice(b"\",\"protocol\":\"");
        out.extend_from_slice(self.protocol.as_bytes());
        out.extend_from_slice(b"\",\"response_code\":");
        number(out, u64::from(self.response_code));
        out.extend_from_slice(b",\"response_flags\":\"");
        out.extend_from_slice(self.response_flags.as_bytes());
        if let Some(details) = self.response_code_details {
            out.extend_from_slice(b"\",\"response_code_details\":\"");
            contents(out, details);
        }
        out.extend_from_slice(b"\",\"bytes_received\":");
        number(out, self.bytes_received);
        out.extend_from_slice(b",\"bytes_sent\":");
        number(out, self.bytes_sent);
        out.extend_from_slice(b",\"duration\":");
        number(out, self.duration);
        out.extend_from_slice(b",\"upstream_service_time\":");
        optional(out, self.upstream_service_time, number);
        Prepared::write(self.upstream_host, out);
        Prepared::write(self.upstream_cluster, out);
        Prepared::write(self.route_name, out);
        out.extend_from_slice(b",\"request_id\":");
        optional(out, self.request_id, |out, id| match id {
            RequestId::Header(id) => string(out, id),
            RequestId::Generated(id) => {
                out.push(b'"');
                out.extend_from_slice(id);
                out.push(b'"');
            }
        });
        out.extend_from_slice(b",\"x_forwarded_for\":");
        optional(out, self.x_forwarded_for, string);
        out.extend_from_slice(b",\"user_agent\":");
        optional(out, self.user_agent, string);
        out.extend_from_slice(b",\"downstream_remote_address\":");
        optional(out, self.downstream_remote_address, address);
        out.extend_from_slice(b"}\n");
    }

    /// Bytes of the string fields before escaping, and of the prepared fields.
    fn variable_len(&self) -> usize {
        let optional = |s: Option<&str>| s.map_or(0, str::len);
        self.start_time.len()
            + self.method.len()
            + self.authority.len()
            + self.path.len()
            + self.protocol.len()
            + self.response_flags.len()
            + optional(self.response_code_details)
            + Prepared::len(self.upstream_host)
            + Prepared::len(self.upstream_cluster)
            + Prepared::len(self.route_name)
            + self.request_id.map_or(0, |id| match id {
                RequestId::Header(id) => id.len(),
                RequestId::Generated(id) => id.len(),
            })
            + optional(self.x_forwarded_for)
            + optional(self.user_agent)
    }
}

/// Keys, quotes, numbers and addresses of a line: with [`Entry::variable_len`], room for any
/// line without escapes.
const LINE_OVERHEAD: usize = 512;

fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: fn(&mut Vec<u8>, T)) {
    match value {
        Some(v) => write(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

pub(crate) fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string. Header values and paths almost never need escaping, so they are checked
/// first and copied whole; the rare one with quotes, backslashes or control bytes goes
/// through serde_json's escaper.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    contents(out, s);
    out.push(b'"');
}

/// The inside of a JSON string: `s` escaped, without the quotes.
pub(crate) fn contents(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        let at = out.len();
        let _ = serde_json::to_writer(&mut *out, s);
        // Without serde_json's quotes (the rare path: a shift of the line's tail).
        out.pop();
        out.remove(at);
        return;
    }
    out.extend_from_slice(s.as_bytes());
}

/// Whether JSON needs any byte of `s` escaped: control bytes, `"` and `\` (serde_json escapes
/// nothing else). Eight bytes per step: scanning the path, the cluster name and the header
/// values a byte at a time was a quarter of the encoder's instructions.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // High bit set in bytes of `x` below `n` (n <= 0x80). A borrow can also mark a byte after
    // a real hit, never when there is none, so "any byte below" is exact.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let special = |word: [u8; 8]| {
        let x = u64::from_ne_bytes(word);
        below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) != 0
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        w
    };
    if s.len() < 8 {
        // Padded with spaces, which need no escaping.
        let mut w = [b' '; 8];
        w[..s.len()].copy_from_slice(s);
        return special(w);
    }
    // Whole words, then the last eight bytes (overlapping the last word): no byte loop.
    (0..s.len() / 8).any(|i| special(word(i * 8))) || special(word(s.len() - 8))
}

/// A JSON string of the address.
pub(crate) fn address(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            // Built on the stack, quotes included, and appended in one copy: each push onto
            // the line re-reads and re-stores its length and checks its capacity.
            let mut text = [0u8; 23];
            text[0] = b'"';
            let mut len = 1;
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = [b'0' + octet / 100, b'0' + octet / 10 % 10, b'0' + octet % 10];
                let skip = usize::from(octet < 100) + usize::from(octet < 10);
                text[len..len + 3 - skip].copy_from_slice(&digits[skip..]);
                len += 3 - skip;
            }
            text[len] = b':';
            len += 1;
            let port = v4.port();
            let digits = 1
                + usize::from(port >= 10)
                + usize::from(port >= 100)
                + usize::from(port >= 1000)
                + usize::from(port >= 10_000);
            let mut rest = port;
            for i in (len..len + digits).rev() {
                text[i] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            len += digits;
            text[len] = b'"';
            out.extend_from_slice(&text[..=len]);
        }
        // IPv6 text has compression rules; the standard formatter knows them.
        v6 => {
            use std::io::Write;
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The line as serde_json writes it: the format before the encoder was hand-written, which
    /// the encoder must keep byte for byte.
    #[derive(serde::Serialize)]
    pub(crate) struct Reference<'a> {
        start_time: &'a str,
        method: &'a str,
        authority: &'a str,
        path: &'a str,
        protocol: &'static str,
        response_code: u16,
        response_flags: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        response_code_details: Option<&'a str>,
        bytes_received: u64,
        bytes_sent: u64,
        duration: u64,
        upstream_service_time: Option<u64>,
        upstream_host: Option<std::net::SocketAddr>,
        upstream_cluster: Option<&'a str>,
        route_name: Option<&'a str>,
        request_id: Option<&'a str>,
        x_forwarded_for: Option<&'a str>,
        user_agent: Option<&'a str>,
        downstream_remote_address: Option<std::net::SocketAddr>,
    }

    /// The prepared fields of a [`Reference`], as the runtime builds them.
    pub(crate) struct Fields {
        host: Option<Prepared<UpstreamHost>>,
        cluster: Option<Prepared<UpstreamCluster>>,
        route: Option<Prepared<RouteName>>,
    }

    impl Reference<'_> {
        pub(crate) fn fields(&self) -> Fields {
            Fields {
                host: self.upstream_host.map(Prepared::address),
                cluster: self.upstream_cluster.map(Prepared::string),
                route: self.route_name.map(Prepared::string),
            }
        }

        pub(crate) fn entry<'a>(&'a self, fields: &'a Fields) -> Entry<'a> {
            Entry {
                start_time: self.start_time.as_bytes(),
                method: self.method,
                authority: self.authority,
                path: self.path,
                protocol: self.protocol,
                response_code: self.response_code,
                response_flags: self.response_flags,
                response_code_details: self.response_code_details,
                bytes_received: self.bytes_received,
                bytes_sent: self.bytes_sent,
                duration: self.duration,
                upstream_service_time: self.upstream_service_time,
                upstream_host: fields.host.as_ref(),
                upstream_cluster: fields.cluster.as_ref(),
                route_name: fields.route.as_ref(),
                request_id: self.request_id.map(RequestId::Header),
                x_forwarded_for: self.x_forwarded_for,
                user_agent: self.user_agent,
                downstream_remote_address: self.downstream_remote_address,
            }
        }
    }

    pub(crate) fn reference<'a>(path: &'a str, agent: Option<&'a str>, peer: &str) -> Reference<'a> {
        Reference {
            start_time: "2026-11-23T06:41:33.123Z",
            method: "GET",
            authority: "bookinfo.example.com",
            path,
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: "UF",
            response_code_details: None,
            bytes_received: 0,
            bytes_sent: 18_446_744_073_709_551_615,
            duration: 12,
            upstream_service_time: None,
            upstream_host: Some("10.0.0.7:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local"),
            route_name: None,
            request_id: Some("5f0e6c6e-8a51-4b4e-9d6f-0c1a2b3c4d5e"),
            x_forwarded_for: Some("203.0.113.9, 10.0.0.1"),
            user_agent: agent,
            downstream_remote_address: Some(peer.parse().unwrap()),
        }
    }

    #[test]
    fn escapes_are_found_at_every_position() {
        for len in 0..40 {
            let plain: String = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST".chars().take(len).collect();
            assert!(!needs_escape(plain.as_bytes()), "{plain:?}");
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0, 0x1f] {
                    let mut s = plain.clone().into_bytes();
                    s[at] = special;
                    assert!(needs_escape(&s), "{len} {at} {special:?}");
                }
                for fine in ['\u{7f}', ' ', '!', '#', '[', ']', 'é', '✓'] {
                    let mut s = plain.clone();
                    s.replace_range(at..at + 1, fine.encode_utf8(&mut [0; 4]));
                    assert!(!needs_escape(s.as_bytes()), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn encoding_matches_serde_json_byte_for_byte() {
        let mut cases = vec![
            reference("/productpage?x=1", Some("curl/8.5.0"), "127.0.0.1:50123"),
            reference("/quote\"back\\slash\ttab\u{1}", Some("ünïcode ✓"), "[2001:db8::1]:443"),
            reference("/", None, "255.255.255.255:0"),
            reference("/a/long/path/without/escapes/in/it?and=a&query=string", Some("x\"y"), "10.1.2.3:8080"),
        ];
        // The prepared fields: present, absent, escaped, IPv6.
        let mut r = reference("/routed", Some("curl/8.5.0"), "10.0.0.1:1");
        r.route_name = Some("http.80|reviews.default|0");
        r.upstream_service_time = Some(3);
        cases.push(r);
        let mut r = reference("/escaped", None, "10.0.0.1:1");
        r.route_name = Some("a \"quoted\"\\route\n");
        r.upstream_cluster = Some("outbound|80||odd\u{7}name✓");
        r.upstream_host = Some("[fe80::1]:9080".parse().unwrap());
        cases.push(r);
        let mut r = reference("/nothing", None, "10.0.0.1:1");
        (r.upstream_host, r.upstream_cluster, r.route_name, r.request_id) = (None, None, None, None);
        (r.x_forwarded_for, r.downstream_remote_address) = (None, None);
        cases.push(r);
        // A local reply's details, as the denial of an unenforced policy writes them.
        let mut r = reference("/denied", None, "10.0.0.1:1");
        (r.response_code, r.response_flags) = (403, "RBAC");
        r.response_code_details = Some("rbac_access_denied_unenforced_policy[ns[istio-system]-policy[a\"b]]");
        cases.push(r);
        for r in cases {
            let fields = r.fields();
            let mut ours = Vec::new();
            r.entry(&fields).encode(&mut ours);
            let mut expected = serde_json::to_vec(&r).unwrap();
            expected.push(b'\n');
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(expected.clone()).unwrap());
            // The same id, as one the gateway generated.
            if let Some(id) = r.request_id.and_then(|id| <&[u8; 36]>::try_from(id.as_bytes()).ok()) {
                let mut entry = r.entry(&fields);
                entry.request_id = Some(RequestId::Generated(id));
                let mut ours = Vec::new();
                entry.encode(&mut ours);
                assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(expected).unwrap());
            }
        }
    }

    #[test]
    fn addresses_match_serde_json() {
        for ip in ["0.0.0.0", "1.2.3.4", "10.20.30.40", "100.200.9.99", "255.255.255.255", "::1", "2001:db8::7"] {
            for port in [0u16, 1, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 65_535] {
                let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
                let mut ours = Vec::new();
                address(&mut ours, addr);
                assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&addr).unwrap());
                let prepared = Prepared::<UpstreamHost>::address(addr);
                assert_eq!(format!("{prepared:?}"), format!(",\"upstream_host\":\"{addr}\""));
            }
        }
    }
}
