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

    /// The address as a pool names it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the process (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
/// A backend in the test that can be stopped (listener and every connection closed, so new
/// connections are refused, as after a kill) and started again on the same address. It answers
/// every request `200 from NAME` with `x-backend: NAME`; `/healthz` answers 503 to health probes
/// from the nodes listed in [`SwitchBackend::refuse_node`] (by their `X-Gateway-Node` header),
/// so one node alone can lose it.
pub struct SwitchBackend {
    pub name: String,
    pub addr: std::net::SocketAddr,
    refused: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Requests answered (health probes excluded).
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SwitchBackend {
    /// Starts a backend on a free loopback port.
    pub async fn start(name: &str) -> anyhow::Result<SwitchBackend> {
        let addr = crate::free_addr()?;
        let b = SwitchBackend {
            name: name.to_string(),
            addr,
            refused: Default::default(),
            served: Default::default(),
            task: std::sync::Mutex::new(None),
        };
        b.resume().await?;
        Ok(b)
    }

    /// The address as a pool names it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Health probes from node `id` get 503 (or 200 again with `refuse = false`).
    pub fn refuse_node(&self, id: u64, refuse: bool) {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refuse {
            r.insert(id.to_string());
        } else {
            r.remove(&id.to_string());
        }
    }

    /// Closes the listener and every open connection.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }

    /// Listens again on the same address (retrying while the port is still being released).
    pub async fn resume(&self) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stop();
        let listener = crate::wait_for(
            &format!("backend {} to bind {}", self.name, self.addr),
            std::time::Duration::from_secs(10),
            || async { Ok(tokio::net::TcpListener::bind(self.addr).await?) },
        )
        .await?;
        let (name, refused, served) =
            (self.name.clone(), self.refused.clone(), self.served.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                let (name, refused, served) = (name.clone(), refused.clone(), served.clone());
                conns.spawn(async move {
                    // Keep-alive: one request after another until the peer closes.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        let probe_from = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-gateway-node:"))
                            .map(|v| v.trim().to_string());
                        let (status, body) = match &probe_from {
                            Some(n) if refused.lock().unwrap_or_else(|e| e.into_inner()).contains(n) => {
                                ("503 Unavailable", "refused\n".to_string())
                            }
                            Some(_) => ("200 OK", "healthy\n".to_string()),
                            None => {
                                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                ("200 OK", format!("from {name}\n"))
                            }
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }
}

impl Drop for SwitchBackend {
    fn drop(&mut self) {
        self.stop();
    }
}
