//! `gateway config export` and `gateway config apply`: the whole configuration as a file, and
//! the plan that turns the cluster's configuration into the file's.
//!
//! Apply reads the configuration linearizably, computes the difference, and sends it as one
//! transaction whose commands carry the revisions it read (0 for objects it creates): if
//! anything it read changes before the transaction commits, the transaction is refused whole
//! rather than overwriting the other change. Applying the same file twice changes nothing the
//! second time.
//!
//! The file holds pools, routes, TCP routes and the node-wide limits (`[limits]`; a file
//! without that table leaves the limits alone, an empty one removes them). Certificates are not in it: read APIs never
//! return keys, so export lists the certificates' names only (`certs = [...]`), and apply
//! checks that the certificates named exist and otherwise leaves certificates alone (they are
//! managed with `gateway cert`).

use super::ConsistencyArg;
use super::conn::{Conn, Failed};
use super::output::outln;
use super::output::{Output, emit_raw, print_json};
use gateway_model::{Command, Limits, Pool, Route, TcpRoute};
use gateway_wire::{admin, convert};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The configuration file: every pool and route of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    // ---- certificates and TCP routes (issue 7) ----
    /// Names of certificates (uploaded with `gateway cert add`) the configuration needs; apply
    /// checks they exist and never changes certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<String>,
    // ---- end ----
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub routes: Vec<Route>,
    // ---- TCP routes (issue 7) ----
    #[serde(default)]
    pub tcp_routes: Vec<TcpRoute>,
    // ---- end TCP routes ----
    /// The node-wide limits, replaced whole; `None` (no `[limits]` table) leaves them alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// What the cluster holds now (as read).
#[derive(Clone, Debug, Default)]
pub struct Current {
    pub revision: u64,
    pub pools: BTreeMap<String, Pool>,
    pub routes: BTreeMap<String, Route>,
    // ---- certificates and TCP routes (issue 7) ----
    pub tcp_routes: BTreeMap<String, TcpRoute>,
    /// The certificates' names.
    pub certs: BTreeSet<String>,
    // ---- end ----
    pub limits: Limits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pool,
    Route,
    TcpRoute,
    Limits,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Pool => "pool",
            Kind::Route => "route",
            Kind::TcpRoute => "tcp-route",
            Kind::Limits => "limits",
        }
    }

    /// How messages name the object: `route 'app'`, or just `limits`.
    fn label(self, name: &str) -> String {
        match self {
            Kind::Limits => "limits".into(),
            _ => format!("{} '{name}'", self.word()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One field that differs: its name, the value now and the value wanted (`null` when absent).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// One object to change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub action: Action,
    pub kind: Kind,
    pub name: String,
    /// The revision read (the one the command expects); absent for a creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    #[serde(skip)]
    pub command: Command,
}

impl Step {
    /// `+ pool web`, `~ route app: path_prefix "/" -> "/api"`, `- route old`.
    pub fn line(&self) -> String {
        let kind = self.kind.word();
        match self.action {
            Action::Create => format!("+ {kind} {}", self.name),
            Action::Delete => format!("- {kind} {}", self.name),
            Action::Update => {
                let what: Vec<String> = self
                    .fields
                    .iter()
                    .map(|f| format!("{} {} -> {}", f.field, f.from, f.to))
                    .collect();
                match self.kind {
                    Kind::Limits => format!("~ limits: {}", what.join("; ")),
                    _ => format!("~ {kind} {}: {}", self.name, what.join("; ")),
                }
            }
        }
    }
}

/// An object as plain JSON without its revision (what the file can say about it).
fn plain<T: Serialize>(v: &T) -> BTreeMap<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(map)) => map.into_iter().filter(|(k, _)| k != "revision").collect(),
        _ => BTreeMap::new(),
    }
}

fn field_changes<T: Serialize>(now: &T, want: &T) -> Vec<FieldChange> {
    let (a, b) = (plain(now), plain(want));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            from: a.get(k).cloned().unwrap_or(Value::Null),
            to: b.get(k).cloned().unwrap_or(Value::Null),
        })
        .collect()
}

/// The steps that turn `current` into `desired`, in an order the cluster can apply as one
/// transaction: pools created or changed, routes created or changed, routes deleted, pools
/// deleted. With `prune` false, objects missing from the file are kept.
pub fn plan(current: &Current, desired: &ConfigFile, prune: bool) -> Result<Vec<Step>, String> {
    let mut pools = BTreeMap::new();
    for p in &desired.pools {
        if pools.insert(p.name.as_str(), p).is_some() {
            return Err(format!(
                "pool '{}' appears twice in the file; keep one",
                p.name
            ));
        }
    }
    let mut routes = BTreeMap::new();
    for r in &desired.routes {
        if routes.insert(r.name.as_str(), r).is_some() {
            return Err(format!(
                "route '{}' appears twice in the file; keep one",
                r.name
            ));
        }
    }
    // ---- certificates and TCP routes (issue 7) ----
    for name in &desired.certs {
        if !current.certs.contains(name) {
            return Err(format!(
                "certificate '{name}' (in certs) does not exist; upload it with `gateway cert add {name} --cert FILE --key FILE` (apply never creates certificates)"
            ));
        }
    }
    let mut tcp_routes = BTreeMap::new();
    for r in &desired.tcp_routes {
        if tcp_routes.insert(r.name.as_str(), r).is_some() {
            return Err(format!(
                "tcp route '{}' appears twice in the file; keep one",
                r.name
            ));
        }
    }
    // ---- end ----
    let mut steps = Vec::new();
    if let Some(want) = &desired.limits {
        let mut limits = want.clone();
        limits.revision = 0;
        gateway_model::validate_limits(&limits).map_err(|e| format!("limits.{e}"))?;
        let fields = field_changes(&current.limits, &limits);
        if !fields.is_empty() {
            steps.push(Step {
                action: Action::Update,
                kind: Kind::Limits,
                name: "limits".into(),
                revision: Some(current.limits.revision),
                fields,
                command: Command::SetLimits {
                    limits,
                    expect: Some(current.limits.revision),
                },
            });
        }
    }
    for (name, want) in &pools {
        let mut pool = (*want).clone();
        pool.revision = 0;
        match current.pools.get(*name) {
            None => steps.push(Step {
                action: Action::Create,
                kind: Kind::Pool,
                name: name.to_string(),
                revision: None,
                fields: Vec::new(),
                command: Command::PutPool {
                    pool,
                    expect: Some(0),
                },
            }),
            Some(now) => {
                let fields = field_changes(now, &pool);
                if !fields.is_empty() {
                    steps.push(Step {
                        action: Action::Update,
                        kind: Kind::Pool,
                        name: name.to_string(),
                        revision: Some(now.revision),
                        fields,
                        command: Command::PutPool {
                            pool,
                            expect: Some(now.revision),
                        },
                    });
                }
            }
        }
    }
    // ---- TCP routes (issue 7) ----
    // Deleted before any is created, so an address can move from one TCP route to another.
    if prune {
        for (name, now) in &current.tcp_routes {
            if !tcp_routes.contains_key(name.as_str()) {
                steps.push(Step {
                    action: Action::Delete,
                    kind: Kind::TcpRoute,
                    name: name.clone(),
                    revision: Some(now.revision),
                    fields: Vec::new(),
                    command: Command::DeleteTcpRoute {
                        name: name.clone(),
                        expect: Some(now.revision),
                    },
                });
            }
        }
    }
    for (name, want) in &tcp_routes {
        let mut route = (*want).clone();
        route.revision = 0;
        match current.tcp_routes.get(*name) {
            None => steps.push(Step {
                action: Action::Create,
                kind: Kind::TcpRoute,
                name: name.to_string(),
                revision: None,
                fields: Vec::new(),
                command: Command::PutTcpRoute {
                    route,
                    expect: Some(0),
                },
            }),
            Some(now) => {
                let fields = field_changes(now, &route);
                if !fields.is_empty() {
                    steps.push(Step {
                        action: Action::Update,
                        kind: Kind::TcpRoute,
                        name: name.to_string(),
                        revision: Some(now.revision),
                        fields,
                        command: Command::PutTcpRoute {
                            route,
                            expect: Some(now.revision),
                        },
                    });
                }
            }
        }
    }
    // ---- end TCP routes ----
    for (name, want) in &routes {
        let mut route = (*want).clone();
        route.revision = 0;
        match current.routes.get(*name) {
            None => steps.push(Step {
                action: Action::Create,
                kind: Kind::Route,
                name: name.to_string(),
                revision: None,
                fields: Vec::new(),
                command: Command::PutRoute {
                    route,
                    expect: Some(0),
                },
            }),
            Some(now) => {
                let fields = field_changes(now, &route);
                if !fields.is_empty() {
                    steps.push(Step {
                        action: Action::Update,
                        kind: Kind::Route,
                        name: name.to_string(),
                        revision: Some(now.revision),
                        fields,
                        command: Command::PutRoute {
                            route,
                            expect: Some(now.revision),
                        },
                    });
                }
            }
        }
    }
    if prune {
        for (name, now) in &current.routes {
            if !routes.contains_key(name.as_str()) {
                steps.push(Step {
                    action: Action::Delete,
                    kind: Kind::Route,
                    name: name.clone(),
                    revision: Some(now.revision),
                    fields: Vec::new(),
                    command: Command::DeleteRoute {
                        name: name.clone(),
                        expect: Some(now.revision),
                    },
                });
            }
        }
        for (name, now) in &current.pools {
            if !pools.contains_key(name.as_str()) {
                steps.push(Step {
                    action: Action::Delete,
                    kind: Kind::Pool,
                    name: name.clone(),
                    revision: Some(now.revision),
                    fields: Vec::new(),
                    command: Command::DeletePool {
                        name: name.clone(),
                        expect: Some(now.revision),
                    },
                });
            }
        }
    }
    Ok(steps)
}

/// Rewrites `commands[i].` / `commands[i]:` in a server's message into the object it names.
pub fn name_commands(message: &str, steps: &[Step]) -> String {
    let mut out = message.to_string();
    // Highest index first, so that commands[1] does not match inside commands[12].
    for (i, s) in steps.iter().enumerate().rev() {
        let label = s.kind.label(&s.name);
        // `limits.max_requests`, `route 'app' path_prefix`.
        let field_sep = if s.kind == Kind::Limits { "." } else { " " };
        let tag = format!("commands[{i}]");
        out = out
            .replace(&format!("{tag}."), &format!("{label}{field_sep}"))
            .replace(&format!("{tag}:"), &format!("{label}:"));
    }
    out
}

/// Removes `revision` from an object's TOML table (the file holds no revisions).
fn without_revision<T: Serialize>(v: &T) -> anyhow::Result<toml::Value> {
    let mut t = toml::Value::try_from(v)?;
    if let toml::Value::Table(table) = &mut t {
        table.remove("revision");
    }
    Ok(t)
}

/// The configuration as a TOML file (certificate names, limits, pools, routes, TCP routes; no
/// revisions).
pub fn to_toml(file: &ConfigFile, revision: u64) -> anyhow::Result<String> {
    let tables = |v: Vec<toml::Value>| toml::Value::Array(v);
    let mut doc = toml::Table::new();
    if let Some(limits) = &file.limits {
        doc.insert("limits".into(), without_revision(limits)?);
    }
    doc.insert(
        "pools".into(),
        tables(
            file.pools
                .iter()
                .map(without_revision)
                .collect::<Result<_, _>>()?,
        ),
    );
    doc.insert(
        "routes".into(),
        tables(
            file.routes
                .iter()
                .map(without_revision)
                .collect::<Result<_, _>>()?,
        ),
    );
    doc.insert(
        "tcp_routes".into(),
        tables(
            file.tcp_routes
                .iter()
                .map(without_revision)
                .collect::<Result<_, _>>()?,
        ),
    );
    let certs = if file.certs.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = file.certs.iter().map(|n| format!("{n:?}")).collect();
        format!(
            "# Certificates are not exported (keys never leave the cluster): these are their names,\n# which apply checks exist; manage them with `gateway cert`.\ncerts = [{}]\n\n",
            names.join(", ")
        )
    };
    Ok(format!(
        "# Gateway configuration, exported at revision {revision}.\n# Edit, then: gateway config apply -f FILE\n\n{certs}{}",
        toml::to_string(&doc)?
    ))
}

/// The configuration as JSON (no revisions).
pub fn to_json(file: &ConfigFile) -> Value {
    let strip = |v: Value| match v {
        Value::Object(mut m) => {
            m.remove("revision");
            Value::Object(m)
        }
        v => v,
    };
    let list = |v: Vec<Value>| Value::Array(v.into_iter().map(strip).collect());
    let mut out = serde_json::Map::new();
    if !file.certs.is_empty() {
        out.insert("certs".into(), json!(file.certs));
    }
    if let Some(limits) = &file.limits {
        out.insert(
            "limits".into(),
            strip(serde_json::to_value(limits).unwrap_or_default()),
        );
    }
    out.insert(
        "pools".into(),
        list(
            file.pools
                .iter()
                .map(|p| serde_json::to_value(p).unwrap_or_default())
                .collect(),
        ),
    );
    out.insert(
        "routes".into(),
        list(
            file.routes
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .collect(),
        ),
    );
    out.insert(
        "tcp_routes".into(),
        list(
            file.tcp_routes
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .collect(),
        ),
    );
    Value::Object(out)
}

/// The line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses a configuration file: JSON if it is named `*.json` (or starts with `{`), else TOML.
/// Errors are one line naming the file, the line and the field.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<ConfigFile> {
    let name = path.display();
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if json {
        return serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{name} line {}: {}; fix the file (see `gateway config export` for the format)",
                e.line(),
                super::conn::one_line(&e.to_string())
            )
        });
    }
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(" line {}", line_of(text, s.start)))
            .unwrap_or_default();
        anyhow::anyhow!(
            "{name}{line}: {}; fix the file (see `gateway config export` for the format)",
            super::conn::one_line(e.message())
        )
    })
}

// ---- the commands --------------------------------------------------------------------

async fn read(c: &mut Conn, consistency: ConsistencyArg) -> anyhow::Result<Current> {
    let msg = admin::ReadRequest {
        consistency: consistency.wire(),
    };
    let r = c
        .call(msg, |mut cl, r| async move { cl.get_config(r).await })
        .await?
        .into_inner();
    let mut cur = Current {
        revision: r.revision,
        ..Current::default()
    };
    for p in r.pools {
        let p = convert::pool_from_wire(p)?;
        cur.pools.insert(p.name.clone(), p);
    }
    for r in r.routes {
        let r = convert::route_from_wire(r)?;
        cur.routes.insert(r.name.clone(), r);
    }
    for t in r.tcp_routes {
        let t = convert::tcp_route_from_wire(t)?;
        cur.tcp_routes.insert(t.name.clone(), t);
    }
    cur.certs = r.certs.into_iter().map(|c| c.name).collect();
    cur.limits = r.limits.map(convert::limits_from_wire).unwrap_or_default();
    Ok(cur)
}

/// `gateway config export`.
pub async fn export(c: &mut Conn, out: Output, consistency: ConsistencyArg) -> anyhow::Result<()> {
    let cur = read(c, consistency).await?;
    let revision = cur.revision;
    let file = ConfigFile {
        certs: cur.certs.into_iter().collect(),
        pools: cur.pools.into_values().collect(),
        routes: cur.routes.into_values().collect(),
        tcp_routes: cur.tcp_routes.into_values().collect(),
        limits: Some(cur.limits),
    };
    match out {
        Output::Table => emit_raw(&to_toml(&file, revision)?),
        Output::Json => print_json(&to_json(&file))?,
    }
    Ok(())
}

/// `gateway config apply`.
pub async fn apply(
    c: &mut Conn,
    out: Output,
    path: &Path,
    dry_run: bool,
    prune: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}; give the file written by `gateway config export`",
            path.display()
        )
    })?;
    let desired = parse(path, &text)?;
    let cur = read(c, ConsistencyArg::Linearizable).await?;
    let steps =
        plan(&cur, &desired, prune).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let report = |revision: u64, applied: bool| json!({"revision": revision, "changed": !steps.is_empty(), "applied": applied, "steps": steps});
    if steps.is_empty() {
        match out {
            Output::Table => outln!("nothing to change (revision {})", cur.revision),
            Output::Json => print_json(&report(cur.revision, false))?,
        }
        return Ok(());
    }
    if out == Output::Table {
        for s in &steps {
            outln!("{}", s.line());
        }
    }
    if dry_run {
        match out {
            Output::Table => outln!(
                "dry run: {} change(s) not applied (revision {})",
                steps.len(),
                cur.revision
            ),
            Output::Json => print_json(&report(cur.revision, false))?,
        }
        return Ok(());
    }
    let commands: Vec<admin::Operation> = steps
        .iter()
        .filter_map(|s| convert::command_to_wire(&s.command))
        .collect();
    let msg = admin::TransactionRequest { commands };
    let result = c
        .call(msg, |mut cl, r| async move { cl.transaction(r).await })
        .await;
    let revision = match result {
        Ok(r) => r.into_inner().revision,
        // An earlier attempt that broke off may have applied it: then the cluster now holds
        // exactly the file.
        Err(e) if c.retried() && e.downcast_ref::<Failed>().is_some_and(Failed::is_stale) => {
            let now = read(c, ConsistencyArg::Linearizable).await?;
            if !plan(&now, &desired, prune).is_ok_and(|s| s.is_empty()) {
                return Err(stale_apply(e, &steps));
            }
            now.revision
        }
        Err(e) => return Err(stale_apply(e, &steps)),
    };
    match out {
        Output::Table => outln!(
            "applied {} change(s) as one transaction (revision {revision})",
            steps.len()
        ),
        Output::Json => print_json(&report(revision, true))?,
    }
    Ok(())
}

/// Why an apply's transaction was refused, naming objects rather than command indexes.
fn stale_apply(e: anyhow::Error, steps: &[Step]) -> anyhow::Error {
    match e.downcast::<Failed>() {
        Ok(f) if f.is_stale() => anyhow::anyhow!(
            "nothing applied: the configuration changed after it was read ({}); run the apply again to see the new difference",
            name_commands(&f.message, steps)
        ),
        Ok(f) if f.code == tonic::Code::Unavailable => anyhow::anyhow!(
            "{}; the transaction may or may not have been applied: run the apply again, it applies whatever is still missing",
            f.message
        ),
        Ok(f) => anyhow::anyhow!("nothing applied: {}", name_commands(&f.message, steps)),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_model::{Backend, Balance, WritePolicy};

    fn pool(name: &str, port: u16, revision: u64) -> Pool {
        Pool {
            name: name.into(),
            backends: vec![Backend {
                id: "a".into(),
                address: format!("127.0.0.1:{port}"),
                ..Backend::default()
            }],
            revision,
            ..Pool::default()
        }
    }

    fn route(name: &str, pool: &str, revision: u64) -> Route {
        Route {
            name: name.into(),
            pool: pool.into(),
            path_prefix: "/".into(),
            revision,
            ..Route::default()
        }
    }

    fn current() -> Current {
        Current {
            revision: 9,
            pools: BTreeMap::from([
                ("web".into(), pool("web", 9001, 3)),
                ("old".into(), pool("old", 9002, 4)),
            ]),
            routes: BTreeMap::from([
                ("app".into(), route("app", "web", 5)),
                ("gone".into(), route("gone", "old", 6)),
            ]),
            ..Current::default()
        }
    }

    fn file_of(c: &Current) -> ConfigFile {
        ConfigFile {
            certs: c.certs.iter().cloned().collect(),
            pools: c.pools.values().cloned().collect(),
            routes: c.routes.values().cloned().collect(),
            tcp_routes: c.tcp_routes.values().cloned().collect(),
            limits: Some(c.limits.clone()),
        }
    }

    #[test]
    fn the_same_config_plans_nothing_whatever_the_revisions() {
        let c = current();
        let mut f = file_of(&c);
        for p in &mut f.pools {
            p.revision = 0;
        }
        f.routes[0].revision = 77;
        assert!(plan(&c, &f, true).unwrap().is_empty());
    }

    #[test]
    fn plan_orders_steps_and_expects_the_revisions_read() {
        let c = current();
        let mut f = file_of(&c);
        f.pools.retain(|p| p.name != "old");
        f.routes.retain(|r| r.name != "gone");
        f.pools.push(pool("api", 9003, 0));
        f.routes[0].path_prefix = "/app".into();
        f.routes[0].writes = WritePolicy::Leader;
        f.routes.push(route("api", "api", 0));
        let steps = plan(&c, &f, true).unwrap();
        let lines: Vec<String> = steps.iter().map(Step::line).collect();
        assert_eq!(
            lines,
            vec![
                "+ pool api",
                "+ route api",
                "~ route app: path_prefix \"/\" -> \"/app\"; writes \"any\" -> \"leader\"",
                "- route gone",
                "- pool old",
            ]
        );
        let commands: Vec<&Command> = steps.iter().map(|s| &s.command).collect();
        assert!(
            matches!(commands[0], Command::PutPool { expect: Some(0), pool } if pool.name == "api")
        );
        assert!(matches!(
            commands[1],
            Command::PutRoute {
                expect: Some(0),
                ..
            }
        ));
        assert!(
            matches!(commands[2], Command::PutRoute { expect: Some(5), route } if route.revision == 0)
        );
        assert!(matches!(
            commands[3],
            Command::DeleteRoute {
                expect: Some(6),
                ..
            }
        ));
        assert!(matches!(
            commands[4],
            Command::DeletePool {
                expect: Some(4),
                ..
            }
        ));

        let kept = plan(&c, &f, false).unwrap();
        assert_eq!(kept.len(), 3, "without pruning nothing is deleted");
        assert!(kept.iter().all(|s| s.action != Action::Delete));
    }

    #[test]
    fn a_changed_backend_list_is_one_field_change() {
        let c = current();
        let mut f = file_of(&c);
        f.pools[1].backends[0].weight = 5;
        f.pools[1].balance = Balance::WeightedRoundRobin;
        let steps = plan(&c, &f, true).unwrap();
        assert_eq!(steps.len(), 1);
        let fields: Vec<&str> = steps[0].fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["backends", "balance"]);
        assert_eq!(steps[0].revision, Some(3));
    }

    #[test]
    fn duplicates_in_the_file_are_refused() {
        let c = current();
        let mut f = file_of(&c);
        f.routes.push(route("app", "web", 0));
        assert!(
            plan(&c, &f, true)
                .unwrap_err()
                .contains("route 'app' appears twice")
        );
    }

    #[test]
    fn export_parses_back_to_the_same_config() {
        let c = current();
        let mut full = route("full", "web", 8);
        full.hosts = vec!["example.com".into(), "*.example.com".into()];
        full.methods = vec!["GET".into()];
        full.request_headers.set.insert("x-a".into(), "1".into());
        full.error_pages.insert(
            "503".into(),
            gateway_model::ErrorPage {
                body: "down".into(),
                ..Default::default()
            },
        );
        let mut c2 = c.clone();
        c2.routes.insert("full".into(), full);
        let f = file_of(&c2);
        let text = to_toml(&f, c2.revision).unwrap();
        assert!(!text.contains("revision ="), "{text}");
        assert!(
            text.contains("[[pools]]\nname = \"old\""),
            "name first: {text}"
        );
        let back = parse(Path::new("cluster.toml"), &text).unwrap();
        assert!(plan(&c2, &back, true).unwrap().is_empty(), "{text}");
        let json = serde_json::to_string(&to_json(&f)).unwrap();
        let back = parse(Path::new("cluster.json"), &json).unwrap();
        assert!(plan(&c2, &back, true).unwrap().is_empty());
    }

    #[test]
    fn limits_are_planned_exported_and_left_alone_when_absent() {
        let mut c = current();
        c.limits = Limits {
            max_requests: Some(100),
            max_connections: None,
            revision: 7,
        };
        // Absent: left alone, even with prune.
        let mut f = file_of(&c);
        f.limits = None;
        assert!(plan(&c, &f, true).unwrap().is_empty());
        // The same limits at another revision: nothing to do.
        let f = file_of(&c);
        assert!(plan(&c, &f, true).unwrap().is_empty());
        // Changed: one step, expecting the revision read, shown by field.
        let mut f = file_of(&c);
        f.limits = Some(Limits {
            max_connections: Some(50),
            ..Limits::default()
        });
        let steps = plan(&c, &f, true).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(
            steps[0].line(),
            "~ limits: max_connections null -> 50; max_requests 100 -> null"
        );
        assert!(matches!(
            steps[0].command,
            Command::SetLimits { ref limits, expect: Some(7) }
                if limits.max_connections == Some(50) && limits.max_requests.is_none()
        ));
        // An empty table removes them.
        let mut f = file_of(&c);
        f.limits = Some(Limits::default());
        assert_eq!(
            plan(&c, &f, true).unwrap()[0].line(),
            "~ limits: max_requests 100 -> null"
        );
        // Out of range: refused before anything is sent, naming the field.
        let mut f = file_of(&c);
        f.limits = Some(Limits {
            max_requests: Some(0),
            ..Limits::default()
        });
        let e = plan(&c, &f, true).unwrap_err();
        assert!(
            e.starts_with("limits.max_requests: 0 is out of range"),
            "{e}"
        );
        // Exported and parsed back: the same limits, no revision in the file.
        let text = to_toml(&file_of(&c), c.revision).unwrap();
        assert!(text.contains("[limits]\nmax_requests = 100\n"), "{text}");
        let back = parse(Path::new("cluster.toml"), &text).unwrap();
        assert!(plan(&c, &back, true).unwrap().is_empty(), "{text}");
        let json = serde_json::to_string(&to_json(&file_of(&c))).unwrap();
        assert!(json.contains(r#""limits":{"max_requests":100}"#), "{json}");
        // With no limits set, the export still holds an empty table, which applies as is.
        c.limits = Limits::default();
        let text = to_toml(&file_of(&c), c.revision).unwrap();
        assert!(text.contains("[limits]\n"), "{text}");
        let back = parse(Path::new("cluster.toml"), &text).unwrap();
        assert_eq!(back.limits, Some(Limits::default()));
        assert!(plan(&c, &back, true).unwrap().is_empty());
        // A server message about the limits' command names them.
        let steps = plan(
            &Current {
                limits: Limits {
                    revision: 3,
                    ..Limits::default()
                },
                ..current()
            },
            &f_with_limits(Some(5)),
            false,
        )
        .unwrap();
        assert_eq!(
            name_commands("commands[0].max_requests: bad", &steps),
            "limits.max_requests: bad"
        );
    }

    fn f_with_limits(max_requests: Option<u32>) -> ConfigFile {
        ConfigFile {
            limits: Some(Limits {
                max_requests,
                ..Limits::default()
            }),
            ..ConfigFile::default()
        }
    }

    // ---- certificates and TCP routes (issue 7) ----
    fn tcp(name: &str, port: u16, revision: u64) -> TcpRoute {
        TcpRoute {
            name: name.into(),
            listen: format!("127.0.0.1:{port}"),
            pool: "web".into(),
            revision,
            ..TcpRoute::default()
        }
    }

    #[test]
    fn tcp_routes_and_cert_names_round_trip_and_plan() {
        let mut c = current();
        c.tcp_routes.insert("redis".into(), tcp("redis", 6380, 7));
        c.tcp_routes
            .insert("old-tcp".into(), tcp("old-tcp", 6381, 8));
        c.certs.insert("site".into());
        let f = file_of(&c);
        let text = to_toml(&f, c.revision).unwrap();
        assert!(text.contains("certs = [\"site\"]"), "{text}");
        assert!(text.contains("[[tcp_routes]]"), "{text}");
        assert!(!text.contains("revision ="), "{text}");
        let back = parse(Path::new("c.toml"), &text).unwrap();
        assert!(plan(&c, &back, true).unwrap().is_empty(), "{text}");
        let json = serde_json::to_string(&to_json(&f)).unwrap();
        let back = parse(Path::new("c.json"), &json).unwrap();
        assert!(plan(&c, &back, true).unwrap().is_empty(), "{json}");

        // The address moves from one TCP route to a new one: the delete goes first.
        let mut f = file_of(&c);
        f.tcp_routes.retain(|r| r.name == "redis");
        f.tcp_routes.push(tcp("new-tcp", 6381, 0));
        f.tcp_routes[0].max_connections = Some(10);
        let lines: Vec<String> = plan(&c, &f, true).unwrap().iter().map(Step::line).collect();
        assert_eq!(
            lines,
            vec![
                "- tcp-route old-tcp",
                "+ tcp-route new-tcp",
                "~ tcp-route redis: max_connections null -> 10",
            ]
        );
        assert!(
            plan(&c, &f, false)
                .unwrap()
                .iter()
                .all(|s| s.action != Action::Delete)
        );

        // A certificate the file names must exist; apply never creates one.
        let mut f = file_of(&c);
        f.certs.push("missing".into());
        assert!(
            plan(&c, &f, true)
                .unwrap_err()
                .contains("certificate 'missing'")
        );
    }

    #[test]
    fn file_errors_are_one_line_with_the_place() {
        let e = parse(
            Path::new("c.toml"),
            "[[pools]]\nname = \"a\"\n\n[[routes]]\nname = \"r\"\nnope = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("c.toml line "), "{e}");
        assert!(e.contains("nope"), "{e}");
        let e = parse(Path::new("c.json"), "{\"pools\": 3}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.json line 1"), "{e}");
    }

    #[test]
    fn server_messages_name_the_object_not_the_index() {
        let c = current();
        let mut f = file_of(&c);
        f.pools.push(pool("p1", 1, 0));
        f.routes.push(route("r1", "p1", 0));
        let steps = plan(&c, &f, false).unwrap();
        assert_eq!(
            name_commands(
                "commands[1].hosts[0]: 'X' has upper-case letters; fix",
                &steps
            ),
            "route 'r1' hosts[0]: 'X' has upper-case letters; fix"
        );
        assert_eq!(
            name_commands("commands[0]: pool in use", &steps),
            "pool 'p1': pool in use"
        );
    }
}
