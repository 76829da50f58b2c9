//! Upstream connections, the last step of the request path: one [`Endpoint`] per upstream
//! address with its pooled HTTP/1.1 connections and shared HTTP/2 connection ([`endpoint`]),
//! opened within the connect timeout ([`connect`]), HTTP/2 spoken on `h2` directly ([`http2`]),
//! and each request rewritten for the protocol it goes out in ([`wire`]).

pub mod connect;
pub mod endpoint;
mod http2;
pub mod wire;

pub use connect::ConnectSettings;
pub use endpoint::Endpoint;
pub use wire::Wire;
