//! How client commands print: aligned tables for people, JSON for scripts.

use gateway_model::{Change, ChangeSet, Pool, Route, WritePolicy};
use serde::Serialize;

/// Output format of the client commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts (one object; `watch` prints one per line).
    Json,
}

/// Columns aligned on the widest cell, two spaces apart; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// `key: value` lines, keys padded to one width.
pub fn fields<K: AsRef<str>>(rows: &[(K, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.as_ref().len())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{:<w$}  {v}", k.as_ref()).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` to stdout. When the reader has gone (`gateway watch | head`), there is
/// nobody left to tell anything: the process ends quietly.
pub fn emit_raw(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Writes one line (or several) to stdout; see [`emit_raw`].
pub fn emit(text: impl std::fmt::Display) {
    emit_raw(&format!("{text}\n"));
}

/// `println!` through [`emit`].
macro_rules! outln {
    () => {
        $crate::ctl::output::emit("")
    };
    ($($arg:tt)*) => {
        $crate::ctl::output::emit(format!($($arg)*))
    };
}
pub(crate) use outln;

pub fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    emit(serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A value as its serde name (`round_robin`, `leader`).
pub fn name_of(v: &impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

pub fn pool_row(p: &Pool) -> Vec<String> {
    vec![
        p.name.clone(),
        name_of(&p.balance),
        or_dash(
            p.backends
                .iter()
                .map(|b| format!("{}={}", b.id, b.address))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        p.revision.to_string(),
    ]
}

pub const POOL_HEADERS: &[&str] = &["NAME", "BALANCE", "BACKENDS", "REVISION"];

pub fn route_row(r: &Route) -> Vec<String> {
    vec![
        r.name.clone(),
        if r.hosts.is_empty() {
            "*".into()
        } else {
            r.hosts.join(",")
        },
        r.path_prefix.clone(),
        if r.methods.is_empty() {
            "*".into()
        } else {
            r.methods.join(",")
        },
        r.pool.clone(),
        name_of(&r.writes),
        r.revision.to_string(),
    ]
}

pub const ROUTE_HEADERS: &[&str] = &[
    "NAME", "HOSTS", "PATH", "METHODS", "POOL", "WRITES", "REVISION",
];

/// A pool in full, for `pool get`.
pub fn pool_detail(p: &Pool) -> String {
    let mut rows = vec![
        ("name", p.name.clone()),
        ("revision", p.revision.to_string()),
        ("balance", name_of(&p.balance)),
        ("protocol", name_of(&p.protocol)),
        ("prefer_local", p.prefer_local.to_string()),
    ];
    if let Some(t) = p.queue_timeout_ms {
        rows.push(("queue_timeout_ms", t.to_string()));
    }
    if let Some(t) = p.keep_alive_timeout_ms {
        rows.push(("keep_alive_timeout_ms", t.to_string()));
    }
    if let Some(t) = p.retry_budget_percent {
        rows.push(("retry_budget_percent", t.to_string()));
    }
    if let Some(t) = p.retry_budget_min_per_second {
        rows.push(("retry_budget_min_per_second", t.to_string()));
    }
    if let Some(t) = &p.tls {
        let ca = if t.ca_pem.is_some() {
            "its own CA bundle"
        } else {
            "public CAs"
        };
        let mut v = format!("on, trusting {ca}");
        if let Some(n) = &t.sni {
            v.push_str(&format!(", sni {n}"));
        }
        if let Some(n) = &t.client_cert {
            v.push_str(&format!(", client certificate {n}"));
        }
        rows.push(("tls", v));
    }
    if let Some(s) = &p.process {
        let mut cmd = vec![s.command.clone()];
        cmd.extend(s.args.iter().cloned());
        rows.push(("process", cmd.join(" ")));
        let nodes = if s.nodes.is_empty() {
            "every node".to_string()
        } else {
            let ids: Vec<String> = s.nodes.iter().map(u64::to_string).collect();
            format!("nodes {}", ids.join(","))
        };
        rows.push(("instances", format!("{} per node, on {nodes}", s.instances)));
        rows.push(("ports", s.ports.clone()));
    }
    let mut out = fields(&rows);
    out.push_str("\n\n");
    if p.backends.is_empty() {
        out.push_str("no backends (requests get 503): add one with `gateway backend add`");
    } else {
        let rows: Vec<Vec<String>> = p
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.id.clone(),
                    b.address.clone(),
                    b.weight.to_string(),
                    b.node.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                    b.max_connections
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if b.drain { "draining" } else { "in service" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "BACKEND",
                "ADDRESS",
                "WEIGHT",
                "NODE",
                "MAX_CONNECTIONS",
                "STATE",
            ],
            &rows,
        ));
    }
    out
}

/// A route in full, for `route get`: the common fields, then any others as JSON.
pub fn route_detail(r: &Route) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("name", r.name.clone()),
        ("revision", r.revision.to_string()),
        (
            "hosts",
            if r.hosts.is_empty() {
                "* (any)".into()
            } else {
                r.hosts.join(", ")
            },
        ),
        ("path_prefix", r.path_prefix.clone()),
        (
            "methods",
            if r.methods.is_empty() {
                "* (any)".into()
            } else {
                r.methods.join(", ")
            },
        ),
        ("pool", r.pool.clone()),
        ("writes", name_of(&r.writes)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // Everything else the route sets, as it would be written in a config file.
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(r) {
        for (k, v) in map {
            if matches!(
                k.as_str(),
                "name" | "revision" | "hosts" | "path_prefix" | "methods" | "pool" | "writes"
            ) {
                continue;
            }
            rows.push((k, v.to_string()));
        }
    }
    fields(&rows)
}

/// One line per change, for `watch`.
pub fn change_lines(set: &ChangeSet) -> Vec<String> {
    set.changes
        .iter()
        .map(|c| {
            let what = match c {
                Change::PutPool { pool } => format!(
                    "put pool {} ({}, {} backend{}{})",
                    pool.name,
                    name_of(&pool.balance),
                    pool.backends.len(),
                    if pool.backends.len() == 1 { "" } else { "s" },
                    if pool.backends.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ": {}",
                            pool.backends
                                .iter()
                                .map(|b| format!("{}={}", b.id, b.address))
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                    }
                ),
                Change::DeletePool { name } => format!("delete pool {name}"),
                Change::PutRoute { route } => format!(
                    "put route {} (hosts {}, path {}, pool {}{})",
                    route.name,
                    if route.hosts.is_empty() {
                        "*".to_string()
                    } else {
                        route.hosts.join(",")
                    },
                    route.path_prefix,
                    route.pool,
                    if route.writes == WritePolicy::Leader {
                        ", writes to the leader"
                    } else {
                        ""
                    }
                ),
                Change::DeleteRoute { name } => format!("delete route {name}"),
                Change::RetireNode { id } => format!("retire node {id}"),
                Change::PutCert { cert } => {
                    format!("put cert {} ({})", cert.name, cert.names.join(","))
                }
                Change::DeleteCert { name } => format!("delete cert {name}"),
                Change::PutTcpRoute { route } => format!(
                    "put tcp route {} (listen {}, pool {})",
                    route.name, route.listen, route.pool
                ),
                Change::DeleteTcpRoute { name } => format!("delete tcp route {name}"),
                Change::SetLimits { limits } => format!(
                    "set node limits (max_requests {}, max_connections {})",
                    limits
                        .max_requests
                        .map_or_else(|| "unlimited".to_string(), |v| v.to_string()),
                    limits
                        .max_connections
                        .map_or_else(|| "unlimited".to_string(), |v| v.to_string())
                ),
                Change::Health {
                    pool,
                    backend,
                    health,
                } if health.up => format!("backend {pool}/{backend} ({}) up", health.address),
                Change::Health {
                    pool,
                    backend,
                    health,
                } => format!(
                    "backend {pool}/{backend} ({}) down (seen down by node(s) {})",
                    health.address,
                    health
                        .down_on
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Change::PutAlertSink { sink } => format!("put alert sink {}", sink.name),
                Change::DeleteAlertSink { name } => format!("delete alert sink {name}"),
            };
            format!("{}  {what}", set.revision)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_do_not_trail() {
        let t = table(
            &["NAME", "POOL"],
            &[
                vec!["a".into(), "web".into()],
                vec!["longer".into(), "x".into()],
            ],
        );
        assert_eq!(t, "NAME    POOL\na       web\nlonger  x");
    }
}
