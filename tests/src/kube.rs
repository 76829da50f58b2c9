//! A stand-in for the Kubernetes API's TokenReview endpoint — the one stand-in the tests use,
//! because no Kubernetes API server can run on the test machines. It speaks the real wire
//! format over HTTPS (`POST /apis/authentication.k8s.io/v1/tokenreviews`, JSON `TokenReview`
//! in and out, `Authorization: Bearer` of the caller) and answers as the API server does: a
//! known token for one of the requested audiences is authenticated as its service account; an
//! unknown one, or one for other audiences, is not, with the API server's error text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::Body;
use crate::client;
use crate::process::lock;
use crate::streams::TestCa;

/// A ServiceAccount token the stand-in knows.
#[derive(Debug, Clone)]
pub struct KnownToken {
    pub token: String,
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    caller_token: String,
    tokens: Vec<KnownToken>,
    reviews: Vec<Value>,
}

/// The running stand-in; stops when dropped.
#[derive(Debug)]
pub struct TokenReviewApi {
    addr: SocketAddr,
    ca: TestCa,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenReviewApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenReviewApi {
    /// Serves on a free loopback port; only callers presenting `caller_token` are answered.
    pub async fn start(caller_token: &str, tokens: Vec<KnownToken>) -> TokenReviewApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TokenReview stand-in");
        let addr = listener.local_addr().expect("its address");
        let ca = TestCa::new();
        let tls = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
        let state = Arc::new(Mutex::new(State {
            caller_token: caller_token.to_string(),
            tokens,
            reviews: Vec::new(),
        }));
        let shared = state.clone();
        // Connections live in the accept loop's set: dropping the stand-in ends them too, as
        // an API server that went away would.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                let state = shared.clone();
                connections.spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenReviewApi {
            addr,
            ca,
            state,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`, as `--kube-api` takes it.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA bundle that verifies it, as `--kube-ca` takes it.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// Every TokenReview received (the request bodies), in order.
    pub fn reviews(&self) -> Vec<Value> {
        lock(&self.state).reviews.clone()
    }
}

async fn answer(state: &Mutex<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    if path != "/apis/authentication.k8s.io/v1/tokenreviews" {
        return status(
            StatusCode::NOT_FOUND,
            "the server could not find the requested resource",
        );
    }
    let mut state = lock(state);
    if bearer.as_deref() != Some(state.caller_token.as_str()) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "not JSON");
    };
    state.reviews.push(review.clone());
    let token = review["spec"]["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let known = state.tokens.iter().find(|t| t.token == token);
    let status_json = match known {
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, service account token has been invalidated]"})
        }
        Some(t) => {
            let audiences: Vec<&String> =
                wanted.iter().filter(|a| t.audiences.contains(a)).collect();
            if audiences.is_empty() {
                json!({"authenticated": false, "error": "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"bulwark\"]]"})
            } else {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
                        "groups": ["system:serviceaccounts"],
                    },
                    "audiences": audiences,
                })
            }
        }
    };
    let mut answer = review;
    answer["status"] = status_json;
    Response::builder()
        .status(StatusCode::CREATED)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(client::full(answer.to_string()))
        .unwrap_or_else(|_| Response::new(client::empty()))
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(client::full(body.to_string()))
        .unwrap_or_else(|_| Response::new(client::empty()))
}
