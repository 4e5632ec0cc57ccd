//! `GET /metrics`: Prometheus text format (0.0.4) of the cluster's figures (Raft term, role,
//! indexes, replication lag, leader changes, forwarded writes) and of any other collectors the
//! node hands in (the data plane's counters), encoded with `prometheus-client`.

use gateway_cluster::Status;
use gateway_model::State;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// Writes one counter family (`name` without `_total`, which is appended).
pub fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family.
pub fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, i64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one histogram family: per label set, `(sum, count, [(upper bound, cumulative
/// count)])` without the `+Inf` bucket (which is `count`).
pub fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, f64, u64, Vec<(f64, u64)>)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, sum, count, cumulative) in rows {
        // prometheus-client sums the buckets itself: hand it each bucket's own count.
        let mut buckets = Vec::with_capacity(cumulative.len() + 1);
        let mut below = 0;
        for (le, n) in cumulative {
            buckets.push((le, n.saturating_sub(below)));
            below = n;
        }
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        m.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    gauges(enc, name, help, [(Vec::new(), v)])
}

fn as_gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The cluster's figures at one scrape.
#[derive(Debug)]
pub(crate) struct ClusterFigures {
    pub(crate) status: Status,
    pub(crate) leader_changes: u64,
    pub(crate) forwarded_writes: u64,
    pub(crate) forward_calls: u64,
    /// The state this node has applied (health verdicts, pools).
    pub(crate) state: Arc<State>,
    /// Times each backend was marked down, as this node saw it applied.
    pub(crate) ejections: BTreeMap<(String, String), u64>,
}

impl Collector for ClusterFigures {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.status;
        gauge(
            &mut enc,
            "gateway_raft_term",
            "Current Raft term.",
            as_gauge(s.term),
        )?;
        gauges(
            &mut enc,
            "gateway_raft_state",
            "1 for this node's Raft role, 0 for the others.",
            ["leader", "follower", "candidate", "learner"]
                .into_iter()
                .map(|r| (vec![("state", r.to_string())], i64::from(s.role == r))),
        )?;
        gauge(
            &mut enc,
            "gateway_raft_leader_id",
            "Id of the leader this node knows (0: none).",
            as_gauge(s.leader.unwrap_or(0)),
        )?;
        counters(
            &mut enc,
            "gateway_raft_leader_changes",
            "Times the known leader changed (a new leader or term) since this node started.",
            [(Vec::new(), self.leader_changes)],
        )?;
        let idx = |v: Option<u64>| as_gauge(v.unwrap_or(0));
        gauge(
            &mut enc,
            "gateway_raft_last_log_index",
            "Index of the last entry in this node's log.",
            idx(s.last_log_index),
        )?;
        gauge(
            &mut enc,
            "gateway_raft_commit_index",
            "Highest log index known committed.",
            idx(s.committed_index),
        )?;
        gauge(
            &mut enc,
            "gateway_raft_applied_index",
            "Highest log index applied to the state machine.",
            idx(s.applied_index),
        )?;
        gauge(
            &mut enc,
            "gateway_raft_snapshot_index",
            "Last log index covered by this node's snapshot.",
            idx(s.snapshot_index),
        )?;
        gauge(
            &mut enc,
            "gateway_raft_log_entries",
            "Entries kept in the log (last index minus purged index).",
            idx(s.last_log_index).saturating_sub(idx(s.purged_index)),
        )?;
        let followers = s
            .voters
            .iter()
            .chain(&s.learners)
            .filter(|m| m.id != s.id)
            .filter_map(|m| Some((m.id, m.matched_index?, m.lag?)))
            .collect::<Vec<_>>();
        gauges(
            &mut enc,
            "gateway_raft_replication_lag_entries",
            "On the leader: log entries each follower is behind.",
            followers
                .iter()
                .map(|(id, _, lag)| (vec![("follower", id.to_string())], as_gauge(*lag))),
        )?;
        gauges(
            &mut enc,
            "gateway_raft_replication_matched_index",
            "On the leader: last log index each follower has.",
            followers
                .iter()
                .map(|(id, m, _)| (vec![("follower", id.to_string())], as_gauge(*m))),
        )?;
        gauges(
            &mut enc,
            "gateway_cluster_members",
            "Cluster members by kind.",
            [
                (vec![("kind", "voter".to_string())], s.voters.len() as i64),
                (
                    vec![("kind", "learner".to_string())],
                    s.learners.len() as i64,
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "gateway_config_revision",
            "Revision of the configuration this node has applied.",
            as_gauge(s.revision),
        )?;
        counters(
            &mut enc,
            "gateway_forwarded_writes",
            "Admin writes this node carried to the leader since it started.",
            [(Vec::new(), self.forwarded_writes)],
        )?;
        counters(
            &mut enc,
            "gateway_forward_calls",
            "Calls that carried those writes: writes sent while others travel share the next call.",
            [(Vec::new(), self.forward_calls)],
        )?;
        let st = &self.state;
        let backends = || {
            st.pools.values().flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| (p.name.clone(), b.id.clone(), b.drain))
            })
        };
        gauges(
            &mut enc,
            "gateway_backend_up",
            "The cluster's agreed health of a backend in a health-checked pool: 1 up, 0 down.",
            st.pools.values().flat_map(|p| {
                let verdicts = st.health.get(&p.name);
                p.backends.iter().filter_map(move |b| {
                    let up =
                        match gateway_model::health_state(p, verdicts.and_then(|m| m.get(&b.id))) {
                            "up" => 1,
                            "down" => 0,
                            _ => return None,
                        };
                    Some((
                        vec![("pool", p.name.clone()), ("backend", b.id.clone())],
                        up,
                    ))
                })
            }),
        )?;
        gauges(
            &mut enc,
            "gateway_backend_draining",
            "1 while a backend is draining (takes no new requests).",
            backends().map(|(pool, backend, drain)| {
                (vec![("pool", pool), ("backend", backend)], i64::from(drain))
            }),
        )?;
        counters(
            &mut enc,
            "gateway_backend_ejections",
            "Times the cluster marked a backend down (active checks or passive ejection), as applied on this node since it started.",
            self.ejections.iter().map(|((pool, backend), n)| {
                (
                    vec![("pool", pool.clone()), ("backend", backend.clone())],
                    *n,
                )
            }),
        )?;
        gauge(
            &mut enc,
            "gateway_cluster_lost_members",
            "Members the leader recorded as lost and not back yet.",
            st.lost.len() as i64,
        )?;
        Ok(())
    }
}

/// A collector shared with the node (the data plane's).
#[derive(Debug)]
struct SharedCollector(Arc<dyn Collector>);

impl Collector for SharedCollector {
    fn encode(&self, enc: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(enc)
    }
}

/// The whole `/metrics` text.
pub(crate) fn render(figures: ClusterFigures, extra: &[Arc<dyn Collector>]) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(figures));
    for c in extra {
        reg.register_collector(Box::new(SharedCollector(c.clone())));
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}
