//! Backend OAuth with Epic (SMART Backend Services as Epic implements it): signed client
//! assertions, a token cache per credential set renewed before expiry, and one fetch shared by
//! every concurrent caller. Failures are classified with the fix spelled out.

use crate::jose::{Alg, Header, SigningKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Assertions live 4 minutes: inside Epic's 5-minute limit with room for clock skew.
const ASSERTION_LIFETIME_SECS: i64 = 240;

/// What Switchboard authenticates to one Epic environment with.
#[derive(Clone)]
pub struct BackendCredentials {
    pub client_id: String,
    /// The exact token URL; it is also the assertion's `aud`.
    pub token_url: String,
    pub key: Arc<SigningKey>,
    pub kid: String,
    pub alg: Alg,
    /// Sent as `jku` when set (must equal the JWK URL registered with Epic).
    pub jku: Option<String>,
}

impl std::fmt::Debug for BackendCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendCredentials")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl BackendCredentials {
    /// A signed client assertion per Epic's rules: `iss` = `sub` = client id, `aud` = token URL,
    /// unique `jti`, `exp` four minutes ahead, `iat` / `nbf` now, `kid` in the header.
    pub fn assertion(&self) -> Result<String, EpicAuthError> {
        let now = chrono_now();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| EpicAuthError::Configuration {
            detail: "no randomness".to_owned(),
        })?;
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let claims = serde_json::json!({
            "iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
            "jti": jti, "iat": now, "nbf": now, "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let header = Header {
            alg: self.alg.as_str().to_owned(),
            typ: Some("JWT".to_owned()),
            kid: Some(self.kid.clone()),
            jku: self.jku.clone(),
        };
        self.key
            .sign_jwt(&header, &claims)
            .map_err(|e| EpicAuthError::Configuration {
                detail: format!("signing the assertion: {e}"),
            })
    }

    fn cache_key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}",
            self.token_url, self.client_id, self.kid
        )
    }
}

fn chrono_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
    .unwrap_or(0)
}

/// Why a token could not be had, in classes an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpicAuthError {
    /// `unauthorized_client`: the client exists but no background user is mapped.
    #[error(
        "Epic answered unauthorized_client: ask your Epic client systems administrator to map a background user to client {client_id}"
    )]
    NotMapped { client_id: String },
    /// `invalid_client`: Epic could not authenticate the assertion.
    #[error(
        "Epic answered invalid_client for client {client_id}: check that the client id is right and that the JWK URL is registered with Epic for this environment (a newly registered JWK URL can take up to 12 hours to sync)"
    )]
    Rejected { client_id: String },
    /// `invalid_request` or another OAuth error: a configuration or protocol problem.
    #[error(
        "Epic refused the token request ({error}): check the token URL and the environment's settings"
    )]
    Refused { error: String },
    #[error("Epic is unavailable (HTTP {status}); the request will be retried")]
    EpicDown { status: u16 },
    #[error(
        "could not reach Epic ({kind}); check the Interconnect URL, DNS, firewall and TLS certificate"
    )]
    Network { kind: &'static str },
    #[error("Epic's answer was not a token response: {detail}")]
    BadResponse { detail: String },
    #[error("configuration: {detail}")]
    Configuration { detail: String },
}

impl EpicAuthError {
    /// Whether trying again later may succeed without anyone changing anything.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        matches!(self, Self::EpicDown { .. } | Self::Network { .. })
    }

    /// A stable short name for logs, metrics and the connection doctor.
    #[must_use]
    pub const fn class(&self) -> &'static str {
        match self {
            Self::NotMapped { .. } => "not_mapped",
            Self::Rejected { .. } => "rejected",
            Self::Refused { .. } | Self::Configuration { .. } => "bad_configuration",
            Self::EpicDown { .. } => "epic_down",
            Self::Network { .. } => "network",
            Self::BadResponse { .. } => "bad_response",
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    renew_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct Slot {
    value: RwLock<Option<Cached>>,
    fetch: tokio::sync::Mutex<()>,
}

/// Counters, for metrics and the benchmark's "≥ 99.9 % from cache" check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub fetches: u64,
}

/// Access tokens per credential set. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct TokenCache {
    http: reqwest::Client,
    slots: Arc<Mutex<HashMap<String, Arc<Slot>>>>,
    stats: Arc<Mutex<CacheStats>>,
}

impl TokenCache {
    #[must_use]
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            slots: Arc::default(),
            stats: Arc::default(),
        }
    }

    #[must_use]
    pub fn stats(&self) -> CacheStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(key.to_owned()).or_default())
    }

    fn fresh(slot: &Slot) -> Option<Arc<str>> {
        let v = slot
            .value
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.as_ref()
            .filter(|c| Instant::now() < c.renew_at)
            .map(|c| Arc::clone(&c.token))
    }

    /// A valid access token: from the cache, or fetched once for every concurrent caller.
    pub async fn token(&self, creds: &BackendCredentials) -> Result<Arc<str>, EpicAuthError> {
        let http = self.http.clone();
        self.token_via(&http, creds).await
    }

    /// As [`Self::token`], fetching (when needed) through `http` (an environment's own client).
    pub async fn token_via(
        &self,
        http: &reqwest::Client,
        creds: &BackendCredentials,
    ) -> Result<Arc<str>, EpicAuthError> {
        let slot = self.slot(&creds.cache_key());
        if let Some(t) = Self::fresh(&slot) {
            self.stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .hits += 1;
            return Ok(t);
        }
        let _guard = slot.fetch.lock().await;
        // Another caller may have fetched while we waited.
        if let Some(t) = Self::fresh(&slot) {
            self.stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .hits += 1;
            return Ok(t);
        }
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fetches += 1;
        let fetched = fetch(http, creds).await;
        match fetched {
            Ok(c) => {
                let token = Arc::clone(&c.token);
                *slot
                    .value
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
                Ok(token)
            }
            Err(e) => {
                // An expired token is never served; a failure caches nothing.
                let mut v = slot
                    .value
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if v.as_ref().is_some_and(|c| Instant::now() >= c.expires_at) {
                    *v = None;
                }
                Err(e)
            }
        }
    }

    /// Forgets the token (after Epic answered 401 with it).
    pub fn invalidate(&self, creds: &BackendCredentials) {
        let slot = self.slot(&creds.cache_key());
        *slot
            .value
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

fn network_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

async fn fetch(
    http: &reqwest::Client,
    creds: &BackendCredentials,
) -> Result<Cached, EpicAuthError> {
    let assertion = creds.assertion()?;
    let started = Instant::now();
    let resp = http
        .post(&creds.token_url)
        .header("accept", "application/json")
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .map_err(|e| EpicAuthError::Network {
            kind: network_kind(&e),
        })?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(EpicAuthError::EpicDown {
            status: status.as_u16(),
        });
    }
    let body = resp.bytes().await.map_err(|e| EpicAuthError::Network {
        kind: network_kind(&e),
    })?;
    if !status.is_success() {
        let error = serde_json::from_slice::<OAuthErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {}", status.as_u16()));
        return Err(match error.as_str() {
            "unauthorized_client" => EpicAuthError::NotMapped {
                client_id: creds.client_id.clone(),
            },
            "invalid_client" => EpicAuthError::Rejected {
                client_id: creds.client_id.clone(),
            },
            _ => EpicAuthError::Refused { error },
        });
    }
    let t: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| EpicAuthError::BadResponse {
            detail: e.to_string(),
        })?;
    if !t.token_type.eq_ignore_ascii_case("bearer") {
        return Err(EpicAuthError::BadResponse {
            detail: format!("token_type `{}` is not bearer", t.token_type),
        });
    }
    let lifetime = Duration::from_secs(t.expires_in.unwrap_or(300).max(1));
    // Renew when 10 % of the lifetime (at least 60 s, at most half) is left.
    let margin = (lifetime / 10)
        .max(Duration::from_secs(60))
        .min(lifetime / 2);
    Ok(Cached {
        token: Arc::from(t.access_token),
        renew_at: started + lifetime - margin,
        expires_at: started + lifetime,
    })
}
