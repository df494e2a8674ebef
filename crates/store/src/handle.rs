//! What a `Tx` runs its statements on.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// A transaction, a pooled connection in autocommit mode, or SQLite's group-committing writer.
/// PostgreSQL reads take the second: under READ COMMITTED every statement sees a fresh snapshot
/// anyway, so a read transaction bought nothing but a `BEGIN` and a `ROLLBACK` round trip.
pub(crate) enum Handle<DB: sqlx::Database>
where
    DB::Connection: RawExec,
{
    Tx(sqlx::Transaction<'static, DB>),
    Plain(sqlx::pool::PoolConnection<DB>),
    /// SQLite writes: the writer connection, held until commit.
    Grouped(GroupTurn<DB::Connection>),
}

impl<DB: sqlx::Database> Handle<DB>
where
    DB::Connection: RawExec,
{
    /// Commits: a transaction at once; a grouped one when its group commits (durable when this
    /// returns). Nothing to do for a plain connection, whose statements commit one by one.
    pub(crate) async fn commit(self) -> Result<(), crate::StoreError> {
        match self {
            Self::Tx(t) => Ok(t.commit().await?),
            Self::Plain(_) => Ok(()),
            Self::Grouped(mut turn) => {
                let wait = turn.writer.release().await?;
                drop(turn);
                match wait.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => Err(crate::StoreError::Unavailable(format!(
                        "the database could not commit: {why}"
                    ))),
                    Err(_) => Err(crate::StoreError::Unavailable(
                        "the database writer stopped before committing".to_owned(),
                    )),
                }
            }
        }
    }
}

impl<DB: sqlx::Database> Deref for Handle<DB>
where
    DB::Connection: RawExec,
{
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            Self::Tx(t) => t,
            Self::Plain(c) => c,
            Self::Grouped(t) => &t.writer.conn,
        }
    }
}

impl<DB: sqlx::Database> DerefMut for Handle<DB>
where
    DB::Connection: RawExec,
{
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Self::Tx(t) => t,
            Self::Plain(c) => c,
            Self::Grouped(t) => t.writer.conn_mut(),
        }
    }
}

impl<DB: sqlx::Database> Handle<DB>
where
    DB::Connection: RawExec,
{
    /// SQLite's writer run directly (see [`crate::direct`]); `None` everywhere else, where
    /// statements go through sqlx.
    pub(crate) async fn direct(&mut self) -> Result<Option<&rusqlite::Connection>, sqlx::Error> {
        match self {
            Self::Grouped(t) => t.writer.direct().await,
            Self::Tx(_) | Self::Plain(_) => Ok(None),
        }
    }
}

type ExecFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'a>>;

/// Runs a fixed statement (transaction control) on a backend's connection.
pub(crate) trait RawExec: Send {
    fn exec(&mut self, sql: &'static str) -> ExecFuture<'_>;
    /// The connection as SQLite's, which the writer can run directly.
    fn sqlite(&mut self) -> Option<&mut sqlx::SqliteConnection>;
}

macro_rules! raw_exec {
    ($($conn:ty => |$c:ident| $sqlite:expr),*) => {$(
        impl RawExec for $conn {
            fn exec(&mut self, sql: &'static str) -> ExecFuture<'_> {
                Box::pin(async move { sqlx::query(sql).execute(&mut *self).await.map(|_| ()) })
            }

            fn sqlite(&mut self) -> Option<&mut sqlx::SqliteConnection> {
                let $c = self;
                $sqlite
            }
        }
    )*};
}
raw_exec!(sqlx::SqliteConnection => |c| Some(c), sqlx::PgConnection => |_c| None);

/// A write transaction waiting for the group's commit learns its outcome through this.
type Waiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// A write transaction's hold on the writer. Letting go while a physical transaction is open
/// (a commit waiting for its group, or a transaction dropped without committing) rings the
/// flusher, so the open transaction never outlives the work in it.
pub(crate) struct GroupTurn<C: RawExec> {
    pub(crate) writer: tokio::sync::OwnedMutexGuard<Writer<C>>,
    pub(crate) flush: std::sync::Arc<tokio::sync::Notify>,
    /// When this transaction got the writer.
    pub(crate) since: std::time::Instant,
    /// It ran as background work (see [`crate::background`]).
    pub(crate) background: bool,
}

impl<C: RawExec> Drop for GroupTurn<C> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        self.writer.counters.transaction(held, self.background);
        if self.writer.open {
            self.flush.notify_one();
        }
    }
}

/// SQLite's one writer connection, shared by consecutive write transactions (group commit).
///
/// SQLite commits one transaction at a time, each with an fsync of the log. Instead, write
/// transactions follow one another inside one physical transaction, each as a savepoint: a
/// commit releases the savepoint and waits; the flusher, which queues for the writer like
/// everyone else, commits the physical transaction once the writers queued before it are done
/// and tells them all. A commit still returns only once its data is durable, and a failed
/// physical commit fails every transaction in it (their callers see the error; nothing half
/// done survives).
pub(crate) struct Writer<C: RawExec> {
    /// The connection run directly (SQLite). Declared before `conn`: dropped first.
    direct: crate::direct::Direct,
    /// Reached through [`Writer::conn_mut`], which takes it back from `direct` first.
    conn: C,
    /// A physical transaction is open.
    open: bool,
    /// A write transaction holds its savepoint. Still true when the next one starts, it was
    /// dropped without committing: its savepoint is rolled back first.
    in_tx: bool,
    waiting: Vec<Waiter>,
    pub(crate) counters: std::sync::Arc<WriterCounters>,
}

/// How busy the one writer is: every write transaction waits for the ones before it, so its busy
/// share of the wall clock is how close the database is to its write capacity.
#[derive(Debug, Default)]
pub(crate) struct WriterCounters {
    transactions: AtomicU64,
    background: AtomicU64,
    held_us: AtomicU64,
    commits: AtomicU64,
    commit_us: AtomicU64,
}

impl WriterCounters {
    fn transaction(&self, held: std::time::Duration, background: bool) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        if background {
            self.background.fetch_add(1, Ordering::Relaxed);
        }
        self.held_us.fetch_add(micros(held), Ordering::Relaxed);
    }

    fn commit(&self, took: std::time::Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_us.fetch_add(micros(took), Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> crate::WriterStats {
        crate::WriterStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            background: self.background.load(Ordering::Relaxed),
            held_us: self.held_us.load(Ordering::Relaxed),
            group_commits: self.commits.load(Ordering::Relaxed),
            commit_us: self.commit_us.load(Ordering::Relaxed),
        }
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl<C: RawExec> Drop for Writer<C> {
    fn drop(&mut self) {
        // The direct path's prepared statements are finalized (as `direct` drops, before
        // `conn`) only while sqlx's thread is kept off the connection: take it back first.
        if self.direct.must_lock_to_drop()
            && let Some(conn) = self.conn.sqlite()
            && futures_executor::block_on(self.direct.lock(conn)).is_err()
        {
            self.direct.abandon();
        }
    }
}

impl<C: RawExec> Writer<C> {
    pub(crate) fn new(conn: C, counters: std::sync::Arc<WriterCounters>) -> Self {
        Self {
            direct: crate::direct::Direct::default(),
            conn,
            open: false,
            in_tx: false,
            waiting: Vec::new(),
            counters,
        }
    }

    /// The sqlx connection, given back by the direct path first.
    pub(crate) fn conn_mut(&mut self) -> &mut C {
        self.direct.release();
        &mut self.conn
    }

    /// The connection run directly, when it is SQLite's.
    pub(crate) async fn direct(&mut self) -> Result<Option<&rusqlite::Connection>, sqlx::Error> {
        match self.conn.sqlite() {
            Some(conn) => self.direct.lock(conn).await.map(Some),
            None => Ok(None),
        }
    }

    /// Runs a statement through sqlx: one that may wait (`BEGIN IMMEDIATE` on a database
    /// another process writes to) or fsync (`COMMIT`), which must not block an async thread.
    async fn exec(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        self.conn_mut().exec(sql).await
    }

    /// Runs a quick statement (savepoints) directly where it can.
    async fn exec_quick(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        if let Some(conn) = self.direct().await? {
            return crate::direct::batch(conn, sql);
        }
        self.exec(sql).await
    }

    /// Starts a write transaction: its savepoint inside the open physical transaction, opened
    /// first when there is none.
    pub(crate) async fn start(&mut self) -> Result<(), sqlx::Error> {
        self.undo_abandoned().await;
        if !self.open {
            self.exec("BEGIN IMMEDIATE").await?;
            self.open = true;
        }
        if let Err(e) = self.exec_quick("SAVEPOINT sb_tx").await {
            self.abort(&e.to_string()).await;
            return Err(e);
        }
        self.in_tx = true;
        Ok(())
    }

    /// Ends the current write transaction into the physical one; the receiver answers once that
    /// is committed (or failed).
    pub(crate) async fn release(
        &mut self,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), String>>, sqlx::Error> {
        self.in_tx = false;
        if let Err(e) = self.exec_quick("RELEASE sb_tx").await {
            // SQLite may have rolled the physical transaction back on its own (I/O errors, a
            // full disk): every transaction in it has failed.
            self.abort(&e.to_string()).await;
            return Err(e);
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.waiting.push(done);
        Ok(wait)
    }

    /// Commits the physical transaction and answers everyone waiting for it.
    pub(crate) async fn flush(&mut self) {
        self.undo_abandoned().await;
        if !self.open {
            return;
        }
        let started = std::time::Instant::now();
        let committed = self.exec("COMMIT").await;
        self.counters.commit(started.elapsed());
        match committed {
            Ok(()) => {
                self.open = false;
                for w in self.waiting.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => self.abort(&e.to_string()).await,
        }
    }

    /// Rolls back the savepoint of a write transaction that was dropped without committing.
    async fn undo_abandoned(&mut self) {
        if !self.in_tx {
            return;
        }
        self.in_tx = false;
        let undone = match self.exec_quick("ROLLBACK TO sb_tx").await {
            Ok(()) => self.exec_quick("RELEASE sb_tx").await,
            Err(e) => Err(e),
        };
        if let Err(e) = undone {
            self.abort(&e.to_string()).await;
        }
    }

    /// Gives up the physical transaction: everyone waiting on it learns it failed.
    async fn abort(&mut self, why: &str) {
        // SQLite may already have rolled back; then this fails, harmlessly.
        let _ = self.exec("ROLLBACK").await;
        self.open = false;
        self.in_tx = false;
        for w in self.waiting.drain(..) {
            let _ = w.send(Err(why.to_owned()));
        }
    }
}
