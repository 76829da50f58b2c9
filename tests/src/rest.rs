//! A JSON client for the control plane's REST API (and etcd's health endpoint): every answer
//! with its status, headers and body parsed as JSON.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::poll::PATIENCE;

/// An HTTP answer with its body parsed as JSON (`Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The body as JSON (`Null` when it is not).
    pub json: Value,
    /// The body's lines that are JSON values (a watch's events).
    pub lines: Vec<Value>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The control plane served the read from an index it knows may be behind etcd.
    pub fn stale(&self) -> bool {
        self.header("x-bulwark-stale") == Some("true")
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// How a client reaches a control plane that runs with TLS and authentication: the CA its
/// certificate is checked against, a bearer token, a client certificate. The default is plain
/// HTTP with no credentials.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// PEM roots for `https://` URLs.
    pub ca: Option<Vec<u8>>,
    pub token: Option<String>,
    /// A client certificate chain and its key (PEM).
    pub certificate: Option<(Vec<u8>, Vec<u8>)>,
}

impl Access {
    /// The same access with another token (`None`: no token).
    pub fn with_token(&self, token: Option<&str>) -> Access {
        Access {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// The same access with a client certificate and no token.
    pub fn with_certificate(&self, chain_pem: &[u8], key_pem: &[u8]) -> Access {
        Access {
            token: None,
            certificate: Some((chain_pem.to_vec(), key_pem.to_vec())),
            ..self.clone()
        }
    }

    /// The rustls client configuration of `https://` URLs.
    pub fn tls(&self) -> Result<rustls::ClientConfig, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca {
            for cert in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        match &self.certificate {
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Sends one request with `access`; the error says what failed (a refused handshake, no
/// answer).
pub async fn send_with(
    access: &Access,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(token) = &access.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = if url.starts_with("https://") {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(access.tls()?)
            .https_only()
            .enable_http1()
            .build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        tokio::time::timeout(PATIENCE, client.request(request)).await
    } else {
        tokio::time::timeout(PATIENCE, client().request(request)).await
    };
    let response = response
        .map_err(|_| format!("no answer within {PATIENCE:?}"))?
        .map_err(|e| describe(&e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, bytes))
}

/// An error with its causes (hyper's own text hides the TLS alert).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A JSON request with `access`; the error says why there is no answer.
pub async fn request_with(
    access: &Access,
    method: http::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, headers, bytes) = send_with(
        access,
        method,
        url,
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await?;
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let lines = bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    Ok(Reply {
        status: status.as_u16(),
        headers,
        json,
        lines,
    })
}

/// `None` when the request could not be made (nothing listening) or got no answer in time.
pub async fn try_request(method: http::Method, url: &str, body: Option<&Value>) -> Option<Reply> {
    request_with(&Access::default(), method, url, body)
        .await
        .ok()
}

/// Like [`try_request`]; no answer fails the test.
pub async fn request(method: http::Method, url: &str, body: Option<&Value>) -> Reply {
    try_request(method.clone(), url, body)
        .await
        .unwrap_or_else(|| panic!("{method} {url} got no answer"))
}
