//! The error of a streamed body: the peer's connection or stream failed mid-body (a hyper error
//! from a client or an HTTP/1.1 upstream, an h2 error from an HTTP/2 upstream).

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
