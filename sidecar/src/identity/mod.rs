//! The sidecar's workload identity: its SPIFFE ID, the certificate it presents (renewed from
//! the control plane by [`renew`]), the trust anchors it verifies peers with (reloaded when
//! their file changes), and the TLS configurations the listeners and the upstream connections
//! use. Without a certificate in force mTLS stops — the inbound side refuses mesh handshakes,
//! the outbound side cannot present one — and readiness says why.

pub mod renew;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bulwark_identity::cert::unix_seconds;
use bulwark_identity::tls::{ALPN_H2, ALPN_HTTP1, mesh_client, mesh_server};
use bulwark_identity::{Credentials, SpiffeId, TrustAnchors};

/// What proves who this pod is to the control plane.
#[derive(Debug, Clone)]
pub enum ProofSource {
    /// The projected ServiceAccount token (re-read for every request: the kubelet rotates it).
    ServiceAccountToken(PathBuf),
    /// A join token issued for this workload.
    JoinToken(PathBuf),
}

/// How this sidecar gets its identity.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub id: SpiffeId,
    /// Control-plane addresses serving Identity, tried in turn.
    pub servers: Vec<String>,
    pub proof: ProofSource,
    /// The trust anchors' PEM bundle.
    pub anchors: PathBuf,
    /// TLS to `https://` control-plane addresses.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What renewal last did, for `/identity` and readiness.
#[derive(Debug, Default, Clone)]
struct Status {
    issued: u64,
    failed: u64,
    last_error: Option<String>,
    next_renewal: Option<SystemTime>,
}

/// The identity in force and its TLS configurations.
pub struct Identity {
    pub id: SpiffeId,
    pub credentials: Arc<Credentials>,
    pub anchors: Arc<TrustAnchors>,
    /// Inbound mesh connections: TLS 1.3, the caller's certificate required.
    pub server: Arc<rustls::ServerConfig>,
    /// Outbound mesh connections speaking HTTP/2.
    pub client_h2: Arc<rustls::ClientConfig>,
    /// Outbound mesh connections speaking HTTP/1.1.
    pub client_http1: Arc<rustls::ClientConfig>,
    /// True from the first certificate on.
    pub certified: tokio::sync::watch::Sender<bool>,
    status: Mutex<Status>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity `id`, verifying peers against the roots in `anchors_pem`; no certificate
    /// yet.
    pub fn new(id: SpiffeId, anchors_pem: &[u8]) -> Result<Identity, String> {
        let anchors = Arc::new(TrustAnchors::from_pem(anchors_pem)?);
        let credentials = Arc::new(Credentials::new());
        Ok(Identity {
            server: Arc::new(mesh_server(credentials.clone(), anchors.clone())?),
            client_h2: Arc::new(mesh_client(credentials.clone(), anchors.clone(), ALPN_H2)?),
            client_http1: Arc::new(mesh_client(
                credentials.clone(),
                anchors.clone(),
                ALPN_HTTP1,
            )?),
            id,
            credentials,
            anchors,
            certified: tokio::sync::watch::Sender::new(false),
            status: Mutex::default(),
        })
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a certificate is in force now; the reason for readiness when not.
    pub fn readiness(&self, now: SystemTime) -> Result<(), String> {
        if self.credentials.valid(now).is_some() {
            return Ok(());
        }
        let why = match (self.credentials.current(), self.status().last_error.clone()) {
            (None, None) => "waiting for the first workload certificate".to_string(),
            (None, Some(e)) => format!("no workload certificate: {e}"),
            (Some(c), last) => format!(
                "the workload certificate expired at {}{}",
                unix_seconds(c.info.not_after),
                last.map(|e| format!(" and could not be renewed: {e}"))
                    .unwrap_or_default()
            ),
        };
        Err(format!("not ready: {why}"))
    }

    /// The identity and its certificate's expiry, for health reports.
    pub fn to_wire(&self) -> bulwark_proto::v1::WorkloadIdentity {
        let not_after = self
            .credentials
            .current()
            .map(|c| unix_seconds(c.info.not_after))
            .unwrap_or(0);
        bulwark_proto::v1::WorkloadIdentity {
            spiffe_id: self.id.to_string(),
            not_after_unix_ms: i64::try_from(not_after.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }

    /// `GET /identity`: the certificate in force (never the key) and how renewal goes.
    pub fn describe(&self) -> serde_json::Value {
        let status = self.status().clone();
        let certificate = self.credentials.current().map(|c| {
            serde_json::json!({
                "spiffeId": c.info.spiffe_id.as_ref().map(ToString::to_string),
                "serial": c.info.serial,
                "issuer": c.info.issuer,
                "notBefore": unix_seconds(c.info.not_before),
                "notAfter": unix_seconds(c.info.not_after),
                "valid": self.credentials.valid(SystemTime::now()).is_some(),
            })
        });
        let anchors: Vec<String> = self
            .anchors
            .load()
            .roots
            .iter()
            .map(|r| r.subject.clone())
            .collect();
        serde_json::json!({
            "spiffeId": self.id.to_string(),
            "certificate": certificate,
            "trustAnchors": anchors,
            "issued": status.issued,
            "failed": status.failed,
            "lastError": status.last_error,
            "nextRenewal": status.next_renewal.map(unix_seconds),
        })
    }
}
