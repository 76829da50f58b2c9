//! The HTTP client to the control plane's REST API: HTTPS (rustls, the CA of the context or
//! Mozilla's roots; a client certificate when the context has one) or, for a control plane run
//! with `--insecure-dev`, plain HTTP/1.1; a bearer token when the context has one; JSON in and
//! out, bounded by a connect and a whole-request timeout. Failures are handed to
//! [`CliError`]'s classifiers; nothing here decides an exit status.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{Connection, Credential, Server};
use crate::errors::CliError;
use crate::output::{Format, Output};

/// A control plane that does not accept a connection in this time is treated as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds a whole exchange, body included: an apply is one etcd transaction, never slow.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Set on reads served from a replica's index while it cannot reach etcd.
const STALE_HEADER: &str = "x-bulwark-stale";

/// A decoded 2xx answer.
#[derive(Debug)]
pub struct Reply<T> {
    pub body: T,
    /// The answer came from a replica that cannot reach etcd and may be out of date.
    pub stale: bool,
}

/// One control plane's API.
pub struct Client {
    server: Server,
    authorization: Option<HeaderValue>,
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    pub fn new(connection: Connection) -> Result<Self, CliError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = tls(&connection)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let authorization = match &connection.credential {
            Credential::Token(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    CliError::Usage("the token holds characters a header cannot".into())
                })?,
            ),
            _ => None,
        };
        Ok(Client {
            server: connection.server,
            authorization,
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The server's address, as messages show it.
    pub fn server(&self) -> &str {
        &self.server.url
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, CliError> {
        self.send(Method::GET, path, None).await
    }

    /// `-o json|yaml`: the control plane's answer to `GET path`, printed as it came (with the
    /// stale note on stderr when it may be out of date).
    pub async fn document(&self, path: &str, format: Format) -> Result<Output, CliError> {
        let reply = self.get::<serde_json::Value>(path).await?;
        let mut out = Output::default();
        out.stale(reply.stale);
        out.document(format, &reply.body).map_err(CliError::Usage)?;
        Ok(out)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Reply<T>, CliError> {
        self.send(Method::POST, path, Some(encode(body)?)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Reply<T>, CliError> {
        self.send(Method::PUT, path, Some(encode(body)?)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, CliError> {
        self.send(Method::DELETE, path, None).await
    }

    /// Follows a watch (`GET /v1/watch/...`): calls `on_line` with each line of the stream as
    /// it comes, until the server ends it. Only the answer's head is bounded in time.
    pub async fn watch(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let server = self.server.url.as_str();
        let what = format!("GET {path}");
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(self.server.uri(path)?)
            .header(ACCEPT, HeaderValue::from_static("application/x-ndjson"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("meshctl/", env!("CARGO_PKG_VERSION"))),
            );
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| CliError::Usage(format!("cannot build the request: {e}")))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| CliError::timed_out(server, REQUEST_TIMEOUT))?
            .map_err(|e| CliError::from_transport(server, &e, CONNECT_TIMEOUT))?;
        let (parts, mut body) = response.into_parts();
        if !parts.status.is_success() {
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
                .await
                .map_err(|_| CliError::timed_out(server, REQUEST_TIMEOUT))?
                .map_err(|e| CliError::from_transport(server, &e, CONNECT_TIMEOUT))?
                .to_bytes();
            return Err(CliError::from_response(server, &what, parts.status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CliError::from_transport(server, &e, CONNECT_TIMEOUT))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = line.trim_ascii();
                if !line.is_empty() {
                    on_line(line)?;
                }
            }
        }
        Ok(())
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply<T>, CliError> {
        let server = self.server.url.as_str();
        let what = format!("{method} {path}");
        let mut request = Request::builder()
            .method(method)
            .uri(self.server.uri(path)?)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("meshctl/", env!("CARGO_PKG_VERSION"))),
            );
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Usage(format!("cannot build the request: {e}")))?;

        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| CliError::from_transport(server, &e, CONNECT_TIMEOUT))?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| CliError::from_transport(server, &e, CONNECT_TIMEOUT))?
                .to_bytes();
            Ok::<_, CliError>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| CliError::timed_out(server, REQUEST_TIMEOUT))??;

        if !parts.status.is_success() {
            return Err(CliError::from_response(server, &what, parts.status, &bytes));
        }
        let stale = parts
            .headers
            .get(STALE_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| CliError::bad_answer(server, format!("{path}: {e}")))?;
        Ok(Reply { body, stale })
    }
}

/// TLS: the connection's CA (or Mozilla's roots) and its client certificate, if any.
fn tls(connection: &Connection) -> Result<rustls::ClientConfig, CliError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let usage = |what: &str, e: &dyn std::fmt::Display| CliError::Usage(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    match &connection.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| usage("the CA file", &e))?;
                roots.add(cert).map_err(|e| usage("the CA file", &e))?;
            }
            if roots.is_empty() {
                return Err(CliError::Usage(
                    "the CA file holds no PEM certificate".into(),
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| usage("TLS", &e))?
    .with_root_certificates(roots);
    match &connection.credential {
        Credential::Certificate { chain, key } => {
            let chain = CertificateDer::pem_slice_iter(chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| usage("the client certificate", &e))?;
            let key =
                PrivateKeyDer::from_pem_slice(key).map_err(|e| usage("the client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| usage("the client certificate", &e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>, CliError> {
    serde_json::to_vec(body).map_err(|e| CliError::Usage(format!("cannot encode the request: {e}")))
}
