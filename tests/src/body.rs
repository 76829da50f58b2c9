//! The body type the kit's servers answer with and its clients send, and its error.

/// The error type of the kit's bodies and clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the kit's servers answer with and its clients send.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
