//! `jepsen`: run a fault-injection test against a local gateway cluster, or check a history.
//!
//! ```sh
//! cargo run -p jepsen -- --nodes 5 --time 120 --nemesis kill,pause,partition,membership
//! cargo run -p jepsen -- check target/jepsen/latest/history.jsonl
//! ```
//!
//! Exit status: 0 when every checker says valid, 1 on any violation (or a checker that could
//! not decide), 2 when the test itself could not run.

use clap::{Args, Parser, Subcommand};
use jepsen::checker::observe::LeaderMode;
use jepsen::checker::{self, CheckOptions};
use jepsen::{Options, nemesis};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "jepsen",
    about = "Jepsen-style fault injection and linearizability checking for a local gateway cluster",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a recorded history (history.jsonl) again, without running anything.
    Check {
        history: PathBuf,
        /// States the linearizability search may explore per key.
        #[arg(long, default_value_t = 2_000_000)]
        budget: usize,
        /// `raft`: at most one leader per term; `openraft`: allow a higher-id leader later in a term.
        #[arg(long, default_value = "raft", value_parser = ["raft", "openraft"])]
        leader_mode: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Nodes in the cluster (3 or 5 make sense; membership changes keep the count).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seconds of workload and faults (healing, convergence and checking come after).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Faults, comma separated: kill, pause, partition, net, membership; `all` or `none`.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// The gateway binary [default: $GATEWAY_BIN, else target/debug/gateway].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Start the nodes with --debug-stale-reads (reads are not linearizable: the run must fail).
    #[arg(long)]
    debug_stale_reads: bool,
    /// Where results go [default: target/jepsen/run-<time>-<seed>; target/jepsen/latest links to it].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the schedule and the clients' choices (timing still varies).
    #[arg(long)]
    seed: Option<u64>,
    /// Register workers [default: 2 × nodes].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Register keys in use at a time.
    #[arg(long, default_value_t = 2)]
    keys: usize,
    /// Operations per key before it is replaced by a fresh one.
    #[arg(long, default_value_t = 200)]
    ops_per_key: usize,
    /// Mean pause between a worker's operations, in milliseconds.
    #[arg(long, default_value_t = 10)]
    stagger_ms: u64,
    /// Client request timeout in milliseconds (a write that times out is `info`).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Seconds the cluster may take to converge after healing.
    #[arg(long, default_value_t = 90)]
    converge_secs: u64,
    /// Keep the nodes' data dirs even if the run passes.
    #[arg(long)]
    keep_data: bool,
    /// `raft`: at most one leader per term (standard Raft); `openraft`: allow a later leader
    /// with a higher id in the same term (openraft's default advanced leader ids).
    #[arg(long, default_value = "raft", value_parser = ["raft", "openraft"])]
    leader_mode: String,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

fn leader_mode(s: &str) -> LeaderMode {
    if s == "openraft" {
        LeaderMode::Openraft
    } else {
        LeaderMode::Raft
    }
}

fn options(a: RunArgs) -> Result<Options, String> {
    let mut o = match a.seed {
        Some(seed) => Options::with_seed(a.nodes, a.time, seed),
        None => Options::new(a.nodes, a.time),
    };
    if a.nodes == 0 || a.nodes > 9 {
        return Err("--nodes: use 1 to 9".into());
    }
    o.nemesis = match a.nemesis.as_str() {
        "all" => nemesis::ALL.iter().map(|s| s.to_string()).collect(),
        "none" | "" => Vec::new(),
        list => {
            let v: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            for n in &v {
                if !nemesis::ALL.contains(&n.as_str()) {
                    return Err(format!(
                        "--nemesis: '{n}' is not a nemesis; use any of {}, or all / none",
                        nemesis::ALL.join(", ")
                    ));
                }
            }
            v
        }
    };
    if let Some(b) = a.bin {
        o.bin = b;
    }
    o.debug_stale_reads = a.debug_stale_reads;
    if let Some(out) = a.out {
        o.out = out;
    }
    if let Some(c) = a.concurrency {
        o.concurrency = c.max(1);
    }
    o.keys = a.keys.max(1);
    o.ops_per_key = a.ops_per_key.max(10);
    o.stagger = Duration::from_millis(a.stagger_ms);
    o.timeout = Duration::from_millis(a.timeout_ms.max(100));
    o.converge = Duration::from_secs(a.converge_secs);
    o.keep_data = a.keep_data;
    o.verbose = !a.quiet;
    o.check.leader_mode = leader_mode(&a.leader_mode);
    Ok(o)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Check {
        history,
        budget,
        leader_mode: mode,
    }) = cli.command
    {
        let ops = match jepsen::history::load(&history) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
        let a = checker::analyse(
            &ops,
            &CheckOptions {
                budget,
                leader_mode: leader_mode(&mode),
                ..CheckOptions::default()
            },
        );
        print!("{}", jepsen::run::analysis_text(&a));
        println!("\nverdict: {}", if a.valid() { "VALID" } else { "INVALID" });
        return if a.valid() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let opts = match options(cli.run) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(jepsen::run(opts)) {
        Ok(report) => {
            print!("{}", report.text);
            println!("results: {}", report.dir.display());
            if report.valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
