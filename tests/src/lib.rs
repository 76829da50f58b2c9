//! Bulwark's test kit, for the end-to-end tests of every part: real HTTP and gRPC upstreams,
//! the real `sidecar` and `control-plane` binaries and real etcd (one member or a cluster) as
//! child processes, clients that dial them (HTTP, gRPC, the control plane's REST API, a raw
//! Discovery stream), a TCP proxy that can cut a process off, open-loop load for the chaos
//! suite, and a bounded poller for cross-process waits.
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

pub mod body;
pub mod client;
pub mod control_plane;
mod counters;
pub mod discovery;
pub mod etcd;
pub mod fault;
pub mod grpc_upstream;
pub mod grpc_wire;
pub mod http_upstream;
pub mod kube;
pub mod load;
pub mod metrics;
pub mod netns;
pub mod otlp;
pub mod pattern;
pub mod policy;
pub mod poll;
pub mod process;
pub mod raw;
pub mod rest;
mod serve;
pub mod sidecar;
pub mod streams;
pub mod tcp_proxy;
pub mod webhook_receiver;
pub mod workload;

/// The generated code of `proto/echo.proto`.
pub mod pb {
    tonic::include_proto!("bulwark.test.v1");
}

pub use body::{Body, BoxError};
pub use control_plane::ControlPlane;
pub use counters::{Record, SEEN_LIMIT, Seen};
pub use discovery::DiscoveryStream;
pub use etcd::{Etcd, EtcdCluster, EtcdTlsFiles};
pub use fault::Fault;
pub use grpc_upstream::GrpcUpstream;
pub use http_upstream::HttpUpstream;
pub use poll::{PATIENCE, eventually, try_eventually, wait_for};
pub use process::TempDir;
pub use rest::Reply;
pub use sidecar::Sidecar;
pub use tcp_proxy::TcpProxy;
pub use webhook_receiver::WebhookReceiver;
