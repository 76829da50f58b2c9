//! The control plane's APIs: the operator API over REST ([`rest`]) and gRPC ([`operator`]),
//! both through [`ops`] (and [`degradation`] for levels, events and overrides, [`pods`] for
//! the connected pods and their identities, [`graph`] for a service's callers and upstreams),
//! and the
//! sidecars' stream ([`discovery`]).

pub mod access;
pub mod degradation;
pub mod diagnostics;
pub mod discovery;
pub mod graph;
pub mod grpc_health;
pub mod limits;
pub mod openapi;
pub mod operator;
pub mod ops;
pub mod pods;
pub mod rest;
pub mod ui;
pub mod watch;
