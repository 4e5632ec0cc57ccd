//! One test run: start the cluster, run clients and nemesis, heal, check convergence, read
//! the set back from every node, check the history, write the results.

use crate::checker::{self, Analysis, CheckOptions};
use crate::db::{Db, DbOptions, Life, ids};
use crate::history::{Op, Process, Recorder, Type};
use crate::http;
use crate::nemesis::{self, Nemesis, NemesisOptions};
use crate::net::{Net, NetStats};
use crate::workload::{Clients, POOL, WorkloadOptions};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub time: Duration,
    pub nemesis: Vec<String>,
    pub bin: PathBuf,
    pub debug_stale_reads: bool,
    /// Results go here (created).
    pub out: PathBuf,
    pub seed: u64,
    pub concurrency: usize,
    pub keys: usize,
    pub ops_per_key: usize,
    pub set_max: u64,
    pub stagger: Duration,
    pub timeout: Duration,
    pub quiet: (Duration, Duration),
    pub hold: (Duration, Duration),
    /// Bound on convergence after healing.
    pub converge: Duration,
    /// Keep data dirs even when the run passes.
    pub keep_data: bool,
    /// Keep data dirs when the run fails (for a post-mortem).
    pub keep_data_if_invalid: bool,
    /// Print progress lines on stderr.
    pub verbose: bool,
    pub check: CheckOptions,
}

/// The workspace root (this package lives in `<root>/jepsen`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$GATEWAY_BIN`, else `target/debug/gateway` under `$CARGO_TARGET_DIR` or the workspace.
pub fn default_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    };
    target.join("debug").join("gateway")
}

impl Options {
    /// Defaults for `nodes` nodes and `secs` seconds, every nemesis.
    pub fn new(nodes: usize, secs: u64) -> Options {
        Options::with_seed(nodes, secs, rand::random::<u32>() as u64)
    }

    /// Defaults with a given seed (results in `target/jepsen/run-<time>-<seed>`).
    pub fn with_seed(nodes: usize, secs: u64, seed: u64) -> Options {
        Options {
            nodes,
            time: Duration::from_secs(secs),
            nemesis: nemesis::ALL.iter().map(|s| s.to_string()).collect(),
            bin: default_bin(),
            debug_stale_reads: false,
            out: workspace_root()
                .join("target")
                .join("jepsen")
                .join(format!("run-{}-{seed}", unix_secs())),
            seed,
            concurrency: 2 * nodes,
            keys: 2,
            ops_per_key: 200,
            set_max: 3000,
            stagger: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            quiet: (Duration::from_secs(2), Duration::from_secs(5)),
            hold: (Duration::from_secs(3), Duration::from_secs(8)),
            converge: Duration::from_secs(90),
            keep_data: false,
            keep_data_if_invalid: true,
            verbose: true,
            check: CheckOptions::default(),
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a run produced.
pub struct Report {
    pub dir: PathBuf,
    pub history: PathBuf,
    pub analysis: Analysis,
    pub net: NetStats,
    pub faults: BTreeMap<String, usize>,
    pub text: String,
}

impl Report {
    pub fn valid(&self) -> bool {
        self.analysis.valid()
    }
}

macro_rules! progress {
    ($opts:expr, $rec:expr, $($arg:tt)*) => {
        if $opts.verbose {
            eprintln!("[jepsen {:7.1}s] {}", $rec.now() as f64 / 1e9, format!($($arg)*));
        }
    };
}

/// Runs the test and checks it.
pub async fn run(mut opts: Options) -> Result<Report> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    opts.out = std::fs::canonicalize(&opts.out)?;
    let history_path = opts.out.join("history.jsonl");
    let rec = Arc::new(Recorder::new(Some(&history_path))?);
    let net = Net::new();
    let db = Arc::new(Db::new(
        DbOptions {
            bin: opts.bin.clone(),
            dir: opts.out.clone(),
            debug_stale_reads: opts.debug_stale_reads,
            log_filter: std::env::var("JEPSEN_NODE_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
            request_timeout: Duration::from_secs(3),
        },
        net.clone(),
        rec.clone(),
    )?);
    if let Some(parent) = opts.out.parent() {
        let latest = parent.join("latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&opts.out, &latest);
    }
    progress!(
        opts,
        rec,
        "{} nodes, {:?}, nemesis {:?}, seed {}, results in {}",
        opts.nodes,
        opts.time,
        opts.nemesis,
        opts.seed,
        opts.out.display()
    );

    setup(&opts, &db, &rec)
        .await
        .context("setting up the cluster")?;
    progress!(
        opts,
        rec,
        "cluster of {} ready: {:?}",
        opts.nodes,
        db.members()
    );

    // Clients, observer, nemesis, crash monitor.
    let deadline = Instant::now() + opts.time;
    let clients = Clients::new(
        db.clone(),
        rec.clone(),
        WorkloadOptions {
            concurrency: opts.concurrency,
            keys: opts.keys,
            ops_per_key: opts.ops_per_key,
            max_info_per_key: 12,
            set_workers: 1,
            set_max: opts.set_max,
            stagger: opts.stagger,
            timeout: opts.timeout,
            observe_every: Duration::from_millis(250),
        },
    );
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        tasks.spawn(clients.clone().register_worker(
            w,
            opts.seed ^ ((w as u64 + 1) * 7919),
            deadline,
        ));
    }
    tasks.spawn(clients.clone().set_worker(0, opts.seed ^ 0x5e7, deadline));
    tasks.spawn(clients.clone().observer(deadline));
    let mut nem = Nemesis::new(
        db.clone(),
        rec.clone(),
        NemesisOptions {
            enabled: opts.nemesis.clone(),
            quiet: opts.quiet,
            hold: opts.hold,
            nodes: opts.nodes,
            election_max: Duration::from_millis(300),
        },
        opts.seed ^ 0x4e4e,
    );
    let monitor = {
        let db = db.clone();
        tokio::spawn(async move {
            loop {
                db.check_crashes();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let progress_task = {
        let rec = rec.clone();
        let verbose = opts.verbose;
        let db = db.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if verbose {
                    let (done, last_fault) = rec.progress();
                    eprintln!(
                        "[jepsen {:7.1}s] {done} operations completed; members {:?}; last nemesis: {last_fault}",
                        rec.now() as f64 / 1e9,
                        db.members()
                    );
                }
            }
        })
    };
    nem.run(deadline).await;
    progress!(opts, rec, "time is up; waiting for clients");
    while tasks.join_next().await.is_some() {}
    progress_task.abort();

    // Heal everything and let the cluster settle.
    heal_all(&db, &rec).await;
    progress!(
        opts,
        rec,
        "healed; members {:?}; checking convergence",
        db.members()
    );
    let converged = converge(&opts, &db, &rec).await;
    progress!(
        opts,
        rec,
        "convergence: {}",
        if converged { "yes" } else { "NO" }
    );
    final_reads(&db, &rec).await;
    db.check_crashes();
    monitor.abort();
    let net_stats = net.stats();
    let data_dirs = db.data_dirs();
    db.teardown();
    rec.flush();

    progress!(opts, rec, "checking the history");
    let history = rec.snapshot();
    let analysis = checker::analyse(&history, &opts.check);
    let faults = analysis.stats.faults.clone();
    let text = summary(&opts, &history_path, &analysis, &net_stats, history.len());
    std::fs::write(opts.out.join("summary.txt"), &text)?;
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_vec_pretty(&json!({
            "command": command_line(&opts),
            "valid": analysis.valid(),
            "seed": opts.seed,
            "stats": analysis.stats,
            "checkers": analysis.results,
            "gaps": analysis.gaps,
            "elections": analysis.elections,
            "faults": faults,
            "net": net_stats,
        }))?,
    )?;
    let keep = if analysis.valid() {
        opts.keep_data
    } else {
        opts.keep_data_if_invalid
    };
    if !keep {
        for d in data_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        // The pinned copy of the binary (a hard link, or a copy if linking failed).
        let _ = std::fs::remove_file(opts.out.join("gateway"));
    }
    Ok(Report {
        dir: opts.out.clone(),
        history: history_path,
        analysis,
        net: net_stats,
        faults,
        text,
    })
}

fn command_line(o: &Options) -> String {
    let mut s = format!(
        "cargo run -p jepsen -- --nodes {} --time {} --nemesis {} --seed {}",
        o.nodes,
        o.time.as_secs(),
        if o.nemesis.is_empty() {
            "none".into()
        } else {
            o.nemesis.join(",")
        },
        o.seed
    );
    if o.debug_stale_reads {
        s.push_str(" --debug-stale-reads");
    }
    if o.check.leader_mode == crate::checker::observe::LeaderMode::Openraft {
        s.push_str(" --leader-mode openraft");
    }
    s
}

/// Starts node 1 with `--init`, joins the others one at a time, creates the pool.
async fn setup(opts: &Options, db: &Arc<Db>, rec: &Arc<Recorder>) -> Result<()> {
    let inv = rec.record(Op::invoke(
        Process::harness(),
        "setup",
        None,
        json!(opts.nodes),
    ));
    let within = Duration::from_secs(90);
    db.init(within).await?;
    for _ in 1..opts.nodes {
        let id = db.new_id();
        db.spawn_join(id).await?;
        db.wait_voter(id, within).await?;
    }
    // The pool every route uses; through the leader, retried until it is there.
    let deadline = Instant::now() + within;
    loop {
        let leader = db.leader().await.ok();
        if let Some(l) = leader {
            let addr = db.spec_of(l)?.admin;
            let r = http::request(
                addr,
                "PUT",
                &format!("/v1/pools/{POOL}"),
                &[],
                Some(b"{}"),
                Duration::from_secs(5),
            )
            .await;
            if matches!(r, Ok(ref r) if r.status == 200) {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("could not create pool {POOL}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rec.record(Op::complete(&inv, Type::Ok, json!(db.members())));
    Ok(())
}

/// Heals the network, resumes paused nodes, restarts down members, and settles joins.
async fn heal_all(db: &Arc<Db>, rec: &Arc<Recorder>) {
    let inv = rec.record(Op::invoke(
        Process::nemesis(),
        "heal-all",
        None,
        Value::Null,
    ));
    db.net.heal();
    let mut resumed = Vec::new();
    let mut restarted = Vec::new();
    for id in db.members() {
        match db.life(id) {
            Some(Life::Paused) => {
                let _ = db.resume(id);
                resumed.push(id);
            }
            Some(Life::Down) => {
                let _ = db.restart(id);
                restarted.push(id);
            }
            _ => {}
        }
    }
    // A node whose join did not finish: a voter after all (keep it), or retired.
    let mut settled = Vec::new();
    for id in db.joining() {
        let ok = db.has_process(id) && db.wait_voter(id, Duration::from_secs(30)).await.is_ok();
        if !ok {
            // Whatever the leader made of it (a learner, even a voter), take it out.
            let _ = db.remove_node(id, Duration::from_secs(30)).await;
            db.retire(id);
        }
        settled.push(json!({"node": id, "member": ok}));
    }
    // A removal whose confirmation timed out may have completed later: the leader's voters
    // decide. Only nodes the nemesis tried to remove are settled this way; any other member
    // missing from the voters is left for the convergence check to report.
    let mut removed_late = Vec::new();
    let attempts = db.removal_attempts();
    if db.members().iter().any(|m| attempts.contains(m)) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let voters = loop {
            match db.voters().await {
                Ok(v) => break Some(v),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                Err(_) => break None,
            }
        };
        if let Some(voters) = voters {
            for m in db.members() {
                if attempts.contains(&m) && !voters.contains(&m) {
                    db.retire(m);
                    removed_late.push(m);
                }
            }
        }
    }
    rec.record(Op::complete(
        &inv,
        Type::Info,
        json!({"resumed": resumed, "restarted": restarted, "joins": settled, "removed_late": removed_late}),
    ));
}

/// The route a path should reach: the longest matching prefix (hosts and methods are empty).
fn expected_route(routes: &[Value], path: &str) -> Option<String> {
    routes
        .iter()
        .filter_map(|r| Some((r["path_prefix"].as_str()?, r["name"].as_str()?)))
        .filter(|(p, _)| path.starts_with(p))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, n)| n.to_string())
}

/// Waits until every member reports the same leader, voters, applied revision and
/// configuration, and routes the same sample of paths to the same routes. Records the
/// outcome as a `converge` operation.
async fn converge(opts: &Options, db: &Arc<Db>, rec: &Arc<Recorder>) -> bool {
    let inv = rec.record(Op::invoke(
        Process::harness(),
        "converge",
        None,
        Value::Null,
    ));
    let start = Instant::now();
    let deadline = start + opts.converge;
    let mut last;
    loop {
        match converged_once(db).await {
            Ok(v) => {
                let mut v = v;
                v["secs"] = json!(start.elapsed().as_secs_f64());
                rec.record(Op::complete(&inv, Type::Ok, v));
                return true;
            }
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            let mut done = Op::complete(&inv, Type::Fail, json!({"members": db.members()}));
            done.error = Some(format!(
                "not converged {:.0}s after healing: {last}",
                opts.converge.as_secs_f64()
            ));
            rec.record(done);
            return false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn converged_once(db: &Arc<Db>) -> Result<Value> {
    let members: BTreeSet<u64> = db.members().into_iter().collect();
    let mut leaders = BTreeSet::new();
    let mut revisions = BTreeMap::new();
    let mut configs: Vec<(u64, Value)> = Vec::new();
    for &id in &members {
        let s = db.get_json(id, "/status").await?;
        let voters = ids(&s["voters"]);
        if voters != members {
            bail!("node {id} has voters {voters:?}, expected {members:?}");
        }
        if !ids(&s["learners"]).is_empty() {
            bail!("node {id} still lists learners {:?}", ids(&s["learners"]));
        }
        leaders.insert(s["leader"].as_u64());
        let c = db.get_json(id, "/v1/config?consistency=stale").await?;
        revisions.insert(id, c["revision"].as_u64().unwrap_or(0));
        configs.push((id, c));
    }
    if leaders.len() != 1 || leaders.contains(&None) {
        bail!("nodes name leaders {leaders:?}");
    }
    let revs: BTreeSet<u64> = revisions.values().copied().collect();
    if revs.len() != 1 {
        bail!("nodes are at revisions {revisions:?}");
    }
    let (first, cfg) = &configs[0];
    for (id, c) in &configs[1..] {
        if c != cfg {
            bail!("node {id}'s configuration differs from node {first}'s at the same revision");
        }
    }
    // Routing: a sample of paths, on every node's data plane.
    let routes = cfg["routes"].as_array().cloned().unwrap_or_default();
    let mut paths: Vec<String> = routes
        .iter()
        .filter_map(|r| r["path_prefix"].as_str())
        .filter(|p| p.starts_with("/v/"))
        .map(|p| format!("{p}/probe"))
        .collect();
    paths.extend(
        routes
            .iter()
            .filter_map(|r| r["path_prefix"].as_str())
            .filter(|p| p.starts_with("/s/"))
            .take(40)
            .map(|p| format!("{p}/probe")),
    );
    paths.push("/jepsen-no-such-route".into());
    for path in &paths {
        let want = expected_route(&routes, path);
        for &id in &members {
            let addr = db.spec_of(id)?.http;
            let r = http::request(addr, "GET", path, &[], None, Duration::from_secs(3))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let body = r.text();
            let ok = match &want {
                Some(name) => r.status == 503 && body.starts_with(&format!("route {name}:")),
                None => r.status == 404,
            };
            if !ok {
                bail!(
                    "node {id} routes {path} to `{} {}`, expected route {want:?}",
                    r.status,
                    body.trim()
                );
            }
        }
    }
    Ok(json!({
        "revision": revs.into_iter().next(),
        "leader": leaders.into_iter().next().flatten(),
        "voters": members,
        "routes": routes.len(),
        "paths_probed": paths.len(),
    }))
}

/// Reads the whole configuration (linearizable) from every member: the set's final reads.
async fn final_reads(db: &Arc<Db>, rec: &Arc<Recorder>) {
    for id in db.members() {
        let inv = rec.record(Op::invoke(Process::harness(), "read-all", None, Value::Null).at(id));
        let mut done = Op::complete(&inv, Type::Fail, Value::Null);
        for attempt in 0..3 {
            let Ok(addr) = db.spec_of(id).map(|s| s.admin) else {
                break;
            };
            match http::request(
                addr,
                "GET",
                "/v1/config",
                &[],
                None,
                Duration::from_secs(10),
            )
            .await
            {
                Ok(r) if r.status == 200 => {
                    let v = r.json().unwrap_or(Value::Null);
                    let elems: Vec<Value> = v["routes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| {
                            let n = r["name"].as_str()?.strip_prefix('s')?.parse::<u64>().ok()?;
                            Some(json!([n, r["revision"].as_u64()?]))
                        })
                        .collect();
                    done.kind = Type::Ok;
                    done.value = json!(elems);
                    done.state_rev = v["revision"].as_u64();
                    done.error = None;
                    break;
                }
                Ok(r) => done.error = Some(format!("{} {}", r.status, r.text().trim())),
                Err(e) => done.error = Some(e.to_string()),
            }
            if attempt < 2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        rec.record(done);
    }
}

/// The text summary.
pub fn summary(
    opts: &Options,
    history: &Path,
    a: &Analysis,
    net: &NetStats,
    lines: usize,
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "jepsen: {} nodes, {} s, nemesis {}, seed {}{}\n",
        opts.nodes,
        opts.time.as_secs(),
        if opts.nemesis.is_empty() {
            "none".into()
        } else {
            opts.nemesis.join(",")
        },
        opts.seed,
        if opts.debug_stale_reads {
            ", nodes run with --debug-stale-reads"
        } else {
            ""
        }
    ));
    s.push_str(&format!("command: {}\n", command_line(opts)));
    s.push_str(&format!(
        "history: {} ({lines} lines)\n\n",
        history.display()
    ));
    s.push_str(&analysis_text(a));
    s.push_str(&format!(
        "relay: {} connections, {} KiB forwarded, {} KiB dropped, {} connections reset on heal, {} stalls\n",
        net.connections,
        net.forwarded_bytes / 1024,
        net.dropped_bytes / 1024,
        net.reset_on_heal,
        net.stalls
    ));
    s.push_str(&format!(
        "\nverdict: {}\n",
        if a.valid() { "VALID" } else { "INVALID" }
    ));
    s
}

/// Operation counts, checker verdicts, elections and gaps.
pub fn analysis_text(a: &Analysis) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<12} {:>8} {:>8} {:>8} {:>8}\n",
        "operation", "ops", "ok", "fail", "info"
    ));
    for (f, c) in &a.stats.by_f {
        s.push_str(&format!(
            "{:<12} {:>8} {:>8} {:>8} {:>8}\n",
            f, c[0], c[1], c[2], c[3]
        ));
    }
    s.push_str(&format!(
        "{:<12} {:>8} {:>8} {:>8} {:>8}\n\n",
        "total", a.stats.ops, a.stats.ok, a.stats.fail, a.stats.info
    ));
    s.push_str("checkers:\n");
    for r in &a.results {
        s.push_str(&format!("  {:<24} {}\n", r.name, r.summary));
    }
    s.push_str(&format!(
        "\nelections: {} distinct (term, leader) pairs observed\n",
        a.elections
    ));
    let g = &a.gaps;
    s.push_str(&format!(
        "failover: {} windows of >= {:.0} s without an acknowledged write (longest {:.1} s); {} windows where no node knew a leader (longest {:.1} s)\n",
        g.write_gaps.len(),
        g.threshold,
        g.longest_write_gap(),
        g.leaderless.len(),
        g.longest_leaderless()
    ));
    s.push_str(&format!(
        "faults: {}\n",
        if a.stats.faults.is_empty() {
            "none".into()
        } else {
            a.stats
                .faults
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    let mut longest = g.write_gaps.clone();
    longest.sort_by(|x, y| y.secs.total_cmp(&x.secs));
    for gap in longest.iter().take(5) {
        s.push_str(&format!(
            "  {:6.1}s-{:6.1}s ({:4.1} s): {}\n",
            gap.from,
            gap.to,
            gap.secs,
            gap.faults.join("; ")
        ));
    }
    s
}
