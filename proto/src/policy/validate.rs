//! Semantic validation of policy resources: one pass that collects every problem with its
//! field path (`spec.retry.backoff.multiplier: must be >= 1.0, got 0.5`).

use std::fmt;

use super::{Resource, ServicePolicy, UpstreamPolicy};

/// One problem in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// `Kind/namespace/name` of the resource.
    pub resource: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.resource)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Resource {
    /// Checks every field; `Err` lists all problems found.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut v = Validator::default();
        match self {
            Resource::UpstreamPolicy(p) => validate_upstream(p, &mut v),
            Resource::ServicePolicy(p) => validate_service(p, &mut v),
        }
        if v.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                resource: self.id(),
                errors: v.errors,
            })
        }
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn validate_upstream(_p: &UpstreamPolicy, _v: &mut Validator) {}

fn validate_service(_p: &ServicePolicy, _v: &mut Validator) {}
