//! A JSON client for the control plane's REST API (and etcd's health endpoint): every answer
//! with its status, headers and body parsed as JSON.

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
    pub json: Value,
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

/// `None` when the request could not be made (nothing listening) or got no answer in time.
pub async fn try_request(method: http::Method, url: &str, body: Option<&Value>) -> Option<Reply> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .ok()?;
    let response = tokio::time::timeout(PATIENCE, client().request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Some(Reply {
        status,
        headers,
        json,
    })
}

/// Like [`try_request`]; no answer fails the test.
pub async fn request(method: http::Method, url: &str, body: Option<&Value>) -> Reply {
    try_request(method.clone(), url, body)
        .await
        .unwrap_or_else(|| panic!("{method} {url} got no answer"))
}
