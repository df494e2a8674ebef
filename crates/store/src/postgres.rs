//! PostgreSQL, for several stateless replicas sharing one database.

use crate::{ConnectOptions, MigrationStatus, PoolStats, Store, StoreError, Tx};
use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::sync::Arc;
use tokio::sync::Notify;

crate::sql_impl::impl_tx!(
    PgTx,
    Postgres,
    for_update = "FOR UPDATE",
    skip_locked = "FOR UPDATE SKIP LOCKED",
    batch_rows = 100,
    numbered_params = true,
    writes_in_with = true,
    // `ARRAY(...)` is computed once, so `d.id = ANY(...)` is an index lookup.
    in_json_list = "= ANY(ARRAY(SELECT json_array_elements_text($1::json)))"
);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// A pooled connection idle this long is checked before use.
const PING_IDLE_CONNECTIONS_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a write transaction. Its statements are key lookups, inserts and updates by key, whose
/// plan does not depend on the values: PostgreSQL plans each prepared statement once for the
/// connection (a generic plan) instead of planning it again for every run's values (a custom
/// plan, which it keeps doing when it estimates the generic plan no cheaper). Sent with `BEGIN`,
/// in the same round trip. Reads (list pages with optional filters, whose best plan depends on
/// which filters are given) keep the default. Measured with the shift-change bench on 2 cores:
/// about 2,000 → 2,350 check-ins a second.
const BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// The channel on which a commit that enqueued jobs wakes the workers of every replica.
const JOB_CHANNEL: &str = "switchboard_jobs";

pub struct PgStore {
    pool: PgPool,
    /// Kept for batches of requests (`Store::begin_batch`): a few connections that run only
    /// them keep their statements prepared and planned, where batches spread over the whole
    /// pool made each connection's first batch slow for the first part of a shift change.
    batch_pool: PgPool,
    max: u32,
    signal: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
    announce: Arc<Notify>,
    announcer: tokio::task::JoinHandle<()>,
    lanes: Arc<crate::lanes::Lanes>,
    chains: Arc<crate::audit_chains::Chains>,
}

impl PgStore {
    pub async fn connect(url: &str, o: &ConnectOptions) -> Result<Self, StoreError> {
        let total = o.max_connections.max(2);
        // A quarter of the connections, at least one, for batches of check-ins (see
        // `Store::begin_batch`); the rest for everything else.
        let batch = (total / 4).max(1);
        let main = total.saturating_sub(batch).max(2);
        let pool = pool_options(main, o.min_connections.min(main), o.acquire_timeout)
            .connect(url)
            .await?;
        let batch_pool = pool_options(
            batch,
            if o.min_connections > 0 { batch } else { 0 },
            o.acquire_timeout,
        )
        .connect(url)
        .await?;
        let signal = Arc::new(Notify::new());
        let listener = tokio::spawn(listen_for_jobs(pool.clone(), Arc::clone(&signal)));
        let announce = Arc::new(Notify::new());
        let announcer = tokio::spawn(announce_jobs(pool.clone(), Arc::clone(&announce)));
        Ok(Self {
            pool,
            batch_pool,
            max: main + batch,
            signal,
            listener,
            announce,
            announcer,
            // A quarter of the connections at most for background work, so that it never
            // keeps requests waiting for one.
            lanes: Arc::new(crate::lanes::Lanes::new(
                usize::try_from(total / 4).unwrap_or(1).max(1),
            )),
            chains: crate::audit_chains::Chains::new(o.audit_chains),
        })
    }

    fn tx(
        &self,
        inner: crate::handle::Handle<Postgres>,
        lane: Option<crate::lanes::Lane>,
    ) -> Box<dyn Tx> {
        Box::new(PgTx {
            inner,
            enqueued: false,
            signal: Arc::clone(&self.signal),
            announce: Some(Arc::clone(&self.announce)),
            writer: None,
            lane,
            chains: Arc::clone(&self.chains),
            audit: None,
        })
    }
}

/// A pool's settings: up to `max` connections, `min` kept open when idle.
fn pool_options(max: u32, min: u32, acquire_timeout: std::time::Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(min.min(max))
        .acquire_timeout(acquire_timeout)
        // sqlx pings every connection it hands out: one more round trip and statement per
        // transaction. Ping only those idle long enough to have gone stale (a failover, a
        // restarted server); a busy pool's connections were just used.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_CONNECTIONS_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Tells the workers of every replica (`NOTIFY switchboard_jobs`) that jobs were enqueued, once
/// the transaction that enqueued them has committed; local workers were woken already. Not
/// inside that transaction: PostgreSQL serialises the commits of notifying transactions on one
/// lock held through their WAL flush, so each check-in of a shift change (each enqueues its Epic
/// logouts) waited for the previous one's; moving it out took the shift-change bench from 318
/// to 417 check-ins a second on a 2-core VM. Pokes that arrive while a notification is being
/// sent are coalesced into the next. A notification lost to a crash only delays other replicas
/// until their workers poll.
async fn announce_jobs(pool: PgPool, poke: Arc<Notify>) {
    loop {
        poke.notified().await;
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOB_CHANNEL)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(error = %e, "could not tell other replicas about new jobs");
        }
    }
}

/// Relays `NOTIFY switchboard_jobs` from other replicas to local workers. Workers also poll, so
/// a lost connection only delays work; the listener reconnects with a pause.
async fn listen_for_jobs(pool: PgPool, signal: Arc<Notify>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut l) => {
                if l.listen(JOB_CHANNEL).await.is_ok() {
                    while l.recv().await.is_ok() {
                        signal.notify_waiters();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "job listener could not connect"),
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> crate::Backend {
        crate::Backend::Postgres
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        // Background work lets open foreground transactions go first (see `lanes.rs`).
        let lane = if crate::is_background() {
            crate::lanes::Lane::Background(self.lanes.background_slot().await)
        } else {
            crate::lanes::Lane::Foreground(self.lanes.foreground())
        };
        Ok(self.tx(
            crate::handle::Handle::Tx(self.pool.begin_with(BEGIN).await?),
            Some(lane),
        ))
    }

    async fn begin_batch(&self) -> Result<Box<dyn Tx>, StoreError> {
        let lane = crate::lanes::Lane::Foreground(self.lanes.foreground());
        Ok(self.tx(
            crate::handle::Handle::Tx(self.batch_pool.begin_with(BEGIN).await?),
            Some(lane),
        ))
    }

    fn batch_connections(&self) -> u32 {
        self.batch_pool.options().get_max_connections()
    }

    async fn read(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(self.tx(
            crate::handle::Handle::Plain(self.pool.acquire().await?),
            None,
        ))
    }

    async fn deliver_commands(
        &self,
        device_id: &str,
        now: i64,
        redeliver_before: i64,
    ) -> Result<Vec<crate::CommandRow>, StoreError> {
        // A background poll still lets open foreground transactions go first.
        let lane = if crate::is_background() {
            Some(crate::lanes::Lane::Background(
                self.lanes.background_slot().await,
            ))
        } else {
            None
        };
        let mut conn = self.tx(
            crate::handle::Handle::Plain(self.pool.acquire().await?),
            lane,
        );
        conn.deliver_commands(device_id, now, redeliver_before)
            .await
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
        use sqlx::Row;
        let exists = sqlx::query("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS e")
            .fetch_one(&self.pool)
            .await?;
        let applied = if exists.try_get::<bool, _>("e")? {
            let rows =
                sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(&self.pool)
                    .await?;
            rows.iter()
                .map(|r| r.try_get::<i64, _>("version").map_err(StoreError::from))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(MigrationStatus {
            applied,
            embedded: MIGRATOR.iter().map(|m| m.version).collect(),
        })
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size() + self.batch_pool.size(),
            idle: u32::try_from(self.pool.num_idle() + self.batch_pool.num_idle())
                .unwrap_or(u32::MAX),
            max: self.max,
            writer: None,
        }
    }

    fn job_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.signal)
    }

    async fn close(&self) {
        self.listener.abort();
        self.announcer.abort();
        self.batch_pool.close().await;
        self.pool.close().await;
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.announcer.abort();
    }
}
