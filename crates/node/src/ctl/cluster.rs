//! `gateway cluster status|members|leader` and `gateway node remove`.

use super::ClusterCmd;
use super::conn::Conn;
use super::output::outln;
use super::output::{Output, fields, print_json, table};
use gateway_wire::admin;
use serde_json::{Value, json};

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn member_json(m: &admin::Member) -> Value {
    json!({
        "id": m.id,
        "cluster_addr": m.cluster_addr,
        "admin_addr": m.admin_addr,
        "http_addr": m.http_addr,
        "matched_index": m.matched_index,
        "lag": m.lag,
    })
}

/// Members as rows: voters, then learners; the leader marked.
fn member_rows(s: &admin::StatusReply) -> Vec<Vec<String>> {
    let role = |id: u64, voter: bool| {
        if s.leader == Some(id) {
            "leader"
        } else if voter {
            "voter"
        } else {
            "learner"
        }
    };
    s.voters
        .iter()
        .map(|m| (m, true))
        .chain(s.learners.iter().map(|m| (m, false)))
        .map(|(m, voter)| {
            vec![
                m.id.to_string(),
                role(m.id, voter).to_string(),
                m.cluster_addr.clone(),
                m.admin_addr.clone(),
                m.http_addr.clone(),
                opt(m.matched_index),
                opt(m.lag),
            ]
        })
        .collect()
}

const MEMBER_HEADERS: &[&str] = &["ID", "ROLE", "CLUSTER", "ADMIN", "HTTP", "MATCHED", "LAG"];

async fn status(c: &mut Conn) -> anyhow::Result<admin::StatusReply> {
    Ok(c.call(admin::StatusRequest {}, |mut cl, r| async move {
        cl.status(r).await
    })
    .await?
    .into_inner())
}

pub async fn cluster(c: &mut Conn, out: Output, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::TransferLeader { to } => {
            let req = admin::TransferLeaderRequest {
                to: to.unwrap_or(0),
            };
            let r = c
                .call(req, |mut cl, r| async move { cl.transfer_leader(r).await })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&json!({"leader": r.leader}))?,
                Output::Table => outln!("node {} now leads", r.leader),
            }
        }
        ClusterCmd::Status => {
            let s = status(c).await?;
            match out {
                Output::Json => print_json(&json!({
                    "id": s.id,
                    "cluster_id": s.cluster_id,
                    "role": s.role,
                    "term": s.term,
                    "leader": s.leader,
                    "last_log_index": s.last_log_index,
                    "committed_index": s.committed_index,
                    "applied_index": s.applied_index,
                    "revision": s.revision,
                    "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "voters": s.voters.iter().map(member_json).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(member_json).collect::<Vec<_>>(),
                }))?,
                Output::Table => {
                    outln!(
                        "{}",
                        fields(&[
                            ("node", s.id.to_string()),
                            ("cluster", s.cluster_id.clone()),
                            ("role", s.role.clone()),
                            ("term", s.term.to_string()),
                            (
                                "leader",
                                s.leader
                                    .map(|l| format!("node {l}"))
                                    .unwrap_or_else(|| "none known".into())
                            ),
                            ("revision", s.revision.to_string()),
                            ("last log index", opt(s.last_log_index)),
                            ("committed index", opt(s.committed_index)),
                            ("applied index", opt(s.applied_index)),
                            ("snapshot index", opt(s.snapshot_index)),
                            ("purged index", opt(s.purged_index)),
                        ])
                    );
                    outln!();
                    outln!("{}", table(MEMBER_HEADERS, &member_rows(&s)));
                }
            }
        }
        ClusterCmd::Members => {
            let s = status(c).await?;
            match out {
                Output::Json => print_json(&json!({
                    "revision": s.revision,
                    "leader": s.leader,
                    "voters": s.voters.iter().map(member_json).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(member_json).collect::<Vec<_>>(),
                }))?,
                Output::Table => outln!("{}", table(MEMBER_HEADERS, &member_rows(&s))),
            }
        }
        ClusterCmd::Leader => {
            let l = c
                .call(admin::LeaderRequest {}, |mut cl, r| async move {
                    cl.leader(r).await
                })
                .await?
                .into_inner();
            match out {
                Output::Json => print_json(&json!({
                    "id": l.id,
                    "term": l.term,
                    "cluster_addr": l.cluster_addr,
                    "admin_addr": l.admin_addr,
                    "http_addr": l.http_addr,
                }))?,
                Output::Table => outln!(
                    "{}",
                    fields(&[
                        ("leader", format!("node {}", l.id)),
                        ("term", l.term.to_string()),
                        ("cluster", l.cluster_addr),
                        ("admin", l.admin_addr),
                        ("http", l.http_addr),
                    ])
                ),
            }
        }
    }
    Ok(())
}

pub async fn remove_node(c: &mut Conn, out: Output, id: u64) -> anyhow::Result<()> {
    let r = c
        .call(admin::RemoveNodeRequest { id }, |mut cl, r| async move {
            cl.remove_node(r).await
        })
        .await?
        .into_inner();
    match out {
        Output::Json => print_json(&json!({"removed": r.removed}))?,
        Output::Table => outln!(
            "node {} removed; its id will not be accepted again",
            r.removed
        ),
    }
    Ok(())
}
