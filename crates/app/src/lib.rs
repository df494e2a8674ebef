//! Switchboard's use cases. Each mutating use case is one transaction: the state change, its
//! audit entry and the jobs it needs commit together or not at all.

pub mod accounts;
pub mod appconfig;
pub mod audit;
pub mod auth_cache;
mod checkin_batch;
pub mod config;
pub mod crypto;
pub mod devices;
pub mod doctor;
pub mod epic_env;
mod error;
pub mod files;
pub mod gateway;
pub mod jobs;
pub mod keyring;
pub mod lending;
pub mod secrets;
pub mod sso;
pub mod telehealth;

use std::sync::Arc;
use switchboard_domain::Role;
use switchboard_domain::audit::AuditEvent;
use switchboard_store::{Store, Tx};

pub use config::Config;
pub use error::AppError;
pub use keyring::Keyring;

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Who is acting, as established by an API token or a console session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    /// The effective role (a token may narrow its user's role).
    pub role: Role,
    pub via: AuthMethod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Token {
        id: String,
    },
    Session {
        id: String,
        csrf: String,
    },
    /// The command line on the server itself (`switchboard ...`).
    Cli,
    /// Switchboard acting on its own (start-up, jobs).
    System,
    /// A device agent or a kiosk, recorded under its own name (`device:<serial>`, `kiosk:<location>`).
    Station {
        actor: String,
    },
}

impl Principal {
    /// The command-line operator: full rights, recorded as `cli` in the audit log.
    #[must_use]
    pub fn cli() -> Self {
        Self {
            user_id: String::new(),
            username: "cli".to_owned(),
            display_name: "Command line".to_owned(),
            role: Role::Admin,
            via: AuthMethod::Cli,
        }
    }

    /// Switchboard itself: recorded as `system` in the audit log.
    #[must_use]
    pub fn system() -> Self {
        Self {
            username: "system".to_owned(),
            display_name: "Switchboard".to_owned(),
            via: AuthMethod::System,
            ..Self::cli()
        }
    }

    #[must_use]
    pub fn actor(&self) -> String {
        match &self.via {
            AuthMethod::Cli => "cli".to_owned(),
            AuthMethod::System => "system".to_owned(),
            AuthMethod::Station { actor } => actor.clone(),
            _ => format!("user:{}", self.username),
        }
    }

    fn via_label(&self) -> String {
        match &self.via {
            AuthMethod::Token { id } => format!("token:{id}"),
            AuthMethod::Session { .. } => "console".to_owned(),
            AuthMethod::Cli => "cli".to_owned(),
            AuthMethod::System => "system".to_owned(),
            AuthMethod::Station { actor } => actor.clone(),
        }
    }

    /// A device agent or kiosk acting with operator rights over devices only.
    #[must_use]
    pub fn station(actor: String) -> Self {
        Self {
            user_id: String::new(),
            username: actor.clone(),
            display_name: actor.clone(),
            role: Role::Operator,
            via: AuthMethod::Station { actor },
        }
    }
}

/// The request an action came from, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: Option<String>,
}

/// The application: storage, keys and settings, shared by every handler and worker.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    store: Arc<dyn Store>,
    keyring: std::sync::RwLock<Keyring>,
    config: Config,
    http: reqwest::Client,
    epic_tokens: switchboard_epic::auth::TokenCache,
    signing_keys: std::sync::Mutex<
        std::collections::HashMap<String, Arc<switchboard_epic::jose::SigningKey>>,
    >,
    epic_http: std::sync::Mutex<std::collections::HashMap<String, reqwest::Client>>,
    /// Resolved credentials per environment: (when, credentials, client).
    epic_credentials: std::sync::Mutex<
        std::collections::HashMap<
            String,
            (
                std::time::Instant,
                switchboard_epic::auth::BackendCredentials,
                reqwest::Client,
            ),
        >,
    >,
    /// Environment rows read on hot paths: (when, row).
    epic_env_rows: std::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, switchboard_store::EnvironmentRow)>,
    >,
    /// Token buckets toward each Epic environment: (tokens, last refill).
    epic_buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    telehealth: telehealth::TelehealthCache,
    gateway: gateway::GatewayState,
    devices: devices::DeviceState,
    /// API tokens found valid: (who, until when the token itself is valid).
    api_tokens: Arc<auth_cache::AuthCache<(Principal, Option<i64>)>>,
    /// Device credentials found valid: the device's id.
    device_credentials: Arc<auth_cache::AuthCache<String>>,
    /// PostgreSQL: check-ins waiting to share a transaction (see `checkin_batch`), once the
    /// first one came.
    checkins: std::sync::OnceLock<checkin_batch::CheckinQueue>,
}

impl App {
    pub fn new(store: Arc<dyn Store>, keyring: Keyring, config: Config) -> Result<Self, AppError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_millis(config.outbound_timeout_ms))
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AppError::Internal(format!("HTTP client: {e}")))?;
        let epic_tokens = switchboard_epic::auth::TokenCache::new(http.clone());
        let lookup = config.identity_lookup_url.clone().map(|url| {
            std::sync::Arc::new(devices::HttpIdentityLookup::new(url, http.clone()))
                as std::sync::Arc<dyn devices::IdentityLookup>
        });
        let app = Self {
            inner: Arc::new(AppInner {
                store,
                keyring: std::sync::RwLock::new(keyring),
                config,
                http,
                epic_tokens,
                signing_keys: std::sync::Mutex::default(),
                epic_http: std::sync::Mutex::default(),
                epic_credentials: std::sync::Mutex::default(),
                epic_buckets: std::sync::Mutex::default(),
                epic_env_rows: std::sync::Mutex::default(),
                telehealth: telehealth::TelehealthCache::default(),
                gateway: gateway::GatewayState::default(),
                devices: devices::DeviceState::default(),
                api_tokens: Arc::new(auth_cache::AuthCache::new(auth_cache::AUTH_CACHE_TTL)),
                device_credentials: Arc::new(auth_cache::AuthCache::new(
                    auth_cache::AUTH_CACHE_TTL,
                )),
                checkins: std::sync::OnceLock::new(),
            }),
        };
        app.set_identity_lookup(lookup);
        Ok(app)
    }

    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    #[must_use]
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Epic access tokens, cached per environment.
    #[must_use]
    pub fn epic_tokens(&self) -> &switchboard_epic::auth::TokenCache {
        &self.inner.epic_tokens
    }

    fn cached_signing_key(&self, kid: &str) -> Option<Arc<switchboard_epic::jose::SigningKey>> {
        self.inner
            .signing_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    fn cached_credentials(
        &self,
        env_id: &str,
    ) -> Option<(switchboard_epic::auth::BackendCredentials, reqwest::Client)> {
        let m = self
            .inner
            .epic_credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(env_id)
            .filter(|(at, _, _)| at.elapsed() < epic_env::CREDENTIALS_TTL)
            .map(|(_, c, h)| (c.clone(), h.clone()))
    }

    fn cache_credentials(
        &self,
        env_id: &str,
        creds: switchboard_epic::auth::BackendCredentials,
        http: reqwest::Client,
    ) {
        let mut m = self
            .inner
            .epic_credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.insert(env_id.to_owned(), (std::time::Instant::now(), creds, http));
    }

    /// Forgets resolved credentials (after an environment changed or a key was activated).
    pub(crate) fn forget_credentials(&self) {
        self.inner
            .epic_credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.inner
            .epic_env_rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn cached_environment_row(&self, env_id: &str) -> Option<switchboard_store::EnvironmentRow> {
        self.inner
            .epic_env_rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(env_id)
            .filter(|(at, _)| at.elapsed() < epic_env::CREDENTIALS_TTL)
            .map(|(_, r)| r.clone())
    }

    fn cache_environment_row(&self, row: switchboard_store::EnvironmentRow) {
        self.inner
            .epic_env_rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(row.id.clone(), (std::time::Instant::now(), row));
    }

    fn cached_epic_http(&self, key: &str) -> Option<reqwest::Client> {
        self.inner
            .epic_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn cache_epic_http(&self, key: String, client: reqwest::Client) {
        let mut m = self
            .inner
            .epic_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prefix = key.split('@').next().unwrap_or_default().to_owned();
        m.retain(|k, _| !k.starts_with(&format!("{prefix}@")));
        m.insert(key, client);
    }

    /// Takes one slot of `rate` per second for `env_id`, or says how long to wait for one.
    fn take_epic_slot(&self, env_id: &str, rate: f64) -> Option<std::time::Duration> {
        let mut b = self
            .inner
            .epic_buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let (tokens, last) = b.entry(env_id.to_owned()).or_insert((rate.max(1.0), now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate.max(1.0));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(std::time::Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    fn cache_signing_key(&self, kid: &str, key: Arc<switchboard_epic::jose::SigningKey>) {
        self.inner
            .signing_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kid.to_owned(), key);
    }

    #[must_use]
    pub fn keyring(&self) -> Keyring {
        self.inner
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace_keyring(&self, k: Keyring) {
        *self
            .inner
            .keyring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = k;
    }

    /// Appends an audit entry inside `tx` (see [`Tx::append_audit`]).
    pub async fn audit(
        &self,
        tx: &mut dyn Tx,
        principal: &Principal,
        ctx: &RequestContext,
        mut event: AuditEvent,
    ) -> Result<(), AppError> {
        if let serde_json::Value::Object(map) = &mut event.details {
            map.entry("via")
                .or_insert_with(|| serde_json::Value::String(principal.via_label()));
        }
        event.actor = principal.actor();
        event.request_id.clone_from(&ctx.request_id);
        self.append_audit(tx, &event).await
    }

    /// Appends an audit entry for something the system did on its own (jobs, start-up).
    pub async fn append_audit(&self, tx: &mut dyn Tx, event: &AuditEvent) -> Result<(), AppError> {
        tx.append_audit(event, now_ms()).await?;
        Ok(())
    }
}

/// Describes an outbound HTTP failure in words that hold no URL, header or body.
#[must_use]
pub fn outbound_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    }
}
