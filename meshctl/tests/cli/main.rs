//! meshctl's tests, one binary: the real `meshctl` binary run as a user runs it, against a
//! stand-in control plane (`support`) that answers each route as a test says.

mod apply;
mod convert;
mod degradation;
mod get;
mod inject;
mod operations;
mod output;
mod schema;
mod server;
mod support;
mod validate;
mod version;
