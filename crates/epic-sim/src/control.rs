//! `/_sim/...`: the simulator's own control API, for tests and demos (not part of Epic).

use crate::config::ClientConfig;
use crate::faults::FaultRule;
use crate::state::{Sim, lock};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<Sim> {
    Router::new()
        .route("/_sim/clients", get(list_clients).post(put_client))
        .route("/_sim/clients/{id}", delete(delete_client))
        .route("/_sim/mobile", get(mobile).post(mobile_login))
        .route("/_sim/presence", get(presence))
        .route(
            "/_sim/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route("/_sim/calls", get(calls).delete(clear_calls))
        .route("/_sim/jwks-fetches", get(jwks_fetches))
        .route("/_sim/connection-status", get(statuses))
        .route("/_sim/hl7", get(hl7))
        .route("/_sim/data/{resource_type}", get(data_ids))
        .route("/_sim/launches", axum::routing::post(register_launch))
        .route("/_sim/tokens", axum::routing::post(mint_token))
        .route(
            "/_sim/telehealth/launch",
            axum::routing::post(telehealth_launch),
        )
}

fn bad(why: impl Into<String>) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": why.into()})),
    )
        .into_response()
}

async fn list_clients(State(sim): State<Sim>) -> Json<Vec<ClientConfig>> {
    let mut v: Vec<_> = crate::state::lock_r(&sim.inner.clients)
        .values()
        .cloned()
        .collect();
    v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Json(v)
}

async fn put_client(
    State(sim): State<Sim>,
    body: Result<Json<ClientConfig>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(c)) = body else {
        return bad(
            "expected a client: {client_id, jwks_url?, public_jwk?, background_user, apis, ...}",
        );
    };
    if c.client_id.trim().is_empty() {
        return bad("client_id is required");
    }
    sim.register_client(c.clone());
    (StatusCode::CREATED, Json(c)).into_response()
}

async fn delete_client(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    if crate::state::lock_w(&sim.inner.clients)
        .remove(&id)
        .is_some()
    {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MobileLoginBody {
    install_id: String,
    user: String,
    app: Option<String>,
}

async fn mobile(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.mobile_logins()))
}

async fn mobile_login(
    State(sim): State<Sim>,
    body: Result<Json<MobileLoginBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return bad("expected {install_id, user, app?}");
    };
    if b.install_id.is_empty() || b.user.is_empty() {
        return bad("install_id and user are required");
    }
    sim.mobile_login(&b.install_id, &b.user, b.app);
    StatusCode::CREATED.into_response()
}

async fn presence(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.presence()))
}

async fn list_faults(State(sim): State<Sim>) -> Json<Vec<FaultRule>> {
    Json(sim.faults())
}

async fn add_fault(
    State(sim): State<Sim>,
    body: Result<Json<FaultRule>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(rule)) if (0.0..=1.0).contains(&rule.rate) => {
            sim.add_fault(rule.clone());
            (StatusCode::CREATED, Json(rule)).into_response()
        }
        Ok(_) => bad("rate must be between 0 and 1"),
        Err(e) => bad(e.body_text()),
    }
}

async fn clear_faults(State(sim): State<Sim>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct CallQuery {
    path_contains: Option<String>,
    since_seq: Option<u64>,
}

async fn calls(State(sim): State<Sim>, Query(q): Query<CallQuery>) -> Json<Value> {
    let v: Vec<_> = sim
        .calls()
        .into_iter()
        .filter(|c| {
            q.path_contains
                .as_deref()
                .is_none_or(|p| c.path.contains(p))
                && q.since_seq.is_none_or(|s| c.seq > s)
        })
        .collect();
    Json(json!(v))
}

async fn clear_calls(State(sim): State<Sim>) -> StatusCode {
    sim.clear_calls();
    StatusCode::NO_CONTENT
}

async fn jwks_fetches(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.jwks_fetches()))
}

async fn statuses(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.connection_statuses()))
}

async fn hl7(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.hl7_messages()))
}

async fn data_ids(State(sim): State<Sim>, Path(t): Path<String>) -> Response {
    if !crate::data::TYPES.contains(&t.as_str()) {
        return bad(format!("unknown resource type {t}"));
    }
    Json(json!(sim.resource_ids(&t))).into_response()
}

/// Registers the context a `launch` value stands for (as Epic does when it opens a launch URL).
async fn register_launch(State(sim): State<Sim>, Json(body): Json<Value>) -> Response {
    let Some(launch) = body["launch"].as_str().filter(|l| !l.is_empty()) else {
        return bad("launch is required");
    };
    lock(&sim.inner.launches).insert(launch.to_owned(), body["context"].clone());
    StatusCode::CREATED.into_response()
}

/// The launch context for an authorize request (`{}` when the launch is unknown).
#[must_use]
pub fn launch_context(sim: &Sim, launch: Option<&str>) -> Value {
    launch
        .and_then(|l| lock(&sim.inner.launches).get(l).cloned())
        .unwrap_or_else(|| json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintToken {
    client_id: String,
    instance: String,
}

/// Issues an access token for a registered client without an assertion — for benchmarks and
/// demos that need a token but are not testing OAuth.
async fn mint_token(
    State(sim): State<Sim>,
    body: Result<Json<MintToken>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(m)) = body else {
        return bad("expected {client_id, instance}");
    };
    let Some(client) = sim.client(&m.client_id) else {
        return bad(format!("unknown client {}", m.client_id));
    };
    if !sim.config().instances.iter().any(|i| i.name == m.instance) {
        return bad(format!("unknown instance {}", m.instance));
    }
    let token = crate::oauth::random_token("sim-at-");
    let lifetime = sim.config().token_lifetime_secs;
    crate::state::lock_w(&sim.inner.tokens).insert(
        token.clone(),
        crate::state::IssuedToken {
            client_id: client.client_id,
            instance: m.instance,
            expires_at_ms: crate::state::now_ms() + i64::try_from(lifetime).unwrap_or(3600) * 1000,
            scope: client.apis.join(" "),
            context: None,
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchRequest {
    /// Switchboard's launch URL for the profile, e.g. `https://sb/telehealth/v1/provider/launch/<id>`.
    launch_url: String,
    instance: String,
    /// AES-256 key (base64 of 32 bytes) …
    key: Option<String>,
    /// … or the legacy AES-128 password.
    password: Option<String>,
    #[serde(default)]
    iv_mode: switchboard_epic::launch::IvMode,
    /// Query parameter that carries the encrypted context (default `data`).
    param: Option<String>,
    /// `provider` or `patient`.
    role: Option<String>,
    /// The launching Epic user.
    user: Option<String>,
    /// Fields to encrypt; by default built from a booked appointment of the data set.
    fields: Option<std::collections::BTreeMap<String, String>>,
    /// Which booked appointment to use (default: the first).
    appointment: Option<String>,
    /// Override `ts` (Unix seconds), e.g. to produce a stale link.
    ts: Option<i64>,
}

/// Produces the launch URL Epic would open when a provider or patient clicks the video-visit
/// button: the context (patient names, department, appointment, user, role, time) encrypted as
/// the profile is configured, plus `iss` and a `launch` value for the SMART authorize step.
async fn telehealth_launch(
    State(sim): State<Sim>,
    body: Result<Json<LaunchRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use switchboard_epic::launch::{LaunchKey, format_fields};
    let r = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad(e.body_text()),
    };
    if !sim.config().instances.iter().any(|i| i.name == r.instance) {
        return bad(format!("unknown instance {}", r.instance));
    }
    let key = match (&r.key, &r.password) {
        (Some(k), None) => LaunchKey::aes256_from_base64(k),
        (None, Some(p)) => LaunchKey::aes128_from_password(p),
        _ => return bad("give exactly one of key (AES-256, base64) or password (legacy AES-128)"),
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => return bad(e.to_string()),
    };
    let role = r.role.clone().unwrap_or_else(|| "provider".to_owned());
    if !matches!(role.as_str(), "provider" | "patient") {
        return bad("role must be provider or patient");
    }
    let mut fields = match r.fields.clone() {
        Some(f) => f,
        None => match default_fields(&sim, r.appointment.as_deref()) {
            Ok(f) => f,
            Err(e) => return bad(e),
        },
    };
    fields.entry("role".to_owned()).or_insert(role);
    fields
        .entry("user".to_owned())
        .or_insert_with(|| r.user.clone().unwrap_or_else(|| "EPICDOC".to_owned()));
    fields.insert(
        "ts".to_owned(),
        r.ts.unwrap_or_else(|| crate::state::now_ms() / 1000)
            .to_string(),
    );
    let plaintext = format_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let encrypted = match key.encrypt(r.iv_mode, plaintext.as_bytes()) {
        Ok(e) => e,
        Err(e) => return bad(e.to_string()),
    };
    let launch = crate::oauth::random_token("sim-launch-");
    lock(&sim.inner.launches).insert(
        launch.clone(),
        json!({"appointment": fields.get("apptid"), "csn": fields.get("csn"), "patient": fields.get("patient_id")}),
    );
    let iss = format!("{}/{}-oauth/api/FHIR/R4", sim.base_url(), r.instance);
    let mut url = match url::Url::parse(&r.launch_url) {
        Ok(u) => u,
        Err(e) => return bad(format!("launch_url: {e}")),
    };
    url.query_pairs_mut()
        .append_pair("iss", &iss)
        .append_pair("launch", &launch)
        .append_pair(r.param.as_deref().unwrap_or("data"), &encrypted);
    (StatusCode::CREATED, Json(json!({"url": url.to_string(), "launch": launch, "iss": iss, "encrypted": encrypted, "fields": fields}))).into_response()
}

fn default_fields(
    sim: &Sim,
    appointment: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let data = crate::state::lock_r(&sim.inner.data);
    let appts = data.resources.get("Appointment").ok_or("no appointments")?;
    let appt = match appointment {
        Some(id) => appts
            .get(id)
            .ok_or_else(|| format!("unknown appointment {id}"))?,
        None => appts.values().next().ok_or("no appointments")?,
    };
    let actor = |prefix: &str| {
        appt["participant"].as_array().and_then(|ps| {
            ps.iter().find_map(|p| {
                p["actor"]["reference"]
                    .as_str()?
                    .strip_prefix(prefix)
                    .map(str::to_owned)
            })
        })
    };
    let patient_id = actor("Patient/").ok_or("the appointment has no patient")?;
    let patient = data.get("Patient", &patient_id).ok_or("unknown patient")?;
    let given: Vec<&str> = patient["name"][0]["given"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let dept = actor("Location/")
        .and_then(|l| {
            data.get("Location", &l)
                .and_then(|x| x["name"].as_str().map(str::to_owned))
        })
        .unwrap_or_default();
    let mut f = std::collections::BTreeMap::new();
    f.insert(
        "fname".to_owned(),
        given.first().copied().unwrap_or_default().to_owned(),
    );
    f.insert(
        "mname".to_owned(),
        given.get(1).copied().unwrap_or_default().to_owned(),
    );
    f.insert(
        "lname".to_owned(),
        patient["name"][0]["family"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    f.insert("dept".to_owned(), dept);
    let appt_id = appt["id"].as_str().unwrap_or_default().to_owned();
    f.insert(
        "csn".to_owned(),
        format!(
            "{}",
            appt_id
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
                % 1_000_000_000
        ),
    );
    f.insert("apptid".to_owned(), appt_id);
    f.insert("patient_id".to_owned(), patient_id);
    Ok(f)
}
