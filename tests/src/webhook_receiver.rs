//! An alert webhook receiver: a real HTTP server that records the JSON body of every POST and
//! answers 200 (or a chosen status for the first N posts, to exercise retries).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::client;
use crate::process::lock;
use crate::serve::{self, Serving};

#[derive(Debug, Default)]
struct Received {
    bodies: Mutex<Vec<serde_json::Value>>,
    posts: AtomicU64,
    fail_first: AtomicU64,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    received: Arc<Received>,
    serving: Serving,
}

impl WebhookReceiver {
    /// Starts on a free loopback port; the first `fail_first` posts are answered 503.
    pub async fn start(fail_first: u64) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let received = Arc::new(Received::default());
        received.fail_first.store(fail_first, Ordering::SeqCst);
        let state = received.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(answer(&state, req).await) }
        });
        let serving = serve::spawn(listener, service).expect("serve the webhook receiver");
        WebhookReceiver { received, serving }
    }

    /// The URL to configure as `alerts.webhook`.
    pub fn url(&self) -> String {
        format!("http://{}/bulwark", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.serving.addr()
    }

    /// Every alert accepted (answered 200), in arrival order.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        lock(&self.received.bodies).clone()
    }

    /// Every POST, refused ones included.
    pub fn posts(&self) -> u64 {
        self.received.posts.load(Ordering::SeqCst)
    }
}

async fn answer(state: &Received, req: Request<Incoming>) -> Response<Body> {
    state.posts.fetch_add(1, Ordering::SeqCst);
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let failing = state
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    match serde_json::from_slice(&bytes) {
        Ok(value) => {
            lock(&state.bodies).push(value);
            status(StatusCode::OK)
        }
        Err(_) => status(StatusCode::BAD_REQUEST),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(client::empty());
    *res.status_mut() = code;
    res
}
