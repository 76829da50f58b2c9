//! The sidecar-injection webhook: HTTPS on `--webhook`, where the API server sends
//! `POST /inject` with an AdmissionReview (v1) for every opted-in pod it creates, and gets back
//! `bulwark-inject`'s answer — a JSON Patch adding the sidecar, the pod unchanged, or a denial
//! with the reason. The decision is the library's; this module owns the transport: TLS with a
//! certificate that follows its files (`serve::certs`), HTTP/1.1 and HTTP/2, limits, one log line per
//! review.
//!
//! ```text
//!  accept ─► TLS handshake (CertReloader) ─► hyper (h1 | h2) ─► router: POST /inject
//!                                                                  └ admission_review_response
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bulwark_inject::{InjectOptions, admission_review_response};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use serde_json::Value;

use crate::serve::certs::CertReloader;

/// The largest AdmissionReview accepted. The API server sends the whole pod, which etcd caps at
/// 1.5 MiB; more than that is not a pod.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// A client that has not finished its TLS handshake, or sent its request headers, by then is
/// dropped (the API server gives the whole call 5 s: `timeoutSeconds`).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait to be accepted. The API server needs a handful per
/// replica; the port is reachable from anywhere in the cluster.
pub const MAX_CONNECTIONS: usize = 512;

/// What the webhook needs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain (end-entity first), read again when it changes.
    pub cert: PathBuf,
    /// PEM private key of the certificate.
    pub key: PathBuf,
    /// Defaults for every injected sidecar (pods override them by annotation).
    pub inject: InjectOptions,
}

/// The TLS set-up: TLS 1.2 and 1.3, HTTP/2 or HTTP/1.1 by ALPN, the certificate from `certs`.
pub fn tls_config(
    provider: Arc<CryptoProvider>,
    certs: Arc<CertReloader>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The webhook's HTTP routes: `POST /inject`; 405 for other methods there, 404 elsewhere.
pub fn router(opts: Arc<InjectOptions>) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(opts)
}

/// `POST /inject`: the AdmissionReview in, the library's AdmissionReview out. The pod's
/// namespace counts as opted in: the webhook configuration's selectors only send pods that
/// opted in (by namespace or pod label); the pod's own annotation can still opt it out.
async fn inject(State(opts): State<Arc<InjectOptions>>, body: Bytes) -> Response {
    let review: Value = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(e) => return bad_request(format!("the body is not valid JSON: {e}")),
    };
    if let Err(problem) = check_review(&review) {
        return bad_request(problem.to_string());
    }
    let answer = admission_review_response(&review, &opts, true);
    log_review(&review, &answer);
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

/// What the library needs of a review, so that the API server's mistakes (or a stray client's)
/// get a 400 instead of an answer for an empty request.
fn check_review(review: &Value) -> Result<(), &'static str> {
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err("expected an AdmissionReview of apiVersion admission.k8s.io/v1");
    }
    match review.get("request") {
        Some(Value::Object(request)) if request.get("uid").is_some_and(Value::is_string) => Ok(()),
        _ => Err("the AdmissionReview has no request with a uid"),
    }
}

fn bad_request(message: String) -> Response {
    tracing::debug!(%message, "webhook: bad request");
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// One line per review: which pod, and what was decided.
fn log_review(review: &Value, answer: &Value) {
    let request = &review["request"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let namespace = text(&request["namespace"]);
    let meta = &request["object"]["metadata"];
    // Pods of a workload have no name yet when they are created: their generateName says whose
    // they are.
    let pod = match meta["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => text(&meta["generateName"]),
    };
    let uid = text(&request["uid"]);
    let response = &answer["response"];
    if response["allowed"] == Value::Bool(false) {
        let reason = text(&response["status"]["message"]);
        tracing::info!(%namespace, %pod, %uid, decision = "denied", %reason, "admission review");
    } else if response.get("patch").is_some() {
        tracing::info!(%namespace, %pod, %uid, decision = "injected", "admission review");
    } else {
        // Opted out, not a pod creation, or already injected as it would be.
        tracing::info!(%namespace, %pod, %uid, decision = "unchanged", "admission review");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use serde_json::json;
    use tower::ServiceExt as _;

    async fn call(method: &str, path: &str, body: impl Into<Body>) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let response = router(Arc::new(InjectOptions::default()))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn review(object: Value) -> String {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": object,
            },
        })
        .to_string()
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]},
        })
    }

    #[tokio::test]
    async fn a_pod_gets_the_librarys_answer() {
        let (status, body) = call("POST", "/inject?timeout=5s", review(pod())).await;
        assert_eq!(status, StatusCode::OK);
        let answer: Value = serde_json::from_str(&body).unwrap();
        let expected = admission_review_response(
            &serde_json::from_str(&review(pod())).unwrap(),
            &InjectOptions::default(),
            true,
        );
        assert_eq!(answer, expected);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_with_the_reason() {
        let (status, body) = call("POST", "/inject", "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body.starts_with("the body is not valid JSON: key must be a string at line 1"),
            "{body}"
        );

        let (status, body) = call("POST", "/inject", "{\"kind\": \"Pod\"}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            "expected an AdmissionReview of apiVersion admission.k8s.io/v1\n"
        );

        let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
        let (status, body) = call("POST", "/inject", no_request.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "the AdmissionReview has no request with a uid\n");
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_413() {
        let (status, _) = call("POST", "/inject", vec![b' '; MAX_BODY + 1]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Up to the limit is read (and then found not to be JSON).
        let (status, _) = call("POST", "/inject", vec![b' '; MAX_BODY]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn other_methods_and_paths() {
        assert_eq!(
            call("GET", "/inject", "").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(call("POST", "/mutate", "").await.0, StatusCode::NOT_FOUND);
        assert_eq!(call("GET", "/", "").await.0, StatusCode::NOT_FOUND);
    }
}
