//! Who is calling, and may they? Each extractor guarantees one permission, so a handler's
//! signature shows its authorization: `AdminAccess`, `OperatorAccess`, `AuditAccess`, `ReadAccess`.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, header};
use std::marker::PhantomData;
use switchboard_app::{AuthMethod, Principal, RequestContext};
use switchboard_domain::Permission;

pub const SESSION_COOKIE: &str = "sb_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

pub trait Requirement: Send + Sync + 'static {
    const PERMISSION: Permission;
}

macro_rules! requirement {
    ($name:ident, $perm:expr) => {
        #[derive(Debug)]
        pub struct $name;
        impl Requirement for $name {
            const PERMISSION: Permission = $perm;
        }
    };
}

requirement!(NeedRead, Permission::Read);
requirement!(NeedOperate, Permission::Operate);
requirement!(NeedAudit, Permission::Audit);
requirement!(NeedAdminister, Permission::Administer);

/// An authenticated principal whose role grants `R::PERMISSION`.
#[derive(Debug)]
pub struct Authed<R> {
    pub principal: Principal,
    pub ctx: RequestContext,
    _r: PhantomData<R>,
}

pub type ReadAccess = Authed<NeedRead>;
pub type OperatorAccess = Authed<NeedOperate>;
pub type AuditAccess = Authed<NeedAudit>;
pub type AdminAccess = Authed<NeedAdminister>;

pub fn request_context(parts: &Parts) -> RequestContext {
    RequestContext {
        request_id: parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_in(&parts.headers)
}

pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    cookie_in(&parts.headers, name)
}

/// A cookie's value from request headers.
pub fn cookie_in<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Resolves the caller from a bearer token or the console session cookie. A cookie-authenticated
/// request that changes something must also carry the session's CSRF token.
pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    if let Some(token) = bearer(parts) {
        return Ok(state.app.authenticate_token(token).await?);
    }
    let Some(c) = cookie(parts, SESSION_COOKIE) else {
        return Err(ApiError::unauthenticated());
    };
    let p = state.app.authenticate_session(c).await?;
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let AuthMethod::Session { csrf, .. } = &p.via else {
            return Err(ApiError::unauthenticated());
        };
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !switchboard_app::crypto::constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "csrf_failed",
                "CSRF check failed",
                "A console session must send its CSRF token in the X-CSRF-Token header for changes.",
            ));
        }
    }
    Ok(p)
}

impl<R: Requirement, S: Send + Sync> FromRequestParts<S> for Authed<R>
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let principal = authenticate(&state, parts).await?;
        if !principal.role.allows(R::PERMISSION) {
            return Err(ApiError::forbidden(R::PERMISSION.as_str()));
        }
        Ok(Self {
            principal,
            ctx: request_context(parts),
            _r: PhantomData,
        })
    }
}
