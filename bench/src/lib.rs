//! bulwark-bench: the tools of `bench/run`, which measures direct calls, Bulwark and Envoy side by
//! side. `bulwark-load` makes the load wrk and h2load cannot (open loop at a fixed rate, the
//! gRPC bidi stream, 100 MB transfers); `bulwark-bench-report` turns a run's raw outputs into the
//! table of medians and ratios; `bulwark-overload` measures goodput under overload
//! (`bench/overload`).

pub mod bidi;
pub mod bulk;
pub mod grpc;
pub mod http1;
pub mod latency;
pub mod open_loop;
pub mod overload;
pub mod pace;
pub mod report;
pub mod tools;

/// The error type of bodies and connections.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
