//! Mutual TLS on the inbound side. A ClientHello that asks for this pod's identity (its server
//! name, `<sa>.<ns>.sa.bulwark.<trust-domain>`) is terminated with the pod's certificate; the
//! caller's certificate is required and verified against the trust anchors, and its SPIFFE ID
//! goes with every request of the connection. Other TLS is the app's own: passed through,
//! except in `strict` mode, where only mesh TLS is accepted.

use std::sync::Arc;
use std::time::SystemTime;

use bulwark_identity::{CertInfo, SpiffeId};
use bulwark_proto::policy::MtlsMode;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::identity::Identity;
use crate::metrics::{CallerCounters, Metrics};

/// The verified identity of the caller on an inbound mTLS connection.
#[derive(Debug)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    /// The SPIFFE ID as the `x-bulwark-peer-identity` value, and as logged.
    pub text: Arc<str>,
    pub header: HeaderValue,
    /// Its requests' counters (`client_id` label).
    pub counters: CallerCounters,
}

/// What becomes of an inbound TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Mesh TLS for this pod: terminate it.
    Terminate,
    /// The app's own TLS: forward it untouched.
    PassThrough,
    /// Refused, for this reason (the metric label).
    Refuse(&'static str),
}

/// What to do with an inbound TLS connection whose ClientHello named `sni`. Any mesh
/// identity's name is terminated: a caller that asked for another identity then sees which one
/// this pod presents ("the server presented …, not …") instead of a closed connection.
pub fn inbound_tls(identity: Option<&Identity>, mode: MtlsMode, sni: Option<&str>) -> Verdict {
    if mode == MtlsMode::Disable {
        return Verdict::PassThrough;
    }
    let mesh_name = sni.and_then(SpiffeId::from_server_name);
    let ours = identity.is_some() && mesh_name.is_some();
    match (ours, mode) {
        (true, _) => Verdict::Terminate,
        (false, MtlsMode::Strict) => Verdict::Refuse("foreign-tls"),
        (false, _) => Verdict::PassThrough,
    }
}

/// Completes the handshake on `io` as `identity`, requiring the caller's certificate; the
/// stream and the caller's identity, or why not.
pub async fn terminate<I>(
    io: I,
    identity: &Identity,
    metrics: &Metrics,
) -> Result<(TlsStream<I>, Arc<PeerIdentity>), (&'static str, String)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(why) = identity.readiness(SystemTime::now()) {
        return Err(("no-certificate", why));
    }
    let stream = TlsAcceptor::from(identity.server.clone())
        .accept(io)
        .await
        .map_err(|e| ("handshake", tls_reason(&e)))?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| CertInfo::parse(leaf).ok())
        .and_then(|info| info.spiffe_id)
        .ok_or((
            "handshake",
            "the client certificate has no SPIFFE ID".to_string(),
        ))?;
    let text: Arc<str> = Arc::from(peer.to_string());
    let header = HeaderValue::from_str(&text)
        .map_err(|e| ("handshake", format!("SPIFFE ID {text:?} as a header: {e}")))?;
    metrics.mtls_connections("inbound").inc();
    Ok((
        stream,
        Arc::new(PeerIdentity {
            counters: CallerCounters::new(&text),
            id: peer,
            text,
            header,
        }),
    ))
}

/// The handshake failure as rustls names it.
fn tls_reason(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(ToString::to_string)
        .unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mesh_tls_for_this_pod_is_terminated() {
        let id = SpiffeId::new("cluster.local", "pay", "payments").expect("an identity");
        let dir = std::env::temp_dir().join(format!("bulwark-mtls-{}", std::process::id()));
        let (ca, _) = bulwark_identity::dev::DevAuthority::ensure(&dir).expect("an authority");
        let anchors = std::fs::read(&ca.root).expect("the root");
        let _ = std::fs::remove_dir_all(&dir);
        let identity = Identity::new(id.clone(), &anchors).expect("an identity");
        let ours = id.server_name();
        let ours = Some(ours.as_str());
        let other = Some("api.example.com");
        use MtlsMode::*;
        assert_eq!(
            inbound_tls(Some(&identity), Permissive, ours),
            Verdict::Terminate
        );
        assert_eq!(
            inbound_tls(Some(&identity), Strict, ours),
            Verdict::Terminate
        );
        assert_eq!(
            inbound_tls(Some(&identity), Disable, ours),
            Verdict::PassThrough
        );
        assert_eq!(
            inbound_tls(Some(&identity), Permissive, other),
            Verdict::PassThrough
        );
        let another = SpiffeId::new("cluster.local", "pay", "refunds").expect("an identity");
        assert_eq!(
            inbound_tls(Some(&identity), Strict, Some(&another.server_name())),
            Verdict::Terminate,
            "the caller's verifier says which identity it met"
        );
        assert_eq!(
            inbound_tls(Some(&identity), Strict, other),
            Verdict::Refuse("foreign-tls")
        );
        assert_eq!(
            inbound_tls(Some(&identity), Strict, None),
            Verdict::Refuse("foreign-tls")
        );
        assert_eq!(inbound_tls(None, Permissive, ours), Verdict::PassThrough);
    }
}
