//! The shared cluster secret: every cluster RPC carries a digest of it, and the data plane's
//! hop marker is signed with a key derived from it.

use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

pub(crate) const AUTH_HEADER: &str = "x-gateway-auth";
pub(crate) const CLUSTER_HEADER: &str = "x-gateway-cluster";

/// A cluster secret, kept only as the values derived from it.
#[derive(Clone)]
pub struct Secret {
    token: String,
    hop_key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn derive(purpose: &str, secret: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(secret);
    h.finalize().to_vec()
}

impl Secret {
    /// Derives the RPC token and the hop key from the secret's bytes (surrounding white space
    /// ignored, so a trailing newline in the file does not matter).
    pub fn new(secret: &[u8]) -> Secret {
        let trimmed = secret.trim_ascii();
        Secret {
            token: hex::encode(derive("gateway-cluster-rpc-v1", trimmed)),
            hop_key: derive("gateway-hop-v1", trimmed),
        }
    }

    /// Key for signing the data plane's write-to-leader hop marker.
    pub fn hop_key(&self) -> Vec<u8> {
        self.hop_key.clone()
    }
}

/// Adds the secret's token and, once known, the cluster id to every outgoing call.
#[derive(Clone)]
pub(crate) struct ClientAuth {
    pub(crate) token: MetadataValue<tonic::metadata::Ascii>,
    pub(crate) cluster_id: Arc<OnceLock<String>>,
}

impl ClientAuth {
    pub(crate) fn new(secret: &Secret, cluster_id: Arc<OnceLock<String>>) -> Self {
        ClientAuth {
            token: secret.token.parse().expect("a hex token is valid metadata"),
            cluster_id,
        }
    }
}

impl tonic::service::Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(AUTH_HEADER, self.token.clone());
        if let Some(id) = self.cluster_id.get()
            && let Ok(v) = id.parse()
        {
            req.metadata_mut().insert(CLUSTER_HEADER, v);
        }
        Ok(req)
    }
}

/// Checks the token (in constant time) and the cluster id of every incoming call.
#[derive(Clone)]
pub(crate) struct ServerAuth {
    token: String,
    cluster_id: Arc<OnceLock<String>>,
}

impl ServerAuth {
    pub(crate) fn new(secret: &Secret, cluster_id: Arc<OnceLock<String>>) -> Self {
        ServerAuth {
            token: secret.token.clone(),
            cluster_id,
        }
    }
}

impl tonic::service::Interceptor for ServerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let given = req
            .metadata()
            .get(AUTH_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(self.token.as_bytes())) {
            return Err(Status::unauthenticated(
                "wrong cluster secret: start this node with the --cluster-secret-file of the cluster it joins",
            ));
        }
        let theirs = req
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok());
        if let (Some(ours), Some(theirs)) = (self.cluster_id.get(), theirs)
            && ours != theirs
        {
            return Err(Status::permission_denied(format!(
                "this node belongs to cluster {ours}, the caller to cluster {theirs}"
            )));
        }
        Ok(req)
    }
}
