//! The gateway's own HTTP/1.1 connection handling, over raw TCP and curl: streamed chunked
//! request bodies, pipelining, `Expect: 100-continue`, HTTP/1.0, bodiless answers, trailers,
//! close-delimited backend answers, the keep-alive idle timeout apart from the header timeout,
//! and malformed chunked bodies.

use crate::common::*;
use gateway_model::Balance;
use gateway_proxy::ProxyConfig;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

async fn proxy_to(address: &str, config: ProxyConfig) -> TestProxy {
    let s = state(
        vec![pool("p", Balance::RoundRobin, vec![be("a", address, None)])],
        vec![route("app", &[], "/", "p")],
    );
    proxy_with(config, s, None).await
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    head: String,
    body: Vec<u8>,
    /// Trailer lines of a chunked body.
    trailers: Vec<String>,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads from `s` into `buf` until `buf` holds `needle`; panics after 10 s or at the end.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(at) = buf.windows(needle.len()).position(|w| w == needle) {
            return at;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before {:?}: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_exact_into(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("no body within 10 s")
            .unwrap();
        assert!(k > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..k]);
    }
}

/// Reads one response (Content-Length, chunked, or none for `bodiless`); bytes after it stay
/// in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, bodiless: bool) -> Raw {
    let end = read_until(s, buf, b"\r\n\r\n").await;
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    buf.drain(..end + 4);
    let mut raw = Raw {
        head,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let status = raw.status();
    if bodiless || status == 204 || status == 304 || status < 200 {
        return raw;
    }
    if let Some(n) = raw.header("content-length") {
        let n: usize = n.parse().unwrap();
        read_exact_into(s, buf, n).await;
        raw.body = buf.drain(..n).collect();
    } else if raw.header("transfer-encoding") == Some("chunked") {
        loop {
            let nl = read_until(s, buf, b"\r\n").await;
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..nl]).unwrap(), 16).unwrap();
            buf.drain(..nl + 2);
            if size == 0 {
                loop {
                    let nl = read_until(s, buf, b"\r\n").await;
                    let line = String::from_utf8(buf.drain(..nl + 2).take(nl).collect()).unwrap();
                    if line.is_empty() {
                        return raw;
                    }
                    raw.trailers.push(line);
                }
            }
            read_exact_into(s, buf, size + 2).await;
            raw.body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else {
        // Until the connection closes.
        loop {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await.unwrap() {
                0 => break,
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        raw.body = std::mem::take(buf);
    }
    raw
}

/// Waits until the server closes `s` (10 s at most); returns the bytes it still sent.
async fn wait_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection was not closed")
        .ok();
    out
}

/// A backend speaking raw HTTP/1.1: for every request head it reads (and for a chunked or
/// fixed body, the body, streamed as received to `seen`), answers with `answer(head)`.
async fn raw_backend(answer: fn(&str) -> Vec<u8>) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let _ = seen.send(head.clone());
                    let lower = head.to_ascii_lowercase();
                    if lower.contains("transfer-encoding: chunked") {
                        // Report the body as it streams in, up to the last chunk.
                        if !buf.is_empty() && chunked_end(&buf).is_none() {
                            let _ = seen.send(String::from_utf8_lossy(&buf).into());
                        }
                        loop {
                            if let Some(end) = chunked_end(&buf) {
                                let _ = seen.send(String::from_utf8_lossy(&buf[..end]).into());
                                buf.drain(..end);
                                break;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    let _ = seen.send(String::from_utf8_lossy(&chunk[..n]).into());
                                    buf.extend_from_slice(&chunk[..n]);
                                }
                            }
                        }
                    } else if let Some(cl) = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                    {
                        let n: usize = cl.trim().parse().unwrap();
                        while buf.len() < n {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let _ = seen.send(String::from_utf8_lossy(&buf[..n]).into());
                        buf.drain(..n);
                    }
                    let out = answer(&head);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    if out.ends_with(b"\r\n\r\nclose-delimited body") {
                        return; // close-delimited: the end of the connection ends the body
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Where a chunked body in `buf` ends (after the last chunk and its trailers).
fn chunked_end(buf: &[u8]) -> Option<usize> {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(buf);
    let last = framed.windows(5).position(|w| w == b"\r\n0\r\n")?;
    let end = framed[last + 3..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")?;
    Some(last + 3 + end + 4 - 2)
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the backend saw nothing within 10 s")
        .unwrap()
}

fn chunked_with_trailers(_head: &str) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
      5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
        .to_vec()
}

#[tokio::test]
async fn chunked_request_bodies_stream_and_chunked_answers_keep_their_trailers() {
    let (addr, mut seen) = raw_backend(chunked_with_trailers).await;
    let p = proxy_to(&addr, ProxyConfig::new(1, KEY)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n\
          5\r\nfirst\r\n",
    )
    .await
    .unwrap();
    let head = next_seen(&mut seen).await;
    assert!(head.starts_with("POST /up HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    // The first chunk reaches the backend before the client sent the rest: streamed.
    let mut got = String::new();
    while !got.contains("first") {
        got.push_str(&next_seen(&mut seen).await);
    }
    s.write_all(b"6\r\nsecond\r\n0\r\nx-client-sum: 7\r\n\r\n")
        .await
        .unwrap();
    while !got.contains("0\r\n") {
        got.push_str(&next_seen(&mut seen).await);
    }
    assert!(got.contains("second"), "{got:?}");
    assert!(
        got.contains("x-client-sum: 7"),
        "trailers pass upstream: {got:?}"
    );

    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.trailers, ["x-sum: 42"]);

    // The connection (and the backend's) are still good for the next request.
    s.write_all(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status(), r.text().as_str()), (200, "hello world"));
}

/// 32 MiB of bytes that show where each one belongs.
const LARGE: usize = 32 << 20;

fn large_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn large_answer(_head: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\n\r\n").into_bytes();
    out.extend((0..LARGE).map(large_byte));
    out
}

#[tokio::test]
async fn a_large_answer_to_a_client_that_reads_late_arrives_whole() {
    // Far more than the sockets on both sides hold: the gateway's writes to the client come
    // back short, and it must wait for room and go on where it stopped, twice on the same
    // connection.
    let (addr, mut seen) = raw_backend(large_answer).await;
    let p = proxy_to(&addr, ProxyConfig::new(1, KEY)).await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    for _ in 0..2 {
        c.write_all(b"GET /large HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        // Not read until the backend has the request and is answering.
        next_seen(&mut seen).await;
        let mut buf = Vec::new();
        let at = read_until(&mut c, &mut buf, b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&buf[..at]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        buf.drain(..at + 4);
        read_exact_into(&mut c, &mut buf, LARGE).await;
        assert_eq!(buf.len(), LARGE, "nothing more than the body");
        if let Some(i) = (0..LARGE).find(|&i| buf[i] != large_byte(i)) {
            panic!("byte {i} of the answer is wrong");
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let a = backend("a").await;
    let p = proxy_to(&a.address, ProxyConfig::new(1, KEY)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          HEAD /4 HTTP/1.1\r\nHost: h\r\n\r\n\
          DELETE /5 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for (i, bodiless) in [false, false, false, true, false].into_iter().enumerate() {
        let r = read_response(&mut s, &mut buf, bodiless).await;
        assert_eq!(r.status(), 200, "response {i}: {r:?}");
        got.push((r.text(), r.header("x-body-len").unwrap_or("").to_string()));
    }
    assert_eq!(
        got,
        [
            ("get from a\n".to_string(), "0".to_string()),
            ("post from a\n".into(), "5".into()),
            ("put from a\n".into(), "3".into()),
            (String::new(), "0".into()),
            ("delete from a\n".into(), "0".into()),
        ]
    );
    assert!(
        wait_closed(&mut s).await.is_empty(),
        "closed after the last"
    );
    assert_eq!(a.hits(), 5);
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let a = backend("a").await;
    let p = proxy_to(&a.address, ProxyConfig::new(1, KEY)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let interim = read_response(&mut s, &mut buf, true).await;
    assert_eq!(interim.status(), 100, "{interim:?}");
    s.write_all(b"howdy").await.unwrap();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status(), r.text().as_str()), (200, "put from a\n"));
    assert_eq!(r.header("x-body-len"), Some("5"));

    // curl waits for the 100 before sending its body.
    let url = p.url("/curl");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "-H",
                "Expect: 100-continue",
                "--expect100-timeout",
                "30",
            ])
            .args(["-H", "Host: h", "--data-binary", "some data", "-D", "-"])
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 100 Continue"), "{text}");
    assert!(text.contains("x-body-len: 9"), "{text}");
    assert!(text.ends_with("post from a\n"), "{text}");

    // Refused without reading the body: no 100, and the connection is not reused (the body
    // the client may still send must not be read as a request).
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\
          gateway-hop: forged\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), 403, "{r:?}");
    assert!(wait_closed(&mut s).await.is_empty());
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn http_1_0_clients_get_keep_alive_only_when_they_ask() {
    let a = backend("a").await;
    let p = proxy_to(&a.address, ProxyConfig::new(1, KEY)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!((r.status(), r.text().as_str()), (200, "get from a\n"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(wait_closed(&mut s).await.is_empty());

    let mut s = TcpStream::connect(p.addr).await.unwrap();
    for i in 0..3 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, false).await;
        assert_eq!(r.status(), 200, "{i}");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    }

    // An answer of unknown length goes to an HTTP/1.0 client delimited by the close.
    let (addr, _seen) = raw_backend(chunked_with_trailers).await;
    let p = proxy_to(&addr, ProxyConfig::new(1, KEY)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false).await;
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), "hello world");
}

fn by_path(head: &str) -> Vec<u8> {
    let path = head.split(' ').nth(1).unwrap_or("/");
    match path {
        "/204" => b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".to_vec(),
        "/304" => {
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"e\"\r\n\r\n".to_vec()
        }
        "/eof" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited body".to_vec(),
        _ if head.starts_with("HEAD") => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec()
        }
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    }
}

#[tokio::test]
async fn head_204_304_and_close_delimited_answers_keep_the_connection_in_step() {
    let (addr, _seen) = raw_backend(by_path).await;
    let p = proxy_to(&addr, ProxyConfig::new(1, KEY)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = Vec::new();
    for (req, bodiless, status) in [
        ("HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n", true, 200),
        ("GET /204 HTTP/1.1\r\nHost: h\r\n\r\n", false, 204),
        ("GET /304 HTTP/1.1\r\nHost: h\r\n\r\n", false, 304),
        ("GET /eof HTTP/1.1\r\nHost: h\r\n\r\n", false, 200),
        ("GET /plain HTTP/1.1\r\nHost: h\r\n\r\n", false, 200),
    ] {
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_response(&mut s, &mut buf, bodiless).await;
        assert_eq!(r.status(), status, "{req}: {r:?}");
        match status {
            200 if bodiless => assert_eq!(r.header("content-length"), Some("1234")),
            204 => assert_eq!(r.header("x-kind"), Some("none")),
            304 => assert_eq!(r.header("etag"), Some("\"e\"")),
            _ if req.contains("/eof") => {
                // The backend's close-delimited body reaches the client chunked, on a
                // connection that stays open.
                assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
                assert_eq!(r.text(), "close-delimited body");
            }
            _ => assert_eq!(r.text(), "ok"),
        }
    }
    assert!(buf.is_empty(), "nothing extra was sent: {buf:?}");
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_and_close() {
    let a = backend("a").await;
    let p = proxy_to(&a.address, ProxyConfig::new(1, KEY)).await;
    for bad in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello!!\r\n0\r\n\r\n",
        "-1\r\nx\r\n0\r\n\r\n",
        "5;\r\nhel",
    ] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(
            format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{bad}")
                .as_bytes(),
        )
        .await
        .unwrap();
        if bad.ends_with("hel") {
            // Cut off mid-body: the client is gone, nothing to answer.
            s.shutdown().await.unwrap();
            wait_closed(&mut s).await;
            continue;
        }
        let out = String::from_utf8_lossy(&wait_closed(&mut s).await).into_owned();
        assert_eq!(statuses(&out), [400], "{bad:?}: {out}");
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_outlive_the_header_timeout_until_the_idle_timeout() {
    let a = backend("a").await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(200),
        keep_alive_timeout: Duration::from_secs(30),
        ..ProxyConfig::new(1, KEY)
    };
    let p = proxy_to(&a.address, config).await;
    let mut idle = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = Vec::new();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut idle, &mut buf, false).await.status(),
        200
    );
    // A slow client opened after it is cut off by the header timeout...
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
    wait_closed(&mut slow).await;
    // ...while the idle keep-alive connection, idle for longer than that, still serves.
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut idle, &mut buf, false).await;
    assert_eq!((r.status(), r.text().as_str()), (200, "get from a\n"));

    // With a short keep-alive timeout an idle connection is closed, after that timeout.
    let config = ProxyConfig {
        keep_alive_timeout: Duration::from_millis(300),
        ..ProxyConfig::new(1, KEY)
    };
    let p = proxy_to(&a.address, config).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, false).await.status(), 200);
    let idle_since = Instant::now();
    assert!(wait_closed(&mut s).await.is_empty());
    let idled = idle_since.elapsed();
    assert!(
        idled >= Duration::from_millis(250),
        "closed after {idled:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_a_request_finish() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let a = backend_with(
        "a",
        std::sync::Arc::new(move |name, parts, body| {
            let g = g.clone();
            Box::pin(async move {
                if parts.uri.path() == "/slow" {
                    g.acquire().await.unwrap().forget();
                }
                answer(&name, &parts, &body)
            })
        }),
    )
    .await;
    let p = proxy_to(&a.address, ProxyConfig::new(1, KEY)).await;
    let addr: SocketAddr = p.addr;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut idle, &mut buf, false).await.status(),
        200
    );
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    eventually("the slow request reached the backend", || {
        let n = a.hits();
        async move { n >= 2 }
    })
    .await;
    let stopping = tokio::spawn(p.shutdown());
    assert!(
        wait_closed(&mut idle).await.is_empty(),
        "idle closed at once"
    );
    assert!(!stopping.is_finished(), "waits for the request under way");
    gate.add_permits(1);
    let r = read_response(&mut busy, &mut Vec::new(), false).await;
    assert_eq!((r.status(), r.header("connection")), (200, Some("close")));
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

/// Sends `GET /` on `c` and checks that it is answered 200.
async fn get_ok(c: &mut TcpStream) {
    c.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(c, &mut Vec::new(), false).await;
    assert_eq!(r.status(), 200);
}

/// The first worker accepts and hands each new connection to the worker serving the fewest
/// (itself on a tie), so only that worker wakes; each then serves what it was given.
#[tokio::test]
async fn new_connections_go_to_the_worker_serving_the_fewest() {
    let a = backend("a").await;
    let metrics = gateway_proxy::Metrics::new();
    let config = ProxyConfig {
        workers: 3,
        metrics: metrics.clone(),
        ..ProxyConfig::new(1, KEY)
    };
    let p = proxy_to(&a.address, config).await;
    let workers = || metrics.snapshot().worker_connections;
    eventually("the workers to start", || async { workers() == [0, 0, 0] }).await;
    let mut open = Vec::new();
    for _ in 0..7 {
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        get_ok(&mut c).await;
        open.push(c);
    }
    assert_eq!(workers(), [3, 2, 2]);
    // Closed connections leave their worker's count; the next goes where there are fewest.
    drop(open.drain(..4));
    eventually("the closed connections to leave the counts", || async {
        workers().iter().sum::<u64>() == 3
    })
    .await;
    let before = workers();
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    get_ok(&mut c).await;
    let fewest = before.iter().min().unwrap();
    let mut expect = before.clone();
    expect[before.iter().position(|n| n == fewest).unwrap()] += 1;
    assert_eq!(workers(), expect);
    // Keep-alive requests stay on their connection's worker.
    for _ in 0..3 {
        get_ok(&mut c).await;
    }
    assert_eq!(workers(), expect);
    assert_eq!(a.hits(), 11);
}

/// The workers run on threads of their own: when the `serve` future is dropped (its task
/// aborted), they stop accepting and close their idle connections, as at a shutdown.
#[tokio::test]
async fn dropping_the_server_stops_its_workers() {
    let a = backend("a").await;
    let config = ProxyConfig {
        workers: 3,
        ..ProxyConfig::new(1, KEY)
    };
    let p = proxy_to(&a.address, config).await;
    let addr: SocketAddr = p.addr;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut idle, &mut Vec::new(), false)
            .await
            .status(),
        200
    );
    drop(p);
    assert!(
        wait_closed(&mut idle).await.is_empty(),
        "the idle connection closed"
    );
    // Nothing accepts any more: a new connection is refused or closed unanswered.
    eventually("new connections to go unanswered", || async move {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return true;
        };
        if s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .is_err()
        {
            return true;
        }
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_)
        )
    })
    .await;
}
