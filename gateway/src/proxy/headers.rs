//! Header edits on the proxied request and response without Pingora's case-preserving name map.
//!
//! Pingora keeps, next to each HTTP/1 header map, a second map with every name's original
//! case, and its `insert_header` parses the name (copying a non-standard one into a new
//! allocation), inserts it into both maps and grows both: they are sized for exactly the headers
//! received, so the first new header reallocates and rehashes each. Envoy, which Istio users have,
//! does not preserve case either: it writes HTTP/1 header names in lower case. So the gateway
//! turns the upstream request and the downstream response into Pingora's case-less form, reserves
//! room once and inserts into the one remaining map with names built at compile time. Pingora then
//! writes the few standard names in its table in title case (`Host`, `Content-Length`, `Server`,
//! …) and every other name in lower case (docs/compatibility.md, "Header name case").

use super::request::forwarded_for;
use crate::compiled::headers::CompiledEdits;
use crate::head::X_FORWARDED_FOR;
use http::header::{Entry, HeaderName, HeaderValue};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Sets `headers` on the upstream request, replacing any it already has under those names,
/// and appends `client` to its x-forwarded-for (Envoy's `use_remote_address`). Returns whether
/// the request came with an x-forwarded-for.
pub(super) fn insert_request<const N: usize>(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    headers: [Option<(HeaderName, HeaderValue)>; N],
    edits: [Option<&CompiledEdits>; 2],
) -> Result<bool> {
    if !target_from_uri(req) {
        // An absolute-form or CONNECT target (or one that is not UTF-8) lives beside the URI
        // in the header, and the case-less conversion would drop it: rare, so the slow path.
        let had = req.headers.contains_key(&X_FORWARDED_FOR);
        if let Some(ip) = client {
            let value = forwarded_for(req.headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes), ip);
            req.insert_header(X_FORWARDED_FOR, value)?;
        }
        for (name, value) in headers.into_iter().flatten() {
            req.insert_header(name, value)?;
        }
        for e in edits.into_iter().flatten() {
            e.apply_request(req)?;
        }
        return Ok(had);
    }
    let end_stream = req.send_end_stream();
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty_request()));
    let map = &mut parts.headers;
    // Room for all of them at once: one reallocation instead of one per growth step.
    map.reserve(N + 1 + edits.iter().flatten().map(|e| e.request_additions()).sum::<usize>());
    // One lookup for x-forwarded-for's read and write: the entry keeps the slot.
    let had = match (map.entry(X_FORWARDED_FOR), client) {
        (Entry::Occupied(mut e), Some(ip)) => {
            let value = forwarded_for(Some(e.get().as_bytes()), ip);
            e.insert(value);
            true
        }
        (Entry::Vacant(e), Some(ip)) => {
            e.insert(forwarded_for(None, ip));
            false
        }
        (e, None) => matches!(e, Entry::Occupied(_)),
    };
    for (name, value) in headers.into_iter().flatten() {
        map.insert(name, value);
    }
    // The route's edits (a destination's, then the route's) come last, as Envoy's router
    // applies them after the connection manager's headers.
    for e in edits.into_iter().flatten() {
        e.edit_request_map(map);
    }
    *req = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    Ok(had)
}

/// Sets `headers` on the response, replacing any it already has under those names; a reason
/// phrase other than the status code's standard one is kept.
pub(super) fn insert_response<const N: usize>(
    resp: &mut ResponseHeader,
    headers: [Option<(HeaderName, HeaderValue)>; N],
    edits: [Option<&CompiledEdits>; 2],
) {
    let reason = resp.get_reason_phrase();
    let custom_reason = (reason != resp.status.canonical_reason()).then(|| reason.map(str::to_owned));
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
    parts.headers.reserve(N + edits.iter().flatten().map(|e| e.response_additions()).sum::<usize>());
    // The route's edits first: the gateway's own headers (`server`) win, as in Envoy.
    for e in edits.into_iter().flatten() {
        e.edit_response_map(&mut parts.headers);
    }
    for (name, value) in headers.into_iter().flatten() {
        parts.headers.insert(name, value);
    }
    *resp = ResponseHeader::from(parts);
    if let Some(reason) = custom_reason {
        // Only fails for a phrase it could not store; it stored this one before.
        let _ = resp.set_reason_phrase(reason.as_deref());
    }
}

/// Whether the request-target is the URI's path and query (origin form, the usual case), so
/// that nothing but the URI needs to survive a round trip through `http::request::Parts`.
fn target_from_uri(req: &RequestHeader) -> bool {
    let raw = req.raw_path();
    req.uri
        .path_and_query()
        .is_some_and(|pq| std::ptr::eq(pq.as_str().as_ptr(), raw.as_ptr()) && pq.as_str().len() == raw.len())
}

/// A placeholder for the moment the request's parts are out (no allocation: an empty
/// `HeaderMap` allocates nothing).
fn empty_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn request_headers_are_set_and_names_lose_their_case() {
        let mut req = RequestHeader::build("GET", b"/a?b=c", Some(2)).unwrap();
        req.append_header("Host", "example.com").unwrap();
        req.append_header("X-Forwarded-Proto", "https").unwrap();
        req.append_header("Accept-Encoding", "identity").unwrap();
        req.append_header("X-Custom", "1").unwrap();
        req.append_header("X-Custom", "2").unwrap();
        let had = insert_request(
            &mut req,
            None,
            [
                Some((XFP, HeaderValue::from_static("http"))),
                None,
                Some((HeaderName::from_static("x-request-id"), HeaderValue::from_static("id"))),
            ],
            [None, None],
        )
        .unwrap();
        assert!(!had);
        assert!(!req.has_case());
        assert_eq!(req.raw_path(), b"/a?b=c");
        assert_eq!(req.headers.get_all(&XFP).iter().collect::<Vec<_>>(), ["http"], "replaced, not appended");
        assert_eq!(req.headers.get_all("x-custom").iter().collect::<Vec<_>>(), ["1", "2"]);
        let wire = wire(&req);
        for line in
            ["Host: example.com\r\n", "accept-encoding: identity\r\n", "x-request-id: id\r\n", "x-custom: 1\r\n"]
        {
            assert!(wire.contains(line), "{line:?} in {wire:?}");
        }
    }

    #[test]
    fn a_target_beside_the_uri_is_kept() {
        let mut req = RequestHeader::build("GET", b"http://example.com/a", None).unwrap();
        let before = req.raw_path().to_vec();
        insert_request(&mut req, None, [Some((XFP, HeaderValue::from_static("http")))], [None, None]).unwrap();
        assert_eq!(req.raw_path(), before);
        assert_eq!(req.headers.get(&XFP).unwrap(), "http");
    }

    #[test]
    fn the_client_is_appended_to_x_forwarded_for() {
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        for target in [&b"/a"[..], b"http://example.com/a"] {
            let mut req = RequestHeader::build("GET", target, None).unwrap();
            assert!(!insert_request(&mut req, Some(client), [None], [None, None]).unwrap());
            assert_eq!(req.headers.get(&X_FORWARDED_FOR).unwrap(), "203.0.113.9");

            let mut req = RequestHeader::build("GET", target, None).unwrap();
            req.append_header("X-Forwarded-For", "10.0.0.1").unwrap();
            req.append_header("X-Forwarded-For", "10.0.0.2").unwrap();
            assert!(insert_request(&mut req, Some(client), [None], [None, None]).unwrap());
            let all: Vec<_> = req.headers.get_all(&X_FORWARDED_FOR).iter().collect();
            assert_eq!(all, ["10.0.0.1, 203.0.113.9"], "{target:?}: first value extended, one header line");

            let mut req = RequestHeader::build("GET", target, None).unwrap();
            req.append_header("x-forwarded-for", "10.0.0.1").unwrap();
            assert!(insert_request(&mut req, None, [None], [None, None]).unwrap(), "no client address: left alone");
            assert_eq!(req.headers.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1");
        }
    }

    #[test]
    fn h2_end_stream_is_kept() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        insert_request(&mut req, None, [Some((XFP, HeaderValue::from_static("http")))], [None, None]).unwrap();
        assert_eq!(req.send_end_stream(), Some(false));
    }

    #[test]
    fn response_reason_phrase_survives() {
        let mut resp = ResponseHeader::build(200, Some(1)).unwrap();
        resp.append_header("Content-Length", "0").unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        insert_response(
            &mut resp,
            [Some((http::header::SERVER, HeaderValue::from_static("istio-envoy")))],
            [None, None],
        );
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.headers.get("server").unwrap(), "istio-envoy");
        assert_eq!(resp.headers.get("content-length").unwrap(), "0");
        let mut plain = ResponseHeader::build(404, None).unwrap();
        insert_response(&mut plain, [None], [None, None]);
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
    }
}
