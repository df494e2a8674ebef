//! Storage. One [`Store`] trait, two implementations ([`sqlite::SqliteStore`] and
//! [`postgres::PgStore`]) generated from one body of SQL (see `sql_impl.rs`), so the two
//! backends cannot drift. Use cases open a [`Tx`], change state, append the audit entry and
//! enqueue the jobs they need, then commit once.

pub mod access_log;
mod audit_chains;
mod device_models;
mod direct;
mod error;
mod handle;
mod lanes;
pub mod models;
pub mod postgres;
mod sql_impl;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::Notify;

pub use device_models::*;
pub use error::StoreError;
pub use models::*;

use switchboard_domain::audit::{AuditEvent, StoredEntry};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `work` as background work: work nobody waits on at a screen (job workers, device agents'
/// polls and results). Its write transactions let the foreground ones (staff and kiosk requests:
/// a check-in at a busy shift change) go first, for at most [`BACKGROUND_YIELD`] each, one
/// background transaction at a time: on SQLite the foreground ones queued for the one writer, on
/// PostgreSQL the foreground ones open; on PostgreSQL background transactions also hold at most a
/// quarter of the connection pool. The work is delayed, never dropped (the SQLite busy timeout
/// counts only its wait in the writer's own queue). See `lanes.rs`.
pub async fn background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Whether the calling task runs inside [`background`].
#[must_use]
pub fn is_background() -> bool {
    BACKGROUND.try_with(|()| ()).is_ok()
}

/// How long a background write transaction lets foreground ones go first, at most.
pub const BACKGROUND_YIELD: std::time::Duration = std::time::Duration::from_millis(100);

/// Connection pool figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
    /// SQLite's one writer (a file database), since start; none on PostgreSQL.
    pub writer: Option<WriterStats>,
}

/// What SQLite's writer did since start. `held_us` over the wall clock is its busy share: near
/// 100 %, write transactions queue for it and more load only adds waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Write transactions that held the writer (committed or not).
    pub transactions: u64,
    /// Of those, the ones run as background work (see [`background`]).
    pub background: u64,
    /// Microseconds write transactions held the writer, their own commit excluded.
    pub held_us: u64,
    /// Commits of a group of write transactions (each with an fsync under synchronous=FULL).
    pub group_commits: u64,
    /// Microseconds those commits took.
    pub commit_us: u64,
}

/// Applied versus embedded migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: Vec<i64>,
    pub embedded: Vec<i64>,
}

impl MigrationStatus {
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.embedded.iter().all(|v| self.applied.contains(v))
    }

    #[must_use]
    pub fn pending(&self) -> Vec<i64> {
        self.embedded
            .iter()
            .copied()
            .filter(|v| !self.applied.contains(v))
            .collect()
    }
}

/// Opens a store from a database URL: `sqlite://path` (or `sqlite::memory:`) or `postgres://...`.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url, options).await?))
    } else {
        Err(StoreError::Config(
            "database_url must start with sqlite:// or postgres://".to_owned(),
        ))
    }
}

/// Pool and durability options shared by both backends.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// PostgreSQL only: connections kept open even when idle (at most `max_connections`), so
    /// that a burst after a quiet spell finds them connected, their statements prepared.
    pub min_connections: u32,
    pub acquire_timeout: std::time::Duration,
    /// SQLite only: `full` (default; a power cut never loses a commit) or `normal`.
    pub sqlite_synchronous_full: bool,
    /// SQLite only: how long a writer waits for the lock.
    pub sqlite_busy_timeout: std::time::Duration,
    /// How many audit chains to spread appends over (1–16). A transaction appends to a chain no
    /// other transaction of this process holds while there is one (see `audit_chains.rs`), so
    /// PostgreSQL wants at least as many as pooled connections; SQLite serialises writers anyway.
    pub audit_chains: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout: std::time::Duration::from_secs(5),
            sqlite_synchronous_full: true,
            sqlite_busy_timeout: std::time::Duration::from_secs(5),
            audit_chains: 16,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// A transaction that will write (SQLite: `BEGIN IMMEDIATE`, so it never fails to upgrade).
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// A handle for reading only. SQLite: one snapshot for all its statements. PostgreSQL: no
    /// transaction at all (autocommit), so each statement sees the latest commits, as it would
    /// under READ COMMITTED anyway; never write through it.
    async fn read(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// A write transaction shared by a batch of requests (the app's `checkin_batch`).
    /// PostgreSQL runs these on a few connections of their own (a quarter of
    /// `max_connections`, taken from the rest), so that those keep the batch's statements
    /// prepared. Default: [`Store::begin`].
    async fn begin_batch(&self) -> Result<Box<dyn Tx>, StoreError> {
        self.begin().await
    }
    /// How many batches run at once at most ([`Store::begin_batch`]); 0 when requests are not
    /// batched (SQLite commits its writers' transactions in groups already).
    fn batch_connections(&self) -> u32 {
        0
    }
    /// [`Tx::deliver_commands`] as a transaction of its own: one statement, so PostgreSQL runs
    /// it without `BEGIN` and `COMMIT` (one round trip instead of three).
    async fn deliver_commands(
        &self,
        device_id: &str,
        now: i64,
        redeliver_before: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tx
            .deliver_commands(device_id, now, redeliver_before)
            .await?;
        tx.commit().await?;
        Ok(out)
    }
    async fn ping(&self) -> Result<(), StoreError>;
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn migration_status(&self) -> Result<MigrationStatus, StoreError>;
    fn pool_stats(&self) -> PoolStats;
    /// Woken when jobs were enqueued (by this process, or by another replica on PostgreSQL).
    fn job_signal(&self) -> Arc<Notify>;
    async fn close(&self);
}

/// A write whose answer nobody reads, for [`Tx::write_all`].
#[derive(Debug, Clone)]
pub enum Write {
    InsertCommands(Vec<CommandRow>),
    UpdateCommand(CommandRow),
    InsertCheckin(CheckinRow),
    UpdateCheckin(CheckinRow),
    InsertCheckinSteps(Vec<CheckinStepRow>),
    UpdateCheckinStep(CheckinStepRow),
    EndCheckout {
        id: String,
        at: i64,
        checkin_id: String,
    },
    UpdateDevice(Box<DeviceRow>),
    DeviceEvent {
        device_id: String,
        at: i64,
        kind: String,
        detail: String,
    },
    EnqueueJobs(Vec<NewJob>),
    CompleteJob {
        id: i64,
        owner: String,
    },
    DeleteSecret(String),
    /// A device's open commands of its lending (not of a check-in) that a check-in makes moot
    /// (`show_ready`, `set_pin`), skipped with `reason`, their secrets (a PIN) deleted.
    CancelLendingCommands {
        device_id: String,
        at: i64,
        reason: String,
    },
}

impl Write {
    /// Whether the two writes touch one row. PostgreSQL runs a batch as one statement, whose
    /// parts all see the database as it was before it: one of two changes to a row would be
    /// lost, and a row inserted by one part is invisible to the others. [`Tx::write_all`]
    /// therefore starts a new statement before a write that touches a row of the current one.
    #[must_use]
    pub fn same_row(&self, other: &Self) -> bool {
        self.touches(other) || other.touches(self)
    }

    fn touches(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::UpdateCommand(a), Self::UpdateCommand(b)) => a.id == b.id,
            (Self::InsertCommands(v), Self::UpdateCommand(b)) => v.iter().any(|a| a.id == b.id),
            (Self::UpdateCheckin(a) | Self::InsertCheckin(a), Self::UpdateCheckin(b)) => {
                a.id == b.id
            }
            (Self::UpdateCheckinStep(a), Self::UpdateCheckinStep(b)) => {
                a.checkin_id == b.checkin_id && a.position == b.position
            }
            (Self::InsertCheckinSteps(v), Self::UpdateCheckinStep(b)) => v
                .iter()
                .any(|a| a.checkin_id == b.checkin_id && a.position == b.position),
            (Self::EndCheckout { id: a, .. }, Self::EndCheckout { id: b, .. })
            | (Self::DeleteSecret(a), Self::DeleteSecret(b)) => a == b,
            (Self::UpdateDevice(a), Self::UpdateDevice(b)) => a.id == b.id,
            (Self::CompleteJob { id: a, .. }, Self::CompleteJob { id: b, .. }) => a == b,
            (Self::CancelLendingCommands { device_id, .. }, Self::UpdateCommand(c)) => {
                c.device_id == *device_id && c.checkin_id.is_none()
            }
            (
                Self::CancelLendingCommands { .. },
                Self::DeleteSecret(_) | Self::CancelLendingCommands { .. },
            ) => true,
            _ => false,
        }
    }
}

/// One database transaction. Dropping it without [`Tx::commit`] rolls back.
#[async_trait]
pub trait Tx: Send {
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Whether `lock_*` takes row locks (PostgreSQL). SQLite's write transactions hold the one
    /// writer from their start, so what they read is already theirs and `lock_*` does nothing.
    fn row_locks(&self) -> bool;
    /// Writes whose answers nobody reads, in this order. SQLite runs them one by one;
    /// PostgreSQL sends them as one statement (one round trip, `WITH w0 AS (...), ... last`),
    /// starting another only where two writes touch one row (see [`Write::same_row`]).
    async fn write_all(&mut self, writes: &[Write]) -> Result<(), StoreError>;

    // --- staff accounts
    async fn insert_user(&mut self, user: &UserRow) -> Result<(), StoreError>;
    async fn update_user(&mut self, user: &UserRow) -> Result<(), StoreError>;
    async fn get_user(&mut self, id: &str) -> Result<Option<UserRow>, StoreError>;
    async fn get_user_by_username(&mut self, username: &str)
    -> Result<Option<UserRow>, StoreError>;
    async fn list_users(&mut self) -> Result<Vec<UserRow>, StoreError>;
    async fn count_admins(&mut self) -> Result<i64, StoreError>;

    // --- API tokens
    async fn insert_token(&mut self, token: &TokenRow) -> Result<(), StoreError>;
    async fn get_token(&mut self, id: &str) -> Result<Option<TokenRow>, StoreError>;
    async fn list_tokens(&mut self, user_id: Option<&str>) -> Result<Vec<TokenRow>, StoreError>;
    async fn find_token_by_digest(
        &mut self,
        digest: &[u8],
    ) -> Result<Option<(TokenRow, UserRow)>, StoreError>;
    async fn revoke_token(&mut self, id: &str, at: i64) -> Result<bool, StoreError>;
    async fn revoke_tokens_of_user(&mut self, user_id: &str, at: i64) -> Result<u64, StoreError>;
    async fn touch_token(&mut self, id: &str, at: i64) -> Result<(), StoreError>;

    // --- console sessions
    async fn insert_session(&mut self, session: &SessionRow) -> Result<(), StoreError>;
    async fn find_session_by_digest(
        &mut self,
        digest: &[u8],
    ) -> Result<Option<(SessionRow, UserRow)>, StoreError>;
    async fn revoke_session(&mut self, id: &str, at: i64) -> Result<bool, StoreError>;
    async fn revoke_sessions_of_user(&mut self, user_id: &str, at: i64) -> Result<u64, StoreError>;
    async fn delete_expired_sessions(&mut self, now: i64) -> Result<u64, StoreError>;

    // --- sealed secrets
    async fn put_secret(&mut self, secret: &SecretRow) -> Result<(), StoreError>;
    async fn get_secret(&mut self, id: &str) -> Result<Option<SecretRow>, StoreError>;
    async fn list_secrets(&mut self) -> Result<Vec<SecretRow>, StoreError>;
    async fn delete_secret(&mut self, id: &str) -> Result<bool, StoreError>;

    // --- audit log
    /// Appends `event` to an audit chain of this transaction's, linking it to the chain's head.
    /// SQLite writes it at once; PostgreSQL with the transaction's next [`Tx::write_all`] (one
    /// statement with those writes), or just before it commits.
    async fn append_audit(&mut self, event: &AuditEvent, at_ms: i64) -> Result<(), StoreError>;
    async fn list_audit(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    /// Entries of one chain with `seq > after_seq`, in order, at most `limit`.
    async fn audit_chain_page(
        &mut self,
        chain: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEntry>, StoreError>;
    async fn audit_heads(&mut self) -> Result<Vec<AuditHead>, StoreError>;

    // --- key sets and signing keys
    async fn insert_key_set(&mut self, k: &KeySetRow) -> Result<(), StoreError>;
    async fn get_key_set(&mut self, id: &str) -> Result<Option<KeySetRow>, StoreError>;
    async fn update_key_set(&mut self, k: &KeySetRow) -> Result<(), StoreError>;
    /// Key sets whose scheduled rotation is due.
    async fn due_key_sets(&mut self, now: i64) -> Result<Vec<KeySetRow>, StoreError>;
    async fn insert_signing_key(&mut self, k: &SigningKeyRow) -> Result<(), StoreError>;
    async fn update_signing_key(&mut self, k: &SigningKeyRow) -> Result<(), StoreError>;
    /// Every key of a set, newest first.
    async fn signing_keys(&mut self, key_set_id: &str) -> Result<Vec<SigningKeyRow>, StoreError>;
    async fn touch_signing_key(&mut self, kid: &str, at: i64) -> Result<(), StoreError>;

    // --- Epic environments
    async fn insert_environment(&mut self, e: &EnvironmentRow) -> Result<(), StoreError>;
    async fn update_environment(&mut self, e: &EnvironmentRow) -> Result<(), StoreError>;
    async fn get_environment(&mut self, id: &str) -> Result<Option<EnvironmentRow>, StoreError>;
    async fn list_environments(&mut self) -> Result<Vec<EnvironmentRow>, StoreError>;
    async fn delete_environment(&mut self, id: &str) -> Result<bool, StoreError>;

    async fn insert_connection_check(&mut self, c: &ConnectionCheckRow) -> Result<(), StoreError>;
    /// The newest check of `kind` for an environment.
    async fn latest_connection_check(
        &mut self,
        environment_id: &str,
        kind: &str,
    ) -> Result<Option<ConnectionCheckRow>, StoreError>;

    // --- telehealth
    async fn insert_telehealth_profile(
        &mut self,
        p: &TelehealthProfileRow,
    ) -> Result<(), StoreError>;
    async fn update_telehealth_profile(
        &mut self,
        p: &TelehealthProfileRow,
    ) -> Result<(), StoreError>;
    async fn get_telehealth_profile(
        &mut self,
        id: &str,
    ) -> Result<Option<TelehealthProfileRow>, StoreError>;
    async fn list_telehealth_profiles(&mut self) -> Result<Vec<TelehealthProfileRow>, StoreError>;
    async fn delete_telehealth_profile(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Records a launch as used; `false` when it was already used.
    async fn use_telehealth_launch(
        &mut self,
        digest: &str,
        profile_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError>;
    async fn insert_telehealth_state(&mut self, s: &TelehealthStateRow) -> Result<(), StoreError>;
    /// Removes and returns a pending OAuth state (single use).
    async fn take_telehealth_state(
        &mut self,
        digest: &str,
    ) -> Result<Option<TelehealthStateRow>, StoreError>;
    /// Deletes used launches and OAuth states past their expiry; returns the secret ids of the
    /// deleted states so the caller can delete them too.
    async fn purge_telehealth_launches(&mut self, now: i64) -> Result<Vec<String>, StoreError>;
    /// Inserts a conference unless one is already active for its (profile, appointment); returns
    /// the active one either way.
    async fn insert_or_get_active_conference(
        &mut self,
        c: &ConferenceRow,
    ) -> Result<ConferenceRow, StoreError>;
    async fn get_conference(&mut self, id: &str) -> Result<Option<ConferenceRow>, StoreError>;
    async fn end_conference(&mut self, id: &str, at: i64, reason: &str)
    -> Result<bool, StoreError>;
    /// Records when Epic accepted the `connected` or `ended` status of a conference.
    async fn mark_conference_reported(
        &mut self,
        id: &str,
        status: &str,
        at: i64,
    ) -> Result<(), StoreError>;
    async fn list_conferences(
        &mut self,
        f: &ConferenceFilter,
    ) -> Result<Vec<ConferenceRow>, StoreError>;
    async fn count_active_conferences(&mut self, profile_id: &str) -> Result<i64, StoreError>;
    /// Deletes ended conferences (and their participants) that ended before `before`; returns
    /// the token secret ids of the deleted participants.
    async fn purge_conferences(&mut self, before: i64) -> Result<(u64, Vec<String>), StoreError>;
    async fn insert_participant(&mut self, p: &ParticipantRow) -> Result<(), StoreError>;
    async fn update_participant(&mut self, p: &ParticipantRow) -> Result<(), StoreError>;
    async fn get_participant(&mut self, id: &str) -> Result<Option<ParticipantRow>, StoreError>;
    async fn participants(
        &mut self,
        conference_id: &str,
    ) -> Result<Vec<ParticipantRow>, StoreError>;

    // --- FHIR gateway
    async fn insert_adapter(&mut self, a: &AdapterRow) -> Result<(), StoreError>;
    async fn update_adapter(&mut self, a: &AdapterRow) -> Result<(), StoreError>;
    async fn get_adapter(&mut self, id: &str) -> Result<Option<AdapterRow>, StoreError>;
    async fn list_adapters(&mut self) -> Result<Vec<AdapterRow>, StoreError>;
    async fn delete_adapter(&mut self, id: &str) -> Result<bool, StoreError>;
    async fn insert_gateway(&mut self, g: &GatewayRow) -> Result<(), StoreError>;
    async fn update_gateway(&mut self, g: &GatewayRow) -> Result<(), StoreError>;
    async fn get_gateway(&mut self, id_or_name: &str) -> Result<Option<GatewayRow>, StoreError>;
    async fn list_gateways(&mut self) -> Result<Vec<GatewayRow>, StoreError>;
    async fn delete_gateway(&mut self, id: &str) -> Result<bool, StoreError>;
    async fn insert_gateway_app(&mut self, a: &GatewayAppRow) -> Result<(), StoreError>;
    async fn update_gateway_app(&mut self, a: &GatewayAppRow) -> Result<(), StoreError>;
    async fn get_gateway_app(&mut self, id: &str) -> Result<Option<GatewayAppRow>, StoreError>;
    async fn get_gateway_app_by_client_id(
        &mut self,
        client_id: &str,
    ) -> Result<Option<GatewayAppRow>, StoreError>;
    async fn list_gateway_apps(&mut self) -> Result<Vec<GatewayAppRow>, StoreError>;
    async fn delete_gateway_app(&mut self, id: &str) -> Result<bool, StoreError>;
    async fn insert_activation(&mut self, a: &ActivationRow) -> Result<(), StoreError>;
    async fn update_activation(&mut self, a: &ActivationRow) -> Result<(), StoreError>;
    async fn get_activation(&mut self, id: &str) -> Result<Option<ActivationRow>, StoreError>;
    async fn find_activation(
        &mut self,
        app_id: &str,
        gateway_id: &str,
    ) -> Result<Option<ActivationRow>, StoreError>;
    async fn list_activations(&mut self) -> Result<Vec<ActivationRow>, StoreError>;
    async fn delete_activation(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Records a revoked token id; `false` when it was already revoked.
    async fn revoke_token_id(
        &mut self,
        jti: &str,
        app_id: &str,
        at: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError>;
    /// Token ids revoked at or after `since`, and tokens that expired are forgotten first.
    async fn revocations_since(
        &mut self,
        since: i64,
        now: i64,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// Stores one batch of access records; answers its id.
    async fn insert_gateway_request_batch(
        &mut self,
        batch: &access_log::AccessBatch,
    ) -> Result<i64, StoreError>;
    /// A batch's lines, exactly as its audit entry digested them.
    async fn gateway_request_batch_lines(&mut self, id: i64) -> Result<Option<String>, StoreError>;
    /// Newest first; `before` is a `seq` cursor.
    async fn list_gateway_requests(
        &mut self,
        gateway_id: Option<&str>,
        app_id: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<GatewayRequestRow>, StoreError>;

    // --- shared devices
    async fn put_location(&mut self, l: &LocationRow) -> Result<(), StoreError>;
    async fn get_location(&mut self, id: &str) -> Result<Option<LocationRow>, StoreError>;
    async fn list_locations(&mut self) -> Result<Vec<LocationRow>, StoreError>;
    async fn delete_location(&mut self, id: &str) -> Result<bool, StoreError>;
    async fn put_device_group(&mut self, g: &DeviceGroupRow) -> Result<(), StoreError>;
    async fn get_device_group(&mut self, id: &str) -> Result<Option<DeviceGroupRow>, StoreError>;
    async fn list_device_groups(&mut self) -> Result<Vec<DeviceGroupRow>, StoreError>;
    async fn delete_device_group(&mut self, id: &str) -> Result<bool, StoreError>;
    async fn insert_enrolment_token(&mut self, t: &EnrolmentTokenRow) -> Result<(), StoreError>;
    async fn find_enrolment_token(
        &mut self,
        digest: &str,
    ) -> Result<Option<EnrolmentTokenRow>, StoreError>;
    async fn list_enrolment_tokens(&mut self) -> Result<Vec<EnrolmentTokenRow>, StoreError>;
    async fn revoke_enrolment_token(&mut self, id: &str, at: i64) -> Result<bool, StoreError>;
    async fn count_enrolment_use(&mut self, id: &str) -> Result<(), StoreError>;
    async fn insert_device(&mut self, d: &DeviceRow) -> Result<(), StoreError>;
    /// Writes every mutable column of a device.
    async fn update_device(&mut self, d: &DeviceRow) -> Result<(), StoreError>;
    async fn get_device(&mut self, id_or_serial: &str) -> Result<Option<DeviceRow>, StoreError>;
    async fn find_device_by_credential(
        &mut self,
        digest: &str,
    ) -> Result<Option<DeviceRow>, StoreError>;
    async fn list_devices(&mut self, f: &DeviceFilter) -> Result<Vec<DeviceRow>, StoreError>;
    /// Reads a device (by id or serial) and locks its row until commit (PostgreSQL; SQLite
    /// writers are serial).
    async fn lock_device(&mut self, id_or_serial: &str) -> Result<Option<DeviceRow>, StoreError>;
    /// Reads a check-in with its steps (by position) in one statement and locks them until
    /// commit (PostgreSQL), so its steps are settled one writer at a time, on what the writer
    /// before committed. `None`: no such check-in, or it has no steps (nothing to settle).
    async fn lock_checkin(
        &mut self,
        id: &str,
    ) -> Result<Option<(CheckinRow, Vec<CheckinStepRow>)>, StoreError>;
    /// [`Tx::lock_device`] with the device's group and its holder, in one statement (a
    /// check-in needs all three).
    async fn lock_device_with_group_and_holder(
        &mut self,
        id_or_serial: &str,
    ) -> Result<Option<(DeviceRow, Option<DeviceGroupRow>, Option<DeviceUserRow>)>, StoreError>;
    /// [`Tx::lock_device_with_group_and_holder`] for several devices (by id or serial) in one
    /// statement, locked in id order, so that two such transactions never wait for each other
    /// in a cycle. Devices not found are left out.
    async fn lock_devices_with_group_and_holder(
        &mut self,
        ids_or_serials: &[&str],
    ) -> Result<Vec<(DeviceRow, Option<DeviceGroupRow>, Option<DeviceUserRow>)>, StoreError>;
    /// Moves an available device to `checked_out` for `holder`; `false` when it was not available.
    async fn take_device(
        &mut self,
        id: &str,
        holder: &str,
        checkout_id: &str,
        pin_set: bool,
        now: i64,
    ) -> Result<bool, StoreError>;
    async fn put_device_user(&mut self, u: &DeviceUserRow) -> Result<(), StoreError>;
    async fn get_device_user(
        &mut self,
        id_or_username: &str,
    ) -> Result<Option<DeviceUserRow>, StoreError>;
    async fn find_device_user_by_badge(
        &mut self,
        digest: &str,
    ) -> Result<Option<DeviceUserRow>, StoreError>;
    async fn list_device_users(&mut self) -> Result<Vec<DeviceUserRow>, StoreError>;
    /// Locks a user's row until commit (PostgreSQL), so their device limit holds under races.
    async fn lock_device_user(&mut self, id: &str) -> Result<(), StoreError>;
    async fn insert_checkout(&mut self, c: &CheckoutRow) -> Result<(), StoreError>;
    async fn get_checkout(&mut self, id: &str) -> Result<Option<CheckoutRow>, StoreError>;
    async fn end_checkout(
        &mut self,
        id: &str,
        at: i64,
        checkin_id: &str,
    ) -> Result<bool, StoreError>;
    async fn open_checkouts(
        &mut self,
        user_id: Option<&str>,
        due_before: Option<i64>,
    ) -> Result<Vec<CheckoutRow>, StoreError>;
    async fn device_checkouts(
        &mut self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<CheckoutRow>, StoreError>;
    async fn insert_checkin(&mut self, c: &CheckinRow) -> Result<(), StoreError>;
    async fn update_checkin(&mut self, c: &CheckinRow) -> Result<(), StoreError>;
    async fn get_checkin(&mut self, id: &str) -> Result<Option<CheckinRow>, StoreError>;
    async fn device_checkins(
        &mut self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<CheckinRow>, StoreError>;
    /// Inserts a check-in's steps in one statement (a chunk per 100 rows).
    async fn insert_checkin_steps(&mut self, steps: &[CheckinStepRow]) -> Result<(), StoreError>;
    async fn update_checkin_step(&mut self, s: &CheckinStepRow) -> Result<(), StoreError>;
    async fn checkin_steps(&mut self, checkin_id: &str) -> Result<Vec<CheckinStepRow>, StoreError>;
    async fn get_checkin_step(
        &mut self,
        checkin_id: &str,
        position: i64,
    ) -> Result<Option<CheckinStepRow>, StoreError>;
    /// Totals over the server-side steps of check-ins started at or after `since`.
    async fn step_totals(&mut self, since: i64) -> Result<StepTotals, StoreError>;
    async fn insert_command(&mut self, c: &CommandRow) -> Result<(), StoreError> {
        self.insert_commands(std::slice::from_ref(c)).await
    }
    /// Inserts commands in one statement (a chunk per 100 rows).
    async fn insert_commands(&mut self, commands: &[CommandRow]) -> Result<(), StoreError>;
    async fn update_command(&mut self, c: &CommandRow) -> Result<(), StoreError>;
    async fn get_command(&mut self, id: &str) -> Result<Option<CommandRow>, StoreError>;
    /// The commands of `ids` that exist, in no particular order.
    async fn get_commands(&mut self, ids: &[String]) -> Result<Vec<CommandRow>, StoreError>;
    /// Hands a device its deliverable commands (as [`Tx::deliverable_commands`]) in one
    /// statement: marks them delivered at `now` and returns them so, oldest first.
    async fn deliver_commands(
        &mut self,
        device_id: &str,
        now: i64,
        redeliver_before: i64,
    ) -> Result<Vec<CommandRow>, StoreError>;
    /// Commands to hand to a device: queued ones, and delivered ones with no result since
    /// `redeliver_before`, oldest first, not expired.
    async fn deliverable_commands(
        &mut self,
        device_id: &str,
        now: i64,
        redeliver_before: i64,
    ) -> Result<Vec<CommandRow>, StoreError>;
    /// Open commands whose time ran out.
    async fn expired_commands(
        &mut self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError>;
    async fn device_commands(
        &mut self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError>;
    async fn insert_device_event(
        &mut self,
        device_id: &str,
        at: i64,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
    async fn device_events(
        &mut self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<DeviceEventRow>, StoreError>;
    async fn get_idempotency(
        &mut self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRow>, StoreError>;
    async fn put_idempotency(&mut self, r: &IdempotencyRow) -> Result<(), StoreError>;
    async fn put_sso_profile(&mut self, p: &SsoProfileRow) -> Result<(), StoreError>;
    async fn get_sso_profile(&mut self, id: &str) -> Result<Option<SsoProfileRow>, StoreError>;
    async fn list_sso_profiles(&mut self) -> Result<Vec<SsoProfileRow>, StoreError>;
    async fn delete_sso_profile(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Inserts or replaces a user's credential for a profile; returns the replaced secret id.
    async fn put_sso_credential(
        &mut self,
        c: &SsoCredentialRow,
    ) -> Result<Option<String>, StoreError>;
    async fn sso_credentials_of(
        &mut self,
        user_id: &str,
    ) -> Result<Vec<SsoCredentialRow>, StoreError>;
    /// Deletes the credentials of a profile (all users, or one) and returns their secret ids.
    async fn delete_sso_credentials(
        &mut self,
        profile_id: &str,
        user_id: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    /// Deletes device history older than `before` (timeline events, finished commands) and
    /// idempotency keys older than `keys_before`; returns how many rows went.
    async fn purge_device_history(
        &mut self,
        before: i64,
        keys_before: i64,
    ) -> Result<u64, StoreError>;

    // --- job queue
    /// Enqueues a job; with a `dedupe_key` that is already queued, returns `None` and adds nothing.
    async fn enqueue_job(&mut self, job: &NewJob) -> Result<Option<i64>, StoreError>;
    /// Enqueues jobs in one statement (a chunk per 100 rows), skipping those whose
    /// `dedupe_key` is already queued; returns how many were added.
    async fn enqueue_jobs(&mut self, jobs: &[NewJob]) -> Result<u64, StoreError>;
    /// Leases up to `limit` due jobs to `owner` until `now + lease_ms`, counting an attempt each.
    async fn claim_jobs(
        &mut self,
        owner: &str,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<JobRow>, StoreError>;
    /// Deletes a finished job, if `owner` still holds its lease.
    async fn complete_job(&mut self, id: i64, owner: &str) -> Result<bool, StoreError>;
    /// Releases the lease and schedules the next attempt.
    async fn retry_job_later(
        &mut self,
        id: i64,
        owner: &str,
        run_at: i64,
        error: &str,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Moves a leased job to the dead letters.
    async fn bury_job(
        &mut self,
        id: i64,
        owner: &str,
        error: &str,
        now: i64,
    ) -> Result<bool, StoreError>;
    async fn get_job(&mut self, id: i64) -> Result<Option<JobRow>, StoreError>;
    async fn list_jobs(&mut self, filter: &JobFilter) -> Result<Vec<JobRow>, StoreError>;
    /// Puts a dead job back in the queue with fresh attempts.
    async fn revive_dead_job(&mut self, id: i64, now: i64) -> Result<bool, StoreError>;
    async fn discard_dead_job(&mut self, id: i64) -> Result<bool, StoreError>;
    async fn job_counts(&mut self, now: i64) -> Result<JobCounts, StoreError>;
}
