//! WebSocket upgrades through the gateway (issue 19 item 6), with a real RFC 6455 client
//! and server (tokio-tungstenite): Grafana Live's path, messages both ways, a message the
//! server sends first, and the close handshake. Istio lets upgrades through by default.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use meshgate_e2e::prelude::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server: greets each client, then echoes every text and binary message
/// (prefixed `echo:` for text) until the client closes.
async fn websocket_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut path = String::new();
                // The callback's error type is tungstenite's (an HTTP response), not ours.
                #[allow(clippy::result_large_err)]
                let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    path = req.uri().to_string();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                let _ = ws.send(Message::text(format!("hello {path}"))).await;
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("echo:{}", t.as_str())),
                        Message::Binary(b) => Message::Binary(b),
                        // tungstenite answers the close itself; the next read sends it and ends.
                        Message::Close(_) => continue,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn websocket_upgrades_pass_through_both_ways() {
    upgrade_both_ways(&[]).await;
}

/// The own request loop tunnels the upgraded connection the same way.
#[tokio::test]
async fn the_own_loop_passes_websocket_upgrades_through() {
    upgrade_both_ways(&["--request-loop", "own"]).await;
}

async fn upgrade_both_ways(args: &[&str]) {
    let (ws_addr, server) = websocket_server().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["grafana.example.com"])).unwrap();
    cfg.write(
        "grafana.yaml",
        &docs(&[
            service_named("grafana", "monitoring", "http", 3000, 3000),
            endpoints_for("grafana", "monitoring", Some("http"), &[(ws_addr, &[][..])]),
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grafana, namespace: monitoring}
spec:
  hosts: ["grafana.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{destination: {host: grafana, port: {number: 3000}}}]
"#
            .to_string(),
        ]),
    )
    .unwrap();
    let gw = GatewayProcess::builder().config(cfg.path()).port(80).args(args.iter().copied()).start().await.unwrap();

    let stream = TcpStream::connect(gw.addr(80)).await.unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async("ws://grafana.example.com/api/live/ws", stream).await.expect("upgrade");
    assert_eq!(response.status().as_u16(), 101);
    // The server speaks first, then answers each message.
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello /api/live/ws"));
    for i in 0..20 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("echo:m{i}")));
    }
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
    // The close handshake completes: the stream ends without an error.
    while let Some(msg) = ws.next().await {
        assert!(matches!(msg, Ok(Message::Close(_))), "{msg:?}");
    }
    let line = gw.wait_for_log(|l| l.contains("/api/live/ws"), Duration::from_secs(10)).await.expect("logged");
    assert!(line.contains("\"response_code\":101"), "{line}");
    server.abort();
}
