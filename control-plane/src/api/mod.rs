//! The control plane's APIs: the operator API over REST ([`rest`]) and gRPC ([`operator`]),
//! both through [`ops`], and the sidecars' snapshot stream ([`discovery`]).

pub mod discovery;
pub mod operator;
pub mod ops;
pub mod rest;
