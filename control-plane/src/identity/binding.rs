//! Who a sidecar stream may speak for. The namespace, service account and pod come from the
//! workload certificate verified in the TLS handshake, never from the stream's Hello: a stream
//! is admitted only for a pod of its certificate's namespace, under the pod name the certificate
//! is bound to, and — for a service with a ServicePolicy, the services whose reports drive
//! levels — only when the service's pods run under its certificate's service account (the
//! ServicePolicy's `spec.serviceAccount`, `default` without one). Everything else is
//! refused with `PERMISSION_DENIED` (`UNAUTHENTICATED` without a certificate), counted by
//! reason in `bulwark_rejected_reports_total`.

use bulwark_identity::SpiffeId;
use bulwark_identity::verify::ClientRoot;
use tonic::Status;

use crate::index::Index;
use crate::serve::Peer;
use crate::store::keys::PodKey;

/// Whose streams are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// A certificate is required (TLS listeners).
    Required,
    /// `--insecure-dev`: a stream without a certificate is taken at its word; one with a
    /// certificate is still held to it.
    InsecureDev,
}

/// The verified workload behind a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub id: SpiffeId,
    /// The pod the certificate is bound to (its subject's common name), when it names one.
    pub pod: Option<String>,
}

/// A refusal: the reason label of `bulwark_rejected_reports_total` and the status the stream
/// ends with.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub status: Status,
}

fn refused(reason: &'static str, status: Status) -> Refused {
    Refused { reason, status }
}

/// The workload a connection's certificate proves, if any.
pub fn workload(peer: Option<&Peer>, trust_domain: &str) -> Result<Option<Workload>, Refused> {
    let Some(cert) = peer.and_then(|p| p.certificate.as_deref()) else {
        return Ok(None);
    };
    if cert.root != ClientRoot::Mesh {
        return Err(refused(
            "not-a-workload",
            Status::permission_denied(format!(
                "the client certificate ({}) is an operator's, not a workload's: sidecar streams need the pod's workload certificate",
                cert.info.subject
            )),
        ));
    }
    let Some(id) = cert.info.spiffe_id.clone() else {
        return Err(refused(
            "not-a-workload",
            Status::permission_denied("the client certificate carries no SPIFFE ID"),
        ));
    };
    if id.trust_domain() != trust_domain {
        return Err(refused(
            "trust-domain",
            Status::permission_denied(format!(
                "the certificate is for {id}, outside this mesh's trust domain {trust_domain}"
            )),
        ));
    }
    Ok(Some(Workload {
        id,
        pod: cert.info.common_name.clone(),
    }))
}

/// Whether `workload` (or, under `--insecure-dev`, no one) may speak for `pod`.
pub fn admit(
    enforcement: Enforcement,
    workload: Option<&Workload>,
    pod: &PodKey,
    index: &Index,
) -> Result<(), Refused> {
    let Some(workload) = workload else {
        return match enforcement {
            Enforcement::InsecureDev => Ok(()),
            Enforcement::Required => Err(refused(
                "no-certificate",
                Status::unauthenticated(
                    "sidecar streams need the pod's workload certificate (mutual TLS): start the sidecar with its identity (--trust-anchors and a proof) so that it gets one first",
                ),
            )),
        };
    };
    let id = &workload.id;
    if id.namespace() != pod.namespace {
        return Err(refused(
            "namespace",
            Status::permission_denied(format!(
                "the certificate is for {id}: it cannot speak for namespace {}",
                pod.namespace
            )),
        ));
    }
    if let Some(bound) = &workload.pod
        && *bound != pod.pod
    {
        return Err(refused(
            "pod",
            Status::permission_denied(format!(
                "the certificate is bound to pod {bound}: it cannot speak for pod {}",
                pod.pod
            )),
        ));
    }
    service_account(workload, pod, index)
}

/// Whether the service's pods run under the workload's service account — checked at Hello and
/// again for every report, since the ServicePolicy may change.
pub fn service_account(workload: &Workload, pod: &PodKey, index: &Index) -> Result<(), Refused> {
    // Without a ServicePolicy nothing is computed from the service's reports: any service
    // account of the namespace may speak for it (it receives only what the namespace may read).
    let Some(expected) = index.service_account_of(&pod.namespace, &pod.service) else {
        return Ok(());
    };
    if workload.id.service_account() == expected {
        return Ok(());
    }
    Err(refused(
        "service-account",
        Status::permission_denied(format!(
            "service {}/{} runs under service account {expected} (spec.serviceAccount of its ServicePolicy, default when it declares none); the certificate is for {}",
            pod.namespace, pod.service, workload.id
        )),
    ))
}
