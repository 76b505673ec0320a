//! gRPC-Web: browsers' `application/grpc-web` and `application/grpc-web-text` requests sent
//! upstream as gRPC and the answers sent back in gRPC-Web's form, as Envoy's grpc_web filter
//! does on Istio's gateways.
//!
//! ```text
//!  request head ── content-type application/grpc, te: trailers (text: no content-length)
//!  request body ── text: base64 decoded, quad by quad across chunks
//!  response head ─ application/grpc… → application/grpc-web+proto (or -text+proto), chunked
//!  response body ─ text: base64 encoded, carrying up to two bytes across chunks
//!  trailers ────── one frame in the body: 0x80, length, `name:value\r\n` lines
//! ```
//!
//! Only `POST`s are looked at (gRPC-Web has no other method), so other requests pay one
//! comparison.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

const GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const GRPC_WEB_PROTO: HeaderValue = HeaderValue::from_static("application/grpc-web+proto");
const GRPC_WEB_TEXT_PROTO: HeaderValue = HeaderValue::from_static("application/grpc-web-text+proto");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
const CHUNKED: HeaderValue = HeaderValue::from_static("chunked");
/// The flag byte of gRPC-Web's trailer frame.
const TRAILER_FRAME: u8 = 0x80;

/// A gRPC-Web exchange in progress.
pub(super) struct GrpcWeb {
    /// `grpc-web-text`: bodies are base64 both ways.
    text: bool,
    /// Base64 characters of the request body not decoded yet (under one quad).
    pending_in: Vec<u8>,
    /// Which try the request body is going to: a retry replays it from its start.
    try_number: u32,
    /// Response bytes not encoded yet (under three).
    pending_out: Vec<u8>,
    /// The upstream answered gRPC, so the response is translated.
    translating: bool,
}

impl GrpcWeb {
    /// A gRPC-Web request, or `None`.
    pub(super) fn detect(req: &RequestHeader) -> Option<GrpcWeb> {
        if req.method != Method::POST {
            return None;
        }
        let content_type = req.headers.get(CONTENT_TYPE)?.as_bytes();
        let rest = strip_prefix_ignore_case(content_type, b"application/grpc-web")?;
        let text = strip_prefix_ignore_case(rest, b"-text").is_some();
        Some(GrpcWeb { text, pending_in: Vec::new(), try_number: 0, pending_out: Vec::new(), translating: false })
    }

    /// The upstream request's head: gRPC.
    pub(super) fn upstream_request(&self, req: &mut RequestHeader) -> Result<()> {
        req.insert_header(CONTENT_TYPE, GRPC)?;
        req.insert_header(http::header::TE, TRAILERS)?;
        if self.text {
            // The decoded body is shorter.
            req.remove_header(&CONTENT_LENGTH);
        }
        Ok(())
    }

    /// A request body chunk on its way to try `try_number`: base64-decoded for text. A body
    /// that is not base64 is the client's error (the gateway answers 400, in gRPC's form).
    pub(super) fn request_body(&mut self, try_number: u32, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        if !self.text {
            return Ok(());
        }
        if try_number != self.try_number {
            (self.try_number, self.pending_in) = (try_number, Vec::new());
        }
        if let Some(chunk) = body.as_ref() {
            self.pending_in.extend(chunk.iter().filter(|b| !b.is_ascii_whitespace()));
        }
        let whole = self.pending_in.len() / 4 * 4;
        if end && whole != self.pending_in.len() {
            return Err(Error::explain(ErrorType::InvalidHTTPHeader, "grpc-web-text body is not base64").into_down());
        }
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Quad by quad where padding sits: clients may send separately padded segments.
        let mut start = 0;
        for quad in (0..whole).step_by(4) {
            if self.pending_in[quad + 3] == b'=' {
                decode_into(&self.pending_in[start..quad + 4], &mut out)?;
                start = quad + 4;
            }
        }
        decode_into(&self.pending_in[start..whole], &mut out)?;
        self.pending_in.drain(..whole);
        *body = (!out.is_empty() || end).then(|| Bytes::from(out));
        Ok(())
    }

    /// The response head: gRPC-Web's content type when the upstream answered gRPC.
    pub(super) fn response_header(&mut self, resp: &mut ResponseHeader) -> Result<()> {
        let grpc = resp.headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc || resp.status.is_informational() {
            return Ok(());
        }
        self.translating = true;
        resp.insert_header(CONTENT_TYPE, if self.text { GRPC_WEB_TEXT_PROTO } else { GRPC_WEB_PROTO })?;
        resp.remove_header(&CONTENT_LENGTH);
        resp.insert_header(TRANSFER_ENCODING, CHUNKED)?;
        Ok(())
    }

    /// A response body chunk: base64-encoded for text (the last bytes of an uneven chunk wait
    /// for the next, or for the end).
    pub(super) fn response_body(&mut self, body: &mut Option<Bytes>, end: bool) {
        if !(self.text && self.translating) {
            return;
        }
        if let Some(chunk) = body.as_ref() {
            self.pending_out.extend_from_slice(chunk);
        }
        let take = if end { self.pending_out.len() } else { self.pending_out.len() / 3 * 3 };
        let encoded = STANDARD.encode(&self.pending_out[..take]);
        self.pending_out.drain(..take);
        *body = Some(Bytes::from(encoded));
    }

    /// The upstream's trailers as gRPC-Web's trailer frame, sent as the body's last bytes.
    pub(super) fn trailers(&mut self, trailers: &HeaderMap) -> Option<Bytes> {
        if !self.translating {
            return None;
        }
        let lines: usize = trailers.iter().map(|(k, v)| k.as_str().len() + v.len() + 3).sum();
        let mut frame = BytesMut::with_capacity(5 + lines);
        frame.put_u8(TRAILER_FRAME);
        frame.put_u32(lines as u32);
        for (name, value) in trailers {
            frame.put_slice(name.as_str().as_bytes());
            frame.put_u8(b':');
            frame.put_slice(value.as_bytes());
            frame.put_slice(b"\r\n");
        }
        if !self.text {
            return Some(frame.freeze());
        }
        self.pending_out.extend_from_slice(&frame);
        let encoded = STANDARD.encode(&self.pending_out);
        self.pending_out.clear();
        Some(Bytes::from(encoded))
    }
}

fn decode_into(text: &[u8], out: &mut Vec<u8>) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    STANDARD
        .decode_vec(text, out)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "grpc-web-text body is not base64", e).into_down())
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: &str) -> RequestHeader {
        let mut req = RequestHeader::build(Method::POST, b"/pkg.Svc/Call", None).unwrap();
        req.insert_header(CONTENT_TYPE, content_type).unwrap();
        req
    }

    #[test]
    fn detects_both_forms_and_nothing_else() {
        assert!(!GrpcWeb::detect(&request("application/grpc-web+proto")).unwrap().text);
        assert!(GrpcWeb::detect(&request("application/grpc-web-text")).unwrap().text);
        assert!(GrpcWeb::detect(&request("Application/GRPC-Web-Text+proto")).unwrap().text);
        assert!(GrpcWeb::detect(&request("application/grpc")).is_none());
        assert!(GrpcWeb::detect(&request("application/json")).is_none());
        let mut get = request("application/grpc-web");
        get.set_method(Method::GET);
        assert!(GrpcWeb::detect(&get).is_none());
    }

    #[test]
    fn text_bodies_decode_across_chunks_and_padded_segments() {
        let mut g = GrpcWeb::detect(&request("application/grpc-web-text")).unwrap();
        let whole = STANDARD.encode(b"hello, grpc-web");
        let (a, b) = whole.split_at(5);
        let mut out = Vec::new();
        for (chunk, end) in [(a, false), (b, true)] {
            let mut body = Some(Bytes::copy_from_slice(chunk.as_bytes()));
            g.request_body(1, &mut body, end).unwrap();
            out.extend_from_slice(&body.unwrap_or_default());
        }
        assert_eq!(out, b"hello, grpc-web");
        // Two separately padded segments.
        let mut body = Some(Bytes::from(format!("{}{}", STANDARD.encode(b"ab"), STANDARD.encode(b"cde"))));
        g.request_body(2, &mut body, true).unwrap();
        assert_eq!(body.unwrap(), &b"abcde"[..]);
        let mut bad = Some(Bytes::from_static(b"abc"));
        assert!(g.request_body(3, &mut bad, true).is_err());
    }

    #[test]
    fn responses_become_grpc_web_with_a_trailer_frame() {
        let mut g = GrpcWeb::detect(&request("application/grpc-web+proto")).unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header(CONTENT_TYPE, "application/grpc").unwrap();
        resp.insert_header(CONTENT_LENGTH, "10").unwrap();
        g.response_header(&mut resp).unwrap();
        assert_eq!(resp.headers[CONTENT_TYPE], "application/grpc-web+proto");
        assert!(resp.headers.get(CONTENT_LENGTH).is_none());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(&g.trailers(&trailers).unwrap()[..], b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n");

        // Text: the body and the frame as one base64 stream.
        let mut g = GrpcWeb::detect(&request("application/grpc-web-text")).unwrap();
        g.response_header(&mut resp).unwrap();
        let mut encoded = String::new();
        for chunk in [&b"\x00\x00\x00\x00\x02"[..], b"hi"] {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            g.response_body(&mut body, false);
            encoded.push_str(std::str::from_utf8(&body.unwrap()).unwrap());
        }
        encoded.push_str(std::str::from_utf8(&g.trailers(&trailers).unwrap()).unwrap());
        let decoded = STANDARD.decode(encoded).unwrap();
        assert_eq!(&decoded[..7], b"\x00\x00\x00\x00\x02hi");
        assert_eq!(&decoded[7..], b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n");
    }

    #[test]
    fn other_responses_pass_as_they_are() {
        let mut g = GrpcWeb::detect(&request("application/grpc-web-text")).unwrap();
        let mut resp = ResponseHeader::build(503, None).unwrap();
        resp.insert_header(CONTENT_TYPE, "text/plain").unwrap();
        g.response_header(&mut resp).unwrap();
        let mut body = Some(Bytes::from_static(b"no healthy upstream"));
        g.response_body(&mut body, true);
        assert_eq!(body.unwrap(), &b"no healthy upstream"[..]);
        assert!(g.trailers(&HeaderMap::new()).is_none());
    }
}
