//! The checker proves it can fail: nodes started with `--debug-stale-reads` answer
//! "linearizable" reads from local state, and a short run with partitions must be found
//! non-linearizable.
//!
//! Needs `target/debug/gateway` (or `$GATEWAY_BIN`). About 45 s; cut off after 5 minutes.

use std::time::Duration;

#[test]
fn stale_reads_are_caught() {
    let mut o = jepsen::Options::new(3, 30);
    assert!(
        o.bin.is_file(),
        "the gateway binary was not found at {}: run `cargo build -p gateway` first (scripts/test.sh does), or set GATEWAY_BIN",
        o.bin.display()
    );
    o.out = o.out.with_file_name(format!("ci-stale-reads-{}", o.seed));
    o.debug_stale_reads = true;
    o.nemesis = vec!["partition".into()];
    // This run is meant to fail: no post-mortem needed.
    o.keep_data_if_invalid = false;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(300), jepsen::run(o)).await })
        .expect("the run did not finish within 5 minutes")
        .expect("the run could not be carried out");
    eprintln!("{}", report.text);
    assert!(
        !report.valid(),
        "stale reads went unnoticed:\n{}",
        report.text
    );
    let lin = report
        .analysis
        .result("linearizable-registers")
        .expect("the register checker ran");
    assert_eq!(
        lin.valid,
        Some(false),
        "the linearizability checker must be the one that fails:\n{}",
        report.text
    );
    // Its report names a key and explains the anomaly.
    assert!(lin.summary.contains("first: key"), "{}", lin.summary);
}
