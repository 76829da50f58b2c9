//! The policy model against what users read and write: every example parses and validates,
//! and the policy reference documents every field.

mod docs;
mod examples;
