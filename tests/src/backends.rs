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

/// A `gateway demo-backend` process (answers `<method> from NAME`); killed when dropped or
/// with [`DemoBackend::kill`], and with the test process (`setpriv --pdeathsig`).
pub struct DemoBackend {
    pub name: String,
    pub addr: std::net::SocketAddr,
    child: tokio::process::Child,
}

impl DemoBackend {
    /// Starts one on a free port and waits until it listens.
    pub async fn start(name: &str) -> anyhow::Result<DemoBackend> {
        use anyhow::Context;
        let addr = crate::free_addr()?;
        let bin = crate::gateway_bin()?;
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let mut cmd = match setpriv {
            Some(w) => {
                let mut c = tokio::process::Command::new(w);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
                c
            }
            None => tokio::process::Command::new(&bin),
        };
        cmd.args([
            "demo-backend",
            "--listen",
            &addr.to_string(),
            "--name",
            name,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
        let child = cmd.spawn().context("spawning gateway demo-backend")?;
        crate::wait_for(
            &format!("demo backend {name} to listen on {addr}"),
            crate::CATCH_UP,
            || async {
                tokio::net::TcpStream::connect(addr).await?;
                Ok(())
            },
        )
        .await?;
        Ok(DemoBackend {
            name: name.to_string(),
            addr,
            child,
        })
    }

    /// Kills the process (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
