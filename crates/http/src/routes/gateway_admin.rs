//! FHIR gateway configuration (`/admin/api/v1/gateway/...`): data adapters, gateways, apps and
//! activations, plus the per-request access records.

use crate::AppState;
use crate::auth::{AdminAccess, AuditAccess, OperatorAccess, ReadAccess};
use crate::error::{ApiError, Json, Path, Query};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchboard_app::App;
use switchboard_app::gateway::{
    Activation, ActivationInput, Adapter, AdapterInput, AppInput, AppWithSecret, Gateway,
    GatewayApp, GatewayInput, HealthReport,
};
use switchboard_store::GatewayRequestRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_adapters, create_adapter))
        .routes(routes!(get_adapter, update_adapter, delete_adapter))
        .routes(routes!(list_gateways, create_gateway))
        .routes(routes!(get_gateway, update_gateway, delete_gateway))
        .routes(routes!(list_apps, create_app))
        .routes(routes!(get_app, update_app, delete_app))
        .routes(routes!(rotate_secret))
        .routes(routes!(revoke_tokens))
        .routes(routes!(list_activations, create_activation))
        .routes(routes!(
            get_activation,
            update_activation,
            delete_activation
        ))
        .routes(routes!(activation_pem))
        .routes(routes!(rotate_activation_keys))
        .routes(routes!(activation_health))
        .routes(routes!(list_requests))
        .routes(routes!(request_batch))
}

/// List data adapters.
#[utoipa::path(get, path = "/gateway/adapters", tag = "gateway", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<Adapter>)))]
async fn list_adapters(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<Adapter>>, ApiError> {
    Ok(Json(app.list_adapters().await?))
}

/// Create an "Epic R4 External" data adapter (settings use source 002's key names).
#[utoipa::path(post, path = "/gateway/adapters", tag = "gateway", request_body = AdapterInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = Adapter)))]
async fn create_adapter(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<AdapterInput>,
) -> Result<(StatusCode, Json<Adapter>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.save_adapter(&a.principal, &a.ctx, None, b).await?),
    ))
}

/// One data adapter.
#[utoipa::path(get, path = "/gateway/adapters/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Adapter)))]
async fn get_adapter(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Adapter>, ApiError> {
    Ok(Json(app.get_adapter(&id).await?))
}

/// Replace a data adapter's configuration (an omitted external secret is kept).
#[utoipa::path(put, path = "/gateway/adapters/{id}", tag = "gateway", params(("id" = String, Path)), request_body = AdapterInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = Adapter)))]
async fn update_adapter(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<AdapterInput>,
) -> Result<Json<Adapter>, ApiError> {
    Ok(Json(
        app.save_adapter(&a.principal, &a.ctx, Some(&id), b).await?,
    ))
}

/// Remove a data adapter (refused while a gateway uses it).
#[utoipa::path(delete, path = "/gateway/adapters/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204, description = "Removed")))]
async fn delete_adapter(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_adapter(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List gateways with the URLs apps call.
#[utoipa::path(get, path = "/gateway/gateways", tag = "gateway", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<Gateway>)))]
async fn list_gateways(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<Gateway>>, ApiError> {
    Ok(Json(app.list_gateways().await?))
}

/// Create a gateway bound to one adapter.
#[utoipa::path(post, path = "/gateway/gateways", tag = "gateway", request_body = GatewayInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = Gateway)))]
async fn create_gateway(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<GatewayInput>,
) -> Result<(StatusCode, Json<Gateway>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.save_gateway(&a.principal, &a.ctx, None, b).await?),
    ))
}

/// One gateway (by id or name).
#[utoipa::path(get, path = "/gateway/gateways/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Gateway)))]
async fn get_gateway(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Gateway>, ApiError> {
    Ok(Json(app.get_gateway(&id).await?))
}

/// Rename a gateway or bind it to another adapter.
#[utoipa::path(put, path = "/gateway/gateways/{id}", tag = "gateway", params(("id" = String, Path)), request_body = GatewayInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = Gateway)))]
async fn update_gateway(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<GatewayInput>,
) -> Result<Json<Gateway>, ApiError> {
    Ok(Json(
        app.save_gateway(&a.principal, &a.ctx, Some(&id), b).await?,
    ))
}

/// Remove a gateway and its activations.
#[utoipa::path(delete, path = "/gateway/gateways/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204, description = "Removed")))]
async fn delete_gateway(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_gateway(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List apps (OAuth2 client credentials).
#[utoipa::path(get, path = "/gateway/apps", tag = "gateway", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<GatewayApp>)))]
async fn list_apps(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<GatewayApp>>, ApiError> {
    Ok(Json(app.list_gateway_apps().await?))
}

/// Create an app: the client ID is generated and the client secret is shown in this answer only.
#[utoipa::path(post, path = "/gateway/apps", tag = "gateway", request_body = AppInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = AppWithSecret)))]
async fn create_app(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<AppInput>,
) -> Result<Response, ApiError> {
    let created = app.create_gateway_app(&a.principal, &a.ctx, b).await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(created),
    )
        .into_response())
}

/// One app.
#[utoipa::path(get, path = "/gateway/apps/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = GatewayApp)))]
async fn get_app(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<GatewayApp>, ApiError> {
    Ok(Json(app.get_gateway_app(&id).await?))
}

/// Change an app's name, scopes, token lifetime, rate limit or state.
#[utoipa::path(put, path = "/gateway/apps/{id}", tag = "gateway", params(("id" = String, Path)), request_body = AppInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = GatewayApp)))]
async fn update_app(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<AppInput>,
) -> Result<Json<GatewayApp>, ApiError> {
    Ok(Json(
        app.update_gateway_app(&a.principal, &a.ctx, &id, b).await?,
    ))
}

/// Remove an app and its activations.
#[utoipa::path(delete, path = "/gateway/apps/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204, description = "Removed")))]
async fn delete_app(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_gateway_app(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// Seconds the previous secret keeps working (default 86400).
    grace_secs: Option<i64>,
}

/// Rotate an app's client secret; the previous one keeps working for the grace period.
#[utoipa::path(post, path = "/gateway/apps/{id}/rotate-secret", tag = "gateway", params(("id" = String, Path)), request_body = RotateBody,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = AppWithSecret)))]
async fn rotate_secret(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<RotateBody>,
) -> Result<Response, ApiError> {
    let r = app
        .rotate_gateway_app_secret(&a.principal, &a.ctx, &id, b.grace_secs.unwrap_or(86_400))
        .await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(r)).into_response())
}

/// Revoke every token the app holds (effective on every replica within a second or two).
#[utoipa::path(post, path = "/gateway/apps/{id}/revoke-tokens", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 200, body = GatewayApp)))]
async fn revoke_tokens(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<GatewayApp>, ApiError> {
    Ok(Json(
        app.revoke_gateway_app_tokens(&a.principal, &a.ctx, &id)
            .await?,
    ))
}

/// List activations (apps on gateways).
#[utoipa::path(get, path = "/gateway/activations", tag = "gateway", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<Activation>)))]
async fn list_activations(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<Activation>>, ApiError> {
    Ok(Json(app.list_activations().await?))
}

/// Activate an app on a gateway; `ehr_auth: backend` generates the key pair to register with Epic.
#[utoipa::path(post, path = "/gateway/activations", tag = "gateway", request_body = ActivationInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = Activation)))]
async fn create_activation(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<ActivationInput>,
) -> Result<(StatusCode, Json<Activation>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.save_activation(&a.principal, &a.ctx, None, b).await?),
    ))
}

/// One activation.
#[utoipa::path(get, path = "/gateway/activations/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Activation)))]
async fn get_activation(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Activation>, ApiError> {
    Ok(Json(app.get_activation(&id).await?))
}

/// Change an activation's EHR authentication.
#[utoipa::path(put, path = "/gateway/activations/{id}", tag = "gateway", params(("id" = String, Path)), request_body = ActivationInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = Activation)))]
async fn update_activation(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<ActivationInput>,
) -> Result<Json<Activation>, ApiError> {
    Ok(Json(
        app.save_activation(&a.principal, &a.ctx, Some(&id), b)
            .await?,
    ))
}

/// Deactivate an app on a gateway.
#[utoipa::path(delete, path = "/gateway/activations/{id}", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204, description = "Removed")))]
async fn delete_activation(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_activation(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The activation's public key as PEM, for Epic's static key upload.
#[utoipa::path(get, path = "/gateway/activations/{id}/public-key.pem", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, description = "PEM public key", content_type = "application/x-pem-file", body = String)))]
async fn activation_pem(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(super::epic_env::pem_download(
        &id,
        app.activation_public_key_pem(&id).await?,
    ))
}

/// Rotate the activation's signing key (published now, signing after the publish delay).
#[utoipa::path(post, path = "/gateway/activations/{id}/rotate-keys", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = Activation)))]
async fn rotate_activation_keys(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Activation>, ApiError> {
    Ok(Json(
        app.rotate_activation_keys(&a.principal, &a.ctx, &id)
            .await?,
    ))
}

/// Health report: a token from Epic, the metadata, one sample read — each with a hint.
#[utoipa::path(post, path = "/gateway/activations/{id}/health", tag = "gateway", params(("id" = String, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 200, body = HealthReport)))]
async fn activation_health(
    _a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<HealthReport>, ApiError> {
    Ok(Json(app.activation_health(&id).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct RequestsQuery {
    gateway: Option<String>,
    app: Option<String>,
    /// `seq` of the last record of the previous page.
    before: Option<i64>,
    limit: Option<i64>,
}

/// The per-request access records (app, gateway, interaction, resource, status, latency), newest first.
#[utoipa::path(get, path = "/gateway/requests", tag = "gateway", params(RequestsQuery),
    security(("api_token" = ["audit"]), ("console_session" = ["audit"])), responses((status = 200, body = Vec<Object>)))]
async fn list_requests(
    _a: AuditAccess,
    State(app): State<App>,
    Query(q): Query<RequestsQuery>,
) -> Result<Json<Vec<GatewayRequestRow>>, ApiError> {
    app.flush_gateway_requests().await?;
    Ok(Json(
        app.list_gateway_requests(
            q.gateway.as_deref(),
            q.app.as_deref(),
            q.before,
            q.limit.unwrap_or(100),
        )
        .await?,
    ))
}

/// One stored batch of access records as tab-separated lines (fields: at, app, gateway, kind,
/// interaction, resource type, resource id, status, latency µs, request id), byte for byte what
/// the batch's `gateway.requests.recorded` audit entry holds the SHA-256 of.
#[utoipa::path(get, path = "/gateway/request-batches/{id}", tag = "gateway", params(("id" = i64, Path)),
    security(("api_token" = ["audit"]), ("console_session" = ["audit"])),
    responses((status = 200, content_type = "text/tab-separated-values", body = String), (status = 404)))]
async fn request_batch(
    _a: AuditAccess,
    State(app): State<App>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let lines = app.gateway_request_batch(id).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/tab-separated-values; charset=utf-8",
        )],
        lines,
    )
        .into_response())
}
