//! A minimal HTTP/1.1 client, one connection per request (`Connection: close`).
//!
//! Written by hand so that the harness knows exactly whether a request may have reached the
//! node: a failure to connect means it certainly did not ([`Failure::NotSent`]); anything after
//! the first byte was written leaves the outcome unknown ([`Failure::Unknown`]).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// A complete answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `X-Gateway-Revision`.
    pub fn revision(&self) -> Option<u64> {
        self.header("x-gateway-revision")?.trim().parse().ok()
    }
}

/// Why there is no answer.
#[derive(Clone, Debug)]
pub enum Failure {
    /// The request never left: connection refused or not established in time.
    NotSent(String),
    /// The request was (at least partly) sent; it may or may not have been acted on.
    Unknown(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(s) => write!(f, "not sent: {s}"),
            Failure::Unknown(s) => write!(f, "unknown: {s}"),
        }
    }
}

/// Sends one request and reads the whole answer, all within `limit`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    limit: Duration,
) -> Result<Reply, Failure> {
    let deadline = Instant::now() + limit;
    let mut sock = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::NotSent(format!("connect {addr}: {e}"))),
        Err(_) => return Err(Failure::NotSent(format!("connect {addr}: timed out"))),
    };
    let _ = sock.set_nodelay(true);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    let exchange = async {
        sock.write_all(&bytes).await?;
        let mut buf = Vec::with_capacity(1024);
        sock.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let raw = match timeout_at(deadline, exchange).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(Failure::Unknown(format!("{method} {addr}{path}: {e}"))),
        Err(_) => {
            return Err(Failure::Unknown(format!(
                "{method} {addr}{path}: no answer within {limit:?}"
            )));
        }
    };
    parse(&raw).map_err(|e| Failure::Unknown(format!("{method} {addr}{path}: {e}")))
}

fn parse(raw: &[u8]) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete answer ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line '{status_line}'"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err(format!("body cut short: {} of {n} bytes", rest.len()));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size: {e}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 412 Precondition Failed\r\nX-Gateway-Revision: 7\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(
            (r.status, r.revision(), r.body.as_slice()),
            (412, Some(7), &b"{}"[..])
        );
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        match request(addr, "GET", "/", &[], None, Duration::from_secs(2)).await {
            Err(Failure::NotSent(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_server_is_unknown() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        match request(
            addr,
            "PUT",
            "/x",
            &[],
            Some(b"{}"),
            Duration::from_millis(300),
        )
        .await
        {
            Err(Failure::Unknown(_)) => {}
            other => panic!("{other:?}"),
        }
        hold.abort();
    }
}
