//! An upstream's `spec.tls` compiled into what its connections use: the sidecar's mesh client
//! configurations and the server name of the identity the endpoints must present (`mesh`), or
//! a TLS origination configuration with the server's host name and roots (`simple`).

use std::sync::Arc;

use bulwark_identity::SpiffeId;
use bulwark_identity::tls::{ALPN_H2, ALPN_HTTP1, roots, simple_client};
use bulwark_proto::policy::{TlsMode, UpstreamPolicy};
use rustls_pki_types::ServerName;

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::upstream::connect::UpstreamTls;

/// The service account an upstream's pods run as unless its policy or the control plane says.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// What connections to `policy`'s endpoints speak: `None` for plaintext.
pub fn upstream_tls(
    policy: &UpstreamPolicy,
    identity: Option<&Arc<Identity>>,
    metrics: &Metrics,
) -> Result<Option<Arc<UpstreamTls>>, String> {
    let Some(tls) = &policy.spec.tls else {
        return Ok(None);
    };
    let compiled = match tls.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Mesh => {
            let identity = identity.ok_or_else(|| {
                "spec.tls.mode mesh: this sidecar has no workload identity (start it with --trust-anchors and a join or ServiceAccount token)".to_string()
            })?;
            let expected = match &tls.server_identity {
                Some(text) => text
                    .parse::<SpiffeId>()
                    .map_err(|e| format!("spec.tls.serverIdentity: {e}"))?,
                None => SpiffeId::new(
                    identity.id.trust_domain(),
                    &policy.metadata.namespace,
                    DEFAULT_SERVICE_ACCOUNT,
                )
                .map_err(|e| format!("spec.tls: the default server identity: {e}"))?,
            };
            UpstreamTls {
                mode: "mesh",
                identity: Some(Arc::from(expected.to_string())),
                server_name: server_name(expected.server_name())?,
                h2: identity.client_h2.clone(),
                http1: identity.client_http1.clone(),
                established: Some(metrics.mtls_connections("outbound")),
            }
        }
        TlsMode::Simple => {
            let host = match (&tls.sni, &policy.spec.endpoints.dns) {
                (Some(sni), _) => sni.clone(),
                (None, Some(dns)) => dns
                    .rsplit_once(':')
                    .map(|(host, _)| host.to_string())
                    .ok_or_else(|| format!("spec.endpoints.dns {dns:?} has no port"))?,
                (None, None) => return Err("spec.tls.sni is required with static endpoints".into()),
            };
            let ca = match &tls.ca_file {
                Some(path) => {
                    Some(std::fs::read(path).map_err(|e| format!("spec.tls.caFile {path}: {e}"))?)
                }
                None => None,
            };
            let roots = roots(ca.as_deref()).map_err(|e| format!("spec.tls.caFile: {e}"))?;
            UpstreamTls {
                mode: "simple",
                identity: None,
                server_name: server_name(host)?,
                h2: Arc::new(simple_client(roots.clone(), ALPN_H2)?),
                http1: Arc::new(simple_client(roots, ALPN_HTTP1)?),
                established: None,
            }
        }
    };
    Ok(Some(Arc::new(compiled)))
}

fn server_name(name: String) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.clone()).map_err(|e| format!("spec.tls: server name {name:?}: {e}"))
}
