//! Private (non-FHIR) Epic APIs under `/{instance}-{oauth|username}/api/epic/...`:
//! DisassociateMobileDevice (assumed contract, epic-facts §3), SetExternalConnectionStatus (§4)
//! and HL7v2 over HTTP (§5). `-oauth` takes a bearer token with the API attached; `-username`
//! takes Basic `emp$user:password` plus a registered `Epic-Client-ID`.

use crate::state::{ConnectionStatus, Flavor, Hl7Message, PresenceEvent, Sim, lock, now_ms};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;

pub const DISASSOCIATE_PATH: &str = "2023/Security/MobileDevice/DisassociateMobileDevice";
pub const CONNECTION_STATUS_PATH: &str =
    "2018/Telehealth/ContextLinking/SetExternalConnectionStatus";
pub const HL7_PREFIX: &str = "2015/EDI/HTTP/HL7v2/";

pub fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({"Message": text}))).into_response()
}

pub async fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "The requested resource was not found.",
    )
}

fn basic_user_ok(sim: &Sim, headers: &HeaderMap) -> Result<(), &'static str> {
    let v = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("Basic authentication is required")?;
    let (scheme, b64) = v.split_once(' ').ok_or("malformed Authorization header")?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("Basic authentication is required on this instance");
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "malformed Basic credentials")?;
    let text = String::from_utf8(raw).map_err(|_| "malformed Basic credentials")?;
    let (user, password) = text.split_once(':').ok_or("malformed Basic credentials")?;
    let user = user
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("emp$"))
        .map(|_| &user[4..])
        .ok_or("the user name must start with emp$")?;
    let known = sim.config().system_users.iter().any(|u| {
        let name = u
            .username
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("emp$"))
            .map_or(u.username.as_str(), |_| &u.username[4..]);
        name.eq_ignore_ascii_case(user)
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                u.password.as_bytes(),
                password.as_bytes(),
            )
            .is_ok()
    });
    if !known {
        return Err("wrong user name or password");
    }
    let client = headers
        .get("epic-client-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("the Epic-Client-ID header is required")?;
    if sim.client(client).is_none() {
        return Err("Epic-Client-ID is not a registered client");
    }
    Ok(())
}

/// Checks the caller for `api`; `Err` is the response to send.
fn authorize(
    sim: &Sim,
    instance: &str,
    flavor: Flavor,
    headers: &HeaderMap,
    api: &str,
) -> Result<(), Response> {
    match flavor {
        Flavor::Username => basic_user_ok(sim, headers).map_err(|why| {
            let mut r = message(StatusCode::UNAUTHORIZED, "Authentication failed.");
            if let Ok(v) = header::HeaderValue::from_str(why) {
                r.headers_mut().insert("x-sim-reason", v);
            }
            r
        }),
        Flavor::Oauth => {
            let Some(token) = crate::oauth::bearer(sim, instance, headers) else {
                let mut r = message(StatusCode::UNAUTHORIZED, "Authentication failed.");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                return Err(r);
            };
            if sim.client(&token.client_id).is_some_and(|c| c.allows(api)) {
                Ok(())
            } else {
                let mut r = message(
                    StatusCode::FORBIDDEN,
                    &format!("The client is not authorized to call {api}."),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                );
                Err(r)
            }
        }
    }
}

/// A private API implementation: (sim, instance, production, path, query, headers, body).
type Handler = fn(&Sim, &str, bool, &str, Option<&str>, &HeaderMap, &[u8]) -> Response;

pub async fn dispatch(
    State(sim): State<Sim>,
    Path((base, rest)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((instance, flavor, production)) = sim.instance(&base) else {
        return not_found().await;
    };
    let (api, handler): (&str, Handler) = if rest == DISASSOCIATE_PATH {
        ("DisassociateMobileDevice", disassociate)
    } else if rest == CONNECTION_STATUS_PATH {
        ("SetExternalConnectionStatus", connection_status)
    } else if rest.starts_with(HL7_PREFIX) {
        ("HL7v2", hl7_over_http)
    } else {
        return not_found().await;
    };
    if let Err(r) = authorize(&sim, &instance, flavor, &headers, api) {
        return r;
    }
    handler(
        &sim,
        &instance,
        production,
        &rest,
        q.as_deref(),
        &headers,
        &body,
    )
}

fn disassociate(
    sim: &Sim,
    _instance: &str,
    _production: bool,
    _rest: &str,
    _q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if !headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"))
    {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The request body must be JSON.",
        );
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return message(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON.",
        );
    };
    let Some(install_id) = doc["InstallID"].as_str().filter(|s| !s.is_empty()) else {
        return message(StatusCode::BAD_REQUEST, "InstallID is required.");
    };
    let removed = lock(&sim.inner.mobile).remove(install_id);
    match removed {
        Some(login) => {
            lock(&sim.inner.presence).push(PresenceEvent {
                user: login.user,
                install_id: install_id.to_owned(),
                presence: "offline",
                at_ms: now_ms(),
            });
            (StatusCode::OK, axum::Json(json!({"Success": true}))).into_response()
        }
        None => message(
            StatusCode::BAD_REQUEST,
            &format!(
                "An error occurred while executing the command: Install ID not found: {install_id}."
            ),
        ),
    }
}

fn connection_status(
    sim: &Sim,
    instance: &str,
    _production: bool,
    _rest: &str,
    q: Option<&str>,
    _headers: &HeaderMap,
    _body: &[u8],
) -> Response {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut missing = Vec::new();
    let mut get = |k: &'static str| {
        let v = params.get(k).cloned().unwrap_or_default();
        if v.is_empty() {
            missing.push(k);
        }
        v
    };
    let record = ConnectionStatus {
        conference_id: get("ConferenceID"),
        external_id: get("ExternalID"),
        external_id_type: get("ExternalIDType"),
        vendor_name: get("VendorName"),
        status: get("ConnectionStatus"),
        instance: instance.to_owned(),
        at_ms: now_ms(),
    };
    if !missing.is_empty() {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("Missing required parameter(s): {}.", missing.join(", ")),
        );
    }
    lock(&sim.inner.statuses).push(record);
    (StatusCode::OK, axum::Json(json!({"Success": true}))).into_response()
}

fn hl7_over_http(
    sim: &Sim,
    instance: &str,
    production: bool,
    rest: &str,
    _q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ![
        "x-application/hl7-v2+er7",
        "application/hl7-v2+er7",
        "application/hl7-v2",
    ]
    .iter()
    .any(|t| ct.starts_with(t))
    {
        return message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send the message as x-application/hl7-v2+er7.",
        );
    }
    let text = String::from_utf8_lossy(body);
    let endpoint = rest.trim_start_matches(HL7_PREFIX).to_owned();
    let ts = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let control = format!("SIM{}", now_ms());
    let er7 = |s: String| ([(header::CONTENT_TYPE, "x-application/hl7-v2+er7")], s).into_response();
    let msh = match crate::hl7::parse_msh(&text) {
        Ok(m) => m,
        Err(why) => {
            // Without a usable MSH there is nothing to address an ACK to; answer AR minimally.
            return er7(format!(
                "MSH|^~\\&|EPIC||||{ts}||ACK|{control}|{}|2.5.1\rMSA|AR||{why}\r",
                if production { "P" } else { "T" }
            ));
        }
    };
    let expected = if production { "P" } else { "T" };
    let (code, why) = if msh.processing_id != expected {
        (
            "AR",
            format!(
                "Processing ID {} does not match this {} environment (expected {expected})",
                msh.processing_id,
                if production {
                    "production"
                } else {
                    "non-production"
                }
            ),
        )
    } else if crate::hl7::segments(&text).len() < 2 {
        ("AE", "The message has no segments after MSH".to_owned())
    } else {
        ("AA", String::new())
    };
    lock(&sim.inner.hl7).push(Hl7Message {
        instance: instance.to_owned(),
        endpoint,
        control_id: msh.control_id.clone(),
        message_type: msh.message_type.clone(),
        processing_id: msh.processing_id.clone(),
        ack_code: code.to_owned(),
        at_ms: now_ms(),
    });
    er7(crate::hl7::ack(&msh, code, &why, &control, &ts))
}
