//! Telehealth profiles and conferences (`/admin/api/v1/telehealth/...`).

use crate::AppState;
use crate::auth::{AdminAccess, OperatorAccess, ReadAccess};
use crate::error::{ApiError, Json, Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use switchboard_app::App;
use switchboard_app::telehealth::{
    ConferencePage, ConferenceQuery, ConferenceView, Profile, ProfileInput,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_profiles, create_profile))
        .routes(routes!(get_profile, update_profile, delete_profile))
        .routes(routes!(list_conferences))
        .routes(routes!(get_conference))
        .routes(routes!(end_conference))
}

/// List telehealth profiles, with the launch URLs and redirect URIs to register in Epic.
#[utoipa::path(get, path = "/telehealth/profiles", tag = "telehealth", security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Vec<Profile>)))]
async fn list_profiles(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<Profile>>, ApiError> {
    Ok(Json(app.list_telehealth_profiles().await?))
}

/// Create a telehealth profile (an Epic video-visit integration).
#[utoipa::path(post, path = "/telehealth/profiles", tag = "telehealth", request_body = ProfileInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 201, body = Profile)))]
async fn create_profile(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<ProfileInput>,
) -> Result<(StatusCode, Json<Profile>), ApiError> {
    let p = app
        .create_telehealth_profile(&a.principal, &a.ctx, b, None)
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

/// One telehealth profile.
#[utoipa::path(get, path = "/telehealth/profiles/{id}", tag = "telehealth", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = Profile)))]
async fn get_profile(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(app.get_telehealth_profile(&id).await?))
}

/// Change a telehealth profile; omitted secrets are kept.
#[utoipa::path(put, path = "/telehealth/profiles/{id}", tag = "telehealth", params(("id" = String, Path)), request_body = ProfileInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 200, body = Profile)))]
async fn update_profile(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<ProfileInput>,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(
        app.update_telehealth_profile(&a.principal, &a.ctx, &id, b)
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// End the profile's active conferences (Epic is told) instead of refusing.
    force: Option<bool>,
}

/// Remove a telehealth profile and its launch routes (old links then answer "integration not
/// found"). Refused with 409 while conferences are active, unless `force=true`. History stays.
#[utoipa::path(delete, path = "/telehealth/profiles/{id}", tag = "telehealth", params(("id" = String, Path), DeleteQuery),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 204, description = "Removed")))]
async fn delete_profile(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    app.delete_telehealth_profile(&a.principal, &a.ctx, &id, q.force.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Active and historic conferences, newest first. Patient names are shown (and searchable)
/// only for roles that may see patient data.
#[utoipa::path(get, path = "/telehealth/conferences", tag = "telehealth", params(ConferenceQuery),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = ConferencePage)))]
async fn list_conferences(
    a: ReadAccess,
    State(app): State<App>,
    Query(q): Query<ConferenceQuery>,
) -> Result<Json<ConferencePage>, ApiError> {
    Ok(Json(app.list_conferences(&a.principal, &q).await?))
}

/// One conference with its participant history.
#[utoipa::path(get, path = "/telehealth/conferences/{id}", tag = "telehealth", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])),
    responses((status = 200, body = ConferenceView)))]
async fn get_conference(
    a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<ConferenceView>, ApiError> {
    Ok(Json(app.get_conference(&a.principal, &id).await?))
}

/// End a conference now; Epic is told the call ended.
#[utoipa::path(post, path = "/telehealth/conferences/{id}/end", tag = "telehealth", params(("id" = String, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])),
    responses((status = 200, body = ConferenceView)))]
async fn end_conference(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<ConferenceView>, ApiError> {
    Ok(Json(app.end_conference(&a.principal, &a.ctx, &id).await?))
}
