//! Idempotency keys for mutating RPCs. A retry with the same key and the same request gets the
//! stored response, a reuse of the key with a different request is refused, and concurrent calls
//! with one key serialise on the key's row. Two ways to hold a key:
//!
//! - [`begin`] (and [`fresh_or_replay!`]) claims it before the work and stores the response
//!   after: two statements, and a replay never runs the work.
//! - [`record`] claims it and stores the response in one statement after the work, in the same
//!   transaction; a replay finds the key taken and rolls its work back. The group commit's
//!   `idempotent` uses it: its calls are the saga's steps, whose retries are rare.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait as _,
};
use sha2::{Digest as _, Sha256};
pub use zentra_proto::IdempotentRequest;

/// What claiming a key found.
#[derive(Debug)]
pub enum Claim {
    /// First use of the key: perform the operation, then [`store_response`].
    New,
    /// The key was used for this same request: return this stored response.
    Replay(Vec<u8>),
}

/// Idempotency failures.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key was used before for a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    KeyReused {
        /// The key.
        key: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// A fingerprint of a request; callers clear the idempotency key field before hashing.
pub fn fingerprint<M: prost::Message>(request: &M) -> Vec<u8> {
    Sha256::digest(request.encode_to_vec()).to_vec()
}

/// Claims `key` within `scope` (usually the RPC name) in the caller's transaction.
pub async fn claim<C: ConnectionTrait>(
    transaction: &C,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Claim, IdempotencyError> {
    Ok(
        match take(transaction, scope, key, fingerprint, None).await? {
            None => Claim::New,
            Some(earlier) => Claim::Replay(earlier),
        },
    )
}

/// Inserts `key` (with `response`, when there is one yet) unless it is taken; returns the
/// response its earlier holder stored when it is, waiting for a concurrent holder's commit on
/// the key's unique index. KeyReused when the holder's request was a different one.
async fn take<C: ConnectionTrait>(
    transaction: &C,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
    response: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, IdempotencyError> {
    let inserted = transaction
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (scope, key, fingerprint, response) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [
                scope.into(),
                key.into(),
                fingerprint.to_vec().into(),
                response.map(<[u8]>::to_vec).into(),
            ],
        ))
        .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    let earlier = lookup(transaction, scope, key, fingerprint)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("idempotency key {key}")))?;
    Ok(Some(earlier))
}

/// The stored response of an earlier call that used `key` within `scope` for the request with
/// `fingerprint`, if one committed; KeyReused if the key went to a different request.
pub async fn lookup<C: ConnectionTrait>(
    connection: &C,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<Vec<u8>>, IdempotencyError> {
    let Some(row) = connection
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT fingerprint, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
            [scope.into(), key.into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.try_get("", "fingerprint")?;
    if stored != fingerprint {
        return Err(IdempotencyError::KeyReused {
            key: key.to_owned(),
        });
    }
    let response: Option<Vec<u8>> = row.try_get("", "response")?;
    Ok(Some(response.unwrap_or_default()))
}

/// What recording a key with its response found.
#[derive(Debug)]
pub enum Recorded {
    /// The key was free: it now holds this call's response, in the caller's transaction.
    Stored,
    /// The same request already holds the key: its response, which the caller returns instead
    /// of its own after rolling its own writes back.
    Replay(Vec<u8>),
}

/// Claims `key` and stores `response` in one statement, after the work that produced it: the
/// claim of an operation that did its work first. A concurrent holder of the key makes it wait
/// for that holder's commit (the key's unique index), then reads what it stored.
pub async fn record<C: ConnectionTrait>(
    transaction: &C,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
    response: &[u8],
) -> Result<Recorded, IdempotencyError> {
    Ok(
        match take(transaction, scope, key, fingerprint, Some(response)).await? {
            None => Recorded::Stored,
            Some(earlier) => Recorded::Replay(earlier),
        },
    )
}

/// The response a [`Claim::Replay`] carried, decoded.
pub fn stored<R: prost::Message + Default>(bytes: &[u8]) -> Result<R, DbErr> {
    R::decode(bytes).map_err(|error| DbErr::Custom(format!("stored response undecodable: {error}")))
}

/// Stores the response of a [`Claim::New`] operation, in the same transaction.
pub async fn store_response<C: ConnectionTrait>(
    transaction: &C,
    scope: &str,
    key: &str,
    response: &[u8],
) -> Result<(), DbErr> {
    transaction
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2",
            [scope.into(), key.into(), response.to_vec().into()],
        ))
        .await?;
    Ok(())
}

/// The start of an idempotent operation: either the stored answer of an earlier identical call,
/// or an open transaction in which the key is claimed.
pub enum Begin<R> {
    /// The same request ran before; this is its response.
    Replay(R),
    /// First use of the key: do the work in [`IdempotentTransaction::transaction`], then commit.
    Fresh(IdempotentTransaction),
}

/// A transaction holding a claimed idempotency key.
pub struct IdempotentTransaction {
    transaction: DatabaseTransaction,
    scope: &'static str,
    key: String,
}

impl IdempotentTransaction {
    /// The transaction to do the work in.
    pub fn transaction(&self) -> &DatabaseTransaction {
        &self.transaction
    }

    /// Stores `response` under the key and commits the work with it.
    pub async fn commit<R: prost::Message>(self, response: &R) -> Result<(), DbErr> {
        store_response(
            &self.transaction,
            self.scope,
            &self.key,
            &response.encode_to_vec(),
        )
        .await?;
        self.transaction.commit().await
    }
}

/// Opens a transaction and claims `key` for a request with `fingerprint`.
pub async fn begin<R: prost::Message + Default>(
    db: &DatabaseConnection,
    scope: &'static str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Begin<R>, IdempotencyError> {
    let transaction = db.begin().await?;
    match claim(&transaction, scope, key, fingerprint).await? {
        Claim::New => Ok(Begin::Fresh(IdempotentTransaction {
            transaction,
            scope,
            key: key.to_owned(),
        })),
        Claim::Replay(bytes) => {
            transaction.commit().await?;
            Ok(Begin::Replay(stored(&bytes)?))
        }
    }
}

/// [`begin`] for a request: claims its key with the fingerprint of the rest of it.
pub async fn begin_request<R, Q>(
    db: &DatabaseConnection,
    scope: &'static str,
    request: &Q,
) -> Result<Begin<R>, IdempotencyError>
where
    R: prost::Message + Default,
    Q: IdempotentRequest,
{
    let fingerprint = fingerprint(&request.without_key());
    begin(db, scope, request.idempotency_key(), &fingerprint).await
}

/// In a tonic handler: opens the transaction of a mutating RPC, or returns the stored answer of
/// an earlier identical call from the handler. `$error` must convert from [`IdempotencyError`]
/// and into `tonic::Status`.
#[macro_export]
macro_rules! fresh_or_replay {
    ($db:expr, $scope:expr, $request:expr, $error:ty) => {
        match $crate::idempotency::begin_request($db, $scope, &$request)
            .await
            .map_err(<$error>::from)?
        {
            $crate::idempotency::Begin::Replay(response) => {
                return Ok(::tonic::Response::new(response));
            }
            $crate::idempotency::Begin::Fresh(tx) => tx,
        }
    };
}
