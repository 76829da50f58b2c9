//! Bulwark end-to-end test kit: real HTTP and gRPC upstreams, the real `sidecar` binary as a
//! child process, clients that dial the sidecar, and a bounded poller for cross-process waits.
//!
//! A test reads like this:
//!
//! ```no_run
//! # async fn demo() {
//! use bulwark_tests::{HttpUpstream, Sidecar, client, policy};
//! let upstream = HttpUpstream::start().await;
//! let sidecar = Sidecar::builder()
//!     .policies_yaml(policy::upstream("echo", upstream.addr()).to_yaml())
//!     .start()
//!     .await;
//! let http = client::http1_client(sidecar.outbound());
//! let res = client::get(&http, "http://echo/status/204").await;
//! assert_eq!(res.status, 204);
//! assert_eq!(upstream.requests(), 1);
//! # }
//! ```

pub mod client;
pub mod control_plane;
mod counters;
pub mod etcd;
pub mod fault;
pub mod grpc_upstream;
pub mod grpc_wire;
pub mod http_upstream;
pub mod metrics;
pub mod pattern;
pub mod policy;
pub mod poll;
pub mod raw;
mod serve;
pub mod sidecar;
pub mod webhook_receiver;

/// The generated code of `proto/echo.proto`.
pub mod pb {
    tonic::include_proto!("bulwark.test.v1");
}

pub use control_plane::ControlPlane;
pub use counters::{Record, SEEN_LIMIT, Seen};
pub use etcd::Etcd;
pub use fault::Fault;
pub use grpc_upstream::GrpcUpstream;
pub use http_upstream::HttpUpstream;
pub use poll::{eventually, try_eventually};
pub use sidecar::Sidecar;
pub use webhook_receiver::WebhookReceiver;

/// The error type of the kit's bodies and clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the kit's servers answer with and its clients send.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
