//! Shared devices: the admin API (`/admin/api/v1/devices/...`) and the agent protocol
//! (`/agent/v1/...`, authenticated by the enrolment token or the device credential).

use crate::AppState;
use crate::auth::{AdminAccess, OperatorAccess, ReadAccess, bearer_in};
use crate::error::{ApiError, Json, Path, Query};
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use std::time::Duration;
use switchboard_app::App;
use switchboard_app::devices::{
    CreatedEnrolmentToken, CreatedLocation, DeviceGroup, DeviceGroupInput, DeviceUser,
    DeviceUserInput, EnrolmentToken, EnrolmentTokenInput, ImportReport, Location, LocationInput,
};
use switchboard_app::lending::{
    AgentCheckoutInput, AgentCommand, AgentEventInput, Checkout, CheckoutInput, CommandInput,
    CommandResultInput, CommandResultItem, CommandResultOutcome, CommandView, Device, DeviceDetail,
    DeviceQuery, DeviceUpdate, EnrolInput, Enrolled, HeartbeatAnswer, HeartbeatInput,
    LocationSummary, LostInput, Receipt,
};
use switchboard_store::DeviceRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices))
        .routes(routes!(get_device, update_device))
        .routes(routes!(checkin_device))
        .routes(routes!(revoke_device))
        .routes(routes!(release_device))
        .routes(routes!(mark_lost))
        .routes(routes!(send_command))
        .routes(routes!(checkout))
        .routes(routes!(get_receipt))
        .routes(routes!(dashboard))
        .routes(routes!(list_locations, save_location))
        .routes(routes!(delete_location))
        .routes(routes!(list_groups, create_group))
        .routes(routes!(get_group, update_group, delete_group))
        .routes(routes!(list_enrolment_tokens, create_enrolment_token))
        .routes(routes!(revoke_enrolment_token))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
        .routes(routes!(import_users))
        .routes(routes!(appconfig))
        .routes(routes!(list_sso_profiles, import_sso_profile))
        .routes(routes!(
            get_sso_profile,
            replace_sso_profile,
            delete_sso_profile
        ))
        .routes(routes!(export_sso_profile))
        .routes(routes!(list_credentials, set_credential))
        .routes(routes!(delete_credential))
        .routes(routes!(import_credentials))
}

pub fn agent_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enrol))
        .routes(routes!(heartbeat))
        .routes(routes!(poll_commands))
        .routes(routes!(command_result))
        .routes(routes!(command_results))
        .routes(routes!(agent_checkout))
        .routes(routes!(agent_checkin))
        .routes(routes!(agent_event))
        .routes(routes!(agent_save_credential))
        .routes(routes!(agent_autofill))
}

fn idempotency_key(h: &HeaderMap) -> Option<String> {
    h.get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

// --- devices

/// Devices, with their holder, readiness and Install IDs. `status=overdue` lists the overdue ones.
#[utoipa::path(get, path = "/devices", tag = "devices", params(DeviceQuery),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<Device>)))]
async fn list_devices(
    _a: ReadAccess,
    State(app): State<App>,
    Query(q): Query<DeviceQuery>,
) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(app.list_devices(&q).await?))
}

/// One device (by id or serial) with its receipts, commands and timeline.
#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = DeviceDetail)))]
async fn get_device(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    Ok(Json(app.get_device(&id).await?))
}

/// Rename a device, set its slot, move it to another location or group.
#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", params(("id" = String, Path)), request_body = DeviceUpdate,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = Device)))]
async fn update_device(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<DeviceUpdate>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(app.update_device(&a.principal, &a.ctx, &id, b).await?))
}

/// Check a device in: runs its group's workflow and answers with the receipt. A device that is
/// not checked out answers with its last receipt (`already_checked_in`).
#[utoipa::path(post, path = "/devices/{id}/checkin", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 200, body = Receipt)))]
async fn checkin_device(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Receipt>, ApiError> {
    let who = a.principal.actor();
    Ok(Json(app.checkin(&a.principal, &a.ctx, &id, &who).await?))
}

/// Revoke a device's credential (its agent must enrol again).
#[utoipa::path(post, path = "/devices/{id}/revoke", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204)))]
async fn revoke_device(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.revoke_device(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mark a device that needed attention as available again.
#[utoipa::path(post, path = "/devices/{id}/release", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 200, body = Device)))]
async fn release_device(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(app.release_device(&a.principal, &a.ctx, &id).await?))
}

/// Put a device into lost mode: it is locked with a message and the device-events webhook is
/// told; docking it again ends lost mode.
#[utoipa::path(post, path = "/devices/{id}/lost", tag = "devices", params(("id" = String, Path)), request_body = LostInput,
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 200, body = Device)))]
async fn mark_lost(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<LostInput>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(app.mark_lost(&a.principal, &a.ctx, &id, b).await?))
}

/// Send a device a command (lock, show_message, lock_with_message).
#[utoipa::path(post, path = "/devices/{id}/commands", tag = "devices", params(("id" = String, Path)), request_body = CommandInput,
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 201, body = CommandView)))]
async fn send_command(
    a: OperatorAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<CommandInput>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.send_command(&a.principal, &a.ctx, &id, b).await?),
    ))
}

/// Check a device out to a clinician (by badge or user), a named device or the best ready one at
/// a location. Send an `Idempotency-Key` header to make retries safe.
#[utoipa::path(post, path = "/devices/checkout", tag = "devices", request_body = CheckoutInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat a request safely: the first answer is returned again")),
    security(("api_token" = ["operate"]), ("console_session" = ["operate"])), responses((status = 201, body = Checkout)))]
async fn checkout(
    a: OperatorAccess,
    State(app): State<App>,
    headers: HeaderMap,
    Json(b): Json<CheckoutInput>,
) -> Result<(StatusCode, Json<Checkout>), ApiError> {
    let key = idempotency_key(&headers);
    Ok((
        StatusCode::CREATED,
        Json(
            app.checkout(&a.principal, &a.ctx, b, "operator", key.as_deref())
                .await?,
        ),
    ))
}

/// A check-in receipt: one row per workflow step with its status and a plain-language detail.
#[utoipa::path(get, path = "/devices/checkins/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Receipt)))]
async fn get_receipt(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Receipt>, ApiError> {
    Ok(Json(app.get_receipt(&id).await?))
}

/// Per location: available, checked out, overdue, returning, needing attention, not ready.
#[utoipa::path(get, path = "/devices/dashboard", tag = "devices",
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<LocationSummary>)))]
async fn dashboard(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<LocationSummary>>, ApiError> {
    Ok(Json(app.location_summaries().await?))
}

// --- locations

/// Locations (a dock and its kiosk).
#[utoipa::path(get, path = "/devices/locations", tag = "devices",
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<Location>)))]
async fn list_locations(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<Location>>, ApiError> {
    Ok(Json(app.list_locations().await?))
}

/// Create a location or rename one; either way a new kiosk key is issued and shown once.
#[utoipa::path(post, path = "/devices/locations", tag = "devices", request_body = LocationInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = CreatedLocation)))]
async fn save_location(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<LocationInput>,
) -> Result<(StatusCode, Json<CreatedLocation>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.save_location(&a.principal, &a.ctx, b).await?),
    ))
}

/// Remove a location without devices.
#[utoipa::path(delete, path = "/devices/locations/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204)))]
async fn delete_location(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_location(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- groups

/// Device groups: lending period, check-in workflows per platform, required apps.
#[utoipa::path(get, path = "/devices/groups", tag = "devices",
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<DeviceGroup>)))]
async fn list_groups(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<DeviceGroup>>, ApiError> {
    Ok(Json(app.list_device_groups().await?))
}

/// Create a device group.
#[utoipa::path(post, path = "/devices/groups", tag = "devices", request_body = DeviceGroupInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = DeviceGroup)))]
async fn create_group(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<DeviceGroupInput>,
) -> Result<(StatusCode, Json<DeviceGroup>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.save_device_group(&a.principal, &a.ctx, None, b).await?),
    ))
}

/// One device group (by id or name).
#[utoipa::path(get, path = "/devices/groups/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = DeviceGroup)))]
async fn get_group(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<DeviceGroup>, ApiError> {
    Ok(Json(app.get_device_group(&id).await?))
}

/// Replace a device group (its devices' readiness is worked out again).
#[utoipa::path(put, path = "/devices/groups/{id}", tag = "devices", params(("id" = String, Path)), request_body = DeviceGroupInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = DeviceGroup)))]
async fn update_group(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<DeviceGroupInput>,
) -> Result<Json<DeviceGroup>, ApiError> {
    Ok(Json(
        app.save_device_group(&a.principal, &a.ctx, Some(&id), b)
            .await?,
    ))
}

/// Remove a device group without devices.
#[utoipa::path(delete, path = "/devices/groups/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204)))]
async fn delete_group(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_device_group(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- enrolment tokens

/// Enrolment tokens (secrets are never shown again).
#[utoipa::path(get, path = "/devices/enrolment-tokens", tag = "devices",
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<EnrolmentToken>)))]
async fn list_enrolment_tokens(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<EnrolmentToken>>, ApiError> {
    Ok(Json(app.list_enrolment_tokens().await?))
}

/// Create an enrolment token for a device group (and optionally a location); shown once.
#[utoipa::path(post, path = "/devices/enrolment-tokens", tag = "devices", request_body = EnrolmentTokenInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = CreatedEnrolmentToken)))]
async fn create_enrolment_token(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<EnrolmentTokenInput>,
) -> Result<(StatusCode, Json<CreatedEnrolmentToken>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_enrolment_token(&a.principal, &a.ctx, b).await?),
    ))
}

/// Revoke an enrolment token (enrolled devices keep working).
#[utoipa::path(delete, path = "/devices/enrolment-tokens/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204)))]
async fn revoke_enrolment_token(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.revoke_enrolment_token(&a.principal, &a.ctx, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- the directory of device users

/// Clinicians who borrow devices (badges and passwords are never returned).
#[utoipa::path(get, path = "/devices/users", tag = "devices",
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<DeviceUser>)))]
async fn list_users(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<DeviceUser>>, ApiError> {
    Ok(Json(app.list_device_users().await?))
}

/// Add a device user.
#[utoipa::path(post, path = "/devices/users", tag = "devices", request_body = DeviceUserInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = DeviceUser)))]
async fn create_user(
    a: AdminAccess,
    State(app): State<App>,
    Json(b): Json<DeviceUserInput>,
) -> Result<(StatusCode, Json<DeviceUser>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.save_device_user(&a.principal, &a.ctx, None, b).await?),
    ))
}

/// One device user (by id or username).
#[utoipa::path(get, path = "/devices/users/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = DeviceUser)))]
async fn get_user(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<DeviceUser>, ApiError> {
    Ok(Json(app.get_device_user(&id).await?))
}

/// Change a device user (omitted fields are kept; an empty badge or password removes it).
#[utoipa::path(patch, path = "/devices/users/{id}", tag = "devices", params(("id" = String, Path)), request_body = DeviceUserInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = DeviceUser)))]
async fn update_user(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<DeviceUserInput>,
) -> Result<Json<DeviceUser>, ApiError> {
    Ok(Json(
        app.save_device_user(&a.principal, &a.ctx, Some(&id), b)
            .await?,
    ))
}

/// Import device users from CSV (`username,display_name,badge,device_limit`); all or nothing.
#[utoipa::path(post, path = "/devices/users/import", tag = "devices", request_body(content = String, content_type = "text/csv"),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = ImportReport)))]
async fn import_users(
    a: AdminAccess,
    State(app): State<App>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<ImportReport>, ApiError> {
    csv_body(&headers)?;
    Ok(Json(
        app.import_device_users(&a.principal, &a.ctx, &body).await?,
    ))
}

/// Refuses a CSV upload sent as anything but text/csv (or text/plain).
fn csv_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("text/csv") && !ct.starts_with("text/plain") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "Send the file as text/csv.",
        ));
    }
    Ok(())
}

// --- the agent protocol

/// The device credential of an agent's request (`Authorization: Bearer`).
fn agent_credential(parts: &Parts) -> Result<&str, ApiError> {
    bearer_in(&parts.headers).ok_or_else(ApiError::unauthenticated)
}

/// A device agent, authenticated by its credential.
pub struct AgentDevice(pub DeviceRow);

impl<S: Send + Sync> FromRequestParts<S> for AgentDevice
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state).app;
        Ok(Self(
            app.authenticate_device(agent_credential(parts)?).await?,
        ))
    }
}

/// A device agent's id, for the requests an agent makes most (heartbeat, poll, results): its
/// credential checked against the database at most every few seconds (see
/// `switchboard_app::auth_cache`).
pub struct AgentDeviceId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AgentDeviceId
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state).app;
        Ok(Self(
            app.authenticate_device_id(agent_credential(parts)?).await?,
        ))
    }
}

/// Enrol a device (`Authorization: Bearer <enrolment token>`). Re-enrolling a serial replaces its
/// credential. Answers with the device credential, shown once.
#[utoipa::path(post, path = "/agent/v1/enrol", tag = "agent", request_body = EnrolInput,
    security(("enrolment_token" = [])), responses((status = 201, body = Enrolled)))]
async fn enrol(
    State(app): State<App>,
    headers: HeaderMap,
    Json(b): Json<EnrolInput>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    let token = bearer_in(&headers).ok_or_else(ApiError::unauthenticated)?;
    Ok((StatusCode::CREATED, Json(app.enrol_device(token, b).await?)))
}

/// Report battery, dock, location, app inventory and AppConfig.
#[utoipa::path(post, path = "/agent/v1/heartbeat", tag = "agent", request_body = HeartbeatInput,
    security(("device_credential" = [])), responses((status = 200, body = HeartbeatAnswer)))]
async fn heartbeat(
    AgentDeviceId(id): AgentDeviceId,
    State(app): State<App>,
    Json(b): Json<HeartbeatInput>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    Ok(Json(app.device_heartbeat(&id, b).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct PollQuery {
    /// Seconds to wait for a command (0 answers at once; capped by `agent_poll_max_secs`).
    wait: Option<u64>,
}

/// Long-poll for commands. Each is handed out again if no result arrives within 30 seconds.
#[utoipa::path(get, path = "/agent/v1/commands", tag = "agent", params(PollQuery),
    security(("device_credential" = [])), responses((status = 200, body = Vec<AgentCommand>)))]
async fn poll_commands(
    AgentDeviceId(id): AgentDeviceId,
    State(app): State<App>,
    Query(q): Query<PollQuery>,
) -> Result<Json<Vec<AgentCommand>>, ApiError> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0));
    Ok(Json(app.poll_commands(&id, wait).await?))
}

/// Report a command's result (repeating the same result is harmless).
#[utoipa::path(post, path = "/agent/v1/commands/{id}/result", tag = "agent", params(("id" = String, Path)), request_body = CommandResultInput,
    security(("device_credential" = [])), responses((status = 200, body = CommandView)))]
async fn command_result(
    AgentDeviceId(device): AgentDeviceId,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<CommandResultInput>,
) -> Result<Json<CommandView>, ApiError> {
    Ok(Json(app.command_result(&device, &id, b).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResultsReport {
    /// 1 to 50 results, each for a different command.
    results: Vec<CommandResultItem>,
}

/// Report the results of several commands at once (an agent that ran the commands of one poll).
/// A malformed report changes nothing (422); otherwise each result gets its own outcome, in the
/// report's order: `recorded` (a repeat of the same result too), `not_found` or `conflict`.
#[utoipa::path(post, path = "/agent/v1/commands/results", tag = "agent", request_body = ResultsReport,
    security(("device_credential" = [])), responses((status = 200, body = Vec<CommandResultOutcome>)))]
async fn command_results(
    AgentDeviceId(id): AgentDeviceId,
    State(app): State<App>,
    Json(b): Json<ResultsReport>,
) -> Result<Json<Vec<CommandResultOutcome>>, ApiError> {
    Ok(Json(app.command_results(&id, b.results).await?))
}

/// Check this device out on the device itself (username + password, or badge).
#[utoipa::path(post, path = "/agent/v1/checkout", tag = "agent", request_body = AgentCheckoutInput,
    security(("device_credential" = [])), responses((status = 201, body = Checkout)))]
async fn agent_checkout(
    AgentDevice(d): AgentDevice,
    State(app): State<App>,
    Json(b): Json<AgentCheckoutInput>,
) -> Result<(StatusCode, Json<Checkout>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.agent_checkout(&d.id, b).await?),
    ))
}

/// Check this device in; answers with the receipt.
#[utoipa::path(post, path = "/agent/v1/checkin", tag = "agent",
    security(("device_credential" = [])), responses((status = 200, body = Receipt)))]
async fn agent_checkin(
    AgentDevice(d): AgentDevice,
    State(app): State<App>,
) -> Result<Json<Receipt>, ApiError> {
    Ok(Json(app.agent_checkin(&d).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct AppConfigQuery {
    /// Answer with this one document (a `filename` of the list) as a download instead of JSON.
    file: Option<String>,
}

/// Managed AppConfig for Rover / Haiku / Canto and the locker app, per MDM (vendor-neutral
/// AppConfig XML, Workspace ONE table, Intune XML, Jamf plist), checked first: Rover and the
/// locker must use the same variable for Enhanced Rover logout, the unlock PIN is 4–8 digits, the
/// configuration URLs look like Epic's.
#[utoipa::path(post, path = "/devices/appconfig", tag = "devices", request_body = switchboard_app::appconfig::AppConfigPlan,
    params(AppConfigQuery),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])),
    responses((status = 200, body = Vec<switchboard_app::appconfig::AppConfigFile>)))]
async fn appconfig(
    _a: AdminAccess,
    Query(q): Query<AppConfigQuery>,
    Json(plan): Json<switchboard_app::appconfig::AppConfigPlan>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    Ok(match q.file {
        None => Json(switchboard_app::appconfig::render_appconfig(&plan)?).into_response(),
        Some(name) => {
            let f = switchboard_app::appconfig::render_appconfig_file(&plan, &name)?;
            super::attachment(&f.media_type, &f.filename, f.content)
        }
    })
}

/// Report an event: `emergency_unlock` (the device was unlocked with the emergency PIN).
#[utoipa::path(post, path = "/agent/v1/events", tag = "agent", request_body = AgentEventInput,
    security(("device_credential" = [])), responses((status = 204)))]
async fn agent_event(
    AgentDevice(d): AgentDevice,
    State(app): State<App>,
    Json(b): Json<AgentEventInput>,
) -> Result<StatusCode, ApiError> {
    app.agent_event(&d, b).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- SSO credential profiles

fn xml_body(headers: &HeaderMap, body: String) -> Result<String, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/xml") || ct.starts_with("text/xml")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "Send the profile as application/xml.",
        ));
    }
    Ok(body)
}

/// SSO credential profiles (the `<SSO>` documents of Password AutoFill).
#[utoipa::path(get, path = "/devices/sso-profiles", tag = "devices",
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<switchboard_app::sso::SsoProfile>)))]
async fn list_sso_profiles(
    _a: ReadAccess,
    State(app): State<App>,
) -> Result<Json<Vec<switchboard_app::sso::SsoProfile>>, ApiError> {
    Ok(Json(app.list_sso_profiles().await?))
}

/// Import an `<SSO>` profile (application/xml). DOCTYPE / entities, oversized or deeply nested
/// documents, apps without USR and PWD controls and names that are neither a domain nor equal
/// to `desc` are refused, and nothing is stored.
#[utoipa::path(post, path = "/devices/sso-profiles", tag = "devices", request_body(content = String, content_type = "application/xml"),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 201, body = switchboard_app::sso::SsoProfile)))]
async fn import_sso_profile(
    a: AdminAccess,
    State(app): State<App>,
    headers: HeaderMap,
    body: String,
) -> Result<(StatusCode, Json<switchboard_app::sso::SsoProfile>), ApiError> {
    let xml = xml_body(&headers, body)?;
    Ok((
        StatusCode::CREATED,
        Json(
            app.save_sso_profile(&a.principal, &a.ctx, None, &xml)
                .await?,
        ),
    ))
}

/// One SSO profile with the apps it covers.
#[utoipa::path(get, path = "/devices/sso-profiles/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = switchboard_app::sso::SsoProfile)))]
async fn get_sso_profile(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<switchboard_app::sso::SsoProfile>, ApiError> {
    Ok(Json(app.get_sso_profile(&id).await?))
}

/// Replace an SSO profile's document (application/xml).
#[utoipa::path(put, path = "/devices/sso-profiles/{id}", tag = "devices", params(("id" = String, Path)),
    request_body(content = String, content_type = "application/xml"),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = switchboard_app::sso::SsoProfile)))]
async fn replace_sso_profile(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<switchboard_app::sso::SsoProfile>, ApiError> {
    let xml = xml_body(&headers, body)?;
    Ok(Json(
        app.save_sso_profile(&a.principal, &a.ctx, Some(&id), &xml)
            .await?,
    ))
}

/// Remove an SSO profile.
#[utoipa::path(delete, path = "/devices/sso-profiles/{id}", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204)))]
async fn delete_sso_profile(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_sso_profile(&a.principal, &a.ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Export an SSO profile: the same elements, attributes and values as imported.
#[utoipa::path(get, path = "/devices/sso-profiles/{id}/xml", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, content_type = "application/xml", body = String)))]
async fn export_sso_profile(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<([(header::HeaderName, &'static str); 1], String), ApiError> {
    Ok((
        [(header::CONTENT_TYPE, "application/xml")],
        app.export_sso_profile(&id).await?,
    ))
}

// --- the credential vault

/// A device user's SSO credentials (usernames only; passwords are never returned).
#[utoipa::path(get, path = "/devices/users/{id}/credentials", tag = "devices", params(("id" = String, Path)),
    security(("api_token" = ["read"]), ("console_session" = ["read"])), responses((status = 200, body = Vec<switchboard_app::sso::Credential>)))]
async fn list_credentials(
    _a: ReadAccess,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Vec<switchboard_app::sso::Credential>>, ApiError> {
    Ok(Json(app.list_sso_credentials(&id).await?))
}

/// Set a device user's username and password for an SSO profile (sealed at rest).
#[utoipa::path(put, path = "/devices/users/{id}/credentials", tag = "devices", params(("id" = String, Path)),
    request_body = switchboard_app::sso::CredentialInput,
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = switchboard_app::sso::Credential)))]
async fn set_credential(
    a: AdminAccess,
    State(app): State<App>,
    Path(id): Path<String>,
    Json(b): Json<switchboard_app::sso::CredentialInput>,
) -> Result<Json<switchboard_app::sso::Credential>, ApiError> {
    Ok(Json(
        app.set_sso_credential(&a.principal, &a.ctx, &id, b).await?,
    ))
}

/// Remove a device user's credential for an SSO profile (its sealed password goes too).
#[utoipa::path(delete, path = "/devices/users/{id}/credentials/{profile_id}", tag = "devices",
    params(("id" = String, Path), ("profile_id" = String, Path)),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 204)))]
async fn delete_credential(
    a: AdminAccess,
    State(app): State<App>,
    Path((id, profile_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    app.delete_sso_credential(&a.principal, &a.ctx, &id, &profile_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Import SSO credentials from CSV (`user,profile,username,password`; `user` a directory
/// username or id, `profile` a profile id or name); all or nothing.
#[utoipa::path(post, path = "/devices/credentials/import", tag = "devices", request_body(content = String, content_type = "text/csv"),
    security(("api_token" = ["administer"]), ("console_session" = ["administer"])), responses((status = 200, body = ImportReport)))]
async fn import_credentials(
    a: AdminAccess,
    State(app): State<App>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<ImportReport>, ApiError> {
    csv_body(&headers)?;
    Ok(Json(
        app.import_sso_credentials(&a.principal, &a.ctx, &body)
            .await?,
    ))
}

/// Save or update the holder's credential after a successful manual sign-in on the device.
#[utoipa::path(post, path = "/agent/v1/credentials", tag = "agent", request_body = switchboard_app::sso::CredentialInput,
    security(("device_credential" = [])), responses((status = 200, body = switchboard_app::sso::Credential)))]
async fn agent_save_credential(
    AgentDevice(d): AgentDevice,
    State(app): State<App>,
    Json(b): Json<switchboard_app::sso::CredentialInput>,
) -> Result<Json<switchboard_app::sso::Credential>, ApiError> {
    Ok(Json(app.agent_save_credential(&d, b).await?))
}

/// Password AutoFill for the user holding this device: one credential for the domain (one tap),
/// or the list to choose from. Refused when nobody holds the device; limited per minute.
#[utoipa::path(post, path = "/agent/v1/autofill", tag = "agent", request_body = switchboard_app::sso::AutofillInput,
    security(("device_credential" = [])), responses((status = 200, body = switchboard_app::sso::Autofill)))]
async fn agent_autofill(
    AgentDevice(d): AgentDevice,
    State(app): State<App>,
    Json(b): Json<switchboard_app::sso::AutofillInput>,
) -> Result<Json<switchboard_app::sso::Autofill>, ApiError> {
    Ok(Json(app.autofill(&d, b).await?))
}
