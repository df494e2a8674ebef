//! Telehealth: Epic video-visit launches, the SMART EHR-launch with Epic, one conference per
//! appointment, participants and their lobby, OAuth token renewal, and the call status reported
//! back to Epic (docs/epic-contract.md, epic-facts §4).
//!
//! A launch goes: `launch` (decrypt, check, single use, remember a PKCE state) → Epic authorize →
//! `authorized` (exchange the code, join or create the conference) → the join page. Everything
//! Epic must hear about later (the call connected, the call ended) and every token renewal is a
//! durable job enqueued in the same transaction as the change that causes it.

use crate::jobs::{self, JobHandler};
use crate::{App, AppError, Principal, RequestContext, crypto, now_ms};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchboard_domain::ValidationErrors;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::jobs::JobOutcome;
use switchboard_domain::telehealth::{
    FieldMap, HIDDEN_PATIENT, LINK_VALIDITY_RANGE, LaunchContext, LaunchContextError, LaunchRole,
    ParticipantState, StatusCodes, check_profile_name, conference_name, renew_at,
};
use switchboard_epic::launch::{IvMode, LaunchKey, parse_fields};
use switchboard_store::{
    ConferenceFilter, ConferenceRow, EnvironmentRow, JobRow, ParticipantRow, TelehealthProfileRow,
    TelehealthStateRow, Tx,
};

/// How long a user may take to sign in at Epic before the pending launch is forgotten.
const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// How long Epic's SMART endpoints stay cached per `iss`.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
pub const JOB_RENEW: &str = "telehealth.renew_token";
pub const JOB_STATUS: &str = "telehealth.connection_status";
pub const JOB_PURGE: &str = "telehealth.purge";

// ---------------------------------------------------------------------------------------------
// Profiles

/// How Epic encrypts the launch context for a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// AES-256-CBC with a 32-byte key shared as base64 (Epic August 2019 and later).
    Aes256,
    /// AES-128-CBC with a key derived from a password (older Epic).
    Aes128,
}

impl Encryption {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Aes256 => "aes256",
            Self::Aes128 => "aes128",
        }
    }
}

/// One OAuth client Epic registered for the profile (a secret is write-only).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientInput {
    pub client_id: String,
    /// Required when the client is new; omit to keep the stored one.
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// An Epic app (provider or patient) in its production and non-production variants.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppClientsInput {
    #[serde(default)]
    pub production: Option<ClientInput>,
    #[serde(default)]
    pub non_production: Option<ClientInput>,
}

/// Video engine settings.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoInput {
    /// `builtin` (the join page only, no media; demos and tests) or `jitsi`.
    pub engine: String,
    /// Jitsi Meet base URL, e.g. `https://meet.example.org`.
    #[serde(default)]
    pub jitsi_url: Option<String>,
    /// The `iss` / app id configured in Jitsi's token authentication.
    #[serde(default)]
    pub jitsi_app_id: Option<String>,
    /// Jitsi's app secret (HS256). Required for a new Jitsi engine; omit to keep the stored one.
    #[serde(default)]
    pub jitsi_app_secret: Option<String>,
    /// Lifetime of room tokens in seconds (default 7200).
    #[serde(default)]
    pub jitsi_token_ttl_secs: Option<i64>,
}

/// A telehealth profile as written by an administrator.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    /// Shown to everyone as the provider participant and in every conference name.
    pub name: String,
    pub environment_id: String,
    pub encryption: Option<Encryption>,
    /// AES-256: 32 bytes as base64 (see `switchboard keygen 32`). AES-128: the password.
    /// Required on create; omit on update to keep the stored key.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub iv_mode: Option<IvMode>,
    /// Query parameter that carries the encrypted context (default `data`).
    #[serde(default)]
    pub launch_param: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub field_map: Option<FieldMap>,
    #[serde(default)]
    pub provider_app: AppClientsInput,
    #[serde(default)]
    pub patient_app: AppClientsInput,
    /// Seconds a launch link stays usable after Epic made it (default 300).
    #[serde(default)]
    pub link_validity_secs: Option<i64>,
    #[serde(default)]
    pub video: Option<VideoInput>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub status_codes: Option<StatusCodes>,
    /// `VendorName` sent to Epic (default `Switchboard`).
    #[serde(default)]
    pub vendor_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredClient {
    client_id: String,
    secret_ref: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredApp {
    production: Option<StoredClient>,
    non_production: Option<StoredClient>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredClients {
    provider: StoredApp,
    patient: StoredApp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredVideo {
    engine: String,
    jitsi_url: Option<String>,
    jitsi_app_id: Option<String>,
    jitsi_secret_ref: Option<String>,
    jitsi_token_ttl_secs: i64,
}

impl Default for StoredVideo {
    fn default() -> Self {
        Self {
            engine: "builtin".to_owned(),
            jitsi_url: None,
            jitsi_app_id: None,
            jitsi_secret_ref: None,
            jitsi_token_ttl_secs: 7200,
        }
    }
}

/// A client as shown: its id and whether a secret is stored, never the secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub secret_set: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppClientsView {
    pub production: Option<ClientView>,
    pub non_production: Option<ClientView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VideoView {
    pub engine: String,
    pub jitsi_url: Option<String>,
    pub jitsi_app_id: Option<String>,
    pub jitsi_app_secret_set: bool,
    pub jitsi_token_ttl_secs: i64,
}

/// A telehealth profile as shown (no secret values).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Profile {
    pub id: String,
    pub name: String,
    pub environment_id: String,
    pub environment_name: String,
    /// `production` or `non_production`: which client variant launches use.
    pub environment_kind: String,
    pub encryption: Encryption,
    pub iv_mode: String,
    pub launch_param: String,
    #[schema(value_type = Object)]
    pub field_map: FieldMap,
    pub provider_app: AppClientsView,
    pub patient_app: AppClientsView,
    pub link_validity_secs: i64,
    pub video: VideoView,
    #[schema(value_type = Object)]
    pub status_codes: StatusCodes,
    pub vendor_name: String,
    /// The URLs to put in Epic's FDI records.
    pub provider_launch_url: String,
    pub patient_launch_url: String,
    pub provider_redirect_uri: String,
    pub patient_redirect_uri: String,
    pub active_conferences: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

fn json_of<T: Serialize>(v: &T) -> Result<String, AppError> {
    serde_json::to_string(v).map_err(|e| AppError::Internal(format!("encoding: {e}")))
}

fn parse_json<T: for<'de> Deserialize<'de> + Default>(s: &str) -> T {
    serde_json::from_str(s).unwrap_or_default()
}

fn client_view(c: Option<&StoredClient>) -> Option<ClientView> {
    c.map(|c| ClientView {
        client_id: c.client_id.clone(),
        secret_set: !c.secret_ref.is_empty(),
    })
}

fn app_view(a: &StoredApp) -> AppClientsView {
    AppClientsView {
        production: client_view(a.production.as_ref()),
        non_production: client_view(a.non_production.as_ref()),
    }
}

/// What a launch or an Epic redirect can go wrong with, each shown as its own page.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("integration not found")]
    NotFound,
    #[error("Epic's metadata could not be fetched: {0}")]
    MetadataUnreachable(String),
    #[error("OAuth launch error: {0}")]
    OAuth(String),
    #[error("the link expired")]
    Expired,
    #[error("the link was already used")]
    AlreadyUsed,
    /// One message for every way a link can fail to decrypt or parse.
    #[error("the link could not be read")]
    Undecryptable,
    #[error(transparent)]
    Internal(#[from] AppError),
}

impl From<switchboard_store::StoreError> for LaunchError {
    fn from(e: switchboard_store::StoreError) -> Self {
        Self::Internal(e.into())
    }
}

/// Epic's SMART endpoints for one `iss`.
#[derive(Debug, Clone)]
struct SmartEndpoints {
    authorize: String,
    token: String,
}

/// In-memory telehealth caches of one process.
#[derive(Default)]
pub(crate) struct TelehealthCache {
    endpoints: std::sync::Mutex<HashMap<String, (Instant, SmartEndpoints)>>,
}

/// Where a launch continues: Epic's authorize URL, and the `state` to bind to the browser.
#[derive(Debug, Clone)]
pub struct LaunchRedirect {
    pub authorize_url: String,
    pub state: String,
}

/// A participant admitted to a conference: the browser keeps `session` as a cookie.
#[derive(Debug, Clone)]
pub struct JoinTicket {
    pub participant_id: String,
    pub conference_id: String,
    pub session: String,
}

/// What is sealed while the user signs in at Epic.
#[derive(Serialize, Deserialize)]
struct PendingLaunch {
    context: LaunchContext,
    verifier: String,
    token_endpoint: String,
    client_id: String,
    redirect_uri: String,
}

/// OAuth tokens of a participant, sealed in `secrets`.
#[derive(Serialize, Deserialize)]
struct StoredTokens {
    access_token: String,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn digest_hex(parts: &[&str]) -> String {
    hex::encode(crypto::sha256(parts.join("\u{1f}").as_bytes()))
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(crypto::random_bytes::<32>())
}

fn variant(env: &EnvironmentRow) -> &'static str {
    if env.kind == "production" {
        "production"
    } else {
        "non_production"
    }
}

fn fhir_base(env: &EnvironmentRow) -> String {
    format!(
        "{}/api/FHIR/R4",
        crate::epic_env::oauth_base(&env.interconnect_url, &env.instance)
    )
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

impl App {
    fn launch_url(&self, role: LaunchRole, profile_id: &str) -> String {
        format!(
            "{}/telehealth/v1/{}/launch/{profile_id}",
            self.config().public_url(),
            role.as_str()
        )
    }

    fn redirect_uri(&self, role: LaunchRole, profile_id: &str) -> String {
        format!(
            "{}/telehealth/v1/{}/oauth2authorized/{profile_id}",
            self.config().public_url(),
            role.as_str()
        )
    }

    async fn profile_view(
        &self,
        tx: &mut dyn Tx,
        row: TelehealthProfileRow,
    ) -> Result<Profile, AppError> {
        let env = tx.get_environment(&row.environment_id).await?;
        let clients: StoredClients = parse_json(&row.clients);
        let video: StoredVideo = parse_json(&row.video);
        let active = tx.count_active_conferences(&row.id).await?;
        Ok(Profile {
            provider_launch_url: self.launch_url(LaunchRole::Provider, &row.id),
            patient_launch_url: self.launch_url(LaunchRole::Patient, &row.id),
            provider_redirect_uri: self.redirect_uri(LaunchRole::Provider, &row.id),
            patient_redirect_uri: self.redirect_uri(LaunchRole::Patient, &row.id),
            environment_name: env.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
            environment_kind: env.as_ref().map(|e| e.kind.clone()).unwrap_or_default(),
            encryption: if row.encryption == "aes128" {
                Encryption::Aes128
            } else {
                Encryption::Aes256
            },
            field_map: parse_json(&row.field_map),
            provider_app: app_view(&clients.provider),
            patient_app: app_view(&clients.patient),
            video: VideoView {
                engine: video.engine.clone(),
                jitsi_url: video.jitsi_url.clone(),
                jitsi_app_id: video.jitsi_app_id.clone(),
                jitsi_app_secret_set: video.jitsi_secret_ref.is_some(),
                jitsi_token_ttl_secs: video.jitsi_token_ttl_secs,
            },
            status_codes: parse_json(&row.status_codes),
            active_conferences: active,
            id: row.id,
            name: row.name,
            environment_id: row.environment_id,
            iv_mode: row.iv_mode,
            launch_param: row.launch_param,
            link_validity_secs: row.link_validity_secs,
            vendor_name: row.vendor_name,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    pub async fn list_telehealth_profiles(&self) -> Result<Vec<Profile>, AppError> {
        let mut tx = self.store().read().await?;
        let rows = tx.list_telehealth_profiles().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.profile_view(&mut *tx, r).await?);
        }
        Ok(out)
    }

    pub async fn get_telehealth_profile(&self, id: &str) -> Result<Profile, AppError> {
        let mut tx = self.store().read().await?;
        let row = tx
            .get_telehealth_profile(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("telehealth profile {id}")))?;
        self.profile_view(&mut *tx, row).await
    }

    /// Creates a profile; `id` is chosen by Switchboard unless given (the demo fixes its own).
    pub async fn create_telehealth_profile(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: ProfileInput,
        id: Option<uuid::Uuid>,
    ) -> Result<Profile, AppError> {
        let id = id.unwrap_or_else(uuid::Uuid::new_v4).to_string();
        let mut tx = self.store().begin().await?;
        let row = self.apply_profile(&mut *tx, &id, None, input).await?;
        tx.insert_telehealth_profile(&row).await?;
        let ev = AuditEvent::new("", "telehealth.profile.created", format!("telehealth_profile:{id}"))
            .with_details(json!({"name": row.name, "environment_id": row.environment_id, "encryption": row.encryption}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        let view = self.profile_view(&mut *tx, row).await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn update_telehealth_profile(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        input: ProfileInput,
    ) -> Result<Profile, AppError> {
        let mut tx = self.store().begin().await?;
        let old = tx
            .get_telehealth_profile(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("telehealth profile {id}")))?;
        let row = self.apply_profile(&mut *tx, id, Some(&old), input).await?;
        tx.update_telehealth_profile(&row).await?;
        let ev = AuditEvent::new("", "telehealth.profile.updated", format!("telehealth_profile:{id}"))
            .with_details(json!({"name": row.name, "environment_id": row.environment_id, "encryption": row.encryption, "key_changed": row.key_ref != old.key_ref}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        let view = self.profile_view(&mut *tx, row).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Validates `input` against `old` (on update) and stores new secrets; every mistake is
    /// reported at once and nothing is written when there is one.
    #[expect(
        clippy::too_many_lines,
        reason = "one pass over every field of a profile"
    )]
    async fn apply_profile(
        &self,
        tx: &mut dyn Tx,
        id: &str,
        old: Option<&TelehealthProfileRow>,
        input: ProfileInput,
    ) -> Result<TelehealthProfileRow, AppError> {
        let mut errors = ValidationErrors::new();
        errors.check("name", check_profile_name(&input.name));
        if tx
            .list_telehealth_profiles()
            .await?
            .iter()
            .any(|o| o.name == input.name && o.id != id)
        {
            errors.add(
                "name",
                format!("a profile named `{}` already exists", input.name),
            );
        }
        let env = tx.get_environment(&input.environment_id).await?;
        if env.is_none() {
            errors.add(
                "environment_id",
                format!("no Epic environment `{}`", input.environment_id),
            );
        }
        let encryption = input.encryption.unwrap_or(match old {
            Some(o) if o.encryption == "aes128" => Encryption::Aes128,
            _ => Encryption::Aes256,
        });
        let key_changes =
            input.key.is_some() || old.is_none_or(|o| o.encryption != encryption.as_str());
        match (&input.key, encryption) {
            (Some(k), Encryption::Aes256) => {
                if let Err(e) = LaunchKey::aes256_from_base64(k) {
                    errors.add(
                        "key",
                        format!("{e}; generate one with `switchboard keygen 32`"),
                    );
                }
            }
            (Some(k), Encryption::Aes128) => {
                if let Err(e) = LaunchKey::aes128_from_password(k) {
                    errors.add("key", e.to_string());
                }
            }
            (None, _) if key_changes => errors.add(
                "key",
                "a key is required for a new profile or a new encryption mode",
            ),
            (None, _) => {}
        }
        let iv_mode = input.iv_mode.unwrap_or(match old {
            Some(o) if o.iv_mode == "prefixed" => IvMode::Prefixed,
            _ => IvMode::Zero,
        });
        if encryption == Encryption::Aes128 && iv_mode == IvMode::Prefixed {
            errors.add(
                "iv_mode",
                "AES-128 password mode always uses a zero IV; use `zero`",
            );
        }
        let launch_param = input
            .launch_param
            .clone()
            .unwrap_or_else(|| old.map_or_else(|| "data".to_owned(), |o| o.launch_param.clone()));
        if launch_param.is_empty()
            || launch_param.len() > 40
            || !launch_param
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || matches!(launch_param.as_str(), "iss" | "launch")
        {
            errors.add(
                "launch_param",
                "must be 1-40 letters, digits, `_` or `-`, and not `iss` or `launch`",
            );
        }
        let field_map = input
            .field_map
            .clone()
            .unwrap_or_else(|| old.map_or_else(FieldMap::default, |o| parse_json(&o.field_map)));
        errors.check("field_map", field_map.validate());
        let link_validity_secs = input
            .link_validity_secs
            .unwrap_or_else(|| old.map_or(300, |o| o.link_validity_secs));
        if !LINK_VALIDITY_RANGE.contains(&link_validity_secs) {
            errors.add(
                "link_validity_secs",
                format!(
                    "must be between {} and {} seconds",
                    LINK_VALIDITY_RANGE.start(),
                    LINK_VALIDITY_RANGE.end()
                ),
            );
        }
        let status_codes = input.status_codes.clone().unwrap_or_else(|| {
            old.map_or_else(StatusCodes::default, |o| parse_json(&o.status_codes))
        });
        if status_codes.connected.trim().is_empty() || status_codes.ended.trim().is_empty() {
            errors.add("status_codes", "both `connected` and `ended` need a value");
        }
        let vendor_name = input.vendor_name.clone().unwrap_or_else(|| {
            old.map_or_else(|| "Switchboard".to_owned(), |o| o.vendor_name.clone())
        });
        if vendor_name.trim().is_empty() || vendor_name.len() > 80 {
            errors.add("vendor_name", "must be 1-80 characters");
        }
        let old_clients: StoredClients = old.map(|o| parse_json(&o.clients)).unwrap_or_default();
        let needed = env.as_ref().map(variant);
        for (field, app_in, app_old) in [
            ("provider_app", &input.provider_app, &old_clients.provider),
            ("patient_app", &input.patient_app, &old_clients.patient),
        ] {
            for (vname, given, stored) in [
                ("production", &app_in.production, &app_old.production),
                (
                    "non_production",
                    &app_in.non_production,
                    &app_old.non_production,
                ),
            ] {
                let field = format!("{field}.{vname}");
                match given {
                    Some(c) if c.client_id.trim().is_empty() => {
                        errors.add(&field, "client_id must not be empty");
                    }
                    Some(c) => {
                        let same_client =
                            stored.as_ref().is_some_and(|s| s.client_id == c.client_id);
                        if c.client_secret.as_deref().is_none_or(str::is_empty) && !same_client {
                            errors.add(&field, "a new client needs its client_secret");
                        }
                    }
                    None if needed == Some(vname) && stored.is_none() => errors.add(
                        &field,
                        format!(
                            "the environment is {vname}, so launches need this app's {vname} client"
                        ),
                    ),
                    None => {}
                }
            }
        }
        let old_video: StoredVideo = old.map(|o| parse_json(&o.video)).unwrap_or_default();
        let mut video = old_video.clone();
        if let Some(v) = &input.video {
            match v.engine.as_str() {
                "builtin" => video = StoredVideo::default(),
                "jitsi" => {
                    video.engine = "jitsi".to_owned();
                    match v.jitsi_url.as_deref().map(url::Url::parse) {
                        Some(Ok(u))
                            if matches!(u.scheme(), "https" | "http") && u.host().is_some() =>
                        {
                            video.jitsi_url = Some(u.as_str().trim_end_matches('/').to_owned());
                        }
                        _ => errors.add(
                            "video.jitsi_url",
                            "an http(s) URL of the Jitsi Meet server is required",
                        ),
                    }
                    match v.jitsi_app_id.as_deref().map(str::trim) {
                        Some(a) if !a.is_empty() => video.jitsi_app_id = Some(a.to_owned()),
                        _ => errors.add("video.jitsi_app_id", "Jitsi's app id is required"),
                    }
                    if v.jitsi_app_secret.as_deref().is_none_or(str::is_empty)
                        && old_video.jitsi_secret_ref.is_none()
                    {
                        errors.add("video.jitsi_app_secret", "Jitsi's app secret is required");
                    } else if v.jitsi_app_secret.as_deref().is_some_and(|s| s.len() < 16) {
                        errors.add("video.jitsi_app_secret", "must be at least 16 characters");
                    }
                    let ttl = v.jitsi_token_ttl_secs.unwrap_or(video.jitsi_token_ttl_secs);
                    if !(60..=86_400).contains(&ttl) {
                        errors.add("video.jitsi_token_ttl_secs", "must be between 60 and 86400");
                    }
                    video.jitsi_token_ttl_secs = ttl;
                }
                other => errors.add(
                    "video.engine",
                    format!("`{other}` is not a video engine: use builtin or jitsi"),
                ),
            }
        }
        errors.into_result()?;

        // Valid: store the new secrets, drop the replaced ones.
        let owner = format!("telehealth_profile:{id}");
        let mut replaced = Vec::new();
        let key_ref = match &input.key {
            Some(k) => {
                if let Some(o) = old {
                    replaced.push(o.key_ref.clone());
                }
                self.put_secret(tx, &owner, "launch_key", k.trim().as_bytes())
                    .await?
            }
            None => old.map(|o| o.key_ref.clone()).unwrap_or_default(),
        };
        let mut clients = old_clients.clone();
        for (app_in, app_out) in [
            (&input.provider_app, &mut clients.provider),
            (&input.patient_app, &mut clients.patient),
        ] {
            for (given, slot, purpose) in [
                (
                    &app_in.production,
                    &mut app_out.production,
                    "client_secret:production",
                ),
                (
                    &app_in.non_production,
                    &mut app_out.non_production,
                    "client_secret:non_production",
                ),
            ] {
                let Some(c) = given else { continue };
                let secret_ref = match c.client_secret.as_deref().filter(|s| !s.is_empty()) {
                    Some(s) => {
                        if let Some(old) = slot.as_ref() {
                            replaced.push(old.secret_ref.clone());
                        }
                        self.put_secret(tx, &owner, purpose, s.as_bytes()).await?
                    }
                    None => slot
                        .as_ref()
                        .map(|o| o.secret_ref.clone())
                        .unwrap_or_default(),
                };
                *slot = Some(StoredClient {
                    client_id: c.client_id.trim().to_owned(),
                    secret_ref,
                });
            }
        }
        if let Some(v) = &input.video {
            if v.engine == "builtin" {
                replaced.extend(old_video.jitsi_secret_ref.clone());
            } else if let Some(s) = v.jitsi_app_secret.as_deref().filter(|s| !s.is_empty()) {
                replaced.extend(old_video.jitsi_secret_ref.clone());
                video.jitsi_secret_ref = Some(
                    self.put_secret(tx, &owner, "jitsi_app_secret", s.as_bytes())
                        .await?,
                );
            }
        }
        for r in replaced {
            tx.delete_secret(&r).await?;
        }
        let now = now_ms();
        Ok(TelehealthProfileRow {
            id: id.to_owned(),
            name: input.name,
            environment_id: input.environment_id,
            encryption: encryption.as_str().to_owned(),
            key_ref,
            iv_mode: match iv_mode {
                IvMode::Zero => "zero",
                IvMode::Prefixed => "prefixed",
            }
            .to_owned(),
            launch_param,
            field_map: json_of(&field_map)?,
            clients: json_of(&clients)?,
            link_validity_secs,
            video: json_of(&video)?,
            status_codes: json_of(&status_codes)?,
            vendor_name,
            created_at: old.map_or(now, |o| o.created_at),
            updated_at: now,
        })
    }

    /// Removes a profile and its launch routes. Refuses while conferences are active unless
    /// `force`, which ends them first (Epic is told). History is kept.
    pub async fn delete_telehealth_profile(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        force: bool,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_telehealth_profile(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("telehealth profile {id}")))?;
        let active = tx
            .list_conferences(&ConferenceFilter {
                state: Some("active".to_owned()),
                profile_id: Some(id.to_owned()),
                limit: 10_000,
                ..ConferenceFilter::default()
            })
            .await?;
        if !active.is_empty() && !force {
            return Err(AppError::Conflict(format!(
                "{} conference(s) of this profile are active; end them first or remove with force",
                active.len()
            )));
        }
        for c in &active {
            self.end_conference_in(&mut *tx, &row, c, "the integration was removed")
                .await?;
        }
        let clients: StoredClients = parse_json(&row.clients);
        let video: StoredVideo = parse_json(&row.video);
        let mut refs = vec![row.key_ref.clone()];
        for a in [&clients.provider, &clients.patient] {
            for c in [&a.production, &a.non_production].into_iter().flatten() {
                refs.push(c.secret_ref.clone());
            }
        }
        refs.extend(video.jitsi_secret_ref);
        for r in refs {
            tx.delete_secret(&r).await?;
        }
        tx.delete_telehealth_profile(id).await?;
        let ev = AuditEvent::new(
            "",
            "telehealth.profile.removed",
            format!("telehealth_profile:{id}"),
        )
        .with_details(
            json!({"name": row.name, "forced": force, "conferences_ended": active.len()}),
        );
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Launch

    /// Handles Epic's launch: decrypts and checks the context, makes the link single use and
    /// sends the browser to Epic's authorize endpoint with a fresh PKCE state.
    pub async fn telehealth_launch(
        &self,
        role: LaunchRole,
        profile_id: &str,
        query: &HashMap<String, String>,
    ) -> Result<LaunchRedirect, LaunchError> {
        let (profile, env) = self.launch_profile(profile_id).await?;
        let key = self.launch_key(&profile).await?;
        let iv_mode = if profile.iv_mode == "prefixed" {
            IvMode::Prefixed
        } else {
            IvMode::Zero
        };
        let blob = query
            .get(&profile.launch_param)
            .ok_or(LaunchError::Undecryptable)?;
        let plaintext = key
            .decrypt(iv_mode, blob)
            .map_err(|_| LaunchError::Undecryptable)?;
        let text = String::from_utf8(plaintext).map_err(|_| LaunchError::Undecryptable)?;
        let map: FieldMap = parse_json(&profile.field_map);
        let context = LaunchContext::from_fields(&parse_fields(&text), &map, role)
            .map_err(|_| LaunchError::Undecryptable)?;
        context
            .check_fresh(now_ms() / 1000, profile.link_validity_secs)
            .map_err(|e| match e {
                LaunchContextError::Expired | LaunchContextError::FromTheFuture => {
                    LaunchError::Expired
                }
                _ => LaunchError::Undecryptable,
            })?;
        let iss = query.get("iss").ok_or_else(|| {
            LaunchError::OAuth("Epic did not say which server launched (no iss)".to_owned())
        })?;
        let expected = fhir_base(&env);
        if !same_url(iss, &expected) {
            return Err(LaunchError::OAuth(
                "the launch names an Epic server this integration does not use".to_owned(),
            ));
        }
        let launch = query
            .get("launch")
            .filter(|l| !l.is_empty())
            .ok_or_else(|| LaunchError::OAuth("Epic sent no launch value".to_owned()))?;
        let endpoints = self.smart_endpoints(&env, &expected).await?;
        let client_id = self.client_of(&profile, &env, role)?.client_id;
        let redirect_uri = self.redirect_uri(role, &profile.id);
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(crypto::sha256(verifier.as_bytes()));
        let state = random_token();
        let now = now_ms();
        let pending = PendingLaunch {
            context,
            verifier,
            token_endpoint: endpoints.token.clone(),
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
        };
        let launch_digest = digest_hex(&[&profile.id, &text]);
        let state_digest = digest_hex(&[&state]);
        let mut tx = self.store().begin().await?;
        let used_until = (pending.context.timestamp
            + profile.link_validity_secs
            + switchboard_domain::telehealth::CLOCK_SKEW_SECS)
            * 1000;
        if !tx
            .use_telehealth_launch(&launch_digest, &profile.id, now, used_until.max(now))
            .await?
        {
            return Err(LaunchError::AlreadyUsed);
        }
        let secret_ref = self
            .put_secret(
                &mut *tx,
                &format!("telehealth_state:{state_digest}"),
                "pending_launch",
                json_of(&pending)?.as_bytes(),
            )
            .await?;
        tx.insert_telehealth_state(&TelehealthStateRow {
            digest: state_digest,
            profile_id: profile.id.clone(),
            role: role.as_str().to_owned(),
            secret_ref,
            created_at: now,
            expires_at: now + STATE_TTL_MS,
        })
        .await?;
        tx.commit().await?;
        let mut url = url::Url::parse(&endpoints.authorize)
            .map_err(|_| LaunchError::MetadataUnreachable("bad authorize URL".to_owned()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", "launch")
            .append_pair("launch", launch)
            .append_pair("aud", iss)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(LaunchRedirect {
            authorize_url: url.to_string(),
            state,
        })
    }

    async fn launch_profile(
        &self,
        profile_id: &str,
    ) -> Result<(TelehealthProfileRow, EnvironmentRow), LaunchError> {
        if uuid::Uuid::parse_str(profile_id).is_err() {
            return Err(LaunchError::NotFound);
        }
        let mut tx = self.store().read().await?;
        let profile = tx
            .get_telehealth_profile(profile_id)
            .await?
            .ok_or(LaunchError::NotFound)?;
        let env = tx
            .get_environment(&profile.environment_id)
            .await?
            .ok_or(LaunchError::NotFound)?;
        Ok((profile, env))
    }

    async fn launch_key(&self, profile: &TelehealthProfileRow) -> Result<LaunchKey, LaunchError> {
        let mut tx = self.store().read().await?;
        let raw = self.get_secret(&mut *tx, &profile.key_ref).await?;
        let text = String::from_utf8(raw)
            .map_err(|_| AppError::Internal("stored launch key".to_owned()))?;
        let key = if profile.encryption == "aes128" {
            LaunchKey::aes128_from_password(&text)
        } else {
            LaunchKey::aes256_from_base64(&text)
        };
        key.map_err(|_| {
            LaunchError::Internal(AppError::Internal(
                "stored launch key is unusable".to_owned(),
            ))
        })
    }

    fn client_of(
        &self,
        profile: &TelehealthProfileRow,
        env: &EnvironmentRow,
        role: LaunchRole,
    ) -> Result<StoredClient, LaunchError> {
        let clients: StoredClients = parse_json(&profile.clients);
        let app = match role {
            LaunchRole::Provider => clients.provider,
            LaunchRole::Patient => clients.patient,
        };
        let c = if variant(env) == "production" {
            app.production
        } else {
            app.non_production
        };
        c.ok_or_else(|| {
            LaunchError::OAuth(format!(
                "the {} app has no {} client configured",
                role.as_str(),
                variant(env)
            ))
        })
    }

    /// Epic's authorize and token endpoints, from `.well-known/smart-configuration`.
    async fn smart_endpoints(
        &self,
        env: &EnvironmentRow,
        iss: &str,
    ) -> Result<SmartEndpoints, LaunchError> {
        if let Some((at, e)) = self
            .telehealth_cache()
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(iss)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(e.clone());
        }
        let client = self.epic_http(env)?;
        let url = format!(
            "{}/.well-known/smart-configuration",
            iss.trim_end_matches('/')
        );
        let resp = client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| LaunchError::MetadataUnreachable(crate::outbound_error(&e).to_owned()))?;
        if !resp.status().is_success() {
            return Err(LaunchError::MetadataUnreachable(format!(
                "Epic answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let doc: serde_json::Value = resp
            .json()
            .await
            .map_err(|_| LaunchError::MetadataUnreachable("the document is not JSON".to_owned()))?;
        let get = |k: &str| {
            doc[k]
                .as_str()
                .filter(|u| url::Url::parse(u).is_ok())
                .map(str::to_owned)
        };
        let (Some(authorize), Some(token)) = (get("authorization_endpoint"), get("token_endpoint"))
        else {
            return Err(LaunchError::MetadataUnreachable(
                "the document names no authorize and token endpoints".to_owned(),
            ));
        };
        let e = SmartEndpoints { authorize, token };
        self.telehealth_cache()
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(iss.to_owned(), (Instant::now(), e.clone()));
        Ok(e)
    }

    /// Handles Epic's redirect back: checks the state against the browser's, exchanges the code
    /// and admits the participant to the appointment's conference.
    pub async fn telehealth_authorized(
        &self,
        role: LaunchRole,
        profile_id: &str,
        query: &HashMap<String, String>,
        browser_state: Option<&str>,
    ) -> Result<JoinTicket, LaunchError> {
        let state = query
            .get("state")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| LaunchError::OAuth("Epic returned no state".to_owned()))?;
        if !browser_state.is_some_and(|b| crypto::constant_time_eq(b.as_bytes(), state.as_bytes()))
        {
            return Err(LaunchError::OAuth(
                "the sign-in did not start in this browser (state mismatch)".to_owned(),
            ));
        }
        let mut tx = self.store().begin().await?;
        let row = tx.take_telehealth_state(&digest_hex(&[state])).await?;
        let pending = match &row {
            Some(r) => Some(self.get_secret(&mut *tx, &r.secret_ref).await?),
            None => None,
        };
        if let Some(r) = &row {
            tx.delete_secret(&r.secret_ref).await?;
        }
        tx.commit().await?;
        let (Some(row), Some(pending)) = (row, pending) else {
            return Err(LaunchError::OAuth(
                "unknown or already used state".to_owned(),
            ));
        };
        if row.profile_id != profile_id || row.role != role.as_str() {
            return Err(LaunchError::OAuth(
                "the state belongs to another launch".to_owned(),
            ));
        }
        if row.expires_at < now_ms() {
            return Err(LaunchError::Expired);
        }
        if let Some(e) = query.get("error") {
            let e: String = e
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(60)
                .collect();
            return Err(LaunchError::OAuth(format!(
                "Epic refused the sign-in ({e})"
            )));
        }
        let code = query
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| LaunchError::OAuth("Epic returned no authorization code".to_owned()))?;
        let pending: PendingLaunch = serde_json::from_slice(&pending)
            .map_err(|_| AppError::Internal("pending launch".to_owned()))?;
        let (profile, env) = self.launch_profile(profile_id).await?;
        let client = self.client_of(&profile, &env, role)?;
        if client.client_id != pending.client_id {
            return Err(LaunchError::OAuth(
                "the profile's client changed during sign-in".to_owned(),
            ));
        }
        let secret = self.client_secret(&client).await?;
        let tokens = self
            .token_request(
                &env,
                &pending.token_endpoint,
                &client.client_id,
                &secret,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &pending.redirect_uri),
                    ("code_verifier", &pending.verifier),
                ],
            )
            .await
            .map_err(|e| {
                LaunchError::OAuth(format!("the code exchange failed: {}", e.message()))
            })?;
        self.admit(&profile, &env, role, &pending, &client.client_id, tokens)
            .await
    }

    async fn client_secret(&self, client: &StoredClient) -> Result<String, AppError> {
        let mut tx = self.store().read().await?;
        let raw = self.get_secret(&mut *tx, &client.secret_ref).await?;
        String::from_utf8(raw).map_err(|_| AppError::Internal("stored client secret".to_owned()))
    }

    /// Puts the participant in the appointment's conference (creating it on first arrival).
    async fn admit(
        &self,
        profile: &TelehealthProfileRow,
        env: &EnvironmentRow,
        role: LaunchRole,
        pending: &PendingLaunch,
        client_id: &str,
        tokens: TokenResponse,
    ) -> Result<JoinTicket, LaunchError> {
        let ctx = &pending.context;
        let now = now_ms();
        let patient = ctx.patient_name();
        let candidate = ConferenceRow {
            id: uuid::Uuid::new_v4().to_string(),
            profile_id: profile.id.clone(),
            profile_name: profile.name.clone(),
            environment_id: env.id.clone(),
            appointment_id: ctx.appointment_id.clone(),
            csn: ctx.csn.clone(),
            name: conference_name(
                &patient,
                &profile.name,
                &ctx.appointment_id,
                ctx.department.as_deref(),
            ),
            patient_name: patient.clone(),
            department: ctx.department.clone(),
            room: format!("sb{}", hex::encode(crypto::random_bytes::<10>())),
            state: "active".to_owned(),
            started_at: now,
            ended_at: None,
            ended_reason: None,
            epic_connected_at: None,
            epic_ended_at: None,
        };
        let session = random_token();
        let mut tx = self.store().begin().await?;
        let conf = tx.insert_or_get_active_conference(&candidate).await?;
        let created = conf.id == candidate.id;
        let mut others = tx.participants(&conf.id).await?;
        let provider_present = others
            .iter()
            .any(|o| o.role == "provider" && o.state == "joined");
        let first_provider =
            role == LaunchRole::Provider && !others.iter().any(|o| o.role == "provider");
        let state = ParticipantState::on_arrival(role, provider_present);
        let participant_id = uuid::Uuid::new_v4().to_string();
        let token_ref = self
            .put_secret(
                &mut *tx,
                &format!("conference_participant:{participant_id}"),
                "oauth_tokens",
                json_of(&StoredTokens {
                    access_token: tokens.access_token.clone(),
                    refresh_token: tokens.refresh_token.clone(),
                })?
                .as_bytes(),
            )
            .await?;
        let lifetime_ms = tokens.expires_in.unwrap_or(3600).clamp(1, 86_400) * 1000;
        let participant = ParticipantRow {
            id: participant_id.clone(),
            conference_id: conf.id.clone(),
            role: role.as_str().to_owned(),
            display_name: match role {
                LaunchRole::Provider => profile.name.clone(),
                LaunchRole::Patient => patient,
            },
            epic_user: ctx.user.clone(),
            state: state.as_str().to_owned(),
            session_digest: digest_hex(&[&session]),
            client_id: client_id.to_owned(),
            arrived_at: now,
            joined_at: (state == ParticipantState::Joined).then_some(now),
            left_at: None,
            token_ref: Some(token_ref),
            token_issued_at: Some(now),
            token_expires_at: Some(now + lifetime_ms),
            token_renewals: 0,
            token_error: tokens
                .refresh_token
                .is_none()
                .then(|| "Epic issued no refresh token: this token cannot be renewed".to_owned()),
        };
        tx.insert_participant(&participant).await?;
        if tokens.refresh_token.is_some() {
            self.schedule_renewal(&mut *tx, &participant).await?;
        }
        if role == LaunchRole::Provider {
            // A provider admits everyone waiting in the lobby.
            for o in others.iter_mut().filter(|o| o.state == "lobby") {
                o.state = "joined".to_owned();
                o.joined_at = Some(now);
                tx.update_participant(o).await?;
            }
        }
        if first_provider {
            self.enqueue_status(&mut *tx, profile, &conf, "connected")
                .await?;
        }
        let system = Principal::system();
        let rctx = RequestContext::default();
        if created {
            let ev = AuditEvent::new(
                "",
                "telehealth.conference.started",
                format!("conference:{}", conf.id),
            )
            .with_details(json!({"profile_id": profile.id, "appointment_id": conf.appointment_id}));
            self.audit(&mut *tx, &system, &rctx, ev).await?;
        }
        let ev = AuditEvent::new(
            "",
            "telehealth.participant.arrived",
            format!("conference:{}", conf.id),
        )
        .with_details(
            json!({"participant_id": participant_id, "role": role.as_str(), "state": state.as_str(),
                // A patient's launching user may identify the patient: kept out of the audit log.
                "epic_user": if role == LaunchRole::Provider { ctx.user.clone() } else { None }}),
        );
        self.audit(&mut *tx, &system, &rctx, ev).await?;
        tx.commit().await?;
        Ok(JoinTicket {
            participant_id,
            conference_id: conf.id,
            session,
        })
    }

    async fn schedule_renewal(&self, tx: &mut dyn Tx, p: &ParticipantRow) -> Result<(), AppError> {
        let (Some(issued), Some(expires)) = (p.token_issued_at, p.token_expires_at) else {
            return Ok(());
        };
        let delay = u64::try_from((renew_at(issued, expires) - now_ms()).max(0)).unwrap_or(0);
        jobs::enqueue(
            tx,
            JOB_RENEW,
            json!({"participant_id": p.id}),
            Some(format!("{JOB_RENEW}:{}:{}", p.id, p.token_renewals)),
            Duration::from_millis(delay),
            self.config().job_max_attempts,
        )
        .await?;
        Ok(())
    }

    async fn enqueue_status(
        &self,
        tx: &mut dyn Tx,
        profile: &TelehealthProfileRow,
        conf: &ConferenceRow,
        status: &str,
    ) -> Result<(), AppError> {
        let codes: StatusCodes = parse_json(&profile.status_codes);
        let (external_id, external_type) = match &conf.csn {
            Some(csn) => (csn.clone(), "CSN"),
            None => (conf.appointment_id.clone(), "APPTID"),
        };
        jobs::enqueue(
            tx,
            JOB_STATUS,
            json!({
                "conference_id": conf.id,
                "environment_id": conf.environment_id,
                "status": status,
                "code": if status == "connected" { codes.connected } else { codes.ended },
                "vendor_name": profile.vendor_name,
                "external_id": external_id,
                "external_id_type": external_type,
            }),
            Some(format!("{JOB_STATUS}:{}:{status}", conf.id)),
            Duration::ZERO,
            // Epic must hear about the call: retried for as long as the queue allows, then kept
            // as a dead letter an operator can retry.
            self.config().job_max_attempts.max(20),
        )
        .await?;
        Ok(())
    }

    /// POSTs to Epic's token endpoint with HTTP Basic client authentication.
    async fn token_request(
        &self,
        env: &EnvironmentRow,
        url: &str,
        client_id: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenRequestError> {
        self.epic_permit(env)
            .await
            .map_err(|_| TokenRequestError::Transient("rate limit".to_owned()))?;
        let client = self
            .epic_http(env)
            .map_err(|e| TokenRequestError::Transient(e.to_string()))?;
        let resp = client
            .post(url)
            .basic_auth(client_id, Some(secret))
            .form(form)
            .send()
            .await
            .map_err(|e| TokenRequestError::Transient(crate::outbound_error(&e).to_owned()))?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<TokenResponse>().await.map_err(|_| {
                TokenRequestError::Transient("Epic's token response is not valid JSON".to_owned())
            });
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let code = body["error"]
            .as_str()
            .unwrap_or("unknown")
            .chars()
            .take(40)
            .collect::<String>();
        if status.is_server_error() || status.as_u16() == 429 {
            Err(TokenRequestError::Transient(format!(
                "Epic answered HTTP {}",
                status.as_u16()
            )))
        } else {
            Err(TokenRequestError::Refused(format!(
                "Epic refused: {code} (HTTP {})",
                status.as_u16()
            )))
        }
    }

    // -----------------------------------------------------------------------------------------
    // Participants

    /// Resolves a participant from its browser session (constant-time digest comparison).
    async fn participant_by_session(
        &self,
        tx: &mut dyn Tx,
        participant_id: &str,
        session: Option<&str>,
    ) -> Result<ParticipantRow, AppError> {
        let p = tx
            .get_participant(participant_id)
            .await?
            .ok_or_else(|| AppError::NotFound("participant".to_owned()))?;
        let ok = session.is_some_and(|s| {
            crypto::constant_time_eq(digest_hex(&[s]).as_bytes(), p.session_digest.as_bytes())
        });
        if ok {
            Ok(p)
        } else {
            Err(AppError::NotFound("participant".to_owned()))
        }
    }

    /// What a participant's join page shows.
    pub async fn participant_room(
        &self,
        participant_id: &str,
        session: Option<&str>,
    ) -> Result<RoomView, AppError> {
        let mut tx = self.store().read().await?;
        let me = self
            .participant_by_session(&mut *tx, participant_id, session)
            .await?;
        let conf = tx
            .get_conference(&me.conference_id)
            .await?
            .ok_or_else(|| AppError::NotFound("conference".to_owned()))?;
        let participants = tx.participants(&conf.id).await?;
        let profile = tx.get_telehealth_profile(&conf.profile_id).await?;
        let video_url = match &profile {
            Some(p) if me.state == "joined" && conf.state == "active" => {
                self.video_url(&mut *tx, p, &conf, &me).await?
            }
            _ => None,
        };
        Ok(RoomView {
            conference_name: conf.name.clone(),
            conference_state: conf.state.clone(),
            my_state: me.state.clone(),
            my_role: me.role.clone(),
            my_name: me.display_name.clone(),
            participants: participants
                .iter()
                .map(|p| RoomParticipant {
                    name: p.display_name.clone(),
                    role: p.role.clone(),
                    state: p.state.clone(),
                })
                .collect(),
            video_url,
        })
    }

    async fn video_url(
        &self,
        tx: &mut dyn Tx,
        profile: &TelehealthProfileRow,
        conf: &ConferenceRow,
        me: &ParticipantRow,
    ) -> Result<Option<String>, AppError> {
        let video: StoredVideo = parse_json(&profile.video);
        if video.engine != "jitsi" {
            return Ok(None);
        }
        let (Some(base), Some(app_id), Some(secret_ref)) = (
            &video.jitsi_url,
            &video.jitsi_app_id,
            &video.jitsi_secret_ref,
        ) else {
            return Ok(None);
        };
        let secret = self.get_secret(tx, secret_ref).await?;
        let host = url::Url::parse(base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let now = now_ms() / 1000;
        let jwt = crypto::hs256_jwt(
            &secret,
            &json!({
                "aud": "jitsi",
                "iss": app_id,
                "sub": host,
                "room": conf.room,
                "nbf": now - 10,
                "exp": now + video.jitsi_token_ttl_secs,
                "moderator": me.role == "provider",
                "context": {"user": {"id": me.id, "name": me.display_name, "moderator": me.role == "provider"}},
            }),
        );
        Ok(Some(format!("{base}/{}?jwt={jwt}", conf.room)))
    }

    /// The participant leaves; the conference ends when nobody is left.
    pub async fn participant_leave(
        &self,
        participant_id: &str,
        session: Option<&str>,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let mut me = self
            .participant_by_session(&mut *tx, participant_id, session)
            .await?;
        if me.state == "left" {
            return Ok(());
        }
        let now = now_ms();
        me.state = "left".to_owned();
        me.left_at = Some(now);
        tx.update_participant(&me).await?;
        let system = Principal::system();
        let rctx = RequestContext::default();
        let ev = AuditEvent::new(
            "",
            "telehealth.participant.left",
            format!("conference:{}", me.conference_id),
        )
        .with_details(json!({"participant_id": me.id, "role": me.role}));
        self.audit(&mut *tx, &system, &rctx, ev).await?;
        let all = tx.participants(&me.conference_id).await?;
        if all.iter().all(|p| p.state == "left")
            && let Some(conf) = tx.get_conference(&me.conference_id).await?
            && conf.state == "active"
        {
            let profile = tx.get_telehealth_profile(&conf.profile_id).await?;
            if let Some(profile) = profile {
                self.end_conference_in(&mut *tx, &profile, &conf, "the last participant left")
                    .await?;
            }
            let ev = AuditEvent::new(
                "",
                "telehealth.conference.ended",
                format!("conference:{}", conf.id),
            )
            .with_details(json!({"reason": "the last participant left"}));
            self.audit(&mut *tx, &system, &rctx, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn end_conference_in(
        &self,
        tx: &mut dyn Tx,
        profile: &TelehealthProfileRow,
        conf: &ConferenceRow,
        reason: &str,
    ) -> Result<bool, AppError> {
        let now = now_ms();
        if !tx.end_conference(&conf.id, now, reason).await? {
            return Ok(false);
        }
        for mut p in tx.participants(&conf.id).await? {
            if p.state != "left" {
                p.state = "left".to_owned();
                p.left_at = Some(now);
                tx.update_participant(&p).await?;
            }
        }
        self.enqueue_status(tx, profile, conf, "ended").await?;
        Ok(true)
    }

    /// An operator ends a conference.
    pub async fn end_conference(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<ConferenceView, AppError> {
        let mut tx = self.store().begin().await?;
        let conf = tx
            .get_conference(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("conference {id}")))?;
        if conf.state != "active" {
            return Err(AppError::Conflict(
                "the conference has already ended".to_owned(),
            ));
        }
        let profile = tx
            .get_telehealth_profile(&conf.profile_id)
            .await?
            .ok_or_else(|| AppError::Conflict("the conference's profile was removed".to_owned()))?;
        let reason = format!("ended by {}", p.username);
        self.end_conference_in(&mut *tx, &profile, &conf, &reason)
            .await?;
        let ev = AuditEvent::new(
            "",
            "telehealth.conference.ended",
            format!("conference:{id}"),
        )
        .with_details(json!({"reason": reason}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        let conf = tx
            .get_conference(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("conference {id}")))?;
        let view = conference_view(conf, tx.participants(id).await?, p.role.sees_patient_data());
        tx.commit().await?;
        Ok(view)
    }

    // -----------------------------------------------------------------------------------------
    // Status pages

    pub async fn list_conferences(
        &self,
        p: &Principal,
        q: &ConferenceQuery,
    ) -> Result<ConferencePage, AppError> {
        let phi = p.role.sees_patient_data();
        let limit = q.limit.unwrap_or(50).clamp(1, 500);
        let before = match q.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => {
                let (at, id) = c
                    .split_once('.')
                    .and_then(|(a, id)| a.parse::<i64>().ok().map(|a| (a, id.to_owned())))
                    .ok_or_else(|| {
                        ValidationErrors::single("cursor", "not a cursor from a previous page")
                    })?;
                Some((at, id))
            }
        };
        if let Some(s) = q.state.as_deref()
            && !matches!(s, "active" | "ended")
        {
            return Err(ValidationErrors::single("state", "use active or ended").into());
        }
        let mut tx = self.store().read().await?;
        let rows = tx
            .list_conferences(&ConferenceFilter {
                state: q.state.clone(),
                profile_id: q.profile_id.clone(),
                search: q.q.clone(),
                search_patient_names: phi,
                before,
                limit: limit + 1,
            })
            .await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(50);
        let mut items = Vec::new();
        for c in rows.into_iter().take(usize::try_from(limit).unwrap_or(50)) {
            let ps = tx.participants(&c.id).await?;
            items.push(conference_view(c, ps, phi));
        }
        let next_cursor = more
            .then(|| {
                items
                    .last()
                    .map(|c: &ConferenceView| format!("{}.{}", c.started_at, c.id))
            })
            .flatten();
        Ok(ConferencePage { items, next_cursor })
    }

    pub async fn get_conference(
        &self,
        p: &Principal,
        id: &str,
    ) -> Result<ConferenceView, AppError> {
        let mut tx = self.store().read().await?;
        let c = tx
            .get_conference(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("conference {id}")))?;
        let ps = tx.participants(id).await?;
        Ok(conference_view(c, ps, p.role.sees_patient_data()))
    }

    /// Makes sure the hourly telehealth clean-up is queued.
    pub async fn schedule_telehealth_purge(&self, delay: Duration) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let slot = (now_ms() + i64::try_from(delay.as_millis()).unwrap_or(0)) / 3_600_000;
        jobs::enqueue(
            &mut *tx,
            JOB_PURGE,
            json!({}),
            Some(format!("{JOB_PURGE}:{slot}")),
            delay,
            5,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    fn telehealth_cache(&self) -> &TelehealthCache {
        &self.inner.telehealth
    }
}

#[derive(Debug)]
enum TokenRequestError {
    /// Epic down, slow or overloaded: try again.
    Transient(String),
    /// Epic answered and said no.
    Refused(String),
}

impl TokenRequestError {
    fn message(&self) -> &str {
        match self {
            Self::Transient(m) | Self::Refused(m) => m,
        }
    }
}

/// The join page's view of its conference.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub conference_name: String,
    pub conference_state: String,
    pub my_state: String,
    pub my_role: String,
    pub my_name: String,
    pub participants: Vec<RoomParticipant>,
    /// The video engine's room link with its token, when the participant may enter.
    pub video_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomParticipant {
    pub name: String,
    pub role: String,
    pub state: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConferenceQuery {
    /// `active` or `ended`.
    pub state: Option<String>,
    pub profile_id: Option<String>,
    /// Text to find (patient names only for roles that may see patient data).
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParticipantView {
    pub id: String,
    pub role: String,
    pub name: String,
    pub epic_user: Option<String>,
    pub state: String,
    pub arrived_at: i64,
    pub joined_at: Option<i64>,
    pub left_at: Option<i64>,
    pub token_expires_at: Option<i64>,
    pub token_renewals: i64,
    /// Why the participant's Epic token could not be renewed, if it could not.
    pub token_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConferenceView {
    pub id: String,
    pub name: String,
    pub profile_id: String,
    pub profile_name: String,
    pub appointment_id: String,
    pub department: Option<String>,
    pub state: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_secs: Option<i64>,
    pub ended_reason: Option<String>,
    /// When Epic accepted the `connected` and `ended` statuses.
    pub epic_connected_at: Option<i64>,
    pub epic_ended_at: Option<i64>,
    pub participants: Vec<ParticipantView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConferencePage {
    pub items: Vec<ConferenceView>,
    pub next_cursor: Option<String>,
}

fn conference_view(c: ConferenceRow, ps: Vec<ParticipantRow>, phi: bool) -> ConferenceView {
    ConferenceView {
        name: if phi {
            c.name.clone()
        } else {
            conference_name(
                HIDDEN_PATIENT,
                &c.profile_name,
                &c.appointment_id,
                c.department.as_deref(),
            )
        },
        duration_secs: c.ended_at.map(|e| (e - c.started_at) / 1000),
        participants: ps
            .into_iter()
            .map(|p| ParticipantView {
                name: if phi || p.role == "provider" {
                    p.display_name
                } else {
                    HIDDEN_PATIENT.to_owned()
                },
                epic_user: if phi || p.role == "provider" {
                    p.epic_user
                } else {
                    None
                },
                id: p.id,
                role: p.role,
                state: p.state,
                arrived_at: p.arrived_at,
                joined_at: p.joined_at,
                left_at: p.left_at,
                token_expires_at: p.token_expires_at,
                token_renewals: p.token_renewals,
                token_error: p.token_error,
            })
            .collect(),
        id: c.id,
        profile_id: c.profile_id,
        profile_name: c.profile_name,
        appointment_id: c.appointment_id,
        department: c.department,
        state: c.state,
        started_at: c.started_at,
        ended_at: c.ended_at,
        ended_reason: c.ended_reason,
        epic_connected_at: c.epic_connected_at,
        epic_ended_at: c.epic_ended_at,
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Renews a participant's Epic token before it expires, while the conference is active.
pub struct RenewToken;

#[async_trait]
impl JobHandler for RenewToken {
    fn kind(&self) -> &'static str {
        JOB_RENEW
    }

    async fn run(&self, app: &App, job: &JobRow) -> JobOutcome {
        match renew(app, job).await {
            Ok(o) => o,
            Err(e) => JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            },
        }
    }
}

async fn renew(app: &App, job: &JobRow) -> Result<JobOutcome, AppError> {
    let Some(pid) = job.payload["participant_id"].as_str() else {
        return Ok(JobOutcome::Permanent {
            error: "payload has no participant_id".to_owned(),
        });
    };
    let mut tx = app.store().read().await?;
    let Some(p) = tx.get_participant(pid).await? else {
        return Ok(JobOutcome::Done);
    };
    let Some(conf) = tx.get_conference(&p.conference_id).await? else {
        return Ok(JobOutcome::Done);
    };
    if conf.state != "active" {
        return Ok(JobOutcome::Done);
    }
    let (Some(profile), Some(env)) = (
        tx.get_telehealth_profile(&conf.profile_id).await?,
        tx.get_environment(&conf.environment_id).await?,
    ) else {
        return Ok(JobOutcome::Done);
    };
    let Some(token_ref) = p.token_ref.clone() else {
        return Ok(JobOutcome::Done);
    };
    let tokens: StoredTokens = serde_json::from_slice(&app.get_secret(&mut *tx, &token_ref).await?)
        .map_err(|_| AppError::Internal("stored tokens".to_owned()))?;
    drop(tx);
    let Some(refresh) = tokens.refresh_token.clone() else {
        return Ok(JobOutcome::Done);
    };
    let role = LaunchRole::parse(&p.role).unwrap_or(LaunchRole::Provider);
    let client = match app.client_of(&profile, &env, role) {
        Ok(c) if c.client_id == p.client_id => c,
        _ => {
            record_token_error(
                app,
                &p.id,
                "the profile's client changed; the token cannot be renewed",
            )
            .await?;
            return Ok(JobOutcome::Done);
        }
    };
    let secret = app.client_secret(&client).await?;
    let endpoints = match app.smart_endpoints(&env, &fhir_base(&env)).await {
        Ok(e) => e,
        Err(e) => {
            record_token_error(app, &p.id, &format!("renewal failed: {e}")).await?;
            return Ok(JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            });
        }
    };
    match app
        .token_request(
            &env,
            &endpoints.token,
            &client.client_id,
            &secret,
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .await
    {
        Ok(t) => {
            let now = now_ms();
            let mut tx = app.store().begin().await?;
            let Some(mut p) = tx.get_participant(pid).await? else {
                return Ok(JobOutcome::Done);
            };
            let new_ref = app
                .put_secret(
                    &mut *tx,
                    &format!("conference_participant:{}", p.id),
                    "oauth_tokens",
                    json_of(&StoredTokens {
                        access_token: t.access_token,
                        refresh_token: t.refresh_token.or(Some(refresh)),
                    })?
                    .as_bytes(),
                )
                .await?;
            if let Some(old) = p.token_ref.replace(new_ref) {
                tx.delete_secret(&old).await?;
            }
            p.token_issued_at = Some(now);
            p.token_expires_at = Some(now + t.expires_in.unwrap_or(3600).clamp(1, 86_400) * 1000);
            p.token_renewals += 1;
            p.token_error = None;
            tx.update_participant(&p).await?;
            app.schedule_renewal(&mut *tx, &p).await?;
            tx.commit().await?;
            Ok(JobOutcome::Done)
        }
        Err(TokenRequestError::Transient(m)) => {
            record_token_error(app, pid, &format!("renewal failed, retrying: {m}")).await?;
            Ok(JobOutcome::Retry {
                error: m,
                after: None,
            })
        }
        Err(TokenRequestError::Refused(m)) => {
            record_token_error(app, pid, &format!("renewal refused: {m}")).await?;
            Ok(JobOutcome::Permanent { error: m })
        }
    }
}

async fn record_token_error(app: &App, pid: &str, error: &str) -> Result<(), AppError> {
    let mut tx = app.store().begin().await?;
    if let Some(mut p) = tx.get_participant(pid).await? {
        p.token_error = Some(error.to_owned());
        tx.update_participant(&p).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Tells Epic that a call connected or ended (`SetExternalConnectionStatus`).
pub struct ConnectionStatus;

#[async_trait]
impl JobHandler for ConnectionStatus {
    fn kind(&self) -> &'static str {
        JOB_STATUS
    }

    async fn run(&self, app: &App, job: &JobRow) -> JobOutcome {
        match report_status(app, job).await {
            Ok(o) => o,
            Err(e) => JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            },
        }
    }
}

/// The assumed path of `SetExternalConnectionStatus` under the environment's OAuth base.
pub const CONNECTION_STATUS_PATH: &str =
    "api/epic/2018/Telehealth/ContextLinking/SetExternalConnectionStatus";

async fn report_status(app: &App, job: &JobRow) -> Result<JobOutcome, AppError> {
    let p = &job.payload;
    let field = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
    let (conf_id, env_id, status) = (
        field("conference_id"),
        field("environment_id"),
        field("status"),
    );
    let mut tx = app.store().read().await?;
    let Some(env) = tx.get_environment(&env_id).await? else {
        return Ok(JobOutcome::Permanent {
            error: format!("Epic environment {env_id} was removed"),
        });
    };
    // The participants' own OAuth tokens first (provider first), else the environment's
    // backend token.
    let mut token = None;
    let mut ps = tx.participants(&conf_id).await?;
    ps.sort_by_key(|x| (x.role != "provider", std::cmp::Reverse(x.token_expires_at)));
    for x in &ps {
        if let (Some(r), Some(exp)) = (&x.token_ref, x.token_expires_at)
            && exp > now_ms() + 5_000
            && let Ok(raw) = app.get_secret(&mut *tx, r).await
            && let Ok(t) = serde_json::from_slice::<StoredTokens>(&raw)
        {
            token = Some(t.access_token);
            break;
        }
    }
    drop(tx);
    let token = match token {
        Some(t) => t,
        None => match app.epic_token(&env_id).await {
            Ok(t) => t.to_string(),
            Err(e) => {
                return Ok(JobOutcome::Retry {
                    error: format!("no usable token for Epic: {e}"),
                    after: None,
                });
            }
        },
    };
    if let Err(e) = app.epic_permit(&env).await {
        return Ok(JobOutcome::Retry {
            error: e.to_string(),
            after: None,
        });
    }
    let client = app.epic_http(&env)?;
    let url = format!(
        "{}/{CONNECTION_STATUS_PATH}",
        crate::epic_env::oauth_base(&env.interconnect_url, &env.instance)
    );
    let resp = client
        .post(&url)
        .bearer_auth(token)
        .query(&[
            ("ConferenceID", conf_id.as_str()),
            ("ExternalID", &field("external_id")),
            ("ExternalIDType", &field("external_id_type")),
            ("VendorName", &field("vendor_name")),
            ("ConnectionStatus", &field("code")),
        ])
        .header(reqwest::header::CONTENT_LENGTH, "0")
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            return Ok(JobOutcome::Retry {
                error: crate::outbound_error(&e).to_owned(),
                after: None,
            });
        }
    };
    let code = resp.status();
    if code.is_success() {
        let mut tx = app.store().begin().await?;
        tx.mark_conference_reported(&conf_id, &status, now_ms())
            .await?;
        if status == "ended" {
            // The call is over and Epic knows: the participants' tokens are no longer needed.
            for mut x in tx.participants(&conf_id).await? {
                if let Some(r) = x.token_ref.take() {
                    tx.delete_secret(&r).await?;
                    tx.update_participant(&x).await?;
                }
            }
        }
        tx.commit().await?;
        return Ok(JobOutcome::Done);
    }
    let error = format!(
        "Epic answered HTTP {} to SetExternalConnectionStatus",
        code.as_u16()
    );
    if code.is_server_error() || matches!(code.as_u16(), 401 | 408 | 429) {
        Ok(JobOutcome::Retry { error, after: None })
    } else {
        Ok(JobOutcome::Permanent { error })
    }
}

/// Hourly clean-up: used launches and abandoned sign-ins past their expiry, and ended
/// conferences older than `telehealth_retention_days`.
pub struct Purge;

#[async_trait]
impl JobHandler for Purge {
    fn kind(&self) -> &'static str {
        JOB_PURGE
    }

    async fn run(&self, app: &App, _job: &JobRow) -> JobOutcome {
        match purge(app).await {
            Ok(()) => JobOutcome::Done,
            Err(e) => JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            },
        }
    }
}

async fn purge(app: &App) -> Result<(), AppError> {
    let now = now_ms();
    let mut tx = app.store().begin().await?;
    for r in tx.purge_telehealth_launches(now).await? {
        tx.delete_secret(&r).await?;
    }
    let days = i64::from(app.config().telehealth_retention_days);
    if days > 0 {
        let (n, refs) = tx.purge_conferences(now - days * 86_400_000).await?;
        for r in refs {
            tx.delete_secret(&r).await?;
        }
        if n > 0 {
            let ev = AuditEvent::new("system", "telehealth.conferences.purged", "telehealth")
                .with_details(json!({"deleted": n, "retention_days": days}));
            app.append_audit(&mut *tx, &ev).await?;
        }
    }
    tx.commit().await?;
    app.schedule_telehealth_purge(Duration::from_secs(3600))
        .await
}
