//! Mutual TLS on the cluster port: Raft, node-to-node and admin gRPC.
//!
//! Every node presents a certificate signed by the cluster CA and accepts only peers (and
//! clients) presenting one too. Peers are dialled by address, so the name checked in a
//! node's certificate is the fixed [`CLUSTER_SERVER_NAME`]: node certificates carry it as a
//! DNS subjectAltName (`gateway tls-gen` makes such certificates).

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The DNS name every node certificate carries and every client checks.
pub const CLUSTER_SERVER_NAME: &str = "gateway.cluster";

/// The cluster CA and this node's (or client's) certificate and key, PEM.
#[derive(Clone)]
pub struct ClusterTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls { .. }")
    }
}

impl ClusterTls {
    /// The server side: this node's identity; clients must present a certificate of the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// The client side: trusts only the CA, checks [`CLUSTER_SERVER_NAME`], presents this
    /// identity.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(CLUSTER_SERVER_NAME)
    }
}
