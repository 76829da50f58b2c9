//! Admission of an inbound request before it is routed to the app: the verified caller's
//! identity handed to the app (`x-bulwark-peer-identity`; whatever the caller sent under that
//! name is removed), plaintext refused when mutual TLS is `strict`, and the ServicePolicy's
//! authorization rules applied (or, in `dryRun`, logged and counted).

use bulwark_proto::policy::MtlsMode;
use http::request::Parts;

use super::mtls::PeerIdentity;
use crate::errors::ProxyError;
use crate::headers::X_BULWARK_PEER_IDENTITY;
use crate::metrics::Metrics;
use crate::route::access::{Decision, InboundAccess};

/// Admits the request `parts` from `peer` (`None`: plaintext), or says why not.
/// `probe_exempt`: a kubelet probe of one of the pod's probe paths, admitted without identity.
pub fn admit(
    access: &InboundAccess,
    metrics: &Metrics,
    peer: Option<&PeerIdentity>,
    parts: &mut Parts,
    grpc: bool,
    probe_exempt: bool,
) -> Result<(), ProxyError> {
    parts.headers.remove(X_BULWARK_PEER_IDENTITY);
    if let Some(p) = peer {
        parts
            .headers
            .insert(X_BULWARK_PEER_IDENTITY, p.header.clone());
    }
    if probe_exempt && peer.is_none() {
        return Ok(());
    }
    if peer.is_none() && access.mtls == MtlsMode::Strict {
        metrics.mtls_refused("plaintext");
        return Err(ProxyError::MtlsRequired {
            policy: access.source.clone(),
        });
    }
    let path = parts.uri.path();
    let decision = access.decide(peer.map(|p| &p.id), &parts.method, path, grpc);
    if decision == Decision::Open {
        return Ok(());
    }
    metrics.authorization(decision.label());
    let caller = || {
        peer.map_or_else(
            || "a caller without identity".to_string(),
            |p| p.text.to_string(),
        )
    };
    match decision {
        Decision::Denied => Err(ProxyError::Unauthorized {
            caller: caller(),
            policy: access.source.clone(),
            rules: access.rule_count(),
            method: parts.method.clone(),
            path: path.to_string(),
        }),
        Decision::DryRunDenied => {
            tracing::warn!(
                caller = %caller(),
                method = %parts.method,
                path,
                policy = %access.source,
                "request would be denied by spec.inbound.authorization (dryRun: allowed)"
            );
            Ok(())
        }
        Decision::Open | Decision::Allowed => Ok(()),
    }
}
