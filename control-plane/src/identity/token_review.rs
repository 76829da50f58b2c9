//! Checking a pod's projected ServiceAccount token with the Kubernetes API: a TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`) for the audience `bulwark`, sent with
//! the control plane's own ServiceAccount token. The API server answers who the token belongs
//! to (`system:serviceaccount:<namespace>:<name>`) and for which audiences it is valid.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;

use super::principal::{Principal, ProofError};

/// The in-cluster API server address, CA and token, where Kubernetes mounts them.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How long one review may take.
const TIMEOUT: Duration = Duration::from_secs(5);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A TokenReview client.
pub struct TokenReview {
    /// `https://host:port` of the API server.
    api: String,
    /// The control plane's own token, read at every review (the kubelet rotates it).
    token_file: PathBuf,
    audience: String,
    client: HttpsClient,
}

impl std::fmt::Debug for TokenReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReview")
            .field("api", &self.api)
            .field("token_file", &self.token_file)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReview {
    /// `ca_pem`: the API server's CA bundle.
    pub fn new(
        api: &str,
        ca_pem: &[u8],
        token_file: PathBuf,
        audience: &str,
    ) -> Result<TokenReview, String> {
        let roots = bulwark_identity::tls::roots(Some(ca_pem))?;
        let tls = rustls::ClientConfig::builder_with_provider(bulwark_identity::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(TokenReview {
            api: api.trim_end_matches('/').to_string(),
            token_file,
            audience: audience.to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// A workload's proof: a ServiceAccount token for the configured audience.
    pub async fn review(&self, token: &str) -> Result<Principal, ProofError> {
        let status = self
            .review_for(token, std::slice::from_ref(&self.audience))
            .await?;
        principal(&status, &self.audience)
    }

    /// Any token (a person's, a tool's, a ServiceAccount's) for `audiences` (empty: the API
    /// server's own): who the API server says it belongs to.
    pub async fn user(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewedUser, ProofError> {
        let status = self.review_for(token, audiences).await?;
        if !status.authenticated {
            return Err(ProofError::Refused(if status.error.is_empty() {
                "not authenticated".to_string()
            } else {
                status.error
            }));
        }
        Ok(ReviewedUser {
            username: status.user.username,
            groups: status.user.groups,
        })
    }

    async fn review_for(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<ReviewStatus, ProofError> {
        let own = std::fs::read_to_string(&self.token_file).map_err(|e| {
            ProofError::Unavailable(format!(
                "cannot read the control plane's token {}: {e}",
                self.token_file.display()
            ))
        })?;
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        });
        let request = hyper::Request::post(format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.api
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", own.trim()),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| ProofError::Unavailable(e.to_string()))?;
        let response = tokio::time::timeout(TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| ProofError::Unavailable(format!("no answer within {TIMEOUT:?}")))?
        .map_err(ProofError::Unavailable)?;
        let (status, body) = response;
        if !status.is_success() {
            return Err(ProofError::Unavailable(format!(
                "the API server answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        let review: Review = serde_json::from_slice(&body)
            .map_err(|e| ProofError::Unavailable(format!("unreadable TokenReview: {e}")))?;
        Ok(review.status)
    }
}

/// Who the API server says a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedUser {
    pub username: String,
    pub groups: Vec<String>,
}

/// The `extra` key under which bound ServiceAccount tokens name their pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

#[derive(Debug, Deserialize)]
struct Review {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: User,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// The principal an authenticated review names.
fn principal(status: &ReviewStatus, audience: &str) -> Result<Principal, ProofError> {
    if !status.authenticated {
        return Err(ProofError::Refused(if status.error.is_empty() {
            "not authenticated".to_string()
        } else {
            status.error.clone()
        }));
    }
    if !status.audiences.iter().any(|a| a == audience) {
        return Err(ProofError::Refused(format!(
            "the token is not for the audience {audience:?} (it is for {:?})",
            status.audiences
        )));
    }
    let parts: Vec<&str> = status.user.username.split(':').collect();
    match parts.as_slice() {
        ["system", "serviceaccount", namespace, name]
            if !namespace.is_empty() && !name.is_empty() =>
        {
            Ok(Principal {
                namespace: namespace.to_string(),
                service_account: name.to_string(),
                pod: status
                    .user
                    .extra
                    .get(POD_NAME)
                    .and_then(|pods| pods.first())
                    .cloned(),
            })
        }
        _ => Err(ProofError::Refused(format!(
            "the token belongs to {:?}, not to a service account",
            status.user.username
        ))),
    }
}
