//! FHIR R4 on `/{instance}-oauth/api/FHIR/R4/...`: metadata (XML unless JSON is asked for),
//! SMART configuration, read and search with paging for Patient, Practitioner, Location,
//! Schedule, Slot and Appointment, and booking (`POST Appointment` or `Appointment/$book`) that
//! marks the slot busy.

use crate::data::{TYPES, appointment, iso};
use crate::state::{Flavor, IssuedToken, Sim, lock_r, lock_w, now_ms};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 200;

pub fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]});
    fhir_response(status, &body)
}

fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    r
}

fn base_url(sim: &Sim, instance: &str) -> String {
    format!("{}/{instance}-oauth/api/FHIR/R4", sim.base_url())
}

/// Authorizes a FHIR call: 401 without a valid token, 403 `insufficient_scope` without the API.
fn authorize(
    sim: &Sim,
    instance: &str,
    headers: &HeaderMap,
    resource_type: &str,
) -> Result<IssuedToken, Response> {
    let Some(token) = crate::oauth::bearer(sim, instance, headers) else {
        let mut r = outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "A valid bearer access token is required.",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return Err(r);
    };
    let allowed = sim
        .client(&token.client_id)
        .is_some_and(|c| c.allows(&format!("FHIR.{resource_type}")));
    if !allowed {
        let mut r = outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("The client is not authorized for {resource_type}."),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
        );
        return Err(r);
    }
    Ok(token)
}

fn wants_json(headers: &HeaderMap, query: &BTreeMap<String, String>) -> bool {
    query.get("_format").is_some_and(|f| f.contains("json"))
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("json"))
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub async fn read_or_search(
    State(sim): State<Sim>,
    Path((base, rest)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some((instance, Flavor::Oauth, _)) = sim.instance(&base) else {
        return crate::epic_api::not_found().await.into_response();
    };
    let params = parse_query(q.as_deref());
    let qmap: BTreeMap<String, String> = params.iter().cloned().collect();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["metadata"] => metadata(&sim, &instance, wants_json(&headers, &qmap)),
        [".well-known", "smart-configuration"] => smart(&sim, &instance),
        [t] if TYPES.contains(t) => match authorize(&sim, &instance, &headers, t) {
            Ok(_) => search(&sim, &instance, t, &params),
            Err(r) => r,
        },
        [t, id] if TYPES.contains(t) => match authorize(&sim, &instance, &headers, t) {
            Ok(_) => match lock_r(&sim.inner.data).get(t, id) {
                Some(r) => fhir_response(StatusCode::OK, r),
                None => outcome(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    &format!("{t}/{id} does not exist."),
                ),
            },
            Err(r) => r,
        },
        [t, ..] if !TYPES.contains(t) => outcome(
            StatusCode::NOT_FOUND,
            "not-supported",
            &format!("Resource type {t} is not supported by this server."),
        ),
        _ => outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Unsupported request path.",
        ),
    }
}

pub async fn smart_configuration(State(sim): State<Sim>, Path(base): Path<String>) -> Response {
    match sim.instance(&base) {
        Some((instance, Flavor::Oauth, _)) => smart(&sim, &instance),
        _ => crate::epic_api::not_found().await.into_response(),
    }
}

fn smart(sim: &Sim, instance: &str) -> Response {
    let oauth = format!("{}/{instance}-oauth/oauth2", sim.base_url());
    axum::Json(json!({
        "issuer": base_url(sim, instance),
        "authorization_endpoint": format!("{oauth}/authorize"),
        "token_endpoint": format!("{oauth}/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "RS384", "RS512", "ES256", "ES384"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "scopes_supported": ["openid", "fhirUser", "launch", "offline_access", "system/*.read"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-ehr", "client-confidential-symmetric", "context-ehr-patient", "sso-openid-connect"],
    }))
    .into_response()
}

fn metadata(sim: &Sim, instance: &str, json_wanted: bool) -> Response {
    let oauth = format!("{}/{instance}-oauth/oauth2", sim.base_url());
    if !json_wanted {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CapabilityStatement xmlns=\"http://hl7.org/fhir\"><status value=\"active\"/><date value=\"{}\"/><kind value=\"instance\"/><fhirVersion value=\"4.0.1\"/><format value=\"xml\"/><format value=\"json\"/><rest><mode value=\"server\"/><security><extension url=\"http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris\"><extension url=\"authorize\"><valueUri value=\"{oauth}/authorize\"/></extension><extension url=\"token\"><valueUri value=\"{oauth}/token\"/></extension></extension></security></rest></CapabilityStatement>",
            iso(now_ms())
        );
        return (
            [(header::CONTENT_TYPE, "application/fhir+xml; charset=utf-8")],
            xml,
        )
            .into_response();
    }
    let resources: Vec<Value> = TYPES
        .iter()
        .map(|t| {
            let mut interactions = vec![json!({"code": "read"}), json!({"code": "search-type"})];
            if *t == "Appointment" {
                interactions.push(json!({"code": "create"}));
            }
            json!({"type": t, "interaction": interactions})
        })
        .collect();
    fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement", "status": "active", "date": iso(now_ms()), "kind": "instance",
            "fhirVersion": "4.0.1", "format": ["json", "xml"],
            "implementation": {"description": format!("Switchboard Epic simulator ({instance})"), "url": base_url(sim, instance)},
            "rest": [{
                "mode": "server",
                "security": {
                    "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": [
                        {"url": "authorize", "valueUri": format!("{oauth}/authorize")},
                        {"url": "token", "valueUri": format!("{oauth}/token")},
                    ]}],
                    "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                },
                "resource": resources,
            }],
        }),
    )
}

fn reference_matches(value: &Value, wanted: &str) -> bool {
    value
        .as_str()
        .is_some_and(|r| r == wanted || r.rsplit('/').next() == Some(wanted))
}

fn text_matches(hay: Option<&str>, needle: &str) -> bool {
    hay.is_some_and(|h| h.to_lowercase().starts_with(&needle.to_lowercase()))
}

/// `ge2026-01-01`, `lt2026-01-01T10:00:00Z`, `2026-01-01` against an instant string.
fn date_matches(instant: Option<&str>, param: &str) -> bool {
    let Some(instant) = instant else { return false };
    let (prefix, value) = match param.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq" | "ne")) => (p, &param[2..]),
        _ => ("eq", param),
    };
    let left = &instant[..instant.len().min(value.len())];
    match prefix {
        "ge" => left >= value,
        "gt" => left > value,
        "le" => left <= value,
        "lt" => left < value,
        "ne" => left != value,
        _ => left == value,
    }
}

fn name_matches(r: &Value, field: &str, needle: &str) -> bool {
    r["name"].as_array().is_some_and(|names| {
        names.iter().any(|n| match field {
            "family" => text_matches(n["family"].as_str(), needle),
            "given" => n["given"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| text_matches(x.as_str(), needle))),
            _ => {
                text_matches(n["text"].as_str(), needle)
                    || text_matches(n["family"].as_str(), needle)
            }
        })
    })
}

fn identifier_matches(r: &Value, param: &str) -> bool {
    let (system, value) = param
        .split_once('|')
        .map_or((None, param), |(s, v)| (Some(s), v));
    r["identifier"].as_array().is_some_and(|ids| {
        ids.iter().any(|i| {
            i["value"].as_str() == Some(value)
                && system.is_none_or(|s| s.is_empty() || i["system"].as_str() == Some(s))
        })
    })
}

fn participant_is(r: &Value, prefix: &str, id: &str) -> bool {
    r["participant"].as_array().is_some_and(|ps| {
        ps.iter().any(|p| {
            p["actor"]["reference"].as_str().is_some_and(|x| {
                x == format!("{prefix}/{id}")
                    || (prefix.is_empty() && x.ends_with(&format!("/{id}")))
            })
        })
    })
}

fn matches(t: &str, r: &Value, name: &str, value: &str) -> Result<bool, String> {
    let id = || value.rsplit('/').next().unwrap_or(value);
    Ok(match (t, name) {
        (_, "_id") => r["id"].as_str() == Some(value),
        ("Patient" | "Practitioner", "family" | "given" | "name") => name_matches(r, name, value),
        ("Patient", "birthdate") => r["birthDate"].as_str() == Some(value),
        ("Patient" | "Practitioner" | "Location", "identifier") => identifier_matches(r, value),
        ("Location", "name") => text_matches(r["name"].as_str(), value),
        ("Schedule", "actor") => r["actor"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| reference_matches(&x["reference"], value))),
        ("Slot", "schedule") => reference_matches(&r["schedule"]["reference"], value),
        ("Slot" | "Appointment", "status") => {
            value.split(',').any(|s| r["status"].as_str() == Some(s))
        }
        ("Slot", "start") | ("Appointment", "date") => date_matches(r["start"].as_str(), value),
        ("Appointment", "patient") => participant_is(r, "Patient", id()),
        ("Appointment", "practitioner") => participant_is(r, "Practitioner", id()),
        ("Appointment", "location") => participant_is(r, "Location", id()),
        ("Appointment", "actor") => participant_is(r, "", id()),
        _ => {
            return Err(format!(
                "search parameter `{name}` is not supported for {t}"
            ));
        }
    })
}

fn search(sim: &Sim, instance: &str, t: &str, params: &[(String, String)]) -> Response {
    let mut count = DEFAULT_COUNT;
    let mut offset = 0usize;
    let mut filters = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "_count" => match v.parse::<usize>() {
                Ok(c) if (1..=MAX_COUNT).contains(&c) => count = c,
                _ => {
                    return outcome(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        &format!("_count must be between 1 and {MAX_COUNT}"),
                    );
                }
            },
            "_offset" => match v.parse() {
                Ok(o) => offset = o,
                Err(_) => {
                    return outcome(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        "_offset must be a number",
                    );
                }
            },
            "_format" => {}
            _ => filters.push((k.clone(), v.clone())),
        }
    }
    let data = lock_r(&sim.inner.data);
    let Some(all) = data.resources.get(t) else {
        return outcome(StatusCode::NOT_FOUND, "not-supported", t);
    };
    let mut hits = Vec::new();
    for r in all.values() {
        let mut ok = true;
        for (k, v) in &filters {
            match matches(t, r, k, v) {
                Ok(true) => {}
                Ok(false) => {
                    ok = false;
                    break;
                }
                Err(e) => return outcome(StatusCode::BAD_REQUEST, "not-supported", &e),
            }
        }
        if ok {
            hits.push(r);
        }
    }
    if matches!(t, "Slot" | "Appointment") {
        hits.sort_by(|a, b| {
            a["start"]
                .as_str()
                .cmp(&b["start"].as_str())
                .then(a["id"].as_str().cmp(&b["id"].as_str()))
        });
    }
    let base = base_url(sim, instance);
    let page_link = |off: usize| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &filters {
            s.append_pair(k, v);
        }
        s.append_pair("_count", &count.to_string());
        s.append_pair("_offset", &off.to_string());
        format!("{base}/{t}?{}", s.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": page_link(offset)})];
    if offset + count < hits.len() {
        links.push(json!({"relation": "next", "url": page_link(offset + count)}));
    }
    let entries: Vec<Value> = hits
        .iter()
        .skip(offset)
        .take(count)
        .map(|r| json!({"fullUrl": format!("{base}/{t}/{}", r["id"].as_str().unwrap_or_default()), "resource": r, "search": {"mode": "match"}}))
        .collect();
    fhir_response(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "searchset", "total": hits.len(), "link": links, "entry": entries}),
    )
}

pub async fn create_or_operation(
    State(sim): State<Sim>,
    Path((base, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((instance, Flavor::Oauth, _)) = sim.instance(&base) else {
        return crate::epic_api::not_found().await.into_response();
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let is_book = match segments.as_slice() {
        ["Appointment"] => false,
        ["Appointment", "$book"] => true,
        _ => {
            return outcome(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "Only Appointment create and $book are writable here.",
            );
        }
    };
    if let Err(r) = authorize(&sim, &instance, &headers, "Appointment") {
        return r;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.contains("json") {
        return outcome(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "Send application/fhir+json.",
        );
    }
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "structure",
            "The body is not JSON.",
        );
    };
    let appt = if doc["resourceType"] == "Parameters" {
        doc["parameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "appointment"))
            .map(|p| p["resource"].clone())
            .unwrap_or(Value::Null)
    } else {
        doc
    };
    if appt["resourceType"] != "Appointment" {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Expected an Appointment (or Parameters with an `appointment`).",
        );
    }
    let Some(slot_id) = appt["slot"][0]["reference"]
        .as_str()
        .map(|r| r.trim_start_matches("Slot/").to_owned())
    else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "required",
            "Appointment.slot is required.",
        );
    };
    let patient = appt["participant"].as_array().and_then(|ps| {
        ps.iter().find_map(|p| {
            p["actor"]["reference"]
                .as_str()?
                .strip_prefix("Patient/")
                .map(str::to_owned)
        })
    });
    let Some(patient) = patient else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "required",
            "A Patient participant is required.",
        );
    };
    let mut data = lock_w(&sim.inner.data);
    if data.get("Patient", &patient).is_none() {
        return outcome(
            StatusCode::BAD_REQUEST,
            "not-found",
            &format!("Patient/{patient} does not exist."),
        );
    }
    let Some(slot) = data.get("Slot", &slot_id).cloned() else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "not-found",
            &format!("Slot/{slot_id} does not exist."),
        );
    };
    if slot["status"] != "free" {
        return outcome(
            StatusCode::CONFLICT,
            "conflict",
            &format!("Slot/{slot_id} is not free."),
        );
    }
    let schedule_id = slot["schedule"]["reference"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("Schedule/")
        .to_owned();
    let schedule = data
        .get("Schedule", &schedule_id)
        .cloned()
        .unwrap_or(Value::Null);
    let actor = |prefix: &str| {
        schedule["actor"]
            .as_array()
            .and_then(|a| {
                a.iter().find_map(|x| {
                    x["reference"]
                        .as_str()?
                        .strip_prefix(prefix)
                        .map(str::to_owned)
                })
            })
            .unwrap_or_default()
    };
    let start = chrono::DateTime::parse_from_rfc3339(slot["start"].as_str().unwrap_or_default())
        .map(|t| t.timestamp_millis())
        .unwrap_or_default();
    let id = crate::oauth::random_token("appt-")
        .replace(['-', '_'], "")
        .to_lowercase();
    let mut created = appointment(
        &id,
        &slot_id,
        &patient,
        &actor("Practitioner/"),
        &actor("Location/"),
        start,
        "booked",
    );
    if let Some(comment) = appt["comment"].as_str() {
        created["comment"] = Value::String(comment.to_owned());
    }
    let mut busy = slot;
    busy["status"] = Value::String("busy".to_owned());
    data.insert(busy);
    data.insert(created.clone());
    drop(data);
    let location = format!("{}/Appointment/{id}", base_url(&sim, &instance));
    let mut r = fhir_response(
        if is_book {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &created,
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
