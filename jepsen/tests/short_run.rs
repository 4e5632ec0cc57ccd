//! CI: a short run (3 nodes, 60 s, every nemesis) against the real binary must be valid.
//!
//! Needs `target/debug/gateway` (`cargo build -p gateway`; scripts/test.sh builds it first) or
//! `$GATEWAY_BIN`. Bounded: the run takes about 70–100 s and is cut off after 8 minutes.
//! Results (history, node logs, summary) stay in `target/jepsen/ci-short-*`.

use std::time::Duration;

#[test]
fn a_short_run_with_every_nemesis_is_valid() {
    let mut o = jepsen::Options::new(3, 60);
    assert!(
        o.bin.is_file(),
        "the gateway binary was not found at {}: run `cargo build -p gateway` first (scripts/test.sh does), or set GATEWAY_BIN",
        o.bin.display()
    );
    o.out = o.out.with_file_name(format!("ci-short-{}", o.seed));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(480), jepsen::run(o)).await })
        .expect("the run did not finish within 8 minutes")
        .expect("the run could not be carried out");
    eprintln!("{}", report.text);
    assert!(
        report.valid(),
        "the cluster broke a promise (or a checker could not decide):\n{}\nhistory, node logs and data dirs: {}",
        report.text,
        report.dir.display()
    );
    // The run did what it says: faults happened and clients got answers through them.
    assert!(report.analysis.stats.ok > 500, "{}", report.text);
    assert!(
        report.faults.values().sum::<usize>() >= 3,
        "{}",
        report.text
    );
}
