//! `gateway route|pool|backend ...`.

use super::conn::{Conn, Failed, has_code};
use super::output::outln;
use super::output::{self, Output, print_json};
use super::{
    AddMode, AlertAdd, AlertCmd, BackendCmd, CertCmd, ConsistencyArg, PoolCmd, RouteCmd,
    TcpRouteCmd,
};
use anyhow::{Context, bail};
use gateway_model::{Backend, Cert, Pool, Route};
use gateway_wire::admin;
use gateway_wire::convert::{
    alert_sink_from_wire, cert_from_wire, pool_from_wire, pool_to_wire, route_from_wire,
    route_to_wire,
};
use serde_json::json;
use tonic::Code;

/// The expected revision a write carries: `add` creates (0) unless told to replace.
fn expect_of(mode: &AddMode) -> Option<u64> {
    match (mode.replace, mode.cond.if_revision) {
        (true, _) => None,
        (false, Some(r)) => Some(r),
        (false, None) => Some(0),
    }
}

/// Says how to overwrite an object `add` found existing.
fn exists_hint(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<Failed>() {
        Ok(f) if f.code == Code::AlreadyExists => {
            let head = f.message.split(';').next().unwrap_or_default().to_string();
            anyhow::anyhow!(
                "{head}: pass --replace to overwrite it, or --if-revision with the revision it has"
            )
        }
        Ok(f) => f.into(),
        Err(e) => e,
    }
}

/// Whether two objects are the same but for their revision.
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    let strip = |v: &T| {
        let mut v = serde_json::to_value(v).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.remove("revision");
        }
        v
    };
    strip(a) == strip(b)
}

/// The current revision, after a delete that an earlier attempt already made.
async fn gone_at(c: &mut Conn) -> anyhow::Result<u64> {
    let msg = admin::ReadRequest::default();
    Ok(
        c.call(msg, |mut cl, r| async move { cl.list_pools(r).await })
            .await?
            .into_inner()
            .revision,
    )
}

fn saved(kind: &str, name: &str, expect: Option<u64>, revision: u64) -> String {
    let how = if expect == Some(0) {
        "created"
    } else {
        "saved"
    };
    format!("{kind} {name} {how} (revision {revision})")
}

async fn get_route(
    c: &mut Conn,
    name: &str,
    consistency: ConsistencyArg,
) -> anyhow::Result<(u64, Route)> {
    let msg = admin::GetRequest {
        name: name.to_string(),
        consistency: consistency.wire(),
    };
    let r = c
        .call(msg, |mut cl, r| async move { cl.get_route(r).await })
        .await?
        .into_inner();
    let route = route_from_wire(r.route.unwrap_or_default())?;
    Ok((r.revision, route))
}

async fn get_pool(
    c: &mut Conn,
    name: &str,
    consistency: ConsistencyArg,
) -> anyhow::Result<(u64, Pool)> {
    let msg = admin::GetRequest {
        name: name.to_string(),
        consistency: consistency.wire(),
    };
    let r = c
        .call(msg, |mut cl, r| async move { cl.get_pool(r).await })
        .await?
        .into_inner();
    let pool = pool_from_wire(r.pool.unwrap_or_default())?;
    Ok((r.revision, pool))
}

async fn put_pool(c: &mut Conn, pool: &Pool, expect: Option<u64>) -> anyhow::Result<(u64, Pool)> {
    let msg = admin::PutPoolRequest {
        pool: Some(pool_to_wire(pool)),
        if_revision: expect,
    };
    let r = c
        .call(msg, |mut cl, r| async move { cl.put_pool(r).await })
        .await?
        .into_inner();
    Ok((r.revision, pool_from_wire(r.pool.unwrap_or_default())?))
}

pub async fn route(c: &mut Conn, out: Output, cmd: RouteCmd) -> anyhow::Result<()> {
    match cmd {
        RouteCmd::Add(a) => {
            let a = *a;
            let expect = expect_of(&a.mode);
            let route = Route {
                name: a.name.clone(),
                hosts: a.hosts,
                path_prefix: a.path,
                methods: a.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                pool: a.pool,
                writes: a.writes,
                timeout_ms: a.timeout_ms,
                retries: a.retries,
                retry_delay_ms: a.retry_delay_ms,
                strip_prefix: a.strip_prefix,
                host_rewrite: a.host_rewrite,
                cache: a.cache.spec(),
                ..Route::default()
            };
            let msg = admin::PutRouteRequest {
                route: Some(route_to_wire(&route)),
                if_revision: expect,
            };
            let (revision, route) = match c
                .call(msg, |mut cl, r| async move { cl.put_route(r).await })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    (r.revision, route_from_wire(r.route.unwrap_or_default())?)
                }
                // An earlier attempt that broke off may have created it: if what is there is
                // what was sent, that attempt succeeded.
                Err(e) if c.retried() && has_code(&e, Code::AlreadyExists) => {
                    match get_route(c, &a.name, ConsistencyArg::Linearizable).await {
                        Ok((_, now)) if same(&now, &route) => (now.revision, now),
                        _ => return Err(exists_hint(e)),
                    }
                }
                Err(e) => return Err(exists_hint(e)),
            };
            match out {
                Output::Table => outln!("{}", saved("route", &a.name, expect, revision)),
                Output::Json => print_json(&json!({"revision": revision, "route": route}))?,
            }
        }
        RouteCmd::Get { name, consistency } => {
            let (revision, route) = get_route(c, &name, consistency).await?;
            match out {
                Output::Table => outln!("{}", output::route_detail(&route)),
                Output::Json => print_json(&json!({"revision": revision, "route": route}))?,
            }
        }
        RouteCmd::List { consistency } => {
            let msg = admin::ReadRequest {
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.list_routes(r).await })
                .await?
                .into_inner();
            let routes = r
                .routes
                .into_iter()
                .map(route_from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            match out {
                Output::Table if routes.is_empty() => outln!(
                    "no routes (revision {}); add one with `gateway route add`",
                    r.revision
                ),
                Output::Table => {
                    let rows: Vec<_> = routes.iter().map(output::route_row).collect();
                    outln!("{}", output::table(output::ROUTE_HEADERS, &rows));
                }
                Output::Json => print_json(&json!({"revision": r.revision, "routes": routes}))?,
            }
        }
        RouteCmd::Rm { name, cond } => {
            let msg = admin::DeleteRequest {
                name: name.clone(),
                if_revision: cond.if_revision,
            };
            let revision = match c
                .call(msg, |mut cl, r| async move { cl.delete_route(r).await })
                .await
            {
                Ok(r) => r.into_inner().revision,
                // An earlier attempt that broke off deleted it.
                Err(e) if c.retried() && has_code(&e, Code::NotFound) => gone_at(c).await?,
                Err(e) => return Err(e),
            };
            match out {
                Output::Table => outln!("route {name} removed (revision {revision})"),
                Output::Json => print_json(&json!({"revision": revision}))?,
            }
        }
    }
    Ok(())
}

/// Parses `ID=ADDRESS[,weight=N][,node=N][,max_connections=N]`.
pub fn parse_backend(spec: &str) -> anyhow::Result<Backend> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--backend '{spec}': {why}; write ID=ADDRESS[,weight=N][,node=N][,max_connections=N], e.g. a=127.0.0.1:8201,weight=2"
        )
    };
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or_default();
    let (id, address) = head
        .split_once('=')
        .ok_or_else(|| bad("the backend needs an id and an address"))?;
    let mut b = Backend {
        id: id.trim().to_string(),
        address: address.trim().to_string(),
        ..Backend::default()
    };
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(&format!("'{part}' is not KEY=VALUE")))?;
        let num = |v: &str| -> anyhow::Result<u64> {
            v.trim()
                .parse()
                .map_err(|_| bad(&format!("{k}: '{v}' is not a number")))
        };
        match k.trim() {
            "weight" => {
                b.weight = u32::try_from(num(v)?).map_err(|_| bad("weight is out of range"))?
            }
            "node" => b.node = Some(num(v)?),
            "max_connections" => {
                b.max_connections = Some(
                    u32::try_from(num(v)?).map_err(|_| bad("max_connections is out of range"))?,
                )
            }
            other => {
                return Err(bad(&format!(
                    "'{other}' is not weight, node or max_connections"
                )));
            }
        }
    }
    Ok(b)
}

// ---- TLS to backends (issue 7) ----
/// The pool's `tls` from the --backend-* options; none when none is given.
fn backend_tls_of(a: &super::PoolAdd) -> anyhow::Result<Option<gateway_model::BackendTls>> {
    if !a.backend_tls
        && a.backend_ca.is_none()
        && a.backend_sni.is_none()
        && a.backend_client_cert.is_none()
    {
        return Ok(None);
    }
    let ca_pem = match &a.backend_ca {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read --backend-ca {}", f.display()))?,
        ),
        None => None,
    };
    Ok(Some(gateway_model::BackendTls {
        ca_pem,
        sni: a.backend_sni.clone(),
        client_cert: a.backend_client_cert.clone(),
    }))
}
// ---- end TLS to backends ----

pub async fn pool(c: &mut Conn, out: Output, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Add(a) => {
            let expect = expect_of(&a.mode);
            let pool = Pool {
                name: a.name.clone(),
                balance: a.balance,
                backends: a
                    .backends
                    .iter()
                    .map(|s| parse_backend(s))
                    .collect::<anyhow::Result<_>>()?,
                prefer_local: a.prefer_local,
                protocol: a.protocol,
                queue_timeout_ms: a.queue_timeout_ms,
                keep_alive_timeout_ms: a.keep_alive_timeout_ms,
                tls: backend_tls_of(&a)?,
                ..Pool::default()
            };
            let (revision, pool) = match put_pool(c, &pool, expect).await {
                Ok(saved) => saved,
                Err(e) if c.retried() && has_code(&e, Code::AlreadyExists) => {
                    match get_pool(c, &a.name, ConsistencyArg::Linearizable).await {
                        Ok((_, now)) if same(&now, &pool) => (now.revision, now),
                        _ => return Err(exists_hint(e)),
                    }
                }
                Err(e) => return Err(exists_hint(e)),
            };
            match out {
                Output::Table => outln!("{}", saved("pool", &a.name, expect, revision)),
                Output::Json => print_json(&json!({"revision": revision, "pool": pool}))?,
            }
        }
        PoolCmd::Get { name, consistency } => {
            let (revision, pool) = get_pool(c, &name, consistency).await?;
            match out {
                Output::Table => outln!("{}", output::pool_detail(&pool)),
                Output::Json => print_json(&json!({"revision": revision, "pool": pool}))?,
            }
        }
        PoolCmd::List { consistency } => {
            let msg = admin::ReadRequest {
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.list_pools(r).await })
                .await?
                .into_inner();
            let pools = r
                .pools
                .into_iter()
                .map(pool_from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            match out {
                Output::Table if pools.is_empty() => outln!(
                    "no pools (revision {}); add one with `gateway pool add`",
                    r.revision
                ),
                Output::Table => {
                    let rows: Vec<_> = pools.iter().map(output::pool_row).collect();
                    outln!("{}", output::table(output::POOL_HEADERS, &rows));
                }
                Output::Json => print_json(&json!({"revision": r.revision, "pools": pools}))?,
            }
        }
        PoolCmd::Restart {
            name,
            wait,
            wait_secs,
        } => restart_pool(c, out, name, wait, wait_secs).await?,
        PoolCmd::Rm { name, cond } => {
            let msg = admin::DeleteRequest {
                name: name.clone(),
                if_revision: cond.if_revision,
            };
            let revision = match c
                .call(msg, |mut cl, r| async move { cl.delete_pool(r).await })
                .await
            {
                Ok(r) => r.into_inner().revision,
                // An earlier attempt that broke off deleted it.
                Err(e) if c.retried() && has_code(&e, Code::NotFound) => gone_at(c).await?,
                Err(e) => return Err(e),
            };
            match out {
                Output::Table => outln!("pool {name} removed (revision {revision})"),
                Output::Json => print_json(&json!({"revision": revision}))?,
            }
        }
    }
    Ok(())
}

/// How many times a read-modify-write is tried when the pool keeps changing under it.
const RMW_ATTEMPTS: usize = 20;

/// The pool, for a read-modify-write; says how to create it when missing.
async fn pool_for_change(c: &mut Conn, name: &str) -> anyhow::Result<Pool> {
    match get_pool(c, name, ConsistencyArg::Linearizable).await {
        Ok((_, p)) => Ok(p),
        Err(e) if has_code(&e, Code::NotFound) => bail!(
            "pool '{name}' does not exist; create it with `gateway pool add {name} --backend ID=ADDRESS`"
        ),
        Err(e) => Err(e),
    }
}

/// `gateway backend list`: each backend's agreed health.
async fn backend_list(
    c: &mut Conn,
    out: Output,
    pool: Option<String>,
    consistency: ConsistencyArg,
) -> anyhow::Result<()> {
    let msg = admin::ReadRequest {
        consistency: consistency.wire(),
    };
    let r = c
        .call(msg, |mut cl, r| async move { cl.list_health(r).await })
        .await?
        .into_inner();
    let rows: Vec<_> = r
        .backends
        .iter()
        .filter(|b| pool.as_ref().is_none_or(|p| &b.pool == p))
        .collect();
    match out {
        Output::Table if rows.is_empty() => outln!("no backends (revision {})", r.revision),
        Output::Table => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|b| {
                    vec![
                        b.pool.clone(),
                        b.backend.clone(),
                        b.address.clone(),
                        b.state.to_uppercase(),
                        if b.draining { "yes" } else { "" }.into(),
                        b.down_on
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        if b.since_ms == 0 {
                            String::new()
                        } else {
                            format!("{}s ago", now.saturating_sub(b.since_ms) / 1000)
                        },
                    ]
                })
                .collect();
            outln!(
                "{}",
                output::table(
                    &[
                        "POOL", "BACKEND", "ADDRESS", "STATE", "DRAINING", "DOWN_ON", "SINCE"
                    ],
                    &rows
                )
            );
        }
        Output::Json => {
            let list: Vec<_> = rows
                .iter()
                .map(|b| {
                    json!({"pool": b.pool, "backend": b.backend, "address": b.address,
                        "node": b.node, "state": b.state, "draining": b.draining,
                        "down_on": b.down_on, "since_ms": b.since_ms, "transition": b.transition})
                })
                .collect();
            print_json(&json!({"revision": r.revision, "backends": list}))?
        }
    }
    Ok(())
}

pub async fn backend(c: &mut Conn, out: Output, cmd: BackendCmd) -> anyhow::Result<()> {
    if let BackendCmd::List { pool, consistency } = cmd {
        return backend_list(c, out, pool, consistency).await;
    }
    // Read the pool, change it, write it back expecting the revision read; if someone changed
    // the pool meanwhile, start over (unless the caller fixed the revision with --if-revision).
    // A write retried after a broken connection may have been applied already: a later
    // attempt that finds the change made reports success.
    let (pool_name, id) = match &cmd {
        BackendCmd::Add { pool, id, .. }
        | BackendCmd::Rm { pool, id, .. }
        | BackendCmd::Drain { pool, id, .. } => (pool.clone(), id.clone()),
        BackendCmd::List { .. } => unreachable!("listed above"),
    };
    for attempt in 0..RMW_ATTEMPTS {
        let mut pool = pool_for_change(c, &pool_name).await?;
        let read_at = pool.revision;
        let (explicit, verb) = match &cmd {
            BackendCmd::Add {
                address,
                weight,
                node,
                max_connections,
                mode,
                ..
            } => {
                let want = Backend {
                    id: id.clone(),
                    address: address.clone(),
                    weight: *weight,
                    node: *node,
                    max_connections: *max_connections,
                    drain: false,
                };
                match pool.backends.iter().position(|b| b.id == id) {
                    Some(i) if pool.backends[i] == want => {
                        return done(
                            out,
                            &format!("backend {id} is already in pool {pool_name} as given"),
                            &pool,
                        );
                    }
                    Some(i) if mode.replace || mode.cond.if_revision.is_some() => {
                        pool.backends[i] = want;
                    }
                    Some(i) => bail!(
                        "backend '{id}' is already in pool '{pool_name}' (at {}): pass --replace to change it",
                        pool.backends[i].address
                    ),
                    None => pool.backends.push(want),
                }
                (mode.cond.if_revision, "added to")
            }
            BackendCmd::Drain { undo, cond, .. } => {
                let want = !*undo;
                let Some(b) = pool.backends.iter_mut().find(|b| b.id == id) else {
                    bail!(
                        "backend '{id}' is not in pool '{pool_name}'; see its backends with `gateway pool get {pool_name}`"
                    );
                };
                let verb = if want {
                    "draining in"
                } else {
                    "back in service in"
                };
                if b.drain == want {
                    return done(
                        out,
                        &format!("backend {id} is {verb} pool {pool_name}"),
                        &pool,
                    );
                }
                b.drain = want;
                (cond.if_revision, verb)
            }
            BackendCmd::List { .. } => unreachable!("listed above"),
            BackendCmd::Rm { cond, .. } => {
                let before = pool.backends.len();
                pool.backends.retain(|b| b.id != id);
                if pool.backends.len() == before {
                    if attempt > 0 {
                        return done(
                            out,
                            &format!("backend {id} removed from pool {pool_name}"),
                            &pool,
                        );
                    }
                    let ids: Vec<&str> = pool.backends.iter().map(|b| b.id.as_str()).collect();
                    bail!(
                        "backend '{id}' is not in pool '{pool_name}' (its backends: {}); see them with `gateway pool get {pool_name}`",
                        if ids.is_empty() {
                            "none".to_string()
                        } else {
                            ids.join(", ")
                        }
                    );
                }
                (cond.if_revision, "removed from")
            }
        };
        match put_pool(c, &pool, Some(explicit.unwrap_or(read_at))).await {
            Ok((_, saved)) => {
                return done(
                    out,
                    &format!("backend {id} {verb} pool {pool_name}"),
                    &saved,
                );
            }
            Err(e)
                if explicit.is_none()
                    && e.downcast_ref::<Failed>().is_some_and(Failed::is_stale) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    bail!(
        "pool '{pool_name}' kept changing while backend {id} was being changed ({RMW_ATTEMPTS} attempts); try again"
    )
}

fn done(out: Output, what: &str, pool: &Pool) -> anyhow::Result<()> {
    match out {
        Output::Table => outln!("{what} (revision {})", pool.revision),
        Output::Json => print_json(&json!({"revision": pool.revision, "pool": pool}))
            .context("printing the pool")?,
    }
    Ok(())
}

async fn restart_pool(
    c: &mut Conn,
    out: Output,
    name: String,
    wait: bool,
    wait_secs: u64,
) -> anyhow::Result<()> {
    let msg = admin::GetRequest {
        name: name.clone(),
        consistency: ConsistencyArg::Linearizable.wire(),
    };
    let r = c
        .call(
            msg.clone(),
            |mut cl, r| async move { cl.restart_pool(r).await },
        )
        .await?
        .into_inner();
    let epoch = r.epoch;
    match out {
        Output::Table => outln!(
            "rolling restart {epoch} of pool {name} started: {} instance(s) to replace ({})",
            r.pending.len(),
            r.pending.join(", ")
        ),
        Output::Json if !wait => print_json(&restart_json(&r))?,
        Output::Json => {}
    }
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    let mut shown = 0;
    loop {
        let r = c
            .call(
                msg.clone(),
                |mut cl, r| async move { cl.get_restart(r).await },
            )
            .await?
            .into_inner();
        if r.epoch != epoch {
            bail!(
                "another restart of pool {name} (epoch {}) began meanwhile; follow that one",
                r.epoch
            );
        }
        if let Output::Table = out {
            for id in r.done.iter().skip(shown) {
                outln!("{id} replaced");
            }
        }
        shown = r.done.len();
        if r.pending.is_empty() {
            match out {
                Output::Table => outln!("pool {name} restarted ({shown} instance(s))"),
                Output::Json => print_json(&restart_json(&r))?,
            }
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "pool {name} is still restarting after {wait_secs}s ({} left: {}); see `gateway pool restart --help`, the nodes' /status (managed) and their logs",
                r.pending.len(),
                r.pending.join(", ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

fn restart_json(r: &admin::RestartReply) -> serde_json::Value {
    json!({"pool": r.pool, "epoch": r.epoch, "pending": r.pending, "done": r.done, "started_ms": r.started_ms})
}

/// `gateway alert ...`.
pub async fn alert(c: &mut Conn, out: Output, cmd: AlertCmd) -> anyhow::Result<()> {
    match cmd {
        AlertCmd::Add(add) => {
            let AlertAdd {
                name,
                webhook,
                headers,
                smtp_server,
                smtp_from,
                smtp_to,
                smtp_security,
                smtp_user,
                smtp_password_file,
                events,
                mode,
            } = *add;
            let mut hdrs = std::collections::BTreeMap::new();
            for h in &headers {
                let Some((k, v)) = h.split_once('=') else {
                    bail!("--header '{h}' is not NAME=VALUE");
                };
                hdrs.insert(k.trim().to_string(), v.to_string());
            }
            let password = match &smtp_password_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading --smtp-password-file {}", f.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                None => None,
            };
            let smtp = match smtp_server {
                Some(server) => Some(admin::SmtpSink {
                    server,
                    from: smtp_from.unwrap_or_default(),
                    to: smtp_to,
                    security: smtp_security,
                    username: smtp_user,
                    password,
                }),
                None if smtp_from.is_some() || !smtp_to.is_empty() => {
                    bail!("--smtp-from and --smtp-to need --smtp-server HOST:PORT")
                }
                None => None,
            };
            let expect = expect_of(&mode);
            let msg = admin::PutAlertSinkRequest {
                sink: Some(admin::AlertSink {
                    name: name.clone(),
                    webhook,
                    headers: hdrs,
                    smtp,
                    events,
                    revision: 0,
                }),
                if_revision: expect,
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.put_alert_sink(r).await })
                .await
                .map_err(exists_hint)?
                .into_inner();
            match out {
                Output::Table => outln!("{}", saved("alert sink", &name, expect, r.revision)),
                Output::Json => print_json(&json!({"revision": r.revision}))?,
            }
        }
        AlertCmd::List { consistency } => {
            let msg = admin::ReadRequest {
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.list_alert_sinks(r).await })
                .await?
                .into_inner();
            let sinks: Vec<_> = r.sinks.into_iter().map(alert_sink_from_wire).collect();
            match out {
                Output::Table if sinks.is_empty() => outln!(
                    "no alert sinks (revision {}); add one with `gateway alert add`",
                    r.revision
                ),
                Output::Table => {
                    let rows: Vec<Vec<String>> = sinks
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.webhook.clone().unwrap_or_default(),
                                s.smtp
                                    .as_ref()
                                    .map(|m| format!("{} -> {}", m.server, m.to.join(",")))
                                    .unwrap_or_default(),
                                if s.events.is_empty() {
                                    "*".into()
                                } else {
                                    s.events.join(",")
                                },
                                s.revision.to_string(),
                            ]
                        })
                        .collect();
                    outln!(
                        "{}",
                        output::table(&["NAME", "WEBHOOK", "SMTP", "EVENTS", "REVISION"], &rows)
                    );
                }
                Output::Json => print_json(&json!({"revision": r.revision, "alerts": sinks}))?,
            }
        }
        AlertCmd::Rm { name, cond } => {
            let msg = admin::DeleteRequest {
                name: name.clone(),
                if_revision: cond.if_revision,
            };
            let revision = match c
                .call(
                    msg,
                    |mut cl, r| async move { cl.delete_alert_sink(r).await },
                )
                .await
            {
                Ok(r) => r.into_inner().revision,
                Err(e) if c.retried() && has_code(&e, Code::NotFound) => gone_at(c).await?,
                Err(e) => return Err(e),
            };
            match out {
                Output::Table => outln!("alert sink {name} removed (revision {revision})"),
                Output::Json => print_json(&json!({"revision": revision}))?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs() {
        let b = parse_backend("a=127.0.0.1:8201").unwrap();
        assert_eq!(
            (b.id.as_str(), b.address.as_str(), b.weight),
            ("a", "127.0.0.1:8201", 1)
        );
        let b = parse_backend("b=unix:/run/x.sock,weight=3,node=2,max_connections=10").unwrap();
        assert_eq!(b.weight, 3);
        assert_eq!(b.node, Some(2));
        assert_eq!(b.max_connections, Some(10));
        for bad in [
            "nope",
            "a=1.2.3.4:5,weight=x",
            "a=1.2.3.4:5,colour=red",
            "a=1:1,weight",
        ] {
            let e = parse_backend(bad).unwrap_err().to_string();
            assert!(e.starts_with("--backend '"), "{e}");
        }
    }
}

/// A Unix time as `YYYY-MM-DD` (UTC).
fn day(unix: i64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn cert_row(c: &Cert) -> Vec<String> {
    vec![
        c.name.clone(),
        c.names.join(","),
        day(c.not_after),
        if c.default { "yes" } else { "" }.to_string(),
        c.revision.to_string(),
    ]
}

const CERT_HEADERS: &[&str] = &["NAME", "SERVES", "EXPIRES", "DEFAULT", "REVISION"];

/// `gateway cert ...`: certificates through the admin gRPC API.
pub async fn cert(c: &mut Conn, out: Output, cmd: CertCmd) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Add {
            name,
            cert,
            key,
            default,
            mode,
        } => {
            let expect = expect_of(&mode);
            let cert_pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("cannot read --cert {}", cert.display()))?;
            let key_pem = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read --key {}", key.display()))?;
            let msg = admin::PutCertRequest {
                cert: Some(admin::Cert {
                    name: name.clone(),
                    cert_pem,
                    key_pem,
                    default,
                    ..Default::default()
                }),
                if_revision: expect,
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.put_cert(r).await })
                .await
                .map_err(exists_hint)?
                .into_inner();
            let shown = r.cert.map(cert_from_wire).unwrap_or_default();
            match out {
                Output::Table => outln!(
                    "{}; serves {}, expires {}",
                    saved("cert", &name, expect, r.revision),
                    shown.names.join(","),
                    day(shown.not_after)
                ),
                Output::Json => print_json(&json!({"revision": r.revision, "cert": shown}))?,
            }
        }
        CertCmd::Get { name, consistency } => {
            let msg = admin::GetRequest {
                name,
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.get_cert(r).await })
                .await?
                .into_inner();
            let shown = r.cert.map(cert_from_wire).unwrap_or_default();
            match out {
                Output::Table => {
                    outln!("{}", output::table(CERT_HEADERS, &[cert_row(&shown)]));
                    outln!("{}", shown.cert_pem.trim_end());
                }
                Output::Json => print_json(&json!({"revision": r.revision, "cert": shown}))?,
            }
        }
        CertCmd::List { consistency } => {
            let msg = admin::ReadRequest {
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.list_certs(r).await })
                .await?
                .into_inner();
            let certs: Vec<Cert> = r.certs.into_iter().map(cert_from_wire).collect();
            match out {
                Output::Table if certs.is_empty() => outln!(
                    "no certificates (revision {}); add one with `gateway cert add`",
                    r.revision
                ),
                Output::Table => {
                    let rows: Vec<_> = certs.iter().map(cert_row).collect();
                    outln!("{}", output::table(CERT_HEADERS, &rows));
                }
                Output::Json => print_json(&json!({"revision": r.revision, "certs": certs}))?,
            }
        }
        CertCmd::Rm { name, cond } => {
            let msg = admin::DeleteRequest {
                name: name.clone(),
                if_revision: cond.if_revision,
            };
            let revision = match c
                .call(msg, |mut cl, r| async move { cl.delete_cert(r).await })
                .await
            {
                Ok(r) => r.into_inner().revision,
                Err(e) if c.retried() && has_code(&e, Code::NotFound) => gone_at(c).await?,
                Err(e) => return Err(e),
            };
            match out {
                Output::Table => outln!("cert {name} removed (revision {revision})"),
                Output::Json => print_json(&json!({"revision": revision}))?,
            }
        }
    }
    Ok(())
}

// ---- TCP routes (issue 7) ----
const TCP_ROUTE_HEADERS: &[&str] = &["NAME", "LISTEN", "POOL", "NODES", "PROXY", "REVISION"];

fn tcp_route_row(r: &gateway_model::TcpRoute) -> Vec<String> {
    let nodes = if r.nodes.is_empty() {
        "all".to_string()
    } else {
        let ids: Vec<String> = r.nodes.iter().map(u64::to_string).collect();
        ids.join(",")
    };
    let proxy = match r.proxy_protocol {
        None => "-".to_string(),
        Some(p) => output::name_of(&p),
    };
    vec![
        r.name.clone(),
        r.listen.clone(),
        r.pool.clone(),
        nodes,
        proxy,
        r.revision.to_string(),
    ]
}

/// `gateway tcp-route ...`: TCP routes through the admin gRPC API.
pub async fn tcp_route(c: &mut Conn, out: Output, cmd: TcpRouteCmd) -> anyhow::Result<()> {
    use gateway_wire::convert::{tcp_route_from_wire, tcp_route_to_wire};
    match cmd {
        TcpRouteCmd::Add {
            name,
            listen,
            pool,
            nodes,
            idle_timeout_ms,
            connect_timeout_ms,
            max_connections,
            proxy_protocol,
            mode,
        } => {
            let expect = expect_of(&mode);
            let route = gateway_model::TcpRoute {
                name: name.clone(),
                listen,
                pool,
                nodes,
                idle_timeout_ms,
                connect_timeout_ms,
                max_connections,
                proxy_protocol,
                revision: 0,
            };
            let msg = admin::PutTcpRouteRequest {
                tcp_route: Some(tcp_route_to_wire(&route)),
                if_revision: expect,
            };
            let (revision, shown) = match c
                .call(msg, |mut cl, r| async move { cl.put_tcp_route(r).await })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    let shown = r.tcp_route.map(tcp_route_from_wire).transpose()?;
                    (r.revision, shown.unwrap_or_default())
                }
                // An earlier attempt that broke off may have created it.
                Err(e) if c.retried() && has_code(&e, Code::AlreadyExists) => {
                    let msg = admin::GetRequest {
                        name: name.clone(),
                        consistency: ConsistencyArg::Linearizable.wire(),
                    };
                    let now = c
                        .call(msg, |mut cl, r| async move { cl.get_tcp_route(r).await })
                        .await?
                        .into_inner();
                    match now.tcp_route.map(tcp_route_from_wire).transpose()? {
                        Some(now) if same(&now, &route) => (now.revision, now),
                        _ => return Err(exists_hint(e)),
                    }
                }
                Err(e) => return Err(exists_hint(e)),
            };
            match out {
                Output::Table => outln!("{}", saved("tcp-route", &name, expect, revision)),
                Output::Json => print_json(&json!({"revision": revision, "tcp_route": shown}))?,
            }
        }
        TcpRouteCmd::Get { name, consistency } => {
            let msg = admin::GetRequest {
                name,
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.get_tcp_route(r).await })
                .await?
                .into_inner();
            let shown = r
                .tcp_route
                .map(tcp_route_from_wire)
                .transpose()?
                .unwrap_or_default();
            match out {
                Output::Table => {
                    outln!(
                        "{}",
                        output::table(TCP_ROUTE_HEADERS, &[tcp_route_row(&shown)])
                    )
                }
                Output::Json => print_json(&json!({"revision": r.revision, "tcp_route": shown}))?,
            }
        }
        TcpRouteCmd::List { consistency } => {
            let msg = admin::ReadRequest {
                consistency: consistency.wire(),
            };
            let r = c
                .call(msg, |mut cl, r| async move { cl.list_tcp_routes(r).await })
                .await?
                .into_inner();
            let routes = r
                .tcp_routes
                .into_iter()
                .map(tcp_route_from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            match out {
                Output::Table if routes.is_empty() => outln!(
                    "no TCP routes (revision {}); add one with `gateway tcp-route add`",
                    r.revision
                ),
                Output::Table => {
                    let rows: Vec<_> = routes.iter().map(tcp_route_row).collect();
                    outln!("{}", output::table(TCP_ROUTE_HEADERS, &rows));
                }
                Output::Json => print_json(&json!({"revision": r.revision, "tcp_routes": routes}))?,
            }
        }
        TcpRouteCmd::Rm { name, cond } => {
            let msg = admin::DeleteRequest {
                name: name.clone(),
                if_revision: cond.if_revision,
            };
            let revision = match c
                .call(msg, |mut cl, r| async move { cl.delete_tcp_route(r).await })
                .await
            {
                Ok(r) => r.into_inner().revision,
                Err(e) if c.retried() && has_code(&e, Code::NotFound) => gone_at(c).await?,
                Err(e) => return Err(e),
            };
            match out {
                Output::Table => outln!("tcp-route {name} removed (revision {revision})"),
                Output::Json => print_json(&json!({"revision": revision}))?,
            }
        }
    }
    Ok(())
}
// ---- end TCP routes ----

#[cfg(test)]
mod cert_tests {
    #[test]
    fn days_are_civil_dates() {
        assert_eq!(super::day(0), "1970-01-01");
        assert_eq!(super::day(1_009_843_200), "2002-01-01");
        assert_eq!(super::day(1_709_164_800), "2024-02-29");
    }
}
