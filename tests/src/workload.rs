//! A workload's side of the control plane without a sidecar: gRPC channels over TLS with the
//! test's credentials, and a workload certificate asked for with a join token — what a sidecar
//! does, so that tests can present (or forge) exactly the claims they want.

use bulwark_proto::v1::identity_client::IdentityClient;
use bulwark_proto::v1::{CertifyRequest, certify_request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::rest::Access;

/// A channel to a gRPC URL: plain for `http://`, TLS with `access`'s CA and client certificate
/// for `https://`. The error says why it could not connect (a refused handshake names why).
pub async fn channel(url: &str, access: &Access) -> Result<Channel, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or("no host")?.to_string();
    let port = uri.port_u16().ok_or("no port")?;
    let plain =
        Endpoint::from_shared(format!("http://{host}:{port}")).map_err(|e| e.to_string())?;
    if uri.scheme_str() != Some("https") {
        return plain.connect().await.map_err(|e| e.to_string());
    }
    let mut tls = access.tls()?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = std::sync::Arc::new(tls);
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        let name = name.clone();
        let host = host.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    plain
        .connect_with_connector(connector)
        .await
        .map_err(|e| crate::rest::describe(&e))
}

/// A workload certificate chain and its key, as PEM.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    pub chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Asks the control plane at `grpc_url` for the certificate of `spiffe_id` for pod `pod`,
/// proving it with `join_token`.
pub async fn certify(
    grpc_url: &str,
    access: &Access,
    spiffe_id: &str,
    pod: &str,
    join_token: &str,
) -> Result<WorkloadCert, tonic::Status> {
    let key = rcgen::KeyPair::generate().map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names =
        vec![rcgen::SanType::URI(spiffe_id.try_into().map_err(
            |e: rcgen::Error| tonic::Status::internal(e.to_string()),
        )?)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let channel = channel(grpc_url, access)
        .await
        .map_err(tonic::Status::unavailable)?;
    let answer = IdentityClient::new(channel)
        .certify(CertifyRequest {
            csr: csr.der().to_vec(),
            proof: Some(certify_request::Proof::JoinToken(join_token.to_string())),
            pod: pod.to_string(),
        })
        .await?
        .into_inner();
    let mut chain_pem = Vec::new();
    for der in &answer.chain {
        chain_pem.extend_from_slice(pem_block("CERTIFICATE", der).as_bytes());
    }
    Ok(WorkloadCert {
        chain_pem,
        key_pem: key.serialize_pem().into_bytes(),
    })
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
