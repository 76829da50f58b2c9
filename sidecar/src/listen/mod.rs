//! The first step of the request path: listeners and what they do with a connection and a
//! request. [`accept`] binds and accepts; [`conn`] serves a connection with hyper until
//! shutdown; a connection iptables redirected is looked at first by [`captured`] (its original
//! destination, what it speaks: [`detect`]); inbound mesh TLS is terminated by [`mtls`];
//! [`proxy`] admits inbound requests ([`admit`]: mTLS mode, authorization), routes each request and sends it through
//! its upstream's stack; [`observe`] writes the access log line and the request metrics when the
//! response ends; [`upgrade`] and [`tunnel`] carry WebSocket, CONNECT and whatever is not HTTP
//! as bytes ([`splice`]: in the kernel, between two plain sockets).

pub mod accept;
pub mod admit;
pub mod captured;
pub mod conn;
pub mod detect;
pub mod mtls;
pub mod observe;
pub mod proxy;
pub mod splice;
pub mod tunnel;
pub mod upgrade;

pub use accept::{ConnLimits, Connections, Listener};
pub use proxy::Target;
