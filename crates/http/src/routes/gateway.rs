//! The FHIR gateway's runtime surface: the token endpoint, the FHIR R4 proxy, Epic's private
//! APIs and HL7v2 over HTTP. Errors are FHIR `OperationOutcome`s (RFC 6749 JSON at the token
//! endpoint); every request leaves one access record (no bodies).

use crate::AppState;
use crate::upstream::UpstreamError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use futures_util::StreamExt;
use memchr::memmem::Finder;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use switchboard_app::App;
use switchboard_app::gateway::{Caller, GatewaySnapshot, TokenRequest};
use switchboard_domain::gateway::{FhirRequest, allowed, classify};
use switchboard_store::{ActivationRow, GatewayRequestRow};
use tokio::io::AsyncWriteExt;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/token", post(token))
        .route("/auth/revoke", post(revoke))
        .route("/gateways/{gateway}/fhir/R4/{*path}", any(fhir))
        .route("/gateways/{gateway}/epic/{*path}", any(private_api))
        .route("/gateways/{gateway}/hl7v2", post(hl7v2))
}

const FHIR_JSON: &str = "application/fhir+json";
const USER_AGENT: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A FHIR `OperationOutcome` answer.
fn outcome(status: StatusCode, code: &str, diagnostics: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
    });
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
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
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
    };
    Some((dec(id), dec(secret)))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer …` value.
pub(crate) fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, t) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
}

/// A JSON or XML answer, whose body may carry Epic's absolute URLs.
fn textual(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|c| {
        c.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"))
            || c.windows(3).any(|w| w.eq_ignore_ascii_case(b"xml"))
    })
}

/// A whole body with Epic's base replaced by the gateway's (only in JSON / XML answers).
fn rewrite_whole(bytes: Bytes, textual: bool, from: &Finder<'static>, to: &str) -> Bytes {
    if textual && from.find(&bytes).is_some() {
        Rewriter::with(from.clone(), to).feed(&bytes, true)
    } else {
        bytes
    }
}

fn token_error(e: &switchboard_app::gateway::TokenError, basic: bool) -> Response {
    let status = match e.error.as_str() {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "server_error" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut r = (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(e)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        let v = if basic {
            "Basic realm=\"switchboard\""
        } else {
            "Basic realm=\"switchboard\", error=\"invalid_client\""
        };
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
    }
    r
}

fn form_of(headers: &HeaderMap, body: &Bytes) -> Option<Vec<(String, String)>> {
    if body.is_empty() {
        return Some(Vec::new());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ct.starts_with("application/x-www-form-urlencoded")
        .then(|| url::form_urlencoded::parse(body).into_owned().collect())
}

fn not_a_form() -> Response {
    token_error(
        &switchboard_app::gateway::TokenError {
            error: "invalid_request".to_owned(),
            error_description: "the body must be application/x-www-form-urlencoded".to_owned(),
        },
        false,
    )
}

/// `POST /auth/token?grant_type=client_credentials` with HTTP Basic `client_id:secret` (as source
/// 002's snippet does); `grant_type`, `scope` and `client_secret_post` in the form work too.
async fn token(
    State(app): State<App>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let Some(form) = form_of(&headers, &body) else {
        return not_a_form();
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| {
        form.iter()
            .chain(query.iter())
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let basic = basic_credentials(&headers);
    let form_client = match (get("client_id"), get("client_secret")) {
        (Some(id), Some(secret)) => Some((id, secret)),
        _ => None,
    };
    let used_basic = basic.is_some();
    let assertion = match (
        get("client_assertion_type").as_deref(),
        get("client_assertion"),
    ) {
        (Some(JWT_BEARER), Some(a)) => Some((get("client_id"), a)),
        (None, None) => None,
        _ => {
            return token_error(
                &switchboard_app::gateway::TokenError {
                    error: "invalid_request".to_owned(),
                    error_description: format!(
                        "client_assertion_type must be {JWT_BEARER}, together with client_assertion"
                    ),
                },
                false,
            );
        }
    };
    let req = TokenRequest {
        grant_type: get("grant_type"),
        scope: get("scope"),
        basic,
        form_client: form_client.filter(|_| assertion.is_none()),
        assertion,
    };
    let client = req
        .basic
        .as_ref()
        .or(req.form_client.as_ref())
        .map(|c| c.0.clone())
        .or_else(|| req.assertion.as_ref().and_then(|a| a.0.clone()));
    let result = app.issue_gateway_token(req).await;
    let status = match &result {
        Ok(_) => 200,
        Err(e) if e.error == "invalid_client" => 401,
        Err(_) => 400,
    };
    app.record_gateway_request(&GatewayRequestRow {
        seq: 0,
        at: switchboard_app::now_ms(),
        app_id: client,
        gateway_id: "-".to_owned(),
        kind: "token".to_owned(),
        interaction: None,
        resource_type: None,
        resource_id: None,
        status,
        latency_us: i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
        request_id: request_id(&headers),
    });
    match result {
        Ok(t) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            axum::Json(t),
        )
            .into_response(),
        Err(e) => token_error(&e, used_basic),
    }
}

/// RFC 7009 revocation: `token=<access token>`, client authenticated like at the token endpoint.
async fn revoke(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(form) = form_of(&headers, &body) else {
        return not_a_form();
    };
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some((id, secret)) =
        basic_credentials(&headers).or_else(|| get("client_id").zip(get("client_secret")))
    else {
        return token_error(
            &switchboard_app::gateway::TokenError {
                error: "invalid_client".to_owned(),
                error_description: "client authentication is required".to_owned(),
            },
            true,
        );
    };
    let Some(token) = get("token") else {
        return token_error(
            &switchboard_app::gateway::TokenError {
                error: "invalid_request".to_owned(),
                error_description: "token is missing".to_owned(),
            },
            false,
        );
    };
    match app.revoke_gateway_token(&id, &secret, &token).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => token_error(&e, true),
    }
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// What every gateway request starts with: the gateway, the caller and its activation.
struct Admitted {
    gateway: Arc<GatewaySnapshot>,
    caller: Caller,
    activation: Arc<ActivationRow>,
}

async fn admit(
    app: &App,
    gateway: &str,
    token: Option<&str>,
    rec: &mut GatewayRequestRow,
) -> Result<Admitted, Response> {
    let snap = match app.gateway_snapshot(gateway).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("there is no gateway `{gateway}`"),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "resolving a gateway failed");
            return Err(outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the gateway is unavailable",
            ));
        }
    };
    rec.gateway_id.clone_from(&snap.gateway.id);
    let Some(token) = token else {
        let mut r = outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "a bearer token from /auth/token is required",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"switchboard\""),
        );
        return Err(r);
    };
    let caller = match app.check_gateway_token(token).await {
        Ok(c) => c,
        Err(why) => {
            let mut r = outcome(StatusCode::UNAUTHORIZED, "login", why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\", error=\"invalid_token\""),
            );
            return Err(r);
        }
    };
    rec.app_id = Some(caller.app.row.id.clone());
    let activation = match app
        .activation_snapshot(&caller.app.row.id, &snap.gateway.id)
        .await
    {
        Ok(Some(a)) => a,
        Ok(None) => {
            return Err(outcome(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the app is not activated on this gateway",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "resolving an activation failed");
            return Err(outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the gateway is unavailable",
            ));
        }
    };
    if !app.gateway_rate_ok(&caller.app) {
        let mut r = outcome(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "the app's rate limit is exceeded",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(r);
    }
    Ok(Admitted {
        gateway: snap,
        caller,
        activation,
    })
}

/// The Epic bearer token of a backend-auth activation.
async fn epic_bearer(app: &App, a: &Admitted) -> Result<Option<Arc<str>>, Response> {
    if a.activation.ehr_auth != "backend" {
        return Ok(None);
    }
    match app.activation_token(&a.activation, &a.gateway.http).await {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            tracing::warn!(error = %e, activation = %a.activation.id, "no Epic token for an activation");
            Err(outcome(
                StatusCode::BAD_GATEWAY,
                "transient",
                "Switchboard could not get a token from Epic for this app",
            ))
        }
    }
}

/// Request headers passed on to Epic.
pub(crate) const FORWARDED_REQUEST_HEADERS: [HeaderName; 7] = [
    header::ACCEPT,
    header::CONTENT_TYPE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    HeaderName::from_static("if-none-exist"),
    HeaderName::from_static("prefer"),
];

const RETURNED_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::LOCATION,
    header::CONTENT_LOCATION,
    header::CACHE_CONTROL,
];

async fn read_body(app: &App, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, app.config().max_body_bytes)
        .await
        .map_err(|_| {
            outcome(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                &format!(
                    "the request body is larger than {} bytes",
                    app.config().max_body_bytes
                ),
            )
        })
}

fn upstream_failure(e: &reqwest::Error) -> Response {
    if e.is_timeout() {
        outcome(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "Epic did not answer in time",
        )
    } else {
        outcome(
            StatusCode::BAD_GATEWAY,
            "transient",
            "Epic could not be reached",
        )
    }
}

/// Replaces every `from` with `to` in a byte stream, across chunk boundaries.
struct Rewriter {
    finder: Finder<'static>,
    to: Bytes,
    carry: Vec<u8>,
}

impl Rewriter {
    fn new(from: &str, to: &str) -> Self {
        Self::with(Finder::new(from.as_bytes()).into_owned(), to)
    }

    fn with(finder: Finder<'static>, to: &str) -> Self {
        Self {
            finder,
            to: Bytes::copy_from_slice(to.as_bytes()),
            carry: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8], last: bool) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let n = self.finder.needle().len();
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        while let Some(i) = self.finder.find(&buf[pos..]) {
            out.extend_from_slice(&buf[pos..pos + i]);
            out.extend_from_slice(&self.to);
            pos += i + n;
        }
        let keep = if last {
            0
        } else {
            (n - 1).min(buf.len() - pos)
        };
        out.extend_from_slice(&buf[pos..buf.len() - keep]);
        self.carry = buf[buf.len() - keep..].to_vec();
        Bytes::from(out)
    }
}

fn rewrite_header(v: &HeaderValue, from: &str, to: &str) -> Option<HeaderValue> {
    let s = v.to_str().ok()?;
    HeaderValue::from_str(&s.replace(from, to)).ok()
}

fn new_record(gateway: &str, kind: &str, headers: &HeaderMap) -> GatewayRequestRow {
    record_of(gateway, kind, request_id(headers))
}

fn record_of(gateway: &str, kind: &str, request_id: Option<String>) -> GatewayRequestRow {
    GatewayRequestRow {
        seq: 0,
        at: switchboard_app::now_ms(),
        app_id: None,
        gateway_id: gateway.to_owned(),
        kind: kind.to_owned(),
        interaction: None,
        resource_type: None,
        resource_id: None,
        status: 0,
        latency_us: 0,
        request_id,
    }
}

fn finish(app: &App, mut rec: GatewayRequestRow, started: Instant, r: Response) -> Response {
    rec.status = i64::from(r.status().as_u16());
    rec.latency_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
    app.record_gateway_request(&rec);
    r
}

/// Classifies a FHIR request into `rec` and checks the token's scopes allow it.
#[expect(
    clippy::result_large_err,
    reason = "the error is the answer itself, built only when a request is refused"
)]
fn check_fhir(
    a: &Admitted,
    method: &str,
    path: &str,
    rec: &mut GatewayRequestRow,
) -> Result<(), Response> {
    let Some(req) = classify(method, path) else {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "not a FHIR R4 request this gateway forwards",
        ));
    };
    if let FhirRequest::Resource {
        resource,
        id,
        interaction,
    } = &req
    {
        rec.resource_type = Some(resource.clone());
        rec.resource_id.clone_from(id);
        rec.interaction = Some(interaction.as_str().to_owned());
        if !allowed(&a.caller.scopes, resource, *interaction) {
            let mut r = outcome(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!(
                    "the token's scopes do not allow {} on {resource}",
                    interaction.as_str()
                ),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            );
            return Err(r);
        }
    } else {
        rec.interaction = Some("capabilities".to_owned());
    }
    Ok(())
}

/// What Epic is told of the caller on a FHIR request: the activation's token and client id.
fn epic_headers(a: &Admitted, token: Option<&str>) -> Vec<(HeaderName, String)> {
    let mut extra = Vec::new();
    if let Some(t) = token {
        extra.push((header::AUTHORIZATION, format!("Bearer {t}")));
    }
    if let Some(c) = &a.activation.epic_client_id {
        extra.push((HeaderName::from_static("epic-client-id"), c.clone()));
    }
    extra
}

/// `/gateways/{gateway}/fhir/R4/...`
async fn fhir(
    State(app): State<App>,
    Path((gateway, path)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut rec = new_record(&gateway, "fhir", &headers);
    let r = fhir_inner(
        &app,
        &gateway,
        &path,
        &method,
        query.as_deref(),
        &headers,
        body,
        &mut rec,
    )
    .await;
    finish(&app, rec, started, r)
}

#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one proxied request"
)]
async fn fhir_inner(
    app: &App,
    gateway: &str,
    path: &str,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    rec: &mut GatewayRequestRow,
) -> Response {
    let a = match admit(app, gateway, bearer(headers), rec).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = check_fhir(&a, method.as_str(), path, rec) {
        return r;
    }
    let body = match read_body(app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let token = match epic_bearer(app, &a).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut url = format!("{}/{path}", a.gateway.upstream_r4);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    let mut extra = Vec::new();
    if !headers.contains_key(header::ACCEPT) {
        extra.push((header::ACCEPT, FHIR_JSON.to_owned()));
    }
    extra.extend(epic_headers(&a, token.as_deref()));
    forward(
        app,
        &a.gateway,
        &url,
        Outgoing {
            method,
            incoming: headers,
            pass: &FORWARDED_REQUEST_HEADERS,
            extra,
            body,
        },
        (&a.gateway.upstream_r4, &a.gateway.public_r4),
    )
    .await
}

/// What goes to Epic besides the URL.
struct Outgoing<'a> {
    method: &'a Method,
    incoming: &'a HeaderMap,
    /// Headers copied from the app's request when present.
    pass: &'a [HeaderName],
    extra: Vec<(HeaderName, String)>,
    body: Bytes,
}

/// Sends a request to Epic with the inline client and relays the answer, rewriting
/// `rewrite.0` (Epic's base) to `rewrite.1` (the gateway's).
async fn forward(
    app: &App,
    g: &GatewaySnapshot,
    url: &str,
    out: Outgoing<'_>,
    rewrite: (&str, &str),
) -> Response {
    let Ok(parsed) = url::Url::parse(url) else {
        return outcome(
            StatusCode::BAD_GATEWAY,
            "exception",
            "the adapter's Epic URL is not a URL",
        );
    };
    let target = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let host = match parsed.port() {
        Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or_default()),
        None => parsed.host_str().unwrap_or_default().to_owned(),
    };
    let mut up = hyper::Request::builder()
        .method(out.method.clone())
        .uri(target)
        .header(header::HOST, host)
        .header(header::USER_AGENT, USER_AGENT);
    for h in out.pass {
        if let Some(v) = out.incoming.get(h) {
            up = up.header(h, v);
        }
    }
    for (k, v) in out.extra {
        up = up.header(k, v);
    }
    let Ok(req) = up.body(http_body_util::Full::new(out.body)) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the request could not be forwarded",
        );
    };
    let timeout = std::time::Duration::from_millis(app.config().outbound_timeout_ms);
    match crate::upstream::send(&parsed, req, timeout, g.ca_bundle.as_deref()).await {
        Ok(answer) => relay_answer(answer, rewrite.0, rewrite.1),
        Err(crate::upstream::UpstreamError::Timeout) => outcome(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "Epic did not answer in time",
        ),
        Err(crate::upstream::UpstreamError::Unreachable(why)) => {
            tracing::warn!(gateway = %g.gateway.name, %why, "Epic unreachable");
            outcome(
                StatusCode::BAD_GATEWAY,
                "transient",
                "Epic could not be reached",
            )
        }
    }
}

/// Relays Epic's answer: Epic's absolute URLs become the gateway's in JSON / XML bodies and in
/// `Location` / `Content-Location`; small bodies in one piece, large ones while streaming.
fn relay_answer(answer: crate::upstream::Answer, from: &str, to: &str) -> Response {
    let status = answer.parts.status;
    let mut out = Response::builder().status(status);
    let textual = textual(
        answer
            .parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
    );
    for h in RETURNED_HEADERS {
        if let Some(v) = answer.parts.headers.get(&h) {
            let v = if matches!(h, header::LOCATION | header::CONTENT_LOCATION) {
                rewrite_header(v, from, to).unwrap_or_else(|| v.clone())
            } else {
                v.clone()
            };
            out = out.header(h, v);
        }
    }
    let body = match answer.body {
        crate::upstream::Body::Whole(bytes) => Body::from(rewrite_whole(
            bytes,
            textual,
            &Finder::new(from).into_owned(),
            to,
        )),
        crate::upstream::Body::Streaming(incoming) => {
            let data = http_body_util::BodyExt::into_data_stream(incoming);
            if textual {
                let rw = Rewriter::new(from, to);
                Body::from_stream(futures_util::stream::unfold(
                    (data, rw, false),
                    |(mut up, mut rw, done)| async move {
                        if done {
                            return None;
                        }
                        match up.next().await {
                            Some(Ok(c)) => {
                                let b = rw.feed(&c, false);
                                Some((Ok(b), (up, rw, false)))
                            }
                            Some(Err(e)) => Some((Err(std::io::Error::other(e)), (up, rw, true))),
                            None => {
                                let b = rw.feed(&[], true);
                                Some((Ok(b), (up, rw, true)))
                            }
                        }
                    },
                ))
            } else {
                Body::from_stream(data)
            }
        }
    };
    out.body(body)
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// The front door's path for a FHIR read (`GET`, no body): the same checks, Epic request and
/// URL rewriting as `fhir`, with the answer written straight to the app's connection. Returns
/// whether the connection can serve another request.
pub(crate) async fn serve_read(
    app: &App,
    ids: &crate::CounterRequestId,
    read: &crate::front::FhirRead,
    io: &mut tokio::net::TcpStream,
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let started = Instant::now();
    let request_id = read
        .request_id()
        .map_or_else(|| ids.next_id(), str::to_owned);
    let mut rec = record_of(read.gateway(), "fhir", Some(request_id));
    let (a, answer) = match ask_epic(app, read, &mut rec, out).await {
        Ok(x) => x,
        Err(r) => {
            rec.status = i64::from(r.status().as_u16());
            rec.latency_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
            let written = crate::front::write_response(
                io,
                out,
                r,
                rec.request_id.as_deref().unwrap_or_default(),
                read.close,
            )
            .await;
            app.record_gateway_request(&rec);
            return written.map(|()| true);
        }
    };
    let (mut conn, head, body) = answer;
    let origin = a
        .gateway
        .upstream
        .as_ref()
        .map_or("", |t| t.origin.as_str());
    let from = a.gateway.upstream_r4.as_str();
    let to = a.gateway.public_r4.as_str();
    out.clear();
    crate::h1::status_line(out, head.status);
    for (i, name) in RETURNED_HEADERS.iter().enumerate() {
        let Some(v) = head.wanted(i) else { continue };
        if matches!(*name, header::LOCATION | header::CONTENT_LOCATION)
            && a.gateway.upstream_finder.find(v).is_some()
        {
            let v = String::from_utf8_lossy(v).replace(from, to);
            crate::h1::header(out, name.as_str(), v.as_bytes());
        } else {
            crate::h1::header(out, name.as_str(), v);
        }
    }
    crate::front::finish_head(
        out,
        rec.request_id.as_deref().unwrap_or_default(),
        read.close,
    );
    rec.status = i64::from(head.status);
    rec.latency_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
    app.record_gateway_request(&rec);
    let textual = textual(head.content_type());
    let mut reader = match body {
        ReadBody::Whole(bytes) => {
            let bytes = rewrite_whole(bytes, textual, &a.gateway.upstream_finder, to);
            crate::h1::content_length(out, bytes.len());
            out.extend_from_slice(&bytes);
            io.write_all(out).await?;
            if head.keep_alive {
                crate::h1::release(origin, conn);
            }
            return Ok(true);
        }
        ReadBody::Empty => {
            out.extend_from_slice(b"\r\n");
            io.write_all(out).await?;
            if head.keep_alive {
                crate::h1::release(origin, conn);
            }
            return Ok(true);
        }
        ReadBody::Streaming(reader) => reader,
    };
    // Large or unsized: relayed in chunks as it arrives.
    crate::h1::header(out, "transfer-encoding", b"chunked");
    out.extend_from_slice(b"\r\n");
    io.write_all(out).await?;
    let mut rewriter = textual.then(|| Rewriter::with(a.gateway.upstream_finder.clone(), to));
    let timeout = std::time::Duration::from_millis(app.config().outbound_timeout_ms);
    loop {
        let piece = match tokio::time::timeout(timeout, reader.next(&mut conn)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(gateway = %a.gateway.gateway.name, error = %e, "Epic's answer broke off");
                return Ok(false);
            }
            Err(_) => {
                tracing::warn!(gateway = %a.gateway.gateway.name, "Epic's answer stalled");
                return Ok(false);
            }
        };
        out.clear();
        match piece {
            Some(p) => {
                let p = match rewriter.as_mut() {
                    Some(rw) => rw.feed(&p, false),
                    None => p,
                };
                crate::h1::chunk(out, &p);
            }
            None => {
                if let Some(rw) = rewriter.as_mut() {
                    crate::h1::chunk(out, &rw.feed(&[], true));
                }
                out.extend_from_slice(crate::h1::LAST_CHUNK);
                io.write_all(out).await?;
                break;
            }
        }
        io.write_all(out).await?;
    }
    if head.keep_alive && reader.finished() {
        crate::h1::release(origin, conn);
    }
    Ok(true)
}

/// An Epic answer's body as the front door relays it.
enum ReadBody {
    Empty,
    Whole(Bytes),
    Streaming(crate::h1::BodyReader),
}

type EpicAnswer = (crate::h1::Conn, crate::h1::Head, ReadBody);

/// Admits a front-door read and sends it to Epic; the answer's head, and its body when small.
async fn ask_epic(
    app: &App,
    read: &crate::front::FhirRead,
    rec: &mut GatewayRequestRow,
    out: &mut Vec<u8>,
) -> Result<(Admitted, EpicAnswer), Response> {
    let a = admit(app, read.gateway(), read.bearer(), rec).await?;
    check_fhir(&a, "GET", read.path(), rec)?;
    let token = epic_bearer(app, &a).await?;
    let Some(target) = a.gateway.upstream.as_ref() else {
        return Err(outcome(
            StatusCode::BAD_GATEWAY,
            "exception",
            "the adapter's Epic URL is not a URL",
        ));
    };
    out.clear();
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target.path.as_bytes());
    out.push(b'/');
    out.extend_from_slice(read.path().as_bytes());
    if let Some(q) = read.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    crate::h1::header(out, "host", target.host.as_bytes());
    crate::h1::header(out, "user-agent", USER_AGENT.as_bytes());
    for (i, name) in FORWARDED_REQUEST_HEADERS.iter().enumerate() {
        if let Some(v) = read.forwarded(i) {
            crate::h1::header(out, name.as_str(), v);
        } else if *name == header::ACCEPT {
            crate::h1::header(out, "accept", FHIR_JSON.as_bytes());
        }
    }
    for (name, v) in epic_headers(&a, token.as_deref()) {
        if !crate::h1::safe_value(v.as_bytes()) {
            return Err(outcome(
                StatusCode::BAD_GATEWAY,
                "exception",
                "the request could not be forwarded",
            ));
        }
        crate::h1::header(out, name.as_str(), v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let timeout = std::time::Duration::from_millis(app.config().outbound_timeout_ms);
    let asked = async {
        let (mut conn, head) = crate::h1::exchange(
            &target.origin,
            &target.url,
            a.gateway.ca_bundle.as_deref(),
            out,
            &RETURNED_HEADERS,
        )
        .await?;
        let body = match head.framing {
            crate::h1::Framing::Empty => ReadBody::Empty,
            crate::h1::Framing::Length(n) if n <= crate::upstream::SMALL_BODY => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                ReadBody::Whole(
                    crate::h1::read_exact(&mut conn, n)
                        .await
                        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?,
                )
            }
            f => ReadBody::Streaming(crate::h1::BodyReader::new(f)),
        };
        Ok::<_, UpstreamError>((conn, head, body))
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok((conn, head, body))) => Ok((a, (conn, head, body))),
        Ok(Err(UpstreamError::Unreachable(why))) => {
            tracing::warn!(gateway = %a.gateway.gateway.name, %why, "Epic unreachable");
            Err(outcome(
                StatusCode::BAD_GATEWAY,
                "transient",
                "Epic could not be reached",
            ))
        }
        Ok(Err(UpstreamError::Timeout)) | Err(_) => Err(outcome(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "Epic did not answer in time",
        )),
    }
}

fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains("..")
        && !path.contains('%')
        && !path.contains('\\')
        && !path.contains("//")
        && path.chars().all(|c| c.is_ascii_graphic())
}

/// `/gateways/{gateway}/epic/...` → Epic's private APIs with the adapter's external auth (Basic
/// header value + `Epic-Client-ID`), or the activation's backend token.
async fn private_api(
    State(app): State<App>,
    Path((gateway, path)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut rec = new_record(&gateway, "epic", &headers);
    rec.resource_type = Some(path.chars().take(120).collect());
    let r = async {
        let a = match admit(&app, &gateway, bearer(&headers), &mut rec).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        if !safe_path(&path) {
            return outcome(StatusCode::BAD_REQUEST, "invalid", "not a private API path this gateway forwards");
        }
        let body = match read_body(&app, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (base, auth, client_id) = match (&a.gateway.external_basic, &a.gateway.adapter.external_api_endpoint) {
            (Some(basic), Some(endpoint)) => (
                endpoint.trim_end_matches('/').to_owned(),
                format!("Basic {basic}"),
                a.gateway.adapter.external_client_id.clone(),
            ),
            _ => match epic_bearer(&app, &a).await {
                Ok(Some(t)) => (
                    a.gateway.upstream_r4.trim_end_matches("/api/FHIR/R4").to_owned(),
                    format!("Bearer {t}"),
                    a.activation.epic_client_id.clone(),
                ),
                Ok(None) => {
                    return outcome(
                        StatusCode::CONFLICT,
                        "not-supported",
                        "the gateway has no private-API credentials: configure the adapter's external auth or backend auth",
                    );
                }
                Err(r) => return r,
            },
        };
        let mut url = format!("{base}/api/epic/{path}");
        if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let mut extra = vec![(header::AUTHORIZATION, auth)];
        if let Some(c) = client_id {
            extra.push((HeaderName::from_static("epic-client-id"), c));
        }
        forward(
            &app,
            &a.gateway,
            &url,
            Outgoing {
                method: &method,
                incoming: &headers,
                pass: &[header::ACCEPT, header::CONTENT_TYPE],
                extra,
                body,
            },
            (&base, &format!("{}/epic", a.gateway.public_base)),
        )
        .await
    }
    .await;
    finish(&app, rec, started, r)
}

const HL7_TYPE: &str = "x-application/hl7-v2+er7";

fn hl7_answer(text: String) -> Response {
    ([(header::CONTENT_TYPE, HL7_TYPE)], text).into_response()
}

/// `POST /gateways/{gateway}/hl7v2`: parse and check the message, set MSH-11 to the adapter's
/// processing id, forward it to Epic's HL7-over-HTTP endpoint and return Epic's ACK. A
/// malformed message gets an `AR` ACK naming the segment and field, and is not forwarded.
async fn hl7v2(
    State(app): State<App>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use switchboard_domain::hl7::{Message, ack};
    let started = Instant::now();
    let mut rec = new_record(&gateway, "hl7v2", &headers);
    let r = async {
        let a = match admit(&app, &gateway, bearer(&headers), &mut rec).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let body = match read_body(&app, body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let now = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let control = format!("SB{}", &switchboard_app::crypto::new_secret("x")[2..14]);
        let Ok(text) = std::str::from_utf8(&body) else {
            return hl7_answer(ack(None, "AR", "message: not UTF-8 text", &control, &now));
        };
        let mut msg = match Message::parse(text) {
            Ok(m) => m,
            Err(e) => {
                rec.interaction = Some("rejected".to_owned());
                return hl7_answer(ack(None, "AR", &e.to_string(), &control, &now));
            }
        };
        rec.resource_type = msg.msh(9).map(str::to_owned);
        rec.resource_id = msg.msh(10).map(str::to_owned);
        let (Some(endpoint), Some(pid)) = (
            a.gateway.settings.hl7_over_http_endpoint.clone(),
            a.gateway.settings.hl7_over_http_processing_id.clone(),
        ) else {
            return hl7_answer(ack(
                Some(&msg),
                "AR",
                "this gateway has no HL7 endpoint configured",
                &control,
                &now,
            ));
        };
        msg.set_processing_id(&pid);
        let auth = match (&a.gateway.external_basic, epic_bearer(&app, &a).await) {
            (_, Ok(Some(t))) => Some(format!("Bearer {t}")),
            (Some(b), Ok(None)) => Some(format!("Basic {b}")),
            (None, Ok(None)) => None,
            (_, Err(r)) => return r,
        };
        let mut up = a
            .gateway
            .http
            .post(&endpoint)
            .header("content-type", HL7_TYPE)
            .body(msg.to_er7());
        if let Some(v) = auth {
            up = up.header("authorization", v);
        }
        if let Some(c) = a.activation.epic_client_id.as_ref().or(a
            .gateway
            .adapter
            .external_client_id
            .as_ref())
        {
            up = up.header("Epic-Client-ID", c);
        }
        match up.send().await {
            Ok(resp) if resp.status().is_success() => match resp.text().await {
                Ok(t) => hl7_answer(t),
                Err(e) => upstream_failure(&e),
            },
            Ok(resp) => outcome(
                StatusCode::BAD_GATEWAY,
                "transient",
                &format!(
                    "Epic's HL7 endpoint answered HTTP {}",
                    resp.status().as_u16()
                ),
            ),
            Err(e) => upstream_failure(&e),
        }
    }
    .await;
    finish(&app, rec, started, r)
}

#[cfg(test)]
mod tests {
    use super::Rewriter;

    #[test]
    fn rewriting_works_across_chunk_boundaries() {
        let from = "http://epic/x-oauth/api/FHIR/R4";
        let to = "http://sb/gateways/g/fhir/R4";
        let body = format!(
            "{{\"fullUrl\":\"{from}/Patient/1\",\"link\":[{{\"url\":\"{from}/Patient?_offset=50\"}}]}}"
        );
        for split in 1..body.len() {
            let mut rw = Rewriter::new(from, to);
            let mut out = Vec::new();
            out.extend_from_slice(&rw.feed(&body.as_bytes()[..split], false));
            out.extend_from_slice(&rw.feed(&body.as_bytes()[split..], false));
            out.extend_from_slice(&rw.feed(&[], true));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                body.replace(from, to),
                "split at {split}"
            );
        }
    }
}
