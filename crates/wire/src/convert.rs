//! Conversions between the admin API's messages and model types.
//!
//! `*_to_wire` never fail. `*_from_wire` only translate (enum numbers, values the model's types
//! cannot hold): a client reads replies with them. `checked_*` also enforce the wire's list
//! limits and the model's validation: a server takes input through them, so that what reaches
//! the cluster is valid, and an error names the field at fault and how to fix it.
//!
//! Every conversion destructures the model type without `..`: a field added to the model does
//! not compile here until the wire carries it, so no field is silently dropped on the way.

use crate::admin;
use gateway_model::{
    AlertSink, Backend, BackendHealth, BackendTls, Balance, Cert, Change, ChangeSet, CheckKind,
    Command, Ejection, ErrorPage, HeaderMatch, HeaderRules, HealthCheck, HealthPolicy, Invalid,
    Limits, MAX_BATCH, Pool, ProcessSpec, Protocol, ProxyProtocol, RateLimit, RollingRestart,
    Route, RouteCache, SmtpSink, TcpRoute, WritePolicy, validate_alert_sink, validate_limits,
    validate_name, validate_pool, validate_route,
};
use std::collections::BTreeMap;

/// Most backends in one pool.
pub const MAX_BACKENDS: usize = 1000;
/// Most host patterns on one route.
pub const MAX_HOSTS: usize = 256;
/// Most methods on one route.
pub const MAX_METHODS: usize = 32;
/// Most entries in each list of a route's header rules (`set`, `add`, `remove`).
pub const MAX_HEADER_RULES: usize = 64;

/// Puts `prefix` in front of the field an error names.
pub fn under(prefix: &str, mut v: Invalid) -> Invalid {
    v.field = if v.field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{}", v.field)
    };
    v
}

fn too_many(field: &str, n: usize, max: usize) -> Invalid {
    Invalid::new(
        field,
        format!("has {n} entries"),
        format!("send at most {max}"),
    )
}

fn unknown_enum(field: &str, value: i32, names: &str) -> Invalid {
    Invalid::new(
        field,
        format!("{value} is not a known value"),
        format!("use one of {names}"),
    )
}

// ---- enums -------------------------------------------------------------------------------

fn balance_from(v: i32) -> Result<Balance, Invalid> {
    use admin::Balance as B;
    Ok(match B::try_from(v) {
        Ok(B::Unspecified | B::RoundRobin) => Balance::RoundRobin,
        Ok(B::WeightedRoundRobin) => Balance::WeightedRoundRobin,
        Ok(B::LeastConnections) => Balance::LeastConnections,
        Ok(B::RandomTwoChoices) => Balance::RandomTwoChoices,
        Ok(B::IpHash) => Balance::IpHash,
        Ok(B::Cookie) => Balance::Cookie,
        Err(_) => {
            return Err(unknown_enum(
                "balance",
                v,
                "BALANCE_ROUND_ROBIN, BALANCE_WEIGHTED_ROUND_ROBIN, BALANCE_LEAST_CONNECTIONS, BALANCE_RANDOM_TWO_CHOICES, BALANCE_IP_HASH, BALANCE_COOKIE",
            ));
        }
    })
}

fn balance_to(b: Balance) -> admin::Balance {
    use admin::Balance as B;
    match b {
        Balance::RoundRobin => B::RoundRobin,
        Balance::WeightedRoundRobin => B::WeightedRoundRobin,
        Balance::LeastConnections => B::LeastConnections,
        Balance::RandomTwoChoices => B::RandomTwoChoices,
        Balance::IpHash => B::IpHash,
        Balance::Cookie => B::Cookie,
    }
}

fn protocol_from(v: i32) -> Result<Protocol, Invalid> {
    use admin::Protocol as P;
    match P::try_from(v) {
        Ok(P::Unspecified | P::Http1) => Ok(Protocol::Http1),
        Ok(P::H2c) => Ok(Protocol::H2c),
        Ok(P::H2) => Ok(Protocol::H2),
        Err(_) => Err(unknown_enum(
            "protocol",
            v,
            "PROTOCOL_HTTP1, PROTOCOL_H2C, PROTOCOL_H2",
        )),
    }
}

fn protocol_to(p: Protocol) -> admin::Protocol {
    match p {
        Protocol::Http1 => admin::Protocol::Http1,
        Protocol::H2c => admin::Protocol::H2c,
        Protocol::H2 => admin::Protocol::H2,
    }
}

fn writes_from(v: i32) -> Result<WritePolicy, Invalid> {
    use admin::WritePolicy as W;
    match W::try_from(v) {
        Ok(W::Unspecified | W::Any) => Ok(WritePolicy::Any),
        Ok(W::Leader) => Ok(WritePolicy::Leader),
        Err(_) => Err(unknown_enum(
            "writes",
            v,
            "WRITE_POLICY_ANY, WRITE_POLICY_LEADER",
        )),
    }
}

fn writes_to(w: WritePolicy) -> admin::WritePolicy {
    match w {
        WritePolicy::Any => admin::WritePolicy::Any,
        WritePolicy::Leader => admin::WritePolicy::Leader,
    }
}

/// The read consistency asked for; unspecified is linearizable.
pub fn consistency_from_wire(v: i32) -> Result<admin::Consistency, Invalid> {
    use admin::Consistency as C;
    match C::try_from(v) {
        Ok(C::Unspecified | C::Linearizable) => Ok(C::Linearizable),
        Ok(c) => Ok(c),
        Err(_) => Err(unknown_enum(
            "consistency",
            v,
            "CONSISTENCY_LINEARIZABLE (the default), CONSISTENCY_LEADER, CONSISTENCY_STALE",
        )),
    }
}

// ---- pools -------------------------------------------------------------------------------

fn backend_from(b: admin::Backend) -> Backend {
    let admin::Backend {
        id,
        address,
        weight,
        node,
        max_connections,
        drain,
    } = b;
    Backend {
        id,
        address,
        weight: weight.unwrap_or(1),
        node,
        max_connections,
        drain,
    }
}

fn backend_to(b: &Backend) -> admin::Backend {
    let Backend {
        id,
        address,
        weight,
        node,
        max_connections,
        drain,
    } = b;
    admin::Backend {
        id: id.clone(),
        address: address.clone(),
        weight: Some(*weight),
        node: *node,
        max_connections: *max_connections,
        drain: *drain,
    }
}

/// A pool as the wire carries it.
pub fn pool_to_wire(p: &Pool) -> admin::Pool {
    let Pool {
        name,
        balance,
        backends,
        prefer_local,
        protocol,
        queue_timeout_ms,
        keep_alive_timeout_ms,
        retry_budget_percent,
        retry_budget_min_per_second,
        health_check,
        eject,
        process,
        tls,
        revision,
    } = p;
    admin::Pool {
        name: name.clone(),
        balance: balance_to(*balance) as i32,
        backends: backends.iter().map(backend_to).collect(),
        prefer_local: *prefer_local,
        protocol: protocol_to(*protocol) as i32,
        queue_timeout_ms: *queue_timeout_ms,
        keep_alive_timeout_ms: *keep_alive_timeout_ms,
        retry_budget_percent: *retry_budget_percent,
        retry_budget_min_per_second: *retry_budget_min_per_second,
        health_check: health_check.as_ref().map(check_to),
        eject: eject.as_ref().map(eject_to),
        process: process.as_ref().map(process_to),
        tls: tls.as_ref().map(backend_tls_to),
        revision: *revision,
    }
}

/// A pool from the wire, translated but not validated (for replies).
pub fn pool_from_wire(p: admin::Pool) -> Result<Pool, Invalid> {
    let admin::Pool {
        name,
        balance,
        backends,
        prefer_local,
        protocol,
        queue_timeout_ms,
        keep_alive_timeout_ms,
        retry_budget_percent,
        retry_budget_min_per_second,
        health_check,
        eject,
        process,
        tls,
        revision,
    } = p;
    Ok(Pool {
        name,
        balance: balance_from(balance)?,
        backends: backends.into_iter().map(backend_from).collect(),
        prefer_local,
        protocol: protocol_from(protocol)?,
        queue_timeout_ms,
        keep_alive_timeout_ms,
        retry_budget_percent,
        retry_budget_min_per_second,
        health_check: health_check.map(check_from).transpose()?,
        eject: eject.map(eject_from),
        process: process.map(process_from),
        tls: tls.map(backend_tls_from),
        revision,
    })
}

// ---- TLS to backends (issue 7) ----
fn backend_tls_to(t: &BackendTls) -> admin::BackendTls {
    let BackendTls {
        ca_pem,
        sni,
        client_cert,
    } = t;
    admin::BackendTls {
        ca_pem: ca_pem.clone(),
        sni: sni.clone(),
        client_cert: client_cert.clone(),
    }
}

fn backend_tls_from(t: admin::BackendTls) -> BackendTls {
    let admin::BackendTls {
        ca_pem,
        sni,
        client_cert,
    } = t;
    BackendTls {
        ca_pem,
        sni,
        client_cert,
    }
}
// ---- end TLS to backends ----

fn process_to(p: &ProcessSpec) -> admin::ProcessSpec {
    let ProcessSpec {
        command,
        args,
        env,
        dir,
        instances,
        ports,
        host,
        nodes,
        backoff_ms,
        max_backoff_ms,
        crash_limit,
        min_uptime_ms,
        start_timeout_ms,
        stop_timeout_ms,
        drain_ms,
    } = p;
    admin::ProcessSpec {
        command: command.clone(),
        args: args.clone(),
        env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        dir: dir.clone(),
        instances: Some(*instances),
        ports: ports.clone(),
        host: host.clone(),
        nodes: nodes.clone(),
        backoff_ms: Some(*backoff_ms),
        max_backoff_ms: Some(*max_backoff_ms),
        crash_limit: Some(*crash_limit),
        min_uptime_ms: Some(*min_uptime_ms),
        start_timeout_ms: Some(*start_timeout_ms),
        stop_timeout_ms: Some(*stop_timeout_ms),
        drain_ms: Some(*drain_ms),
    }
}

fn process_from(p: admin::ProcessSpec) -> ProcessSpec {
    let admin::ProcessSpec {
        command,
        args,
        env,
        dir,
        instances,
        ports,
        host,
        nodes,
        backoff_ms,
        max_backoff_ms,
        crash_limit,
        min_uptime_ms,
        start_timeout_ms,
        stop_timeout_ms,
        drain_ms,
    } = p;
    let d = ProcessSpec::default();
    ProcessSpec {
        command,
        args,
        env: env.into_iter().collect(),
        dir,
        instances: instances.unwrap_or(d.instances),
        ports,
        host,
        nodes,
        backoff_ms: backoff_ms.unwrap_or(d.backoff_ms),
        max_backoff_ms: max_backoff_ms.unwrap_or(d.max_backoff_ms),
        crash_limit: crash_limit.unwrap_or(d.crash_limit),
        min_uptime_ms: min_uptime_ms.unwrap_or(d.min_uptime_ms),
        start_timeout_ms: start_timeout_ms.unwrap_or(d.start_timeout_ms),
        stop_timeout_ms: stop_timeout_ms.unwrap_or(d.stop_timeout_ms),
        drain_ms: drain_ms.unwrap_or(d.drain_ms),
    }
}

/// A pool's rolling restart as the wire carries it.
pub fn restart_to_wire(pool: &str, r: Option<&RollingRestart>) -> admin::RestartReply {
    let r = r.cloned().unwrap_or_default();
    admin::RestartReply {
        pool: pool.to_string(),
        epoch: r.epoch,
        pending: r.pending,
        done: r.done,
        started_ms: r.started_ms,
    }
}

fn check_to(c: &HealthCheck) -> admin::HealthCheck {
    let HealthCheck {
        kind,
        path,
        status,
        body,
        host,
        interval_ms,
        timeout_ms,
        rise,
        fall,
        policy,
    } = c;
    admin::HealthCheck {
        r#type: match kind {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
        }
        .into(),
        path: Some(path.clone()),
        status: Some(status.clone()),
        body: body.clone(),
        host: host.clone(),
        interval_ms: Some(*interval_ms),
        timeout_ms: Some(*timeout_ms),
        rise: Some(*rise),
        fall: Some(*fall),
        policy: match policy {
            HealthPolicy::Majority => "majority",
            HealthPolicy::Any => "any",
        }
        .into(),
    }
}

fn check_from(c: admin::HealthCheck) -> Result<HealthCheck, Invalid> {
    let admin::HealthCheck {
        r#type,
        path,
        status,
        body,
        host,
        interval_ms,
        timeout_ms,
        rise,
        fall,
        policy,
    } = c;
    let d = HealthCheck::default();
    Ok(HealthCheck {
        kind: match r#type.as_str() {
            "" | "http" => CheckKind::Http,
            "tcp" => CheckKind::Tcp,
            other => {
                return Err(Invalid::new(
                    "health_check.type",
                    format!("'{other}' is not a check type"),
                    "use http or tcp",
                ));
            }
        },
        path: path.unwrap_or(d.path),
        status: status.unwrap_or(d.status),
        body,
        host,
        interval_ms: interval_ms.unwrap_or(d.interval_ms),
        timeout_ms: timeout_ms.unwrap_or(d.timeout_ms),
        rise: rise.unwrap_or(d.rise),
        fall: fall.unwrap_or(d.fall),
        policy: match policy.as_str() {
            "" | "majority" => HealthPolicy::Majority,
            "any" => HealthPolicy::Any,
            other => {
                return Err(Invalid::new(
                    "health_check.policy",
                    format!("'{other}' is not a policy"),
                    "use majority or any",
                ));
            }
        },
    })
}

fn eject_to(e: &Ejection) -> admin::Ejection {
    let Ejection {
        connect_failure,
        consecutive_5xx,
        cooldown_ms,
    } = e;
    admin::Ejection {
        connect_failure: Some(*connect_failure),
        consecutive_5xx: *consecutive_5xx,
        cooldown_ms: Some(*cooldown_ms),
    }
}

fn eject_from(e: admin::Ejection) -> Ejection {
    let admin::Ejection {
        connect_failure,
        consecutive_5xx,
        cooldown_ms,
    } = e;
    let d = Ejection::default();
    Ejection {
        connect_failure: connect_failure.unwrap_or(d.connect_failure),
        consecutive_5xx,
        cooldown_ms: cooldown_ms.unwrap_or(d.cooldown_ms),
    }
}

// ---- health and alerts -------------------------------------------------------------------

/// One backend's agreed health, as the wire carries it.
pub fn backend_status(
    pool: &Pool,
    backend: &Backend,
    health: Option<&BackendHealth>,
) -> admin::BackendStatus {
    let state = gateway_model::health_state(pool, health);
    admin::BackendStatus {
        pool: pool.name.clone(),
        backend: backend.id.clone(),
        address: backend.address.clone(),
        state: state.into(),
        draining: backend.drain,
        down_on: health.map(|h| h.down_on.clone()).unwrap_or_default(),
        since_ms: health.map_or(0, |h| h.since_ms),
        transition: health.map_or(0, |h| h.transition),
        node: backend.node,
    }
}

/// Every backend of a state with its agreed health.
pub fn health_list(state: &gateway_model::State) -> admin::HealthList {
    let mut backends = Vec::new();
    for pool in state.pools.values() {
        let verdicts = state.health.get(&pool.name);
        for b in &pool.backends {
            backends.push(backend_status(pool, b, verdicts.and_then(|m| m.get(&b.id))));
        }
    }
    admin::HealthList {
        revision: state.revision,
        backends,
    }
}

/// An alert sink as read APIs show it: without the SMTP password.
pub fn alert_sink_to_wire(s: &AlertSink) -> admin::AlertSink {
    let AlertSink {
        name,
        webhook,
        headers,
        smtp,
        events,
        revision,
    } = s;
    admin::AlertSink {
        name: name.clone(),
        webhook: webhook.clone(),
        headers: headers.clone().into_iter().collect(),
        smtp: smtp.as_ref().map(|m| {
            let SmtpSink {
                server,
                from,
                to,
                security,
                username,
                password: _,
            } = m;
            admin::SmtpSink {
                server: server.clone(),
                from: from.clone(),
                to: to.clone(),
                security: security.clone(),
                username: username.clone(),
                password: None,
            }
        }),
        events: events.clone(),
        revision: *revision,
    }
}

/// An alert sink from the wire, translated but not validated.
pub fn alert_sink_from_wire(s: admin::AlertSink) -> AlertSink {
    let admin::AlertSink {
        name,
        webhook,
        headers,
        smtp,
        events,
        revision,
    } = s;
    AlertSink {
        name,
        webhook,
        headers: headers.into_iter().collect(),
        smtp: smtp.map(|m| SmtpSink {
            server: m.server,
            from: m.from,
            to: m.to,
            security: m.security,
            username: m.username,
            password: m.password,
        }),
        events,
        revision,
    }
}

/// An alert sink sent as input: valid, revision cleared.
pub fn checked_alert_sink(s: admin::AlertSink) -> Result<AlertSink, Invalid> {
    let mut sink = alert_sink_from_wire(s);
    sink.revision = 0;
    validate_alert_sink(&sink)?;
    Ok(sink)
}

/// A pool sent as input: within the wire's limits and valid; its revision is cleared (the
/// cluster sets it).
pub fn checked_pool(p: admin::Pool) -> Result<Pool, Invalid> {
    if p.backends.len() > MAX_BACKENDS {
        return Err(too_many("backends", p.backends.len(), MAX_BACKENDS));
    }
    let mut pool = pool_from_wire(p)?;
    pool.revision = 0;
    validate_pool(&pool)?;
    Ok(pool)
}

// ---- routes ------------------------------------------------------------------------------

fn rules_from(r: Option<admin::HeaderRules>) -> HeaderRules {
    let admin::HeaderRules { set, add, remove } = r.unwrap_or_default();
    HeaderRules { set, add, remove }
}

fn rules_to(r: &HeaderRules) -> Option<admin::HeaderRules> {
    let HeaderRules { set, add, remove } = r;
    (!r.is_empty()).then(|| admin::HeaderRules {
        set: set.clone(),
        add: add.clone(),
        remove: remove.clone(),
    })
}

fn check_rules(field: &str, r: &Option<admin::HeaderRules>) -> Result<(), Invalid> {
    if let Some(r) = r {
        for (name, n) in [
            ("set", r.set.len()),
            ("add", r.add.len()),
            ("remove", r.remove.len()),
        ] {
            if n > MAX_HEADER_RULES {
                return Err(too_many(&format!("{field}.{name}"), n, MAX_HEADER_RULES));
            }
        }
    }
    Ok(())
}

fn error_page_from(key: &str, p: admin::ErrorPage) -> Result<ErrorPage, Invalid> {
    let admin::ErrorPage {
        status,
        content_type,
        body,
    } = p;
    let status = match status {
        None => None,
        Some(s) => Some(u16::try_from(s).map_err(|_| {
            Invalid::new(
                format!("error_pages.{key}.status"),
                format!("{s} is out of range"),
                "use a status from 200 to 599, or leave it out to keep the error's",
            )
        })?),
    };
    let mut page = ErrorPage {
        status,
        body,
        ..ErrorPage::default()
    };
    if let Some(ct) = content_type {
        page.content_type = ct;
    }
    Ok(page)
}

fn error_page_to(p: &ErrorPage) -> admin::ErrorPage {
    let ErrorPage {
        status,
        content_type,
        body,
    } = p;
    admin::ErrorPage {
        status: status.map(u32::from),
        content_type: Some(content_type.clone()),
        body: body.clone(),
    }
}

/// A certificate as replies carry it: never with its key.
pub fn cert_to_wire(c: &Cert) -> admin::Cert {
    admin::Cert {
        name: c.name.clone(),
        cert_pem: c.cert_pem.clone(),
        key_pem: String::new(),
        default: c.default,
        names: c.names.clone(),
        not_before: c.not_before,
        not_after: c.not_after,
        revision: c.revision,
    }
}

/// A certificate from the wire, translated but not checked.
pub fn cert_from_wire(c: admin::Cert) -> Cert {
    Cert {
        name: c.name,
        cert_pem: c.cert_pem,
        key_pem: c.key_pem,
        default: c.default,
        names: c.names,
        not_before: c.not_before,
        not_after: c.not_after,
        revision: c.revision,
    }
}

/// A TCP route as the wire carries it.
pub fn tcp_route_to_wire(r: &TcpRoute) -> admin::TcpRoute {
    admin::TcpRoute {
        name: r.name.clone(),
        listen: r.listen.clone(),
        pool: r.pool.clone(),
        nodes: r.nodes.clone(),
        idle_timeout_ms: r.idle_timeout_ms,
        connect_timeout_ms: r.connect_timeout_ms,
        max_connections: r.max_connections,
        proxy_protocol: match r.proxy_protocol {
            None => String::new(),
            Some(ProxyProtocol::V1) => "v1".into(),
            Some(ProxyProtocol::V2) => "v2".into(),
        },
        revision: r.revision,
    }
}

/// A TCP route from the wire, translated but not validated.
pub fn tcp_route_from_wire(r: admin::TcpRoute) -> Result<TcpRoute, Invalid> {
    let proxy_protocol = match r.proxy_protocol.as_str() {
        "" => None,
        "v1" => Some(ProxyProtocol::V1),
        "v2" => Some(ProxyProtocol::V2),
        other => {
            return Err(Invalid::new(
                "proxy_protocol",
                format!("'{other}' is not a PROXY protocol version"),
                "use v1 or v2, or leave it empty",
            ));
        }
    };
    Ok(TcpRoute {
        name: r.name,
        listen: r.listen,
        pool: r.pool,
        nodes: r.nodes,
        idle_timeout_ms: r.idle_timeout_ms,
        connect_timeout_ms: r.connect_timeout_ms,
        max_connections: r.max_connections,
        proxy_protocol,
        revision: r.revision,
    })
}

// ---- TCP routes (issue 7) ----
/// A TCP route sent as input: valid, revision cleared (the cluster sets it).
pub fn checked_tcp_route(r: admin::TcpRoute) -> Result<TcpRoute, Invalid> {
    let mut route = tcp_route_from_wire(r)?;
    route.revision = 0;
    gateway_model::validate_tcp_route(&route)?;
    Ok(route)
}
// ---- end TCP routes ----

/// A route as the wire carries it.
pub fn route_to_wire(r: &Route) -> admin::Route {
    let Route {
        name,
        hosts,
        path_prefix,
        methods,
        pool,
        writes,
        timeout_ms,
        retries,
        retry_delay_ms,
        headers,
        request_headers,
        response_headers,
        strip_prefix,
        host_rewrite,
        error_pages,
        https_redirect,
        max_body_bytes,
        max_concurrent,
        rate_limit,
        cache,
        revision,
    } = r;
    admin::Route {
        cache: cache.as_ref().map(route_cache_to),
        https_redirect: https_redirect.map(u32::from),
        name: name.clone(),
        hosts: hosts.clone(),
        path_prefix: path_prefix.clone(),
        methods: methods.clone(),
        pool: pool.clone(),
        writes: writes_to(*writes) as i32,
        timeout_ms: *timeout_ms,
        retries: *retries,
        retry_delay_ms: *retry_delay_ms,
        headers: headers
            .iter()
            .map(|h| admin::HeaderMatch {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
        request_headers: rules_to(request_headers),
        response_headers: rules_to(response_headers),
        strip_prefix: *strip_prefix,
        host_rewrite: host_rewrite.clone(),
        error_pages: error_pages
            .iter()
            .map(|(k, p)| (k.clone(), error_page_to(p)))
            .collect(),
        max_body_bytes: *max_body_bytes,
        max_concurrent: *max_concurrent,
        rate_limit: rate_limit.as_ref().map(|r| admin::RateLimit {
            per_second: r.per_second,
            burst: r.burst,
        }),
        revision: *revision,
    }
}

/// A route from the wire, translated but not validated (for replies). An empty path prefix
/// is `/`.
pub fn route_from_wire(r: admin::Route) -> Result<Route, Invalid> {
    let admin::Route {
        name,
        hosts,
        path_prefix,
        methods,
        pool,
        writes,
        timeout_ms,
        retries,
        retry_delay_ms,
        headers,
        request_headers,
        response_headers,
        strip_prefix,
        host_rewrite,
        error_pages,
        max_body_bytes,
        max_concurrent,
        rate_limit,
        revision,
        https_redirect,
        cache,
    } = r;
    let https_redirect = match https_redirect {
        None => None,
        Some(s) => Some(u16::try_from(s).map_err(|_| {
            Invalid::new(
                "https_redirect",
                format!("{s} is not a redirect status"),
                "use 308, 301, 302 or 307",
            )
        })?),
    };
    let mut pages = BTreeMap::new();
    for (key, page) in error_pages {
        let page = error_page_from(&key, page)?;
        pages.insert(key, page);
    }
    Ok(Route {
        name,
        hosts,
        path_prefix: if path_prefix.is_empty() {
            "/".to_string()
        } else {
            path_prefix
        },
        methods,
        pool,
        writes: writes_from(writes)?,
        timeout_ms,
        retries,
        retry_delay_ms,
        headers: headers
            .into_iter()
            .map(|h| HeaderMatch {
                name: h.name,
                value: h.value,
            })
            .collect(),
        request_headers: rules_from(request_headers),
        response_headers: rules_from(response_headers),
        strip_prefix,
        host_rewrite,
        error_pages: pages,
        https_redirect,
        max_body_bytes,
        max_concurrent,
        rate_limit: rate_limit.map(|r| RateLimit {
            per_second: r.per_second,
            burst: r.burst,
        }),
        cache: cache.map(route_cache_from),
        revision,
    })
}

// ---- Node limits ----

/// Node-wide limits as the wire carries them.
pub fn limits_to_wire(l: &Limits) -> admin::Limits {
    admin::Limits {
        max_requests: l.max_requests,
        max_connections: l.max_connections,
        revision: l.revision,
    }
}

/// Node-wide limits from the wire, translated but not validated (for replies).
pub fn limits_from_wire(l: admin::Limits) -> Limits {
    Limits {
        max_requests: l.max_requests,
        max_connections: l.max_connections,
        revision: l.revision,
    }
}

/// Node-wide limits sent as input: valid; the revision is cleared.
pub fn checked_limits(l: admin::Limits) -> Result<Limits, Invalid> {
    let mut l = limits_from_wire(l);
    l.revision = 0;
    validate_limits(&l)?;
    Ok(l)
}

// ---- Route cache ----

fn route_cache_to(c: &RouteCache) -> admin::RouteCache {
    admin::RouteCache {
        coalesce: Some(c.coalesce),
        max_bytes: c.max_bytes,
        max_entry_bytes: c.max_entry_bytes,
        stale_while_revalidate_ms: c.stale_while_revalidate_ms,
        share_authorized: c.share_authorized,
        share_set_cookie: c.share_set_cookie,
    }
}

fn route_cache_from(c: admin::RouteCache) -> RouteCache {
    RouteCache {
        coalesce: c.coalesce.unwrap_or(true),
        max_bytes: c.max_bytes,
        max_entry_bytes: c.max_entry_bytes,
        stale_while_revalidate_ms: c.stale_while_revalidate_ms,
        share_authorized: c.share_authorized,
        share_set_cookie: c.share_set_cookie,
    }
}

/// A route sent as input: within the wire's limits and valid; its revision is cleared.
pub fn checked_route(r: admin::Route) -> Result<Route, Invalid> {
    if r.hosts.len() > MAX_HOSTS {
        return Err(too_many("hosts", r.hosts.len(), MAX_HOSTS));
    }
    if r.methods.len() > MAX_METHODS {
        return Err(too_many("methods", r.methods.len(), MAX_METHODS));
    }
    check_rules("request_headers", &r.request_headers)?;
    check_rules("response_headers", &r.response_headers)?;
    let mut route = route_from_wire(r)?;
    route.revision = 0;
    validate_route(&route)?;
    Ok(route)
}

// ---- commands ----------------------------------------------------------------------------

fn missing(field: &str, fix: &str) -> Invalid {
    Invalid::new(field, "is missing", fix)
}

/// One operation of a transaction as a checked command; fields are named relative to the
/// object (`backends[0].address`), as the model names them.
pub fn checked_command(op: admin::Operation) -> Result<Command, Invalid> {
    use admin::operation::Op;
    Ok(match op.op {
        None => {
            return Err(missing(
                "op",
                "set one of put_pool, delete_pool, put_route, delete_route, put_tcp_route, delete_tcp_route, set_limits",
            ));
        }
        Some(Op::PutPool(r)) => Command::PutPool {
            pool: checked_pool(r.pool.ok_or_else(|| missing("pool", "send the pool"))?)?,
            expect: r.if_revision,
        },
        Some(Op::PutRoute(r)) => Command::PutRoute {
            route: checked_route(r.route.ok_or_else(|| missing("route", "send the route"))?)?,
            expect: r.if_revision,
        },
        Some(Op::DeletePool(r)) => {
            validate_name("name", &r.name)?;
            Command::DeletePool {
                name: r.name,
                expect: r.if_revision,
            }
        }
        Some(Op::DeleteRoute(r)) => {
            validate_name("name", &r.name)?;
            Command::DeleteRoute {
                name: r.name,
                expect: r.if_revision,
            }
        }
        Some(Op::PutTcpRoute(r)) => Command::PutTcpRoute {
            route: checked_tcp_route(
                r.tcp_route
                    .ok_or_else(|| missing("tcp_route", "send the TCP route"))?,
            )?,
            expect: r.if_revision,
        },
        Some(Op::DeleteTcpRoute(r)) => {
            validate_name("name", &r.name)?;
            Command::DeleteTcpRoute {
                name: r.name,
                expect: r.if_revision,
            }
        }
        Some(Op::SetLimits(r)) => Command::SetLimits {
            limits: checked_limits(r.limits.unwrap_or_default())?,
            expect: r.if_revision,
        },
    })
}

/// The operations of a transaction as checked commands: 1 to [`MAX_BATCH`] of them; an error
/// names the one at fault as `commands[i].<field>`.
pub fn checked_commands(ops: Vec<admin::Operation>) -> Result<Vec<Command>, Invalid> {
    if ops.is_empty() || ops.len() > MAX_BATCH {
        return Err(Invalid::new(
            "commands",
            format!("{} given", ops.len()),
            format!("send 1 to {MAX_BATCH} commands"),
        ));
    }
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| checked_command(op).map_err(|v| under(&format!("commands[{i}]"), v)))
        .collect()
}

/// A configuration command as a transaction operation; `None` for node and batch commands,
/// which a transaction does not carry.
pub fn command_to_wire(c: &Command) -> Option<admin::Operation> {
    use admin::operation::Op;
    let op = match c {
        Command::PutPool { pool, expect } => Op::PutPool(admin::PutPoolRequest {
            pool: Some(pool_to_wire(pool)),
            if_revision: *expect,
        }),
        Command::PutRoute { route, expect } => Op::PutRoute(admin::PutRouteRequest {
            route: Some(route_to_wire(route)),
            if_revision: *expect,
        }),
        Command::DeletePool { name, expect } => Op::DeletePool(admin::DeleteRequest {
            name: name.clone(),
            if_revision: *expect,
        }),
        Command::DeleteRoute { name, expect } => Op::DeleteRoute(admin::DeleteRequest {
            name: name.clone(),
            if_revision: *expect,
        }),
        Command::PutTcpRoute { route, expect } => Op::PutTcpRoute(admin::PutTcpRouteRequest {
            tcp_route: Some(tcp_route_to_wire(route)),
            if_revision: *expect,
        }),
        Command::DeleteTcpRoute { name, expect } => Op::DeleteTcpRoute(admin::DeleteRequest {
            name: name.clone(),
            if_revision: *expect,
        }),
        Command::SetLimits { limits, expect } => Op::SetLimits(admin::SetLimitsRequest {
            limits: Some(limits_to_wire(limits)),
            if_revision: *expect,
        }),
        _ => return None,
    };
    Some(admin::Operation { op: Some(op) })
}

// ---- changes -----------------------------------------------------------------------------

/// A revision's changes as the wire carries them.
pub fn change_set_to_wire(c: &ChangeSet) -> admin::ChangeSet {
    use admin::change::Change as W;
    admin::ChangeSet {
        revision: c.revision,
        changes: c
            .changes
            .iter()
            .map(|ch| admin::Change {
                change: Some(match ch {
                    Change::PutPool { pool } => W::PutPool(pool_to_wire(pool)),
                    Change::DeletePool { name } => W::DeletePool(name.clone()),
                    Change::PutRoute { route } => W::PutRoute(route_to_wire(route)),
                    Change::DeleteRoute { name } => W::DeleteRoute(name.clone()),
                    Change::RetireNode { id } => W::RetireNode(*id),
                    Change::PutCert { cert } => W::PutCert(cert_to_wire(cert)),
                    Change::DeleteCert { name } => W::DeleteCert(name.clone()),
                    Change::PutTcpRoute { route } => W::PutTcpRoute(tcp_route_to_wire(route)),
                    Change::DeleteTcpRoute { name } => W::DeleteTcpRoute(name.clone()),
                    Change::SetLimits { limits } => W::SetLimits(limits_to_wire(limits)),
                    Change::Health {
                        pool,
                        backend,
                        health,
                    } => W::Health(admin::BackendStatus {
                        pool: pool.clone(),
                        backend: backend.clone(),
                        address: health.address.clone(),
                        state: if health.up { "up" } else { "down" }.into(),
                        draining: false,
                        down_on: health.down_on.clone(),
                        since_ms: health.since_ms,
                        transition: health.transition,
                        node: None,
                    }),
                    Change::PutAlertSink { sink } => W::PutAlertSink(alert_sink_to_wire(sink)),
                    Change::DeleteAlertSink { name } => W::DeleteAlertSink(name.clone()),
                }),
            })
            .collect(),
    }
}

/// A revision's changes from the wire (for clients).
pub fn change_set_from_wire(c: admin::ChangeSet) -> Result<ChangeSet, Invalid> {
    use admin::change::Change as W;
    let mut changes = Vec::with_capacity(c.changes.len());
    for (i, ch) in c.changes.into_iter().enumerate() {
        let field = |v| under(&format!("changes[{i}]"), v);
        changes.push(match ch.change {
            Some(W::PutPool(p)) => Change::PutPool {
                pool: pool_from_wire(p).map_err(field)?,
            },
            Some(W::DeletePool(name)) => Change::DeletePool { name },
            Some(W::PutRoute(r)) => Change::PutRoute {
                route: route_from_wire(r).map_err(field)?,
            },
            Some(W::DeleteRoute(name)) => Change::DeleteRoute { name },
            Some(W::RetireNode(id)) => Change::RetireNode { id },
            Some(W::PutCert(c)) => Change::PutCert {
                cert: cert_from_wire(c),
            },
            Some(W::DeleteCert(name)) => Change::DeleteCert { name },
            Some(W::PutTcpRoute(r)) => Change::PutTcpRoute {
                route: tcp_route_from_wire(r).map_err(field)?,
            },
            Some(W::DeleteTcpRoute(name)) => Change::DeleteTcpRoute { name },
            Some(W::SetLimits(l)) => Change::SetLimits {
                limits: limits_from_wire(l),
            },
            Some(W::Health(h)) => Change::Health {
                pool: h.pool,
                backend: h.backend,
                health: BackendHealth {
                    up: h.state != "down",
                    address: h.address,
                    down_on: h.down_on,
                    since_ms: h.since_ms,
                    transition: h.transition,
                },
            },
            Some(W::PutAlertSink(s)) => Change::PutAlertSink {
                sink: alert_sink_from_wire(s),
            },
            Some(W::DeleteAlertSink(name)) => Change::DeleteAlertSink { name },
            None => {
                return Err(field(missing(
                    "change",
                    "this change is of a kind this client does not know: upgrade it",
                )));
            }
        });
    }
    Ok(ChangeSet {
        revision: c.revision,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_pool() -> Pool {
        Pool {
            name: "web".into(),
            balance: Balance::WeightedRoundRobin,
            backends: vec![
                Backend {
                    id: "a".into(),
                    address: "127.0.0.1:9001".into(),
                    weight: 5,
                    node: Some(2),
                    max_connections: Some(100),
                    drain: true,
                },
                Backend {
                    id: "b".into(),
                    address: "unix:/run/app.sock".into(),
                    ..Backend::default()
                },
            ],
            prefer_local: true,
            protocol: Protocol::H2,
            tls: Some(BackendTls {
                ca_pem: None,
                sni: Some("api.internal".into()),
                client_cert: Some("gw-client".into()),
            }),
            queue_timeout_ms: Some(250),
            keep_alive_timeout_ms: Some(4_000),
            retry_budget_percent: Some(30),
            retry_budget_min_per_second: Some(3),
            health_check: Some(HealthCheck {
                kind: CheckKind::Tcp,
                body: Some("ok".into()),
                host: Some("app.internal".into()),
                interval_ms: 500,
                timeout_ms: 200,
                policy: HealthPolicy::Any,
                ..HealthCheck::default()
            }),
            eject: Some(Ejection {
                connect_failure: false,
                consecutive_5xx: 5,
                cooldown_ms: 2500,
            }),
            process: Some(ProcessSpec {
                command: "gateway".into(),
                args: vec![
                    "demo-backend".into(),
                    "--listen".into(),
                    "127.0.0.1:{port}".into(),
                ],
                env: [("APP_PORT".to_string(), "{port}".to_string())].into(),
                dir: Some("/tmp".into()),
                instances: 3,
                ports: "20000-20009".into(),
                host: Some("10.0.0.5".into()),
                nodes: vec![1, 3],
                backoff_ms: 100,
                max_backoff_ms: 1000,
                crash_limit: 3,
                min_uptime_ms: 50,
                start_timeout_ms: 4000,
                stop_timeout_ms: 300,
                drain_ms: 20,
            }),
            revision: 7,
        }
    }

    fn full_route() -> Route {
        Route {
            name: "app".into(),
            hosts: vec!["example.com".into(), "*.example.com".into()],
            path_prefix: "/api".into(),
            methods: vec!["GET".into(), "POST".into()],
            pool: "web".into(),
            writes: WritePolicy::Leader,
            timeout_ms: Some(5000),
            retries: Some(3),
            retry_delay_ms: Some(10),
            headers: vec![HeaderMatch {
                name: "x-tenant".into(),
                value: "blue".into(),
            }],
            request_headers: HeaderRules {
                set: BTreeMap::from([("x-a".into(), "1".into())]),
                add: BTreeMap::from([("x-b".into(), "2".into())]),
                remove: vec!["x-c".into()],
            },
            response_headers: HeaderRules {
                set: BTreeMap::from([("x-served-by".into(), "gw".into())]),
                ..HeaderRules::default()
            },
            strip_prefix: true,
            host_rewrite: Some("app.internal:8080".into()),
            https_redirect: Some(308),
            error_pages: BTreeMap::from([(
                "503".into(),
                ErrorPage {
                    status: Some(503),
                    content_type: "text/plain".into(),
                    body: "down".into(),
                },
            )]),
            max_body_bytes: Some(1 << 20),
            max_concurrent: Some(50),
            rate_limit: Some(RateLimit {
                per_second: 20,
                burst: Some(40),
            }),
            cache: Some(RouteCache {
                coalesce: false,
                max_bytes: 1 << 20,
                max_entry_bytes: Some(4096),
                stale_while_revalidate_ms: 2000,
                share_authorized: true,
                share_set_cookie: true,
            }),
            revision: 9,
        }
    }

    #[test]
    fn pools_and_routes_round_trip_with_every_field() {
        let p = full_pool();
        assert_eq!(pool_from_wire(pool_to_wire(&p)).unwrap(), p);
        let r = full_route();
        assert_eq!(route_from_wire(route_to_wire(&r)).unwrap(), r);
        let d = Route {
            name: "d".into(),
            pool: "web".into(),
            path_prefix: "/".into(),
            ..Route::default()
        };
        assert_eq!(route_from_wire(route_to_wire(&d)).unwrap(), d);
    }

    #[test]
    fn tcp_routes_travel_in_transactions() {
        let route = TcpRoute {
            name: "redis".into(),
            listen: "127.0.0.1:6380".into(),
            pool: "redis".into(),
            nodes: vec![1],
            proxy_protocol: Some(ProxyProtocol::V2),
            ..TcpRoute::default()
        };
        let put = Command::PutTcpRoute {
            route: route.clone(),
            expect: Some(0),
        };
        let del = Command::DeleteTcpRoute {
            name: "redis".into(),
            expect: Some(4),
        };
        for c in [put, del] {
            let op = command_to_wire(&c).unwrap();
            assert_eq!(checked_command(op).unwrap(), c);
        }
        let bad = admin::Operation {
            op: Some(admin::operation::Op::PutTcpRoute(
                admin::PutTcpRouteRequest {
                    tcp_route: Some(tcp_route_to_wire(&TcpRoute {
                        listen: "nowhere".into(),
                        ..route
                    })),
                    if_revision: None,
                },
            )),
        };
        assert_eq!(checked_command(bad).unwrap_err().field, "listen");
    }

    #[test]
    fn checked_input_clears_the_revision_and_fills_defaults() {
        let p = checked_pool(pool_to_wire(&full_pool())).unwrap();
        assert_eq!(p.revision, 0);
        let wire = admin::Route {
            name: "r".into(),
            pool: "web".into(),
            ..Default::default()
        };
        let r = checked_route(wire).unwrap();
        assert_eq!(r.path_prefix, "/", "an empty prefix is /");
        assert_eq!(r.writes, WritePolicy::Any);
        let wire = admin::Pool {
            name: "p".into(),
            backends: vec![admin::Backend {
                id: "a".into(),
                address: "10.0.0.1:80".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = checked_pool(wire).unwrap();
        assert_eq!(p.backends[0].weight, 1, "an absent weight is 1");
        assert_eq!(p.balance, Balance::RoundRobin);
        let page = admin::ErrorPage {
            body: "x".into(),
            ..Default::default()
        };
        let r = route_from_wire(admin::Route {
            error_pages: BTreeMap::from([("502".into(), page)]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            r.error_pages["502"],
            ErrorPage {
                body: "x".into(),
                ..ErrorPage::default()
            }
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut p = pool_to_wire(&full_pool());
        p.balance = 42;
        let e = checked_pool(p).unwrap_err();
        assert_eq!(e.field, "balance");
        assert!(e.to_string().contains("BALANCE_ROUND_ROBIN"), "{e}");

        let mut p = pool_to_wire(&full_pool());
        p.backends[1].address = "nohost".into();
        assert_eq!(checked_pool(p).unwrap_err().field, "backends[1].address");

        let mut p = pool_to_wire(&full_pool());
        p.backends = (0..=MAX_BACKENDS)
            .map(|i| admin::Backend {
                id: format!("b{i}"),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            })
            .collect();
        let e = checked_pool(p).unwrap_err();
        assert_eq!(e.field, "backends");
        assert!(e.to_string().contains("at most 1000"), "{e}");

        let mut r = route_to_wire(&full_route());
        r.hosts = vec!["a.example".into(); MAX_HOSTS + 1];
        assert_eq!(checked_route(r).unwrap_err().field, "hosts");
        let mut r = route_to_wire(&full_route());
        r.methods = vec!["GET".into(); MAX_METHODS + 1];
        assert_eq!(checked_route(r).unwrap_err().field, "methods");
        let mut r = route_to_wire(&full_route());
        r.writes = -1;
        assert_eq!(checked_route(r).unwrap_err().field, "writes");
        let mut r = route_to_wire(&full_route());
        r.name = "no spaces".into();
        assert_eq!(checked_route(r).unwrap_err().field, "name");
        let mut r = route_to_wire(&full_route());
        r.error_pages.get_mut("503").unwrap().status = Some(70_000);
        assert_eq!(
            checked_route(r).unwrap_err().field,
            "error_pages.503.status"
        );
        let mut r = route_to_wire(&full_route());
        r.request_headers.as_mut().unwrap().remove = vec!["x-y".into(); MAX_HEADER_RULES + 1];
        assert_eq!(
            checked_route(r).unwrap_err().field,
            "request_headers.remove"
        );
        assert!(consistency_from_wire(9).is_err());
        assert_eq!(
            consistency_from_wire(0).unwrap(),
            admin::Consistency::Linearizable
        );
    }

    #[test]
    fn transactions_check_every_command_and_name_it() {
        assert_eq!(checked_commands(vec![]).unwrap_err().field, "commands");
        let cmds = vec![
            Command::PutPool {
                pool: full_pool(),
                expect: Some(0),
            },
            Command::PutRoute {
                route: full_route(),
                expect: Some(4),
            },
            Command::DeleteRoute {
                name: "old".into(),
                expect: None,
            },
            Command::DeletePool {
                name: "older".into(),
                expect: Some(2),
            },
        ];
        let ops: Vec<_> = cmds.iter().map(|c| command_to_wire(c).unwrap()).collect();
        let back = checked_commands(ops.clone()).unwrap();
        let mut want = cmds.clone();
        if let Command::PutPool { pool, .. } = &mut want[0] {
            pool.revision = 0;
        }
        if let Command::PutRoute { route, .. } = &mut want[1] {
            route.revision = 0;
        }
        assert_eq!(back, want);

        let mut bad = ops;
        if let Some(admin::operation::Op::PutPool(p)) = &mut bad[0].op {
            p.pool.as_mut().unwrap().backends[0].weight = Some(0);
        }
        assert_eq!(
            checked_commands(bad.clone()).unwrap_err().field,
            "commands[0].backends[0].weight"
        );
        bad[0] = admin::Operation { op: None };
        assert_eq!(checked_commands(bad).unwrap_err().field, "commands[0].op");
        assert!(command_to_wire(&Command::RetireNode { id: 3 }).is_none());
    }

    #[test]
    fn change_sets_round_trip() {
        let c = ChangeSet {
            revision: 12,
            changes: vec![
                Change::PutPool { pool: full_pool() },
                Change::PutRoute {
                    route: full_route(),
                },
                Change::DeleteRoute { name: "r".into() },
                Change::DeletePool { name: "p".into() },
                Change::RetireNode { id: 4 },
            ],
        };
        assert_eq!(change_set_from_wire(change_set_to_wire(&c)).unwrap(), c);
    }
}
