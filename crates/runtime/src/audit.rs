//! The audit trail: every operator and admin action a service takes (faults, kill, log level,
//! dead-letter replay and dismissal, saga retry, cancel, resume and skip, breaker reset) is stored
//! in the service's own `audit_records` table with who asked, from where, on what, why, and what
//! came of it.
//!
//! A record is written before the action runs and completed after it, so an action is never
//! taken without a trace: if the record cannot be written the action is refused (UNAVAILABLE),
//! and a process that dies mid-action leaves its record PENDING rather than nothing.
//!
//! Who asked comes from the gateway's assertion (`x-zentra-caller`, `x-zentra-role`); a call
//! that did not come through the gateway is recorded as `anonymous` with its peer address.

use std::future::Future;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement,
};
use tonic::{Request, Status, metadata::MetadataMap};
use uuid::Uuid;
use zentra_proto::ops::v1::{self as pb, AuditOutcome};

use crate::{
    paging::Page,
    status::{Violations, database_error},
    time::chrono_to_timestamp,
};

/// Metadata naming the caller the gateway authenticated.
pub const CALLER_METADATA: &str = "x-zentra-caller";
/// Metadata naming the role the gateway asserted for its caller.
pub const ROLE_METADATA: &str = "x-zentra-role";
/// Longest reason kept; the RPCs refuse longer ones.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest target kept: a hostile id is cut, not stored whole.
const MAX_TARGET_CHARS: usize = 200;
/// Longest caller kept.
const MAX_CALLER_CHARS: usize = 200;

/// Who asked for an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The caller the gateway authenticated, or `anonymous`.
    pub caller: String,
    /// The role the gateway asserted; empty when none.
    pub role: String,
    /// The address the call came from; empty when unknown.
    pub peer: String,
    /// The gateway's signature of caller and role (`x-zentra-assertion`); empty when none.
    pub assertion: String,
}

impl Actor {
    /// The actor of a request, read before the handler takes the message out of it.
    pub fn of<T>(request: &Request<T>) -> Self {
        Self::from_parts(
            request.metadata(),
            request.remote_addr().map(|addr| addr.to_string()),
        )
    }

    fn from_parts(metadata: &MetadataMap, peer: Option<String>) -> Self {
        let text = |name: &str| {
            metadata
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| clean(value, MAX_CALLER_CHARS))
                .filter(|value| !value.is_empty())
        };
        Self {
            caller: text(CALLER_METADATA).unwrap_or_else(|| "anonymous".to_owned()),
            role: text(ROLE_METADATA).unwrap_or_default(),
            peer: peer.unwrap_or_default(),
            assertion: metadata
                .get(crate::assertion::ASSERTION_METADATA)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// A role as the gateway asserts it to the services (`x-zentra-role`), lowest first: the one
/// place in the runtime that reads the gateway's role names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Steering orders, sagas, dead letters and breakers.
    Operator,
    /// Changing how a service behaves: faults, kill, log levels.
    Admin,
}

impl Role {
    /// The role named `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The role the gateway asserted for a request's caller, if any.
    pub fn asserted(metadata: &MetadataMap) -> Option<Self> {
        metadata
            .get(ROLE_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether a caller in the role named `role` may do what needs `self`.
    fn met_by(self, role: &str) -> bool {
        Self::parse(role).is_some_and(|role| role >= self)
    }
}

/// One action about to be taken.
#[derive(Debug, Clone)]
pub struct Action {
    /// The RPC, as `package.Service/Method`.
    pub rpc: &'static str,
    /// The role it needs.
    pub needs: Role,
    /// What it acts on, as a resource name ("sagas/<id>").
    pub target: String,
    /// Why, as the caller gave it.
    pub reason: String,
}

impl Action {
    /// An action on `target`, with the caller's `reason` (kept printable and at most 500
    /// characters: the record must be writable even when the request is refused as invalid).
    pub fn new(rpc: &'static str, needs: Role, target: impl AsRef<str>, reason: &str) -> Self {
        Self {
            rpc,
            needs,
            target: clean(target.as_ref(), MAX_TARGET_CHARS),
            reason: clean(reason, MAX_REASON_CHARS),
        }
    }
}

/// Control characters dropped, surrounding space trimmed, cut at `max_chars`.
fn clean(value: &str, max_chars: usize) -> String {
    value
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

/// Checks an optional reason: at most 500 characters, no control characters.
pub fn check_reason(reason: &str, violations: &mut Violations) {
    if reason.chars().count() > MAX_REASON_CHARS {
        violations.add(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        );
    } else if reason.chars().any(char::is_control) {
        violations.add("reason", "must not contain control characters");
    }
}

/// A service's audit trail; cheap to clone.
#[derive(Clone)]
pub struct AuditTrail {
    db: DatabaseConnection,
    service: &'static str,
    /// The key the gateway signs callers with; when set, an action needs a valid signature of
    /// a caller in its role.
    assertion_key: Option<crate::config::Secret>,
}

impl AuditTrail {
    /// The trail of `service`, in its database.
    pub fn new(db: DatabaseConnection, service: &'static str) -> Self {
        Self {
            db,
            service,
            assertion_key: None,
        }
    }

    /// Believes callers and roles only when the gateway signed them with `key`.
    #[must_use]
    pub fn with_assertion_key(mut self, key: Option<crate::config::Secret>) -> Self {
        self.assertion_key = key;
        self
    }

    /// Refused unless the gateway vouched for a caller in the role `action` needs (only when
    /// this service holds the gateway's key); the actor as recorded.
    fn admit(&self, actor: &Actor, action: &Action) -> (Actor, Result<(), Status>) {
        let Some(key) = &self.assertion_key else {
            return (actor.clone(), Ok(()));
        };
        let signed = crate::assertion::verify_parts(
            key,
            &actor.caller,
            &actor.role,
            &actor.assertion,
            action.rpc,
            std::time::SystemTime::now(),
        );
        if signed && action.needs.met_by(&actor.role) {
            return (actor.clone(), Ok(()));
        }
        let mut recorded = actor.clone();
        if !signed {
            recorded.caller = clean(&format!("unverified:{}", actor.caller), MAX_CALLER_CHARS);
        }
        let refusal = Status::permission_denied(format!(
            "{} needs the {} role, asserted by the gateway; call it through the gateway",
            action.rpc,
            action.needs.name()
        ));
        (recorded, Err(refusal))
    }

    /// Records `action` by `actor`, runs `work`, and records its outcome. The action is refused
    /// with UNAVAILABLE, and `work` never runs, when the record cannot be written.
    pub async fn run<T>(
        &self,
        actor: &Actor,
        action: Action,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let (actor, admitted) = self.admit(actor, &action);
        let actor = &actor;
        let id = self.begin(actor, &action).await.map_err(|error| {
            tracing::warn!(%error, rpc = action.rpc, "audit record not written: action refused");
            Status::unavailable(
                "the audit trail cannot be written, so the action was not taken; retry later",
            )
        })?;
        let result = match admitted {
            Ok(()) => work.await,
            Err(refusal) => Err(refusal),
        };
        let (outcome, code, message) = match &result {
            Ok(_) => (AuditOutcome::Succeeded, tonic::Code::Ok, ""),
            Err(status) => (AuditOutcome::Failed, status.code(), status.message()),
        };
        if let Err(error) = self.finish(id, outcome, code, message).await {
            // The action happened; its record stays PENDING, which says so honestly.
            tracing::warn!(%error, audit_record_id = %id, "audit outcome not written");
        }
        tracing::info!(
            audit_record_id = %id,
            rpc = action.rpc,
            target = %action.target,
            caller = %actor.caller,
            role = %actor.role,
            code = ?code,
            "audited action"
        );
        result
    }

    /// Records an action already admitted and taken on the caller's behalf by work they
    /// started (one saga of a bulk operation), complete with its outcome, in `db`: a
    /// transaction's record commits or vanishes with the action.
    pub async fn record_taken<C: sea_orm::ConnectionTrait>(
        db: &C,
        actor: &Actor,
        action: &Action,
        refused: Option<&str>,
    ) -> Result<Uuid, DbErr> {
        let outcome = match refused {
            None => (AuditOutcome::Succeeded, tonic::Code::Ok, ""),
            Some(message) => (
                AuditOutcome::Failed,
                tonic::Code::FailedPrecondition,
                message,
            ),
        };
        insert(db, actor, action, Some(outcome)).await
    }

    async fn begin(&self, actor: &Actor, action: &Action) -> Result<Uuid, DbErr> {
        insert(&self.db, actor, action, None).await
    }

    async fn finish(
        &self,
        id: Uuid,
        outcome: AuditOutcome,
        code: tonic::Code,
        message: &str,
    ) -> Result<(), DbErr> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE audit_records SET finished_at = now(), outcome = $2, status_code = $3, \
                 status_message = $4 WHERE id = $1",
                [
                    id.into(),
                    outcome.as_str_name().into(),
                    code_name(code).into(),
                    clean(message, 1000).into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// One page of records, newest first.
    pub async fn list(
        &self,
        request: &pb::ListAuditRecordsRequest,
    ) -> Result<pb::ListAuditRecordsResponse, Status> {
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let after = page.uuid_cursor(&mut violations);
        for (field, value) in [
            ("action", &request.action),
            ("caller", &request.caller),
            ("target", &request.target),
        ] {
            if value.chars().count() > MAX_TARGET_CHARS {
                violations.add(
                    field,
                    format!("must be at most {MAX_TARGET_CHARS} characters"),
                );
            }
        }
        let outcome = match AuditOutcome::try_from(request.outcome) {
            Ok(AuditOutcome::Unspecified) => None,
            Ok(outcome) => Some(outcome.as_str_name()),
            Err(_) => {
                violations.add("outcome", "unknown outcome");
                None
            }
        };
        violations.into_result()?;
        let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        // PENDING is the absence of an outcome.
        let (outcome, pending) = match outcome {
            Some("AUDIT_OUTCOME_PENDING") => (None, true),
            other => (other.map(str::to_owned), false),
        };
        let mut rows = Row::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, action, caller, role, peer, target, reason, requested_at, finished_at, \
             outcome, status_code, status_message FROM audit_records \
             WHERE ($1::uuid IS NULL OR id < $1) AND ($2::text IS NULL OR action = $2) \
             AND ($3::text IS NULL OR caller = $3) AND ($4::text IS NULL OR target = $4) \
             AND ($5::text IS NULL OR outcome = $5) AND (NOT $6 OR outcome IS NULL) \
             ORDER BY id DESC LIMIT $7",
            [
                after.into(),
                non_empty(&request.action).into(),
                non_empty(&request.caller).into(),
                non_empty(&request.target).into(),
                outcome.into(),
                pending.into(),
                (page.size as i64 + 1).into(),
            ],
        ))
        .all(&self.db)
        .await
        .map_err(|error| database_error(&error))?;
        let next_page_token = page.finish(&mut rows, |row| row.id.to_string());
        Ok(pb::ListAuditRecordsResponse {
            audit_records: rows
                .into_iter()
                .map(|row| row.into_proto(self.service))
                .collect(),
            page: Some(zentra_proto::common::v1::PageResponse { next_page_token }),
        })
    }
}

#[derive(Debug, FromQueryResult)]
struct Row {
    id: Uuid,
    action: String,
    caller: String,
    role: String,
    peer: String,
    target: String,
    reason: String,
    requested_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    status_code: Option<String>,
    status_message: Option<String>,
}

impl Row {
    fn into_proto(self, service: &str) -> pb::AuditRecord {
        let outcome = self
            .outcome
            .as_deref()
            .and_then(AuditOutcome::from_str_name)
            .unwrap_or(AuditOutcome::Pending);
        pb::AuditRecord {
            audit_record_id: self.id.to_string(),
            service: service.to_owned(),
            action: self.action,
            caller: self.caller,
            role: self.role,
            peer: self.peer,
            target: self.target,
            reason: self.reason,
            request_time: Some(chrono_to_timestamp(self.requested_at)),
            finish_time: self.finished_at.map(chrono_to_timestamp),
            outcome: outcome as i32,
            status_code: self.status_code.unwrap_or_default(),
            status_message: self.status_message.unwrap_or_default(),
        }
    }
}

/// The canonical name of a gRPC code, as grpcurl and the specification write it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Writes a record of `action` by `actor`: PENDING, or finished with `outcome` when given.
async fn insert<C: sea_orm::ConnectionTrait>(
    db: &C,
    actor: &Actor,
    action: &Action,
    outcome: Option<(AuditOutcome, tonic::Code, &str)>,
) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    let (outcome, code, message) = match outcome {
        Some((outcome, code, message)) => (
            Some(outcome.as_str_name()),
            Some(code_name(code)),
            Some(clean(message, 1000)),
        ),
        None => (None, None, None),
    };
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO audit_records (id, action, caller, role, peer, target, reason, \
           finished_at, outcome, status_code, status_message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8::text IS NULL THEN NULL ELSE now() END, \
           $8, $9, $10)",
        [
            id.into(),
            action.rpc.into(),
            actor.caller.clone().into(),
            actor.role.clone().into(),
            actor.peer.clone().into(),
            action.target.clone().into(),
            action.reason.clone().into(),
            outcome.map(str::to_owned).into(),
            code.map(str::to_owned).into(),
            message.into(),
        ],
    ))
    .await?;
    Ok(id)
}

/// The table, created with the runtime's other tables.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE audit_records (
    id              UUID PRIMARY KEY,
    action          TEXT        NOT NULL,
    caller          TEXT        NOT NULL,
    role            TEXT        NOT NULL,
    peer            TEXT        NOT NULL,
    target          TEXT        NOT NULL,
    reason          TEXT        NOT NULL,
    requested_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    outcome         TEXT,
    status_code     TEXT,
    status_message  TEXT
);
-- Lists filter by one of these and read newest first.
CREATE INDEX audit_records_target ON audit_records (target, id DESC);
CREATE INDEX audit_records_caller ON audit_records (caller, id DESC);
"#;

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn an_actor_is_the_caller_the_gateway_asserted_or_anonymous() {
        let mut metadata = MetadataMap::new();
        metadata.insert(CALLER_METADATA, MetadataValue::from_static("key:ops-alice"));
        metadata.insert(ROLE_METADATA, MetadataValue::from_static("admin"));
        let actor = Actor::from_parts(&metadata, Some("127.0.0.1:4000".to_owned()));
        assert_eq!(actor.caller, "key:ops-alice");
        assert_eq!(actor.role, "admin");
        assert_eq!(actor.peer, "127.0.0.1:4000");

        let actor = Actor::from_parts(&MetadataMap::new(), None);
        assert_eq!(actor.caller, "anonymous");
        assert_eq!(actor.role, "");
    }

    #[test]
    fn hostile_targets_and_reasons_are_kept_printable_and_short() {
        let action = Action::new(
            "x/Y",
            Role::Operator,
            format!("sagas/{}\0", "a".repeat(1000)),
            "why\u{7}\n",
        );
        assert_eq!(action.target.chars().count(), MAX_TARGET_CHARS);
        assert!(!action.target.contains('\0'));
        assert_eq!(action.reason, "why");

        let mut violations = Violations::new();
        check_reason(&"x".repeat(501), &mut violations);
        check_reason("bell\u{7}", &mut violations);
        check_reason("", &mut violations);
        assert_eq!(violations.fields().count(), 2);
    }
}
