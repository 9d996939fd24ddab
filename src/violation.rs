//! Field-level validation failures, carried to clients as gRPC
//! `INVALID_ARGUMENT` with `google.rpc.BadRequest` details.

use std::fmt;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `prefixes[2]` or `ttl`.
    pub field: String,
    /// Why the value was rejected, in words a user can act on.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field` described by `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A request that failed validation: every violated field, not just the
/// first, so a user fixes them all in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidRequest {
    /// The violations, in field order.
    pub violations: Vec<FieldViolation>,
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid request: ")?;
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl InvalidRequest {
    /// The `INVALID_ARGUMENT` status with one BadRequest field violation per
    /// rejected field.
    pub fn to_status(&self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::new();
        for v in &self.violations {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, self.to_string(), details)
    }
}

/// Collects violations while a request is checked field by field.
#[derive(Debug, Default)]
pub(crate) struct Violations(Vec<FieldViolation>);

impl Violations {
    pub(crate) fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps `Ok` values and records the error of an `Err` under `field`.
    pub(crate) fn check<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }

    pub(crate) fn finish(self) -> Result<(), InvalidRequest> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidRequest { violations: self.0 })
        }
    }
}
