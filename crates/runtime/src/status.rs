//! Turning validation failures into precise gRPC statuses.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt as _};

/// Field violations collected while validating a request; empty means valid.
#[derive(Debug, Default, Clone)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` (a proto field path such as `lines[2].quantity`) is invalid.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations recorded so far.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|violation| (violation.field.as_str(), violation.description.as_str()))
    }

    /// `Ok(())` when empty, else INVALID_ARGUMENT carrying every violation as `BadRequest`.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_status())
        }
    }

    /// INVALID_ARGUMENT with a message naming the fields and a `BadRequest` detail.
    pub fn into_status(self) -> Status {
        let message = self
            .0
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect::<Vec<_>>()
            .join("; ");
        Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(self.0),
        )
    }
}

/// Preconditions a well-formed request failed (the state of the system, not the request's form,
/// is in the way); empty means none.
#[derive(Debug, Default, Clone)]
pub struct Preconditions {
    violations: Vec<PreconditionViolation>,
    info: HashMap<String, String>,
}

impl Preconditions {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failed precondition of `kind` (for example `PRICE_CHANGED`) on `subject` (the
    /// request field it concerns).
    pub fn add(
        &mut self,
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) {
        self.violations
            .push(PreconditionViolation::new(kind, subject, description));
    }

    /// Adds a machine-readable fact to the status's `ErrorInfo` metadata.
    pub fn note(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.info.insert(key.into(), value.into());
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations recorded so far: (type, subject, description).
    pub fn violations(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.violations.iter().map(|violation| {
            (
                violation.r#type.as_str(),
                violation.subject.as_str(),
                violation.description.as_str(),
            )
        })
    }

    /// FAILED_PRECONDITION whose message lists the violations, with a `PreconditionFailure`
    /// detail and, when facts were noted, an `ErrorInfo` with `reason` in `domain` (the API
    /// package, such as `zentra.order.v1`).
    pub fn into_status(self, reason: &str, domain: &str) -> Status {
        let message = self
            .violations
            .iter()
            .map(|violation| format!("{}: {}", violation.subject, violation.description))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::with_precondition_failure(self.violations);
        if !self.info.is_empty() {
            details.set_error_info(reason, domain, self.info);
        }
        Status::with_error_details(Code::FailedPrecondition, message, details)
    }
}

/// INVALID_ARGUMENT for a single field.
pub fn invalid_field(field: &str, description: &str) -> Status {
    let mut violations = Violations::new();
    violations.add(field, description);
    violations.into_status()
}

/// Checks an idempotency key: 1..=128 printable ASCII characters.
pub fn check_idempotency_key(key: &str, violations: &mut Violations) {
    if key.is_empty() {
        violations.add("idempotency_key", "is required");
    } else if key.len() > 128 {
        violations.add("idempotency_key", "must be at most 128 characters");
    } else if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        violations.add("idempotency_key", "must be printable ASCII without spaces");
    }
}

/// Checks a free-text field: 1..=`max_chars` characters after trimming, no control characters
/// (PostgreSQL refuses NUL in text, and nothing legitimate needs the others).
pub fn check_text(field: &str, value: &str, max_chars: usize, violations: &mut Violations) {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max_chars {
        violations.add(field, format!("must be 1..={max_chars} characters"));
    } else if trimmed.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

/// Parses a UUID field, recording a violation when it is missing or malformed.
pub fn parse_uuid(field: &str, value: &str, violations: &mut Violations) -> Option<uuid::Uuid> {
    if value.is_empty() {
        violations.add(field, "is required");
        return None;
    }
    if value.len() > 36 {
        violations.add(field, "must be a UUID (36 characters)");
        return None;
    }
    match uuid::Uuid::parse_str(value) {
        Ok(id) => Some(id),
        Err(_) => {
            violations.add(field, "must be a UUID");
            None
        }
    }
}

/// The status for a database failure: UNAVAILABLE when no pooled connection came free in time (the
/// service is overloaded) or the connection failed (a transaction shared with other calls did
/// not commit, or the service is stopping): the call may be retried. Else INTERNAL. The detail
/// goes to the log, not to the caller.
pub fn database_error(error: &sea_orm::DbErr) -> Status {
    if matches!(error, sea_orm::DbErr::ConnectionAcquire(_)) {
        tracing::warn!(%error, "no database connection free");
        Status::unavailable("overloaded: no database connection came free in time; retry later")
    } else if matches!(error, sea_orm::DbErr::Conn(_)) {
        tracing::warn!(%error, "database connection failed");
        Status::unavailable("the database connection failed; retry later")
    } else {
        tracing::error!(%error, "database error");
        Status::internal("internal error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_become_failed_precondition_with_their_violations_and_facts() {
        let mut failed = Preconditions::new();
        failed.add("PRICE_CHANGED", "lines[1].unit_price", "now 1299 USD");
        failed.note("LAMP-1", "1299 USD");
        let status = failed.into_status("PRICE_CHANGED", "zentra.order.v1");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "lines[1].unit_price: now 1299 USD");
        let details = status.get_error_details();
        let violations = &details
            .precondition_failure()
            .expect("precondition failure")
            .violations;
        assert_eq!(violations[0].r#type, "PRICE_CHANGED");
        assert_eq!(violations[0].subject, "lines[1].unit_price");
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "PRICE_CHANGED");
        assert_eq!(
            info.metadata.get("LAMP-1").map(String::as_str),
            Some("1299 USD")
        );
    }

    #[test]
    fn violations_become_invalid_argument_with_bad_request_details() {
        let mut violations = Violations::new();
        violations.add("sku", "is required");
        violations.add("lines[0].quantity", "must be at least 1");
        let status = violations.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|v| v.field.clone())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(fields, ["sku", "lines[0].quantity"]);
    }

    #[test]
    fn an_exhausted_pool_is_unavailable_and_other_database_errors_internal() {
        let busy = sea_orm::DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(database_error(&busy).code(), Code::Unavailable);
        let broken = sea_orm::DbErr::Custom("relation does not exist".to_owned());
        let status = database_error(&broken);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("relation"), "no detail leaks");
    }

    #[test]
    fn idempotency_keys_must_be_present_short_and_printable() {
        for (key, ok) in [
            ("", false),
            ("k-1", true),
            ("has space", false),
            (&"x".repeat(129), false),
        ] {
            let mut violations = Violations::new();
            check_idempotency_key(key, &mut violations);
            assert_eq!(violations.is_empty(), ok, "{key:?}");
        }
    }
}
