//! Bulwark's end-to-end tests, one binary: the real `sidecar` and `control-plane` binaries, real
//! etcd, and real HTTP/1.1, HTTP/2 and gRPC servers and clients on loopback, through the shared
//! test kit (`bulwark-tests`). One module per area.

mod admin_reload;
mod bad_input;
mod capture;
mod control_plane;
mod control_plane_trust;
mod dashboard;
mod degradation;
mod http1;
mod http2_grpc;
mod kit;
mod lifecycle;
mod mtls;
mod overload;
mod resilience_breaker;
mod resilience_deadline;
mod resilience_examples;
mod resilience_failover;
mod resilience_limits;
mod resilience_outlier;
mod resilience_retry;
mod resilience_routes;
mod routing;
mod tracing;
mod tunnels;
mod upstreams;
