//! The embedded default: SQLite in WAL mode, `synchronous=FULL` unless told otherwise.

use crate::handle::{GroupTurn, Handle, Writer, WriterCounters};
use crate::lanes::Lanes;
use crate::{ConnectOptions, MigrationStatus, PoolStats, Store, StoreError, Tx};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Sqlite, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::Notify;

crate::sql_impl::impl_tx!(
    SqliteTx,
    Sqlite,
    for_update = "",
    skip_locked = "",
    // Multi-row inserts use anonymous `?` parameters: sqlx resolves `$N` ones by name, which
    // grows with the statement.
    batch_rows = 100,
    numbered_params = false,
    writes_in_with = false,
    in_json_list = "IN (SELECT value FROM json_each($1))"
);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    max: u32,
    signal: Arc<Notify>,
    /// SQLite has one writer at a time. Writers of this process queue here, first come first
    /// served, instead of in SQLite's busy handler, whose growing sleeps starve some of them.
    writer: Turn,
    busy_timeout: std::time::Duration,
    counters: Arc<WriterCounters>,
    lanes: Arc<Lanes>,
    chains: Arc<crate::audit_chains::Chains>,
}

/// Waits for the writer: a foreground transaction queues at once; a background one first lets
/// the foreground ones waiting go first (see [`Lanes`]). `limit` bounds the wait in the writer's
/// queue itself (a writer that is stuck), not the time a background transaction deliberately
/// lets others go first: under a burst of requests, background work waits longer and still
/// succeeds.
async fn queue_for<T>(
    lanes: &Arc<Lanes>,
    m: &Arc<tokio::sync::Mutex<T>>,
    background: bool,
    limit: std::time::Duration,
) -> Result<tokio::sync::OwnedMutexGuard<T>, tokio::time::error::Elapsed> {
    let queue = || tokio::time::timeout(limit, Arc::clone(m).lock_owned());
    if background {
        // Held until this one has the writer: one background transaction at a time goes when
        // the foreground queue empties, not all of them ahead of the next requests.
        let _turn = lanes.let_foreground_go_first().await;
        return queue().await;
    }
    let _waiting = lanes.foreground();
    queue().await
}

/// How this process takes its turn to write.
enum Turn {
    /// A file database: one writer connection, its transactions committed in groups.
    Grouped {
        writer: Arc<tokio::sync::Mutex<Writer<SqliteConnection>>>,
        flush: Arc<Notify>,
        flusher: tokio::task::JoinHandle<()>,
    },
    /// An in-memory database lives in its pool's only connection: one transaction at a time.
    Single(Arc<tokio::sync::Mutex<()>>),
}

/// Commits the writer's open group each time a write transaction has released its savepoint,
/// queueing for the writer behind the transactions already waiting (they join the group).
async fn flusher(writer: Arc<tokio::sync::Mutex<Writer<SqliteConnection>>>, flush: Arc<Notify>) {
    loop {
        flush.notified().await;
        writer.lock().await.flush().await;
    }
}

impl SqliteStore {
    pub async fn connect(url: &str, o: &ConnectOptions) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if o.sqlite_synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(o.sqlite_busy_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        // An in-memory database exists once per connection: keep exactly one.
        let max = if url.contains(":memory:") {
            1
        } else {
            o.max_connections.max(1)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(o.acquire_timeout)
            // A local file's connection does not go stale: no ping (a round trip to the
            // connection's thread) before every read.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        let counters = Arc::new(WriterCounters::default());
        let writer = if url.contains(":memory:") {
            Turn::Single(Arc::new(tokio::sync::Mutex::new(())))
        } else {
            let writer = Arc::new(tokio::sync::Mutex::new(Writer::new(
                opts.connect().await?,
                Arc::clone(&counters),
            )));
            let flush = Arc::new(Notify::new());
            let flusher = tokio::spawn(flusher(Arc::clone(&writer), Arc::clone(&flush)));
            Turn::Grouped {
                writer,
                flush,
                flusher,
            }
        };
        Ok(Self {
            pool,
            max,
            signal: Arc::new(Notify::new()),
            writer,
            busy_timeout: o.sqlite_busy_timeout,
            counters,
            lanes: Arc::default(),
            chains: crate::audit_chains::Chains::new(o.audit_chains),
        })
    }

    fn tx(
        &self,
        inner: Handle<Sqlite>,
        writer: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Box<dyn Tx> {
        Box::new(SqliteTx {
            inner,
            enqueued: false,
            signal: Arc::clone(&self.signal),
            announce: None,
            writer,
            lane: None,
            chains: Arc::clone(&self.chains),
            audit: None,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> crate::Backend {
        crate::Backend::Sqlite
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let waited = |_| {
            StoreError::Unavailable("timed out waiting for the database's write lock".to_owned())
        };
        match &self.writer {
            Turn::Grouped { writer, flush, .. } => {
                let background = crate::is_background();
                let mut w = queue_for(&self.lanes, writer, background, self.busy_timeout)
                    .await
                    .map_err(waited)?;
                let since = std::time::Instant::now();
                w.start().await?;
                let turn = GroupTurn {
                    writer: w,
                    flush: Arc::clone(flush),
                    since,
                    background,
                };
                Ok(self.tx(Handle::Grouped(turn), None))
            }
            Turn::Single(turn) => {
                let turn = tokio::time::timeout(self.busy_timeout, Arc::clone(turn).lock_owned())
                    .await
                    .map_err(waited)?;
                Ok(self.tx(
                    Handle::Tx(self.pool.begin_with("BEGIN IMMEDIATE").await?),
                    Some(turn),
                ))
            }
        }
    }

    async fn read(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(self.tx(Handle::Tx(self.pool.begin().await?), None))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let applied = applied_versions(
            &self.pool,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .await?;
        Ok(MigrationStatus {
            applied,
            embedded: MIGRATOR.iter().map(|m| m.version).collect(),
        })
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.max,
            writer: matches!(self.writer, Turn::Grouped { .. }).then(|| self.counters.stats()),
        }
    }

    fn job_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.signal)
    }

    async fn close(&self) {
        if let Turn::Grouped {
            writer, flusher, ..
        } = &self.writer
        {
            let mut w = writer.lock().await;
            w.flush().await;
            flusher.abort();
        }
        self.pool.close().await;
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Turn::Grouped { flusher, .. } = &self.writer {
            flusher.abort();
        }
    }
}

async fn applied_versions(pool: &SqlitePool, exists_sql: &str) -> Result<Vec<i64>, StoreError> {
    use sqlx::Row;
    if sqlx::query(exists_sql)
        .fetch_optional(pool)
        .await?
        .is_none()
    {
        return Ok(Vec::new());
    }
    let rows =
        sqlx::query("SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version")
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>("version").map_err(StoreError::from))
        .collect()
}
