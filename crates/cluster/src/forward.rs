//! Writes this node carries to the leader, gathered into batches.
//!
//! A follower used to make one `Write` call per write it carried: under load the calls, not
//! the writes, were most of its work. Now each leader address has a queue: while
//! [`CALLS_IN_FLIGHT`] calls to it are on their way, newer writes wait and then travel
//! together in one `WriteBatch` call, with the writes that arrive while it is gathered
//! ([`gather`]). An idle node sends each write alone, after those few runtime rounds. The leader
//! proposes every write of a batch as if it came alone (so they join its own groups), and
//! answers each with its own outcome; the caller's retry rules ([`crate::handle`]'s
//! `leader_call`) apply to each write as before.

use crate::error::{ClusterError, from_failure};
use crate::gather::gather;
use crate::handle::{forwarded, timed};
use crate::network::{MAX_MESSAGE, Peers};
use bytes::Bytes;
use gateway_model::{Request, Response};
use gateway_wire::cluster::{WriteBatchRequest, WriteRequest, write_outcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};

/// How many calls to one leader may be on their way at once.
const CALLS_IN_FLIGHT: usize = 2;
/// The most writes one call carries.
const MAX_BATCH: usize = 256;
/// The most request bytes one call carries (a single larger write still goes, alone).
const MAX_BATCH_BYTES: usize = MAX_MESSAGE / 4;
/// How long a call may take; the writes of a call that times out are reported unreachable
/// (and retried by the caller with their ids, so none applies twice).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

type Reply = oneshot::Sender<Result<Response, ClusterError>>;
/// A write waiting to be carried: the JSON of its request, and where its outcome goes.
type Pending = (Bytes, Reply);

/// The queues of writes to carry, one per leader address.
pub(crate) struct Forwarder {
    peers: Arc<Peers>,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
    /// Calls made to carry writes, in all (for metrics: under load, fewer than the writes).
    calls: Arc<AtomicU64>,
}

impl Forwarder {
    pub(crate) fn new(peers: Arc<Peers>) -> Self {
        Forwarder {
            peers,
            queues: Mutex::new(HashMap::new()),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Calls made to carry writes since this node started.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Carries `req` to the leader at `addr` and returns its outcome there.
    pub(crate) async fn write(&self, addr: &str, req: &Request) -> Result<Response, ClusterError> {
        let json: Bytes = serde_json::to_vec(req)
            .map_err(|e| ClusterError::Protocol(e.to_string()))?
            .into();
        let (tx, rx) = oneshot::channel();
        let queue = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr.to_string())
            .or_insert_with(|| {
                spawn_queue(self.peers.clone(), addr.to_string(), self.calls.clone())
            })
            .clone();
        let gone = || ClusterError::Stopped("the write forwarder has stopped".into());
        queue.send((json, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Starts the task that sends the writes queued for `addr`; it ends when the queue's sender
/// (held by the [`Forwarder`]) is dropped.
fn spawn_queue(
    peers: Arc<Peers>,
    addr: String,
    calls: Arc<AtomicU64>,
) -> mpsc::UnboundedSender<Pending> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    tokio::spawn(async move {
        // A write taken from the queue that did not fit in the previous batch.
        let mut next: Option<Pending> = None;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let first = match next.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let mut bytes = first.0.len();
            let mut batch = vec![first];
            gather(&mut rx, |p| {
                if bytes + p.0.len() > MAX_BATCH_BYTES {
                    next = Some(p);
                    return false;
                }
                bytes += p.0.len();
                batch.push(p);
                batch.len() < MAX_BATCH
            })
            .await;
            let (peers, addr) = (peers.clone(), addr.clone());
            calls.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                send(&peers, &addr, batch).await;
                drop(slot);
            });
        }
    });
    tx
}

fn response(json: &[u8]) -> Result<Response, ClusterError> {
    serde_json::from_slice(json).map_err(|e| ClusterError::Protocol(e.to_string()))
}

/// Sends one batch and hands each write its outcome.
async fn send(peers: &Peers, addr: &str, batch: Vec<Pending>) {
    let (requests, replies): (Vec<Bytes>, Vec<Reply>) = batch.into_iter().unzip();
    let n = requests.len();
    match call(peers, addr, requests.clone()).await {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for reply in replies {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(ClusterError::Protocol(format!(
                        "the leader answered fewer outcomes than the {n} writes sent"
                    )))
                });
                let _ = reply.send(outcome);
            }
        }
        // A leader that predates WriteBatch: one call per write, as it expects.
        Err(s) if s.code() == Code::Unimplemented => {
            let calls = requests
                .into_iter()
                .map(|request_json| write_one(peers, addr, request_json));
            for (reply, outcome) in replies
                .into_iter()
                .zip(futures::future::join_all(calls).await)
            {
                let _ = reply.send(outcome);
            }
        }
        Err(s) => {
            for reply in replies {
                let _ = reply.send(Err(ClusterError::from(s.clone())));
            }
        }
    }
}

async fn call(
    peers: &Peers,
    addr: &str,
    requests_json: Vec<Bytes>,
) -> Result<Vec<Result<Response, ClusterError>>, Status> {
    let mut client = peers.cluster(addr)?;
    let reply = timed(
        addr,
        CALL_TIMEOUT,
        client.write_batch(forwarded(WriteBatchRequest { requests_json })),
    )
    .await?;
    Ok(reply
        .outcomes
        .into_iter()
        .map(|o| match o.outcome {
            Some(write_outcome::Outcome::ResponseJson(json)) => response(&json),
            Some(write_outcome::Outcome::Failure(f)) => Err(from_failure(f)),
            None => Err(ClusterError::Protocol(
                "the leader answered a write with no outcome".into(),
            )),
        })
        .collect())
}

async fn write_one(
    peers: &Peers,
    addr: &str,
    request_json: Bytes,
) -> Result<Response, ClusterError> {
    let mut client = peers.cluster(addr)?;
    let call = client.write(forwarded(WriteRequest { request_json }));
    let reply = timed(addr, CALL_TIMEOUT, call).await?;
    response(&reply.response_json)
}
