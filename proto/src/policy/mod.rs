//! The policy model: the two resource kinds as serde types, exactly as users write them in
//! YAML or JSON (camelCase fields, durations like `250ms`, rates like `50%`).
//!
//! The types ([`model`]) hold what the user wrote; `validate` checks every
//! field and reports all problems with their paths, and the `units` parsers turn the textual
//! values into numbers. Defaults live in [`defaults`] so that code and docs agree.

pub mod capability;
pub mod defaults;
mod load;
mod model;
pub mod refs;
#[cfg(feature = "schema")]
pub mod schema;
pub mod units;
mod validate;

pub use capability::CapabilityExpr;
pub use load::{
    LoadError, parse_documents, parse_documents_in, parse_each_in, parse_json, parse_yaml,
    policy_files,
};
pub use model::*;
pub use units::{Condition, Duration, GrpcCode, Percent};
pub use validate::{FieldError, ValidationErrors};
