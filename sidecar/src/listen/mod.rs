//! The first step of the request path: listeners and what they do with a connection and a
//! request. [`accept`] binds and accepts; [`conn`] serves a connection with hyper until
//! shutdown or idleness ([`activity`]), HTTP/1.1 behind a [`guard`] that follows its framing
//! (request heads framed twice, heads too slow to arrive); a connection iptables redirected is looked at first by [`captured`] (its original
//! destination, what it speaks: [`detect`]); inbound mesh TLS is terminated by [`mtls`];
//! [`proxy`] admits inbound requests ([`admit`]: mTLS mode, authorization), routes each request and sends it through
//! its upstream's stack; [`observe`] writes the access log line and the request metrics when the
//! response ends; [`upgrade`] and [`tunnel`] carry WebSocket, CONNECT and whatever is not HTTP
//! as bytes ([`splice`]: in the kernel, between two plain sockets).

pub mod accept;
pub mod activity;
pub mod admit;
pub mod captured;
pub mod conn;
pub mod detect;
pub mod guard;
pub mod mtls;
pub mod observe;
pub mod proxy;
pub mod splice;
pub mod tunnel;
pub mod upgrade;

pub use accept::{ConnLimits, Connections, Listener};
pub use proxy::Target;
