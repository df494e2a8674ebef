//! Admin JSON API, `/admin/api/v1`: users, API tokens, audit log, jobs.

use crate::AppState;
use crate::auth::{AdminAccess, AuditAccess, OperatorAccess, ReadAccess};
use crate::error::{ApiError, Json, Path, Query};
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_app::App;
use switchboard_app::accounts::{ApiToken, CreatedToken, NewToken, NewUser, User, UserChange};
use switchboard_domain::ValidationErrors;
use switchboard_store::{AuditFilter, AuditRecord, JobCounts, JobFilter, JobRow};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
        .routes(routes!(set_password))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_audit))
        .routes(routes!(export_audit))
        .routes(routes!(verify_audit))
        .routes(routes!(list_jobs))
        .routes(routes!(job_stats))
        .routes(routes!(get_job))
        .routes(routes!(retry_job))
        .routes(routes!(discard_job))
}

// ---------------------------------------------------------------- schemas

/// A staff account.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    #[schema(example = "operator")]
    pub role: String,
    pub disabled: bool,
    pub has_password: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            display_name: u.display_name,
            role: u.role.as_str().to_owned(),
            disabled: u.disabled,
            has_password: u.has_password,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// An API token (never its secret, except once at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The first characters of the secret.
    pub prefix: String,
    /// A narrower role than the user's, if any.
    pub role: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Only in the answer to the creating request; store it now, it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            user_id: t.user_id,
            name: t.name,
            prefix: t.prefix,
            role: t.role.map(|r| r.as_str().to_owned()),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            secret: None,
        }
    }
}

impl From<CreatedToken> for TokenView {
    fn from(c: CreatedToken) -> Self {
        Self {
            secret: Some(c.secret),
            ..Self::from(c.token)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    /// `token` or `console`.
    pub authenticated_by: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    #[schema(example = "jdoe")]
    pub username: String,
    pub display_name: Option<String>,
    #[schema(example = "operator")]
    pub role: String,
    /// For console sign-in; at least 12 characters. Omit for token-only accounts.
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    pub display_name: Option<String>,
    pub role: Option<String>,
    /// Disabling revokes the user's tokens and sessions.
    pub disabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPasswordBody {
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    #[schema(example = "CI pipeline")]
    pub name: String,
    /// Admins may create tokens for other users; default: yourself.
    pub user_id: Option<String>,
    /// A narrower role than the user's.
    pub role: Option<String>,
    pub expires_in_days: Option<u32>,
}

/// One audit entry. `hash` chains it to the previous entry of its chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub chain: i64,
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub request_id: Option<String>,
    pub hash: String,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            chain: r.chain,
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            details: r.details,
            request_id: r.request_id,
            hash: r.hash,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exact actor, e.g. `user:alice`.
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` (`user.`).
    pub action: Option<String>,
    /// Exact target, e.g. `user:<id>`.
    pub target: Option<String>,
    /// From this time (RFC 3339, or a date `YYYY-MM-DD`, UTC), inclusive.
    pub from: Option<String>,
    /// Until this time (RFC 3339, or a date, whose whole day is included), exclusive.
    pub to: Option<String>,
    /// Entries older than this id (paging).
    pub before: Option<i64>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<i64>,
}

/// Parses an RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC; `end_of_day` for the next one).
pub fn parse_time(field: &str, value: &str, end_of_day: bool) -> Result<i64, ValidationErrors> {
    let v = value.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let d = if end_of_day {
            d.succ_opt().unwrap_or(d)
        } else {
            d
        };
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(ValidationErrors::single(
        field,
        format!("`{v}` is neither an RFC 3339 time nor a YYYY-MM-DD date"),
    ))
}

impl AuditQuery {
    pub fn into_filter(self) -> Result<AuditFilter, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let from_ms = self
            .from
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| errors.check("from", parse_time("from", s, false).map_err(first)));
        let to_ms = self
            .to
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| errors.check("to", parse_time("to", s, true).map_err(first)));
        if let Some(l) = self.limit
            && !(1..=1000).contains(&l)
        {
            errors.add("limit", "must be between 1 and 1000");
        }
        errors.into_result()?;
        let nonempty = |s: Option<String>| {
            s.filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().to_owned())
        };
        Ok(AuditFilter {
            actor: nonempty(self.actor),
            action: nonempty(self.action),
            target: nonempty(self.target),
            from_ms,
            to_ms,
            before_id: self.before,
            after_id: None,
            oldest_first: false,
            limit: self.limit.unwrap_or(100),
        })
    }
}

fn first(v: ValidationErrors) -> String {
    v.errors
        .into_iter()
        .next()
        .map(|e| e.message)
        .unwrap_or_default()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    pub entries_checked: u64,
    pub chains: usize,
    /// What broke where; empty when `ok`.
    pub problems: Vec<String>,
}

/// A durable job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    #[schema(example = "webhook.deliver")]
    pub kind: String,
    /// `queued` or `dead`.
    pub state: String,
    pub run_at: i64,
    pub attempts: i32,
    pub max_attempts: i32,
    /// The worker holding it right now, if any.
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<JobRow> for JobView {
    fn from(j: JobRow) -> Self {
        Self {
            id: j.id,
            kind: j.kind,
            state: j.state,
            run_at: j.run_at,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            lease_owner: j.lease_owner,
            lease_until: j.lease_until,
            last_error: j.last_error,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobStatsView {
    pub queued: i64,
    pub running: i64,
    pub dead: i64,
}

impl From<JobCounts> for JobStatsView {
    fn from(c: JobCounts) -> Self {
        Self {
            queued: c.queued,
            running: c.running,
            dead: c.dead,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// `queued` or `dead`.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<i64>,
}

// ---------------------------------------------------------------- handlers

/// Who am I?
#[utoipa::path(get, path = "/me", tag = "accounts", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = MeView)))]
async fn me(auth: ReadAccess) -> Json<MeView> {
    let p = auth.principal;
    let by = match p.via {
        switchboard_app::AuthMethod::Token { .. } => "token",
        _ => "console",
    };
    Json(MeView {
        user_id: p.user_id,
        username: p.username,
        display_name: p.display_name,
        role: p.role.as_str().to_owned(),
        authenticated_by: by.to_owned(),
    })
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "accounts", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<UserView>)))]
async fn list_users(
    _auth: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    Ok(Json(
        app.list_users()
            .await?
            .into_iter()
            .map(UserView::from)
            .collect(),
    ))
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "accounts", request_body = CreateUserBody,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 201, body = UserView)))]
async fn create_user(
    auth: AdminAccess,
    State(app): State<App>,
    Json(b): Json<CreateUserBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let u = app
        .create_user(
            &auth.principal,
            &auth.ctx,
            NewUser {
                username: b.username,
                display_name: b.display_name,
                role: b.role,
                password: b.password,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(u.into())))
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "accounts", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = UserView)))]
async fn get_user(
    _auth: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(app.get_user(&id).await?.into()))
}

/// Change a user's display name, role or disabled flag.
#[utoipa::path(patch, path = "/users/{id}", tag = "accounts", params(("id" = String, Path)), request_body = UpdateUserBody,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 200, body = UserView)))]
async fn update_user(
    auth: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<UpdateUserBody>,
) -> Result<Json<UserView>, ApiError> {
    let u = app
        .update_user(
            &auth.principal,
            &auth.ctx,
            &id,
            UserChange {
                display_name: b.display_name,
                role: b.role,
                disabled: b.disabled,
            },
        )
        .await?;
    Ok(Json(u.into()))
}

/// Set a user's console password (ends their console sessions).
#[utoipa::path(put, path = "/users/{id}/password", tag = "accounts", params(("id" = String, Path)), request_body = SetPasswordBody,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 204, description = "Password set")))]
async fn set_password(
    auth: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<SetPasswordBody>,
) -> Result<StatusCode, ApiError> {
    app.set_password(&auth.principal, &auth.ctx, &id, b.password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List API tokens (all for admins, your own otherwise).
#[utoipa::path(get, path = "/tokens", tag = "accounts", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<TokenView>)))]
async fn list_tokens(
    auth: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(
        app.list_tokens(&auth.principal)
            .await?
            .into_iter()
            .map(TokenView::from)
            .collect(),
    ))
}

/// Create an API token. The secret is in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "accounts", request_body = CreateTokenBody,
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 201, body = TokenView)))]
async fn create_token(
    auth: ReadAccess,
    State(app): State<App>,
    Json(b): Json<CreateTokenBody>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    let t = app
        .create_token(
            &auth.principal,
            &auth.ctx,
            NewToken {
                name: b.name,
                user_id: b.user_id,
                role: b.role,
                expires_in_days: b.expires_in_days,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// Revoke an API token (yours, or any for admins). Takes effect on the next request everywhere.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "accounts", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = TokenView)))]
async fn revoke_token(
    auth: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(
        app.revoke_token(&auth.principal, &auth.ctx, &id)
            .await?
            .into(),
    ))
}

/// Audit log entries, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    security(("api_token" = ["audit"]), ("console_session" = ["audit"])),
    responses((status = 200, body = Vec<AuditView>)))]
async fn list_audit(
    _auth: AuditAccess,
    State(app): State<App>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditView>>, ApiError> {
    let filter = q.into_filter().map_err(switchboard_app::AppError::from)?;
    Ok(Json(
        app.list_audit(filter)
            .await?
            .into_iter()
            .map(AuditView::from)
            .collect(),
    ))
}

/// Export the audit log as JSON lines, oldest first, streamed (same filters as the list).
#[utoipa::path(get, path = "/audit/export", tag = "audit", params(AuditQuery),
    security(("api_token" = ["audit"]), ("console_session" = ["audit"])),
    responses((status = 200, description = "One JSON audit entry per line", content_type = "application/x-ndjson", body = String)))]
async fn export_audit(
    _auth: AuditAccess,
    State(app): State<App>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let mut filter = q.into_filter().map_err(switchboard_app::AppError::from)?;
    filter.oldest_first = true;
    filter.limit = 1_000;
    filter.before_id = None;
    let stream = futures_util::stream::unfold(Some((app, filter)), |state| async move {
        let (app, mut filter) = state?;
        match app.list_audit(filter.clone()).await {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                let mut buf = Vec::new();
                for r in &page {
                    if serde_json::to_writer(&mut buf, &AuditView::from(r.clone())).is_ok() {
                        buf.push(b'\n');
                    }
                }
                filter.after_id = page.last().map(|r| r.id);
                let more = page.len() >= 1_000;
                Some((Ok::<_, std::io::Error>(buf), more.then_some((app, filter))))
            }
            Err(e) => {
                tracing::error!(error = %e, "audit export interrupted");
                Some((Err(std::io::Error::other("audit export interrupted")), None))
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Verify the audit chains: detects edited, deleted, inserted or truncated entries.
#[utoipa::path(get, path = "/audit/verify", tag = "audit",
    security(("api_token" = ["audit"]), ("console_session" = ["audit"])),
    responses((status = 200, body = VerifyView)))]
async fn verify_audit(
    _auth: AuditAccess,
    State(app): State<App>,
) -> Result<Json<VerifyView>, ApiError> {
    let r = app.verify_audit().await?;
    Ok(Json(VerifyView {
        ok: r.ok,
        entries_checked: r.entries_checked,
        chains: r.chains,
        problems: r.problems.iter().map(ToString::to_string).collect(),
    }))
}

/// List jobs (queued or dead letters), newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobQuery),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<JobView>)))]
async fn list_jobs(
    _auth: ReadAccess,
    State(app): State<App>,
    Query(q): Query<JobQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let jobs = app
        .list_jobs(JobFilter {
            state: q.state,
            kind: q.kind,
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    Ok(Json(jobs.into_iter().map(JobView::from).collect()))
}

/// Queue depth: queued, running, dead.
#[utoipa::path(get, path = "/jobs/stats", tag = "jobs", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = JobStatsView)))]
async fn job_stats(
    _auth: ReadAccess,
    State(app): State<App>,
) -> Result<Json<JobStatsView>, ApiError> {
    Ok(Json(app.job_counts().await?.into()))
}

/// One job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = JobView)))]
async fn get_job(
    _auth: ReadAccess,
    State(app): State<App>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(app.get_job(id).await?.into()))
}

/// Put a dead job back in the queue with fresh attempts.
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])),
    responses((status = 200, body = JobView)))]
async fn retry_job(
    auth: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<i64>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(
        app.retry_dead_job(&auth.principal, &auth.ctx, id)
            .await?
            .into(),
    ))
}

/// Discard a dead job (audited with its last error).
#[utoipa::path(post, path = "/jobs/{id}/discard", tag = "jobs", params(("id" = i64, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])),
    responses((status = 204, description = "Discarded")))]
async fn discard_job(
    auth: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    app.discard_dead_job(&auth.principal, &auth.ctx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
