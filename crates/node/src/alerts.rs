//! Alert delivery: the leader, and only the leader, sends every recorded event (backend down or
//! up, node lost or back, leader change, managed backend failed) to each alert sink that wants
//! it — a JSON webhook POST and/or an e-mail over SMTP — in event order, retrying with backoff
//! until it is accepted. After each delivery the leader commits the sink's cursor
//! (`Command::Delivered`), so a new leader resumes after the last event delivered instead of
//! sending them again: one alert per transition, not one per node. Should a leader die between
//! a delivery and the commit of its cursor, the next leader sends that one event again; it
//! carries the same `X-Gateway-Event-Id` (and `Idempotency-Key`), so a receiver can drop it.

use bytes::Bytes;
use gateway_cluster::{Cluster, Consistency};
use gateway_model::{AlertSink, Command, Event, SmtpSink};
use http_body_util::Full;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// First wait after a failed delivery; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One delivery attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Runs on every node; delivers while this node leads, until `stop`.
pub async fn run(cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut state = cluster.state();
    let mut workers: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        workers.retain(|_, h| !h.is_finished());
        let local = state.borrow_and_update().clone();
        let idle_with_work =
            |st: &gateway_model::State, workers: &HashMap<String, JoinHandle<()>>| {
                st.alerts.values().any(|s| {
                    !workers.contains_key(&s.name)
                        && st
                            .events_after(st.delivered.get(&s.name).copied().unwrap_or(0))
                            .next()
                            .is_some()
                })
            };
        if cluster.is_leader() && idle_with_work(&local, &workers) {
            // A new leader may not have applied every cursor its predecessor committed:
            // read linearizably before sending, so nothing delivered is sent again.
            let st = match cluster.read(Consistency::Linearizable).await {
                Ok(st) => st,
                Err(e) => {
                    tracing::debug!("alerts wait for an up-to-date state: {e}");
                    local
                }
            };
            for sink in st.alerts.values() {
                if workers.contains_key(&sink.name) {
                    continue;
                }
                let after = st.delivered.get(&sink.name).copied().unwrap_or(0);
                let pending: Vec<Event> = st.events_after(after).cloned().collect();
                if pending.is_empty() {
                    continue;
                }
                let task = tokio::spawn(deliver(
                    cluster.clone(),
                    client.clone(),
                    sink.clone(),
                    pending,
                ));
                workers.insert(sink.name.clone(), task);
            }
        } else if !cluster.is_leader() {
            for (_, h) in workers.drain() {
                h.abort();
            }
        }
        tokio::select! {
            _ = state.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, h) in workers.drain() {
        h.abort();
    }
}

/// Sends `events` to one sink in order, committing the cursor after each; gives up (to be
/// started again) when this node stops leading.
async fn deliver(cluster: Cluster, client: Client, sink: AlertSink, events: Vec<Event>) {
    let cluster_id = cluster.cluster_id();
    for event in events {
        if sink.wants(&event.kind) {
            let mut backoff = FIRST_BACKOFF;
            loop {
                if !cluster.is_leader() {
                    return;
                }
                match send(&client, &sink, &event, &cluster_id, cluster.id()).await {
                    Ok(()) => {
                        tracing::info!(sink = %sink.name, event = event.id, "alert sent: {}", event.kind.summary());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(sink = %sink.name, event = event.id, "alert not delivered ({e}); retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        // Record the delivery; keep trying while this node leads, rather than sending the
        // event again.
        let mut backoff = FIRST_BACKOFF;
        loop {
            let done = Command::Delivered {
                sink: sink.name.clone(),
                upto: event.id,
            };
            match cluster.write(done).await {
                Ok(_) => break,
                Err(e) if cluster.is_leader() => {
                    tracing::warn!(sink = %sink.name, event = event.id, "could not record the delivery ({e}); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::warn!(sink = %sink.name, event = event.id, "could not record the delivery: {e}; the next leader sends it again");
                    return;
                }
            }
        }
    }
}

/// The JSON body of a webhook POST.
pub fn payload(event: &Event, cluster_id: &str, leader: u64) -> serde_json::Value {
    let mut v = serde_json::to_value(event).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("cluster_id".into(), cluster_id.into());
        obj.insert("sent_by".into(), leader.into());
        obj.insert("summary".into(), event.kind.summary().into());
    }
    v
}

async fn send(
    client: &Client,
    sink: &AlertSink,
    event: &Event,
    cluster_id: &str,
    me: u64,
) -> Result<(), String> {
    if let Some(url) = &sink.webhook {
        tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            webhook(client, sink, url, event, cluster_id, me),
        )
        .await
        .map_err(|_| format!("webhook: no answer within {ATTEMPT_TIMEOUT:?}"))??;
    }
    if let Some(smtp) = &sink.smtp {
        tokio::time::timeout(ATTEMPT_TIMEOUT, mail(smtp, event, cluster_id))
            .await
            .map_err(|_| format!("smtp: no answer within {ATTEMPT_TIMEOUT:?}"))??;
    }
    Ok(())
}

async fn webhook(
    client: &Client,
    sink: &AlertSink,
    url: &str,
    event: &Event,
    cluster_id: &str,
    me: u64,
) -> Result<(), String> {
    let body = serde_json::to_vec(&payload(event, cluster_id, me)).map_err(|e| e.to_string())?;
    let mut req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "gateway-alerts")
        .header("x-gateway-event-id", event.id.to_string())
        .header(
            "idempotency-key",
            format!("gateway-{cluster_id}-{}", event.id),
        );
    for (k, v) in &sink.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("webhook request: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("webhook {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("webhook {url} answered {status}"))
    }
}

async fn mail(smtp: &SmtpSink, event: &Event, cluster_id: &str) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let (host, port) = smtp
        .server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("smtp server '{}' is not host:port", smtp.server))?;
    let mut msg = Message::builder()
        .from(
            smtp.from
                .parse()
                .map_err(|e| format!("smtp from '{}': {e}", smtp.from))?,
        )
        .subject(format!("[gateway] {}", event.kind.summary()))
        .header(ContentType::TEXT_PLAIN)
        .message_id(Some(format!(
            "<gateway-{cluster_id}-{}@gateway.invalid>",
            event.id
        )));
    for to in &smtp.to {
        msg = msg.to(to.parse().map_err(|e| format!("smtp to '{to}': {e}"))?);
    }
    let text = format!(
        "{}\n\nevent {} at {} ms since the Unix epoch, cluster {cluster_id}\n\n{}\n",
        event.kind.summary(),
        event.id,
        event.at_ms,
        serde_json::to_string_pretty(event).unwrap_or_default()
    );
    let msg = msg.body(text).map_err(|e| format!("e-mail: {e}"))?;
    let tls = |h: &str| TlsParameters::new(h.to_string()).map_err(|e| format!("tls: {e}"));
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(port)
        .timeout(Some(ATTEMPT_TIMEOUT));
    builder = match smtp.security.as_deref().unwrap_or("none") {
        "starttls" => builder.tls(Tls::Required(tls(&host)?)),
        "tls" => builder.tls(Tls::Wrapper(tls(&host)?)),
        _ => builder.tls(Tls::None),
    };
    if let (Some(u), Some(p)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    builder
        .build()
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|e| format!("smtp {}: {e}", smtp.server))
}
