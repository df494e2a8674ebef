//! Epic environments (`/admin/api/v1/epic-environments`) and the public JWK sets (`/jwks/...`).

use crate::AppState;
use crate::auth::{AdminAccess, OperatorAccess, ReadAccess};
use crate::error::{ApiError, Json, Path};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use switchboard_app::App;
use switchboard_app::epic_env::{Environment, EnvironmentInput};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_environments, create_environment))
        .routes(routes!(
            get_environment,
            update_environment,
            delete_environment
        ))
        .routes(routes!(rotate_keys))
        .routes(routes!(public_key_pem))
        .routes(routes!(test_connection, latest_connection_test))
        .routes(routes!(test_logout, latest_logout_test))
}

pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(jwks))
}

/// An Epic environment, with the URLs Switchboard derives and its key set.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = EpicEnvironment)]
pub struct EnvironmentView {
    pub id: String,
    pub name: String,
    /// `production` or `non_production`.
    pub kind: String,
    pub interconnect_url: String,
    pub instance: String,
    pub token_url: String,
    pub token_url_overridden: bool,
    pub fhir_base: String,
    pub oauth_base: String,
    pub username_base: String,
    pub client_id: String,
    pub apps: Vec<String>,
    pub basic_username: Option<String>,
    pub has_basic_password: bool,
    pub epic_client_id: Option<String>,
    pub timeout_ms: i64,
    pub rate_limit_per_sec: Option<i64>,
    pub ca_certificates: usize,
    #[schema(value_type = Object)]
    pub key_set: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<Environment> for EnvironmentView {
    fn from(e: Environment) -> Self {
        Self {
            key_set: serde_json::to_value(&e.key_set).unwrap_or_default(),
            id: e.id,
            name: e.name,
            kind: e.kind,
            interconnect_url: e.interconnect_url,
            instance: e.instance,
            token_url: e.token_url,
            token_url_overridden: e.token_url_overridden,
            fhir_base: e.fhir_base,
            oauth_base: e.oauth_base,
            username_base: e.username_base,
            client_id: e.client_id,
            apps: e.apps,
            basic_username: e.basic_username,
            has_basic_password: e.has_basic_password,
            epic_client_id: e.epic_client_id,
            timeout_ms: e.timeout_ms,
            rate_limit_per_sec: e.rate_limit_per_sec,
            ca_certificates: e.ca_certificates,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// Fields of an environment. On create, `name`, `kind`, `interconnect_url`, `instance` and
/// `client_id` are required; on update, absent fields keep their value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentBody {
    #[schema(example = "Production")]
    pub name: Option<String>,
    #[schema(example = "production")]
    pub kind: Option<String>,
    #[schema(example = "https://epic.hospital.org")]
    pub interconnect_url: Option<String>,
    #[schema(example = "interconnect-prd")]
    pub instance: Option<String>,
    /// Overrides `{interconnect_url}/{instance}-oauth/oauth2/token`; empty string clears it.
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    /// Epic apps logged out on this environment: `Rover`, `Haiku`, `Canto` (case-sensitive).
    pub apps: Option<Vec<String>>,
    /// `emp$<user>` for non-OAuth APIs; empty string clears it.
    pub basic_username: Option<String>,
    /// Stored sealed, never returned; empty string clears it.
    pub basic_password: Option<String>,
    /// Sent as `Epic-Client-ID` to non-OAuth APIs.
    pub epic_client_id: Option<String>,
    pub timeout_ms: Option<i64>,
    /// Calls per second toward Epic for this environment (per replica).
    pub rate_limit_per_sec: Option<i64>,
    /// Extra trusted CA certificates (PEM) for a hospital's private CA; empty string clears.
    pub ca_bundle: Option<String>,
    /// `RS384` (default) or `ES384`; create only.
    pub key_algorithm: Option<String>,
    /// Seconds a new key is published before it starts signing (default 600).
    pub publish_delay_secs: Option<i64>,
    /// Rotate keys on this schedule (e.g. 90).
    pub rotate_every_days: Option<i64>,
}

impl From<EnvironmentBody> for EnvironmentInput {
    fn from(b: EnvironmentBody) -> Self {
        Self {
            name: b.name,
            kind: b.kind,
            interconnect_url: b.interconnect_url,
            instance: b.instance,
            token_url: b.token_url,
            client_id: b.client_id,
            apps: b.apps,
            basic_username: b.basic_username,
            basic_password: b.basic_password,
            epic_client_id: b.epic_client_id,
            timeout_ms: b.timeout_ms,
            rate_limit_per_sec: b.rate_limit_per_sec,
            ca_bundle: b.ca_bundle,
            key_algorithm: b.key_algorithm,
            publish_delay_secs: b.publish_delay_secs,
            rotate_every_days: b.rotate_every_days,
        }
    }
}

/// List Epic environments (production first).
#[utoipa::path(get, path = "/epic-environments", tag = "epic", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<EnvironmentView>)))]
async fn list_environments(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    Ok(Json(
        app.list_environments()
            .await?
            .into_iter()
            .map(EnvironmentView::from)
            .collect(),
    ))
}

/// Create an Epic environment and its key set (the JWK URL to register with Epic is in `key_set.jwk_url`).
#[utoipa::path(post, path = "/epic-environments", tag = "epic", request_body = EnvironmentBody,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 201, body = EnvironmentView)))]
async fn create_environment(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<EnvironmentBody>,
) -> Result<(StatusCode, Json<EnvironmentView>), ApiError> {
    let e = app
        .create_environment(&a.principal, &a.ctx, b.into())
        .await?;
    Ok((StatusCode::CREATED, Json(e.into())))
}

/// One Epic environment.
#[utoipa::path(get, path = "/epic-environments/{id}", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = EnvironmentView)))]
async fn get_environment(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    Ok(Json(app.get_environment(&id).await?.into()))
}

/// Change an Epic environment.
#[utoipa::path(patch, path = "/epic-environments/{id}", tag = "epic", params(("id" = String, Path)), request_body = EnvironmentBody,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 200, body = EnvironmentView)))]
async fn update_environment(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<EnvironmentBody>,
) -> Result<Json<EnvironmentView>, ApiError> {
    Ok(Json(
        app.update_environment(&a.principal, &a.ctx, &id, b.into())
            .await?
            .into(),
    ))
}

/// Remove an Epic environment; its keys leave the JWK set at once.
#[utoipa::path(delete, path = "/epic-environments/{id}", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 204, description = "Removed")))]
async fn delete_environment(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_environment(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate now: publish a new key, sign with it after the publish delay, drop the old one 5 minutes after its last use.
#[utoipa::path(post, path = "/epic-environments/{id}/rotate-keys", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 200, body = EnvironmentView)))]
async fn rotate_keys(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    Ok(Json(
        app.rotate_environment_keys(&a.principal, &a.ctx, &id)
            .await?
            .into(),
    ))
}

/// The active signing key's public half as PEM (for static key upload).
#[utoipa::path(get, path = "/epic-environments/{id}/public-key.pem", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, description = "PEM public key", content_type = "application/x-pem-file", body = String)))]
async fn public_key_pem(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(pem_download(
        &id,
        app.environment_public_key_pem(&id).await?,
    ))
}

/// A public key as a PEM file download (Epic's static key upload).
pub(crate) fn pem_download(id: &str, pem: String) -> Response {
    super::attachment(
        "application/x-pem-file",
        &format!("switchboard-{id}.pem"),
        pem,
    )
}

/// A public JWK set, as registered with Epic (no authentication). `file` is `{key_set_id}.json`.
#[utoipa::path(get, path = "/jwks/{file}", tag = "epic", params(("file" = String, Path, description = "`{key_set_id}.json`")),
    responses((status = 200, description = "JWK set", content_type = "application/json", body = Object), (status = 404, description = "No such key set", body = crate::error::Problem)))]
async fn jwks(State(app): State<App>, Path(file): Path<String>) -> Result<Response, ApiError> {
    let Some(id) = file.strip_suffix(".json") else {
        return Err(ApiError::not_found(
            "JWK sets are served as /jwks/{key_set_id}.json.",
        ));
    };
    let set = app.jwk_set(id).await?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(set),
    )
        .into_response())
}

/// A stored test: every step with pass / fail / skipped, a cause and a fix.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    pub environment_id: String,
    /// `connection` or `logout`.
    pub kind: String,
    pub at: i64,
    pub ok: bool,
    #[schema(value_type = Vec<Object>)]
    pub steps: serde_json::Value,
}

impl From<switchboard_app::doctor::CheckReport> for CheckView {
    fn from(r: switchboard_app::doctor::CheckReport) -> Self {
        Self {
            steps: serde_json::to_value(&r.steps).unwrap_or_default(),
            environment_id: r.environment_id,
            kind: r.kind,
            at: r.at,
            ok: r.ok,
        }
    }
}

/// Test connection: DNS, TCP, TLS, FHIR metadata and token acquisition, each with a hint.
#[utoipa::path(post, path = "/epic-environments/{id}/test-connection", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])),
    responses((status = 200, body = CheckView)))]
async fn test_connection(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<CheckView>, ApiError> {
    Ok(Json(
        app.test_connection(&a.principal, &a.ctx, &id).await?.into(),
    ))
}

/// The newest connection test.
#[utoipa::path(get, path = "/epic-environments/{id}/test-connection", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = CheckView)))]
async fn latest_connection_test(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<CheckView>, ApiError> {
    Ok(Json(app.latest_check(&id, "connection").await?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestLogoutBody {
    /// The device's serial number (or UUID), as its EpicMobileDeviceID AppConfig resolves.
    #[schema(example = "J4X7X22WGA")]
    pub serial: String,
    /// `Rover`, `Haiku` or `Canto` (case-sensitive).
    #[schema(example = "Rover")]
    pub app: String,
    /// Whether the app's EpicMobileDeviceIDAppName is on (the app name is appended to the serial). Default true.
    pub append_app_name: Option<bool>,
}

/// Test Epic API logout (DisassociateMobileDevice) for one device and app, without a check-in.
#[utoipa::path(post, path = "/epic-environments/{id}/test-logout", tag = "epic", params(("id" = String, Path)), request_body = TestLogoutBody,
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])),
    responses((status = 200, body = CheckView)))]
async fn test_logout(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<TestLogoutBody>,
) -> Result<Json<CheckView>, ApiError> {
    Ok(Json(
        app.test_logout(
            &a.principal,
            &a.ctx,
            &id,
            &b.serial,
            &b.app,
            b.append_app_name.unwrap_or(true),
        )
        .await?
        .into(),
    ))
}

/// The newest logout test.
#[utoipa::path(get, path = "/epic-environments/{id}/test-logout", tag = "epic", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = CheckView)))]
async fn latest_logout_test(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<CheckView>, ApiError> {
    Ok(Json(app.latest_check(&id, "logout").await?.into()))
}
