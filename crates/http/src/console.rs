//! The web console: server-rendered pages, assets embedded in the binary, no CDN.
//! Sessions live in the database (so any replica serves them); every form carries the session's
//! CSRF token and the cookie is `HttpOnly; SameSite=Strict`.

use crate::AppState;
use crate::auth::{SESSION_COOKIE, cookie, request_context};
use crate::error::{Form, Query};
use crate::routes::admin::AuditQuery;
use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use switchboard_app::accounts::NewUser;
use switchboard_app::{AppError, AuthMethod, Principal, RequestContext};
use switchboard_domain::Permission;
use switchboard_store::JobFilter;

mod devices;
mod gateway;
mod telehealth;

const CSS: &str = include_str!("../assets/console.css");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(overview))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/audit", get(audit))
        .route("/console/jobs", get(jobs))
        .route("/console/jobs/{id}/{action}", post(job_action))
        .route("/console/users", get(users).post(create_user))
        .route("/console/epic", get(epic_page).post(create_environment))
        .route(
            "/console/epic/{id}/logout-test",
            post(environment_logout_test),
        )
        .route("/console/epic/{id}/{action}", post(environment_action))
        .route("/console/assets/console.css", get(css))
        .merge(telehealth::router())
        .merge(gateway::router())
        .merge(devices::router())
}

/// The signed-in console user. Without a valid session, pages redirect to the sign-in page.
pub struct Console {
    principal: Principal,
    ctx: RequestContext,
    csrf: String,
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(c) = cookie(parts, SESSION_COOKIE) else {
            return Err(Redirect::to("/console/login").into_response());
        };
        match state.app.authenticate_session(c).await {
            Ok(principal) => {
                let csrf = match &principal.via {
                    AuthMethod::Session { csrf, .. } => csrf.clone(),
                    _ => String::new(),
                };
                Ok(Self {
                    principal,
                    ctx: request_context(parts),
                    csrf,
                })
            }
            Err(AppError::Unauthenticated(_)) => {
                Err(Redirect::to("/console/login").into_response())
            }
            Err(e) => Err(crate::error::ApiError::from(e).into_response()),
        }
    }
}

impl Console {
    fn chrome(&self, current: &'static str) -> Chrome {
        Chrome {
            username: self.principal.username.clone(),
            role: self.principal.role.as_str(),
            csrf: self.csrf.clone(),
            current,
        }
    }

    fn allows(&self, p: Permission) -> bool {
        self.principal.role.allows(p)
    }

    /// The "not allowed" page when the role lacks `p`.
    fn denied(&self, p: Permission, current: &'static str) -> Option<Response> {
        if self.allows(p) {
            None
        } else {
            Some(message(
                StatusCode::FORBIDDEN,
                self.chrome(current),
                "Not allowed",
                format!(
                    "This page needs the `{}` permission, which the {} role does not have.",
                    p.as_str(),
                    self.principal.role
                ),
            ))
        }
    }

    /// For a form post: the "form expired" page on a CSRF mismatch, else the "not allowed" page
    /// when the role lacks `p`.
    fn form_guard(&self, csrf: &str, p: Permission, current: &'static str) -> Option<Response> {
        self.csrf_mismatch(csrf).or_else(|| self.denied(p, current))
    }

    /// The "form expired" page when the form's CSRF token is not the session's.
    fn csrf_mismatch(&self, sent: &str) -> Option<Response> {
        if switchboard_app::crypto::constant_time_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            None
        } else {
            Some(message(
                StatusCode::FORBIDDEN,
                self.chrome("overview"),
                "Form expired",
                "This form is out of date. Reload the page and try again.".to_owned(),
            ))
        }
    }
}

/// What the layout needs on every page.
pub struct Chrome {
    username: String,
    role: &'static str,
    csrf: String,
    current: &'static str,
}

fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            crate::error::ApiError::internal().into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    chrome: Chrome,
    heading: &'static str,
    message: String,
}

fn message(status: StatusCode, chrome: Chrome, heading: &'static str, message: String) -> Response {
    render(
        status,
        &MessagePage {
            chrome,
            heading,
            message,
        },
    )
}

fn app_error(chrome: Chrome, e: AppError) -> Response {
    let status = crate::error::ApiError::from(e);
    message(status.status, chrome, status.title, status.detail)
}

fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
}

// ------------------------------------------------------------------ sign-in

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

async fn login_page() -> Response {
    render(StatusCode::OK, &LoginPage { error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ctx = RequestContext {
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let result = match (
        f.token.as_deref().filter(|t| !t.trim().is_empty()),
        f.username.as_deref(),
        f.password.as_deref(),
    ) {
        (Some(token), _, _) => s.app.sign_in_with_token(&ctx, token).await,
        (None, Some(u), Some(p)) if !u.trim().is_empty() => {
            s.app.sign_in_with_password(&ctx, u, p).await
        }
        _ => Err(AppError::Unauthenticated("nothing entered")),
    };
    match result {
        Ok(session) => {
            let secure = if s.app.config().public_url().starts_with("https://") {
                "; Secure"
            } else {
                ""
            };
            let max_age = (session.expires_at - switchboard_app::now_ms()) / 1000;
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
                session.cookie
            );
            let mut resp = Redirect::to("/console").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(AppError::Unauthenticated(_)) => {
            let which = if f.token.as_deref().is_some_and(|t| !t.trim().is_empty()) {
                "that token is not valid, expired or revoked"
            } else {
                "wrong username or password"
            };
            render(
                StatusCode::UNAUTHORIZED,
                &LoginPage {
                    error: Some(format!("Sign-in failed: {which}.")),
                },
            )
        }
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(s): State<AppState>, c: Console, Form(f): Form<CsrfForm>) -> Response {
    if let Some(r) = c.csrf_mismatch(&f.csrf) {
        return r;
    }
    if let Err(e) = s.app.sign_out(&c.principal, &c.ctx).await {
        return app_error(c.chrome("overview"), e);
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sb_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

// ------------------------------------------------------------------ pages

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    users: usize,
    queued: i64,
    running: i64,
    dead: i64,
    backend: &'static str,
}

async fn overview(State(s): State<AppState>, c: Console) -> Response {
    let users = match s.app.list_users().await {
        Ok(u) => u.len(),
        Err(e) => return app_error(c.chrome("overview"), e),
    };
    let counts = match s.app.job_counts().await {
        Ok(j) => j,
        Err(e) => return app_error(c.chrome("overview"), e),
    };
    render(
        StatusCode::OK,
        &OverviewPage {
            chrome: c.chrome("overview"),
            users,
            queued: counts.queued,
            running: counts.running,
            dead: counts.dead,
            backend: s.app.store().backend().as_str(),
        },
    )
}

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    target: String,
    details: String,
    request_id: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    error: Option<String>,
    rows: Vec<AuditRow>,
    f_actor: String,
    f_action: String,
    f_target: String,
    f_from: String,
    f_to: String,
    older: Option<String>,
}

async fn audit(State(s): State<AppState>, c: Console, Query(q): Query<AuditQuery>) -> Response {
    if let Some(r) = c.denied(Permission::Audit, "audit") {
        return r;
    }
    let keep = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut page = AuditPage {
        chrome: c.chrome("audit"),
        error: None,
        rows: Vec::new(),
        f_actor: keep(&q.actor),
        f_action: keep(&q.action),
        f_target: keep(&q.target),
        f_from: keep(&q.from),
        f_to: keep(&q.to),
        older: None,
    };
    let limit = q.limit.unwrap_or(100);
    let filter = match q.into_filter() {
        Ok(f) => f,
        Err(v) => {
            page.error = Some(v.to_string());
            return render(StatusCode::UNPROCESSABLE_ENTITY, &page);
        }
    };
    match s.app.list_audit(filter).await {
        Ok(records) => {
            if i64::try_from(records.len()).unwrap_or(0) >= limit
                && let Some(last) = records.last()
            {
                {
                    let qs = query_string(&[
                        ("actor", &page.f_actor),
                        ("action", &page.f_action),
                        ("target", &page.f_target),
                        ("from", &page.f_from),
                        ("to", &page.f_to),
                        ("before", &last.id.to_string()),
                    ]);
                    page.older = Some(format!("/console/audit?{qs}"));
                }
            }
            page.rows = records
                .into_iter()
                .map(|r| AuditRow {
                    at: fmt_time(r.at),
                    actor: r.actor,
                    action: r.action,
                    target: r.target,
                    details: r.details.to_string(),
                    request_id: r.request_id.unwrap_or_default(),
                })
                .collect();
            render(StatusCode::OK, &page)
        }
        Err(e) => app_error(c.chrome("audit"), e),
    }
}

/// A query string of the non-empty pairs.
fn query_string(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(_, v)| !v.is_empty()))
        .finish()
}

struct JobLine {
    id: i64,
    kind: String,
    state: String,
    attempts: i32,
    max_attempts: i32,
    run_at: String,
    last_error: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    jobs: Vec<JobLine>,
    queued: i64,
    running: i64,
    dead: i64,
    can_operate: bool,
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
    notice: Option<String>,
}

async fn jobs(State(s): State<AppState>, c: Console, Query(q): Query<JobsQuery>) -> Response {
    let state = q.state.filter(|v| !v.is_empty());
    let (list, counts) = match (
        s.app
            .list_jobs(JobFilter {
                state,
                kind: None,
                limit: 200,
            })
            .await,
        s.app.job_counts().await,
    ) {
        (Ok(l), Ok(c)) => (l, c),
        (Err(e), _) | (_, Err(e)) => return app_error(c.chrome("jobs"), e),
    };
    let notice = q.notice.as_deref().map(|n| match n {
        "retried" => "The job is queued again.".to_owned(),
        "discarded" => "The job was discarded.".to_owned(),
        _ => String::new(),
    });
    let page = JobsPage {
        chrome: c.chrome("jobs"),
        notice: notice.filter(|n| !n.is_empty()),
        error: None,
        jobs: list
            .into_iter()
            .map(|j| JobLine {
                id: j.id,
                kind: j.kind,
                state: j.state,
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                run_at: fmt_time(j.run_at),
                last_error: j.last_error.unwrap_or_default(),
            })
            .collect(),
        queued: counts.queued,
        running: counts.running,
        dead: counts.dead,
        can_operate: c.allows(Permission::Operate),
    };
    render(StatusCode::OK, &page)
}

async fn job_action(
    State(s): State<AppState>,
    c: Console,
    Path((id, action)): Path<(i64, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Operate, "jobs") {
        return r;
    }
    let result = match action.as_str() {
        "retry" => s
            .app
            .retry_dead_job(&c.principal, &c.ctx, id)
            .await
            .map(|_| "retried"),
        "discard" => s
            .app
            .discard_dead_job(&c.principal, &c.ctx, id)
            .await
            .map(|()| "discarded"),
        _ => Err(AppError::NotFound(format!("job action `{action}`"))),
    };
    match result {
        Ok(n) => Redirect::to(&format!("/console/jobs?state=dead&notice={n}")).into_response(),
        Err(e) => app_error(c.chrome("jobs"), e),
    }
}

struct UserLine {
    username: String,
    display_name: String,
    role: &'static str,
    disabled: bool,
    has_password: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    users: Vec<UserLine>,
    can_admin: bool,
}

async fn users_page(
    s: &AppState,
    c: &Console,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    match s.app.list_users().await {
        Ok(list) => render(
            status,
            &UsersPage {
                chrome: c.chrome("users"),
                notice,
                error,
                users: list
                    .into_iter()
                    .map(|u| UserLine {
                        username: u.username,
                        display_name: u.display_name,
                        role: u.role.as_str(),
                        disabled: u.disabled,
                        has_password: u.has_password,
                    })
                    .collect(),
                can_admin: c.allows(Permission::Administer),
            },
        ),
        Err(e) => app_error(c.chrome("users"), e),
    }
}

async fn users(State(s): State<AppState>, c: Console) -> Response {
    users_page(&s, &c, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
struct NewUserForm {
    csrf: String,
    username: String,
    display_name: Option<String>,
    role: String,
    password: Option<String>,
}

async fn create_user(
    State(s): State<AppState>,
    c: Console,
    Form(f): Form<NewUserForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, "users") {
        return r;
    }
    let input = NewUser {
        username: f.username,
        display_name: f.display_name.filter(|d| !d.trim().is_empty()),
        role: f.role,
        password: f.password.filter(|p| !p.is_empty()),
    };
    match s.app.create_user(&c.principal, &c.ctx, input).await {
        Ok(u) => {
            users_page(
                &s,
                &c,
                StatusCode::OK,
                Some(format!("User `{}` created.", u.username)),
                None,
            )
            .await
        }
        Err(AppError::Validation(v)) => {
            users_page(
                &s,
                &c,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(v.to_string()),
            )
            .await
        }
        Err(AppError::Conflict(m)) => users_page(&s, &c, StatusCode::CONFLICT, None, Some(m)).await,
        Err(e) => app_error(c.chrome("users"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_encode_values_and_skip_empty_ones() {
        assert_eq!(
            query_string(&[("actor", "user:a b&c"), ("b", ""), ("c", "y.z")]),
            "actor=user%3Aa+b%26c&c=y.z"
        );
    }
}

// ------------------------------------------------------------------ Epic environments

struct KeyLine {
    kid: String,
    state: String,
    created: String,
    last_used: String,
}

struct StepLine {
    name: String,
    status: String,
    detail: String,
    hint: String,
}

struct TestLine {
    ok: bool,
    at: String,
    steps: Vec<StepLine>,
}

struct EnvCard {
    id: String,
    name: String,
    kind: String,
    interconnect_url: String,
    instance: String,
    client_id: String,
    token_url: String,
    jwk_url: String,
    apps: String,
    basic: String,
    alg: String,
    keys: Vec<KeyLine>,
    last_test: Option<TestLine>,
}

#[derive(Template)]
#[template(path = "epic.html")]
struct EpicPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    envs: Vec<EnvCard>,
    can_operate: bool,
    can_admin: bool,
}

async fn epic_page_with(
    s: &AppState,
    c: &Console,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let list = match s.app.list_environments().await {
        Ok(l) => l,
        Err(e) => return app_error(c.chrome("epic"), e),
    };
    let mut envs = Vec::with_capacity(list.len());
    for e in list {
        let last_test = s
            .app
            .latest_check(&e.id, "connection")
            .await
            .ok()
            .map(|t| TestLine {
                ok: t.ok,
                at: fmt_time(t.at),
                steps: t
                    .steps
                    .into_iter()
                    .map(|st| StepLine {
                        name: st.name,
                        status: serde_json::to_value(st.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        detail: st.detail,
                        hint: st.hint.unwrap_or_default(),
                    })
                    .collect(),
            });
        envs.push(EnvCard {
            basic: match (&e.basic_username, e.has_basic_password, &e.epic_client_id) {
                (Some(u), true, Some(cid)) => format!("{u} (password set), Epic-Client-ID {cid}"),
                (Some(u), has, cid) => format!(
                    "{u}{}{}",
                    if has {
                        " (password set)"
                    } else {
                        " (no password)"
                    },
                    cid.as_ref()
                        .map(|c| format!(", Epic-Client-ID {c}"))
                        .unwrap_or_default()
                ),
                (None, _, _) => "not configured".to_owned(),
            },
            apps: if e.apps.is_empty() {
                "none".to_owned()
            } else {
                e.apps.join(", ")
            },
            keys: e
                .key_set
                .keys
                .iter()
                .map(|k| KeyLine {
                    kid: k.kid.clone(),
                    state: k.state.clone(),
                    created: fmt_time(k.created_at),
                    last_used: k
                        .last_used_at
                        .map(fmt_time)
                        .unwrap_or_else(|| "never".to_owned()),
                })
                .collect(),
            alg: e.key_set.alg.clone(),
            jwk_url: e.key_set.jwk_url.clone(),
            id: e.id,
            name: e.name,
            kind: e.kind,
            interconnect_url: e.interconnect_url,
            instance: e.instance,
            client_id: e.client_id,
            token_url: e.token_url,
            last_test,
        });
    }
    render(
        status,
        &EpicPage {
            chrome: c.chrome("epic"),
            notice,
            error,
            envs,
            can_operate: c.allows(Permission::Operate),
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn epic_page(State(s): State<AppState>, c: Console) -> Response {
    epic_page_with(&s, &c, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
struct NewEnvironmentForm {
    csrf: String,
    name: String,
    kind: String,
    interconnect_url: String,
    instance: String,
    client_id: String,
    key_algorithm: Option<String>,
    app_rover: Option<String>,
    app_haiku: Option<String>,
    app_canto: Option<String>,
}

async fn create_environment(
    State(s): State<AppState>,
    c: Console,
    Form(f): Form<NewEnvironmentForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, "epic") {
        return r;
    }
    let apps: Vec<String> = [
        ("Rover", &f.app_rover),
        ("Haiku", &f.app_haiku),
        ("Canto", &f.app_canto),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some())
    .map(|(n, _)| n.to_owned())
    .collect();
    let input = switchboard_app::epic_env::EnvironmentInput {
        name: Some(f.name),
        kind: Some(f.kind),
        interconnect_url: Some(f.interconnect_url),
        instance: Some(f.instance),
        client_id: Some(f.client_id),
        apps: Some(apps),
        key_algorithm: f.key_algorithm,
        ..Default::default()
    };
    match s.app.create_environment(&c.principal, &c.ctx, input).await {
        Ok(e) => {
            epic_page_with(
                &s,
                &c,
                StatusCode::OK,
                Some(format!(
                    "Environment `{}` created. Register its JWK URL with Epic: {}",
                    e.name, e.key_set.jwk_url
                )),
                None,
            )
            .await
        }
        Err(AppError::Validation(v)) => {
            epic_page_with(
                &s,
                &c,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(v.to_string()),
            )
            .await
        }
        Err(e) => app_error(c.chrome("epic"), e),
    }
}

async fn environment_action(
    State(s): State<AppState>,
    c: Console,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = c.csrf_mismatch(&f.csrf) {
        return r;
    }
    // (message, whether it reports a problem)
    let result = match action.as_str() {
        "test" => match c.denied(Permission::Operate, "epic") {
            Some(r) => return r,
            None => s
                .app
                .test_connection(&c.principal, &c.ctx, &id)
                .await
                .map(|r| {
                    if r.ok {
                        ("Connection test passed.".to_owned(), false)
                    } else {
                        (
                            "Connection test found problems; see the steps below.".to_owned(),
                            true,
                        )
                    }
                }),
        },
        "rotate" => match c.denied(Permission::Administer, "epic") {
            Some(r) => return r,
            None => s
                .app
                .rotate_environment_keys(&c.principal, &c.ctx, &id)
                .await
                .map(|_| {
                    (
                        "A new key is published; it starts signing after the publish delay."
                            .to_owned(),
                        false,
                    )
                }),
        },
        _ => Err(AppError::NotFound(format!("environment action `{action}`"))),
    };
    match result {
        Ok((m, false)) => epic_page_with(&s, &c, StatusCode::OK, Some(m), None).await,
        Ok((m, true)) => epic_page_with(&s, &c, StatusCode::OK, None, Some(m)).await,
        Err(AppError::Conflict(m)) => {
            epic_page_with(&s, &c, StatusCode::CONFLICT, None, Some(m)).await
        }
        Err(e) => app_error(c.chrome("epic"), e),
    }
}

#[derive(Deserialize)]
struct LogoutTestForm {
    csrf: String,
    serial: String,
    app: String,
    append_app_name: Option<String>,
}

async fn environment_logout_test(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<LogoutTestForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Operate, "epic") {
        return r;
    }
    match s
        .app
        .test_logout(
            &c.principal,
            &c.ctx,
            &id,
            f.serial.trim(),
            &f.app,
            f.append_app_name.is_some(),
        )
        .await
    {
        Ok(r) => {
            let summary: Vec<String> = r
                .steps
                .iter()
                .map(|st| {
                    format!(
                        "{}: {}{}",
                        st.name,
                        st.detail,
                        st.hint
                            .as_deref()
                            .map(|h| format!(" — {h}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            if r.ok {
                epic_page_with(
                    &s,
                    &c,
                    StatusCode::OK,
                    Some(format!("Logout test passed. {}", summary.join(" · "))),
                    None,
                )
                .await
            } else {
                epic_page_with(
                    &s,
                    &c,
                    StatusCode::OK,
                    None,
                    Some(format!("Logout test failed. {}", summary.join(" · "))),
                )
                .await
            }
        }
        Err(AppError::Validation(v)) => {
            epic_page_with(
                &s,
                &c,
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
                Some(v.to_string()),
            )
            .await
        }
        Err(e) => app_error(c.chrome("epic"), e),
    }
}
