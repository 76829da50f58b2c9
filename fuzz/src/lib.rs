//! What the fuzz targets share: a runtime, a sidecar's state built as the binary builds it,
//! and a loopback upstream that answers every request.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bulwark_sidecar::listen::ConnLimits;
use bulwark_sidecar::listen::accept::connection_builder;
use bulwark_sidecar::route::{LocalService, PolicySet};
use bulwark_sidecar::state::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// One runtime per fuzzing process; a target blocks on it for each input, which is also when
/// the upstream's tasks run.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// The sidecar's limits, as its defaults set them.
pub const LIMITS: ConnLimits = ConnLimits {
    max_header_bytes: 16 * 1024,
    header_read_timeout: Duration::from_secs(2),
    max_connections: 1024,
    idle_timeout: Duration::from_secs(3600),
};

/// The state of a sidecar of `shop/web` (its app on `app_port`), with no policy applied.
pub fn sidecar(app_port: Option<u16>) -> Arc<Shared> {
    let local = LocalService {
        namespace: "shop".into(),
        service: Some("web".into()),
        app_port,
        inbound_port: None,
        mtls_default: Default::default(),
    };
    Arc::new(Shared::new(local, "web-0".into(), None))
}

/// Applies `resources` as a snapshot; the sidecar's own error if it refuses them.
pub fn apply(
    shared: &Shared,
    resources: Vec<bulwark_proto::policy::Resource>,
) -> Result<(), String> {
    shared.apply(&PolicySet {
        version: "1".into(),
        source: "fuzz".into(),
        resources,
    })
}

/// The connection builder the sidecar's listeners use.
pub fn builder() -> Arc<auto::Builder<TokioExecutor>> {
    Arc::new(connection_builder(LIMITS))
}

/// A loopback HTTP/1.1 and HTTP/2 server that reads each request's body and answers
/// `200 ok`; runs on [`RUNTIME`] while a target blocks on it.
pub fn upstream() -> SocketAddr {
    RUNTIME.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("the upstream's address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        },
                    );
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    })
}
