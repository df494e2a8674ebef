//! Console pages for telehealth: profiles (create, remove) and the conference status pages
//! (active and historic, search, paging, detail, end).

use super::{Console, app_error, fmt_time, render};
use crate::AppState;
use crate::error::{Form, Query};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use switchboard_app::AppError;
use switchboard_app::telehealth::{
    AppClientsInput, ClientInput, ConferenceQuery, ConferenceView, Profile, ProfileInput,
};
use switchboard_domain::Permission;

pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/console/telehealth",
            get(profiles_page).post(create_profile),
        )
        .route(
            "/console/telehealth/profiles/{id}/remove",
            post(remove_profile),
        )
        .route("/console/telehealth/conferences", get(conferences_page))
        .route("/console/telehealth/conferences/{id}", get(conference_page))
        .route(
            "/console/telehealth/conferences/{id}/end",
            post(end_conference),
        )
}

struct EnvOption {
    id: String,
    label: String,
}

#[derive(Template)]
#[template(path = "telehealth.html")]
struct ProfilesPage {
    chrome: super::Chrome,
    notice: Option<String>,
    error: Option<String>,
    profiles: Vec<Profile>,
    envs: Vec<EnvOption>,
    can_admin: bool,
}

async fn profiles_with(
    s: &AppState,
    c: &Console,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let profiles = match s.app.list_telehealth_profiles().await {
        Ok(p) => p,
        Err(e) => return app_error(c.chrome("telehealth"), e),
    };
    let envs = match s.app.list_environments().await {
        Ok(e) => e,
        Err(e) => return app_error(c.chrome("telehealth"), e),
    };
    render(
        status,
        &ProfilesPage {
            chrome: c.chrome("telehealth"),
            notice,
            error,
            profiles,
            envs: envs
                .into_iter()
                .map(|e| EnvOption {
                    label: format!("{} ({})", e.name, e.kind.replace('_', "-")),
                    id: e.id,
                })
                .collect(),
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn profiles_page(State(s): State<AppState>, c: Console) -> Response {
    profiles_with(&s, &c, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
struct NewProfileForm {
    csrf: String,
    name: String,
    environment_id: String,
    encryption: String,
    key: String,
    provider_client_id: String,
    provider_client_secret: String,
    patient_client_id: String,
    patient_client_secret: String,
}

async fn create_profile(
    State(s): State<AppState>,
    c: Console,
    Form(f): Form<NewProfileForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, "telehealth") {
        return r;
    }
    // The clients entered here are the variant of the chosen environment's kind.
    let production = s
        .app
        .get_environment(&f.environment_id)
        .await
        .is_ok_and(|e| e.kind == "production");
    let app = |id: String, secret: String| {
        let c = Some(ClientInput {
            client_id: id,
            client_secret: Some(secret),
        });
        if production {
            AppClientsInput {
                production: c,
                non_production: None,
            }
        } else {
            AppClientsInput {
                production: None,
                non_production: c,
            }
        }
    };
    let input = ProfileInput {
        name: f.name,
        environment_id: f.environment_id,
        encryption: Some(if f.encryption == "aes128" {
            switchboard_app::telehealth::Encryption::Aes128
        } else {
            switchboard_app::telehealth::Encryption::Aes256
        }),
        key: Some(f.key),
        provider_app: app(f.provider_client_id, f.provider_client_secret),
        patient_app: app(f.patient_client_id, f.patient_client_secret),
        ..ProfileInput::default()
    };
    match s
        .app
        .create_telehealth_profile(&c.principal, &c.ctx, input, None)
        .await
    {
        Ok(p) => {
            profiles_with(
                &s,
                &c,
                StatusCode::OK,
                Some(format!(
                    "Profile `{}` created. Put its launch URLs and redirect URIs in Epic.",
                    p.name
                )),
                None,
            )
            .await
        }
        Err(AppError::Validation(v)) => {
            profiles_with(
                &s,
                &c,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(v.to_string()),
            )
            .await
        }
        Err(e) => app_error(c.chrome("telehealth"), e),
    }
}

#[derive(Deserialize)]
struct RemoveForm {
    csrf: String,
    force: Option<String>,
}

async fn remove_profile(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<RemoveForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, "telehealth") {
        return r;
    }
    match s
        .app
        .delete_telehealth_profile(&c.principal, &c.ctx, &id, f.force.is_some())
        .await
    {
        Ok(()) => {
            profiles_with(
                &s,
                &c,
                StatusCode::OK,
                Some(
                    "Profile removed; its launch links now answer \"integration not found\"."
                        .to_owned(),
                ),
                None,
            )
            .await
        }
        Err(AppError::Conflict(m)) => {
            profiles_with(&s, &c, StatusCode::CONFLICT, None, Some(m)).await
        }
        Err(e) => app_error(c.chrome("telehealth"), e),
    }
}

struct Row {
    id: String,
    name: String,
    state: String,
    started: String,
    duration: String,
    participants: String,
}

fn duration(secs: i64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

fn row(c: &ConferenceView) -> Row {
    Row {
        id: c.id.clone(),
        name: c.name.clone(),
        state: c.state.clone(),
        started: fmt_time(c.started_at),
        duration: c.duration_secs.map_or_else(
            || duration((switchboard_app::now_ms() - c.started_at) / 1000) + " (running)",
            duration,
        ),
        participants: c
            .participants
            .iter()
            .map(|p| format!("{} ({}, {})", p.name, p.role, p.state))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[derive(Template)]
#[template(path = "conferences.html")]
struct ConferencesPage {
    chrome: super::Chrome,
    state: String,
    q: String,
    rows: Vec<Row>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConferencesForm {
    state: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
}

async fn conferences_page(
    State(s): State<AppState>,
    c: Console,
    Query(f): Query<ConferencesForm>,
) -> Response {
    let state = f
        .state
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "active".to_owned());
    let q = f.q.unwrap_or_default();
    let query = ConferenceQuery {
        state: Some(state.clone()),
        q: Some(q.clone()).filter(|q| !q.is_empty()),
        cursor: f.cursor,
        limit: Some(50),
        profile_id: None,
    };
    match s.app.list_conferences(&c.principal, &query).await {
        Ok(page) => {
            let next = page.next_cursor.map(|cur| {
                let mut u = url::form_urlencoded::Serializer::new(String::new());
                u.append_pair("state", &state)
                    .append_pair("q", &q)
                    .append_pair("cursor", &cur);
                format!("/console/telehealth/conferences?{}", u.finish())
            });
            render(
                StatusCode::OK,
                &ConferencesPage {
                    chrome: c.chrome("telehealth"),
                    rows: page.items.iter().map(row).collect(),
                    state,
                    q,
                    next,
                },
            )
        }
        Err(e) => app_error(c.chrome("telehealth"), e),
    }
}

struct ParticipantLine {
    name: String,
    role: String,
    state: String,
    arrived: String,
    joined: String,
    left: String,
    token: String,
}

#[derive(Template)]
#[template(path = "conference.html")]
struct ConferencePage {
    chrome: super::Chrome,
    c: Row,
    reason: String,
    epic_connected: String,
    epic_ended: String,
    participants: Vec<ParticipantLine>,
    can_operate: bool,
}

fn opt_time(t: Option<i64>) -> String {
    t.map(fmt_time).unwrap_or_else(|| "—".to_owned())
}

async fn conference_page(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
) -> Response {
    match s.app.get_conference(&c.principal, &id).await {
        Ok(v) => render(
            StatusCode::OK,
            &ConferencePage {
                chrome: c.chrome("telehealth"),
                reason: v.ended_reason.clone().unwrap_or_default(),
                epic_connected: opt_time(v.epic_connected_at),
                epic_ended: opt_time(v.epic_ended_at),
                participants: v
                    .participants
                    .iter()
                    .map(|p| ParticipantLine {
                        name: p.name.clone(),
                        role: p.role.clone(),
                        state: p.state.clone(),
                        arrived: fmt_time(p.arrived_at),
                        joined: opt_time(p.joined_at),
                        left: opt_time(p.left_at),
                        token: match (&p.token_error, p.token_expires_at) {
                            (Some(e), _) => e.clone(),
                            (None, Some(t)) => format!(
                                "valid until {} ({} renewals)",
                                fmt_time(t),
                                p.token_renewals
                            ),
                            (None, None) => "released".to_owned(),
                        },
                    })
                    .collect(),
                c: row(&v),
                can_operate: c.allows(Permission::Operate),
            },
        ),
        Err(e) => app_error(c.chrome("telehealth"), e),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn end_conference(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Operate, "telehealth") {
        return r;
    }
    match s.app.end_conference(&c.principal, &c.ctx, &id).await {
        Ok(_) => Redirect::to(&format!("/console/telehealth/conferences/{id}")).into_response(),
        Err(e) => app_error(c.chrome("telehealth"), e),
    }
}
