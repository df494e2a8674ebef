use thiserror::Error;

/// What can go wrong in storage, classified so callers can answer well: a conflict is the
/// client's (409), an exhausted pool or a database that is down is ours and temporary (503).
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("a record with the same {0} already exists")]
    Conflict(String),
    #[error("the database is busy or unreachable: {0}")]
    Unavailable(String),
    #[error("database configuration: {0}")]
    Config(String),
    #[error("stored data is not what this version expects: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(
                db.constraint()
                    .map_or_else(|| unique_target(db.message()), str::to_owned),
            ),
            sqlx::Error::Database(db) if is_busy(db.code().as_deref()) => {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => Self::Corrupt(e.to_string()),
            _ => Self::Database(e),
        }
    }
}

/// SQLite reports `UNIQUE constraint failed: users.username`; keep the column part.
fn unique_target(message: &str) -> String {
    message
        .rsplit(": ")
        .next()
        .map_or_else(|| "key".to_owned(), str::to_owned)
}

/// SQLITE_BUSY (5) / SQLITE_LOCKED (6); PostgreSQL serialization / deadlock / too many connections.
fn is_busy(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("5" | "6" | "517" | "40001" | "40P01" | "53300" | "57P03")
    )
}
