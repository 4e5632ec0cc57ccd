//! Cluster mutual TLS on real `gateway` processes: a 3-node cluster whose nodes talk Raft and
//! admin gRPC over mutual TLS with certificates from `gateway tls-gen`; the CLI reaches it
//! with a client certificate and is refused without one (plaintext to a TLS port); a node
//! whose certificate another CA signed cannot join, whichever CA it trusts.
//! Build the binary first: `cargo build -p gateway`.

use anyhow::Result;
use gateway_tests::{EXIT, REQUEST, TestCluster, TestResult, ensure, note, run_gateway};
use std::path::{Path, PathBuf};

/// `gateway tls-gen --dir DIR --nodes N`.
async fn tls_gen(dir: &Path, nodes: u64) -> Result<()> {
    let out = run_gateway(
        &[
            "tls-gen",
            "--dir",
            &dir.display().to_string(),
            "--nodes",
            &nodes.to_string(),
        ],
        REQUEST,
    )
    .await?;
    ensure!(out.status.success(), "tls-gen: {}", out.stderr);
    Ok(())
}

fn tls_args(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        ca.display().to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_port_speaks_mutual_tls_only_with_the_cluster_ca() -> TestResult {
    let dir = tempfile::Builder::new().prefix("gateway-mtls-").tempdir()?;
    let (good, rogue): (PathBuf, PathBuf) = (dir.path().join("good"), dir.path().join("rogue"));
    tls_gen(&good, 3).await?;
    tls_gen(&rogue, 2).await?;
    let files = {
        let (good, rogue) = (good.clone(), rogue.clone());
        move |id: u64| match id {
            // Node 4: a certificate of another CA, trusting the cluster's.
            4 => tls_args(
                &good.join("ca.pem"),
                &rogue.join("node-1.pem"),
                &rogue.join("node-1-key.pem"),
            ),
            // Node 5: everything from another CA.
            5 => tls_args(
                &rogue.join("ca.pem"),
                &rogue.join("node-2.pem"),
                &rogue.join("node-2-key.pem"),
            ),
            n => tls_args(
                &good.join("ca.pem"),
                &good.join(format!("node-{n}.pem")),
                &good.join(format!("node-{n}-key.pem")),
            ),
        }
    };
    let mut c = TestCluster::start_with(3, Box::new(files)).await?;
    let server = c.node(2).cluster_addr.to_string();

    // The CLI with a client certificate of the cluster CA.
    let mut args = vec![
        "cluster", "members", "--server", &server, "--output", "json",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    let client = tls_args(
        &good.join("ca.pem"),
        &good.join("client.pem"),
        &good.join("client-key.pem"),
    );
    let with_tls: Vec<String> = args.iter().cloned().chain(client).collect();
    let out = run_gateway(&with_tls, REQUEST).await?;
    ensure!(
        out.status.success() && out.stdout.matches("\"id\"").count() == 3,
        "cluster members over mutual TLS: {} {}",
        out.stdout,
        out.stderr
    );

    // Plaintext to the TLS port: refused.
    args.extend(["--timeout".into(), "3".into()]);
    let out = run_gateway(&args, REQUEST).await?;
    ensure!(
        !out.status.success() && out.stderr.starts_with("error: "),
        "plaintext CLI: {} {}",
        out.stdout,
        out.stderr
    );
    note!("plaintext to the TLS port: {}", out.stderr.trim());
    // A client certificate from another CA: refused too.
    let other: Vec<String> = args
        .iter()
        .cloned()
        .chain(tls_args(
            &good.join("ca.pem"),
            &rogue.join("client.pem"),
            &rogue.join("client-key.pem"),
        ))
        .collect();
    let out = run_gateway(&other, REQUEST).await?;
    ensure!(
        !out.status.success(),
        "a client certificate of another CA was accepted: {}",
        out.stdout
    );

    // Nodes with certificates of another CA cannot join.
    for id in [4, 5] {
        c.spawn_join(id, false)?.expect_exit();
    }
    for id in [4, 5] {
        let st = c.node(id).wait_exit(EXIT).await?;
        ensure!(!st.success(), "node {id} with a foreign certificate joined");
        note!(
            "node {id}: {}",
            c.node(id)
                .log()
                .lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or_default()
        );
    }
    for id in [4, 5] {
        c.forget(id)?;
    }
    let status = c.node(1).status().await?;
    ensure!(
        status.member_ids().len() == 3,
        "members: {:?}",
        status.member_ids()
    );
    Ok(())
}
