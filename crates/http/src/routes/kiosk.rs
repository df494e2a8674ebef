//! The kiosk beside a dock (`/kiosk/{location}`): a clinician taps a badge and is told which
//! device to take. No console session: the screen is set up once with the location's kiosk key
//! (`?key=`), which it keeps in an `HttpOnly; SameSite=Strict` cookie scoped to its own path.
//! Badge numbers are never echoed back.

use crate::AppState;
use crate::auth::cookie_in;
use crate::error::{Form, Path, Query};
use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use switchboard_app::lending::{CheckoutInput, Refusal};
use switchboard_app::{App, Principal, RequestContext};

const KEY_COOKIE: &str = "sb_kiosk";
/// Seconds the result of a tap stays on screen before the kiosk is ready for the next badge.
const RESULT_SECS: u32 = 8;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/kiosk/{location}", get(kiosk))
        .route("/kiosk/{location}/tap", post(tap))
}

/// What a tap produced.
enum Outcome {
    Ready {
        user: String,
        device: String,
        serial: String,
        slot: Option<String>,
        lending: String,
    },
    Refused {
        code: &'static str,
        message: String,
    },
}

#[derive(Template)]
#[template(path = "kiosk.html")]
struct KioskPage {
    location: String,
    location_name: String,
    outcome: Option<Outcome>,
    /// Makes a repeated submission of the same form (a double Enter) answer the first result.
    nonce: String,
    result_secs: u32,
}

#[derive(Template)]
#[template(path = "kiosk_setup.html")]
struct SetupPage {
    reason: &'static str,
}

fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a kiosk page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn not_set_up(reason: &'static str) -> Response {
    html(StatusCode::UNAUTHORIZED, &SetupPage { reason })
}

fn ctx(headers: &HeaderMap) -> RequestContext {
    RequestContext {
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// Whether the request carries this location's kiosk key in its cookie.
async fn key_ok(app: &App, location: &str, headers: &HeaderMap) -> Result<bool, Response> {
    let Some(key) = cookie_in(headers, KEY_COOKIE) else {
        return Ok(false);
    };
    app.kiosk_key_ok(location, key)
        .await
        .map_err(|e| crate::error::ApiError::from(e).into_response())
}

async fn location_name(app: &App, location: &str) -> String {
    app.list_locations()
        .await
        .ok()
        .and_then(|l| l.into_iter().find(|l| l.id == location))
        .map_or_else(|| location.to_owned(), |l| l.name)
}

async fn page(app: &App, location: String, outcome: Option<Outcome>) -> Response {
    let page = KioskPage {
        location_name: location_name(app, &location).await,
        location,
        outcome,
        nonce: switchboard_app::crypto::new_secret("tap"),
        result_secs: RESULT_SECS,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// `GET /kiosk/{location}[?key=K]`: with a key, remembers it and redirects to the bare URL;
/// else the tap form when the kiosk's cookie holds the key.
async fn kiosk(
    State(app): State<App>,
    Path(location): Path<String>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(key) = q.key.filter(|k| !k.is_empty()) {
        return match app.kiosk_key_ok(&location, &key).await {
            Ok(true) => {
                let secure = if app.config().public_url().starts_with("https://") {
                    "; Secure"
                } else {
                    ""
                };
                let cookie = format!(
                    "{KEY_COOKIE}={key}; Path=/kiosk/{location}; Max-Age=31536000; HttpOnly; SameSite=Strict{secure}"
                );
                let mut r = Redirect::to(&format!("/kiosk/{location}")).into_response();
                match HeaderValue::from_str(&cookie) {
                    Ok(v) => {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                        r
                    }
                    Err(_) => not_set_up("The kiosk key in the link is not usable."),
                }
            }
            Ok(false) => not_set_up("The kiosk key in the link is wrong or was replaced."),
            Err(e) => crate::error::ApiError::from(e).into_response(),
        };
    }
    match key_ok(&app, &location, &headers).await {
        Ok(true) => page(&app, location, None).await,
        Ok(false) => not_set_up("This screen has no valid kiosk key for this location."),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct TapForm {
    badge: String,
    nonce: Option<String>,
}

fn lending(minutes: i64) -> String {
    if minutes >= 120 && minutes % 60 == 0 {
        format!("{} hours", minutes / 60)
    } else {
        format!("{minutes} minutes")
    }
}

/// `POST /kiosk/{location}/tap`: checks the best ready device out to the badge's owner.
async fn tap(
    State(app): State<App>,
    Path(location): Path<String>,
    headers: HeaderMap,
    Form(f): Form<TapForm>,
) -> Response {
    match key_ok(&app, &location, &headers).await {
        Ok(true) => {}
        Ok(false) => return not_set_up("This screen has no valid kiosk key for this location."),
        Err(r) => return r,
    }
    let badge = f.badge.trim();
    if badge.is_empty() {
        return page(&app, location, None).await;
    }
    let p = Principal::station(format!("kiosk:{location}"));
    let input = CheckoutInput {
        badge: Some(badge.to_owned()),
        location: Some(location.clone()),
        ..CheckoutInput::default()
    };
    let nonce = f
        .nonce
        .filter(|n| !n.is_empty() && n.len() <= 200 && n.starts_with("tap_"));
    let outcome = match app
        .checkout_inner(&p, &ctx(&headers), input, "kiosk", nonce.as_deref())
        .await
    {
        Ok(Ok(c)) => Outcome::Ready {
            user: c.user.display_name,
            device: c.device.name,
            serial: c.device.serial,
            slot: c.device.slot,
            lending: lending((c.due_at - c.started_at) / 60_000),
        },
        Ok(Err(refusal)) => refused(&refusal),
        Err(e) => {
            let e = crate::error::ApiError::from(e);
            tracing::warn!(location = %location, code = e.code, "kiosk check-out failed");
            Outcome::Refused {
                code: "unavailable",
                message: "Devices cannot be checked out here right now. Please try again, or ask the unit's device coordinator.".to_owned(),
            }
        }
    };
    page(&app, location, Some(outcome)).await
}

fn refused(r: &Refusal) -> Outcome {
    Outcome::Refused {
        code: r.code(),
        message: r.message(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lending_periods_read_naturally() {
        assert_eq!(lending(720), "12 hours");
        assert_eq!(lending(90), "90 minutes");
        assert_eq!(lending(60), "60 minutes");
    }

    #[test]
    fn refusals_keep_their_code_and_words() {
        match refused(&Refusal::UnknownBadge) {
            Outcome::Refused { code, message } => {
                assert_eq!(code, "unknown_badge");
                assert!(message.contains("not known"));
            }
            Outcome::Ready { .. } => panic!("a refusal"),
        }
    }
}
