//! Rows as stored. The app layer turns them into domain types.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    #[serde(skip)]
    pub digest: Vec<u8>,
    pub prefix: String,
    pub role: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub digest: Vec<u8>,
    pub user_id: String,
    pub csrf: String,
    /// Narrower than the user's role when opened with a narrowed token.
    pub role: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub id: String,
    pub owner: String,
    pub purpose: String,
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub chain: i64,
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
    pub request_id: Option<String>,
    pub hash: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Matches the action exactly, or as a prefix when it ends with `.` (`user.`).
    pub action: Option<String>,
    pub target: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only entries with an id below this (paging backwards from newest).
    pub before_id: Option<i64>,
    /// Only entries with an id above this (paging forwards, for export).
    pub after_id: Option<i64>,
    pub oldest_first: bool,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub chain: i64,
    pub seq: i64,
    pub hash: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub dedupe_key: Option<String>,
    pub run_at: i64,
    pub max_attempts: i32,
    pub now: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub dedupe_key: Option<String>,
    pub state: String,
    pub run_at: i64,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// `queued`, `dead`, or any.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub limit: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// Waiting to run (due or scheduled for later), not leased.
    pub queued: i64,
    /// Leased by a worker right now.
    pub running: i64,
    pub dead: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySetRow {
    /// The public id in the JWK URL (`/jwks/{id}.json`).
    pub id: String,
    /// What it belongs to: `epic_environment:<id>`, `activation:<id>`.
    pub owner: String,
    pub alg: String,
    pub publish_delay_secs: i64,
    pub rotate_every_days: Option<i64>,
    pub next_rotation_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKeyRow {
    pub kid: String,
    pub key_set_id: String,
    pub alg: String,
    /// The public JWK as JSON text.
    pub public_jwk: String,
    /// Id of the sealed PKCS#8 private key in `secrets`.
    #[serde(skip)]
    pub private_secret: String,
    /// `published` (in the JWK set, not yet signing), `active` (signing), `retiring` (still in
    /// the set, no longer signing), `retired` (removed from the set).
    pub state: String,
    pub created_at: i64,
    pub activate_after: i64,
    pub activated_at: Option<i64>,
    pub retiring_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvironmentRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub interconnect_url: String,
    pub instance: String,
    pub token_url_override: Option<String>,
    pub client_id: String,
    /// JSON array of Epic app names.
    pub apps: String,
    pub basic_username: Option<String>,
    /// Id of the sealed Basic password in `secrets`.
    #[serde(skip)]
    pub basic_password_ref: Option<String>,
    pub epic_client_id: Option<String>,
    pub timeout_ms: i64,
    pub rate_limit_per_sec: Option<i64>,
    /// Extra trusted CA certificates (PEM) for a hospital's private CA.
    pub ca_bundle: Option<String>,
    pub key_set_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionCheckRow {
    pub id: String,
    pub environment_id: String,
    /// `connection` or `logout`.
    pub kind: String,
    pub at: i64,
    pub ok: bool,
    /// JSON array of steps.
    pub steps: String,
}

/// A telehealth profile (one Epic video-visit integration). Secret values are ids in `secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TelehealthProfileRow {
    pub id: String,
    pub name: String,
    pub environment_id: String,
    /// `aes256` or `aes128`.
    pub encryption: String,
    #[serde(skip)]
    pub key_ref: String,
    pub iv_mode: String,
    pub launch_param: String,
    /// JSON field map.
    pub field_map: String,
    /// JSON: client ids and secret ids per app (provider / patient) and variant.
    pub clients: String,
    pub link_validity_secs: i64,
    /// JSON video engine settings.
    pub video: String,
    /// JSON `ConnectionStatus` values.
    pub status_codes: String,
    pub vendor_name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An OAuth `state` waiting for Epic's redirect back; the launch context is sealed in `secrets`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TelehealthStateRow {
    pub digest: String,
    pub profile_id: String,
    pub role: String,
    pub secret_ref: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ConferenceRow {
    pub id: String,
    pub profile_id: String,
    pub profile_name: String,
    pub environment_id: String,
    pub appointment_id: String,
    pub csn: Option<String>,
    pub name: String,
    pub patient_name: String,
    pub department: Option<String>,
    pub room: String,
    /// `active` or `ended`.
    pub state: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub ended_reason: Option<String>,
    pub epic_connected_at: Option<i64>,
    pub epic_ended_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ParticipantRow {
    pub id: String,
    pub conference_id: String,
    pub role: String,
    pub display_name: String,
    pub epic_user: Option<String>,
    pub state: String,
    #[serde(skip)]
    pub session_digest: String,
    pub client_id: String,
    pub arrived_at: i64,
    pub joined_at: Option<i64>,
    pub left_at: Option<i64>,
    #[serde(skip)]
    pub token_ref: Option<String>,
    pub token_issued_at: Option<i64>,
    pub token_expires_at: Option<i64>,
    pub token_renewals: i64,
    pub token_error: Option<String>,
}

/// Which conferences to list, newest first, in pages.
#[derive(Debug, Clone, Default)]
pub struct ConferenceFilter {
    /// `active` or `ended`; `None` for both.
    pub state: Option<String>,
    pub profile_id: Option<String>,
    /// Case-insensitive text to find in the searchable columns.
    pub search: Option<String>,
    /// Whether the search may look at patient names.
    pub search_patient_names: bool,
    /// Keyset cursor: rows strictly older than (`started_at`, `id`).
    pub before: Option<(i64, String)>,
    pub limit: i64,
}

/// Where a gateway finds Epic ("Epic R4 External"). `settings` is the JSON document of source
/// 002 (`epicR4Endpoint`, `backendAuthEnabled`, `hl7OverHttpEndpoint`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AdapterRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub environment_id: Option<String>,
    pub settings: String,
    pub external_client_id: Option<String>,
    #[serde(skip)]
    pub external_secret_ref: Option<String>,
    pub external_api_endpoint: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct GatewayRow {
    pub id: String,
    /// The URL segment apps call: `/gateways/{name}/...`.
    pub name: String,
    pub adapter_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct GatewayAppRow {
    pub id: String,
    pub name: String,
    pub client_id: String,
    #[serde(skip)]
    pub secret_digest: String,
    #[serde(skip)]
    pub previous_secret_digest: Option<String>,
    pub previous_valid_until: Option<i64>,
    pub launch_uri: Option<String>,
    /// Space-separated SMART scopes the app may get.
    pub scopes: String,
    pub token_ttl_secs: i64,
    pub rate_limit_per_sec: Option<i64>,
    /// For `private_key_jwt` client authentication.
    pub jwks_url: Option<String>,
    /// Tokens issued before this (Unix ms) are revoked.
    pub tokens_not_before: i64,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ActivationRow {
    pub id: String,
    pub app_id: String,
    pub gateway_id: String,
    /// `none` or `backend`.
    pub ehr_auth: String,
    pub epic_client_id: Option<String>,
    pub epic_app_name: Option<String>,
    pub key_set_id: Option<String>,
    pub token_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One request through a gateway (no bodies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct GatewayRequestRow {
    pub seq: i64,
    pub at: i64,
    pub app_id: Option<String>,
    pub gateway_id: String,
    /// `fhir`, `epic` (private API), `hl7v2` or `token`.
    pub kind: String,
    pub interaction: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub status: i64,
    pub latency_us: i64,
    pub request_id: Option<String>,
}
