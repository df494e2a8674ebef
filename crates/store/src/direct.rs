//! SQLite's writer without a thread hop per statement.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every statement to it and
//! every answer back: two thread wake-ups per statement, 50-80 µs on a busy virtual machine,
//! while the statements themselves take a few microseconds. A write transaction holds SQLite's
//! one writer for all of its statements, so those hops, not SQLite, bounded how many check-ins a
//! second the database could take.
//!
//! The writer connection therefore runs its hot statements directly: [`Direct::lock`] takes the
//! connection from sqlx's thread (`SqliteConnection::lock_handle`, one hop) and keeps it across
//! statements and transactions, running them through `rusqlite` on the same `sqlite3` handle,
//! with prepared statements cached. Anything still going through sqlx on that connection
//! (statements not worth converting, `BEGIN IMMEDIATE`, whose busy wait would block, and
//! `COMMIT`, whose fsync would) first gives it back with [`Direct::release`].
//!
//! Statements are written once, against [`Arg`] and [`FromCols`], and run on either path (and on
//! PostgreSQL through sqlx), so the SQL of both backends stays one body (`sql_impl.rs`).
#![allow(
    unsafe_code,
    reason = "the writer connection's sqlite3 handle is shared between sqlx and rusqlite; the \
              invariants are upheld by `Direct` and documented at each use"
)]

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use sqlx::sqlite::LockedSqliteHandle;

/// A statement parameter, typed as both backends bind it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Int32(Option<i32>),
    Bool(Option<bool>),
    Blob(Option<&'a [u8]>),
    /// JSON stored as text, written out when bound.
    Json(&'a serde_json::Value),
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
        impl<'a> From<$t> for Arg<'a> {
            fn from($v: $t) -> Self {
                $e
            }
        }
    )*};
}

arg_from! {
    &'a str => |v| Self::Text(Some(v)),
    &'a String => |v| Self::Text(Some(v)),
    &'a Option<String> => |v| Self::Text(v.as_deref()),
    Option<&'a str> => |v| Self::Text(v),
    i64 => |v| Self::Int(Some(v)),
    Option<i64> => |v| Self::Int(v),
    i32 => |v| Self::Int32(Some(v)),
    bool => |v| Self::Bool(Some(v)),
    Option<bool> => |v| Self::Bool(v),
    &'a [u8] => |v| Self::Blob(Some(v)),
    &'a Vec<u8> => |v| Self::Blob(Some(v)),
    &'a serde_json::Value => |v| Self::Json(v),
}

/// `args![a, b, c]`: a statement's parameters, in `$1, $2, ...` order.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        [$($crate::direct::Arg::from($a)),*]
    };
}
pub(crate) use args;

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let v = match *self {
            Self::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Self::Int(Some(v)) => ValueRef::Integer(v),
            Self::Int32(Some(v)) => ValueRef::Integer(i64::from(v)),
            Self::Bool(Some(v)) => ValueRef::Integer(i64::from(v)),
            Self::Blob(Some(v)) => ValueRef::Blob(v),
            Self::Json(v) => {
                return Ok(ToSqlOutput::Owned(rusqlite::types::Value::Text(
                    v.to_string(),
                )));
            }
            Self::Text(None)
            | Self::Int(None)
            | Self::Int32(None)
            | Self::Bool(None)
            | Self::Blob(None) => ValueRef::Null,
        };
        Ok(ToSqlOutput::Borrowed(v))
    }
}

/// A column type both backends and rusqlite decode.
pub(crate) trait Col:
    Sized
    + rusqlite::types::FromSql
    + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}

impl<T> Col for T where
    T: Sized
        + rusqlite::types::FromSql
        + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A result row of either path, read by column name.
pub(crate) trait Cols {
    fn col<T: Col>(&self, name: &str) -> Result<T, sqlx::Error>;

    /// A JSON column stored as text.
    fn json(&self, name: &str) -> Result<serde_json::Value, sqlx::Error> {
        let text: String = self.col(name)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
            index: name.to_owned(),
            source: Box::new(e),
        })
    }
}

impl Cols for sqlx::sqlite::SqliteRow {
    fn col<T: Col>(&self, name: &str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
}

impl Cols for sqlx::postgres::PgRow {
    fn col<T: Col>(&self, name: &str) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn col<T: Col>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.get(name).map_err(|e| match e {
            rusqlite::Error::InvalidColumnName(n) => sqlx::Error::ColumnNotFound(n),
            other => sqlx::Error::ColumnDecode {
                index: name.to_owned(),
                source: Box::new(other),
            },
        })
    }
}

/// The columns of a join named `<prefix><column>` (`g.id AS g_id`), read as a row of their own.
pub(crate) struct Prefixed<'r, R> {
    pub row: &'r R,
    pub prefix: &'static str,
}

impl<R: Cols> Cols for Prefixed<'_, R> {
    fn col<T: Col>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.row.col(&format!("{}{name}", self.prefix))
    }
}

/// A row type read from either path.
pub(crate) trait FromCols: Sized {
    fn from_cols<R: Cols>(row: &R) -> Result<Self, sqlx::Error>;
}

/// `FromCols` for a struct whose fields are named as its columns.
macro_rules! from_cols {
    ($($t:ty { $($f:ident),* $(,)? })*) => {$(
        impl FromCols for $t {
            fn from_cols<R: Cols>(row: &R) -> Result<Self, sqlx::Error> {
                Ok(Self { $($f: row.col(stringify!($f))?),* })
            }
        }
    )*};
}

from_cols! {
    crate::DeviceRow {
        id, serial, uuid, platform, model, os_version, name, slot, group_id, location_id,
        credential_digest, status, holder_id, checkout_id, pin_set, battery, charging, docked,
        reported_location, apps, appconfig, readiness, last_heartbeat_at, enrolled_at, revoked_at,
        created_at, updated_at, lost_at, lost_reason
    }
    crate::DeviceGroupRow {
        id, name, lending_minutes, workflows, required_apps, checkin_on_dock, created_at, updated_at
    }
    crate::DeviceUserRow {
        id, username, display_name, badge_digest, password_hash, device_limit, source, disabled,
        created_at, updated_at
    }
    crate::CheckoutRow {
        id, device_id, user_id, location_id, source, pin_set, started_at, due_at, ended_at,
        checkin_id
    }
    crate::CheckinRow {
        id, device_id, checkout_id, user_id, requested_by, status, warnings, started_at,
        completed_at
    }
    crate::CheckinStepRow {
        checkin_id, position, action, spec, on_device, mandatory, status, detail, install_id,
        attempts, outcome_unknown, repeats, command_id, updated_at
    }
    crate::CommandRow {
        id, device_id, kind, params, secret_ref, state, checkin_id, position, created_at,
        expires_at, delivered_at, finished_at, result
    }
    crate::SecretRow { id, owner, purpose, key_id, nonce, ciphertext, created_at, updated_at }
    crate::IdempotencyRow { scope, key, request_digest, status, response, created_at }
    Id { id }
    crate::audit_chains::Head { seq, hash }
}

impl FromCols for crate::JobRow {
    fn from_cols<R: Cols>(row: &R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.col("id")?,
            kind: row.col("kind")?,
            payload: row.json("payload")?,
            dedupe_key: row.col("dedupe_key")?,
            state: row.col("state")?,
            run_at: row.col("run_at")?,
            attempts: row.col("attempts")?,
            max_attempts: row.col("max_attempts")?,
            lease_owner: row.col("lease_owner")?,
            lease_until: row.col("lease_until")?,
            last_error: row.col("last_error")?,
            created_at: row.col("created_at")?,
            updated_at: row.col("updated_at")?,
        })
    }
}

/// A generated key (`RETURNING id`).
pub(crate) struct Id {
    pub(crate) id: i64,
}

/// SQLite's writer connection as run directly. Owned by the writer, beside the sqlx connection
/// it takes over, and dropped before it.
///
/// Invariants (upheld by `handle::Writer`, the only user):
/// - `locked` holds sqlx's own lock on the connection: while it is held, sqlx's thread makes no
///   call on the `sqlite3` handle, so `conn` may. It is released before sqlx is used again.
/// - `conn` wraps that handle without owning it and is used only while `locked` is held. Its
///   prepared statements stay prepared (reset) while sqlx has the connection back, which SQLite
///   allows, but they must be finalized before sqlx closes it (closing fails with statements
///   left open), under the lock: `Writer`'s `Drop` takes the lock again first when needed.
/// - one `Direct` serves one sqlx connection for its whole life (`conn` keeps its handle).
#[derive(Default)]
pub(crate) struct Direct {
    /// Declared before `locked`: dropped first, so its statements are finalized under the lock.
    conn: Option<rusqlite::Connection>,
    locked: Option<LockedSqliteHandle<'static>>,
}

/// How many distinct statements stay prepared (the hot ones are about thirty).
const STATEMENT_CACHE: usize = 96;

impl Direct {
    /// The connection to run statements on directly, taken from sqlx's thread if it does not
    /// have it yet.
    pub(crate) async fn lock(
        &mut self,
        sqlx_conn: &mut sqlx::SqliteConnection,
    ) -> Result<&rusqlite::Connection, sqlx::Error> {
        if self.locked.is_none() {
            let mut handle = sqlx_conn.lock_handle().await?;
            let raw = handle.as_raw_handle();
            // SAFETY: the guard borrows the worker state that `sqlx_conn` shares through an
            // `Arc`, not `sqlx_conn`'s own memory; it stays valid as long as that connection
            // lives, and the writer drops `Direct` before the connection. Until the guard is
            // released, nothing runs sqlx on the connection (`Writer::conn_mut` releases first).
            let handle: LockedSqliteHandle<'static> = unsafe {
                std::mem::transmute::<LockedSqliteHandle<'_>, LockedSqliteHandle<'static>>(handle)
            };
            if self.conn.is_none() {
                // SAFETY: a valid, open handle (sqlx keeps it open while the connection lives,
                // which outlives `self`); `from_handle` does not take ownership, so dropping
                // the wrapper never closes it, and it is only used while the guard is held.
                let conn = unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }
                    .map_err(direct_error)?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                self.conn = Some(conn);
            }
            self.locked = Some(handle);
        }
        self.conn
            .as_ref()
            .ok_or_else(|| sqlx::Error::Protocol("the direct writer connection is missing".into()))
    }

    /// Gives the connection back to sqlx's thread (the prepared statements stay cached).
    pub(crate) fn release(&mut self) {
        self.locked = None;
    }

    /// Whether dropping now would finalize statements without the lock (see the invariants).
    pub(crate) fn must_lock_to_drop(&self) -> bool {
        self.conn.is_some() && self.locked.is_none()
    }

    /// Leaks the direct connection's statements instead of finalizing them: for a connection
    /// whose sqlx thread is gone, so that nothing touches a handle that may be closed.
    pub(crate) fn abandon(&mut self) {
        if let Some(conn) = self.conn.take() {
            std::mem::forget(conn);
        }
    }
}

/// Runs a statement that returns no rows; answers how many rows it changed.
pub(crate) fn execute(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<u64, crate::StoreError> {
    let mut st = prepare(conn, sql, args)?;
    let changed = st.raw_execute().map_err(direct_error)?;
    Ok(u64::try_from(changed).unwrap_or(u64::MAX))
}

/// Runs a statement and reads every row it returns.
pub(crate) fn rows<T: FromCols>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Vec<T>, crate::StoreError> {
    let mut st = prepare(conn, sql, args)?;
    let mut rows = st.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(direct_error)? {
        out.push(T::from_cols(row)?);
    }
    Ok(out)
}

/// Runs a statement and reads its first row, if any; the statement still runs to completion (an
/// `UPDATE ... RETURNING` changes every row it names).
pub(crate) fn first<T: FromCols>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Option<T>, crate::StoreError> {
    Ok(rows(conn, sql, args)?.into_iter().next())
}

/// Runs a fixed statement (transaction control).
pub(crate) fn batch(conn: &rusqlite::Connection, sql: &str) -> Result<(), sqlx::Error> {
    conn.execute_batch(sql).map_err(direct_error)
}

/// Prepares (or takes from the cache) and binds. `$N` parameters bind the Nth argument wherever
/// they appear; anonymous `?` ones bind in order.
fn prepare<'c>(
    conn: &'c rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<rusqlite::CachedStatement<'c>, crate::StoreError> {
    let mut st = conn.prepare_cached(sql).map_err(direct_error)?;
    for index in 1..=st.parameter_count() {
        let n = match st.parameter_name(index) {
            Some(name) => name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    crate::StoreError::Config(format!("statement parameter {name} is not $N"))
                })?,
            None => index,
        };
        let arg = args.get(n - 1).ok_or_else(|| {
            crate::StoreError::Config(format!(
                "statement wants parameter {n}, {} given",
                args.len()
            ))
        })?;
        st.raw_bind_parameter(index, arg).map_err(direct_error)?;
    }
    Ok(st)
}

/// A rusqlite error as sqlx reports SQLite's, so `StoreError` classifies both alike (unique
/// violations are conflicts, a busy database is unavailable).
fn direct_error(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            sqlx::Error::Database(Box::new(DirectError {
                message: message.unwrap_or_else(|| code.to_string()),
                code: code.extended_code,
            }))
        }
        other => sqlx::Error::Protocol(format!("SQLite: {other}")),
    }
}

/// An SQLite error from the direct path.
#[derive(Debug)]
struct DirectError {
    message: String,
    code: i32,
}

impl std::fmt::Display for DirectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DirectError {}

impl sqlx::error::DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                sqlx::error::ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlx::error::ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => sqlx::error::ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => sqlx::error::ErrorKind::CheckViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}
