//! Requests refused before routing because they are malformed, as RFC 9112 and Envoy's HTTP
//! connection manager refuse them: 400 (or 431 for a head over the size limit) and the
//! connection closes. A pure function of the parsed head, table-tested below. Pingora's parser
//! has already refused what it cannot parse (a bad request line, bad header syntax) with 400.

use super::local_reply::LocalReply;
use http::{Method, Version};
use pingora_http::RequestHeader;

/// Why a request head is refused, or, for one the gateway routes, its authority as sent (the
/// Host header, else an absolute-form target's), which routing reads. `head_len` is the head's
/// size when the connection's guard saw it pass `max_head` (else `None`).
pub(super) fn check(
    head: &RequestHeader,
    head_len: Option<usize>,
    max_head: usize,
) -> Result<Option<&str>, LocalReply> {
    if head_len.is_some_and(|len| len > max_head) {
        return Err(LocalReply::headers_too_large());
    }
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request with no Host, and for any request with more
    // than one Host or a Host that is not a valid field value.
    let mut hosts = head.headers.get_all(http::header::HOST).iter();
    let host = match hosts.next() {
        Some(v) => Some(v.to_str().map_err(|_| LocalReply::bad_request())?),
        None if head.version == Version::HTTP_11 => return Err(LocalReply::bad_request()),
        None => None,
    };
    if hosts.next().is_some() {
        return Err(LocalReply::bad_request());
    }
    if head.version <= Version::HTTP_11 && !target_form_allowed(&head.method, head.raw_path()) {
        return Err(LocalReply::bad_request());
    }
    // HTTP/2 carries the authority in the URI (`:authority`), HTTP/1 absolute form beside it.
    Ok(host.or_else(|| head.uri.authority().map(|a| a.as_str())).or_else(|| absolute_authority(head.raw_path())))
}

/// The authority of an absolute-form target (`http://a.example:8080/x` → `a.example:8080`),
/// for an HTTP/1.0 request that names its host only there. (Pingora keeps that target beside
/// the URI, whose authority it leaves empty.)
fn absolute_authority(target: &[u8]) -> Option<&str> {
    let rest = std::str::from_utf8(target).ok()?.split_once("://")?.1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty())
}

/// RFC 9112 §3.2: origin form (`/path`) or absolute form (`http://host/path`) for every method;
/// asterisk form (`*`) for OPTIONS only. (Authority form is CONNECT's, which Pingora answers
/// with 405 before this runs.)
fn target_form_allowed(method: &Method, target: &[u8]) -> bool {
    match target {
        [b'/', ..] => true,
        b"*" => method == Method::OPTIONS,
        _ => {
            let lower = target.get(..8).map(<[u8]>::to_ascii_lowercase).unwrap_or_default();
            lower.starts_with(b"http://") || lower.starts_with(b"https://")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &[u8], version: Version, hosts: &[&str]) -> RequestHeader {
        let mut h = RequestHeader::build(method, target, None).unwrap();
        h.set_version(version);
        for host in hosts {
            h.append_header("host", *host).unwrap();
        }
        h
    }

    fn code(r: Result<Option<&str>, LocalReply>) -> u16 {
        r.map_or_else(|reply| reply.code, |_| 0)
    }

    #[test]
    fn host_header_rules() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        let cases: &[(&str, Version, &[&str], u16)] = &[
            ("/", HTTP_11, &["a.example"], 0),
            ("/", HTTP_11, &[], 400),
            ("/", HTTP_11, &["a.example", "b.example"], 400),
            // HTTP/1.0 may omit Host; HTTP/2 carries :authority instead.
            ("/", HTTP_10, &[], 0),
            ("/", HTTP_2, &[], 0),
            // Absolute form still needs Host in HTTP/1.1 (RFC 9112 §3.2).
            ("http://a.example/", HTTP_11, &[], 400),
            ("http://a.example/", HTTP_11, &["a.example"], 0),
            ("/", HTTP_10, &["a.example", "b.example"], 400),
        ];
        for (target, version, hosts, want) in cases {
            let h = head("GET", target.as_bytes(), *version, hosts);
            assert_eq!(code(check(&h, None, 1024)), *want, "{target} {version:?} {hosts:?}");
        }
    }

    #[test]
    fn request_target_forms() {
        let cases: &[(&str, &[u8], u16)] = &[
            ("GET", b"/a?b=c", 0),
            ("GET", b"HTTP://a.example/x", 0),
            ("GET", b"https://a.example/x", 0),
            ("OPTIONS", b"*", 0),
            ("GET", b"*", 400),
            ("GET", b"a.example:80", 400),
            ("GET", b"index.html", 400),
            ("GET", b"ftp://a.example/x", 400),
        ];
        for (method, target, want) in cases {
            let h = head(method, target, Version::HTTP_11, &["a.example"]);
            assert_eq!(code(check(&h, None, 1024)), *want, "{method} {}", String::from_utf8_lossy(target));
        }
    }

    #[test]
    fn the_authority_routing_reads() {
        let h = head("GET", b"/", Version::HTTP_11, &["A.example:8080"]);
        assert_eq!(check(&h, None, 1024).ok().flatten(), Some("A.example:8080"));
        let h = head("GET", b"http://b.example/x", Version::HTTP_10, &[]);
        assert_eq!(check(&h, None, 1024).ok().flatten(), Some("b.example"));
        let h = head("GET", b"/", Version::HTTP_10, &[]);
        assert_eq!(check(&h, None, 1024).ok().flatten(), None);
        let mut h2 = head("GET", b"/", Version::HTTP_2, &[]);
        h2.set_uri("https://c.example/x".parse().unwrap());
        assert_eq!(check(&h2, None, 1024).ok().flatten(), Some("c.example"), ":authority");
    }

    #[test]
    fn head_size() {
        let h = head("GET", b"/", Version::HTTP_11, &["a.example"]);
        assert_eq!(code(check(&h, Some(1025), 1024)), 431);
        assert_eq!(code(check(&h, Some(1024), 1024)), 0);
        assert_eq!(code(check(&h, None, 1024)), 0);
    }
}
