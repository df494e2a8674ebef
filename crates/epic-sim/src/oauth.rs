//! `oauth2/token` and `oauth2/authorize`, enforcing Epic's published rules strictly
//! (shared/docs/epic-facts.md §1 and §4). Every refusal carries an `X-Sim-Reason` header naming
//! the rule that was broken — a simulator convenience; Epic itself says little more than
//! `invalid_client`.

use crate::state::{
    AuthCode, CachedJwks, Flavor, IssuedToken, JwksFetch, Sim, lock, lock_w, now_ms,
};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use switchboard_epic::jose::{Alg, JwkSet, Unverified, VerifyingKey};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Epic caches a JWK set for at most 29 hours.
pub const MAX_JWKS_CACHE_SECS: u64 = 29 * 3600;
const MAX_JTI_LEN: usize = 151;

pub fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    let _ = aws_lc_rs::rand::fill(&mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// An OAuth error as Epic sends it; `reason` goes to `X-Sim-Reason` only.
pub fn oauth_error(
    status: StatusCode,
    error: &str,
    description: Option<&str>,
    reason: &str,
) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(reason) {
        r.headers_mut().insert("x-sim-reason", v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn invalid_request(reason: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", None, reason)
}

fn invalid_client(reason: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_client", None, reason)
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub async fn token(
    State(sim): State<Sim>,
    Path(base): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((instance, Flavor::Oauth, _)) = sim.instance(&base) else {
        return crate::epic_api::not_found().await.into_response();
    };
    if query.is_some() {
        return invalid_request(
            "parameters must be in the form body, not the query string (nothing may follow /token)",
        );
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return invalid_request("the body must be application/x-www-form-urlencoded");
    }
    let form = parse_form(&body);
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => client_credentials(&sim, &instance, &form).await,
        Some("authorization_code") => authorization_code(&sim, &instance, &headers, &form),
        Some("refresh_token") => refresh(&sim, &instance, &headers, &form),
        Some(_) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            None,
            "grant_type is not supported",
        ),
        None => invalid_request("grant_type is missing"),
    }
}

fn num(claims: &serde_json::Map<String, Value>, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

async fn client_credentials(sim: &Sim, instance: &str, form: &HashMap<String, String>) -> Response {
    if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
        return invalid_request(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        );
    }
    let Some(assertion) = form.get("client_assertion") else {
        return invalid_request("client_assertion is missing");
    };
    let jwt = match Unverified::parse(assertion) {
        Ok(j) => j,
        Err(e) => return invalid_client(&format!("client_assertion: {e}")),
    };
    let c = &jwt.claims;
    let Some(iss) = c.get("iss").and_then(Value::as_str) else {
        return invalid_client("iss is missing");
    };
    if c.get("sub").and_then(Value::as_str) != Some(iss) {
        return invalid_client("sub must equal iss (the client id)");
    }
    let Some(client) = sim.client(iss) else {
        return invalid_client("unknown client id");
    };
    let alg = match jwt.alg() {
        Ok(a) => a,
        Err(e) => return invalid_client(&e.to_string()),
    };
    if alg.is_ec() && client.jwks_url.is_none() {
        return invalid_client(
            "ES256/ES384 are only accepted from clients that registered a JWK Set URL",
        );
    }
    let token_url = format!("{}/{instance}-oauth/oauth2/token", sim.base_url());
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => *a == token_url,
        Some(Value::Array(a)) => a.len() == 1 && a[0].as_str() == Some(token_url.as_str()),
        _ => false,
    };
    if !aud_ok {
        return invalid_client(&format!("aud must be exactly {token_url}"));
    }
    let jti = match c.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.chars().count() <= MAX_JTI_LEN => j.clone(),
        Some(Value::String(_)) => {
            return invalid_client("jti must be a non-empty string of at most 151 characters");
        }
        _ => return invalid_client("jti must be a JSON string"),
    };
    let now = now_ms() / 1000;
    let skew = sim.config().clock_skew_secs;
    let Some(exp) = num(c, "exp") else {
        return invalid_client("exp is missing");
    };
    if exp <= now - skew {
        return invalid_client("the assertion has expired (exp)");
    }
    if exp > now + 300 + skew {
        return invalid_client("exp is more than 5 minutes in the future");
    }
    for claim in ["nbf", "iat"] {
        if let Some(t) = num(c, claim) {
            if t > now + skew {
                return invalid_client(&format!("{claim} is in the future"));
            }
            if exp - t > 300 {
                return invalid_client(&format!("{claim} is more than 300 seconds before exp"));
            }
        }
    }
    if let Some(jku) = &jwt.header.jku
        && client.jwks_url.as_deref() != Some(jku.as_str())
    {
        return invalid_client("jku must equal the registered JWK Set URL");
    }
    {
        let mut jtis = lock(&sim.inner.jtis);
        jtis.retain(|_, e| *e > now - skew);
        if jtis.contains_key(&(iss.to_owned(), jti.clone())) {
            return invalid_client("jti was already used (replay)");
        }
    }
    if let Err(reason) = verify_signature(sim, &client, &jwt, alg).await {
        return invalid_client(&reason);
    }
    lock(&sim.inner.jtis).insert((iss.to_owned(), jti), exp);
    if !client.background_user {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            None,
            "no background user is mapped to this client",
        );
    }
    issue(sim, iss, instance, client.apis.join(" "), None, false)
}

fn issue(
    sim: &Sim,
    client_id: &str,
    instance: &str,
    scope: String,
    context: Option<Value>,
    with_refresh: bool,
) -> Response {
    let token = random_token("sim-at-");
    let lifetime = sim.config().token_lifetime_secs;
    let mut body = json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": scope});
    if let (Some(Value::Object(ctx)), Value::Object(b)) = (&context, &mut body) {
        for (k, v) in ctx {
            b.insert(k.clone(), v.clone());
        }
    }
    let issued = IssuedToken {
        client_id: client_id.to_owned(),
        instance: instance.to_owned(),
        expires_at_ms: now_ms() + i64::try_from(lifetime).unwrap_or(3600) * 1000,
        scope,
        context,
    };
    if with_refresh {
        let refresh = random_token("sim-rt-");
        lock(&sim.inner.refresh_tokens).insert(refresh.clone(), issued.clone());
        body["refresh_token"] = Value::String(refresh);
    }
    lock_w(&sim.inner.tokens).insert(token, issued);
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Verifies with the client's keys: the static key, or its JWK set — fetched when not cached or
/// expired, and fetched again at most once for this assertion when the `kid` is unknown or the
/// signature does not verify with the cached keys.
async fn verify_signature(
    sim: &Sim,
    client: &crate::config::ClientConfig,
    jwt: &Unverified,
    alg: Alg,
) -> Result<(), String> {
    let Some(url) = &client.jwks_url else {
        let jwk = client
            .public_jwk
            .as_ref()
            .ok_or("the client has neither a JWK Set URL nor a public key")?;
        let key = VerifyingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        return jwt.verify_with(&key).map_err(|e| e.to_string());
    };
    let (mut set, mut fetched) = match cached_jwks(sim, url) {
        Some(s) => (s, false),
        None => (fetch_jwks(sim, url).await?, true),
    };
    loop {
        let outcome = verify_with_set(&set, jwt, alg);
        match outcome {
            Ok(()) => return Ok(()),
            Err(reason) if fetched => return Err(reason),
            Err(_) => {
                set = fetch_jwks(sim, url).await?;
                fetched = true;
            }
        }
    }
}

fn verify_with_set(set: &JwkSet, jwt: &Unverified, alg: Alg) -> Result<(), String> {
    let candidates = set.candidates(jwt.header.kid.as_deref(), alg);
    if candidates.is_empty() {
        return Err(format!(
            "no key with kid {:?} in the JWK set",
            jwt.header.kid
        ));
    }
    let mut last = String::from("signature does not verify");
    for jwk in candidates {
        match VerifyingKey::from_jwk(jwk)
            .map_err(|e| e.to_string())
            .and_then(|k| jwt.verify_with(&k).map_err(|e| e.to_string()))
        {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn cached_jwks(sim: &Sim, url: &str) -> Option<JwkSet> {
    let cache = lock(&sim.inner.jwks);
    cache
        .get(url)
        .filter(|c| c.expires_at_ms > now_ms())
        .map(|c| c.set.clone())
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',')
        .find_map(|d| d.trim().strip_prefix("max-age=")?.trim().parse().ok())
}

async fn fetch_jwks(sim: &Sim, url: &str) -> Result<JwkSet, String> {
    let at = now_ms();
    let result = async {
        let resp = sim
            .inner
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("JWK Set URL unreachable: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "JWK Set URL answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        let age = max_age(resp.headers());
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| format!("JWK Set URL did not return a JWK set: {e}"))?;
        Ok((set, age))
    }
    .await;
    let ok = result.is_ok();
    let age = result.as_ref().ok().and_then(|(_, a)| *a);
    lock(&sim.inner.jwks_fetches).push(JwksFetch {
        url: url.to_owned(),
        at_ms: at,
        ok,
        max_age_secs: age,
    });
    let (set, age) = result?;
    let secs = age.unwrap_or(MAX_JWKS_CACHE_SECS).min(MAX_JWKS_CACHE_SECS);
    lock(&sim.inner.jwks).insert(
        url.to_owned(),
        CachedJwks {
            set: set.clone(),
            expires_at_ms: at + i64::try_from(secs).unwrap_or(0) * 1000,
        },
    );
    Ok(set)
}

fn basic_client(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn confidential_client(
    sim: &Sim,
    headers: &HeaderMap,
) -> Result<crate::config::ClientConfig, Response> {
    let Some((id, secret)) = basic_client(headers) else {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            None,
            "HTTP Basic client_id:secret is required",
        ));
    };
    match sim.client(&id) {
        Some(c)
            if c.client_secret.as_deref().is_some_and(|s| {
                aws_lc_rs::constant_time::verify_slices_are_equal(s.as_bytes(), secret.as_bytes())
                    .is_ok()
            }) =>
        {
            Ok(c)
        }
        _ => Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            None,
            "wrong client id or secret",
        )),
    }
}

fn s256(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

fn authorization_code(
    sim: &Sim,
    instance: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let client = match confidential_client(sim, headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(code) = form.get("code") else {
        return invalid_request("code is missing");
    };
    let Some(grant) = lock(&sim.inner.codes).remove(code) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
            "unknown or already used code",
        );
    };
    if grant.client_id != client.client_id || grant.instance != instance {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
            "the code was issued to another client",
        );
    }
    if grant.expires_at_ms < now_ms() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
            "the code expired",
        );
    }
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
            "redirect_uri differs from the authorize request",
        );
    }
    if let Some(challenge) = &grant.code_challenge {
        match form.get("code_verifier") {
            Some(v) if s256(v) == *challenge => {}
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    None,
                    "PKCE code_verifier does not match the code_challenge",
                );
            }
        }
    }
    issue(
        sim,
        &client.client_id,
        instance,
        grant.scope,
        Some(grant.context),
        true,
    )
}

fn refresh(
    sim: &Sim,
    instance: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let client = match confidential_client(sim, headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(rt) = form.get("refresh_token") else {
        return invalid_request("refresh_token is missing");
    };
    let Some(prev) = lock(&sim.inner.refresh_tokens).get(rt).cloned() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
            "unknown refresh token",
        );
    };
    if prev.client_id != client.client_id || prev.instance != instance {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            None,
            "the refresh token belongs to another client",
        );
    }
    let token = random_token("sim-at-");
    let lifetime = sim.config().token_lifetime_secs;
    let issued = IssuedToken {
        expires_at_ms: now_ms() + i64::try_from(lifetime).unwrap_or(3600) * 1000,
        ..prev.clone()
    };
    lock_w(&sim.inner.tokens).insert(token.clone(), issued);
    axum::Json(json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": prev.scope, "refresh_token": rt})).into_response()
}

/// The SMART EHR-launch authorize step: auto-approves (the user is whoever launched).
pub async fn authorize(
    State(sim): State<Sim>,
    Path(base): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some((instance, Flavor::Oauth, _)) = sim.instance(&base) else {
        return crate::epic_api::not_found().await.into_response();
    };
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let bad = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            [("x-sim-reason", why.to_owned())],
            format!("OAuth authorize error: {why}"),
        )
            .into_response()
    };
    let Some(client) = q.get("client_id").and_then(|c| sim.client(c)) else {
        return bad("unknown client_id");
    };
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return bad("redirect_uri is missing");
    };
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return bad("redirect_uri does not exactly match a registered one");
    }
    let state = q.get("state").cloned().unwrap_or_default();
    let back = |error: &str| {
        let mut u = url::Url::parse(redirect_uri).ok();
        if let Some(u) = u.as_mut() {
            u.query_pairs_mut()
                .append_pair("error", error)
                .append_pair("state", &state);
        }
        Redirect::to(u.map_or_else(String::new, |u| u.to_string()).as_str()).into_response()
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return back("unsupported_response_type");
    }
    let fhir_base = format!("{}/{instance}-oauth/api/FHIR/R4", sim.base_url());
    if q.get("aud") != Some(&fhir_base) {
        return back("invalid_request");
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    let launch = q.get("launch").cloned();
    if launch.is_some() && !scope.split(' ').any(|s| s == "launch") {
        return back("invalid_scope");
    }
    let challenge = match (
        q.get("code_challenge"),
        q.get("code_challenge_method").map(String::as_str),
    ) {
        (Some(c), Some("S256")) => Some(c.clone()),
        (Some(_), _) => return back("invalid_request"),
        (None, _) => None,
    };
    let context = crate::control::launch_context(&sim, launch.as_deref());
    let code = random_token("sim-code-");
    lock(&sim.inner.codes).insert(
        code.clone(),
        AuthCode {
            client_id: client.client_id,
            instance,
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge,
            context,
            scope,
            expires_at_ms: now_ms() + 60_000,
        },
    );
    let mut u = match url::Url::parse(redirect_uri) {
        Ok(u) => u,
        Err(_) => return bad("redirect_uri is not a URL"),
    };
    u.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state);
    Redirect::to(u.as_str()).into_response()
}

/// Resolves a bearer token issued by this simulator for `instance`.
pub fn bearer(sim: &Sim, instance: &str, headers: &HeaderMap) -> Option<IssuedToken> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = crate::state::lock_r(&sim.inner.tokens)
        .get(token.trim())
        .cloned()?;
    (t.instance == instance && t.expires_at_ms > now_ms()).then_some(t)
}
