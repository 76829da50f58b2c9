//! The control plane's APIs: the operator API over REST ([`rest`]) and gRPC ([`operator`]),
//! both through [`ops`] (and [`degradation`] for levels, events and overrides), and the
//! sidecars' stream ([`discovery`]).

pub mod degradation;
pub mod discovery;
pub mod operator;
pub mod ops;
pub mod rest;
