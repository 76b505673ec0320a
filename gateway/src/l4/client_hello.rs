//! Peeking at a TLS ClientHello without terminating TLS.
//!
//! Routing decisions for TLS listeners (passthrough vs. local termination, which upstream, which
//! certificate) depend on the SNI and ALPN the client offers, and they have to be made before a
//! handshake starts. We therefore read the raw bytes ourselves, let rustls's server-side
//! [`Acceptor`] do the parsing (so malformed or hostile input is judged by a hardened parser, not
//! by hand-written offsets), and keep an exact copy of everything read so the caller can either
//! rewind it into the stream for a real handshake or replay it to a passthrough upstream.

use std::io;
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

/// Upper bound on the bytes read while looking for a ClientHello.
///
/// rustls refuses handshake messages larger than 64 KiB anyway, so a client that has sent this much
/// without completing a hello can never be served; the cap also bounds the memory a slow or hostile
/// client can pin per connection before any routing decision is made.
pub(crate) const MAX_HELLO_BYTES: usize = 64 * 1024;

/// Size of a single read from the stream. Real ClientHellos are a few hundred bytes to ~2 KiB
/// (post-quantum key shares), so one read normally suffices without over-reading much.
const READ_CHUNK: usize = 8 * 1024;

/// TLS record content type of handshake records (RFC 8446 §5.1); a ClientHello always travels in
/// one or more of these.
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;

/// Major byte of every TLS record-layer version (SSL 3.0 up to TLS 1.3 all use 0x03 0x0N).
const RECORD_VERSION_MAJOR: u8 = 0x03;

/// What the gateway needs from a TLS ClientHello before deciding how to handle the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientHelloInfo {
    /// SNI host name, ASCII-lowercased (DNS names are case-insensitive, and routing tables are keyed
    /// in lowercase). `None` when the client sent no SNI, e.g. because it connected by IP address.
    pub(crate) server_name: Option<String>,
    /// ALPN protocol identifiers in the client's preference order; empty when the extension is absent.
    pub(crate) alpn: Vec<Vec<u8>>,
}

impl ClientHelloInfo {
    fn from_hello(hello: &ClientHello<'_>) -> Self {
        Self {
            server_name: hello.server_name().map(str::to_ascii_lowercase),
            alpn: hello.alpn().map(|protocols| protocols.map(<[u8]>::to_vec).collect()).unwrap_or_default(),
        }
    }
}

/// Why no ClientHello could be obtained. The bytes consumed so far are returned alongside, never
/// inside, so every variant leaves the caller able to replay them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    /// The bytes are not a TLS ClientHello (wrong record type, malformed hello, or larger than
    /// [`MAX_HELLO_BYTES`]). Callers typically fall back to plain-text handling or close.
    #[error("not a TLS handshake")]
    NotTls,
    /// The client did not complete its ClientHello within the allotted time.
    #[error("timed out waiting for the ClientHello")]
    Timeout,
    /// The client closed (EOF) before a full ClientHello arrived.
    #[error("connection closed before the ClientHello completed")]
    Closed,
    /// Reading from the stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads (consumes) bytes from `stream` until a complete ClientHello is parsed.
///
/// Returns the parsed info together with EVERY byte consumed — on success and on every error — so
/// the caller can rewind them into the stream (pingora's `Stream::rewind`) for a real TLS
/// handshake, or forward them verbatim to a passthrough upstream. Bytes may extend past the end of
/// the ClientHello when the client pipelined more data into the same read (e.g. 0-RTT early data).
///
/// Parsing is delegated to a fresh [`rustls::server::Acceptor`] fed with a copy of the bytes, which
/// handles ClientHellos split across TCP segments and across several TLS records.
///
/// Quick rejection: if the first byte is not a TLS handshake record (0x16), or the record version
/// is not 3.x, [`HelloError::NotTls`] is returned as soon as the first read completes instead of
/// waiting for more input, so plain-text clients on a TLS port are recognised without delay.
///
/// Bounded: at most [`MAX_HELLO_BYTES`] are read, and `timeout` bounds the whole wait (not each
/// read), so a client trickling one byte at a time cannot hold the connection open indefinitely.
pub(crate) async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> (Vec<u8>, Result<ClientHelloInfo, HelloError>) {
    let mut consumed = Vec::new();
    // Cancelling the inner future on timeout is safe: it appends each read to `consumed` before
    // awaiting again, and an `AsyncRead` that returns `Pending` has not taken any bytes.
    let result = match tokio::time::timeout(timeout, read_until_hello(stream, &mut consumed)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(HelloError::Timeout),
    };
    (consumed, result)
}

async fn read_until_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    consumed: &mut Vec<u8>,
) -> Result<ClientHelloInfo, HelloError> {
    let mut acceptor = Acceptor::default();
    // Separate scratch buffer (rather than reading into spare room of `consumed`) so that a
    // cancelled read can never leave placeholder bytes in what we report as consumed.
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let room = MAX_HELLO_BYTES - consumed.len();
        if room == 0 {
            debug!(limit = MAX_HELLO_BYTES, "no complete ClientHello within the size limit");
            return Err(HelloError::NotTls);
        }
        let want = room.min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        let fresh = &chunk[..n];
        consumed.extend_from_slice(fresh);
        if !starts_like_tls_handshake(consumed) {
            return Err(HelloError::NotTls);
        }
        if let Some(info) = feed(&mut acceptor, fresh)? {
            return Ok(info);
        }
    }
}

/// Cheap check of the first record header, so non-TLS traffic is rejected from the first byte(s)
/// without waiting for a full record that may never come.
fn starts_like_tls_handshake(bytes: &[u8]) -> bool {
    match bytes {
        [] => true,
        [content_type] => *content_type == CONTENT_TYPE_HANDSHAKE,
        [content_type, major, ..] => *content_type == CONTENT_TYPE_HANDSHAKE && *major == RECORD_VERSION_MAJOR,
    }
}

/// Hands `fresh` to the acceptor piece by piece. rustls reads at most a few KiB per `read_tls`
/// call, so a single call may leave input behind; we keep feeding until it is all taken or the
/// hello is complete.
fn feed(acceptor: &mut Acceptor, mut fresh: &[u8]) -> Result<Option<ClientHelloInfo>, HelloError> {
    while !fresh.is_empty() {
        let taken = acceptor.read_tls(&mut fresh).map_err(|err| {
            // Only backpressure/limit errors are possible here: the source is an in-memory slice.
            debug!(error = %err, "rustls rejected ClientHello input");
            HelloError::NotTls
        })?;
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(Some(ClientHelloInfo::from_hello(&accepted.client_hello()))),
            Ok(None) if taken == 0 => {
                // No progress and no verdict: bail out rather than spin on input rustls won't take.
                debug!("rustls stopped taking ClientHello input");
                return Err(HelloError::NotTls);
            }
            Ok(None) => {}
            Err((err, _alert)) => {
                // The alert is deliberately not sent: the caller may still want to treat the
                // connection as something else, and the raw bytes are returned untouched.
                debug!(error = %err, "invalid ClientHello");
                return Err(HelloError::NotTls);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use tokio::io::{AsyncWriteExt, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// Produces the exact bytes a real rustls client sends first.
    fn client_hello_bytes(name: ServerName<'static>, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn dns(name: &'static str) -> ServerName<'static> {
        ServerName::try_from(name).unwrap()
    }

    fn h2_and_http11() -> Vec<Vec<u8>> {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    }

    /// Re-frames the handshake bytes of `hello` into TLS records of at most `size` payload bytes,
    /// to exercise a ClientHello that spans several records.
    fn refragment(hello: &[u8], size: usize) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut rest = hello;
        while !rest.is_empty() {
            assert_eq!(rest[0], CONTENT_TYPE_HANDSHAKE);
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            payload.extend_from_slice(&rest[5..5 + len]);
            rest = &rest[5 + len..];
        }
        let mut out = Vec::new();
        for piece in payload.chunks(size) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 0x03, 0x01]);
            out.extend_from_slice(&u16::try_from(piece.len()).unwrap().to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    /// A reader that hands out at most `step` bytes per read, then EOF.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        reads: usize,
    }

    impl Trickle {
        fn new(data: Vec<u8>, step: usize) -> Self {
            Self { data, pos: 0, step, reads: 0 }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.step.min(buf.remaining()).min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn read_client_hello_future_is_send_for_send_streams() {
        // Pingora's service traits require `Send` futures; this must keep holding.
        fn assert_send<T: Send>(_: &T) {}
        let mut stream = Trickle::new(Vec::new(), 1);
        let future = read_client_hello(&mut stream, LONG);
        assert_send(&future);
    }

    #[tokio::test]
    async fn parses_sni_and_alpn_from_a_real_client_hello() {
        let hello = client_hello_bytes(dns("Example.COM"), &[b"h2", b"http/1.1"]);
        let mut reader = Trickle::new(hello.clone(), usize::MAX);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        let info = result.unwrap();
        assert_eq!(info, ClientHelloInfo { server_name: Some("example.com".into()), alpn: h2_and_http11() });
        assert_eq!(consumed, hello);
    }

    #[tokio::test]
    async fn parses_a_hello_delivered_one_byte_at_a_time() {
        let hello = client_hello_bytes(dns("api.example.org"), &[b"h2", b"http/1.1"]);
        let mut trailing = hello.clone();
        trailing.extend_from_slice(b"early data that must stay in the stream");
        let mut reader = Trickle::new(trailing, 1);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        let info = result.unwrap();
        assert_eq!(info.server_name.as_deref(), Some("api.example.org"));
        assert_eq!(info.alpn, h2_and_http11());
        // Byte-wise delivery stops exactly at the end of the hello: nothing beyond it was taken.
        assert_eq!(consumed, hello);
        assert_eq!(reader.pos, hello.len());
        assert_eq!(reader.reads, hello.len());
    }

    #[tokio::test]
    async fn parses_a_hello_spread_over_many_records() {
        let hello = client_hello_bytes(dns("split.example.com"), &[b"h2", b"http/1.1"]);
        let fragmented = refragment(&hello, 40);
        assert!(fragmented.len() > hello.len() + 5, "should produce several records");
        for step in [1, 7, 4096, usize::MAX] {
            let mut reader = Trickle::new(fragmented.clone(), step);
            let (consumed, result) = read_client_hello(&mut reader, LONG).await;
            let info = result.unwrap();
            assert_eq!(info.server_name.as_deref(), Some("split.example.com"), "step {step}");
            assert_eq!(info.alpn, h2_and_http11());
            assert_eq!(consumed, fragmented);
        }
    }

    #[tokio::test]
    async fn ip_server_name_means_no_sni() {
        let hello = client_hello_bytes(ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()), &[]);
        let mut reader = Trickle::new(hello.clone(), usize::MAX);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        assert_eq!(result.unwrap(), ClientHelloInfo { server_name: None, alpn: vec![] });
        assert_eq!(consumed, hello);
    }

    #[tokio::test]
    async fn plain_http_is_rejected_without_waiting() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        client.write_all(request).await.unwrap();
        // `client` stays open: the verdict must come from the bytes, not from EOF or the timeout.
        let started = Instant::now();
        let (consumed, result) = read_client_hello(&mut server, LONG).await;
        assert!(matches!(result, Err(HelloError::NotTls)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(consumed, request);
        drop(client);
    }

    #[tokio::test]
    async fn a_large_hello_read_in_one_go_is_fed_to_rustls_completely() {
        // ~7.5 KiB of ALPN ids: more than rustls takes per `read_tls` call (4 KiB), yet a single read.
        let protocols: Vec<Vec<u8>> = (0..300).map(|i| format!("protocol-{i:03}-padding-pad").into_bytes()).collect();
        let refs: Vec<&[u8]> = protocols.iter().map(Vec::as_slice).collect();
        let hello = client_hello_bytes(dns("big.example.com"), &refs);
        assert!(hello.len() > 4096 && hello.len() <= READ_CHUNK, "{}", hello.len());
        let mut reader = Trickle::new(hello.clone(), usize::MAX);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        let info = result.unwrap();
        assert_eq!(info.server_name.as_deref(), Some("big.example.com"));
        assert_eq!(info.alpn, protocols);
        assert_eq!(consumed, hello);
    }

    #[tokio::test]
    async fn a_lone_non_tls_first_byte_is_rejected_without_waiting_for_more() {
        // Too short for rustls to judge (it wants a 5-byte record header); the first byte decides.
        for first in [&b"G"[..], &[0x16, 0x04][..]] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            client.write_all(first).await.unwrap();
            let (consumed, result) = read_client_hello(&mut server, Duration::from_secs(2)).await;
            assert!(matches!(result, Err(HelloError::NotTls)), "{first:?}: {result:?}");
            assert_eq!(consumed, first);
            drop(client);
        }
    }

    #[tokio::test]
    async fn other_record_types_and_versions_are_rejected() {
        for bytes in [
            vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28], // alert record
            vec![0x16, 0x04, 0x00, 0x00, 0x01, 0x01],       // bogus record version
            vec![0x80, 0x2e, 0x01, 0x03, 0x01],             // SSLv2-style hello
        ] {
            let mut reader = Trickle::new(bytes.clone(), usize::MAX);
            let (consumed, result) = read_client_hello(&mut reader, LONG).await;
            assert!(matches!(result, Err(HelloError::NotTls)), "{bytes:?}: {result:?}");
            assert_eq!(consumed, bytes);
        }
    }

    #[tokio::test]
    async fn handshake_record_without_a_client_hello_is_rejected() {
        // A well-formed handshake record carrying a ServerHello-typed message instead of a ClientHello.
        let bytes = vec![0x16, 0x03, 0x01, 0x00, 0x08, 0x02, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef];
        let mut reader = Trickle::new(bytes.clone(), usize::MAX);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        assert!(matches!(result, Err(HelloError::NotTls)), "{result:?}");
        assert_eq!(consumed, bytes);
    }

    #[tokio::test]
    async fn times_out_on_an_incomplete_hello_and_returns_what_was_read() {
        let hello = client_hello_bytes(dns("slow.example.com"), &[b"h2"]);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello[..10]).await.unwrap();
        let started = Instant::now();
        let (consumed, result) = read_client_hello(&mut server, Duration::from_millis(150)).await;
        assert!(matches!(result, Err(HelloError::Timeout)), "{result:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(consumed, &hello[..10]);
        drop(client);
    }

    #[tokio::test]
    async fn timeout_bounds_the_whole_wait_not_each_read() {
        let hello = client_hello_bytes(dns("trickle.example.com"), &[b"h2"]);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            // Keep making progress, slower than the overall timeout allows.
            for byte in hello {
                if client.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let started = Instant::now();
        let (consumed, result) = read_client_hello(&mut server, Duration::from_millis(200)).await;
        assert!(matches!(result, Err(HelloError::Timeout)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!consumed.is_empty());
        drop(server);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn eof_before_the_hello_completes_is_closed() {
        let hello = client_hello_bytes(dns("gone.example.com"), &[b"h2"]);
        let mut reader = Trickle::new(hello[..hello.len() - 1].to_vec(), 100);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        assert!(matches!(result, Err(HelloError::Closed)), "{result:?}");
        assert_eq!(consumed, &hello[..hello.len() - 1]);

        let mut empty = Trickle::new(Vec::new(), 1);
        let (consumed, result) = read_client_hello(&mut empty, LONG).await;
        assert!(matches!(result, Err(HelloError::Closed)), "{result:?}");
        assert!(consumed.is_empty());
    }

    #[tokio::test]
    async fn reading_stops_at_the_size_limit() {
        // A handshake message header announcing a ClientHello just under rustls's 64 KiB handshake
        // limit, followed by an endless supply of filler records: it can never complete in time.
        let mut bytes = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xf0];
        bytes.resize(5 + 0x4000, 0);
        while bytes.len() < 4 * MAX_HELLO_BYTES {
            bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
            bytes.resize(bytes.len() + 0x4000, 0);
        }
        let mut reader = Trickle::new(bytes.clone(), 3000);
        let (consumed, result) = read_client_hello(&mut reader, LONG).await;
        assert!(matches!(result, Err(HelloError::NotTls)), "{result:?}");
        assert!(consumed.len() <= MAX_HELLO_BYTES, "{}", consumed.len());
        assert_eq!(consumed, &bytes[..consumed.len()]);
    }

    #[tokio::test]
    async fn over_tcp_the_hello_arrives_in_segments_and_the_rest_stays_in_the_stream() {
        let hello = client_hello_bytes(dns("tcp.example.com"), &[b"h2", b"http/1.1"]);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let to_send = hello.clone();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let third = to_send.len() / 3;
            for piece in [&to_send[..third], &to_send[third..2 * third], &to_send[2 * third..]] {
                stream.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            stream.write_all(b"after-hello").await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let (consumed, result) = read_client_hello(&mut stream, LONG).await;
        let info = result.unwrap();
        assert_eq!(info.server_name.as_deref(), Some("tcp.example.com"));
        assert_eq!(info.alpn, h2_and_http11());
        assert_eq!(consumed, hello);

        // Whatever was not consumed is still there, in order: consumed ++ rest == what was sent.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"after-hello");
        client.await.unwrap();
    }
}
