//! WebSocket (HTTP/1.1 upgrade) pass-through.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use gateway_model::Balance;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server; counts the connections it upgraded.
async fn ws_echo_backend() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upgraded = Arc::new(AtomicUsize::new(0));
    let count = upgraded.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (addr, upgraded, task)
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let (addr, upgraded, _task) = ws_echo_backend().await;
    let s = state(
        vec![pool(
            "ws",
            Balance::LeastConnections,
            vec![be("echo", &addr, None)],
        )],
        vec![route("ws", &["ws.test"], "/ws", "ws")],
    );
    let p = proxy(1, s, None).await;
    for round in 0..2 {
        let stream = TcpStream::connect(p.addr).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.test/ws", stream)
            .await
            .expect("upgrade through the proxy");
        assert_eq!(resp.status(), 101);
        for i in 0..5 {
            let text = format!("hello {round}.{i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        }
        let blob: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        ws.send(Message::binary(blob.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
        ws.close(None).await.unwrap();
    }
    assert_eq!(upgraded.load(Ordering::SeqCst), 2);
}
