//! Cluster core, against real `gateway` processes on loopback: election, writes through any
//! node, validation, leader loss, whole-cluster restart, snapshot install on join, membership
//! changes, authentication of joins, and the CLI's failure lines.
//!
//! Every test starts its own cluster on its own ports and directories, so they may run in
//! parallel; they wait on conditions, never on fixed sleeps (the one fixed duration is how long a
//! SIGSTOP fault lasts). Build the binary first:
//! `cargo build -p gateway` (scripts/test.sh does).

use anyhow::{Context, Result, anyhow};
use futures::{StreamExt, TryStreamExt};
use gateway_tests::{
    CATCH_UP, Config, ELECTION, EXIT, Node, TestCluster, TestResult, ensure, note, run_gateway,
    wait_for,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

/// A pool with two loopback backends.
fn pool(port: u16) -> Value {
    json!({
        "balance": "round_robin",
        "backends": [
            {"id": "a", "address": format!("127.0.0.1:{port}")},
            {"id": "b", "address": format!("127.0.0.1:{}", port + 1), "weight": 3},
        ],
    })
}

/// A route for `host` to `pool`.
fn route(host: &str, pool: &str) -> Value {
    json!({"hosts": [host, format!("*.{host}")], "path_prefix": "/", "pool": pool, "writes": "leader"})
}

/// PUT that must succeed: 200, a positive revision in the body equal to X-Gateway-Revision,
/// and the object echoed back under `key`. Returns the revision.
async fn put_ok(node: &Node, path: &str, key: &str, body: &Value) -> Result<u64> {
    let resp = node.put(path, body).await?;
    let v = resp
        .expect_json(200)
        .with_context(|| format!("PUT {path} through node {}", node.id))?;
    let rev = v["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("{resp}: no numeric revision"))?;
    ensure!(rev > 0, "{resp}: revision is 0");
    ensure!(
        resp.revision_header()? == rev,
        "{resp}: X-Gateway-Revision differs from the body's revision"
    );
    let name = path.rsplit('/').next().unwrap_or_default();
    ensure!(
        v[key]["name"] == name,
        "{resp}: the {key} named {name} is not echoed back"
    );
    Ok(rev)
}

/// Waits until `node` runs and its local config has reached revision `rev` (after `what`).
async fn wait_caught_up(node: &Node, rev: u64, what: &str) -> Result<()> {
    wait_for(
        &format!("node {} to catch up after {what}", node.id),
        CATCH_UP,
        || async {
            node.ensure_running()?;
            let cfg = node.config("stale").await?;
            ensure!(cfg.revision >= rev, "revision {}", cfg.revision);
            Ok(())
        },
    )
    .await
}

/// The config through the leader (linearizable).
async fn leader_config(c: &TestCluster) -> Result<Config> {
    let l = c.leader().await?;
    c.node(l.id).config("linearizable").await
}

/// Waits until `node`'s stale read is exactly `want`.
async fn wait_stale_equal(node: &Node, want: &Config) -> Result<()> {
    wait_for(
        &format!(
            "node {}'s stale config to reach revision {}",
            node.id, want.revision
        ),
        CATCH_UP,
        || async {
            let got = node.config("stale").await?;
            ensure!(
                &got == want,
                "node {} has revision {} ({} pools)",
                node.id,
                got.revision,
                got.pools.len()
            );
            Ok(())
        },
    )
    .await
}

#[tokio::test]
async fn election() -> TestResult {
    let c = TestCluster::start(3).await?;
    let leader = c.wait_leader(ELECTION).await?;

    let statuses = wait_for(
        "every /status to name one leader in one term",
        ELECTION,
        || async {
            let mut all = Vec::new();
            for n in c.nodes() {
                all.push(n.status().await?);
            }
            let first = &all[0];
            ensure!(
                first.leader.is_some()
                    && all
                        .iter()
                        .all(|s| s.leader == first.leader && s.term == first.term),
                "leaders/terms: {:?}",
                all.iter()
                    .map(|s| (s.id, s.leader, s.term))
                    .collect::<Vec<_>>()
            );
            Ok(all)
        },
    )
    .await?;
    let leader_id = statuses[0].leader.unwrap();
    let term = statuses[0].term;
    ensure!(
        leader_id == leader.id,
        "/status names {leader_id}, /leader named {}",
        leader.id
    );

    let cluster_ids: BTreeSet<&str> = statuses.iter().map(|s| s.cluster_id.as_str()).collect();
    ensure!(
        cluster_ids.len() == 1 && !cluster_ids.contains(""),
        "cluster ids: {cluster_ids:?}"
    );
    for (n, s) in c.nodes().iter().zip(&statuses) {
        ensure!(s.id == n.id, "node {} says its id is {}", n.id, s.id);
        let want_role = if n.id == leader_id {
            "leader"
        } else {
            "follower"
        };
        ensure!(
            s.role == want_role,
            "node {} has role {}, expected {want_role}",
            n.id,
            s.role
        );
        ensure!(
            s.voter_ids() == BTreeSet::from([1, 2, 3]),
            "node {}: voters {:?}",
            n.id,
            s.voter_ids()
        );
        ensure!(
            s.learners.is_empty(),
            "node {}: learners {:?}",
            n.id,
            s.learners
        );
        ensure!(
            s.applied_index <= s.committed_index && s.committed_index <= s.last_log_index,
            "node {}: {s:?}",
            n.id
        );
        for m in &s.voters {
            let want = c.node(m.id);
            ensure!(
                m.cluster_addr == want.cluster_addr.to_string()
                    && m.admin_addr == want.admin_addr.to_string()
                    && m.http_addr == want.http_addr.to_string(),
                "node {} lists voter {m:?}, whose addresses are {} {} {}",
                n.id,
                want.cluster_addr,
                want.admin_addr,
                want.http_addr
            );
        }
        // The leader knows its followers' progress.
        if n.id == leader_id {
            ensure!(
                s.voters.iter().all(|m| m.matched_index.is_some()),
                "leader lacks matched_index: {s:?}"
            );
        }

        let l = n.leader().await?;
        ensure!(
            l.id == leader_id && l.term == term,
            "node {}'s /leader says {l:?}",
            n.id
        );
        let ln = c.node(leader_id);
        ensure!(
            l.cluster_addr == ln.cluster_addr.to_string()
                && l.admin_addr == ln.admin_addr.to_string(),
            "node {}'s /leader gives addresses {l:?}",
            n.id
        );

        let h = n.get("/healthz").await?;
        h.expect(200)?;
        ensure!(h.text().trim() == "ok", "{h}");
        // Ready once this node has applied what is committed: a write the cluster makes of
        // itself right after forming (a health report) can leave it one entry behind for a
        // moment.
        wait_for("/readyz to answer ready", ELECTION, || async {
            let r = n.get("/readyz").await?;
            r.expect(200)?;
            ensure!(r.text().trim() == "ready", "{r}");
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn write_through_a_follower() -> TestResult {
    let c = TestCluster::start(3).await?;
    let f = c.follower().await?;
    note!("writing through follower {}", f.id);

    let pool_rev = put_ok(f, "/v1/pools/web", "pool", &pool(9001)).await?;
    let route_rev = put_ok(f, "/v1/routes/app", "route", &route("example.com", "web")).await?;
    ensure!(
        route_rev > pool_rev,
        "revisions {pool_rev} then {route_rev}"
    );

    // Linearizable (default) reads on every node see the acknowledged writes at once.
    for n in c.nodes() {
        let r = n.get("/v1/routes/app").await?;
        let v = r.expect_json(200)?;
        ensure!(
            v["revision"].as_u64() >= Some(route_rev),
            "node {}: {r}",
            n.id
        );
        ensure!(
            r.revision_header()? == v["revision"].as_u64().unwrap(),
            "node {}: {r}",
            n.id
        );
        let rt = &v["route"];
        ensure!(
            rt["pool"] == "web" && rt["hosts"] == json!(["example.com", "*.example.com"]),
            "node {}: {r}",
            n.id
        );
        ensure!(
            rt["writes"] == "leader" && rt["path_prefix"] == "/",
            "node {}: {r}",
            n.id
        );
        ensure!(
            rt["revision"] == route_rev,
            "node {}: route revision is not {route_rev}: {r}",
            n.id
        );

        let r = n.get("/v1/pools/web").await?;
        let v = r.expect_json(200)?;
        r.revision_header()?;
        let backends = v["pool"]["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(backends.len() == 2, "node {}: {r}", n.id);
        ensure!(
            backends[1]["weight"] == 3 && backends[0]["address"] == "127.0.0.1:9001",
            "node {}: {r}",
            n.id
        );
        ensure!(
            v["pool"]["revision"] == pool_rev,
            "node {}: pool revision is not {pool_rev}: {r}",
            n.id
        );

        let cfg = n.config("linearizable").await?;
        ensure!(
            cfg.revision >= route_rev && cfg.pool("web").is_some() && cfg.route("app").is_some(),
            "node {}: {cfg:?}",
            n.id
        );

        let r = n.get("/v1/pools").await?;
        let v = r.expect_json(200)?;
        r.revision_header()?;
        ensure!(
            v["pools"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["name"] == "web")),
            "node {}: {r}",
            n.id
        );
        let r = n.get("/v1/routes").await?;
        let v = r.expect_json(200)?;
        r.revision_header()?;
        ensure!(
            v["routes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["name"] == "app")),
            "node {}: {r}",
            n.id
        );
        let r = n.get("/v1/nodes").await?;
        let v = r.expect_json(200)?;
        r.revision_header()?;
        ensure!(
            v["voters"].as_array().map(Vec::len) == Some(3),
            "node {}: {r}",
            n.id
        );
    }

    // Stale reads converge on every node.
    for n in c.nodes() {
        wait_for(
            &format!("node {}'s stale read to show route app", n.id),
            CATCH_UP,
            || async {
                let r = n.get("/v1/routes/app?consistency=stale").await?;
                r.revision_header()?;
                let v = r.expect_json(200)?;
                ensure!(v["route"]["pool"] == "web", "{r}");
                let cfg = n.config("stale").await?;
                ensure!(cfg.revision >= route_rev, "stale revision {}", cfg.revision);
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() -> TestResult {
    let c = TestCluster::start(3).await?;
    let l = c.wait_leader(ELECTION).await?;
    let f = c.other_than(&[l.id])?;
    put_ok(f, "/v1/pools/web", "pool", &pool(9001)).await?;
    put_ok(f, "/v1/routes/app", "route", &route("example.com", "web")).await?;
    let before = leader_config(&c).await?;

    // (path, body, the field the error must name)
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("/v1/pools/broken", r#"{"backends": ["#.into(), None),
        ("/v1/pools/broken", "this is not json".into(), None),
        ("/v1/pools/broken", r#"{"backends": "127.0.0.1:80"}"#.into(), None),
        ("/v1/routes/r2", json!({"pool": "nope"}).to_string(), Some("pool")),
        (
            "/v1/pools/p3",
            json!({"backends": [{"id": "a", "address": "not an address"}]}).to_string(),
            Some("backends[0].address"),
        ),
        (
            "/v1/pools/p3",
            json!({"backends": [{"id": "a", "address": "127.0.0.1:1"}, {"id": "b", "address": "127.0.0.1:0"}]})
                .to_string(),
            Some("backends[1].address"),
        ),
        ("/v1/routes/r3", json!({"hosts": [""], "pool": "web"}).to_string(), Some("hosts[0]")),
        ("/v1/pools/p4", json!({"name": "other"}).to_string(), Some("name")),
        ("/v1/routes/r4", json!({"name": "other", "pool": "web"}).to_string(), Some("name")),
        ("/v1/pools/bad%20name", json!({}).to_string(), Some("name")),
    ];
    // Every case is tried through a follower and the leader; all problems are reported together.
    let mut problems = Vec::new();
    for node in [f, c.node(l.id)] {
        for (path, body, field) in &cases {
            let r = node.put_raw(path, body).await?;
            let mut wrong = Vec::new();
            match r.expect_json(400) {
                Err(e) => wrong.push(format!("{e:#}")),
                Ok(v) => {
                    let err = v["error"].as_str().unwrap_or_default();
                    if err.trim().is_empty() {
                        wrong.push("no \"error\" text".into());
                    }
                    if let Some(field) = field {
                        if !err.contains(field) {
                            wrong.push(format!("the error does not name the field {field}"));
                        }
                        if v["field"] != *field {
                            wrong.push(format!("\"field\" is not {field}"));
                        }
                    }
                }
            }
            if !wrong.is_empty() {
                problems.push(format!("node {}: {r}\n      {}", node.id, wrong.join("; ")));
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "bad input handled wrongly:\n  {}",
        problems.join("\n  ")
    );

    // A pool used by a route cannot go; missing objects are 404.
    let r = f.delete("/v1/pools/web").await?;
    let v = r.expect_json(409)?;
    ensure!(
        v["error"].as_str().is_some_and(|e| e.contains("app")),
        "the 409 does not name the route: {r}"
    );
    f.delete("/v1/pools/missing").await?.expect(404)?;
    f.delete("/v1/routes/missing").await?.expect(404)?;
    let r = f.get("/v1/pools/missing").await?;
    ensure!(r.expect_json(404)?["error"].is_string(), "{r}");
    f.get("/v1/routes/missing").await?.expect(404)?;

    // Nothing changed, on any node.
    for n in c.nodes() {
        let after = n.config("linearizable").await?;
        ensure!(
            after == before,
            "node {}: config changed by refused requests:\nbefore {before:?}\nafter  {after:?}",
            n.id
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_admin_response_carries_the_revision() -> TestResult {
    let c = TestCluster::start(1).await?;
    let n = c.node(1);
    let rev = put_ok(n, "/v1/pools/web", "pool", &pool(9001)).await?;
    let mut requests = Vec::new();
    for path in [
        "/leader",
        "/status",
        "/healthz",
        "/readyz",
        "/v1/config",
        "/v1/config?consistency=stale",
        "/v1/pools",
        "/v1/pools/web",
        "/v1/routes",
        "/v1/nodes",
        "/v1/pools/missing",
        "/v1/no-such-endpoint",
    ] {
        requests.push(n.get(path).await?);
    }
    requests.push(n.put_raw("/v1/pools/broken", "{").await?);
    requests.push(n.put("/v1/pools/p", &json!({"name": "other"})).await?);
    requests.push(n.put("/v1/routes/r", &json!({"pool": "missing"})).await?);
    requests.push(n.delete("/v1/pools/missing").await?);
    let missing: Vec<String> = requests
        .iter()
        .filter(|r| r.revision_header().ok() != Some(rev))
        .map(|r| {
            format!(
                "{r}  [X-Gateway-Revision: {:?}]",
                r.header("x-gateway-revision")
            )
        })
        .collect();
    ensure!(
        missing.is_empty(),
        "responses without X-Gateway-Revision: {rev}:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

#[tokio::test]
async fn leader_killed_new_leader_and_restarted_node_catches_up() -> TestResult {
    let c = TestCluster::start(3).await?;
    let old = c.wait_leader(ELECTION).await?;
    put_ok(c.node(old.id), "/v1/pools/before", "pool", &pool(9001)).await?;

    c.node(old.id).kill()?;
    let new = c.wait_leader(ELECTION).await?;
    ensure!(
        new.id != old.id,
        "the killed node {} is still named leader",
        old.id
    );
    ensure!(
        new.term > old.term,
        "new leader's term {} is not above {}",
        new.term,
        old.term
    );
    let survivor = c.other_than(&[old.id, new.id])?;
    note!(
        "old leader {}, new leader {}, writing through {}",
        old.id,
        new.id,
        survivor.id
    );
    let rev = put_ok(survivor, "/v1/pools/after", "pool", &pool(9003)).await?;
    let cfg = c.node(new.id).config("linearizable").await?;
    ensure!(
        cfg.pool("after").is_some() && cfg.pool("before").is_some(),
        "{cfg:?}"
    );

    let back = c.node(old.id);
    back.restart()?;
    wait_for(
        &format!(
            "restarted node {} to show the write in a stale read",
            old.id
        ),
        CATCH_UP,
        || async {
            back.ensure_running()?;
            let cfg = back.config("stale").await?;
            ensure!(
                cfg.pool("after").is_some() && cfg.revision >= rev,
                "revision {}",
                cfg.revision
            );
            Ok(())
        },
    )
    .await?;
    c.wait_ready().await?;
    let l = c.wait_leader(ELECTION).await?;
    ensure!(
        back.status().await?.leader == Some(l.id),
        "the restarted node does not follow the leader"
    );
    Ok(())
}

#[tokio::test]
async fn whole_cluster_killed_and_restarted_keeps_its_state() -> TestResult {
    let c = TestCluster::start(3).await?;
    let ids = c.ids();
    for i in 0..5u16 {
        let n = c.node(ids[i as usize % ids.len()]);
        put_ok(n, &format!("/v1/pools/p{i}"), "pool", &pool(9000 + 2 * i)).await?;
    }
    for i in 0..3u16 {
        let n = c.node(ids[(i as usize + 1) % ids.len()]);
        put_ok(
            n,
            &format!("/v1/routes/r{i}"),
            "route",
            &route(&format!("app{i}.example.com"), &format!("p{i}")),
        )
        .await?;
    }
    c.node(ids[2]).delete("/v1/pools/p4").await?.expect(200)?;
    let before = leader_config(&c).await?;
    ensure!(
        before.pools.len() == 4 && before.routes.len() == 3,
        "{before:?}"
    );

    // kill -9 right after the last acknowledgement: what was acknowledged must be on disk.
    for n in c.nodes() {
        n.kill()?;
    }
    for n in c.nodes() {
        n.restart()?;
    }
    c.wait_leader(ELECTION).await?;
    c.wait_ready().await?;
    for n in c.nodes() {
        let after = wait_for(
            &format!("node {} to answer a linearizable read", n.id),
            CATCH_UP,
            || async { n.config("linearizable").await },
        )
        .await?;
        ensure!(
            after == before,
            "node {} lost state:\nbefore {before:?}\nafter  {after:?}",
            n.id
        );
        wait_stale_equal(n, &before).await?;
    }
    let rev = put_ok(c.node(ids[0]), "/v1/pools/later", "pool", &pool(9100)).await?;
    ensure!(
        rev == before.revision + 1,
        "revision after restart is {rev}, expected {}",
        before.revision + 1
    );
    Ok(())
}

#[tokio::test]
async fn node_joining_after_log_purge_gets_a_snapshot() -> TestResult {
    // Snapshots every 500 entries (the default is 100,000), so a few thousand writes purge.
    let mut c = TestCluster::start_with(
        3,
        Box::new(|_| vec!["--snapshot-every".into(), "500".into()]),
    )
    .await?;
    let ids = c.ids();
    let mut written = 0usize;
    let mut purged = None;
    // The nodes snapshot every 500 entries and purge what is 500 entries behind the snapshot,
    // so the log must reach 1000 entries. Concurrent writes share entries (3-4 per entry were
    // seen), so write in batches until the leader has purged some of its log (4000 is expected
    // to be enough), at most 12000.
    while written < 12000 {
        let batch = if written == 0 { 4000 } else { 1000 };
        futures::stream::iter(written..written + batch)
            .map(|i| {
                let n = c.node(ids[i % ids.len()]);
                async move {
                    let body = json!({"backends": [{"id": "a", "address": format!("127.0.0.1:{}", 10000 + i)}]});
                    n.put(&format!("/v1/pools/snap-{}", i % 25), &body)
                        .await?
                        .expect(200)
                        .map(|_| ())
                        .with_context(|| format!("write {i} through node {}", n.id))
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        written += batch;
        note!("{written} writes done");
        let found = wait_for(
            "the leader to report a purged log",
            Duration::from_secs(10),
            || async {
                let s = c.leader_status().await?;
                match s.purged_index {
                    Some(p) if p > 0 => Ok(p),
                    other => Err(anyhow!(
                        "purged_index {other:?}, snapshot_index {:?}, last_log_index {}",
                        s.snapshot_index,
                        s.last_log_index
                    )),
                }
            },
        )
        .await;
        match found {
            Ok(p) => {
                purged = Some(p);
                break;
            }
            Err(e) => note!("{e:#}"),
        }
    }
    let purged =
        purged.ok_or_else(|| anyhow!("the leader never purged its log after {written} writes"))?;
    note!("leader purged up to {purged} after {written} writes");
    if written > 4000 {
        note!("NOTE: purging needed {written} writes, more than the 4000 expected");
    }

    let want = leader_config(&c).await?;
    ensure!(want.pools.len() == 25, "{} pools", want.pools.len());
    c.join(4).await?;
    let n4 = c.node(4);
    wait_stale_equal(n4, &want).await?;
    ensure!(
        n4.config("linearizable").await? == want,
        "node 4's linearizable read differs"
    );
    c.wait_ready().await?;
    let s4 = n4.status().await?;
    ensure!(
        s4.snapshot_index.is_some(),
        "node 4 caught up without a snapshot? {s4:?}"
    );
    ensure!(s4.role == "follower", "node 4 is {}", s4.role);
    Ok(())
}

#[tokio::test]
async fn removed_node_stays_out_and_learner_joins() -> TestResult {
    let mut c = TestCluster::start(3).await?;
    let l = c.wait_leader(ELECTION).await?;
    let others: Vec<u64> = c.ids().into_iter().filter(|&id| id != l.id).collect();
    let (keep, victim) = (others[0], others[1]);
    put_ok(c.node(l.id), "/v1/pools/kept", "pool", &pool(9001)).await?;

    let server = c.node(keep).cluster_addr.to_string();
    let out = run_gateway(
        &["node", "remove", &victim.to_string(), "--server", &server],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        out.status.success(),
        "`gateway node remove {victim}` failed:\n{}",
        out.dump()
    );
    let gone = c.forget(victim)?;
    gone.expect_exit();
    for n in c.nodes() {
        wait_for(
            &format!("node {} to drop node {victim} from membership", n.id),
            CATCH_UP,
            || async {
                let s = n.status().await?;
                ensure!(
                    !s.member_ids().contains(&victim)
                        && s.voter_ids() == BTreeSet::from([l.id, keep]),
                    "voters {:?}, learners {:?}",
                    s.voter_ids(),
                    s.learner_ids()
                );
                let r = n.get("/v1/nodes").await?;
                let v = r.expect_json(200)?;
                let listed = |k: &str| {
                    v[k].as_array()
                        .is_some_and(|a| a.iter().any(|m| m["id"] == victim))
                };
                ensure!(!listed("voters") && !listed("learners"), "{r}");
                Ok(())
            },
        )
        .await?;
    }
    drop(gone);

    // The retired id can never come back.
    let spec = c.spec(victim)?;
    let out = run_gateway(
        &c.join_args(&spec, false, &c.secret_file),
        Duration::from_secs(60),
    )
    .await?;
    let line = out.expect_error_line()?;
    ensure!(
        line.split(|ch: char| !ch.is_ascii_digit())
            .any(|t| t == victim.to_string()),
        "the error line does not name the retired id {victim}: {line}"
    );
    note!("rejoin with retired id {victim} refused: {line}");
    let s = c.leader_status().await?;
    ensure!(
        !s.member_ids().contains(&victim),
        "the refused id is a member again: {s:?}"
    );

    // A learner: no vote, but it knows the leader and serves the config.
    c.join_learner(4).await?;
    c.wait_ready().await?;
    let n4 = c.node(4);
    let s4 = n4.status().await?;
    ensure!(s4.role == "learner", "node 4's role is {}", s4.role);
    ensure!(
        s4.voter_ids() == BTreeSet::from([l.id, keep]) && s4.learner_ids() == BTreeSet::from([4]),
        "{s4:?}"
    );
    let leader = c.wait_leader(ELECTION).await?;
    ensure!(
        n4.leader().await?.id == leader.id,
        "the learner names another leader"
    );
    ensure!(leader.id != 4, "a learner leads");
    let want = leader_config(&c).await?;
    let cfg = n4.get("/v1/config").await?;
    ensure!(
        cfg.parse::<Config>()? == want,
        "the learner's default read differs from the leader's: {cfg}"
    );
    wait_stale_equal(n4, &want).await?;
    // Writes sent to a learner are forwarded to the leader too.
    let rev = put_ok(n4, "/v1/pools/via-learner", "pool", &pool(9005)).await?;
    ensure!(
        n4.config("linearizable")
            .await?
            .pool("via-learner")
            .is_some()
            && rev > want.revision
    );
    Ok(())
}

#[tokio::test]
async fn join_with_the_wrong_secret_is_refused() -> TestResult {
    let c = TestCluster::start(1).await?;
    let other = c.dir().join("other-secret");
    c.write_secret(&other)?;
    let spec = c.spec(2)?;
    let out = run_gateway(&c.join_args(&spec, false, &other), Duration::from_secs(60)).await?;
    let line = out.expect_error_line()?;
    note!("refused with: {line}");
    let s = c.node(1).status().await?;
    ensure!(
        s.voter_ids() == BTreeSet::from([1]) && s.learners.is_empty(),
        "membership changed: {s:?}"
    );
    c.wait_ready().await?;
    Ok(())
}

#[tokio::test]
async fn stopped_follower_and_graceful_stop() -> TestResult {
    let c = TestCluster::start(3).await?;
    let f = c.follower().await?;
    f.pause()?;
    let l = c.wait_leader(ELECTION).await?;
    ensure!(l.id != f.id, "a stopped node leads");
    let rev = put_ok(c.node(l.id), "/v1/pools/while-stopped", "pool", &pool(9001)).await?;
    f.resume()?;
    wait_caught_up(f, rev, "SIGCONT").await?;

    let st = f.stop(EXIT).await?;
    ensure!(st.success(), "node {} exited with {st} on SIGTERM", f.id);
    let rev = put_ok(c.node(l.id), "/v1/pools/while-down", "pool", &pool(9003)).await?;
    f.restart()?;
    wait_caught_up(f, rev, "a restart").await?;
    c.wait_ready().await?;
    Ok(())
}

/// Zero timings and thread counts are refused at start with one line naming the flag, before
/// anything is written.
#[tokio::test]
async fn zero_timings_are_one_error_line() -> TestResult {
    let c = TestCluster::new()?;
    for flag in [
        "--keep-alive-timeout-ms",
        "--snapshot-every",
        "--heartbeat-ms",
        "--workers",
        "--control-threads",
    ] {
        let spec = c.spec(1)?;
        let mut args = c.init_args(&spec);
        args.extend([flag.to_string(), "0".to_string()]);
        let out = run_gateway(&args, EXIT).await?;
        let line = out.expect_error_naming(&[flag])?;
        note!("{flag} 0: {line}");
        ensure!(
            !spec.data_dir.join("db").exists(),
            "{flag} 0 was refused but the data dir was created"
        );
    }
    Ok(())
}

#[tokio::test]
async fn address_in_use_is_one_error_line() -> TestResult {
    let c = TestCluster::new()?;
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?.to_string();
    for flag in ["--cluster-addr", "--admin-addr"] {
        let spec = c.spec(1)?;
        let mut args = c.init_args(&spec);
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = taken_addr.clone();
        let out = run_gateway(&args, EXIT).await?;
        let line = out.expect_error_naming(&[&taken_addr])?;
        note!("{flag} in use: {line}");
    }
    drop(taken);
    Ok(())
}

#[tokio::test]
async fn join_with_unreachable_peers_fails_in_bounded_time() -> TestResult {
    let c = TestCluster::new()?;
    let spec = c.spec(2)?;
    let mut args = c.join_args(&spec, false, &c.secret_file);
    let i = args.iter().position(|a| a == "--peers").unwrap();
    // Free ports: nothing listens there.
    args[i + 1] = format!(
        "{},{}",
        gateway_tests::free_addr()?,
        gateway_tests::free_addr()?
    );
    let out = run_gateway(&args, EXIT).await?;
    let line = out.expect_error_line()?;
    ensure!(out.elapsed < EXIT, "took {:?}", out.elapsed);
    note!(
        "unreachable peers: {line} (after {:.1}s)",
        out.elapsed.as_secs_f64()
    );
    Ok(())
}

#[tokio::test]
async fn data_dir_in_use_by_a_running_node_is_refused() -> TestResult {
    let c = TestCluster::start(1).await?;
    let n1 = c.node(1);
    let dir = n1.data_dir.display().to_string();
    let spec = c.spec(1)?;
    let mut args = vec!["serve".to_string(), "--data-dir".into(), dir.clone()];
    args.extend(spec.addr_args());
    let out = run_gateway(&args, EXIT).await?;
    let line = out.expect_error_naming(&["lock", &dir, "in use", "another", "running"])?;
    note!("locked data dir: {line}");
    // The running node is unharmed.
    c.wait_ready().await?;
    put_ok(n1, "/v1/pools/still-works", "pool", &pool(9001)).await?;
    Ok(())
}

#[tokio::test]
async fn data_dir_of_another_cluster_is_refused() -> TestResult {
    // Cluster a: node 1, stopped. Cluster b: node 5 (so that id 1 is free in b).
    let a = TestCluster::start(1).await?;
    put_ok(a.node(1), "/v1/pools/of-a", "pool", &pool(9001)).await?;
    a.node(1).stop(EXIT).await?;
    let mut b = TestCluster::new()?;
    b.init(5).await?;
    b.wait_ready().await?;
    let a_dir = a.node(1).data_dir.display().to_string();

    // Joining b with a's data dir, under the id that dir holds and under another id.
    for (id, naming) in [(1, vec!["cluster"]), (2, vec!["cluster", a_dir.as_str()])] {
        let spec = b.spec(id)?;
        let mut args = b.join_args(&spec, false, &b.secret_file);
        let i = args.iter().position(|x| x == "--data-dir").unwrap();
        args[i + 1] = a_dir.clone();
        let out = run_gateway(&args, Duration::from_secs(60)).await?;
        let line = out.expect_error_naming(&naming)?;
        note!("data dir of another cluster, --id {id}: {line}");
        let s = b.node(5).status().await?;
        ensure!(
            s.voter_ids() == BTreeSet::from([5]) && s.learners.is_empty(),
            "cluster b changed: {s:?}"
        );
        let cfg = b.node(5).config("linearizable").await?;
        ensure!(cfg.pool("of-a").is_none(), "cluster b has a's pool");
    }

    // Cluster a's node still starts from its own data dir, its state intact.
    a.node(1).restart()?;
    a.wait_ready().await?;
    let s = a.node(1).status().await?;
    ensure!(
        s.voter_ids() == BTreeSet::from([1]),
        "cluster a's membership changed: {s:?}"
    );
    let cfg = a.node(1).config("linearizable").await?;
    ensure!(cfg.pool("of-a").is_some(), "cluster a lost its pool");
    Ok(())
}

#[tokio::test]
async fn usage_errors_exit_2() -> TestResult {
    for args in [
        vec!["serve", "--no-such-flag"],
        vec![],
        vec!["no-such-command"],
    ] {
        let out = run_gateway(&args, EXIT).await?;
        ensure!(
            out.status.code() == Some(2),
            "`gateway {}` exited {}\n{}",
            args.join(" "),
            out.status,
            out.dump()
        );
    }
    Ok(())
}

/// Pre-vote: a follower that was cut off for longer than the election timeout (SIGSTOP: no
/// heartbeats reach it, and its own election timer runs out), or that was killed and restarted,
/// comes back without raising the term, so the leader it returns to keeps leading. Without the
/// pre-vote it campaigned at once on its return with a higher term, and the leader, seeing that
/// term in the follower's replies, stepped down.
#[tokio::test]
async fn a_returning_follower_does_not_depose_the_leader() -> TestResult {
    let c = TestCluster::start(3).await?;
    let before = c.wait_leader(ELECTION).await?;
    for round in 0..4 {
        // Alternate the two followers, so both the first- and the second-ranked campaign.
        let followers: Vec<&Node> = c.live().filter(|n| n.id != before.id).collect();
        let f = followers[round % followers.len()];
        if round < 3 {
            f.pause()?;
            // The fault itself lasts 1 s: four times the first-ranked voter's election wait
            // (250 ms of silence by default), so the stopped node's timer has run out when it
            // resumes.
            tokio::time::sleep(Duration::from_secs(1)).await;
            f.resume()?;
        } else {
            f.kill()?;
            f.restart()?;
        }
        let rev = put_ok(
            c.node(before.id),
            &format!("/v1/pools/after-return-{round}"),
            "pool",
            &pool(9100 + round as u16),
        )
        .await?;
        wait_caught_up(f, rev, "coming back").await?;
        let now = c.wait_leader(ELECTION).await?;
        ensure!(
            now.id == before.id && now.term == before.term,
            "round {round}: node {} came back and leadership moved from node {} (term {}) to node {} (term {})",
            f.id,
            before.id,
            before.term,
            now.id,
            now.term
        );
    }
    Ok(())
}

/// Concurrent writes through the leader and a follower are committed in groups (several per log
/// entry) and each still gets its own answer: its own revision, every one distinct, and every
/// object stored on every node.
#[tokio::test]
async fn concurrent_writes_are_grouped_and_each_answered() -> TestResult {
    let c = TestCluster::start(3).await?;
    let l = c.wait_leader(ELECTION).await?;
    let f = c.follower().await?;
    let before = c.node(l.id).status().await?;
    const N: u16 = 120;
    let writes = futures::stream::iter(0..N)
        .map(|i| {
            let node = if i % 2 == 0 { c.node(l.id) } else { f };
            async move {
                put_ok(
                    node,
                    &format!("/v1/pools/grouped-{i}"),
                    "pool",
                    &pool(10_000 + i),
                )
                .await
            }
        })
        .buffer_unordered(N as usize)
        .try_collect::<Vec<u64>>()
        .await?;
    let revisions: BTreeSet<u64> = writes.iter().copied().collect();
    ensure!(
        revisions.len() == N as usize,
        "{} distinct revisions for {N} writes",
        revisions.len()
    );
    let after = c.node(l.id).status().await?;
    let revisions_used = after.revision - before.revision;
    let entries_used = after.last_log_index - before.last_log_index;
    ensure!(
        revisions_used == N as u64,
        "the revision moved by {revisions_used} for {N} writes"
    );
    ensure!(
        entries_used < N as u64,
        "{N} concurrent writes took {entries_used} log entries: none were grouped"
    );
    note!("{N} concurrent writes committed in {entries_used} log entries");
    let want = leader_config(&c).await?;
    for n in c.live() {
        wait_stale_equal(n, &want).await?;
    }
    ensure!(
        (0..N).all(|i| want.pool(&format!("grouped-{i}")).is_some()),
        "a pool is missing"
    );
    Ok(())
}
