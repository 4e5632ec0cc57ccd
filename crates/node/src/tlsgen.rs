//! `gateway tls-gen`: a throwaway cluster CA with node and client certificates (rcgen), for
//! trying cluster mutual TLS and for tests. Production clusters use their own CA.

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::Path;

/// Writes `ca.pem`, `ca-key.pem`, `node-N.pem` / `node-N-key.pem` for N in 1..=nodes and
/// `client.pem` / `client-key.pem` into `dir`. Refuses to overwrite an existing `ca.pem`.
pub fn generate(dir: &Path, nodes: u64) -> anyhow::Result<()> {
    if nodes == 0 || nodes > 1000 {
        bail!("--nodes must be 1 to 1000");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join("ca.pem").exists() {
        bail!(
            "{} already holds ca.pem: remove it (and the certificates it signed) or pick another --dir",
            dir.display()
        );
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "gateway cluster CA (throwaway)");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let write = |name: &str, text: &str, secret: bool| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    };
    write("ca.pem", &ca.pem(), false)?;
    write("ca-key.pem", &ca.key().serialize_pem(), true)?;
    let leaf = |cn: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            gateway_cluster::CLUSTER_SERVER_NAME.to_string(),
            "localhost".to_string(),
        ])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    for n in 1..=nodes {
        let (cert, key) = leaf(&format!("gateway node {n}"))?;
        write(&format!("node-{n}.pem"), &cert, false)?;
        write(&format!("node-{n}-key.pem"), &key, true)?;
    }
    let (cert, key) = leaf("gateway client")?;
    write("client.pem", &cert, false)?;
    write("client-key.pem", &key, true)?;
    println!(
        "wrote ca.pem, node-1..{nodes}.pem, client.pem and their keys to {}",
        dir.display()
    );
    Ok(())
}
