//! Routing: which upstream a request goes to. [`table`] is the applied policy snapshot,
//! compiled — authority (or a per-upstream local port) → upstream, and the local app for
//! inbound requests; [`upstream`] compiles one upstream, carrying its state over from the
//! previous snapshot, and [`tls`] its `spec.tls`; [`access`] is who may call the
//! local app. Within an upstream, the route (`spec.routes`) is the policy stack's first
//! step.

pub mod access;
pub mod table;
mod tls;
pub mod upstream;

pub use table::{LocalService, PolicySet, Route, RouteRef, RouteTable};
pub use upstream::{BuildEnv, Upstream};
