//! The `gateway` client commands and the admin gRPC API under them, against real `gateway`
//! processes on loopback, always through a follower's cluster address: create, list, get and
//! delete; compare-and-set; `config export` / `config apply` (idempotent, one transaction, all
//! or nothing); `watch` across a leader killed with SIGKILL; the token matrix; bad input.
//!
//! Every test starts its own cluster, so they may run in parallel; they wait on conditions,
//! never on fixed sleeps. Build the binary first: `cargo build -p gateway`.

use anyhow::{Context, Result, anyhow};
use gateway_tests::{
    CATCH_UP, CliOutput, Config, ELECTION, Node, TestCluster, TestResult, bail, ensure,
    gateway_bin, note, run_gateway, wait_for,
};
use gateway_wire::admin::admin_client::AdminClient;
use gateway_wire::admin::{self, operation::Op};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic::transport::Channel;

/// How long one CLI command may take (it retries through an election by itself).
const COMMAND: Duration = Duration::from_secs(90);

/// `gateway ARGS --server SERVER`.
async fn gw(server: &str, args: &[&str]) -> Result<CliOutput> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", server]);
    run_gateway(&all, COMMAND).await
}

/// A command that must succeed; returns its stdout.
async fn ok(server: &str, args: &[&str]) -> Result<String> {
    let out = gw(server, args).await?;
    ensure!(
        out.status.success() && out.error_lines().is_empty(),
        "`gateway {}` failed:\n{}",
        out.args.join(" "),
        out.dump()
    );
    Ok(out.stdout)
}

/// A command with `--output json` that must succeed; returns the JSON it printed.
async fn ok_json(server: &str, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let text = ok(server, &all).await?;
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// A command that must fail the CLI's way (exit 1, one `error: ` line naming one of
/// `naming`); returns that line.
async fn fails(server: &str, args: &[&str], naming: &[&str]) -> Result<String> {
    let out = gw(server, args).await?;
    let line = out.expect_error_naming(naming)?.to_string();
    note!("`gateway {}` -> {line}", args.join(" "));
    Ok(line)
}

/// A 3-node cluster and the cluster address of one of its followers.
async fn cluster_and_follower() -> Result<(TestCluster, String)> {
    let c = TestCluster::start(3).await?;
    c.wait_leader(ELECTION).await?;
    let f = c.follower().await?.cluster_addr.to_string();
    Ok((c, f))
}

/// The config read linearizably through a follower's REST API.
async fn config_via(c: &TestCluster) -> Result<Config> {
    c.follower().await?.config("linearizable").await
}

async fn grpc(addr: SocketAddr) -> Result<AdminClient<Channel>> {
    Ok(AdminClient::connect(format!("http://{addr}")).await?)
}

fn wire_pool(name: &str, backends: &[(&str, &str)]) -> admin::Pool {
    admin::Pool {
        name: name.into(),
        backends: backends
            .iter()
            .map(|(id, address)| admin::Backend {
                id: id.to_string(),
                address: address.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn wire_route(name: &str, pool: &str, hosts: &[&str]) -> admin::Route {
    admin::Route {
        name: name.into(),
        pool: pool.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn crud_and_compare_and_set_through_a_follower() -> TestResult {
    let (c, f) = cluster_and_follower().await?;
    // A dead address first: the CLI moves on to the next one.
    let servers = format!("127.0.0.1:1,{f}");
    let s = servers.as_str();

    let out = ok(
        s,
        &[
            "pool",
            "add",
            "web",
            "--backend",
            "a=127.0.0.1:9001",
            "--backend",
            "b=127.0.0.1:9002,weight=3",
            "--keep-alive-timeout-ms",
            "4000",
        ],
    )
    .await?;
    ensure!(out.starts_with("pool web created (revision "), "{out}");
    let out = ok(
        s,
        &[
            "route",
            "add",
            "app",
            "--pool",
            "web",
            "--host",
            "example.com,www.example.com",
            "--method",
            "get,post",
            "--writes",
            "leader",
        ],
    )
    .await?;
    ensure!(out.starts_with("route app created (revision "), "{out}");
    ok(
        s,
        &["route", "add", "api", "--pool", "web", "--path", "/api"],
    )
    .await?;

    // The cluster has them, as the REST API shows.
    let cfg = config_via(&c).await?;
    let app = cfg
        .route("app")
        .ok_or_else(|| anyhow!("no route app: {cfg:?}"))?;
    ensure!(
        app["hosts"] == serde_json::json!(["example.com", "www.example.com"]),
        "{app}"
    );
    ensure!(
        app["methods"] == serde_json::json!(["GET", "POST"]),
        "{app}"
    );
    ensure!(app["writes"] == "leader" && app["pool"] == "web", "{app}");
    ensure!(cfg.pool("web").unwrap()["backends"][1]["weight"] == 3);
    ensure!(cfg.pool("web").unwrap()["keep_alive_timeout_ms"] == 4000);

    // list: a table, and JSON.
    let table = ok(s, &["route", "list"]).await?;
    let lines: Vec<&str> = table.lines().collect();
    ensure!(lines.len() == 3, "header and two routes:\n{table}");
    ensure!(
        lines[0].split_whitespace().collect::<Vec<_>>()
            == [
                "NAME", "HOSTS", "PATH", "METHODS", "POOL", "WRITES", "REVISION"
            ],
        "{table}"
    );
    ensure!(
        lines[1].starts_with("api ") && lines[2].starts_with("app "),
        "{table}"
    );
    ensure!(
        lines[2].contains("example.com,www.example.com") && lines[2].contains("GET,POST"),
        "{table}"
    );
    let list = ok_json(s, &["route", "list"]).await?;
    ensure!(list["revision"] == cfg.revision, "{list}");
    let names: Vec<&str> = list["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(names == ["api", "app"], "{list}");
    let pools = ok(s, &["pool", "list"]).await?;
    ensure!(
        pools.contains("a=127.0.0.1:9001 b=127.0.0.1:9002"),
        "{pools}"
    );

    // get.
    let got = ok_json(s, &["route", "get", "app"]).await?;
    ensure!(got["route"] == *app, "get {got} differs from REST {app}");
    let text = ok(s, &["route", "get", "app", "--consistency", "stale"]).await?;
    ensure!(text.contains("pool") && text.contains("web"), "{text}");
    let text = ok(s, &["pool", "get", "web"]).await?;
    ensure!(
        text.contains("127.0.0.1:9002")
            && text.contains("round_robin")
            && text
                .lines()
                .any(|l| l.starts_with("keep_alive_timeout_ms") && l.ends_with(" 4000")),
        "{text}"
    );

    // backend add/rm: read-modify-write of the pool.
    ok(
        s,
        &[
            "backend",
            "add",
            "web",
            "c",
            "127.0.0.1:9003",
            "--weight",
            "2",
        ],
    )
    .await?;
    ok(s, &["backend", "rm", "web", "a"]).await?;
    let pool = ok_json(s, &["pool", "get", "web"]).await?;
    let ids: Vec<&str> = pool["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    ensure!(ids == ["b", "c"], "{pool}");
    fails(s, &["backend", "rm", "web", "zz"], &["'zz'"]).await?;
    fails(
        s,
        &["backend", "add", "nope", "x", "127.0.0.1:1"],
        &["pool 'nope' does not exist"],
    )
    .await?;

    // Compare-and-set: a stale --if-revision is refused and changes nothing.
    let rev = got["route"]["revision"].as_u64().unwrap();
    let before = config_via(&c).await?;
    let line = fails(
        s,
        &[
            "route",
            "add",
            "app",
            "--pool",
            "web",
            "--host",
            "other.example.com",
            "--if-revision",
            &(rev - 1).to_string(),
        ],
        &["revision"],
    )
    .await?;
    ensure!(
        line.contains(&rev.to_string()),
        "names the current revision: {line}"
    );
    ensure!(
        config_via(&c).await? == before,
        "a refused write changed the config"
    );
    let line = fails(s, &["route", "add", "app", "--pool", "web"], &["--replace"]).await?;
    ensure!(line.contains("already exists"), "{line}");
    let out = ok(
        s,
        &[
            "route",
            "add",
            "app",
            "--pool",
            "web",
            "--host",
            "other.example.com",
            "--if-revision",
            &rev.to_string(),
        ],
    )
    .await?;
    ensure!(out.starts_with("route app saved"), "{out}");
    ensure!(
        config_via(&c).await?.route("app").unwrap()["hosts"][0] == "other.example.com",
        "the conditional write did not apply"
    );

    // rm, then it is gone.
    ok(s, &["route", "rm", "app"]).await?;
    fails(s, &["route", "get", "app"], &["does not exist"]).await?;
    fails(s, &["pool", "rm", "web"], &["api"]).await?; // still used by route api
    ok(s, &["route", "rm", "api"]).await?;
    let out = ok(s, &["pool", "rm", "web"]).await?;
    ensure!(out.starts_with("pool web removed"), "{out}");
    ensure!(ok(s, &["route", "list"]).await?.starts_with("no routes"));

    // cluster status, members, leader through the follower.
    let leader = c.leader().await?;
    let l = ok_json(s, &["cluster", "leader"]).await?;
    ensure!(
        l["id"] == leader.id && l["cluster_addr"] == leader.cluster_addr,
        "{l}"
    );
    let members = ok(s, &["cluster", "members"]).await?;
    ensure!(members.lines().count() == 4, "{members}");
    ensure!(
        members.contains("leader") && members.contains("voter"),
        "{members}"
    );
    let st = ok_json(s, &["cluster", "status"]).await?;
    ensure!(
        st["role"] == "follower" && st["voters"].as_array().unwrap().len() == 3,
        "{st}"
    );

    // Usage mistakes and unreachable servers are one line too.
    fails(
        "127.0.0.1:1",
        &["route", "list", "--timeout", "1"],
        &["cannot reach"],
    )
    .await?;
    let admin = c.follower().await?.admin_addr.to_string();
    fails(
        &admin,
        &["route", "list", "--timeout", "1"],
        &["cluster port"],
    )
    .await?;
    fails(
        s,
        &["pool", "add", "x", "--backend", "nonsense"],
        &["--backend"],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_input_over_grpc_names_the_field_and_changes_nothing() -> TestResult {
    let (c, f) = cluster_and_follower().await?;
    ok(&f, &["pool", "add", "web", "--backend", "a=127.0.0.1:9001"]).await?;
    ok(&f, &["route", "add", "app", "--pool", "web"]).await?;
    let before = config_via(&c).await?;
    let web_rev = before.pool("web").unwrap()["revision"].as_u64().unwrap();
    let addr: SocketAddr = f.parse()?;
    let mut g = grpc(addr).await?;

    let put_pool = |pool: admin::Pool, if_revision: Option<u64>| admin::PutPoolRequest {
        pool: Some(pool),
        if_revision,
    };
    let put_route = |route: admin::Route| admin::PutRouteRequest {
        route: Some(route),
        if_revision: None,
    };
    let many_backends: Vec<(String, String)> = (0..1001)
        .map(|i| (format!("b{i}"), format!("127.0.0.1:{}", 1000 + i)))
        .collect();
    let many: Vec<(&str, &str)> = many_backends
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut weight0 = wire_pool("w", &[("a", "127.0.0.1:1")]);
    weight0.backends[0].weight = Some(0);
    let mut balance = wire_pool("w", &[("a", "127.0.0.1:1")]);
    balance.balance = 99;
    let hosts: Vec<String> = (0..300).map(|i| format!("h{i}.example.com")).collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut bad_path = wire_route("r", "web", &[]);
    bad_path.path_prefix = "api".into();
    let mut bad_method = wire_route("r", "web", &[]);
    bad_method.methods = vec!["get".into()];

    // (what, result, code, field that must be named, or "" when none)
    let mut cases: Vec<(&str, Result<(), tonic::Status>, Code, &str)> = Vec::new();
    macro_rules! case {
        ($what:expr, $call:expr, $code:expr, $field:expr) => {
            cases.push(($what, $call.await.map(|_| ()), $code, $field));
        };
    }
    case!(
        "pool name with a space",
        g.put_pool(put_pool(wire_pool("no good", &[]), None)),
        Code::InvalidArgument,
        "name"
    );
    case!(
        "no pool at all",
        g.put_pool(admin::PutPoolRequest::default()),
        Code::InvalidArgument,
        "pool"
    );
    case!(
        "backend address without a port",
        g.put_pool(put_pool(wire_pool("w", &[("a", "nohost")]), None)),
        Code::InvalidArgument,
        "backends[0].address"
    );
    case!(
        "weight 0",
        g.put_pool(put_pool(weight0, None)),
        Code::InvalidArgument,
        "backends[0].weight"
    );
    case!(
        "unknown balance number",
        g.put_pool(put_pool(balance, None)),
        Code::InvalidArgument,
        "balance"
    );
    case!(
        "1001 backends",
        g.put_pool(put_pool(wire_pool("w", &many), None)),
        Code::InvalidArgument,
        "backends"
    );
    case!(
        "route to an unknown pool",
        g.put_route(put_route(wire_route("r", "nope", &[]))),
        Code::InvalidArgument,
        "pool"
    );
    case!(
        "upper-case host",
        g.put_route(put_route(wire_route("r", "web", &["Bad.COM"]))),
        Code::InvalidArgument,
        "hosts[0]"
    );
    case!(
        "300 hosts",
        g.put_route(put_route(wire_route("r", "web", &host_refs))),
        Code::InvalidArgument,
        "hosts"
    );
    case!(
        "path without /",
        g.put_route(put_route(bad_path)),
        Code::InvalidArgument,
        "path_prefix"
    );
    case!(
        "lower-case method",
        g.put_route(put_route(bad_method)),
        Code::InvalidArgument,
        "methods[0]"
    );
    case!(
        "get with an empty name",
        g.get_route(admin::GetRequest::default()),
        Code::InvalidArgument,
        "name"
    );
    case!(
        "unknown consistency",
        g.list_routes(admin::ReadRequest { consistency: 17 }),
        Code::InvalidArgument,
        "consistency"
    );
    case!(
        "get a missing route",
        g.get_route(admin::GetRequest {
            name: "nope".into(),
            consistency: 0
        }),
        Code::NotFound,
        ""
    );
    case!(
        "delete a missing pool",
        g.delete_pool(admin::DeleteRequest {
            name: "nope".into(),
            if_revision: None
        }),
        Code::NotFound,
        ""
    );
    case!(
        "delete a pool in use",
        g.delete_pool(admin::DeleteRequest {
            name: "web".into(),
            if_revision: None
        }),
        Code::FailedPrecondition,
        ""
    );
    case!(
        "create-only on an existing pool",
        g.put_pool(put_pool(wire_pool("web", &[]), Some(0))),
        Code::AlreadyExists,
        ""
    );
    case!(
        "stale if_revision",
        g.put_pool(put_pool(wire_pool("web", &[]), Some(web_rev + 100))),
        Code::FailedPrecondition,
        ""
    );
    case!(
        "empty transaction",
        g.transaction(admin::TransactionRequest { commands: vec![] }),
        Code::InvalidArgument,
        "commands"
    );
    let op = |op| admin::Operation { op: Some(op) };
    case!(
        "transaction with a bad second command",
        g.transaction(admin::TransactionRequest {
            commands: vec![
                op(Op::PutPool(put_pool(wire_pool("fine", &[]), None))),
                op(Op::PutRoute(put_route(wire_route(
                    "r",
                    "web",
                    &["UPPER.example"]
                )))),
            ]
        }),
        Code::InvalidArgument,
        "commands[1].hosts[0]"
    );
    case!(
        "transaction with a stale command",
        g.transaction(admin::TransactionRequest {
            commands: vec![
                op(Op::PutPool(put_pool(wire_pool("fine", &[]), None))),
                op(Op::DeletePool(admin::DeleteRequest {
                    name: "web".into(),
                    if_revision: Some(web_rev + 1),
                })),
            ]
        }),
        Code::FailedPrecondition,
        ""
    );
    case!(
        "transaction whose route names a pool that does not exist",
        g.transaction(admin::TransactionRequest {
            commands: vec![
                op(Op::PutPool(put_pool(wire_pool("fine", &[]), None))),
                op(Op::PutRoute(put_route(wire_route("r", "missing", &[])))),
            ]
        }),
        Code::InvalidArgument,
        "commands[1].pool"
    );
    case!(
        "remove node 0",
        g.remove_node(admin::RemoveNodeRequest { id: 0 }),
        Code::InvalidArgument,
        "id"
    );
    case!(
        "remove a node that is not a member",
        g.remove_node(admin::RemoveNodeRequest { id: 99 }),
        Code::NotFound,
        ""
    );
    // A request over the size limit (16 MiB) is refused before it is decoded (tonic answers
    // OUT_OF_RANGE).
    let huge: Vec<String> = (0..20_000)
        .map(|i| format!("{i:01000}.example.com"))
        .collect();
    case!(
        "a 20 MB request",
        g.put_route(put_route(admin::Route {
            name: "r".into(),
            pool: "web".into(),
            hosts: huge,
            ..Default::default()
        })),
        Code::OutOfRange,
        ""
    );

    let mut wrong = Vec::new();
    for (what, res, code, field) in &cases {
        match res {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(s) if s.code() != *code => wrong.push(format!(
                "{what}: {:?} instead of {code:?}: {}",
                s.code(),
                s.message()
            )),
            Err(s) if !field.is_empty() => {
                let named = s
                    .metadata()
                    .get("x-gateway-field")
                    .and_then(|v| v.to_str().ok());
                if named != Some(field) || !s.message().starts_with(&format!("{field}: ")) {
                    wrong.push(format!(
                        "{what}: names {named:?} ({}) instead of {field}",
                        s.message()
                    ));
                } else if !s.message().contains("; ") {
                    wrong.push(format!("{what}: no fix in '{}'", s.message()));
                }
            }
            Err(s) => note!("{what}: {:?} {}", s.code(), s.message()),
        }
    }
    ensure!(wrong.is_empty(), "wrong answers:\n  {}", wrong.join("\n  "));
    let after = config_via(&c).await?;
    ensure!(
        after == before,
        "refused requests changed the config: {before:?} -> {after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn config_export_apply_round_trip_and_transactions() -> TestResult {
    let (c, f) = cluster_and_follower().await?;
    let s = f.as_str();
    ok(
        s,
        &[
            "pool",
            "add",
            "web",
            "--backend",
            "a=127.0.0.1:9001",
            "--backend",
            "b=127.0.0.1:9002,weight=2,node=1",
        ],
    )
    .await?;
    ok(
        s,
        &[
            "pool",
            "add",
            "old",
            "--balance",
            "least_connections",
            "--backend",
            "x=unix:/run/x.sock",
        ],
    )
    .await?;
    ok(
        s,
        &[
            "route",
            "add",
            "app",
            "--pool",
            "web",
            "--host",
            "example.com",
            "--strip-prefix",
            "--path",
            "/app",
        ],
    )
    .await?;
    ok(
        s,
        &[
            "route",
            "add",
            "legacy",
            "--pool",
            "old",
            "--writes",
            "leader",
            "--timeout-ms",
            "5000",
        ],
    )
    .await?;
    ok(s, &["limits", "set", "--max-requests", "500"]).await?;
    let dir = c.dir().to_path_buf();
    let file = dir.join("cluster.toml");

    // export, then apply the same file: nothing to change, nothing written.
    let exported = ok(s, &["config", "export"]).await?;
    ensure!(
        exported.contains("[limits]\nmax_requests = 500\n"),
        "{exported}"
    );
    std::fs::write(&file, &exported)?;
    let before = config_via(&c).await?;
    let out = ok(s, &["config", "apply", "-f", file.to_str().unwrap()]).await?;
    ensure!(
        out.trim() == format!("nothing to change (revision {})", before.revision),
        "{out}"
    );
    ensure!(
        config_via(&c).await?.revision == before.revision,
        "an empty apply wrote"
    );
    // The JSON export round-trips too.
    let json_file = dir.join("cluster.json");
    std::fs::write(
        &json_file,
        ok(s, &["config", "export", "--output", "json"]).await?,
    )?;
    let v = ok_json(s, &["config", "apply", "-f", json_file.to_str().unwrap()]).await?;
    ensure!(
        v["changed"] == false && v["revision"] == before.revision,
        "{v}"
    );

    // Change the file: edit a route, add a pool and a route, drop a route and its pool.
    let edited = format!(
        "{}\n",
        [
            "[[pools]]",
            "name = \"web\"",
            "[[pools.backends]]",
            "id = \"a\"",
            "address = \"127.0.0.1:9001\"",
            "[[pools.backends]]",
            "id = \"b\"",
            "address = \"127.0.0.1:9002\"",
            "weight = 2",
            "node = 1",
            "[[pools]]",
            "name = \"api\"",
            "balance = \"ip_hash\"",
            "[[routes]]",
            "name = \"app\"",
            "hosts = [\"example.com\", \"www.example.com\"]",
            "path_prefix = \"/app\"",
            "strip_prefix = true",
            "pool = \"web\"",
            "[[routes]]",
            "name = \"api\"",
            "path_prefix = \"/api\"",
            "pool = \"api\"",
        ]
        .join("\n")
    );
    std::fs::write(&file, &edited)?;
    let dry = ok(
        s,
        &["config", "apply", "-f", file.to_str().unwrap(), "--dry-run"],
    )
    .await?;
    ensure!(dry.contains("dry run"), "{dry}");
    ensure!(
        config_via(&c).await?.revision == before.revision,
        "a dry run wrote"
    );
    let out = ok(s, &["config", "apply", "-f", file.to_str().unwrap()]).await?;
    for want in [
        "+ pool api",
        "+ route api",
        "~ route app: hosts",
        "- route legacy",
        "- pool old",
    ] {
        ensure!(out.contains(want), "the diff lacks '{want}':\n{out}");
    }
    let after = config_via(&c).await?;
    ensure!(
        after.revision == before.revision + 1,
        "one transaction is one revision: {} -> {}",
        before.revision,
        after.revision
    );
    ensure!(
        out.contains(&format!("(revision {})", after.revision)),
        "{out}"
    );
    ensure!(after.pool("old").is_none() && after.route("legacy").is_none());
    ensure!(after.route("api").unwrap()["pool"] == "api");
    ensure!(after.route("app").unwrap()["hosts"][1] == "www.example.com");
    let limits = ok_json(s, &["limits", "show"]).await?;
    ensure!(
        limits["limits"]["max_requests"] == 500,
        "a file without [limits] leaves them alone: {limits}"
    );
    // Applying it again changes nothing.
    let out = ok(s, &["config", "apply", "-f", file.to_str().unwrap()]).await?;
    ensure!(
        out.trim() == format!("nothing to change (revision {})", after.revision),
        "{out}"
    );
    ensure!(config_via(&c).await? == after);

    // A file with one bad route is refused whole: the state machine's check (unknown pool)...
    let bad = format!(
        "{edited}[[pools]]\nname = \"new\"\n[[routes]]\nname = \"bad\"\npool = \"missing\"\n"
    );
    std::fs::write(&file, &bad)?;
    let line = fails(
        s,
        &["config", "apply", "-f", file.to_str().unwrap()],
        &["route 'bad'"],
    )
    .await?;
    ensure!(
        line.contains("nothing applied") && line.contains("missing"),
        "{line}"
    );
    // ... and the wire's (an invalid host).
    let bad = format!(
        "{edited}[[pools]]\nname = \"new\"\n[[routes]]\nname = \"bad\"\npool = \"new\"\nhosts = [\"UPPER.example.com\"]\n"
    );
    std::fs::write(&file, &bad)?;
    let line = fails(
        s,
        &["config", "apply", "-f", file.to_str().unwrap()],
        &["route 'bad' hosts[0]"],
    )
    .await?;
    ensure!(line.contains("lower case"), "{line}");
    ensure!(
        config_via(&c).await? == after,
        "a refused apply changed the config"
    );
    // A file that is not a config says where.
    std::fs::write(&file, "[[routes]]\nname = \"r\"\npoool = \"x\"\n")?;
    let line = fails(
        s,
        &["config", "apply", "-f", file.to_str().unwrap()],
        &["line 3"],
    )
    .await?;
    ensure!(line.contains("poool"), "{line}");

    // [limits] replaces the node-wide limits whole, in the same transaction as the rest.
    std::fs::write(
        &file,
        format!("[limits]\nmax_connections = 100\n\n{edited}[[pools]]\nname = \"new\"\n"),
    )?;
    let out = ok(s, &["config", "apply", "-f", file.to_str().unwrap()]).await?;
    ensure!(
        out.contains("~ limits: max_connections null -> 100; max_requests 500 -> null")
            && out.contains("+ pool new")
            && out.contains("applied 2 change(s) as one transaction"),
        "{out}"
    );
    let now = config_via(&c).await?;
    ensure!(now.revision == after.revision + 1, "one revision for both");
    let limits = ok_json(s, &["limits", "show"]).await?;
    ensure!(
        limits["limits"]["max_connections"] == 100
            && limits["limits"].get("max_requests").is_none()
            && limits["revision"] == now.revision,
        "{limits}"
    );
    let exported = ok(s, &["config", "export"]).await?;
    ensure!(
        exported.contains("[limits]\nmax_connections = 100\n"),
        "{exported}"
    );
    // Out of range: refused before anything is sent.
    std::fs::write(&file, format!("[limits]\nmax_requests = 0\n\n{edited}"))?;
    let line = fails(
        s,
        &["config", "apply", "-f", file.to_str().unwrap()],
        &["limits.max_requests"],
    )
    .await?;
    ensure!(line.contains("out of range"), "{line}");
    ensure!(
        config_via(&c).await? == now,
        "a refused apply changed the config"
    );
    Ok(())
}

/// A running `gateway watch`, its output collected line by line.
struct Watch {
    child: Mutex<tokio::process::Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn spawn(args: &[&str]) -> Result<Watch> {
        let mut cmd = tokio::process::Command::new(gateway_bin()?);
        cmd.args(args)
            .env_remove("GATEWAY_SERVER")
            .env_remove("GATEWAY_TOKEN")
            .env_remove("GATEWAY_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        note!("spawn: gateway {}", args.join(" "));
        let mut child = cmd.spawn().context("spawning gateway watch")?;
        let collect = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let into = lines.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(r).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    into.lock().unwrap().push(l);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Ok(Watch {
            child: Mutex::new(child),
            stdout,
            stderr,
        })
    }

    /// The change sets printed so far (`--output json`: one per line).
    fn sets(&self) -> Result<Vec<Value>> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }

    /// Waits until a change set of revision `rev` (or later) was printed.
    async fn wait_revision(&self, rev: u64) -> Result<Vec<Value>> {
        wait_for(
            &format!("watch to print revision {rev}"),
            CATCH_UP,
            || async {
                let exited = self.child.lock().unwrap().try_wait();
                if let Ok(Some(st)) = exited {
                    bail!(
                        "watch exited ({st}): {}",
                        self.stderr.lock().unwrap().join(" | ")
                    );
                }
                let sets = self.sets()?;
                let last = sets
                    .last()
                    .and_then(|s| s["revision"].as_u64())
                    .unwrap_or(0);
                ensure!(last >= rev, "last printed revision {last}");
                Ok(sets)
            },
        )
        .await
    }
}

#[tokio::test]
async fn watch_sees_every_change_once_across_a_leader_kill() -> TestResult {
    let mut c = TestCluster::start(3).await?;
    let leader = c.wait_leader(ELECTION).await?;
    let followers: Vec<String> = c
        .nodes()
        .iter()
        .filter(|n| n.id != leader.id)
        .map(|n| n.cluster_addr.to_string())
        .collect();
    let writers = followers.join(",");
    ok(
        &writers,
        &["pool", "add", "p", "--backend", "a=127.0.0.1:9001"],
    )
    .await?;

    // The watch starts on the leader, which is killed while routes are being added.
    let watch_servers = format!("{},{writers}", leader.cluster_addr);
    let watch = Watch::spawn(&[
        "watch",
        "--from",
        "1",
        "--output",
        "json",
        "--timeout",
        "60",
        "--server",
        &watch_servers,
    ])?;
    watch.wait_revision(1).await?;

    const N: usize = 30;
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = async {
        for i in 0..N {
            let name = format!("r{i}");
            let out = gw(
                &writers,
                &[
                    "route",
                    "add",
                    &name,
                    "--pool",
                    "p",
                    "--output",
                    "json",
                    "--timeout",
                    "60",
                ],
            )
            .await?;
            if out.status.success() {
                let v: Value = serde_json::from_str(&out.stdout)?;
                let rev = v["revision"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no revision: {v}"))?;
                acked.lock().unwrap().insert(rev, name);
            } else {
                // Its fate is unknown (it may have committed); the history says.
                failed
                    .lock()
                    .unwrap()
                    .push(format!("{name}: {}", out.dump()));
            }
        }
        anyhow::Ok(())
    };
    let killer = async {
        wait_for("10 routes added", CATCH_UP, || async {
            let n = acked.lock().unwrap().len() + failed.lock().unwrap().len();
            ensure!(n >= 10, "{n} added");
            Ok(())
        })
        .await?;
        c.node(leader.id).kill()?;
        anyhow::Ok(())
    };
    let (w, k) = tokio::join!(writer, killer);
    w?;
    k?;
    let acked = acked.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    note!(
        "{} writes acknowledged, {} failed: {failed:?}",
        acked.len(),
        failed.len()
    );
    ensure!(acked.len() >= N - 2, "too many writes failed: {failed:?}");

    let new_leader = c.wait_leader(ELECTION).await?;
    ensure!(new_leader.id != leader.id);
    let last = config_via(&c).await?;
    let sets = watch.wait_revision(last.revision).await?;
    let stderr = watch.stderr.lock().unwrap().join("\n");
    ensure!(
        stderr.contains("resuming from revision"),
        "the watch never had to reconnect:\n{stderr}"
    );

    // Every revision 1..=last exactly once, in order.
    let revs: Vec<u64> = sets
        .iter()
        .map(|s| s["revision"].as_u64().unwrap())
        .collect();
    ensure!(
        revs == (1..=last.revision).collect::<Vec<_>>(),
        "revisions printed: {revs:?} (want 1..={})",
        last.revision
    );
    // Every acknowledged write is in it, at the revision it was acknowledged with.
    for (rev, name) in &acked {
        let set = &sets[*rev as usize - 1];
        ensure!(
            set["changes"][0]["type"] == "put_route" && set["changes"][0]["route"]["name"] == *name,
            "revision {rev} should add route {name}: {set}"
        );
    }
    // Replaying the changes gives the committed configuration.
    let (mut pools, mut routes) = (BTreeMap::new(), BTreeMap::new());
    for set in &sets {
        for ch in set["changes"].as_array().unwrap() {
            match ch["type"].as_str().unwrap() {
                "put_pool" => {
                    pools.insert(ch["pool"]["name"].to_string(), ch["pool"].clone());
                }
                "put_route" => {
                    routes.insert(ch["route"]["name"].to_string(), ch["route"].clone());
                }
                "delete_pool" => {
                    pools.remove(&ch["name"].to_string());
                }
                "delete_route" => {
                    routes.remove(&ch["name"].to_string());
                }
                _ => {}
            }
        }
    }
    ensure!(
        pools.into_values().collect::<Vec<_>>() == last.pools,
        "pools differ from the replay"
    );
    ensure!(
        routes.into_values().collect::<Vec<_>>() == last.routes,
        "routes differ from the replay"
    );

    // And a new watch of the same history, after the fact, prints exactly the same.
    let again = Watch::spawn(&[
        "watch", "--from", "1", "--output", "json", "--server", &writers,
    ])?;
    let replay = again.wait_revision(last.revision).await?;
    ensure!(replay == sets, "a second watch saw another history");
    drop(again);
    drop(watch);

    // The dead leader can be removed through the CLI (over gRPC), and stays out.
    let out = ok(&writers, &["node", "remove", &leader.id.to_string()]).await?;
    ensure!(
        out.contains(&format!("node {} removed", leader.id)),
        "{out}"
    );
    let dead = c.forget(leader.id)?;
    dead.expect_exit();
    let m = ok_json(&writers, &["cluster", "members"]).await?;
    ensure!(m["voters"].as_array().unwrap().len() == 2, "{m}");
    Ok(())
}

/// Starts a one-node cluster whose admin API needs the tokens in `tokens`.
async fn node_with_tokens(c: &TestCluster, tokens: &str) -> Result<Node> {
    let file = c.dir().join("admin-tokens");
    std::fs::write(&file, tokens)?;
    let spec = c.spec(1)?;
    let mut args = c.init_args(&spec);
    args.extend(["--admin-token-file".into(), file.display().to_string()]);
    let node = Node::spawn(&spec, args, c.http().clone())?;
    wait_for("the node with tokens to lead", ELECTION, || async {
        node.ensure_running()?;
        let l = node.leader().await?;
        ensure!(l.id == 1, "leader {}", l.id);
        Ok(())
    })
    .await?;
    Ok(node)
}

#[tokio::test]
async fn tokens_over_grpc_and_the_cli() -> TestResult {
    const READ: &str = "read-token-rrrrrrrrrrrr";
    const WRITE: &str = "write-token-wwwwwwwwwww";
    let c = TestCluster::new()?;
    let node = node_with_tokens(&c, &format!("read {READ}\nwrite {WRITE}\n")).await?;
    let result = async {
        let addr = node.cluster_addr;
        let mut g = grpc(addr).await?;
        fn req<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            if let Some(t) = token {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            r
        }
        // (token, read allowed, write allowed)
        let matrix = [
            (None, Code::Unauthenticated, Code::Unauthenticated),
            (
                Some("not-a-token-of-this-node"),
                Code::Unauthenticated,
                Code::Unauthenticated,
            ),
            (Some(READ), Code::Ok, Code::PermissionDenied),
            (Some(WRITE), Code::Ok, Code::Ok),
        ];
        let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code()).unwrap_or(Code::Ok);
        let mut n = 0;
        for (token, read, write) in matrix {
            n += 1;
            let r = g
                .list_pools(req(token, admin::ReadRequest::default()))
                .await
                .map(|_| ());
            ensure!(code(r.clone()) == read, "{token:?} read: {r:?}");
            let r = g
                .put_pool(req(
                    token,
                    admin::PutPoolRequest {
                        pool: Some(wire_pool(&format!("p{n}"), &[("a", "127.0.0.1:1")])),
                        if_revision: None,
                    },
                ))
                .await
                .map(|_| ());
            ensure!(code(r.clone()) == write, "{token:?} write: {r:?}");
            let r = g
                .watch(req(token, admin::WatchRequest::default()))
                .await
                .map(|_| ());
            ensure!(code(r.clone()) == read, "{token:?} watch: {r:?}");
            // Leader and Health are open to all.
            g.leader(req(token, admin::LeaderRequest {})).await?;
            let h = g.health(req(token, admin::HealthRequest {})).await?;
            ensure!(h.get_ref().node_id == 1);
        }
        // Only the write token's pool was created.
        let pools = g
            .list_pools(req(Some(READ), admin::ReadRequest::default()))
            .await?
            .into_inner();
        let names: Vec<&str> = pools.pools.iter().map(|p| p.name.as_str()).collect();
        ensure!(names == ["p4"], "{names:?}");

        // The CLI: --token, --token-file, GATEWAY_TOKEN.
        let s = addr.to_string();
        let line = fails(&s, &["pool", "list"], &["--token"]).await?;
        ensure!(line.contains("needs an admin token"), "{line}");
        fails(
            &s,
            &["pool", "list", "--token", "not-a-token-of-this-node"],
            &["does not accept"],
        )
        .await?;
        let out = ok(&s, &["pool", "list", "--token", READ]).await?;
        ensure!(out.contains("p4"), "{out}");
        let line = fails(&s, &["pool", "add", "q", "--token", READ], &["write token"]).await?;
        ensure!(line.contains("may only read"), "{line}");
        let token_file = c.dir().join("my-token");
        std::fs::write(&token_file, format!("{WRITE}\n"))?;
        ok(
            &s,
            &[
                "pool",
                "add",
                "q",
                "--token-file",
                token_file.to_str().unwrap(),
            ],
        )
        .await?;
        // The node's own token file works too (its first token, here the read one).
        let node_file = c.dir().join("admin-tokens");
        ok(
            &s,
            &[
                "cluster",
                "status",
                "--token-file",
                node_file.to_str().unwrap(),
            ],
        )
        .await?;
        let mut cmd = tokio::process::Command::new(gateway_bin()?);
        cmd.args(["route", "list", "--server", &s])
            .env("GATEWAY_TOKEN", READ)
            .env_remove("GATEWAY_SERVER")
            .stdin(Stdio::null());
        let out = tokio::time::timeout(COMMAND, cmd.output()).await??;
        ensure!(
            out.status.success(),
            "GATEWAY_TOKEN was not used: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Leader needs no token from the CLI either.
        let l = ok_json(&s, &["cluster", "leader"]).await?;
        ensure!(l["id"] == 1, "{l}");
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        node.print_log(200);
    }
    Ok(result?)
}

#[tokio::test]
async fn help_and_completions() -> TestResult {
    let out = run_gateway(&["--help"], COMMAND).await?;
    ensure!(
        out.status.success() && out.stdout.contains("gateway route add"),
        "{}",
        out.dump()
    );
    for sub in [
        &["route", "add", "--help"][..],
        &["config", "apply", "--help"],
        &["watch", "--help"],
        &["backend", "add", "--help"],
    ] {
        let out = run_gateway(sub, COMMAND).await?;
        ensure!(
            out.status.success() && out.stdout.contains("Example"),
            "{sub:?}: {}",
            out.dump()
        );
    }
    for (shell, marker) in [
        ("bash", "_gateway()"),
        ("zsh", "#compdef gateway"),
        ("fish", "complete -c gateway"),
    ] {
        let out = run_gateway(&["completions", shell], COMMAND).await?;
        ensure!(
            out.status.success() && out.stdout.contains(marker) && out.stdout.contains("route"),
            "{shell}: {}",
            out.dump()
        );
    }
    // A usage mistake is clap's (exit 2), not a server error.
    let out = run_gateway(&["route", "add"], COMMAND).await?;
    ensure!(out.status.code() == Some(2), "{}", out.dump());
    Ok(())
}
