//! The public telehealth surface Epic and browsers reach: launch, Epic's redirect back, and the
//! participant's join page. Failures are HTML pages that name the cause and leak nothing.

use crate::AppState;
use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use switchboard_app::telehealth::{LaunchError, RoomView};
use switchboard_app::{App, AppError};
use switchboard_domain::telehealth::LaunchRole;

const STATE_COOKIE: &str = "sb_th_state";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/telehealth/v1/{role}/launch/{profile_id}", get(launch))
        .route(
            "/telehealth/v1/{role}/oauth2authorized/{profile_id}",
            get(authorized),
        )
        .route("/telehealth/v1/room/{participant_id}", get(room))
        .route(
            "/telehealth/v1/room/{participant_id}/state",
            get(room_state),
        )
        .route("/telehealth/v1/room/{participant_id}/leave", post(leave))
}

#[derive(Template)]
#[template(path = "telehealth_error.html")]
struct ErrorPage {
    code: &'static str,
    title: &'static str,
    explanation: String,
    advice: &'static str,
    request_id: String,
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a telehealth page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The named error page for a launch failure. Causes are logged by kind, never with link data.
fn error_page(e: &LaunchError, headers: &HeaderMap) -> Response {
    let (status, code, title, explanation, advice) = match e {
        LaunchError::NotFound => (
            StatusCode::NOT_FOUND,
            "integration_not_found",
            "Integration not found",
            "This video-visit link points to a telehealth integration that does not exist here (it may have been removed).".to_owned(),
            "Ask your clinic's Epic team to check the telehealth profile in the link.",
        ),
        LaunchError::MetadataUnreachable(why) => (
            StatusCode::BAD_GATEWAY,
            "metadata_unreachable",
            "Epic could not be reached",
            format!("The video service could not read Epic's sign-in details: {why}."),
            "Try again in a few minutes; if it persists, your help desk should check the connection to Epic.",
        ),
        LaunchError::OAuth(why) => (
            StatusCode::BAD_REQUEST,
            "oauth_error",
            "Sign-in with Epic failed",
            format!("The sign-in with Epic did not complete: {why}."),
            "Start the video visit again from Epic or MyChart.",
        ),
        LaunchError::Expired => (
            StatusCode::GONE,
            "link_expired",
            "This link has expired",
            "Video-visit links work for a short time only.".to_owned(),
            "Start the video visit again from Epic or MyChart to get a fresh link.",
        ),
        LaunchError::AlreadyUsed => (
            StatusCode::CONFLICT,
            "link_used",
            "This link was already used",
            "Each video-visit link can be opened once.".to_owned(),
            "Start the video visit again from Epic or MyChart to get a fresh link.",
        ),
        LaunchError::Undecryptable => (
            StatusCode::BAD_REQUEST,
            "link_unreadable",
            "This link could not be read",
            "The video-visit link is damaged or was not made for this service.".to_owned(),
            "Start the video visit again from Epic or MyChart; if it keeps happening, the encryption key in Epic and here may differ.",
        ),
        LaunchError::Internal(err) => {
            tracing::error!(error = %err, "telehealth launch failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Something went wrong",
                "The video service could not complete your request.".to_owned(),
                "Try again; if it persists, give your help desk the reference below.",
            )
        }
    };
    if !matches!(e, LaunchError::Internal(_)) {
        tracing::info!(cause = code, "telehealth launch refused");
    }
    metrics::counter!("switchboard_telehealth_launch_failures_total", "cause" => code).increment(1);
    html(
        status,
        &ErrorPage {
            code,
            title,
            explanation,
            advice,
            request_id: request_id(headers),
        },
    )
}

fn secure(app: &App) -> &'static str {
    if app.config().public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn participant_cookie(participant_id: &str) -> String {
    format!("sb_tp_{}", participant_id.replace('-', ""))
}

/// `GET /telehealth/v1/{provider|patient}/launch/{profile_id}?iss=..&launch=..&<param>=..`
async fn launch(
    State(app): State<App>,
    Path((role, profile_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(role) = LaunchRole::parse(&role) else {
        return error_page(&LaunchError::NotFound, &headers);
    };
    match app.telehealth_launch(role, &profile_id, &q).await {
        Ok(r) => with_cookie(
            Redirect::to(&r.authorize_url).into_response(),
            &format!(
                "{STATE_COOKIE}={}; Path=/telehealth/v1/; Max-Age=600; HttpOnly; SameSite=Lax{}",
                r.state,
                secure(&app)
            ),
        ),
        Err(e) => error_page(&e, &headers),
    }
}

/// `GET /telehealth/v1/{provider|patient}/oauth2authorized/{profile_id}?code=..&state=..`
async fn authorized(
    State(app): State<App>,
    Path((role, profile_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(role) = LaunchRole::parse(&role) else {
        return error_page(&LaunchError::NotFound, &headers);
    };
    let browser_state = crate::auth::cookie_in(&headers, STATE_COOKIE);
    match app
        .telehealth_authorized(role, &profile_id, &q, browser_state)
        .await
    {
        Ok(t) => {
            metrics::counter!("switchboard_telehealth_participants_admitted_total", "role" => role.as_str())
                .increment(1);
            let r =
                Redirect::to(&format!("/telehealth/v1/room/{}", t.participant_id)).into_response();
            let r = with_cookie(
                r,
                &format!(
                    "{}={}; Path=/telehealth/v1/room/{}; HttpOnly; SameSite=Lax{}",
                    participant_cookie(&t.participant_id),
                    t.session,
                    t.participant_id,
                    secure(&app)
                ),
            );
            with_cookie(
                r,
                &format!(
                    "{STATE_COOKIE}=; Path=/telehealth/v1/; Max-Age=0; HttpOnly; SameSite=Lax{}",
                    secure(&app)
                ),
            )
        }
        Err(e) => error_page(&e, &headers),
    }
}

#[derive(Template)]
#[template(path = "telehealth_room.html")]
struct RoomPage {
    room: RoomView,
    participant_id: String,
    refresh: bool,
}

async fn load_room(
    app: &App,
    participant_id: &str,
    headers: &HeaderMap,
) -> Result<RoomView, Response> {
    let session = crate::auth::cookie_in(headers, &participant_cookie(participant_id));
    app.participant_room(participant_id, session)
        .await
        .map_err(|e| match e {
            AppError::NotFound(_) => html(
                StatusCode::NOT_FOUND,
                &ErrorPage {
                    code: "not_your_visit",
                    title: "Visit not found",
                    explanation: "This page belongs to another browser's video visit, or the visit no longer exists.".to_owned(),
                    advice: "Start the video visit again from Epic or MyChart.",
                    request_id: request_id(headers),
                },
            ),
            other => crate::error::ApiError::from(other).into_response(),
        })
}

/// The join page: the conference, its participants, the lobby, the video link and a leave button.
async fn room(
    State(app): State<App>,
    Path(participant_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match load_room(&app, &participant_id, &headers).await {
        Ok(room) => {
            let refresh = room.conference_state == "active"
                && (room.my_state == "lobby"
                    || (room.my_state == "joined" && room.video_url.is_none()));
            html(
                StatusCode::OK,
                &RoomPage {
                    room,
                    participant_id,
                    refresh,
                },
            )
        }
        Err(r) => r,
    }
}

/// The join page's state as JSON (for polling clients).
async fn room_state(
    State(app): State<App>,
    Path(participant_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match load_room(&app, &participant_id, &headers).await {
        Ok(room) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(room)).into_response(),
        Err(r) => r,
    }
}

/// Leaves the visit (the conference ends when the last participant leaves).
async fn leave(
    State(app): State<App>,
    Path(participant_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = crate::auth::cookie_in(&headers, &participant_cookie(&participant_id));
    match app.participant_leave(&participant_id, session).await {
        Ok(()) => Redirect::to(&format!("/telehealth/v1/room/{participant_id}")).into_response(),
        Err(AppError::NotFound(_)) => match load_room(&app, &participant_id, &headers).await {
            Err(r) => r,
            Ok(_) => StatusCode::NOT_FOUND.into_response(),
        },
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}
