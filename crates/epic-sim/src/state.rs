//! The simulator's memory: registered clients, issued tokens, replay protection, cached JWK sets,
//! the mobile-device registry, recorded statuses and messages, the journal and fault rules.

use crate::config::{ClientConfig, SimConfig};
use crate::data::{DataSet, Sizes};
use crate::faults::FaultRule;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use switchboard_epic::jose::JwkSet;

#[derive(Clone)]
pub struct Sim {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: SimConfig,
    pub base_url: String,
    pub clients: RwLock<HashMap<String, ClientConfig>>,
    pub tokens: RwLock<HashMap<String, IssuedToken>>,
    pub refresh_tokens: Mutex<HashMap<String, IssuedToken>>,
    pub codes: Mutex<HashMap<String, AuthCode>>,
    pub launches: Mutex<HashMap<String, serde_json::Value>>,
    /// (client id, jti) → the assertion's `exp`, to refuse replays until then.
    pub jtis: Mutex<HashMap<(String, String), i64>>,
    pub jwks: Mutex<HashMap<String, CachedJwks>>,
    pub jwks_fetches: Mutex<Vec<JwksFetch>>,
    pub mobile: Mutex<HashMap<String, MobileLogin>>,
    pub presence: Mutex<Vec<PresenceEvent>>,
    pub statuses: Mutex<Vec<ConnectionStatus>>,
    pub hl7: Mutex<Vec<Hl7Message>>,
    pub journal: Mutex<VecDeque<Call>>,
    pub journal_seq: std::sync::atomic::AtomicU64,
    pub faults: RwLock<Vec<FaultRule>>,
    pub fault_rng: Mutex<crate::data::Rng>,
    pub data: RwLock<DataSet>,
    pub http: reqwest::Client,
}

#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    pub client_id: String,
    pub instance: String,
    pub expires_at_ms: i64,
    pub scope: String,
    /// Launch context for authorization-code tokens.
    pub context: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct AuthCode {
    pub client_id: String,
    pub instance: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub context: serde_json::Value,
    pub scope: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct CachedJwks {
    pub set: JwkSet,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JwksFetch {
    pub url: String,
    pub at_ms: i64,
    pub ok: bool,
    pub max_age_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MobileLogin {
    pub install_id: String,
    pub user: String,
    pub app: Option<String>,
    pub logged_in_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceEvent {
    pub user: String,
    pub install_id: String,
    pub presence: &'static str,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStatus {
    pub conference_id: String,
    pub external_id: String,
    pub external_id_type: String,
    pub vendor_name: String,
    pub status: String,
    pub instance: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hl7Message {
    pub instance: String,
    pub endpoint: String,
    pub control_id: String,
    pub message_type: String,
    pub processing_id: String,
    pub ack_code: String,
    pub at_ms: i64,
}

/// One call as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub seq: u64,
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Selected request headers: content-type, accept, epic-client-id, and the scheme (never the
    /// credentials) of Authorization.
    pub headers: HashMap<String, String>,
    pub body: String,
    pub status: u16,
    pub fault: Option<String>,
    pub latency_ms: u64,
}

#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Sim {
    pub fn new(config: SimConfig, base_url: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("switchboard-epic-sim")
            .build()
            .map_err(|e| e.to_string())?;
        let today = now_ms() / 86_400_000 * 86_400_000;
        let data = DataSet::generate(config.seed, Sizes::default(), today);
        let clients = config
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), c.clone()))
            .collect();
        let rng = crate::data::Rng::new(config.seed ^ 0xFA17);
        Ok(Self {
            inner: Arc::new(Inner {
                base_url: base_url.trim_end_matches('/').to_owned(),
                clients: RwLock::new(clients),
                tokens: RwLock::new(HashMap::new()),
                refresh_tokens: Mutex::new(HashMap::new()),
                codes: Mutex::new(HashMap::new()),
                launches: Mutex::new(HashMap::new()),
                jtis: Mutex::new(HashMap::new()),
                jwks: Mutex::new(HashMap::new()),
                jwks_fetches: Mutex::new(Vec::new()),
                mobile: Mutex::new(HashMap::new()),
                presence: Mutex::new(Vec::new()),
                statuses: Mutex::new(Vec::new()),
                hl7: Mutex::new(Vec::new()),
                journal: Mutex::new(VecDeque::new()),
                journal_seq: std::sync::atomic::AtomicU64::new(0),
                faults: RwLock::new(Vec::new()),
                fault_rng: Mutex::new(rng),
                data: RwLock::new(data),
                http,
                config,
            }),
        })
    }

    #[must_use]
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// Splits `interconnect-prd-oauth` into (`interconnect-prd`, `Oauth`) if it is a known instance.
    #[must_use]
    pub fn instance(&self, base: &str) -> Option<(String, Flavor, bool)> {
        let (name, flavor) = if let Some(n) = base.strip_suffix("-oauth") {
            (n, Flavor::Oauth)
        } else if let Some(n) = base.strip_suffix("-username") {
            (n, Flavor::Username)
        } else {
            return None;
        };
        self.inner
            .config
            .instances
            .iter()
            .find(|i| i.name == name)
            .map(|i| (i.name.clone(), flavor, i.production))
    }

    pub fn register_client(&self, c: ClientConfig) {
        lock_w(&self.inner.clients).insert(c.client_id.clone(), c);
    }

    #[must_use]
    pub fn client(&self, id: &str) -> Option<ClientConfig> {
        lock_r(&self.inner.clients).get(id).cloned()
    }

    /// Signs a user in to an app on a device, as if they had logged in to Rover.
    pub fn mobile_login(&self, install_id: &str, user: &str, app: Option<String>) {
        let at = now_ms();
        lock(&self.inner.mobile).insert(
            install_id.to_owned(),
            MobileLogin {
                install_id: install_id.to_owned(),
                user: user.to_owned(),
                app,
                logged_in_at_ms: at,
            },
        );
        lock(&self.inner.presence).push(PresenceEvent {
            user: user.to_owned(),
            install_id: install_id.to_owned(),
            presence: "online",
            at_ms: at,
        });
    }

    #[must_use]
    pub fn mobile_logins(&self) -> Vec<MobileLogin> {
        let mut v: Vec<_> = lock(&self.inner.mobile).values().cloned().collect();
        v.sort_by(|a, b| a.install_id.cmp(&b.install_id));
        v
    }

    #[must_use]
    pub fn presence(&self) -> Vec<PresenceEvent> {
        lock(&self.inner.presence).clone()
    }

    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.journal).iter().cloned().collect()
    }

    pub fn clear_calls(&self) {
        lock(&self.inner.journal).clear();
    }

    #[must_use]
    pub fn jwks_fetches(&self) -> Vec<JwksFetch> {
        lock(&self.inner.jwks_fetches).clone()
    }

    #[must_use]
    pub fn connection_statuses(&self) -> Vec<ConnectionStatus> {
        lock(&self.inner.statuses).clone()
    }

    #[must_use]
    pub fn hl7_messages(&self) -> Vec<Hl7Message> {
        lock(&self.inner.hl7).clone()
    }

    /// Any resource of the generated data set (for tests that need real ids).
    #[must_use]
    pub fn resource_ids(&self, resource_type: &str) -> Vec<String> {
        lock_r(&self.inner.data)
            .resources
            .get(resource_type)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `-oauth`: bearer tokens.
    Oauth,
    /// `-username`: Basic auth with an `emp$` system user and `Epic-Client-ID`.
    Username,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn lock_r<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn lock_w<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
