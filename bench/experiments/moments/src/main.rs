//! A closed-loop HTTP/1.1 client that times every request and tells when the slow ones came:
//! `moments ADDR CONNECTIONS SECONDS`. Each connection sends `GET /` and waits for the whole
//! answer (Content-Length framing) before the next, as wrk does. It prints the rate, p50 and
//! p99, then, for the requests slower than the p99: in how many 10 ms windows of the run they
//! started, the largest numbers of them in one window, and how many fell on each connection.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Timings = Vec<(Instant, u32)>; // (start, latency in µs)

async fn run(addr: String, end: Instant) -> std::io::Result<Timings> {
    let mut s = TcpStream::connect(&addr).await?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    while Instant::now() < end {
        let start = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut have = 0;
        loop {
            let n = s.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if let Some(h) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or(std::io::ErrorKind::InvalidData)?;
                if have >= h + 4 + length {
                    break;
                }
            }
        }
        out.push((start, start.elapsed().as_micros() as u32));
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, conns, secs] = &args[..] else {
        return Err("usage: moments ADDR CONNECTIONS SECONDS".into());
    };
    let (conns, secs): (usize, u64) = (conns.parse()?, secs.parse()?);
    let begin = Instant::now();
    let end = begin + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(run(addr.clone(), end)))
        .collect();
    let mut per_conn = Vec::new();
    for t in tasks {
        per_conn.push(t.await??);
    }
    let mut all: Vec<u32> = per_conn.iter().flatten().map(|&(_, l)| l).collect();
    all.sort_unstable();
    let at = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    let (p50, p99) = (at(0.50), at(0.99));
    let mut windows = std::collections::BTreeMap::<u128, usize>::new();
    let mut slow_per_conn: Vec<usize> = Vec::new();
    for timings in &per_conn {
        let slow: Vec<_> = timings.iter().filter(|&&(_, l)| l > p99).collect();
        for (start, _) in &slow {
            *windows
                .entry(start.duration_since(begin).as_millis() / 10)
                .or_default() += 1;
        }
        slow_per_conn.push(slow.len());
    }
    let mut groups: Vec<usize> = windows.values().copied().collect();
    groups.sort_unstable_by(|a, b| b.cmp(a));
    groups.truncate(10);
    println!(
        "rps {:.0} p50 {:.2} ms p99 {:.2} ms; slower than p99: in {} of {} 10 ms windows, \
         largest {:?}, per connection {}-{}",
        all.len() as f64 / secs as f64,
        f64::from(p50) / 1000.0,
        f64::from(p99) / 1000.0,
        windows.len(),
        secs * 100,
        groups,
        slow_per_conn.iter().min().unwrap_or(&0),
        slow_per_conn.iter().max().unwrap_or(&0),
    );
    Ok(())
}
