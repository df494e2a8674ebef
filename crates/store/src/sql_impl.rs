//! The one body of SQL behind both backends.
//!
//! `impl_tx!` expands to a `Tx` implementation for a concrete sqlx database. Both backends accept
//! `$1`-style parameters, `RETURNING` and `ON CONFLICT`; the only dialect differences are passed
//! in as literals: the row lock used for the audit chain head, and `SKIP LOCKED` for job claims
//! (SQLite takes the write lock at `BEGIN IMMEDIATE`, so it needs neither), and how a list of
//! keys passed as one JSON array is matched.

macro_rules! impl_tx {
    ($tx:ident, $db:ty, for_update = $for_update:literal, skip_locked = $skip_locked:literal, batch_rows = $batch_rows:literal, numbered_params = $numbered:literal, writes_in_with = $writes_in_with:literal, in_json_list = $in_json_list:literal) => {
        pub struct $tx {
            pub(crate) inner: $crate::handle::Handle<$db>,
            pub(crate) enqueued: bool,
            pub(crate) signal: std::sync::Arc<tokio::sync::Notify>,
            /// PostgreSQL: pokes the task that tells other replicas' workers about new jobs,
            /// after the commit (see `postgres::announce_jobs`).
            pub(crate) announce: Option<std::sync::Arc<tokio::sync::Notify>>,
            /// SQLite: this process's writer turn, held until commit or rollback (declared after
            /// `inner` so the transaction ends first).
            #[allow(dead_code, reason = "held only to be released when the transaction ends")]
            pub(crate) writer: Option<tokio::sync::OwnedMutexGuard<()>>,
            /// PostgreSQL: a foreground transaction's place in its lane (see `lanes.rs`), held
            /// until it ends.
            #[allow(dead_code, reason = "held only to be released when the transaction ends")]
            pub(crate) lane: Option<$crate::lanes::Lane>,
            /// The store's audit chains, and this transaction's (once it appends).
            pub(crate) chains: std::sync::Arc<$crate::audit_chains::Chains>,
            pub(crate) audit: Option<$crate::sql_impl::AuditState>,
        }

        impl $tx {

            /// Runs a statement that returns no rows: directly on SQLite's writer (see
            /// [`crate::direct`]), through sqlx everywhere else. Answers how many rows changed.
            async fn run<'q>(&mut self, sql: &'q str, args: &[$crate::direct::Arg<'q>]) -> Result<u64, $crate::StoreError> {
                if let Some(conn) = self.inner.direct().await? {
                    return $crate::direct::execute(conn, sql, args);
                }
                Ok(bind_all(sqlx::query(sql), args).execute(&mut *self.inner).await?.rows_affected())
            }

            /// Runs a statement and reads every row it returns (as [`Self::run`]).
            async fn all<'q, T: $crate::direct::FromCols>(&mut self, sql: &'q str, args: &[$crate::direct::Arg<'q>]) -> Result<Vec<T>, $crate::StoreError> {
                if let Some(conn) = self.inner.direct().await? {
                    return $crate::direct::rows(conn, sql, args);
                }
                let rows = bind_all(sqlx::query(sql), args).fetch_all(&mut *self.inner).await?;
                rows.iter().map(|r| T::from_cols(r).map_err($crate::StoreError::from)).collect()
            }

            /// Runs a statement and reads its first row, if any (as [`Self::run`]).
            async fn first<'q, T: $crate::direct::FromCols>(&mut self, sql: &'q str, args: &[$crate::direct::Arg<'q>]) -> Result<Option<T>, $crate::StoreError> {
                if let Some(conn) = self.inner.direct().await? {
                    return $crate::direct::first(conn, sql, args);
                }
                let row = bind_all(sqlx::query(sql), args).fetch_optional(&mut *self.inner).await?;
                Ok(row.as_ref().map(T::from_cols).transpose()?)
            }
            /// Runs statements that return no rows, one by one; answers how many rows they changed.
            async fn run_all(&mut self, stmts: &[$crate::sql_impl::Stmt<'_>]) -> Result<u64, $crate::StoreError> {
                let mut n = 0;
                for (sql, a) in stmts {
                    n += self.run(sql, a).await?;
                }
                Ok(n)
            }

            /// Remembers to wake the workers once the transaction has committed.
            fn mark_enqueued(&mut self) {
                self.enqueued = true;
            }

            /// Reads an audit chain's head and locks it until the transaction ends.
            async fn lock_audit_head(&mut self, chain: i64) -> Result<$crate::audit_chains::Head, $crate::StoreError> {
                self.first(concat!("SELECT seq, hash FROM audit_heads WHERE chain = $1 ", $for_update), &$crate::direct::args![chain])
                    .await?
                    .ok_or_else(|| $crate::StoreError::Corrupt(format!("audit chain {chain} has no head row")))
            }

            /// Sends `stmts` (writes that touch no row twice; none at all is fine) as one
            /// statement, with the audit entries appended since the last one. Their chain's head
            /// is moved only from where this process last left it; when another replica moved it
            /// meanwhile, the entries are written again after reading the head under its lock
            /// (the other writes of the statement stand: they are in this transaction either way).
            async fn send_with_audit(&mut self, mut stmts: Vec<$crate::sql_impl::Stmt<'_>>) -> Result<(), $crate::StoreError> {
                use $crate::sql_impl::{audit_rows, audit_statements, combine};
                if !$writes_in_with {
                    return self.send_audit_now().await;
                }
                let pending = self.audit.as_mut().map(|a| std::mem::take(&mut a.pending)).unwrap_or_default();
                if pending.is_empty() {
                    if !stmts.is_empty() {
                        let (sql, a) = combine(&stmts);
                        self.run(&sql, &a).await?;
                    }
                    return Ok(());
                }
                let (chain, locked, known) = match &self.audit {
                    Some(a) => (a.lease.chain, a.locked.clone(), a.lease.known().cloned()),
                    None => return Err($crate::StoreError::Corrupt("audit entries without a chain".to_owned())),
                };
                let (head, guarded) = match (locked, known) {
                    (Some(h), _) => (h, false),
                    (None, Some(k)) => (k, true),
                    (None, None) => (self.lock_audit_head(chain).await?, false),
                };
                let rows = audit_rows(chain, &head, &pending);
                audit_statements(chain, &head, &rows, guarded, &mut stmts);
                let (sql, a) = combine(&stmts);
                let mut written = (self.run(&sql, &a).await?, rows);
                if guarded && written.0 != written.1.len() as u64 {
                    let head = self.lock_audit_head(chain).await?;
                    let rows = audit_rows(chain, &head, &pending);
                    let mut again = Vec::new();
                    audit_statements(chain, &head, &rows, false, &mut again);
                    let (sql, a) = combine(&again);
                    written = (self.run(&sql, &a).await?, rows);
                }
                if written.0 != written.1.len() as u64 {
                    return Err($crate::StoreError::Corrupt(format!("audit chain {chain}: {} of {} entries written", written.0, written.1.len())));
                }
                if let (Some(a), Some(last)) = (self.audit.as_mut(), written.1.last()) {
                    a.locked = Some(last.head());
                }
                Ok(())
            }

            /// SQLite: writes the pending audit entries at once, one statement each (the writer
            /// is this transaction's, so the head it reads stays put).
            async fn send_audit_now(&mut self) -> Result<(), $crate::StoreError> {
                let Some(a) = self.audit.as_mut() else { return Ok(()) };
                let pending = std::mem::take(&mut a.pending);
                let chain = a.lease.chain;
                if pending.is_empty() {
                    return Ok(());
                }
                let head = self.lock_audit_head(chain).await?;
                let rows = $crate::sql_impl::audit_rows(chain, &head, &pending);
                let mut stmts = Vec::new();
                for r in &rows {
                    stmts.push((std::borrow::Cow::Borrowed($crate::sql_impl::AUDIT_INSERT), r.args(chain).to_vec()));
                }
                if let Some(last) = rows.last() {
                    stmts.push((std::borrow::Cow::Borrowed($crate::sql_impl::AUDIT_MOVE_HEAD), $crate::direct::args![last.seq, &last.hash[..], chain].to_vec()));
                }
                self.run_all(&stmts).await?;
                Ok(())
            }
        }

        const USER_COLS: &str = "id, username, display_name, role, password_hash, disabled, created_at, updated_at";
        /// The users columns of a join, prefixed `u_` for `user_from(row, "u_")`.
        const USER_AS_U: &str = "u.id AS u_id, u.username AS u_username, u.display_name AS u_display_name, u.role AS u_role, \
            u.password_hash AS u_password_hash, u.disabled AS u_disabled, u.created_at AS u_created_at, u.updated_at AS u_updated_at";
        const TOKEN_COLS: &str = "id, user_id, name, digest, prefix, role, created_at, expires_at, last_used_at, revoked_at";
        const KEY_SET_COLS: &str = "id, owner, alg, publish_delay_secs, rotate_every_days, next_rotation_at, created_at";
        const SIGNING_KEY_COLS: &str = "kid, key_set_id, alg, public_jwk, private_secret, state, created_at, activate_after, activated_at, retiring_at, retired_at, last_used_at";
        const TH_PROFILE_COLS: &str = "id, name, environment_id, encryption, key_ref, iv_mode, launch_param, field_map, clients, link_validity_secs, video, status_codes, vendor_name, created_at, updated_at";
        const CONFERENCE_COLS: &str = "id, profile_id, profile_name, environment_id, appointment_id, csn, name, patient_name, department, room, state, started_at, ended_at, ended_reason, epic_connected_at, epic_ended_at";
        const PARTICIPANT_COLS: &str = "id, conference_id, role, display_name, epic_user, state, session_digest, client_id, arrived_at, joined_at, left_at, token_ref, token_issued_at, token_expires_at, token_renewals, token_error";
        const ADAPTER_COLS: &str = "id, name, kind, environment_id, settings, external_client_id, external_secret_ref, external_api_endpoint, created_at, updated_at";
        const APP_COLS: &str = "id, name, client_id, secret_digest, previous_secret_digest, previous_valid_until, launch_uri, scopes, token_ttl_secs, rate_limit_per_sec, jwks_url, tokens_not_before, disabled, created_at, updated_at";
        const ACTIVATION_COLS: &str = "id, app_id, gateway_id, ehr_auth, epic_client_id, epic_app_name, key_set_id, token_url, created_at, updated_at";
        const ENV_COLS: &str = "id, name, kind, interconnect_url, instance, token_url_override, client_id, apps, basic_username, basic_password_ref, epic_client_id, timeout_ms, rate_limit_per_sec, ca_bundle, key_set_id, created_at, updated_at";

        fn key_set_from(row: &DbRow) -> Result<$crate::KeySetRow, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::KeySetRow {
                id: row.try_get("id")?,
                owner: row.try_get("owner")?,
                alg: row.try_get("alg")?,
                publish_delay_secs: row.try_get("publish_delay_secs")?,
                rotate_every_days: row.try_get("rotate_every_days")?,
                next_rotation_at: row.try_get("next_rotation_at")?,
                created_at: row.try_get("created_at")?,
            })
        }

        fn signing_key_from(row: &DbRow) -> Result<$crate::SigningKeyRow, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::SigningKeyRow {
                kid: row.try_get("kid")?,
                key_set_id: row.try_get("key_set_id")?,
                alg: row.try_get("alg")?,
                public_jwk: row.try_get("public_jwk")?,
                private_secret: row.try_get("private_secret")?,
                state: row.try_get("state")?,
                created_at: row.try_get("created_at")?,
                activate_after: row.try_get("activate_after")?,
                activated_at: row.try_get("activated_at")?,
                retiring_at: row.try_get("retiring_at")?,
                retired_at: row.try_get("retired_at")?,
                last_used_at: row.try_get("last_used_at")?,
            })
        }

        fn environment_from(row: &DbRow) -> Result<$crate::EnvironmentRow, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::EnvironmentRow {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                kind: row.try_get("kind")?,
                interconnect_url: row.try_get("interconnect_url")?,
                instance: row.try_get("instance")?,
                token_url_override: row.try_get("token_url_override")?,
                client_id: row.try_get("client_id")?,
                apps: row.try_get("apps")?,
                basic_username: row.try_get("basic_username")?,
                basic_password_ref: row.try_get("basic_password_ref")?,
                epic_client_id: row.try_get("epic_client_id")?,
                timeout_ms: row.try_get("timeout_ms")?,
                rate_limit_per_sec: row.try_get("rate_limit_per_sec")?,
                ca_bundle: row.try_get("ca_bundle")?,
                key_set_id: row.try_get("key_set_id")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        const GROUP_COLS: &str = "id, name, lending_minutes, workflows, required_apps, checkin_on_dock, created_at, updated_at";
        const ENROL_COLS: &str = "id, name, digest, prefix, group_id, location_id, created_at, expires_at, revoked_at, uses";
        const DEVICE_COLS: &str = "id, serial, uuid, platform, model, os_version, name, slot, group_id, location_id, credential_digest, status, holder_id, \
            checkout_id, pin_set, battery, charging, docked, reported_location, apps, appconfig, readiness, last_heartbeat_at, enrolled_at, revoked_at, created_at, updated_at, \
            lost_at, lost_reason";
        const DEVICE_USER_COLS: &str = "id, username, display_name, badge_digest, password_hash, device_limit, source, disabled, created_at, updated_at";
        const CHECKOUT_COLS: &str = "id, device_id, user_id, location_id, source, pin_set, started_at, due_at, ended_at, checkin_id";
        const CHECKIN_COLS: &str = "id, device_id, checkout_id, user_id, requested_by, status, warnings, started_at, completed_at";
        const STEP_COLS: &str = "checkin_id, position, action, spec, on_device, mandatory, status, detail, install_id, attempts, outcome_unknown, repeats, command_id, updated_at";
        const COMMAND_COLS: &str = "id, device_id, kind, params, secret_ref, state, checkin_id, position, created_at, expires_at, delivered_at, finished_at, result";
        const JOB_COLS: &str = "id, kind, payload, dedupe_key, state, run_at, attempts, max_attempts, lease_owner, lease_until, last_error, created_at, updated_at";

        type DbRow = <$db as sqlx::Database>::Row;

        type Query<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>;

        /// Binds a statement's parameters for sqlx.
        fn bind_all<'q>(mut q: Query<'q>, args: &[$crate::direct::Arg<'q>]) -> Query<'q> {
            use $crate::direct::Arg;
            for a in args {
                q = match *a {
                    Arg::Text(v) => q.bind(v),
                    Arg::Int(v) => q.bind(v),
                    Arg::Int32(v) => q.bind(v),
                    Arg::Bool(v) => q.bind(v),
                    Arg::Blob(v) => q.bind(v),
                    Arg::Json(v) => q.bind(v.to_string()),
                };
            }
            q
        }

        fn user_from(row: &DbRow, p: &str) -> Result<$crate::UserRow, sqlx::Error> {
            use sqlx::Row;
            let c = |n: &str| format!("{p}{n}");
            Ok($crate::UserRow {
                id: row.try_get(c("id").as_str())?,
                username: row.try_get(c("username").as_str())?,
                display_name: row.try_get(c("display_name").as_str())?,
                role: row.try_get(c("role").as_str())?,
                password_hash: row.try_get(c("password_hash").as_str())?,
                disabled: row.try_get(c("disabled").as_str())?,
                created_at: row.try_get(c("created_at").as_str())?,
                updated_at: row.try_get(c("updated_at").as_str())?,
            })
        }

        fn token_from(row: &DbRow) -> Result<$crate::TokenRow, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::TokenRow {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                name: row.try_get("name")?,
                digest: row.try_get("digest")?,
                prefix: row.try_get("prefix")?,
                role: row.try_get("role")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                last_used_at: row.try_get("last_used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        fn session_from(row: &DbRow) -> Result<$crate::SessionRow, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::SessionRow {
                id: row.try_get("id")?,
                digest: row.try_get("digest")?,
                user_id: row.try_get("user_id")?,
                csrf: row.try_get("csrf")?,
                role: row.try_get("role")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        fn audit_from(row: &DbRow) -> Result<$crate::AuditRecord, sqlx::Error> {
            use sqlx::Row;
            let hash: Vec<u8> = row.try_get("hash")?;
            Ok($crate::AuditRecord {
                id: row.try_get("id")?,
                chain: row.try_get("chain")?,
                seq: row.try_get("seq")?,
                at: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                details: $crate::direct::Cols::json(row, "details")?,
                request_id: row.try_get("request_id")?,
                hash: hex::encode(&hash),
            })
        }

        fn stored_entry_from(row: &DbRow) -> Result<switchboard_domain::audit::StoredEntry, sqlx::Error> {
            use sqlx::Row;
            Ok(switchboard_domain::audit::StoredEntry {
                id: row.try_get("id")?,
                chain: row.try_get("chain")?,
                seq: row.try_get("seq")?,
                at_ms: row.try_get("at")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                details: row.try_get("details")?,
                request_id: row.try_get("request_id")?,
                prev_hash: row.try_get("prev_hash")?,
                hash: row.try_get("hash")?,
            })
        }


        /// The statements of one [`$crate::Write`] (a multi-row insert: one per chunk of rows).
        fn write_statements<'w>(w: &'w $crate::Write, out: &mut Vec<$crate::sql_impl::Stmt<'w>>) {
            use $crate::Write;
            match w {
                Write::InsertCommands(rows) => insert_commands_sql(rows, out),
                Write::UpdateCommand(c) => out.push(update_command_sql(c)),
                Write::InsertCheckin(c) => out.push(insert_checkin_sql(c)),
                Write::UpdateCheckin(c) => out.push(update_checkin_sql(c)),
                Write::InsertCheckinSteps(rows) => insert_checkin_steps_sql(rows, out),
                Write::UpdateCheckinStep(s) => out.push(update_checkin_step_sql(s)),
                Write::EndCheckout { id, at, checkin_id } => out.push(end_checkout_sql(id, *at, checkin_id)),
                Write::UpdateDevice(d) => out.push(update_device_sql(d)),
                Write::DeviceEvent { device_id, at, kind, detail } => out.push(device_event_sql(device_id, *at, kind, detail)),
                Write::EnqueueJobs(jobs) => enqueue_jobs_sql(jobs, out),
                Write::CompleteJob { id, owner } => out.push(complete_job_sql(*id, owner)),
                Write::DeleteSecret(id) => out.push(delete_secret_sql(id)),
                Write::CancelLendingCommands { device_id, at, reason } => {
                    // The secrets first: on SQLite the update would hide which commands had
                    // them; on PostgreSQL both parts see the commands as they were.
                    const OPEN_LENDING: &str = "device_id = $1 AND checkin_id IS NULL AND kind IN ('show_ready', 'set_pin') \
                                                AND +expires_at > $2 AND state IN ('queued', 'delivered')";
                    static DELETE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!(
                        "DELETE FROM secrets WHERE id IN (SELECT secret_ref FROM device_commands WHERE {OPEN_LENDING} AND secret_ref IS NOT NULL)"));
                    static SKIP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!(
                        "UPDATE device_commands SET state = 'skipped', finished_at = $2, result = $3, secret_ref = NULL WHERE {OPEN_LENDING}"));
                    out.push((DELETE.as_str().into(), $crate::direct::args![device_id, *at].to_vec()));
                    out.push((SKIP.as_str().into(), $crate::direct::args![device_id, *at, reason].to_vec()));
                }
            }
        }

        fn insert_commands_sql<'w>(rows: &'w [$crate::CommandRow], out: &mut Vec<$crate::sql_impl::Stmt<'w>>) {
            for chunk in rows.chunks($batch_rows) {
                let sql = format!("INSERT INTO device_commands ({COMMAND_COLS}) VALUES {}", $crate::sql_impl::values_list(13, chunk.len(), $numbered));
                let mut a = Vec::with_capacity(chunk.len() * 13);
                for c in chunk {
                    a.extend($crate::direct::args![&c.id, &c.device_id, &c.kind, &c.params, &c.secret_ref, &c.state, &c.checkin_id,
                        c.position, c.created_at, c.expires_at, c.delivered_at, c.finished_at, &c.result]);
                }
                out.push((std::borrow::Cow::Owned(sql), a));
            }
        }

        fn update_command_sql(c: &$crate::CommandRow) -> $crate::sql_impl::Stmt<'_> {
            ("UPDATE device_commands SET state = $2, secret_ref = $3, delivered_at = $4, finished_at = $5, result = $6 WHERE id = $1".into(),
             $crate::direct::args![&c.id, &c.state, &c.secret_ref, c.delivered_at, c.finished_at, &c.result].to_vec())
        }

        fn insert_checkin_sql(c: &$crate::CheckinRow) -> $crate::sql_impl::Stmt<'_> {
            ("INSERT INTO checkins (id, device_id, checkout_id, user_id, requested_by, status, warnings, started_at, completed_at) \
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)".into(),
             $crate::direct::args![&c.id, &c.device_id, &c.checkout_id, &c.user_id, &c.requested_by, &c.status,
                 &c.warnings, c.started_at, c.completed_at].to_vec())
        }

        fn update_checkin_sql(c: &$crate::CheckinRow) -> $crate::sql_impl::Stmt<'_> {
            ("UPDATE checkins SET status = $2, warnings = $3, completed_at = $4 WHERE id = $1".into(),
             $crate::direct::args![&c.id, &c.status, &c.warnings, c.completed_at].to_vec())
        }

        fn insert_checkin_steps_sql<'w>(rows: &'w [$crate::CheckinStepRow], out: &mut Vec<$crate::sql_impl::Stmt<'w>>) {
            for chunk in rows.chunks($batch_rows) {
                let sql = format!("INSERT INTO checkin_steps ({STEP_COLS}) VALUES {}", $crate::sql_impl::values_list(14, chunk.len(), $numbered));
                let mut a = Vec::with_capacity(chunk.len() * 14);
                for s in chunk {
                    a.extend($crate::direct::args![&s.checkin_id, s.position, &s.action, &s.spec, s.on_device, s.mandatory, &s.status,
                        &s.detail, &s.install_id, s.attempts, s.outcome_unknown, s.repeats, &s.command_id, s.updated_at]);
                }
                out.push((std::borrow::Cow::Owned(sql), a));
            }
        }

        fn update_checkin_step_sql(s: &$crate::CheckinStepRow) -> $crate::sql_impl::Stmt<'_> {
            ("UPDATE checkin_steps SET status = $3, detail = $4, install_id = $5, attempts = $6, outcome_unknown = $7, \
              repeats = $8, command_id = $9, updated_at = $10 WHERE checkin_id = $1 AND position = $2".into(),
             $crate::direct::args![&s.checkin_id, s.position, &s.status, &s.detail, &s.install_id, s.attempts,
                 s.outcome_unknown, s.repeats, &s.command_id, s.updated_at].to_vec())
        }

        fn end_checkout_sql<'w>(id: &'w str, at: i64, checkin_id: &'w str) -> $crate::sql_impl::Stmt<'w> {
            ("UPDATE checkouts SET ended_at = $2, checkin_id = $3 WHERE id = $1 AND ended_at IS NULL".into(),
             $crate::direct::args![id, at, checkin_id].to_vec())
        }

        fn update_device_sql(d: &$crate::DeviceRow) -> $crate::sql_impl::Stmt<'_> {
            ("UPDATE devices SET serial = $2, uuid = $3, platform = $4, model = $5, os_version = $6, name = $7, slot = $8, group_id = $9, \
              location_id = $10, credential_digest = $11, status = $12, holder_id = $13, checkout_id = $14, pin_set = $15, battery = $16, \
              charging = $17, docked = $18, reported_location = $19, apps = $20, appconfig = $21, readiness = $22, last_heartbeat_at = $23, \
              enrolled_at = $24, revoked_at = $25, updated_at = $26, lost_at = $27, lost_reason = $28 WHERE id = $1".into(),
             $crate::direct::args![&d.id, &d.serial, &d.uuid, &d.platform, &d.model, &d.os_version, &d.name, &d.slot,
                 &d.group_id, &d.location_id, &d.credential_digest, &d.status, &d.holder_id, &d.checkout_id,
                 d.pin_set, d.battery, d.charging, d.docked, &d.reported_location, &d.apps, &d.appconfig,
                 &d.readiness, d.last_heartbeat_at, d.enrolled_at, d.revoked_at, d.updated_at,
                 d.lost_at, &d.lost_reason].to_vec())
        }

        fn device_event_sql<'w>(device_id: &'w str, at: i64, kind: &'w str, detail: &'w str) -> $crate::sql_impl::Stmt<'w> {
            ("INSERT INTO device_events (device_id, at, kind, detail) VALUES ($1, $2, $3, $4)".into(),
             $crate::direct::args![device_id, at, kind, detail].to_vec())
        }

        fn enqueue_jobs_sql<'w>(jobs: &'w [$crate::NewJob], out: &mut Vec<$crate::sql_impl::Stmt<'w>>) {
            for chunk in jobs.chunks($batch_rows) {
                let sql = format!(
                    "INSERT INTO jobs (kind, payload, dedupe_key, state, run_at, attempts, max_attempts, created_at, updated_at) \
                     VALUES {} ON CONFLICT (dedupe_key) DO NOTHING",
                    $crate::sql_impl::values_list(9, chunk.len(), $numbered));
                let mut a = Vec::with_capacity(chunk.len() * 9);
                for j in chunk {
                    a.extend($crate::direct::args![&j.kind, &j.payload, &j.dedupe_key, "queued", j.run_at, 0_i32,
                        j.max_attempts, j.now, j.now]);
                }
                out.push((std::borrow::Cow::Owned(sql), a));
            }
        }

        fn complete_job_sql(id: i64, owner: &str) -> $crate::sql_impl::Stmt<'_> {
            ("DELETE FROM jobs WHERE id = $1 AND lease_owner = $2 AND state = 'queued'".into(),
             $crate::direct::args![id, owner].to_vec())
        }

        fn delete_secret_sql(id: &str) -> $crate::sql_impl::Stmt<'_> {
            ("DELETE FROM secrets WHERE id = $1".into(), $crate::direct::args![id].to_vec())
        }

        /// A device row with its group and its holder (`device_group_holder_select`).
        struct DeviceGroupHolder($crate::DeviceRow, Option<$crate::DeviceGroupRow>, Option<$crate::DeviceUserRow>);
        impl $crate::direct::FromCols for DeviceGroupHolder {
            fn from_cols<R: $crate::direct::Cols>(row: &R) -> Result<Self, sqlx::Error> {
                use $crate::direct::Prefixed;
                let group_id: Option<String> = row.col("g_id")?;
                let holder_id: Option<String> = row.col("u_id")?;
                Ok(DeviceGroupHolder(
                    $crate::DeviceRow::from_cols(row)?,
                    group_id.map(|_| $crate::DeviceGroupRow::from_cols(&Prefixed { row, prefix: "g_" })).transpose()?,
                    holder_id.map(|_| $crate::DeviceUserRow::from_cols(&Prefixed { row, prefix: "u_" })).transpose()?,
                ))
            }
        }

        /// Devices (`d`) with their group (`g`) and holder (`u`), up to the `WHERE`.
        fn device_group_holder_select() -> String {
            use $crate::sql_impl::joined_cols;
            format!("SELECT {}, {}, {} FROM devices d LEFT JOIN device_groups g ON g.id = d.group_id \
                     LEFT JOIN device_users u ON u.id = d.holder_id",
                    joined_cols(DEVICE_COLS, "d", ""), joined_cols(GROUP_COLS, "g", "g_"), joined_cols(DEVICE_USER_COLS, "u", "u_"))
        }

        fn collect<T>(rows: Vec<DbRow>, f: impl Fn(&DbRow) -> Result<T, sqlx::Error>) -> Result<Vec<T>, $crate::StoreError> {
            rows.iter().map(|r| f(r).map_err($crate::StoreError::from)).collect()
        }

        #[async_trait::async_trait]
        impl $crate::Tx for $tx {
            fn row_locks(&self) -> bool {
                !$for_update.is_empty()
            }

            async fn write_all(&mut self, writes: &[$crate::Write]) -> Result<(), $crate::StoreError> {
                if writes.iter().any(|w| matches!(w, $crate::Write::EnqueueJobs(j) if !j.is_empty())) {
                    self.mark_enqueued();
                }
                if !$writes_in_with {
                    let mut stmts = Vec::new();
                    for w in writes {
                        write_statements(w, &mut stmts);
                    }
                    return self.run_all(&stmts).await.map(drop);
                }
                // Runs of writes that touch no row twice, one statement each; the audit entries
                // appended so far go with the last.
                if writes.is_empty() {
                    return self.send_with_audit(Vec::new()).await;
                }
                let mut start = 0;
                while start < writes.len() {
                    let mut end = start + 1;
                    while end < writes.len() && !writes[start..end].iter().any(|w| w.same_row(&writes[end])) {
                        end += 1;
                    }
                    let mut stmts = Vec::new();
                    for w in &writes[start..end] {
                        write_statements(w, &mut stmts);
                    }
                    start = end;
                    if start == writes.len() {
                        self.send_with_audit(stmts).await?;
                    } else if !stmts.is_empty() {
                        // (Inserts of no rows are no statement.)
                        let (sql, a) = $crate::sql_impl::combine(&stmts);
                        self.run(&sql, &a).await?;
                    }
                }
                Ok(())
            }

            async fn commit(mut self: Box<Self>) -> Result<(), $crate::StoreError> {
                self.send_with_audit(Vec::new()).await?;
                let mut this = *self;
                let audit = this.audit.take();
                this.inner.commit().await?;
                if let Some($crate::sql_impl::AuditState { mut lease, locked: Some(head), .. }) = audit {
                    lease.remember(head);
                }
                if this.enqueued {
                    this.signal.notify_waiters();
                    if let Some(announce) = &this.announce {
                        announce.notify_one();
                    }
                }
                Ok(())
            }

            async fn insert_user(&mut self, u: &$crate::UserRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO users (id, username, display_name, role, password_hash, disabled, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&u.id).bind(&u.username).bind(&u.display_name).bind(&u.role)
                .bind(&u.password_hash).bind(u.disabled).bind(u.created_at).bind(u.updated_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn update_user(&mut self, u: &$crate::UserRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE users SET display_name = $2, role = $3, password_hash = $4, disabled = $5, updated_at = $6 WHERE id = $1",
                )
                .bind(&u.id).bind(&u.display_name).bind(&u.role).bind(&u.password_hash)
                .bind(u.disabled).bind(u.updated_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn get_user(&mut self, id: &str) -> Result<Option<$crate::UserRow>, $crate::StoreError> {
                let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *self.inner)
                    .await?;
                Ok(row.as_ref().map(|r| user_from(r, "")).transpose()?)
            }

            async fn get_user_by_username(&mut self, username: &str) -> Result<Option<$crate::UserRow>, $crate::StoreError> {
                let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE username = $1"))
                    .bind(username)
                    .fetch_optional(&mut *self.inner)
                    .await?;
                Ok(row.as_ref().map(|r| user_from(r, "")).transpose()?)
            }

            async fn list_users(&mut self) -> Result<Vec<$crate::UserRow>, $crate::StoreError> {
                let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY username"))
                    .fetch_all(&mut *self.inner)
                    .await?;
                collect(rows, |r| user_from(r, ""))
            }

            async fn count_admins(&mut self) -> Result<i64, $crate::StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled = $1")
                    .bind(false)
                    .fetch_one(&mut *self.inner)
                    .await?;
                Ok(row.try_get("n")?)
            }

            async fn insert_token(&mut self, t: &$crate::TokenRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO api_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                    .bind(&t.id).bind(&t.user_id).bind(&t.name).bind(&t.digest).bind(&t.prefix)
                    .bind(&t.role).bind(t.created_at).bind(t.expires_at).bind(t.last_used_at).bind(t.revoked_at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn get_token(&mut self, id: &str) -> Result<Option<$crate::TokenRow>, $crate::StoreError> {
                let row = sqlx::query(&format!("SELECT {TOKEN_COLS} FROM api_tokens WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *self.inner)
                    .await?;
                Ok(row.as_ref().map(token_from).transpose()?)
            }

            async fn list_tokens(&mut self, user_id: Option<&str>) -> Result<Vec<$crate::TokenRow>, $crate::StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {TOKEN_COLS} FROM api_tokens WHERE ($1 IS NULL OR user_id = $1) ORDER BY created_at DESC, id"
                ))
                .bind(user_id)
                .fetch_all(&mut *self.inner)
                .await?;
                collect(rows, token_from)
            }

            async fn find_token_by_digest(&mut self, digest: &[u8]) -> Result<Option<($crate::TokenRow, $crate::UserRow)>, $crate::StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT t.id, t.user_id, t.name, t.digest, t.prefix, t.role, t.created_at, t.expires_at, t.last_used_at, t.revoked_at, \
                     {USER_AS_U} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.digest = $1"
                ))
                .bind(digest)
                .fetch_optional(&mut *self.inner)
                .await?;
                match row {
                    Some(r) => Ok(Some((token_from(&r)?, user_from(&r, "u_")?))),
                    None => Ok(None),
                }
            }

            async fn revoke_token(&mut self, id: &str, at: i64) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id).bind(at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn revoke_tokens_of_user(&mut self, user_id: &str, at: i64) -> Result<u64, $crate::StoreError> {
                let r = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                    .bind(user_id).bind(at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(r.rows_affected())
            }

            async fn touch_token(&mut self, id: &str, at: i64) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                    .bind(id).bind(at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn insert_session(&mut self, s: &$crate::SessionRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "INSERT INTO sessions (id, digest, user_id, csrf, role, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&s.id).bind(&s.digest).bind(&s.user_id).bind(&s.csrf)
                .bind(&s.role)
                .bind(s.created_at).bind(s.expires_at).bind(s.revoked_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn find_session_by_digest(&mut self, digest: &[u8]) -> Result<Option<($crate::SessionRow, $crate::UserRow)>, $crate::StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT s.id, s.digest, s.user_id, s.csrf, s.role, s.created_at, s.expires_at, s.revoked_at, \
                     {USER_AS_U} FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.digest = $1"
                ))
                .bind(digest)
                .fetch_optional(&mut *self.inner)
                .await?;
                match row {
                    Some(r) => Ok(Some((session_from(&r)?, user_from(&r, "u_")?))),
                    None => Ok(None),
                }
            }

            async fn revoke_session(&mut self, id: &str, at: i64) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id).bind(at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn revoke_sessions_of_user(&mut self, user_id: &str, at: i64) -> Result<u64, $crate::StoreError> {
                let r = sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                    .bind(user_id).bind(at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(r.rows_affected())
            }

            async fn delete_expired_sessions(&mut self, now: i64) -> Result<u64, $crate::StoreError> {
                let r = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                    .bind(now)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(r.rows_affected())
            }

            async fn put_secret(&mut self, s: &$crate::SecretRow) -> Result<(), $crate::StoreError> {
                self.run(
                    "INSERT INTO secrets (id, owner, purpose, key_id, nonce, ciphertext, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, \
                     ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                    &$crate::direct::args![&s.id, &s.owner, &s.purpose, &s.key_id, &s.nonce, &s.ciphertext, s.created_at, s.updated_at],
                ).await?;
                Ok(())
            }

            async fn get_secret(&mut self, id: &str) -> Result<Option<$crate::SecretRow>, $crate::StoreError> {
                self.first("SELECT id, owner, purpose, key_id, nonce, ciphertext, created_at, updated_at FROM secrets WHERE id = $1", &$crate::direct::args![id]).await
            }

            async fn list_secrets(&mut self) -> Result<Vec<$crate::SecretRow>, $crate::StoreError> {
                let rows = sqlx::query("SELECT id, owner, purpose, key_id, nonce, ciphertext, created_at, updated_at FROM secrets ORDER BY id")
                    .fetch_all(&mut *self.inner)
                    .await?;
                collect(rows, <$crate::SecretRow as $crate::direct::FromCols>::from_cols)
            }

            async fn delete_secret(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                let (sql, a) = delete_secret_sql(id);
                Ok(self.run(&sql, &a).await? == 1)
            }

            async fn append_audit(
                &mut self,
                event: &switchboard_domain::audit::AuditEvent,
                at_ms: i64,
            ) -> Result<(), $crate::StoreError> {
                if self.audit.is_none() {
                    self.audit = Some($crate::sql_impl::AuditState { lease: self.chains.take(), pending: Vec::new(), locked: None });
                }
                if let Some(a) = self.audit.as_mut() {
                    a.pending.push((event.clone(), at_ms));
                }
                // PostgreSQL sends the entry with the transaction's next writes (or before its
                // commit); SQLite, whose statements cost no round trip, writes it now.
                if !$writes_in_with {
                    self.send_audit_now().await?;
                }
                Ok(())
            }

            async fn list_audit(&mut self, f: &$crate::AuditFilter) -> Result<Vec<$crate::AuditRecord>, $crate::StoreError> {
                let (action_exact, action_prefix) = match f.action.as_deref() {
                    Some(a) if a.ends_with('.') => (None, Some(format!("{}%", a.replace('%', "\\%").replace('_', "\\_")))),
                    Some(a) => (Some(a.to_owned()), None),
                    None => (None, None),
                };
                let order = if f.oldest_first { "ASC" } else { "DESC" };
                let rows = sqlx::query(&format!(
                    "SELECT id, chain, seq, at, actor, action, target, details, request_id, hash FROM audit_log \
                     WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR action LIKE $3 ESCAPE '\\') \
                     AND ($4 IS NULL OR target = $4) AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at < $6) \
                     AND ($7 IS NULL OR id < $7) AND ($8 IS NULL OR id > $8) \
                     ORDER BY id {order} LIMIT $9"
                ))
                .bind(&f.actor).bind(action_exact).bind(action_prefix).bind(&f.target)
                .bind(f.from_ms).bind(f.to_ms).bind(f.before_id).bind(f.after_id).bind(f.limit)
                .fetch_all(&mut *self.inner)
                .await?;
                collect(rows, audit_from)
            }

            async fn audit_chain_page(&mut self, chain: i64, after_seq: i64, limit: i64) -> Result<Vec<switchboard_domain::audit::StoredEntry>, $crate::StoreError> {
                let rows = sqlx::query(
                    "SELECT id, chain, seq, at, actor, action, target, details, request_id, prev_hash, hash FROM audit_log \
                     WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(chain).bind(after_seq).bind(limit)
                .fetch_all(&mut *self.inner)
                .await?;
                collect(rows, stored_entry_from)
            }

            async fn audit_heads(&mut self) -> Result<Vec<$crate::AuditHead>, $crate::StoreError> {
                use sqlx::Row;
                let rows = sqlx::query("SELECT chain, seq, hash FROM audit_heads ORDER BY chain")
                    .fetch_all(&mut *self.inner)
                    .await?;
                collect(rows, |r| {
                    Ok($crate::AuditHead { chain: r.try_get("chain")?, seq: r.try_get("seq")?, hash: r.try_get("hash")? })
                })
            }

            async fn insert_key_set(&mut self, k: &$crate::KeySetRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO key_sets ({KEY_SET_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
                    .bind(&k.id).bind(&k.owner).bind(&k.alg).bind(k.publish_delay_secs)
                    .bind(k.rotate_every_days).bind(k.next_rotation_at).bind(k.created_at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn get_key_set(&mut self, id: &str) -> Result<Option<$crate::KeySetRow>, $crate::StoreError> {
                let row = sqlx::query(&format!("SELECT {KEY_SET_COLS} FROM key_sets WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *self.inner)
                    .await?;
                Ok(row.as_ref().map(key_set_from).transpose()?)
            }

            async fn update_key_set(&mut self, k: &$crate::KeySetRow) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE key_sets SET publish_delay_secs = $2, rotate_every_days = $3, next_rotation_at = $4 WHERE id = $1")
                    .bind(&k.id).bind(k.publish_delay_secs).bind(k.rotate_every_days).bind(k.next_rotation_at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn due_key_sets(&mut self, now: i64) -> Result<Vec<$crate::KeySetRow>, $crate::StoreError> {
                let rows = sqlx::query(&format!("SELECT {KEY_SET_COLS} FROM key_sets WHERE next_rotation_at IS NOT NULL AND next_rotation_at <= $1 ORDER BY id"))
                    .bind(now)
                    .fetch_all(&mut *self.inner)
                    .await?;
                collect(rows, key_set_from)
            }

            async fn insert_signing_key(&mut self, k: &$crate::SigningKeyRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO signing_keys ({SIGNING_KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
                    .bind(&k.kid).bind(&k.key_set_id).bind(&k.alg).bind(&k.public_jwk).bind(&k.private_secret).bind(&k.state)
                    .bind(k.created_at).bind(k.activate_after).bind(k.activated_at).bind(k.retiring_at).bind(k.retired_at).bind(k.last_used_at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn update_signing_key(&mut self, k: &$crate::SigningKeyRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE signing_keys SET state = $2, activate_after = $3, activated_at = $4, retiring_at = $5, retired_at = $6, last_used_at = $7 WHERE kid = $1",
                )
                .bind(&k.kid).bind(&k.state).bind(k.activate_after).bind(k.activated_at).bind(k.retiring_at).bind(k.retired_at).bind(k.last_used_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn signing_keys(&mut self, key_set_id: &str) -> Result<Vec<$crate::SigningKeyRow>, $crate::StoreError> {
                let rows = sqlx::query(&format!("SELECT {SIGNING_KEY_COLS} FROM signing_keys WHERE key_set_id = $1 ORDER BY created_at DESC, kid"))
                    .bind(key_set_id)
                    .fetch_all(&mut *self.inner)
                    .await?;
                collect(rows, signing_key_from)
            }

            async fn touch_signing_key(&mut self, kid: &str, at: i64) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE signing_keys SET last_used_at = $2 WHERE kid = $1")
                    .bind(kid).bind(at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn insert_environment(&mut self, e: &$crate::EnvironmentRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO epic_environments ({ENV_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"))
                    .bind(&e.id).bind(&e.name).bind(&e.kind).bind(&e.interconnect_url).bind(&e.instance).bind(&e.token_url_override)
                    .bind(&e.client_id).bind(&e.apps).bind(&e.basic_username).bind(&e.basic_password_ref).bind(&e.epic_client_id)
                    .bind(e.timeout_ms).bind(e.rate_limit_per_sec).bind(&e.ca_bundle).bind(&e.key_set_id).bind(e.created_at).bind(e.updated_at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn update_environment(&mut self, e: &$crate::EnvironmentRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE epic_environments SET name = $2, kind = $3, interconnect_url = $4, instance = $5, token_url_override = $6, \
                     client_id = $7, apps = $8, basic_username = $9, basic_password_ref = $10, epic_client_id = $11, timeout_ms = $12, \
                     rate_limit_per_sec = $13, ca_bundle = $14, updated_at = $15 WHERE id = $1",
                )
                .bind(&e.id).bind(&e.name).bind(&e.kind).bind(&e.interconnect_url).bind(&e.instance).bind(&e.token_url_override)
                .bind(&e.client_id).bind(&e.apps).bind(&e.basic_username).bind(&e.basic_password_ref).bind(&e.epic_client_id)
                .bind(e.timeout_ms).bind(e.rate_limit_per_sec).bind(&e.ca_bundle).bind(e.updated_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn get_environment(&mut self, id: &str) -> Result<Option<$crate::EnvironmentRow>, $crate::StoreError> {
                let row = sqlx::query(&format!("SELECT {ENV_COLS} FROM epic_environments WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *self.inner)
                    .await?;
                Ok(row.as_ref().map(environment_from).transpose()?)
            }

            async fn list_environments(&mut self) -> Result<Vec<$crate::EnvironmentRow>, $crate::StoreError> {
                let rows = sqlx::query(&format!("SELECT {ENV_COLS} FROM epic_environments ORDER BY kind DESC, name"))
                    .fetch_all(&mut *self.inner)
                    .await?;
                collect(rows, environment_from)
            }

            async fn delete_environment(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("DELETE FROM epic_environments WHERE id = $1").bind(id).execute(&mut *self.inner).await?;
                Ok(r.rows_affected() == 1)
            }

            async fn insert_connection_check(&mut self, c: &$crate::ConnectionCheckRow) -> Result<(), $crate::StoreError> {
                sqlx::query("INSERT INTO connection_checks (id, environment_id, kind, at, ok, steps) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(&c.id).bind(&c.environment_id).bind(&c.kind).bind(c.at).bind(c.ok).bind(&c.steps)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn latest_connection_check(&mut self, environment_id: &str, kind: &str) -> Result<Option<$crate::ConnectionCheckRow>, $crate::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT id, environment_id, kind, at, ok, steps FROM connection_checks WHERE environment_id = $1 AND kind = $2 ORDER BY at DESC, id DESC LIMIT 1",
                )
                .bind(environment_id).bind(kind)
                .fetch_optional(&mut *self.inner)
                .await?;
                match row {
                    Some(r) => Ok(Some($crate::ConnectionCheckRow {
                        id: r.try_get("id")?,
                        environment_id: r.try_get("environment_id")?,
                        kind: r.try_get("kind")?,
                        at: r.try_get("at")?,
                        ok: r.try_get("ok")?,
                        steps: r.try_get("steps")?,
                    })),
                    None => Ok(None),
                }
            }

            async fn insert_telehealth_profile(&mut self, p: &$crate::TelehealthProfileRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO telehealth_profiles ({TH_PROFILE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"))
                    .bind(&p.id).bind(&p.name).bind(&p.environment_id).bind(&p.encryption).bind(&p.key_ref).bind(&p.iv_mode)
                    .bind(&p.launch_param).bind(&p.field_map).bind(&p.clients).bind(p.link_validity_secs).bind(&p.video)
                    .bind(&p.status_codes).bind(&p.vendor_name).bind(p.created_at).bind(p.updated_at)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(())
            }

            async fn update_telehealth_profile(&mut self, p: &$crate::TelehealthProfileRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE telehealth_profiles SET name = $2, environment_id = $3, encryption = $4, key_ref = $5, iv_mode = $6, \
                     launch_param = $7, field_map = $8, clients = $9, link_validity_secs = $10, video = $11, status_codes = $12, \
                     vendor_name = $13, updated_at = $14 WHERE id = $1",
                )
                .bind(&p.id).bind(&p.name).bind(&p.environment_id).bind(&p.encryption).bind(&p.key_ref).bind(&p.iv_mode)
                .bind(&p.launch_param).bind(&p.field_map).bind(&p.clients).bind(p.link_validity_secs).bind(&p.video)
                .bind(&p.status_codes).bind(&p.vendor_name).bind(p.updated_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn get_telehealth_profile(&mut self, id: &str) -> Result<Option<$crate::TelehealthProfileRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {TH_PROFILE_COLS} FROM telehealth_profiles WHERE id = $1"))
                    .bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_telehealth_profiles(&mut self) -> Result<Vec<$crate::TelehealthProfileRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {TH_PROFILE_COLS} FROM telehealth_profiles ORDER BY name"))
                    .fetch_all(&mut *self.inner).await?)
            }

            async fn delete_telehealth_profile(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("DELETE FROM telehealth_profiles WHERE id = $1").bind(id).execute(&mut *self.inner).await?;
                Ok(r.rows_affected() == 1)
            }

            async fn use_telehealth_launch(&mut self, digest: &str, profile_id: &str, now: i64, expires_at: i64) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("INSERT INTO telehealth_launches (digest, profile_id, used_at, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING")
                    .bind(digest).bind(profile_id).bind(now).bind(expires_at)
                    .execute(&mut *self.inner).await?;
                Ok(r.rows_affected() == 1)
            }

            async fn insert_telehealth_state(&mut self, s: &$crate::TelehealthStateRow) -> Result<(), $crate::StoreError> {
                sqlx::query("INSERT INTO telehealth_states (digest, profile_id, role, secret_ref, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(&s.digest).bind(&s.profile_id).bind(&s.role).bind(&s.secret_ref).bind(s.created_at).bind(s.expires_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn take_telehealth_state(&mut self, digest: &str) -> Result<Option<$crate::TelehealthStateRow>, $crate::StoreError> {
                Ok(sqlx::query_as("DELETE FROM telehealth_states WHERE digest = $1 RETURNING digest, profile_id, role, secret_ref, created_at, expires_at")
                    .bind(digest).fetch_optional(&mut *self.inner).await?)
            }

            async fn purge_telehealth_launches(&mut self, now: i64) -> Result<Vec<String>, $crate::StoreError> {
                sqlx::query("DELETE FROM telehealth_launches WHERE expires_at < $1").bind(now).execute(&mut *self.inner).await?;
                let refs: Vec<(String,)> = sqlx::query_as("DELETE FROM telehealth_states WHERE expires_at < $1 RETURNING secret_ref")
                    .bind(now).fetch_all(&mut *self.inner).await?;
                Ok(refs.into_iter().map(|r| r.0).collect())
            }

            async fn insert_or_get_active_conference(&mut self, c: &$crate::ConferenceRow) -> Result<$crate::ConferenceRow, $crate::StoreError> {
                sqlx::query(&format!(
                    "INSERT INTO conferences ({CONFERENCE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                     ON CONFLICT (profile_id, appointment_id) WHERE state = 'active' DO NOTHING"
                ))
                .bind(&c.id).bind(&c.profile_id).bind(&c.profile_name).bind(&c.environment_id).bind(&c.appointment_id)
                .bind(&c.csn).bind(&c.name).bind(&c.patient_name).bind(&c.department).bind(&c.room).bind(&c.state)
                .bind(c.started_at).bind(c.ended_at).bind(&c.ended_reason).bind(c.epic_connected_at).bind(c.epic_ended_at)
                .execute(&mut *self.inner)
                .await?;
                Ok(sqlx::query_as(&format!(
                    "SELECT {CONFERENCE_COLS} FROM conferences WHERE profile_id = $1 AND appointment_id = $2 AND state = 'active'"
                ))
                .bind(&c.profile_id).bind(&c.appointment_id)
                .fetch_one(&mut *self.inner)
                .await?)
            }

            async fn get_conference(&mut self, id: &str) -> Result<Option<$crate::ConferenceRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {CONFERENCE_COLS} FROM conferences WHERE id = $1"))
                    .bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn end_conference(&mut self, id: &str, at: i64, reason: &str) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("UPDATE conferences SET state = 'ended', ended_at = $2, ended_reason = $3 WHERE id = $1 AND state = 'active'")
                    .bind(id).bind(at).bind(reason).execute(&mut *self.inner).await?;
                Ok(r.rows_affected() == 1)
            }

            async fn mark_conference_reported(&mut self, id: &str, status: &str, at: i64) -> Result<(), $crate::StoreError> {
                let column = if status == "connected" { "epic_connected_at" } else { "epic_ended_at" };
                sqlx::query(&format!("UPDATE conferences SET {column} = $2 WHERE id = $1"))
                    .bind(id).bind(at).execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn list_conferences(&mut self, f: &$crate::ConferenceFilter) -> Result<Vec<$crate::ConferenceRow>, $crate::StoreError> {
                let mut sql = format!("SELECT {CONFERENCE_COLS} FROM conferences WHERE 1 = 1");
                let mut n = 0;
                let mut next = || { n += 1; n };
                if f.state.is_some() { sql.push_str(&format!(" AND state = ${}", next())); }
                if f.profile_id.is_some() { sql.push_str(&format!(" AND profile_id = ${}", next())); }
                let pattern = f.search.as_deref().filter(|s| !s.is_empty()).map(|s| {
                    format!("%{}%", s.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
                });
                if pattern.is_some() {
                    let p = next();
                    if f.search_patient_names {
                        sql.push_str(&format!(" AND LOWER(name) LIKE ${p} ESCAPE '\\'"));
                    } else {
                        sql.push_str(&format!(
                            " AND (LOWER(appointment_id) LIKE ${p} ESCAPE '\\' OR LOWER(profile_name) LIKE ${p} ESCAPE '\\' \
                             OR LOWER(COALESCE(department, '')) LIKE ${p} ESCAPE '\\')"
                        ));
                    }
                }
                if f.before.is_some() {
                    let (a, b) = (next(), next());
                    sql.push_str(&format!(" AND (started_at < ${a} OR (started_at = ${a} AND id < ${b}))"));
                }
                let l = next();
                sql.push_str(&format!(" ORDER BY started_at DESC, id DESC LIMIT ${l}"));
                let mut q = sqlx::query_as::<_, $crate::ConferenceRow>(&sql);
                if let Some(s) = &f.state { q = q.bind(s); }
                if let Some(p) = &f.profile_id { q = q.bind(p); }
                if let Some(p) = pattern { q = q.bind(p); }
                if let Some((at, id)) = &f.before { q = q.bind(*at).bind(id); }
                Ok(q.bind(f.limit).fetch_all(&mut *self.inner).await?)
            }

            async fn count_active_conferences(&mut self, profile_id: &str) -> Result<i64, $crate::StoreError> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM conferences WHERE profile_id = $1 AND state = 'active'")
                    .bind(profile_id).fetch_one(&mut *self.inner).await?;
                Ok(n)
            }

            async fn purge_conferences(&mut self, before: i64) -> Result<(u64, Vec<String>), $crate::StoreError> {
                let refs: Vec<(Option<String>,)> = sqlx::query_as(
                    "DELETE FROM conference_participants WHERE conference_id IN \
                     (SELECT id FROM conferences WHERE state = 'ended' AND ended_at < $1) RETURNING token_ref",
                )
                .bind(before).fetch_all(&mut *self.inner).await?;
                let r = sqlx::query("DELETE FROM conferences WHERE state = 'ended' AND ended_at < $1")
                    .bind(before).execute(&mut *self.inner).await?;
                Ok((r.rows_affected(), refs.into_iter().filter_map(|r| r.0).collect()))
            }

            async fn insert_participant(&mut self, p: &$crate::ParticipantRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!(
                    "INSERT INTO conference_participants ({PARTICIPANT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(&p.id).bind(&p.conference_id).bind(&p.role).bind(&p.display_name).bind(&p.epic_user).bind(&p.state)
                .bind(&p.session_digest).bind(&p.client_id).bind(p.arrived_at).bind(p.joined_at).bind(p.left_at)
                .bind(&p.token_ref).bind(p.token_issued_at).bind(p.token_expires_at).bind(p.token_renewals).bind(&p.token_error)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn update_participant(&mut self, p: &$crate::ParticipantRow) -> Result<(), $crate::StoreError> {
                sqlx::query(
                    "UPDATE conference_participants SET state = $2, joined_at = $3, left_at = $4, token_ref = $5, \
                     token_issued_at = $6, token_expires_at = $7, token_renewals = $8, token_error = $9 WHERE id = $1",
                )
                .bind(&p.id).bind(&p.state).bind(p.joined_at).bind(p.left_at).bind(&p.token_ref)
                .bind(p.token_issued_at).bind(p.token_expires_at).bind(p.token_renewals).bind(&p.token_error)
                .execute(&mut *self.inner)
                .await?;
                Ok(())
            }

            async fn get_participant(&mut self, id: &str) -> Result<Option<$crate::ParticipantRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {PARTICIPANT_COLS} FROM conference_participants WHERE id = $1"))
                    .bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn participants(&mut self, conference_id: &str) -> Result<Vec<$crate::ParticipantRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {PARTICIPANT_COLS} FROM conference_participants WHERE conference_id = $1 ORDER BY arrived_at, id"
                ))
                .bind(conference_id).fetch_all(&mut *self.inner).await?)
            }

            async fn insert_adapter(&mut self, a: &$crate::AdapterRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO data_adapters ({ADAPTER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                    .bind(&a.id).bind(&a.name).bind(&a.kind).bind(&a.environment_id).bind(&a.settings)
                    .bind(&a.external_client_id).bind(&a.external_secret_ref).bind(&a.external_api_endpoint).bind(a.created_at).bind(a.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn update_adapter(&mut self, a: &$crate::AdapterRow) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE data_adapters SET name = $2, kind = $3, environment_id = $4, settings = $5, external_client_id = $6, \
                             external_secret_ref = $7, external_api_endpoint = $8, updated_at = $9 WHERE id = $1")
                    .bind(&a.id).bind(&a.name).bind(&a.kind).bind(&a.environment_id).bind(&a.settings)
                    .bind(&a.external_client_id).bind(&a.external_secret_ref).bind(&a.external_api_endpoint).bind(a.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_adapter(&mut self, id: &str) -> Result<Option<$crate::AdapterRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ADAPTER_COLS} FROM data_adapters WHERE id = $1")).bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_adapters(&mut self) -> Result<Vec<$crate::AdapterRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ADAPTER_COLS} FROM data_adapters ORDER BY name")).fetch_all(&mut *self.inner).await?)
            }

            async fn delete_adapter(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM data_adapters WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() == 1)
            }

            async fn insert_gateway(&mut self, g: &$crate::GatewayRow) -> Result<(), $crate::StoreError> {
                sqlx::query("INSERT INTO gateways (id, name, adapter_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&g.id).bind(&g.name).bind(&g.adapter_id).bind(g.created_at).bind(g.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn update_gateway(&mut self, g: &$crate::GatewayRow) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE gateways SET name = $2, adapter_id = $3, updated_at = $4 WHERE id = $1")
                    .bind(&g.id).bind(&g.name).bind(&g.adapter_id).bind(g.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_gateway(&mut self, id_or_name: &str) -> Result<Option<$crate::GatewayRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, name, adapter_id, created_at, updated_at FROM gateways WHERE id = $1 OR name = $1")
                    .bind(id_or_name).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_gateways(&mut self) -> Result<Vec<$crate::GatewayRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, name, adapter_id, created_at, updated_at FROM gateways ORDER BY name").fetch_all(&mut *self.inner).await?)
            }

            async fn delete_gateway(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM gateways WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() == 1)
            }

            async fn insert_gateway_app(&mut self, a: &$crate::GatewayAppRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO gateway_apps ({APP_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"))
                    .bind(&a.id).bind(&a.name).bind(&a.client_id).bind(&a.secret_digest).bind(&a.previous_secret_digest).bind(a.previous_valid_until)
                    .bind(&a.launch_uri).bind(&a.scopes).bind(a.token_ttl_secs).bind(a.rate_limit_per_sec).bind(&a.jwks_url)
                    .bind(a.tokens_not_before).bind(a.disabled).bind(a.created_at).bind(a.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn update_gateway_app(&mut self, a: &$crate::GatewayAppRow) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE gateway_apps SET name = $2, secret_digest = $3, previous_secret_digest = $4, previous_valid_until = $5, \
                             launch_uri = $6, scopes = $7, token_ttl_secs = $8, rate_limit_per_sec = $9, jwks_url = $10, tokens_not_before = $11, \
                             disabled = $12, updated_at = $13 WHERE id = $1")
                    .bind(&a.id).bind(&a.name).bind(&a.secret_digest).bind(&a.previous_secret_digest).bind(a.previous_valid_until)
                    .bind(&a.launch_uri).bind(&a.scopes).bind(a.token_ttl_secs).bind(a.rate_limit_per_sec).bind(&a.jwks_url)
                    .bind(a.tokens_not_before).bind(a.disabled).bind(a.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_gateway_app(&mut self, id: &str) -> Result<Option<$crate::GatewayAppRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {APP_COLS} FROM gateway_apps WHERE id = $1")).bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn get_gateway_app_by_client_id(&mut self, client_id: &str) -> Result<Option<$crate::GatewayAppRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {APP_COLS} FROM gateway_apps WHERE client_id = $1")).bind(client_id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_gateway_apps(&mut self) -> Result<Vec<$crate::GatewayAppRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {APP_COLS} FROM gateway_apps ORDER BY name, id")).fetch_all(&mut *self.inner).await?)
            }

            async fn delete_gateway_app(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM gateway_apps WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() == 1)
            }

            async fn insert_activation(&mut self, a: &$crate::ActivationRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO activations ({ACTIVATION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                    .bind(&a.id).bind(&a.app_id).bind(&a.gateway_id).bind(&a.ehr_auth).bind(&a.epic_client_id).bind(&a.epic_app_name)
                    .bind(&a.key_set_id).bind(&a.token_url).bind(a.created_at).bind(a.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn update_activation(&mut self, a: &$crate::ActivationRow) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE activations SET ehr_auth = $2, epic_client_id = $3, epic_app_name = $4, key_set_id = $5, token_url = $6, updated_at = $7 WHERE id = $1")
                    .bind(&a.id).bind(&a.ehr_auth).bind(&a.epic_client_id).bind(&a.epic_app_name).bind(&a.key_set_id).bind(&a.token_url).bind(a.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_activation(&mut self, id: &str) -> Result<Option<$crate::ActivationRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ACTIVATION_COLS} FROM activations WHERE id = $1")).bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn find_activation(&mut self, app_id: &str, gateway_id: &str) -> Result<Option<$crate::ActivationRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ACTIVATION_COLS} FROM activations WHERE app_id = $1 AND gateway_id = $2"))
                    .bind(app_id).bind(gateway_id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_activations(&mut self) -> Result<Vec<$crate::ActivationRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ACTIVATION_COLS} FROM activations ORDER BY created_at, id")).fetch_all(&mut *self.inner).await?)
            }

            async fn delete_activation(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM activations WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() == 1)
            }

            async fn revoke_token_id(&mut self, jti: &str, app_id: &str, at: i64, expires_at: i64) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("INSERT INTO token_revocations (jti, app_id, revoked_at, expires_at) VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING")
                    .bind(jti).bind(app_id).bind(at).bind(expires_at)
                    .execute(&mut *self.inner).await?.rows_affected() == 1)
            }

            async fn revocations_since(&mut self, since: i64, now: i64) -> Result<Vec<(String, i64)>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT jti, revoked_at FROM token_revocations WHERE revoked_at >= $1 AND expires_at > $2")
                    .bind(since).bind(now).fetch_all(&mut *self.inner).await?)
            }

            async fn insert_gateway_request_batch(&mut self, b: &$crate::access_log::AccessBatch) -> Result<i64, $crate::StoreError> {
                Ok(sqlx::query_scalar("INSERT INTO gateway_request_batches (first_at, last_at, count, gateways, apps, lines) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
                    .bind(b.first_at).bind(b.last_at).bind(b.count).bind(b.gateways.as_str()).bind(b.apps.as_str()).bind(b.lines.as_str())
                    .fetch_one(&mut *self.inner).await?)
            }

            async fn gateway_request_batch_lines(&mut self, id: i64) -> Result<Option<String>, $crate::StoreError> {
                Ok(sqlx::query_scalar("SELECT lines FROM gateway_request_batches WHERE id = $1").bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_gateway_requests(&mut self, gateway_id: Option<&str>, app_id: Option<&str>, before: Option<i64>, limit: i64) -> Result<Vec<$crate::GatewayRequestRow>, $crate::StoreError> {
                // Batches newest first until the page is full: one, then twice as many each
                // round (a busy second's batch fills a page alone; quiet ones hold a few records).
                // The spaced id lists skip batches without the gateway or app (a LIKE match may
                // be loose; the records are checked one by one).
                let mut page_size: i64 = 1;
                let limit = usize::try_from(limit.max(0)).unwrap_or(0);
                let gateway_like = gateway_id.map(|g| format!("% {g} %"));
                let app_like = app_id.map(|a| format!("% {a} %"));
                let mut upto = before.map(|b| (b - 1).div_euclid($crate::access_log::SEQ_PER_BATCH));
                let mut out = Vec::new();
                while out.len() < limit {
                    let page: Vec<(i64, String)> = sqlx::query_as(
                        "SELECT id, lines FROM gateway_request_batches WHERE ($1 IS NULL OR gateways LIKE $1) AND ($2 IS NULL OR apps LIKE $2) \
                         AND ($3 IS NULL OR id <= $3) ORDER BY id DESC LIMIT $4",
                    )
                    .bind(gateway_like.as_deref()).bind(app_like.as_deref()).bind(upto).bind(page_size)
                    .fetch_all(&mut *self.inner).await?;
                    for (id, lines) in &page {
                        $crate::access_log::newest_first(*id, lines, gateway_id, app_id, before, limit, &mut out);
                    }
                    match page.last() {
                        Some((id, _)) if i64::try_from(page.len()).unwrap_or(0) == page_size => upto = Some(id - 1),
                        _ => break,
                    }
                    page_size = (page_size * 2).min(64);
                }
                Ok(out)
            }

            // --- shared devices

            async fn put_location(&mut self, l: &$crate::LocationRow) -> Result<(), $crate::StoreError> {
                sqlx::query("INSERT INTO locations (id, name, kiosk_key_digest, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
                             ON CONFLICT (id) DO UPDATE SET name = excluded.name, kiosk_key_digest = excluded.kiosk_key_digest, updated_at = excluded.updated_at")
                    .bind(&l.id).bind(&l.name).bind(&l.kiosk_key_digest).bind(l.created_at).bind(l.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_location(&mut self, id: &str) -> Result<Option<$crate::LocationRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, name, kiosk_key_digest, created_at, updated_at FROM locations WHERE id = $1").bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_locations(&mut self) -> Result<Vec<$crate::LocationRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, name, kiosk_key_digest, created_at, updated_at FROM locations ORDER BY name, id").fetch_all(&mut *self.inner).await?)
            }

            async fn delete_location(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM locations WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() > 0)
            }

            async fn put_device_group(&mut self, g: &$crate::DeviceGroupRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO device_groups ({GROUP_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                             ON CONFLICT (id) DO UPDATE SET name = excluded.name, lending_minutes = excluded.lending_minutes, workflows = excluded.workflows, \
                             required_apps = excluded.required_apps, checkin_on_dock = excluded.checkin_on_dock, updated_at = excluded.updated_at"))
                    .bind(&g.id).bind(&g.name).bind(g.lending_minutes).bind(&g.workflows).bind(&g.required_apps).bind(g.checkin_on_dock)
                    .bind(g.created_at).bind(g.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_device_group(&mut self, id: &str) -> Result<Option<$crate::DeviceGroupRow>, $crate::StoreError> {
                self.first(&format!("SELECT {GROUP_COLS} FROM device_groups WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1"), &$crate::direct::args![id]).await
            }

            async fn list_device_groups(&mut self) -> Result<Vec<$crate::DeviceGroupRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {GROUP_COLS} FROM device_groups ORDER BY name")).fetch_all(&mut *self.inner).await?)
            }

            async fn delete_device_group(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM device_groups WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() > 0)
            }

            async fn insert_enrolment_token(&mut self, t: &$crate::EnrolmentTokenRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO enrolment_tokens ({ENROL_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                    .bind(&t.id).bind(&t.name).bind(&t.digest).bind(&t.prefix).bind(&t.group_id).bind(&t.location_id)
                    .bind(t.created_at).bind(t.expires_at).bind(t.revoked_at).bind(t.uses)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn find_enrolment_token(&mut self, digest: &str) -> Result<Option<$crate::EnrolmentTokenRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ENROL_COLS} FROM enrolment_tokens WHERE digest = $1")).bind(digest).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_enrolment_tokens(&mut self) -> Result<Vec<$crate::EnrolmentTokenRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {ENROL_COLS} FROM enrolment_tokens ORDER BY created_at DESC")).fetch_all(&mut *self.inner).await?)
            }

            async fn revoke_enrolment_token(&mut self, id: &str, at: i64) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("UPDATE enrolment_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL").bind(id).bind(at).execute(&mut *self.inner).await?.rows_affected() > 0)
            }

            async fn count_enrolment_use(&mut self, id: &str) -> Result<(), $crate::StoreError> {
                sqlx::query("UPDATE enrolment_tokens SET uses = uses + 1 WHERE id = $1").bind(id).execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn insert_device(&mut self, d: &$crate::DeviceRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO devices ({DEVICE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)"))
                    .bind(&d.id).bind(&d.serial).bind(&d.uuid).bind(&d.platform).bind(&d.model).bind(&d.os_version).bind(&d.name).bind(&d.slot)
                    .bind(&d.group_id).bind(&d.location_id).bind(&d.credential_digest).bind(&d.status).bind(&d.holder_id).bind(&d.checkout_id)
                    .bind(d.pin_set).bind(d.battery).bind(d.charging).bind(d.docked).bind(&d.reported_location).bind(&d.apps).bind(&d.appconfig)
                    .bind(&d.readiness).bind(d.last_heartbeat_at).bind(d.enrolled_at).bind(d.revoked_at).bind(d.created_at).bind(d.updated_at)
                    .bind(d.lost_at).bind(&d.lost_reason)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn update_device(&mut self, d: &$crate::DeviceRow) -> Result<(), $crate::StoreError> {
                let (sql, a) = update_device_sql(d);
                self.run(&sql, &a).await.map(drop)
            }

            async fn get_device(&mut self, id_or_serial: &str) -> Result<Option<$crate::DeviceRow>, $crate::StoreError> {
                self.first(&format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1 OR serial = $1 ORDER BY id = $1 DESC LIMIT 1"), &$crate::direct::args![id_or_serial]).await
            }

            async fn find_device_by_credential(&mut self, digest: &str) -> Result<Option<$crate::DeviceRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {DEVICE_COLS} FROM devices WHERE credential_digest = $1")).bind(digest).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_devices(&mut self, f: &$crate::DeviceFilter) -> Result<Vec<$crate::DeviceRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {DEVICE_COLS} FROM devices WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR location_id = $2) \
                                            AND ($3 IS NULL OR platform = $3) AND ($4 IS NULL OR group_id = $4) ORDER BY name, serial LIMIT $5"))
                    .bind(&f.status).bind(&f.location_id).bind(&f.platform).bind(&f.group_id).bind(f.limit)
                    .fetch_all(&mut *self.inner).await?)
            }

            async fn lock_device(&mut self, id: &str) -> Result<Option<$crate::DeviceRow>, $crate::StoreError> {
                self.first(&format!("SELECT {DEVICE_COLS} FROM devices WHERE id = $1 OR serial = $1 {}", $for_update), &$crate::direct::args![id]).await
            }

            async fn lock_checkin(&mut self, id: &str)
                -> Result<Option<($crate::CheckinRow, Vec<$crate::CheckinStepRow>)>, $crate::StoreError> {
                use $crate::direct::{FromCols, Prefixed};
                struct Joined($crate::CheckinRow, $crate::CheckinStepRow);
                impl FromCols for Joined {
                    fn from_cols<R: $crate::direct::Cols>(row: &R) -> Result<Self, sqlx::Error> {
                        Ok(Joined(
                            $crate::CheckinRow::from_cols(row)?,
                            $crate::CheckinStepRow::from_cols(&Prefixed { row, prefix: "s_" })?,
                        ))
                    }
                }
                // Steps locked too: a lock that had to wait then reads their latest versions.
                static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                    use $crate::sql_impl::joined_cols;
                    format!("SELECT {}, {} FROM checkins c JOIN checkin_steps s ON s.checkin_id = c.id WHERE c.id = $1 {}",
                            joined_cols(CHECKIN_COLS, "c", ""), joined_cols(STEP_COLS, "s", "s_"),
                            if $for_update.is_empty() { "" } else { "FOR UPDATE OF c, s" })
                });
                let rows: Vec<Joined> = self.all(&SQL, &$crate::direct::args![id]).await?;
                let mut rows = rows.into_iter();
                let Some(Joined(checkin, first)) = rows.next() else {
                    return Ok(None);
                };
                let mut steps: Vec<$crate::CheckinStepRow> = std::iter::once(first).chain(rows.map(|Joined(_, s)| s)).collect();
                steps.sort_by_key(|s| s.position);
                Ok(Some((checkin, steps)))
            }

            async fn lock_device_with_group_and_holder(&mut self, id: &str)
                -> Result<Option<($crate::DeviceRow, Option<$crate::DeviceGroupRow>, Option<$crate::DeviceUserRow>)>, $crate::StoreError> {
                static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                    format!("{} WHERE d.id = $1 OR d.serial = $1 {}", device_group_holder_select(),
                            if $for_update.is_empty() { "" } else { "FOR UPDATE OF d" })
                });
                let row: Option<DeviceGroupHolder> = self.first(&SQL, &$crate::direct::args![id]).await?;
                Ok(row.map(|DeviceGroupHolder(d, g, u)| (d, g, u)))
            }

            async fn lock_devices_with_group_and_holder(&mut self, ids_or_serials: &[&str])
                -> Result<Vec<($crate::DeviceRow, Option<$crate::DeviceGroupRow>, Option<$crate::DeviceUserRow>)>, $crate::StoreError> {
                // The keys as one JSON array: one statement text for any number of them.
                static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                    format!("{} WHERE d.id {list} OR d.serial {list} ORDER BY d.id {}", device_group_holder_select(),
                            if $for_update.is_empty() { "" } else { "FOR UPDATE OF d" }, list = $in_json_list)
                });
                let keys = serde_json::to_string(ids_or_serials).map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?;
                let rows: Vec<DeviceGroupHolder> = self.all(&SQL, &$crate::direct::args![&keys]).await?;
                Ok(rows.into_iter().map(|DeviceGroupHolder(d, g, u)| (d, g, u)).collect())
            }

            async fn take_device(&mut self, id: &str, holder: &str, checkout_id: &str, pin_set: bool, now: i64) -> Result<bool, $crate::StoreError> {
                Ok(self.run("UPDATE devices SET status = 'checked_out', holder_id = $2, checkout_id = $3, pin_set = $4, updated_at = $5 \
                             WHERE id = $1 AND status = 'available' AND revoked_at IS NULL",
                    &$crate::direct::args![id, holder, checkout_id, pin_set, now]).await? == 1)
            }

            async fn put_device_user(&mut self, u: &$crate::DeviceUserRow) -> Result<(), $crate::StoreError> {
                sqlx::query(&format!("INSERT INTO device_users ({DEVICE_USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                             ON CONFLICT (id) DO UPDATE SET username = excluded.username, display_name = excluded.display_name, badge_digest = excluded.badge_digest, \
                             password_hash = excluded.password_hash, device_limit = excluded.device_limit, source = excluded.source, disabled = excluded.disabled, \
                             updated_at = excluded.updated_at"))
                    .bind(&u.id).bind(&u.username).bind(&u.display_name).bind(&u.badge_digest).bind(&u.password_hash).bind(u.device_limit)
                    .bind(&u.source).bind(u.disabled).bind(u.created_at).bind(u.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_device_user(&mut self, id_or_username: &str) -> Result<Option<$crate::DeviceUserRow>, $crate::StoreError> {
                self.first(&format!("SELECT {DEVICE_USER_COLS} FROM device_users WHERE id = $1 OR username = $1 ORDER BY id = $1 DESC LIMIT 1"), &$crate::direct::args![id_or_username]).await
            }

            async fn find_device_user_by_badge(&mut self, digest: &str) -> Result<Option<$crate::DeviceUserRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {DEVICE_USER_COLS} FROM device_users WHERE badge_digest = $1")).bind(digest).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_device_users(&mut self) -> Result<Vec<$crate::DeviceUserRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {DEVICE_USER_COLS} FROM device_users ORDER BY username")).fetch_all(&mut *self.inner).await?)
            }

            async fn lock_device_user(&mut self, id: &str) -> Result<(), $crate::StoreError> {
                if !self.row_locks() {
                    return Ok(());
                }
                sqlx::query(concat!("SELECT id FROM device_users WHERE id = $1 ", $for_update)).bind(id).fetch_optional(&mut *self.inner).await?;
                Ok(())
            }

            async fn insert_checkout(&mut self, c: &$crate::CheckoutRow) -> Result<(), $crate::StoreError> {
                self.run(&format!("INSERT INTO checkouts ({CHECKOUT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
                    &$crate::direct::args![&c.id, &c.device_id, &c.user_id, &c.location_id, &c.source, c.pin_set,
                        c.started_at, c.due_at, c.ended_at, &c.checkin_id]).await?;
                Ok(())
            }

            async fn get_checkout(&mut self, id: &str) -> Result<Option<$crate::CheckoutRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {CHECKOUT_COLS} FROM checkouts WHERE id = $1")).bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn end_checkout(&mut self, id: &str, at: i64, checkin_id: &str) -> Result<bool, $crate::StoreError> {
                let (sql, a) = end_checkout_sql(id, at, checkin_id);
                Ok(self.run(&sql, &a).await? == 1)
            }

            async fn open_checkouts(&mut self, user_id: Option<&str>, due_before: Option<i64>) -> Result<Vec<$crate::CheckoutRow>, $crate::StoreError> {
                // One user's: a statement of its own, so a prepared statement still searches
                // the user index (`$1 IS NULL OR ...` would scan every open check-out).
                let by = if user_id.is_some() { "user_id = $1" } else { "$1 IS NULL" };
                self.all(&format!("SELECT {CHECKOUT_COLS} FROM checkouts WHERE ended_at IS NULL AND {by} \
                                   AND ($2 IS NULL OR due_at < $2) ORDER BY due_at"), &$crate::direct::args![user_id, due_before]).await
            }

            async fn device_checkouts(&mut self, device_id: &str, limit: i64) -> Result<Vec<$crate::CheckoutRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {CHECKOUT_COLS} FROM checkouts WHERE device_id = $1 ORDER BY started_at DESC LIMIT $2"))
                    .bind(device_id).bind(limit).fetch_all(&mut *self.inner).await?)
            }

            async fn insert_checkin(&mut self, c: &$crate::CheckinRow) -> Result<(), $crate::StoreError> {
                let (sql, a) = insert_checkin_sql(c);
                self.run(&sql, &a).await.map(drop)
            }

            async fn update_checkin(&mut self, c: &$crate::CheckinRow) -> Result<(), $crate::StoreError> {
                let (sql, a) = update_checkin_sql(c);
                self.run(&sql, &a).await.map(drop)
            }

            async fn get_checkin(&mut self, id: &str) -> Result<Option<$crate::CheckinRow>, $crate::StoreError> {
                self.first(&format!("SELECT {CHECKIN_COLS} FROM checkins WHERE id = $1"), &$crate::direct::args![id]).await
            }

            async fn device_checkins(&mut self, device_id: &str, limit: i64) -> Result<Vec<$crate::CheckinRow>, $crate::StoreError> {
                self.all(&format!("SELECT {CHECKIN_COLS} FROM checkins WHERE device_id = $1 ORDER BY started_at DESC LIMIT $2"), &$crate::direct::args![device_id, limit]).await
            }

            async fn insert_checkin_steps(&mut self, steps: &[$crate::CheckinStepRow]) -> Result<(), $crate::StoreError> {
                let mut stmts = Vec::new();
                insert_checkin_steps_sql(steps, &mut stmts);
                self.run_all(&stmts).await.map(drop)
            }

            async fn update_checkin_step(&mut self, s: &$crate::CheckinStepRow) -> Result<(), $crate::StoreError> {
                let (sql, a) = update_checkin_step_sql(s);
                self.run(&sql, &a).await.map(drop)
            }

            async fn checkin_steps(&mut self, checkin_id: &str) -> Result<Vec<$crate::CheckinStepRow>, $crate::StoreError> {
                self.all(&format!("SELECT {STEP_COLS} FROM checkin_steps WHERE checkin_id = $1 ORDER BY position"), &$crate::direct::args![checkin_id]).await
            }

            async fn get_checkin_step(&mut self, checkin_id: &str, position: i64) -> Result<Option<$crate::CheckinStepRow>, $crate::StoreError> {
                self.first(&format!("SELECT {STEP_COLS} FROM checkin_steps WHERE checkin_id = $1 AND position = $2"), &$crate::direct::args![checkin_id, position]).await
            }

            async fn step_totals(&mut self, since: i64) -> Result<$crate::StepTotals, $crate::StoreError> {
                use sqlx::Row;
                let row = sqlx::query("SELECT COUNT(*) AS n, \
                                       CAST(COALESCE(SUM(CASE WHEN s.status = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT) AS done, \
                                       CAST(COALESCE(SUM(CASE WHEN s.status = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT) AS failed, \
                                       CAST(COALESCE(SUM(CASE WHEN s.status IN ('pending', 'retrying') THEN 1 ELSE 0 END), 0) AS BIGINT) AS open, \
                                       CAST(COALESCE(SUM(s.repeats), 0) AS BIGINT) AS repeats, CAST(COALESCE(SUM(s.attempts), 0) AS BIGINT) AS attempts \
                                       FROM checkin_steps s JOIN checkins c ON c.id = s.checkin_id WHERE c.started_at >= $1 AND s.on_device = FALSE")
                    .bind(since).fetch_one(&mut *self.inner).await?;
                Ok($crate::StepTotals {
                    server_steps: row.try_get("n")?,
                    done: row.try_get("done")?,
                    failed: row.try_get("failed")?,
                    open: row.try_get("open")?,
                    repeats: row.try_get("repeats")?,
                    attempts: row.try_get("attempts")?,
                })
            }

            async fn insert_commands(&mut self, commands: &[$crate::CommandRow]) -> Result<(), $crate::StoreError> {
                let mut stmts = Vec::new();
                insert_commands_sql(commands, &mut stmts);
                self.run_all(&stmts).await.map(drop)
            }

            async fn update_command(&mut self, c: &$crate::CommandRow) -> Result<(), $crate::StoreError> {
                let (sql, a) = update_command_sql(c);
                self.run(&sql, &a).await.map(drop)
            }

            async fn get_command(&mut self, id: &str) -> Result<Option<$crate::CommandRow>, $crate::StoreError> {
                self.first(&format!("SELECT {COMMAND_COLS} FROM device_commands WHERE id = $1"), &$crate::direct::args![id]).await
            }

            async fn get_commands(&mut self, ids: &[String]) -> Result<Vec<$crate::CommandRow>, $crate::StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
                let args: Vec<$crate::direct::Arg<'_>> = ids.iter().map($crate::direct::Arg::from).collect();
                self.all(&format!("SELECT {COMMAND_COLS} FROM device_commands WHERE id IN ({})", marks.join(", ")), &args).await
            }

            async fn deliverable_commands(&mut self, device_id: &str, now: i64, redeliver_before: i64) -> Result<Vec<$crate::CommandRow>, $crate::StoreError> {
                // `+expires_at` keeps SQLite, which has no statistics to tell, from walking the
                // expiry index over every device's open commands instead of this device's.
                self.all(&format!("SELECT {COMMAND_COLS} FROM device_commands WHERE device_id = $1 AND +expires_at > $2 \
                                   AND (state = 'queued' OR (state = 'delivered' AND delivered_at < $3)) ORDER BY created_at, position, id LIMIT 50"),
                    &$crate::direct::args![device_id, now, redeliver_before]).await
            }

            async fn deliver_commands(&mut self, device_id: &str, now: i64, redeliver_before: i64) -> Result<Vec<$crate::CommandRow>, $crate::StoreError> {
                // The state test again outside the subquery: a concurrent delivery (PostgreSQL
                // re-checks a row it waited for) must not hand the same command out twice. The
                // `+expires_at` and `IS TRUE` keep SQLite's planner (no statistics) on this
                // device's commands and on the ids found, not on the expiry index.
                let mut rows: Vec<$crate::CommandRow> = self.all(&format!(
                    "UPDATE device_commands SET state = 'delivered', delivered_at = $2 \
                     WHERE id IN (SELECT id FROM device_commands WHERE device_id = $1 AND +expires_at > $2 \
                                  AND (state = 'queued' OR (state = 'delivered' AND delivered_at < $3)) \
                                  ORDER BY created_at, position, id LIMIT 50) \
                     AND (state = 'queued' OR (state = 'delivered' AND delivered_at < $3)) IS TRUE \
                     RETURNING {COMMAND_COLS}"),
                    &$crate::direct::args![device_id, now, redeliver_before]).await?;
                rows.sort_by(|a, b| (a.created_at, a.position, &a.id).cmp(&(b.created_at, b.position, &b.id)));
                Ok(rows)
            }

            async fn expired_commands(&mut self, now: i64, limit: i64) -> Result<Vec<$crate::CommandRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {COMMAND_COLS} FROM device_commands WHERE state IN ('queued', 'delivered') AND expires_at <= $1 ORDER BY expires_at LIMIT $2"))
                    .bind(now).bind(limit).fetch_all(&mut *self.inner).await?)
            }

            async fn device_commands(&mut self, device_id: &str, limit: i64) -> Result<Vec<$crate::CommandRow>, $crate::StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {COMMAND_COLS} FROM device_commands WHERE device_id = $1 ORDER BY created_at DESC, position DESC LIMIT $2"))
                    .bind(device_id).bind(limit).fetch_all(&mut *self.inner).await?)
            }

            async fn insert_device_event(&mut self, device_id: &str, at: i64, kind: &str, detail: &str) -> Result<(), $crate::StoreError> {
                let (sql, a) = device_event_sql(device_id, at, kind, detail);
                self.run(&sql, &a).await.map(drop)
            }

            async fn device_events(&mut self, device_id: &str, limit: i64) -> Result<Vec<$crate::DeviceEventRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT seq, device_id, at, kind, detail FROM device_events WHERE device_id = $1 ORDER BY seq DESC LIMIT $2")
                    .bind(device_id).bind(limit).fetch_all(&mut *self.inner).await?)
            }

            async fn get_idempotency(&mut self, scope: &str, key: &str) -> Result<Option<$crate::IdempotencyRow>, $crate::StoreError> {
                self.first("SELECT scope, key, request_digest, status, response, created_at FROM idempotency_keys WHERE scope = $1 AND key = $2", &$crate::direct::args![scope, key]).await
            }

            async fn purge_device_history(&mut self, before: i64, keys_before: i64) -> Result<u64, $crate::StoreError> {
                let a = sqlx::query("DELETE FROM device_events WHERE at < $1").bind(before).execute(&mut *self.inner).await?.rows_affected();
                let b = sqlx::query("DELETE FROM device_commands WHERE state IN ('succeeded', 'failed', 'skipped', 'expired') AND created_at < $1")
                    .bind(before).execute(&mut *self.inner).await?.rows_affected();
                let c = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(keys_before).execute(&mut *self.inner).await?.rows_affected();
                Ok(a + b + c)
            }

            async fn put_sso_profile(&mut self, p: &$crate::SsoProfileRow) -> Result<(), $crate::StoreError> {
                sqlx::query("INSERT INTO sso_profiles (id, name, apps, xml, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (id) DO UPDATE SET name = excluded.name, apps = excluded.apps, xml = excluded.xml, updated_at = excluded.updated_at")
                    .bind(&p.id).bind(&p.name).bind(&p.apps).bind(&p.xml).bind(p.created_at).bind(p.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(())
            }

            async fn get_sso_profile(&mut self, id: &str) -> Result<Option<$crate::SsoProfileRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, name, apps, xml, created_at, updated_at FROM sso_profiles WHERE id = $1").bind(id).fetch_optional(&mut *self.inner).await?)
            }

            async fn list_sso_profiles(&mut self) -> Result<Vec<$crate::SsoProfileRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT id, name, apps, xml, created_at, updated_at FROM sso_profiles ORDER BY name, id").fetch_all(&mut *self.inner).await?)
            }

            async fn delete_sso_profile(&mut self, id: &str) -> Result<bool, $crate::StoreError> {
                Ok(sqlx::query("DELETE FROM sso_profiles WHERE id = $1").bind(id).execute(&mut *self.inner).await?.rows_affected() > 0)
            }

            async fn put_sso_credential(&mut self, c: &$crate::SsoCredentialRow) -> Result<Option<String>, $crate::StoreError> {
                let old: Option<(String,)> = sqlx::query_as("SELECT secret_ref FROM sso_credentials WHERE user_id = $1 AND profile_id = $2")
                    .bind(&c.user_id).bind(&c.profile_id).fetch_optional(&mut *self.inner).await?;
                sqlx::query("INSERT INTO sso_credentials (user_id, profile_id, username, secret_ref, source, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (user_id, profile_id) DO UPDATE SET username = excluded.username, secret_ref = excluded.secret_ref, \
                             source = excluded.source, updated_at = excluded.updated_at")
                    .bind(&c.user_id).bind(&c.profile_id).bind(&c.username).bind(&c.secret_ref).bind(&c.source).bind(c.updated_at)
                    .execute(&mut *self.inner).await?;
                Ok(old.map(|o| o.0).filter(|o| o != &c.secret_ref))
            }

            async fn sso_credentials_of(&mut self, user_id: &str) -> Result<Vec<$crate::SsoCredentialRow>, $crate::StoreError> {
                Ok(sqlx::query_as("SELECT user_id, profile_id, username, secret_ref, source, updated_at FROM sso_credentials WHERE user_id = $1 ORDER BY profile_id")
                    .bind(user_id).fetch_all(&mut *self.inner).await?)
            }

            async fn delete_sso_credentials(&mut self, profile_id: &str, user_id: Option<&str>) -> Result<Vec<String>, $crate::StoreError> {
                let gone: Vec<(String,)> = sqlx::query_as("DELETE FROM sso_credentials WHERE profile_id = $1 AND ($2 IS NULL OR user_id = $2) RETURNING secret_ref")
                    .bind(profile_id).bind(user_id).fetch_all(&mut *self.inner).await?;
                Ok(gone.into_iter().map(|g| g.0).collect())
            }

            async fn put_idempotency(&mut self, r: &$crate::IdempotencyRow) -> Result<(), $crate::StoreError> {
                self.run("INSERT INTO idempotency_keys (scope, key, request_digest, status, response, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    &$crate::direct::args![&r.scope, &r.key, &r.request_digest, r.status, &r.response, r.created_at]).await?;
                Ok(())
            }

            async fn enqueue_job(&mut self, j: &$crate::NewJob) -> Result<Option<i64>, $crate::StoreError> {
                let payload = j.payload.to_string();
                let id: Option<$crate::direct::Id> = self.first(
                    "INSERT INTO jobs (kind, payload, dedupe_key, state, run_at, attempts, max_attempts, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'queued', $4, 0, $5, $6, $6) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                    &$crate::direct::args![&j.kind, payload.as_str(), &j.dedupe_key, j.run_at, j.max_attempts, j.now],
                ).await?;
                if id.is_some() {
                    self.mark_enqueued();
                }
                Ok(id.map(|i| i.id))
            }

            async fn enqueue_jobs(&mut self, jobs: &[$crate::NewJob]) -> Result<u64, $crate::StoreError> {
                let mut stmts = Vec::new();
                enqueue_jobs_sql(jobs, &mut stmts);
                let added = self.run_all(&stmts).await?;
                if added > 0 {
                    self.mark_enqueued();
                }
                Ok(added)
            }

            async fn claim_jobs(&mut self, owner: &str, now: i64, lease_ms: i64, limit: i64) -> Result<Vec<$crate::JobRow>, $crate::StoreError> {
                let mut jobs: Vec<$crate::JobRow> = self.all(&format!(
                    "UPDATE jobs SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3 \
                     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= $3 \
                     AND (lease_until IS NULL OR lease_until < $3) ORDER BY run_at, id LIMIT $4 {}) \
                     RETURNING {JOB_COLS}",
                    $skip_locked
                ), &$crate::direct::args![owner, now + lease_ms, now, limit]).await?;
                jobs.sort_by_key(|j| (j.run_at, j.id));
                Ok(jobs)
            }

            async fn complete_job(&mut self, id: i64, owner: &str) -> Result<bool, $crate::StoreError> {
                let (sql, a) = complete_job_sql(id, owner);
                Ok(self.run(&sql, &a).await? == 1)
            }

            async fn retry_job_later(&mut self, id: i64, owner: &str, run_at: i64, error: &str, now: i64) -> Result<bool, $crate::StoreError> {
                Ok(self.run(
                    "UPDATE jobs SET run_at = $3, last_error = $4, lease_owner = NULL, lease_until = NULL, updated_at = $5 \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'queued'",
                    &$crate::direct::args![id, owner, run_at, error, now],
                ).await? == 1)
            }

            async fn bury_job(&mut self, id: i64, owner: &str, error: &str, now: i64) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query(
                    "UPDATE jobs SET state = 'dead', last_error = $3, lease_owner = NULL, lease_until = NULL, \
                     dedupe_key = NULL, updated_at = $4 WHERE id = $1 AND lease_owner = $2 AND state = 'queued'",
                )
                .bind(id).bind(owner).bind(error).bind(now)
                .execute(&mut *self.inner)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn get_job(&mut self, id: i64) -> Result<Option<$crate::JobRow>, $crate::StoreError> {
                let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *self.inner)
                    .await?;
                Ok(row.as_ref().map(<$crate::JobRow as $crate::direct::FromCols>::from_cols).transpose()?)
            }

            async fn list_jobs(&mut self, f: &$crate::JobFilter) -> Result<Vec<$crate::JobRow>, $crate::StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR kind = $2) \
                     ORDER BY id DESC LIMIT $3"
                ))
                .bind(&f.state).bind(&f.kind).bind(f.limit)
                .fetch_all(&mut *self.inner)
                .await?;
                collect(rows, <$crate::JobRow as $crate::direct::FromCols>::from_cols)
            }

            async fn revive_dead_job(&mut self, id: i64, now: i64) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query(
                    "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, updated_at = $2 WHERE id = $1 AND state = 'dead'",
                )
                .bind(id).bind(now)
                .execute(&mut *self.inner)
                .await?;
                if r.rows_affected() == 1 {
                    self.mark_enqueued();
                }
                Ok(r.rows_affected() == 1)
            }

            async fn discard_dead_job(&mut self, id: i64) -> Result<bool, $crate::StoreError> {
                let r = sqlx::query("DELETE FROM jobs WHERE id = $1 AND state = 'dead'")
                    .bind(id)
                    .execute(&mut *self.inner)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn job_counts(&mut self, now: i64) -> Result<$crate::JobCounts, $crate::StoreError> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT \
                     COALESCE(SUM(CASE WHEN state = 'queued' AND (lease_until IS NULL OR lease_until < $1) THEN 1 ELSE 0 END), 0) AS queued, \
                     COALESCE(SUM(CASE WHEN state = 'queued' AND lease_until >= $1 THEN 1 ELSE 0 END), 0) AS running, \
                     COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0) AS dead FROM jobs",
                )
                .bind(now)
                .fetch_one(&mut *self.inner)
                .await?;
                Ok($crate::JobCounts { queued: row.try_get("queued")?, running: row.try_get("running")?, dead: row.try_get("dead")? })
            }
        }
    };
}

pub(crate) use impl_tx;

/// The placeholders of a multi-row `VALUES`: `($1, $2), ($3, $4)` (or `(?, ?), (?, ?)`).
pub(crate) fn values_list(cols: usize, rows: usize, numbered: bool) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if numbered {
                let _ = write!(sql, "${}", r * cols + c + 1);
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// A column list of a join: each of `cols` as `table.col`, renamed `prefixcol` when `prefix` is
/// not empty (read back with `direct::Prefixed`).
pub(crate) fn joined_cols(cols: &str, table: &str, prefix: &str) -> String {
    cols.split(',')
        .map(str::trim)
        .map(|c| {
            if prefix.is_empty() {
                format!("{table}.{c}")
            } else {
                format!("{table}.{c} AS {prefix}{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A statement and its parameters.
pub(crate) type Stmt<'a> = (std::borrow::Cow<'static, str>, Vec<crate::direct::Arg<'a>>);

/// PostgreSQL: statements as one, `WITH w0 AS (first), w1 AS (second) last`, their `$N`
/// parameters renumbered. Every part runs once, to completion, on the database as it was before
/// the statement (none sees another's changes); the last one's `RETURNING` is the answer.
pub(crate) fn combine<'a>(
    stmts: &[Stmt<'a>],
) -> (std::borrow::Cow<'static, str>, Vec<crate::direct::Arg<'a>>) {
    if let [only] = stmts {
        return only.clone();
    }
    let mut sql = String::with_capacity(stmts.iter().map(|(s, _)| s.len() + 12).sum());
    let mut args = Vec::with_capacity(stmts.iter().map(|(_, a)| a.len()).sum());
    for (i, (s, a)) in stmts.iter().enumerate() {
        if i + 1 < stmts.len() {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("w{i} AS ("));
            shift_params(s, args.len(), &mut sql);
            sql.push(')');
        } else {
            sql.push(' ');
            shift_params(s, args.len(), &mut sql);
        }
        args.extend_from_slice(a);
    }
    (std::borrow::Cow::Owned(sql), args)
}

/// Copies `sql` to `out` with every `$N` parameter outside quotes raised by `by`.
fn shift_params(sql: &str, by: usize, out: &mut String) {
    let mut chars = sql.char_indices().peekable();
    let mut quoted = false;
    while let Some((_, c)) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '$' || quoted {
            out.push(c);
            continue;
        }
        let mut n = 0_usize;
        let mut digits = 0;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            n = n * 10 + v as usize;
            digits += 1;
            chars.next();
        }
        out.push('$');
        if digits > 0 {
            out.push_str(&(n + by).to_string());
        }
    }
}

/// A transaction's audit chain and the entries it appended that are not written yet.
pub(crate) struct AuditState {
    pub(crate) lease: crate::audit_chains::Lease,
    pub(crate) pending: Vec<(switchboard_domain::audit::AuditEvent, i64)>,
    /// The head as this transaction's writes left it, under its row lock.
    pub(crate) locked: Option<crate::audit_chains::Head>,
}

/// One audit entry, linked.
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    details: String,
    request_id: Option<String>,
    prev_hash: Vec<u8>,
    pub(crate) hash: [u8; 32],
}

impl AuditRow {
    pub(crate) fn head(&self) -> crate::audit_chains::Head {
        crate::audit_chains::Head {
            seq: self.seq,
            hash: self.hash.to_vec(),
        }
    }

    /// The parameters of [`AUDIT_INSERT`] (and of each row of [`audit_statements`]).
    pub(crate) fn args(&self, chain: i64) -> [crate::direct::Arg<'_>; 10] {
        crate::direct::args![
            chain,
            self.seq,
            self.at,
            &self.actor,
            &self.action,
            &self.target,
            self.details.as_str(),
            &self.request_id,
            &self.prev_hash,
            &self.hash[..]
        ]
    }
}

pub(crate) const AUDIT_INSERT: &str = "INSERT INTO audit_log (chain, seq, at, actor, action, target, details, request_id, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(crate) const AUDIT_MOVE_HEAD: &str =
    "UPDATE audit_heads SET seq = $1, hash = $2 WHERE chain = $3";

/// `events` linked one after the other onto `head` of `chain`.
pub(crate) fn audit_rows(
    chain: i64,
    head: &crate::audit_chains::Head,
    events: &[(switchboard_domain::audit::AuditEvent, i64)],
) -> Vec<AuditRow> {
    use switchboard_domain::audit::{ChainedFields, entry_hash};
    let mut prev = head.hash.clone();
    let mut seq = head.seq;
    events
        .iter()
        .map(|(e, at)| {
            seq += 1;
            let details = e.details.to_string();
            let hash = entry_hash(
                &prev,
                &ChainedFields {
                    chain,
                    seq,
                    at_ms: *at,
                    actor: &e.actor,
                    action: &e.action,
                    target: &e.target,
                    details: &details,
                    request_id: e.request_id.as_deref(),
                },
            );
            AuditRow {
                seq,
                at: *at,
                actor: e.actor.clone(),
                action: e.action.clone(),
                target: e.target.clone(),
                details,
                request_id: e.request_id.clone(),
                prev_hash: std::mem::replace(&mut prev, hash.to_vec()),
                hash,
            }
        })
        .collect()
}

/// PostgreSQL: the parts that write `rows` and move `chain`'s head from `from` to the last of
/// them, added to `stmts` for [`combine`]: the head's update (a `WITH` part), then one insert of
/// every entry that selects from it, last, so that the statement answers how many entries it
/// wrote. `guarded`: the head moves only if it still is `from`; otherwise nothing is written
/// and the statement answers 0.
pub(crate) fn audit_statements<'a>(
    chain: i64,
    from: &'a crate::audit_chains::Head,
    rows: &'a [AuditRow],
    guarded: bool,
    stmts: &mut Vec<Stmt<'a>>,
) {
    let Some(last) = rows.last() else { return };
    let mut args = crate::direct::args![last.seq, &last.hash[..], chain].to_vec();
    let mut head = String::from("UPDATE audit_heads SET seq = $1, hash = $2 WHERE chain = $3");
    if guarded {
        head.push_str(" AND seq = $4 AND hash = $5");
        args.extend(crate::direct::args![from.seq, &from.hash]);
    }
    head.push_str(" RETURNING chain");
    let cte = format!("w{}", stmts.len());
    stmts.push((std::borrow::Cow::Owned(head), args));
    let mut insert = String::from(
        "INSERT INTO audit_log (chain, seq, at, actor, action, target, details, request_id, prev_hash, hash) ",
    );
    let mut args = Vec::with_capacity(rows.len() * 10);
    for (i, r) in rows.iter().enumerate() {
        let n = i * 10;
        if i > 0 {
            insert.push_str(" UNION ALL ");
        }
        insert.push_str(&format!(
            "SELECT ${}::bigint, ${}::bigint, ${}::bigint, ${}::text, ${}::text, ${}::text, ${}::text, ${}::text, ${}::bytea, ${}::bytea FROM {cte}",
            n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7, n + 8, n + 9, n + 10
        ));
        args.extend(r.args(chain));
    }
    stmts.push((std::borrow::Cow::Owned(insert), args));
}

#[cfg(test)]
mod tests {
    use super::combine;
    use crate::direct::Arg;

    #[test]
    fn combined_statements_number_their_parameters_in_turn() {
        let stmts = [
            (
                "UPDATE t SET a = $2, note = 'costs $1' WHERE id = $1".into(),
                vec![Arg::Int(Some(1)), Arg::Text(Some("x"))],
            ),
            (
                "DELETE FROM u WHERE id = $1".into(),
                vec![Arg::Int(Some(2))],
            ),
            (
                "INSERT INTO v (a, b) VALUES ($1, $2) RETURNING id".into(),
                vec![Arg::Int(Some(3)), Arg::Int(Some(4))],
            ),
        ];
        let (sql, args) = combine(&stmts);
        assert_eq!(
            sql,
            "WITH w0 AS (UPDATE t SET a = $2, note = 'costs $1' WHERE id = $1), \
             w1 AS (DELETE FROM u WHERE id = $3) INSERT INTO v (a, b) VALUES ($4, $5) RETURNING id"
        );
        assert_eq!(args.len(), 5);
        // One statement stays as it is.
        let (only, _) = combine(&stmts[1..2]);
        assert_eq!(only, "DELETE FROM u WHERE id = $1");
    }
}
