//! The first step of the request path: listeners and what they do with a request. [`accept`]
//! binds, accepts, detects HTTP/1.1 or HTTP/2 and serves connections until shutdown; [`proxy`]
//! routes each request and sends it through its upstream's stack; [`observe`] writes the access
//! log line and the request metrics when the response ends.

pub mod accept;
pub mod observe;
pub mod proxy;

pub use accept::{ConnLimits, Connections, Listener};
pub use proxy::Target;
