//! The connection to the admin gRPC API: the servers tried in turn, the token, retries, and
//! the translation of gRPC failures into one-line errors that say what to do.

use anyhow::bail;
use gateway_admin::{REASON_METADATA, RETRY_AFTER_METADATA};
use gateway_wire::admin::admin_client::AdminClient;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// How long a command keeps trying by default when no server can be connected to at all.
pub const UNREACHABLE: Duration = Duration::from_secs(5);

/// Largest reply accepted (a whole configuration).
const MAX_REPLY: usize = 64 * 1024 * 1024;

/// A call the server refused (or could not serve): the gRPC code, the reason the server gave
/// for a refused write (`stale` or `conflict`), and a one-line message saying what to do.
#[derive(Debug)]
pub struct Failed {
    pub code: Code,
    pub reason: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

impl Failed {
    /// Whether a compare-and-set found another revision than expected.
    pub fn is_stale(&self) -> bool {
        self.reason.as_deref() == Some("stale")
    }
}

/// Whether an error is a [`Failed`] with this code.
pub fn has_code(e: &anyhow::Error, code: Code) -> bool {
    e.downcast_ref::<Failed>().is_some_and(|f| f.code == code)
}

/// Joins lines and runs of white space, so that every error is one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and the chain of errors beneath it, in one line, each text once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = e.source();
    }
    one_line(&out)
}

/// Whether the answer came from something that is not a gateway cluster port (the admin
/// REST port, the data plane, another HTTP server).
fn not_grpc(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Internal | Code::Unknown | Code::Unimplemented
    ) && s
        .metadata()
        .get("content-type")
        .is_none_or(|v| !v.as_bytes().starts_with(b"application/grpc"))
        && (s.message().contains("protocol error") || s.message().contains("status: "))
}

/// A status and the chain of errors beneath it, in one line.
pub fn describe_status(s: &Status) -> String {
    let mut out = s.message().to_string();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = e.source();
    }
    one_line(&out)
}

/// Whether the status came from our server (which marks every UNAVAILABLE with retry-after)
/// rather than from the transport (refused connection, reset stream).
pub fn from_transport(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => s.metadata().get(RETRY_AFTER_METADATA).is_none(),
        Code::Unknown | Code::Cancelled => true,
        _ => false,
    }
}

/// Reads a token file: the first line that is neither blank nor a `#` comment; a line of the
/// node's token file format (`write TOKEN`) gives its token.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read --token-file {}: {e}; give a file holding the token",
            path.display()
        )
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--token-file {} holds no token; put the token on its first line",
                path.display()
            )
        })
}

/// The admin API of a cluster, reached through any of several nodes.
pub struct Conn {
    servers: Vec<String>,
    endpoints: Vec<Endpoint>,
    channels: Vec<Option<Channel>>,
    token: Option<AsciiMetadataValue>,
    timeout: Duration,
    unreachable: Duration,
    preferred: usize,
    retried: bool,
}

impl Conn {
    /// `servers`: cluster addresses (`host:port`), tried in turn. `timeout`: how long one
    /// command may keep trying; `unreachable`: how long while no server can be connected to.
    pub fn new(
        servers: &[String],
        token: Option<String>,
        timeout: Duration,
        unreachable: Duration,
        tls: Option<&gateway_cluster::ClusterTls>,
    ) -> anyhow::Result<Conn> {
        let servers: Vec<String> = servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            bail!(
                "no --server given: pass the cluster address of any node, e.g. --server 127.0.0.1:7101"
            );
        }
        let mut endpoints = Vec::new();
        for s in &servers {
            let uri = if s.contains("://") {
                s.clone()
            } else if tls.is_some() {
                format!("https://{s}")
            } else {
                format!("http://{s}")
            };
            let bad = || {
                anyhow::anyhow!(
                    "--server '{s}' is not an address: use HOST:PORT of a node's cluster port, e.g. 127.0.0.1:7101"
                )
            };
            let ep = Endpoint::from_shared(uri).map_err(|_| bad())?;
            if ep.uri().port_u16().is_none() || ep.uri().host().is_none_or(str::is_empty) {
                return Err(bad());
            }
            let ep = match tls {
                Some(t) => ep
                    .tls_config(t.client())
                    .map_err(|e| anyhow::anyhow!("--tls-ca/--tls-cert/--tls-key: {e}"))?,
                None => ep,
            };
            endpoints.push(
                ep.connect_timeout(Duration::from_secs(3))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true),
            );
        }
        let token = match token {
            None => None,
            Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
                anyhow::anyhow!(
                    "the token holds characters that cannot be sent: use the token exactly as in the node's --admin-token-file"
                )
            })?),
        };
        Ok(Conn {
            channels: vec![None; servers.len()],
            servers,
            endpoints,
            token,
            timeout,
            unreachable,
            preferred: 0,
            retried: false,
        })
    }

    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// How long one command may keep trying.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client of server `i`, connecting if need be.
    pub async fn client(&mut self, i: usize) -> Result<AdminClient<Channel>, String> {
        let channel = match &self.channels[i] {
            Some(c) => c.clone(),
            None => {
                let c = self.endpoints[i].connect().await.map_err(|e| chain(&e))?;
                self.channels[i] = Some(c.clone());
                c
            }
        };
        Ok(AdminClient::new(channel)
            .max_decoding_message_size(MAX_REPLY)
            .max_encoding_message_size(usize::MAX))
    }

    /// Whether the last [`Conn::call`] sent its request more than once (an attempt reached a
    /// server and broke or found no leader): a write may then have been applied by an earlier
    /// attempt, and a refusal of the last one ("already exists", "not found", "stale") may be
    /// about that write itself.
    pub fn retried(&self) -> bool {
        self.retried
    }

    /// Forgets the connection to server `i` (after it broke).
    pub fn drop_channel(&mut self, i: usize) {
        self.channels[i] = None;
    }

    /// A request carrying the token.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// Turns a status the server answered with into a one-line error saying what to do.
    pub fn failed(&self, s: &Status) -> Failed {
        let msg = one_line(s.message());
        let message = match s.code() {
            Code::Unauthenticated if self.token.is_some() => {
                "the server does not accept this token: pass a token from the node's --admin-token-file with --token, --token-file or GATEWAY_TOKEN".to_string()
            }
            Code::Unauthenticated => {
                "the server needs an admin token: pass --token, --token-file or set GATEWAY_TOKEN (a token from the node's --admin-token-file)".to_string()
            }
            Code::PermissionDenied => {
                "this token may only read: pass a write token (--token or --token-file) to make changes".to_string()
            }
            Code::ResourceExhausted | Code::OutOfRange if msg.contains("too large") => {
                format!("the request is too large for the server ({msg}): split it into smaller ones")
            }
            Code::Unimplemented => format!(
                "the server does not offer the gateway admin API ({msg}): give --server the cluster port of a gateway node, e.g. 127.0.0.1:7101"
            ),
            Code::DeadlineExceeded => format!(
                "no answer within {}s: the cluster may have lost its quorum or be overloaded; check `gateway cluster status`, or raise --timeout",
                self.timeout.as_secs()
            ),
            _ if msg.is_empty() => format!("the server failed the call ({:?})", s.code()),
            _ => msg,
        };
        Failed {
            code: s.code(),
            reason: s
                .metadata()
                .get(REASON_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            message,
        }
    }

    /// Makes one call on the first server that can serve it: a server that cannot be reached,
    /// or that answers UNAVAILABLE (no leader, starting, stopping), is skipped for the next;
    /// the round is repeated with a growing pause until the timeout. Any other answer is final.
    ///
    /// A write whose connection broke after it was sent may have been applied; it is sent
    /// again to the next server.
    pub async fn call<T, R, F, Fut>(&mut self, msg: T, mut f: F) -> anyhow::Result<Response<R>>
    where
        T: Clone,
        F: FnMut(AdminClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        // One id per logical call, sent again with every retry (to any server): the cluster
        // applies a write once however many times it arrives. Harmless on reads.
        let request_id: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("cli-{:032x}", rand::random::<u128>())
                .parse()
                .expect("hex is valid metadata");
        let n = self.servers.len();
        let mut pause = Duration::from_millis(100);
        self.retried = false;
        let mut sent = false;
        // When no server can even be connected to, the addresses are likely wrong or the
        // cluster is down: say so after a few seconds rather than the whole timeout.
        let started = Instant::now();
        let mut answered = false;
        loop {
            let mut unavailable: Option<String> = None;
            let mut unreachable = Vec::new();
            let mut wrong_port = 0;
            for k in 0..n {
                let i = (self.preferred + k) % n;
                let client = match self.client(i).await {
                    Ok(c) => c,
                    Err(e) => {
                        unreachable.push(format!("{}: {e}", self.servers[i]));
                        continue;
                    }
                };
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1));
                let mut req = self.request(msg.clone());
                req.set_timeout(left);
                req.metadata_mut()
                    .insert("x-request-id", request_id.clone());
                self.retried |= sent;
                sent = true;
                match f(client, req).await {
                    Ok(r) => {
                        self.preferred = i;
                        return Ok(r);
                    }
                    Err(s) if not_grpc(&s) => {
                        wrong_port += 1;
                        unreachable.push(format!(
                            "{}: not a gateway cluster port ({}); is it the admin or HTTP address, or does the cluster run with TLS (--tls-ca, --tls-cert, --tls-key)?",
                            self.servers[i],
                            describe_status(&s)
                        ));
                    }
                    Err(s) if from_transport(&s) => {
                        self.drop_channel(i);
                        unreachable.push(format!("{}: {}", self.servers[i], describe_status(&s)));
                    }
                    Err(s) if s.code() == Code::Unavailable => {
                        answered = true;
                        unavailable = Some(one_line(s.message()));
                    }
                    Err(s) => return Err(self.failed(&s).into()),
                }
            }
            // Waiting does not turn an admin or HTTP port into a cluster port.
            let unreachable_for = started.elapsed() >= self.unreachable.min(self.timeout);
            if Instant::now() + pause >= deadline
                || wrong_port == n
                || (!answered && unreachable_for)
            {
                let message = match unavailable {
                    Some(m) => format!(
                        "{m} (tried for {}s; check `gateway cluster status`)",
                        self.timeout.as_secs()
                    ),
                    None => format!(
                        "cannot reach any server ({}): check --server (the cluster address of any node, e.g. 127.0.0.1:7101) and that the node runs",
                        unreachable.join("; ")
                    ),
                };
                return Err(Failed {
                    code: Code::Unavailable,
                    reason: None,
                    message,
                }
                .into());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_checked_up_front() {
        let t = Duration::from_secs(1);
        let conn = |servers: &[&str], token: Option<&str>| {
            let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
            Conn::new(&servers, token.map(str::to_string), t, t, None)
        };
        assert!(conn(&["127.0.0.1:7101", "node2:7102"], None).is_ok());
        for bad in ["127.0.0.1", "no spaces:1", ""] {
            let e = conn(&[bad], None).err().unwrap().to_string();
            assert!(e.contains("--server"), "{bad}: {e}");
        }
        assert!(conn(&["127.0.0.1:1"], Some("bad\ntoken")).is_err());
    }

    #[test]
    fn token_files_hold_a_bare_token_or_the_node_format() {
        let dir = std::env::temp_dir().join(format!("gateway-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, "# mine\n\n  abcdefabcdefabcdef  \n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "abcdefabcdefabcdef");
        std::fs::write(&f, "write wwwwwwwwwwwwwwwwwwww\nread r\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "wwwwwwwwwwwwwwwwwwww");
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(read_token_file(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
