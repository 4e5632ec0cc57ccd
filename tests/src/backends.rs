//! Backends written in the test process, for tests that must know exactly when a request
//! reached a backend.

/// A backend in the test: answers at once, except `/hold`, which it announces on `arrived`
/// and answers only when `release` fires, so a test knows a request is in flight.
pub async fn holding_backend(
    arrived: tokio::sync::mpsc::Sender<()>,
    release: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let arrived = arrived.clone();
            let mut release = release.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /hold") {
                    let _ = arrived.send(()).await;
                    let _ = release.wait_for(|r| *r).await;
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nslowpoke\n")
                    .await;
            });
        }
    });
    Ok(addr)
}
