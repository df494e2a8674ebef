//! The FHIR gateway: data adapters (where Epic is), gateways (the URL apps call), apps with
//! OAuth2 client credentials, activations (an app on a gateway, with backend auth to Epic),
//! the token service, and what the proxy needs per request — resolved from short-lived
//! in-memory snapshots so a proxied request costs no database read.

use crate::{App, AppError, Principal, RequestContext, crypto, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use switchboard_domain::ValidationErrors;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::gateway::{Scope, parse_scopes};
use switchboard_store::access_log::AccessBatch;
use switchboard_store::{ActivationRow, AdapterRow, GatewayAppRow, GatewayRequestRow, GatewayRow};

/// How long configuration snapshots and the revocation list are trusted by a replica.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(1);
const TOKEN_KEY_ID: &str = "sec_gateway_token_key";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The adapter settings document of source 002, with its key names.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdapterSettings {
    #[serde(default)]
    pub epic_r4_endpoint: String,
    #[serde(default)]
    pub backend_auth_enabled: bool,
    #[serde(default)]
    pub hl7_over_http_endpoint: Option<String>,
    #[serde(default)]
    pub hl7_over_http_processing_id: Option<String>,
    #[serde(default)]
    pub use_staging_environment: bool,
}

/// "External auth" for Epic's private APIs.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalAuthInput {
    pub client_id: String,
    /// The Basic header value Epic's "Try it" shows; omit to keep the stored one.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// e.g. `https://host/interconnect-aocurprd-username/`
    pub client_api_endpoint: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterInput {
    pub name: String,
    /// Optional link to an Epic environment of the registry: fills `epicR4Endpoint` when it is
    /// empty and must agree with `useStagingEnvironment`.
    #[serde(default)]
    pub environment_id: Option<String>,
    #[serde(default)]
    pub settings: AdapterSettings,
    #[serde(default)]
    pub external_auth: Option<ExternalAuthInput>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Adapter {
    pub id: String,
    pub name: String,
    /// Always `Epic R4 External`.
    pub data_source_type: String,
    pub environment_id: Option<String>,
    pub settings: AdapterSettings,
    pub external_client_id: Option<String>,
    pub external_secret_set: bool,
    pub external_api_endpoint: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn adapter_view(r: AdapterRow) -> Adapter {
    Adapter {
        settings: serde_json::from_str(&r.settings).unwrap_or_default(),
        data_source_type: "Epic R4 External".to_owned(),
        external_secret_set: r.external_secret_ref.is_some(),
        id: r.id,
        name: r.name,
        environment_id: r.environment_id,
        external_client_id: r.external_client_id,
        external_api_endpoint: r.external_api_endpoint,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn check_url(field: &str, value: &str, errors: &mut ValidationErrors) -> Option<url::Url> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            let loopback = u
                .host_str()
                .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]");
            if u.scheme() == "http" && !loopback {
                errors.add(
                    field,
                    "must be https (plain http only to a loopback address)",
                );
                None
            } else {
                Some(u)
            }
        }
        _ => {
            errors.add(field, "must be an absolute http(s) URL");
            None
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayInput {
    /// The URL segment: `/gateways/{name}/fhir/R4/...` (lower-case letters, digits, `-`).
    pub name: String,
    pub adapter_id: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Gateway {
    pub id: String,
    pub name: String,
    pub adapter_id: String,
    /// What apps call.
    pub fhir_base: String,
    pub epic_base: String,
    pub hl7_url: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppInput {
    pub name: String,
    /// Kept and shown; ignored for apps that are not SMART apps.
    #[serde(default)]
    pub launch_uri: Option<String>,
    /// Space-separated SMART scopes (v1 `system/Patient.read` or v2 `system/Patient.rs`).
    pub scopes: String,
    /// Token lifetime in seconds, 60-3600 (default 3600).
    #[serde(default)]
    pub token_ttl_secs: Option<i64>,
    #[serde(default)]
    pub rate_limit_per_sec: Option<i64>,
    /// JWK Set URL for `private_key_jwt` client authentication (optional).
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GatewayApp {
    pub id: String,
    pub name: String,
    /// Always `OAuth2 Client Credentials`.
    pub auth_type: String,
    pub client_id: String,
    pub launch_uri: Option<String>,
    pub scopes: String,
    pub token_ttl_secs: i64,
    pub rate_limit_per_sec: Option<i64>,
    pub jwks_url: Option<String>,
    /// Until when the previous secret still works after a rotation.
    pub previous_secret_valid_until: Option<i64>,
    pub disabled: bool,
    pub token_url: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A new or rotated secret: shown once, stored only as a digest.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppWithSecret {
    pub app: GatewayApp,
    pub client_secret: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationInput {
    pub app_id: String,
    pub gateway_id: String,
    /// `none` or `backend` (EHR authentication type System → Backend auth).
    pub ehr_auth: String,
    #[serde(default)]
    pub epic_client_id: Option<String>,
    #[serde(default)]
    pub epic_app_name: Option<String>,
    /// Epic's token URL; derived from the adapter's `epicR4Endpoint` when omitted.
    #[serde(default)]
    pub token_url: Option<String>,
    /// `RS384` (default) or `ES384`, for the generated key pair.
    #[serde(default)]
    pub key_algorithm: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Activation {
    pub id: String,
    pub app_id: String,
    pub gateway_id: String,
    pub ehr_auth: String,
    pub epic_client_id: Option<String>,
    pub epic_app_name: Option<String>,
    pub token_url: Option<String>,
    pub key_set_id: Option<String>,
    /// The JWK Set URL to register with Epic (backend auth).
    pub jwk_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

fn slug_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

fn digest(secret: &str) -> String {
    hex::encode(crypto::sha256(secret.as_bytes()))
}

/// `https://host/x-oauth/api/FHIR/R4` → `https://host/x-oauth`
fn oauth_base_of(r4: &str) -> String {
    let t = r4.trim_end_matches('/');
    t.strip_suffix("/api/FHIR/R4")
        .or_else(|| t.strip_suffix("/api/FHIR/STU3"))
        .unwrap_or(t)
        .to_owned()
}

impl App {
    fn gateway_view(&self, g: GatewayRow) -> Gateway {
        let base = format!("{}/gateways/{}", self.config().public_url(), g.name);
        Gateway {
            fhir_base: format!("{base}/fhir/R4"),
            epic_base: format!("{base}/epic"),
            hl7_url: format!("{base}/hl7v2"),
            id: g.id,
            name: g.name,
            adapter_id: g.adapter_id,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }

    fn app_view(&self, a: GatewayAppRow) -> GatewayApp {
        GatewayApp {
            auth_type: "OAuth2 Client Credentials".to_owned(),
            token_url: format!("{}/auth/token", self.config().public_url()),
            previous_secret_valid_until: a
                .previous_valid_until
                .filter(|t| *t > now_ms() && a.previous_secret_digest.is_some()),
            id: a.id,
            name: a.name,
            client_id: a.client_id,
            launch_uri: a.launch_uri,
            scopes: a.scopes,
            token_ttl_secs: a.token_ttl_secs,
            rate_limit_per_sec: a.rate_limit_per_sec,
            jwks_url: a.jwks_url,
            disabled: a.disabled,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }

    fn activation_view(&self, a: ActivationRow) -> Activation {
        Activation {
            jwk_url: a
                .key_set_id
                .as_ref()
                .map(|k| format!("{}/jwks/{k}.json", self.config().public_url())),
            id: a.id,
            app_id: a.app_id,
            gateway_id: a.gateway_id,
            ehr_auth: a.ehr_auth,
            epic_client_id: a.epic_client_id,
            epic_app_name: a.epic_app_name,
            token_url: a.token_url,
            key_set_id: a.key_set_id,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }

    // --- adapters

    pub async fn list_adapters(&self) -> Result<Vec<Adapter>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_adapters()
            .await?
            .into_iter()
            .map(adapter_view)
            .collect())
    }

    pub async fn get_adapter(&self, id: &str) -> Result<Adapter, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_adapter(id)
            .await?
            .map(adapter_view)
            .ok_or_else(|| AppError::NotFound(format!("data adapter {id}")))
    }

    pub async fn save_adapter(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: Option<&str>,
        mut input: AdapterInput,
    ) -> Result<Adapter, AppError> {
        let mut tx = self.store().begin().await?;
        let old = match id {
            Some(id) => Some(
                tx.get_adapter(id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("data adapter {id}")))?,
            ),
            None => None,
        };
        let id = old.as_ref().map_or_else(
            || format!("ad_{}", &crypto::new_secret("x")[2..18]),
            |o| o.id.clone(),
        );
        let mut errors = ValidationErrors::new();
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.len() > 80 {
            errors.add("name", "must be 1-80 characters");
        }
        if tx
            .list_adapters()
            .await?
            .iter()
            .any(|a| a.name == name && a.id != id)
        {
            errors.add("name", format!("an adapter named `{name}` already exists"));
        }
        if let Some(env_id) = &input.environment_id {
            match tx.get_environment(env_id).await? {
                None => errors.add("environment_id", format!("no Epic environment `{env_id}`")),
                Some(env) => {
                    if input.settings.epic_r4_endpoint.is_empty() {
                        input.settings.epic_r4_endpoint = format!(
                            "{}/api/FHIR/R4",
                            crate::epic_env::oauth_base(&env.interconnect_url, &env.instance)
                        );
                    }
                    if input.settings.use_staging_environment == (env.kind == "production") {
                        errors.add(
                            "settings.useStagingEnvironment",
                            format!(
                                "the environment is {}; useStagingEnvironment must be {}",
                                env.kind,
                                env.kind != "production"
                            ),
                        );
                    }
                }
            }
        }
        check_url(
            "settings.epicR4Endpoint",
            &input.settings.epic_r4_endpoint,
            &mut errors,
        );
        if let Some(h) = &input.settings.hl7_over_http_endpoint {
            check_url("settings.hl7OverHttpEndpoint", h, &mut errors);
        }
        match input.settings.hl7_over_http_processing_id.as_deref() {
            None if input.settings.hl7_over_http_endpoint.is_some() => errors.add(
                "settings.hl7OverHttpProcessingId",
                "T (test) or P (production) is required with an HL7 endpoint",
            ),
            Some(v) if !matches!(v, "T" | "P") => {
                errors.add("settings.hl7OverHttpProcessingId", "must be T or P");
            }
            _ => {}
        }
        if input.settings.hl7_over_http_processing_id.as_deref() == Some("P")
            && input.settings.use_staging_environment
        {
            errors.add(
                "settings.hl7OverHttpProcessingId",
                "a staging adapter sends test messages: use T",
            );
        }
        let old_secret = old.as_ref().and_then(|o| o.external_secret_ref.clone());
        if let Some(x) = &input.external_auth {
            if x.client_id.trim().is_empty() {
                errors.add("external_auth.client_id", "is required");
            }
            check_url(
                "external_auth.client_api_endpoint",
                &x.client_api_endpoint,
                &mut errors,
            );
            if x.client_secret.as_deref().is_none_or(str::is_empty) && old_secret.is_none() {
                errors.add(
                    "external_auth.client_secret",
                    "is required (the Basic header value)",
                );
            }
        }
        errors.into_result()?;
        let owner = format!("data_adapter:{id}");
        let (ext_id, ext_ref, ext_endpoint) = match &input.external_auth {
            None => {
                if let Some(r) = &old_secret {
                    tx.delete_secret(r).await?;
                }
                (None, None, None)
            }
            Some(x) => {
                let secret_ref = match x.client_secret.as_deref().filter(|s| !s.is_empty()) {
                    Some(s) => {
                        if let Some(r) = &old_secret {
                            tx.delete_secret(r).await?;
                        }
                        let v = s.trim().trim_start_matches("Basic ").trim();
                        Some(
                            self.put_secret(&mut *tx, &owner, "external_basic", v.as_bytes())
                                .await?,
                        )
                    }
                    None => old_secret,
                };
                (
                    Some(x.client_id.trim().to_owned()),
                    secret_ref,
                    Some(x.client_api_endpoint.clone()),
                )
            }
        };
        let now = now_ms();
        let row = AdapterRow {
            id: id.clone(),
            name,
            kind: "epic_r4_external".to_owned(),
            environment_id: input.environment_id.clone(),
            settings: serde_json::to_string(&input.settings)
                .map_err(|e| AppError::Internal(e.to_string()))?,
            external_client_id: ext_id,
            external_secret_ref: ext_ref,
            external_api_endpoint: ext_endpoint,
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        if old.is_some() {
            tx.update_adapter(&row).await?;
        } else {
            tx.insert_adapter(&row).await?;
        }
        let ev = AuditEvent::new(
            "",
            if old.is_some() { "gateway.adapter.updated" } else { "gateway.adapter.created" },
            format!("data_adapter:{id}"),
        )
        .with_details(json!({"name": row.name, "settings": input.settings, "external_auth": row.external_client_id.is_some()}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(adapter_view(row))
    }

    pub async fn delete_adapter(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_adapter(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("data adapter {id}")))?;
        if tx.list_gateways().await?.iter().any(|g| g.adapter_id == id) {
            return Err(AppError::Conflict(
                "a gateway uses this adapter; remove or rebind it first".to_owned(),
            ));
        }
        if let Some(r) = &row.external_secret_ref {
            tx.delete_secret(r).await?;
        }
        tx.delete_adapter(id).await?;
        let ev = AuditEvent::new("", "gateway.adapter.removed", format!("data_adapter:{id}"))
            .with_details(json!({"name": row.name}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(())
    }

    // --- gateways

    pub async fn list_gateways(&self) -> Result<Vec<Gateway>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_gateways()
            .await?
            .into_iter()
            .map(|g| self.gateway_view(g))
            .collect())
    }

    pub async fn get_gateway(&self, id: &str) -> Result<Gateway, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_gateway(id)
            .await?
            .map(|g| self.gateway_view(g))
            .ok_or_else(|| AppError::NotFound(format!("gateway {id}")))
    }

    pub async fn save_gateway(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: Option<&str>,
        input: GatewayInput,
    ) -> Result<Gateway, AppError> {
        let mut tx = self.store().begin().await?;
        let old = match id {
            Some(id) => Some(
                tx.get_gateway(id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("gateway {id}")))?,
            ),
            None => None,
        };
        let id = old.as_ref().map_or_else(
            || format!("gw_{}", &crypto::new_secret("x")[2..18]),
            |o| o.id.clone(),
        );
        let mut errors = ValidationErrors::new();
        if !slug_ok(&input.name) {
            errors.add(
                "name",
                "must be 1-40 lower-case letters, digits or `-` (it is part of the URL)",
            );
        } else if tx
            .get_gateway(&input.name)
            .await?
            .is_some_and(|g| g.id != id)
        {
            errors.add(
                "name",
                format!("a gateway named `{}` already exists", input.name),
            );
        }
        if tx.get_adapter(&input.adapter_id).await?.is_none() {
            errors.add(
                "adapter_id",
                format!("no data adapter `{}`", input.adapter_id),
            );
        }
        errors.into_result()?;
        let now = now_ms();
        let row = GatewayRow {
            id: id.clone(),
            name: input.name,
            adapter_id: input.adapter_id,
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        if old.is_some() {
            tx.update_gateway(&row).await?;
        } else {
            tx.insert_gateway(&row).await?;
        }
        let ev = AuditEvent::new(
            "",
            if old.is_some() {
                "gateway.updated"
            } else {
                "gateway.created"
            },
            format!("gateway:{id}"),
        )
        .with_details(json!({"name": row.name, "adapter_id": row.adapter_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(self.gateway_view(row))
    }

    pub async fn delete_gateway(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_gateway(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("gateway {id}")))?;
        for a in tx
            .list_activations()
            .await?
            .into_iter()
            .filter(|a| a.gateway_id == row.id)
        {
            tx.delete_activation(&a.id).await?;
        }
        tx.delete_gateway(&row.id).await?;
        let ev = AuditEvent::new("", "gateway.removed", format!("gateway:{}", row.id))
            .with_details(json!({"name": row.name}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(())
    }

    // --- apps

    pub async fn list_gateway_apps(&self) -> Result<Vec<GatewayApp>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_gateway_apps()
            .await?
            .into_iter()
            .map(|a| self.app_view(a))
            .collect())
    }

    pub async fn get_gateway_app(&self, id: &str) -> Result<GatewayApp, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_gateway_app(id)
            .await?
            .map(|a| self.app_view(a))
            .ok_or_else(|| AppError::NotFound(format!("app {id}")))
    }

    fn check_app(input: &AppInput) -> Result<(i64, String), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if input.name.trim().is_empty() || input.name.len() > 80 {
            errors.add("name", "must be 1-80 characters");
        }
        let scopes = match parse_scopes(&input.scopes) {
            Ok(s) if s.is_empty() => {
                errors.add("scopes", "at least one scope, e.g. system/Patient.read");
                String::new()
            }
            Ok(s) => s
                .iter()
                .map(|x| x.text.clone())
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => {
                errors.add("scopes", e);
                String::new()
            }
        };
        let ttl = input.token_ttl_secs.unwrap_or(3600);
        if !(60..=3600).contains(&ttl) {
            errors.add("token_ttl_secs", "must be between 60 and 3600");
        }
        if input.rate_limit_per_sec.is_some_and(|r| r < 1) {
            errors.add(
                "rate_limit_per_sec",
                "must be at least 1 (omit for no limit)",
            );
        }
        if let Some(u) = &input.launch_uri
            && url::Url::parse(u).is_err()
        {
            errors.add("launch_uri", "must be a URL");
        }
        if let Some(u) = &input.jwks_url {
            check_url("jwks_url", u, &mut errors);
        }
        errors.into_result().map(|()| (ttl, scopes))
    }

    /// Creates an app; the client secret is in the answer once and stored only as a digest.
    pub async fn create_gateway_app(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: AppInput,
    ) -> Result<AppWithSecret, AppError> {
        let (ttl, scopes) = Self::check_app(&input)?;
        let secret = crypto::new_secret("sbs");
        let now = now_ms();
        let row = GatewayAppRow {
            id: format!("app_{}", &crypto::new_secret("x")[2..18]),
            name: input.name.trim().to_owned(),
            client_id: format!("sbc_{}", hex::encode(crypto::random_bytes::<12>())),
            secret_digest: digest(&secret),
            previous_secret_digest: None,
            previous_valid_until: None,
            launch_uri: input.launch_uri,
            scopes,
            token_ttl_secs: ttl,
            rate_limit_per_sec: input.rate_limit_per_sec,
            jwks_url: input.jwks_url,
            tokens_not_before: 0,
            disabled: input.disabled.unwrap_or(false),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.store().begin().await?;
        tx.insert_gateway_app(&row).await?;
        let ev = AuditEvent::new("", "gateway.app.created", format!("gateway_app:{}", row.id))
            .with_details(
                json!({"name": row.name, "client_id": row.client_id, "scopes": row.scopes}),
            );
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(AppWithSecret {
            app: self.app_view(row),
            client_secret: secret,
        })
    }

    pub async fn update_gateway_app(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        input: AppInput,
    ) -> Result<GatewayApp, AppError> {
        let (ttl, scopes) = Self::check_app(&input)?;
        let mut tx = self.store().begin().await?;
        let mut row = tx
            .get_gateway_app(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("app {id}")))?;
        row.name = input.name.trim().to_owned();
        row.launch_uri = input.launch_uri;
        row.scopes = scopes;
        row.token_ttl_secs = ttl;
        row.rate_limit_per_sec = input.rate_limit_per_sec;
        row.jwks_url = input.jwks_url;
        if let Some(d) = input.disabled {
            row.disabled = d;
        }
        row.updated_at = now_ms();
        tx.update_gateway_app(&row).await?;
        let ev = AuditEvent::new("", "gateway.app.updated", format!("gateway_app:{id}"))
            .with_details(
                json!({"name": row.name, "scopes": row.scopes, "disabled": row.disabled}),
            );
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(self.app_view(row))
    }

    /// A new secret; the old one keeps working for `grace_secs` (0-604,800).
    pub async fn rotate_gateway_app_secret(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        grace_secs: i64,
    ) -> Result<AppWithSecret, AppError> {
        if !(0..=604_800).contains(&grace_secs) {
            return Err(ValidationErrors::single(
                "grace_secs",
                "must be between 0 and 604800 (7 days)",
            )
            .into());
        }
        let mut tx = self.store().begin().await?;
        let mut row = tx
            .get_gateway_app(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("app {id}")))?;
        let secret = crypto::new_secret("sbs");
        let now = now_ms();
        row.previous_secret_digest = (grace_secs > 0).then(|| row.secret_digest.clone());
        row.previous_valid_until = (grace_secs > 0).then_some(now + grace_secs * 1000);
        row.secret_digest = digest(&secret);
        row.updated_at = now;
        tx.update_gateway_app(&row).await?;
        let ev = AuditEvent::new(
            "",
            "gateway.app.secret_rotated",
            format!("gateway_app:{id}"),
        )
        .with_details(json!({"grace_secs": grace_secs}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(AppWithSecret {
            app: self.app_view(row),
            client_secret: secret,
        })
    }

    /// Revokes every token the app holds now (every replica within [`SNAPSHOT_TTL`]).
    pub async fn revoke_gateway_app_tokens(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<GatewayApp, AppError> {
        let mut tx = self.store().begin().await?;
        let mut row = tx
            .get_gateway_app(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("app {id}")))?;
        row.tokens_not_before = now_ms() + 1;
        row.updated_at = now_ms();
        tx.update_gateway_app(&row).await?;
        let ev = AuditEvent::new(
            "",
            "gateway.app.tokens_revoked",
            format!("gateway_app:{id}"),
        )
        .with_details(json!({}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(self.app_view(row))
    }

    pub async fn delete_gateway_app(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_gateway_app(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("app {id}")))?;
        for a in tx
            .list_activations()
            .await?
            .into_iter()
            .filter(|a| a.app_id == id)
        {
            tx.delete_activation(&a.id).await?;
        }
        tx.delete_gateway_app(id).await?;
        let ev = AuditEvent::new("", "gateway.app.removed", format!("gateway_app:{id}"))
            .with_details(json!({"name": row.name, "client_id": row.client_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(())
    }

    // --- activations

    pub async fn list_activations(&self) -> Result<Vec<Activation>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_activations()
            .await?
            .into_iter()
            .map(|a| self.activation_view(a))
            .collect())
    }

    pub async fn get_activation(&self, id: &str) -> Result<Activation, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_activation(id)
            .await?
            .map(|a| self.activation_view(a))
            .ok_or_else(|| AppError::NotFound(format!("activation {id}")))
    }

    /// Activates an app on a gateway (or changes the activation); backend auth generates the
    /// key pair whose JWK URL / PEM is registered with Epic.
    pub async fn save_activation(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: Option<&str>,
        input: ActivationInput,
    ) -> Result<Activation, AppError> {
        let mut tx = self.store().begin().await?;
        let old = match id {
            Some(id) => Some(
                tx.get_activation(id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("activation {id}")))?,
            ),
            None => None,
        };
        let mut errors = ValidationErrors::new();
        let gateway = tx.get_gateway(&input.gateway_id).await?;
        if gateway.is_none() {
            errors.add("gateway_id", format!("no gateway `{}`", input.gateway_id));
        }
        if tx.get_gateway_app(&input.app_id).await?.is_none() {
            errors.add("app_id", format!("no app `{}`", input.app_id));
        }
        if let (Some(o), Some(g)) = (&old, &gateway)
            && (o.app_id != input.app_id || o.gateway_id != g.id)
        {
            errors.add(
                "app_id",
                "an activation cannot move to another app or gateway; create a new one",
            );
        }
        if old.is_none()
            && let Some(g) = &gateway
            && tx.find_activation(&input.app_id, &g.id).await?.is_some()
        {
            errors.add("app_id", "the app is already activated on this gateway");
        }
        let backend = match input.ehr_auth.as_str() {
            "backend" => true,
            "none" => false,
            other => {
                errors.add(
                    "ehr_auth",
                    format!("`{other}` is not an EHR authentication type: use backend or none"),
                );
                false
            }
        };
        let alg = match input.key_algorithm.as_deref().unwrap_or("RS384") {
            "RS384" => switchboard_epic::jose::Alg::RS384,
            "ES384" => switchboard_epic::jose::Alg::ES384,
            other => {
                errors.add("key_algorithm", format!("`{other}`: use RS384 or ES384"));
                switchboard_epic::jose::Alg::RS384
            }
        };
        let mut token_url = input.token_url.clone();
        if backend {
            if input
                .epic_client_id
                .as_deref()
                .is_none_or(|c| c.trim().is_empty())
            {
                errors.add(
                    "epic_client_id",
                    "the client ID Epic issued is required for backend auth",
                );
            }
            if token_url.is_none()
                && let Some(g) = &gateway
                && let Some(a) = tx.get_adapter(&g.adapter_id).await?
            {
                let s: AdapterSettings = serde_json::from_str(&a.settings).unwrap_or_default();
                token_url = Some(format!(
                    "{}/oauth2/token",
                    oauth_base_of(&s.epic_r4_endpoint)
                ));
            }
            if let Some(u) = &token_url {
                check_url("token_url", u, &mut errors);
            }
        }
        errors.into_result()?;
        let Some(gateway) = gateway else {
            return Err(AppError::Internal("gateway vanished".to_owned()));
        };
        let now = now_ms();
        let id = old.as_ref().map_or_else(
            || format!("act_{}", &crypto::new_secret("x")[2..18]),
            |o| o.id.clone(),
        );
        let key_set_id = match (backend, old.as_ref().and_then(|o| o.key_set_id.clone())) {
            (true, Some(k)) => Some(k),
            (true, None) => Some(
                self.create_key_set(&mut *tx, &format!("activation:{id}"), alg)
                    .await?,
            ),
            (false, _) => None,
        };
        let row = ActivationRow {
            id: id.clone(),
            app_id: input.app_id,
            gateway_id: gateway.id,
            ehr_auth: input.ehr_auth,
            epic_client_id: input
                .epic_client_id
                .filter(|_| backend)
                .map(|c| c.trim().to_owned()),
            epic_app_name: input.epic_app_name.filter(|_| backend),
            key_set_id,
            token_url: token_url.filter(|_| backend),
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        if old.is_some() {
            tx.update_activation(&row).await?;
        } else {
            tx.insert_activation(&row).await?;
        }
        let ev = AuditEvent::new(
            "",
            if old.is_some() { "gateway.activation.updated" } else { "gateway.activation.created" },
            format!("activation:{id}"),
        )
        .with_details(json!({"app_id": row.app_id, "gateway_id": row.gateway_id, "ehr_auth": row.ehr_auth, "epic_client_id": row.epic_client_id, "key_set_id": row.key_set_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(self.activation_view(row))
    }

    pub async fn delete_activation(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_activation(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("activation {id}")))?;
        tx.delete_activation(id).await?;
        let ev = AuditEvent::new("", "gateway.activation.removed", format!("activation:{id}"))
            .with_details(json!({"app_id": row.app_id, "gateway_id": row.gateway_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_gateway_snapshots();
        Ok(())
    }

    /// The public key of an activation's active signing key, as PEM (Epic's static key upload).
    pub async fn activation_public_key_pem(&self, id: &str) -> Result<String, AppError> {
        let a = self.get_activation(id).await?;
        let ks = a.key_set_id.ok_or_else(|| {
            AppError::Conflict("the activation does not use backend auth".to_owned())
        })?;
        let (key, _) = self.active_key_of_set(&ks).await?;
        key.public_key_pem()
            .map_err(|e| AppError::Internal(e.to_string()))
    }

    pub async fn rotate_activation_keys(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Activation, AppError> {
        let a = self.get_activation(id).await?;
        let ks = a.key_set_id.clone().ok_or_else(|| {
            AppError::Conflict("the activation does not use backend auth".to_owned())
        })?;
        self.rotate_key_set(p, ctx, &ks, json!({"activation": id}))
            .await?;
        Ok(a)
    }

    // -----------------------------------------------------------------------------------------
    // Tokens

    async fn token_key(&self) -> Result<Arc<Vec<u8>>, AppError> {
        if let Some(k) = self.gateway_state().token_key.get() {
            return Ok(Arc::clone(k));
        }
        let k = Arc::new(
            self.singleton_secret(TOKEN_KEY_ID, "gateway_token_key", || {
                crypto::random_bytes::<32>().to_vec()
            })
            .await?,
        );
        let _ = self.gateway_state().token_key.set(Arc::clone(&k));
        Ok(k)
    }

    /// The token endpoint's work after the transport: authenticate the client, check the grant
    /// and scope, issue a token.
    pub async fn issue_gateway_token(
        &self,
        req: TokenRequest,
    ) -> Result<TokenResponse, TokenError> {
        if req.grant_type.as_deref() != Some("client_credentials") {
            return Err(match req.grant_type {
                None => TokenError::invalid_request("grant_type is missing"),
                Some(g) => TokenError::new(
                    "unsupported_grant_type",
                    format!("`{g}` is not supported: use client_credentials"),
                ),
            });
        }
        let now = now_ms();
        let app = match (req.basic, req.form_client, req.assertion) {
            (Some((client_id, secret)), None, None) | (None, Some((client_id, secret)), None) => {
                let app = self
                    .app_snapshot_by_client_id(&client_id)
                    .await
                    .map_err(|e| TokenError::internal(&e))?
                    .ok_or_else(|| TokenError::invalid_client("unknown client or wrong secret"))?;
                let d = digest(&secret);
                let ok = crypto::constant_time_eq(d.as_bytes(), app.row.secret_digest.as_bytes())
                    || app.row.previous_secret_digest.as_deref().is_some_and(|p| {
                        app.row.previous_valid_until.is_some_and(|t| t > now)
                            && crypto::constant_time_eq(d.as_bytes(), p.as_bytes())
                    });
                if !ok {
                    return Err(TokenError::invalid_client("unknown client or wrong secret"));
                }
                app
            }
            (None, None, Some((claimed, assertion))) => {
                self.check_client_assertion(claimed.as_deref(), &assertion)
                    .await?
            }
            (None, None, None) => {
                return Err(TokenError::invalid_client(
                    "client authentication is required (HTTP Basic client_id:secret, or a private_key_jwt assertion)",
                ));
            }
            _ => {
                return Err(TokenError::invalid_request(
                    "use one client authentication method, not two",
                ));
            }
        };
        let client_id = app.row.client_id.clone();
        if app.row.disabled {
            return Err(TokenError::new(
                "unauthorized_client",
                "the app is disabled".to_owned(),
            ));
        }
        let granted: Vec<Scope> = match req
            .scope
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => app.scopes.clone(),
            Some(text) => {
                let asked = parse_scopes(text).map_err(|e| TokenError::new("invalid_scope", e))?;
                for a in &asked {
                    if !app.scopes.iter().any(|s| a.within(s)) {
                        return Err(TokenError::new(
                            "invalid_scope",
                            format!("`{}` is not allowed for this app", a.text),
                        ));
                    }
                }
                asked
            }
        };
        let scope = granted
            .iter()
            .map(|s| s.text.clone())
            .collect::<Vec<_>>()
            .join(" ");
        let key = self
            .token_key()
            .await
            .map_err(|e| TokenError::internal(&e))?;
        let iat = now / 1000;
        let jti = hex::encode(crypto::random_bytes::<12>());
        let token = crypto::hs256_jwt(
            &key,
            &json!({"iss": format!("{}/auth", self.config().public_url()), "sub": client_id, "app": app.row.id,
                    "scope": scope, "iat": iat, "iat_ms": now, "exp": iat + app.row.token_ttl_secs, "jti": jti}),
        );
        Ok(TokenResponse {
            access_token: token,
            token_type: "bearer".to_owned(),
            expires_in: app.row.token_ttl_secs,
            scope,
        })
    }

    /// `private_key_jwt` (SMART Backend Services against Switchboard): the assertion must be
    /// signed by a key in the app's JWK Set, with `iss` = `sub` = the client ID, `aud` = this
    /// token URL, an `exp` at most five minutes ahead, and a `jti` never seen before.
    async fn check_client_assertion(
        &self,
        claimed: Option<&str>,
        assertion: &str,
    ) -> Result<Arc<AppSnapshot>, TokenError> {
        use switchboard_epic::jose::Unverified;
        let bad = |why: &str| TokenError::invalid_client(why);
        let jwt =
            Unverified::parse(assertion).map_err(|_| bad("the client assertion is not a JWT"))?;
        let alg = jwt
            .alg()
            .map_err(|_| bad("the client assertion's alg is not RS256/384/512 or ES256/384"))?;
        let text = |k: &str| jwt.claims.get(k).and_then(serde_json::Value::as_str);
        let iss = text("iss").ok_or_else(|| bad("the client assertion has no iss"))?;
        if text("sub") != Some(iss) || claimed.is_some_and(|c| c != iss) {
            return Err(bad("iss, sub and client_id must all be the client ID"));
        }
        let aud = format!("{}/auth/token", self.config().public_url());
        let aud_ok = match jwt.claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == aud,
            Some(serde_json::Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(aud.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(bad("the client assertion's aud must be this token URL"));
        }
        let now = now_ms() / 1000;
        let exp = jwt
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| bad("the client assertion has no exp"))?;
        if exp <= now - 5 || exp > now + 305 {
            return Err(bad(
                "the client assertion is expired or lives longer than five minutes",
            ));
        }
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("the client assertion needs a jti"))?;
        let app = self
            .app_snapshot_by_client_id(iss)
            .await
            .map_err(|e| TokenError::internal(&e))?
            .ok_or_else(|| bad("unknown client"))?;
        let url = app
            .row
            .jwks_url
            .clone()
            .ok_or_else(|| bad("the app has no JWK Set URL for private_key_jwt"))?;
        let mut verified = false;
        for refresh in [false, true] {
            let set = self.app_jwks(&url, refresh).await.map_err(|e| bad(&e))?;
            if set
                .candidates(jwt.header.kid.as_deref(), alg)
                .iter()
                .any(|jwk| {
                    switchboard_epic::jose::VerifyingKey::from_jwk(jwk)
                        .is_ok_and(|k| jwt.verify_with(&k).is_ok())
                })
            {
                verified = true;
                break;
            }
        }
        if !verified {
            return Err(bad(
                "the client assertion's signature does not verify with the app's JWK Set",
            ));
        }
        let mut tx = self
            .store()
            .begin()
            .await
            .map_err(|e| TokenError::internal(&e.into()))?;
        let fresh = tx
            .revoke_token_id(
                &format!("assertion:{}", crypto::sha256_hex(jti)),
                &app.row.id,
                now_ms(),
                exp * 1000,
            )
            .await
            .map_err(|e| TokenError::internal(&e.into()))?;
        tx.commit()
            .await
            .map_err(|e| TokenError::internal(&e.into()))?;
        if !fresh {
            return Err(bad("the client assertion was already used (jti replay)"));
        }
        Ok(app)
    }

    /// An app's JWK Set, cached five minutes; `refresh` fetches it again (an unknown key).
    async fn app_jwks(
        &self,
        url: &str,
        refresh: bool,
    ) -> Result<switchboard_epic::jose::JwkSet, String> {
        if !refresh
            && let Some((at, set)) = lock(&self.gateway_state().jwks).get(url)
            && at.elapsed() < Duration::from_secs(300)
        {
            return Ok(set.clone());
        }
        let resp = self.http().get(url).send().await.map_err(|e| {
            format!(
                "the app's JWK Set could not be fetched: {}",
                crate::outbound_error(&e)
            )
        })?;
        if !resp.status().is_success() {
            return Err(format!(
                "the app's JWK Set URL answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        let set: switchboard_epic::jose::JwkSet = resp
            .json()
            .await
            .map_err(|_| "the app's JWK Set URL did not return a JWK Set".to_owned())?;
        lock(&self.gateway_state().jwks).insert(url.to_owned(), (Instant::now(), set.clone()));
        Ok(set)
    }

    /// RFC 7009: an app revokes one of its tokens (unknown or foreign tokens are ignored).
    pub async fn revoke_gateway_token(
        &self,
        client_id: &str,
        secret: &str,
        token: &str,
    ) -> Result<(), TokenError> {
        let app = self
            .app_snapshot_by_client_id(client_id)
            .await
            .map_err(|e| TokenError::internal(&e))?
            .filter(|a| {
                crypto::constant_time_eq(digest(secret).as_bytes(), a.row.secret_digest.as_bytes())
            })
            .ok_or_else(|| TokenError::invalid_client("unknown client or wrong secret"))?;
        let key = self
            .token_key()
            .await
            .map_err(|e| TokenError::internal(&e))?;
        let Some(claims) = crypto::verify_hs256_jwt(&key, token) else {
            return Ok(());
        };
        if claims["app"] != app.row.id.as_str() {
            return Ok(());
        }
        let (Some(jti), Some(exp)) = (claims["jti"].as_str(), claims["exp"].as_i64()) else {
            return Ok(());
        };
        let mut tx = self
            .store()
            .begin()
            .await
            .map_err(|e| TokenError::internal(&e.into()))?;
        tx.revoke_token_id(jti, &app.row.id, now_ms(), exp * 1000)
            .await
            .map_err(|e| TokenError::internal(&e.into()))?;
        tx.commit()
            .await
            .map_err(|e| TokenError::internal(&e.into()))?;
        lock(&self.gateway_state().revoked)
            .jtis
            .insert(jti.to_owned());
        Ok(())
    }

    /// Checks a bearer token: signature, expiry, the app (enabled, not revoked since issue) and
    /// the revocation list. Costs no database read while the snapshots are fresh.
    pub async fn check_gateway_token(&self, token: &str) -> Result<Caller, &'static str> {
        let verified = self.verified_token(token).await?;
        let now = now_ms();
        if verified.exp_ms <= now {
            return Err("the token expired");
        }
        if self.is_revoked(&verified.jti).await {
            return Err("the token was revoked");
        }
        let app = self
            .app_snapshot(&verified.app_id)
            .await
            .map_err(|_| "the token service is unavailable")?
            .ok_or("the app no longer exists")?;
        if app.row.disabled {
            return Err("the app is disabled");
        }
        if verified.iat_ms < app.row.tokens_not_before {
            return Err("the token was revoked");
        }
        Ok(Caller {
            app,
            scopes: Arc::clone(&verified.scopes),
        })
    }

    /// A token's signature and claims, checked once and then remembered (bounded).
    async fn verified_token(&self, token: &str) -> Result<Arc<VerifiedToken>, &'static str> {
        if let Some(v) = self
            .gateway_state()
            .verified
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
        {
            return Ok(Arc::clone(v));
        }
        let key = self
            .token_key()
            .await
            .map_err(|_| "the token service is unavailable")?;
        let claims = crypto::verify_hs256_jwt(&key, token)
            .ok_or("the token is not one Switchboard issued")?;
        let v = Arc::new(VerifiedToken {
            app_id: claims["app"]
                .as_str()
                .ok_or("the token names no app")?
                .to_owned(),
            jti: claims["jti"].as_str().unwrap_or_default().to_owned(),
            iat_ms: claims["iat_ms"].as_i64().unwrap_or(0),
            exp_ms: claims["exp"].as_i64().ok_or("the token has no expiry")? * 1000,
            scopes: Arc::new(
                parse_scopes(claims["scope"].as_str().unwrap_or_default()).unwrap_or_default(),
            ),
        });
        let mut m = self
            .gateway_state()
            .verified
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= 10_000 {
            let now = now_ms();
            m.retain(|_, v| v.exp_ms > now);
            if m.len() >= 10_000 {
                m.clear();
            }
        }
        m.insert(token.to_owned(), Arc::clone(&v));
        Ok(v)
    }

    async fn is_revoked(&self, jti: &str) -> bool {
        let (reload, since) = {
            let r = lock(&self.gateway_state().revoked);
            let reload = r
                .refreshed
                .is_none_or(|t| freshness(t.elapsed(), &r.claimed) != Freshness::Fresh);
            (reload, r.since)
        };
        if reload
            && let Ok(mut tx) = self.store().read().await
            && let Ok(rows) = tx.revocations_since(since, now_ms()).await
        {
            let mut r = lock(&self.gateway_state().revoked);
            for (j, at) in rows {
                r.since = r.since.max(at - 5_000);
                r.jtis.insert(j);
            }
            r.refreshed = Some(Instant::now());
            *r.claimed.get_mut() = 0;
        }
        lock(&self.gateway_state().revoked).jtis.contains(jti)
    }

    // -----------------------------------------------------------------------------------------
    // Snapshots for the proxy

    fn gateway_state(&self) -> &GatewayState {
        &self.inner.gateway
    }

    /// Drops this replica's snapshots (other replicas refresh within [`SNAPSHOT_TTL`]).
    pub fn forget_gateway_snapshots(&self) {
        let s = self.gateway_state();
        s.apps.clear();
        s.gateways.clear();
        s.activations.clear();
        lock(&s.credentials).clear();
    }

    async fn app_snapshot_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<Arc<AppSnapshot>>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .get_gateway_app_by_client_id(client_id)
            .await?
            .map(AppSnapshot::new))
    }

    async fn app_snapshot(&self, app_id: &str) -> Result<Option<Arc<AppSnapshot>>, AppError> {
        if let Some(hit) = self.gateway_state().apps.fresh(app_id) {
            return Ok(hit);
        }
        let mut tx = self.store().read().await?;
        let snap = tx.get_gateway_app(app_id).await?.map(AppSnapshot::new);
        self.gateway_state()
            .apps
            .put(app_id.to_owned(), snap.clone());
        Ok(snap)
    }

    /// A gateway by its URL name, with its adapter and the HTTP client toward Epic.
    pub async fn gateway_snapshot(
        &self,
        name: &str,
    ) -> Result<Option<Arc<GatewaySnapshot>>, AppError> {
        if let Some(hit) = self.gateway_state().gateways.fresh(name) {
            return Ok(hit);
        }
        let mut tx = self.store().read().await?;
        let snap = match tx.get_gateway(name).await?.filter(|g| g.name == name) {
            None => None,
            Some(gateway) => {
                let adapter = tx
                    .get_adapter(&gateway.adapter_id)
                    .await?
                    .ok_or_else(|| AppError::Internal("adapter missing".to_owned()))?;
                let settings: AdapterSettings =
                    serde_json::from_str(&adapter.settings).unwrap_or_default();
                let external_basic = match &adapter.external_secret_ref {
                    Some(r) => Some(
                        String::from_utf8(self.get_secret(&mut *tx, r).await?)
                            .map_err(|_| AppError::Internal("external secret".to_owned()))?,
                    ),
                    None => None,
                };
                let env = match &adapter.environment_id {
                    Some(e) => tx.get_environment(e).await?,
                    None => None,
                };
                let http = match &env {
                    Some(e) => self.epic_http(e)?,
                    None => self.gateway_http()?,
                };
                Some(Arc::new(GatewaySnapshot {
                    ca_bundle: env.as_ref().and_then(|e| e.ca_bundle.clone()),
                    public_base: format!(
                        "{}/gateways/{}",
                        self.config().public_url(),
                        gateway.name
                    ),
                    upstream_r4: settings.epic_r4_endpoint.trim_end_matches('/').to_owned(),
                    upstream_finder: memchr::memmem::Finder::new(
                        settings.epic_r4_endpoint.trim_end_matches('/'),
                    )
                    .into_owned(),
                    upstream: UpstreamTarget::new(settings.epic_r4_endpoint.trim_end_matches('/')),
                    public_r4: format!(
                        "{}/gateways/{}/fhir/R4",
                        self.config().public_url(),
                        gateway.name
                    ),
                    settings,
                    external_basic,
                    http,
                    adapter,
                    gateway,
                }))
            }
        };
        self.gateway_state()
            .gateways
            .put(name.to_owned(), snap.clone());
        Ok(snap)
    }

    fn gateway_http(&self) -> Result<reqwest::Client, AppError> {
        let mut g = lock(&self.gateway_state().http);
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_millis(self.config().outbound_timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| AppError::Internal(format!("HTTP client: {e}")))?;
        *g = Some(c.clone());
        Ok(c)
    }

    pub async fn activation_snapshot(
        &self,
        app_id: &str,
        gateway_id: &str,
    ) -> Result<Option<Arc<ActivationRow>>, AppError> {
        let key = format!("{app_id}\u{1f}{gateway_id}");
        if let Some(hit) = self.gateway_state().activations.fresh(&key) {
            return Ok(hit);
        }
        let mut tx = self.store().read().await?;
        let a = tx.find_activation(app_id, gateway_id).await?.map(Arc::new);
        self.gateway_state().activations.put(key, a.clone());
        Ok(a)
    }

    /// The activation's Epic backend token (cached until a tenth of its life is left).
    pub async fn activation_token(
        &self,
        a: &ActivationRow,
        http: &reqwest::Client,
    ) -> Result<Arc<str>, crate::epic_env::EpicTokenError> {
        let creds = self
            .activation_credentials(a)
            .await
            .map_err(crate::epic_env::EpicTokenError::App)?;
        self.epic_tokens()
            .token_via(http, &creds)
            .await
            .map_err(crate::epic_env::EpicTokenError::Epic)
    }

    async fn activation_credentials(
        &self,
        a: &ActivationRow,
    ) -> Result<switchboard_epic::auth::BackendCredentials, AppError> {
        let ks = a.key_set_id.as_deref().ok_or_else(|| {
            AppError::Conflict("the activation does not use backend auth".to_owned())
        })?;
        if let Some((at, c)) = lock(&self.gateway_state().credentials).get(&a.id)
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(c.clone());
        }
        let (key, row) = self.active_key_of_set(ks).await?;
        let creds = switchboard_epic::auth::BackendCredentials {
            client_id: a.epic_client_id.clone().unwrap_or_default(),
            token_url: a.token_url.clone().unwrap_or_default(),
            key,
            kid: row.kid,
            alg: crate::epic_env::parse_alg(&row.alg).map_err(AppError::Internal)?,
            jku: None,
        };
        lock(&self.gateway_state().credentials)
            .insert(a.id.clone(), (Instant::now(), creds.clone()));
        Ok(creds)
    }

    /// Takes a slot of the app's rate limit; `false` when the app is over it.
    #[must_use]
    pub fn gateway_rate_ok(&self, app: &AppSnapshot) -> bool {
        let Some(rate) = app.row.rate_limit_per_sec.filter(|r| *r > 0) else {
            return true;
        };
        let rate = rate as f64;
        let mut b = lock(&self.gateway_state().buckets);
        let now = Instant::now();
        let (tokens, last) = b.entry(app.row.id.clone()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records one request through a gateway. Written in batches by a background task (and on
    /// shutdown); each batch adds an audit entry with the batch's digest.
    pub fn record_gateway_request(&self, row: &GatewayRequestRow) {
        // Encoded here, on the thread that served the request: nothing of the row outlives it.
        let mut p = lock(&self.gateway_state().pending);
        p.current.push(row);
        if p.current.is_full() {
            let full = std::mem::take(&mut p.current);
            p.full.push_back(full);
        }
        self.start_gateway_request_writer();
    }

    /// Starts the task that writes access records every [`ACCESS_FLUSH_EVERY`], on the calling
    /// runtime (once).
    /// The server starts it on its main runtime, so the writer outlives the front door's loops.
    pub fn start_gateway_request_writer(&self) {
        use std::sync::atomic::Ordering;
        let state = self.gateway_state();
        if !state.writer_started.load(Ordering::Relaxed)
            && !state.writer_started.swap(true, Ordering::SeqCst)
        {
            let app = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ACCESS_FLUSH_EVERY).await;
                    if let Err(e) = app.flush_gateway_requests().await {
                        tracing::warn!(error = %e, "writing gateway request records failed; will retry");
                    }
                }
            });
        }
    }

    /// Writes the request records pending now: one stored batch (and one audit entry holding the
    /// SHA-256 of the batch's stored lines) per batch of at most
    /// [`switchboard_store::access_log::SEQ_PER_BATCH`] records. Records that arrive meanwhile
    /// wait for the next write (under steady traffic a write would otherwise never end, each
    /// round storing the few records of the round before, a commit each).
    pub async fn flush_gateway_requests(&self) -> Result<usize, AppError> {
        let mut batches: std::collections::VecDeque<AccessBatch> = {
            let mut p = lock(&self.gateway_state().pending);
            let current = std::mem::take(&mut p.current);
            let mut taken = std::mem::take(&mut p.full);
            if current.count > 0 {
                taken.push_back(current);
            }
            taken
        };
        let mut written = 0;
        while let Some(batch) = batches.pop_front() {
            let result: Result<(), AppError> = async {
                let mut tx = self.store().begin().await?;
                let id = tx.insert_gateway_request_batch(&batch).await?;
                let ev = AuditEvent::new("system", "gateway.requests.recorded", "gateway")
                    .with_details(json!({"batch": id, "count": batch.count, "first_at": batch.first_at, "last_at": batch.last_at,
                                         "sha256": hex::encode(crypto::sha256(batch.lines.as_bytes()))}));
                self.append_audit(&mut *tx, &ev).await?;
                tx.commit().await?;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                // Put them back, ahead of anything newer and in order, so nothing is lost while
                // the database is away.
                batches.push_front(batch);
                let mut p = lock(&self.gateway_state().pending);
                while let Some(b) = batches.pop_back() {
                    p.full.push_front(b);
                }
                return Err(e);
            }
            written += usize::try_from(batch.count).unwrap_or(0);
        }
        Ok(written)
    }

    /// A stored batch of access records, byte for byte what its audit entry's SHA-256 covers.
    pub async fn gateway_request_batch(&self, id: i64) -> Result<String, AppError> {
        let mut tx = self.store().read().await?;
        tx.gateway_request_batch_lines(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("access record batch {id}")))
    }

    pub async fn list_gateway_requests(
        &self,
        gateway_id: Option<&str>,
        app_id: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<GatewayRequestRow>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_gateway_requests(gateway_id, app_id, before, limit.clamp(1, 1000))
            .await?)
    }
}

/// How often the gateway's access records are written (also on shutdown, and before they are
/// listed). Each write is a commit with an fsync; under load a second's records cost one.
pub const ACCESS_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A resolved app: its row and parsed scopes.
#[derive(Debug)]
pub struct AppSnapshot {
    pub row: GatewayAppRow,
    pub scopes: Vec<Scope>,
}

impl AppSnapshot {
    fn new(row: GatewayAppRow) -> Arc<Self> {
        Arc::new(Self {
            scopes: parse_scopes(&row.scopes).unwrap_or_default(),
            row,
        })
    }
}

/// The caller of a proxied request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app: Arc<AppSnapshot>,
    /// The token's scopes (never wider than the app's at issue).
    pub scopes: Arc<Vec<Scope>>,
}

/// What a token says, once its signature checked out.
#[derive(Debug)]
struct VerifiedToken {
    app_id: String,
    jti: String,
    iat_ms: i64,
    exp_ms: i64,
    scopes: Arc<Vec<Scope>>,
}

/// A resolved gateway.
#[derive(Debug)]
pub struct GatewaySnapshot {
    pub gateway: GatewayRow,
    pub adapter: AdapterRow,
    pub settings: AdapterSettings,
    /// Epic's FHIR R4 base, without a trailing `/`.
    pub upstream_r4: String,
    /// Finds `upstream_r4` in answers (built once, not per answer).
    pub upstream_finder: memchr::memmem::Finder<'static>,
    /// The same, parsed (`None` when it is not a URL).
    pub upstream: Option<UpstreamTarget>,
    /// This gateway's FHIR R4 base (`…/gateways/{name}/fhir/R4`), what Epic's base becomes in
    /// answers.
    pub public_r4: String,
    /// This gateway's base URL (`…/gateways/{name}`).
    pub public_base: String,
    /// The Basic header value for private APIs.
    pub external_basic: Option<String>,
    pub http: reqwest::Client,
    /// Extra trusted CA certificates (PEM) of the linked Epic environment.
    pub ca_bundle: Option<String>,
}

/// Epic's FHIR base as the gateway's HTTP/1.1 client uses it, worked out once per snapshot.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub url: url::Url,
    /// `scheme://host:port`: the connection pool's key.
    pub origin: String,
    /// The `Host` header: the host, and the port when the URL names one.
    pub host: String,
    /// The base path without a trailing `/` (empty for the root).
    pub path: String,
}

impl UpstreamTarget {
    fn new(base: &str) -> Option<Self> {
        let url = url::Url::parse(base).ok()?;
        let host = url.host_str()?.to_owned();
        Some(Self {
            origin: format!(
                "{}://{host}:{}",
                url.scheme(),
                url.port_or_known_default().unwrap_or(0)
            ),
            host: match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            },
            path: url.path().trim_end_matches('/').to_owned(),
            url,
        })
    }
}

#[derive(Default)]
struct Revoked {
    since: i64,
    jtis: HashSet<String>,
    refreshed: Option<Instant>,
    /// The reload ahead of time, as in [`Remembered::claimed`].
    claimed: std::sync::atomic::AtomicU64,
}

/// Lookups (including "not found") trusted for [`SNAPSHOT_TTL`]. A busy key is looked up again
/// ahead of time by one request alone (single flight): once a snapshot is [`REFRESH_AHEAD`] old,
/// the first request to see it reloads it while the others go on with the snapshot they have. So
/// a burst of requests never reads the database all at once, and under steady traffic nobody
/// waits for a reload. Past [`SNAPSHOT_TTL`] a snapshot is never used.
struct Snapshots<T> {
    map: RwLock<FastMap<String, Remembered<T>>>,
}

/// A gateway-wide map read on every request: a fast hash (its keys are names and tokens Switchboard
/// issued, looked up, never chosen by a caller to collide).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A snapshot's age at which one request reloads it ahead of time.
const REFRESH_AHEAD: Duration = Duration::from_millis(750);

/// How long one request's reload is waited for before another request takes it over (the first
/// may have been cancelled: a client that hung up).
const RELOAD_CLAIM: Duration = Duration::from_millis(200);

/// What a lookup found, when, and which reload is under way.
struct Remembered<T> {
    at: Instant,
    value: Option<Arc<T>>,
    /// Milliseconds after `at` (plus one) when a request claimed the reload; 0 when none did.
    claimed: std::sync::atomic::AtomicU64,
}

/// Whether a snapshot can be used as it is, or needs loading (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Younger than [`REFRESH_AHEAD`], or older with its reload claimed by another request.
    Fresh,
    /// This caller claimed the reload ahead of time: load, then `put`.
    ReloadAhead,
    /// Missing, or older than [`SNAPSHOT_TTL`]: load before use.
    Stale,
}

/// Decides what a lookup at `age` does, claiming the reload ahead of time in `claimed` (see
/// [`Remembered::claimed`]) when it falls to this caller.
fn freshness(age: Duration, claimed: &std::sync::atomic::AtomicU64) -> Freshness {
    use std::sync::atomic::Ordering;
    if age >= SNAPSHOT_TTL {
        return Freshness::Stale;
    }
    if age < REFRESH_AHEAD {
        return Freshness::Fresh;
    }
    let now = u64::try_from(age.as_millis()).unwrap_or(u64::MAX) + 1;
    let seen = claimed.load(Ordering::Relaxed);
    let free = seen == 0 || Duration::from_millis(now.saturating_sub(seen)) >= RELOAD_CLAIM;
    if free
        && claimed
            .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        Freshness::ReloadAhead
    } else {
        Freshness::Fresh
    }
}

impl<T> Default for Snapshots<T> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
        }
    }
}

impl<T> Snapshots<T> {
    /// The remembered answer, unless the caller must load it (see [`Freshness`]).
    fn fresh(&self, key: &str) -> Option<Option<Arc<T>>> {
        let map = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = map.get(key)?;
        match freshness(r.at.elapsed(), &r.claimed) {
            Freshness::Fresh => Some(r.value.clone()),
            Freshness::ReloadAhead | Freshness::Stale => None,
        }
    }

    fn put(&self, key: String, value: Option<Arc<T>>) {
        let r = Remembered {
            at: Instant::now(),
            value,
            claimed: std::sync::atomic::AtomicU64::new(0),
        };
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, r);
    }

    fn clear(&self) {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// Access records waiting to be written: batches that reached the size limit, oldest first, and
/// the one filling now.
#[derive(Default)]
struct PendingAccess {
    full: std::collections::VecDeque<AccessBatch>,
    current: AccessBatch,
}

/// Per-process gateway state.
#[derive(Default)]
pub(crate) struct GatewayState {
    token_key: std::sync::OnceLock<Arc<Vec<u8>>>,
    apps: Snapshots<AppSnapshot>,
    gateways: Snapshots<GatewaySnapshot>,
    activations: Snapshots<ActivationRow>,
    credentials: Mutex<HashMap<String, (Instant, switchboard_epic::auth::BackendCredentials)>>,
    revoked: Mutex<Revoked>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    pending: Mutex<PendingAccess>,
    writer_started: std::sync::atomic::AtomicBool,
    http: Mutex<Option<reqwest::Client>>,
    verified: RwLock<FastMap<String, Arc<VerifiedToken>>>,
    jwks: Mutex<HashMap<String, (Instant, switchboard_epic::jose::JwkSet)>>,
}

/// What the token endpoint received.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    /// From `Authorization: Basic`.
    pub basic: Option<(String, String)>,
    /// From `client_id` + `client_secret` in the form (`client_secret_post`).
    pub form_client: Option<(String, String)>,
    /// `private_key_jwt`: the signed client assertion, and the form's `client_id` if any.
    pub assertion: Option<(Option<String>, String)>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub scope: String,
}

/// An RFC 6749 error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenError {
    pub error: String,
    pub error_description: String,
}

impl TokenError {
    fn new(error: &str, description: String) -> Self {
        Self {
            error: error.to_owned(),
            error_description: description,
        }
    }

    fn invalid_request(d: &str) -> Self {
        Self::new("invalid_request", d.to_owned())
    }

    fn invalid_client(d: &str) -> Self {
        Self::new("invalid_client", d.to_owned())
    }

    fn internal(e: &AppError) -> Self {
        tracing::error!(error = %e, "token endpoint failed");
        Self::new(
            "server_error",
            "the token service is unavailable".to_owned(),
        )
    }
}

/// One step of an activation's health report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthStep {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub ok: bool,
    pub steps: Vec<HealthStep>,
}

impl App {
    /// Token from Epic (backend auth), metadata, and one sample read — each with a hint.
    pub async fn activation_health(&self, id: &str) -> Result<HealthReport, AppError> {
        let a = {
            let mut tx = self.store().read().await?;
            tx.get_activation(id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("activation {id}")))?
        };
        let g = {
            let mut tx = self.store().read().await?;
            tx.get_gateway(&a.gateway_id)
                .await?
                .ok_or_else(|| AppError::NotFound("gateway".to_owned()))?
        };
        let snap = self
            .gateway_snapshot(&g.name)
            .await?
            .ok_or_else(|| AppError::NotFound("gateway".to_owned()))?;
        let mut steps = Vec::new();
        let mut token = None;
        if a.ehr_auth == "backend" {
            match self.activation_token(&a, &snap.http).await {
                Ok(t) => {
                    steps.push(HealthStep { name: "token".into(), ok: true, detail: "Epic issued a backend token".into(), hint: None });
                    token = Some(t);
                }
                Err(e) => steps.push(HealthStep {
                    name: "token".into(),
                    ok: false,
                    detail: e.to_string(),
                    hint: Some("Register the activation's JWK URL (or upload its PEM) for the Epic client ID, and check the token URL.".into()),
                }),
            }
        } else {
            steps.push(HealthStep {
                name: "token".into(),
                ok: true,
                detail: "backend auth is off: requests go to Epic without a token".into(),
                hint: None,
            });
        }
        let get = |path: String| {
            let mut r = snap
                .http
                .get(format!("{}/{path}", snap.upstream_r4))
                .header("accept", "application/fhir+json");
            if let Some(t) = &token {
                r = r.bearer_auth(t);
            }
            if let Some(c) = &a.epic_client_id {
                r = r.header("Epic-Client-ID", c);
            }
            r
        };
        for (name, path, hint) in [
            (
                "metadata",
                "metadata".to_owned(),
                "Check epicR4Endpoint: it must be Epic's FHIR R4 base.",
            ),
            (
                "sample read",
                "Patient?_count=1".to_owned(),
                "The Epic client needs the FHIR Patient.Search (R4) API, and backend auth a background user.",
            ),
        ] {
            match get(path).send().await {
                Ok(r) if r.status().is_success() => steps.push(HealthStep {
                    name: name.into(),
                    ok: true,
                    detail: format!("HTTP {}", r.status().as_u16()),
                    hint: None,
                }),
                Ok(r) => steps.push(HealthStep {
                    name: name.into(),
                    ok: false,
                    detail: format!("Epic answered HTTP {}", r.status().as_u16()),
                    hint: Some(hint.into()),
                }),
                Err(e) => steps.push(HealthStep {
                    name: name.into(),
                    ok: false,
                    detail: crate::outbound_error(&e).to_owned(),
                    hint: Some(hint.into()),
                }),
            }
        }
        Ok(HealthReport {
            ok: steps.iter().all(|s| s.ok),
            steps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_young_snapshot_is_used_as_it_is() {
        let claimed = AtomicU64::new(0);
        assert_eq!(freshness(ms(0), &claimed), Freshness::Fresh);
        assert_eq!(freshness(ms(749), &claimed), Freshness::Fresh);
        assert_eq!(claimed.into_inner(), 0, "nobody claimed a reload");
    }

    #[test]
    fn one_request_alone_reloads_ahead_of_time() {
        let claimed = AtomicU64::new(0);
        assert_eq!(freshness(ms(760), &claimed), Freshness::ReloadAhead);
        // Everyone else goes on with the snapshot while the reload is under way.
        assert_eq!(freshness(ms(761), &claimed), Freshness::Fresh);
        assert_eq!(freshness(ms(950), &claimed), Freshness::Fresh);
        // A reload that never came back (its request was cancelled) is taken over.
        assert_eq!(freshness(ms(960), &claimed), Freshness::ReloadAhead);
        assert_eq!(freshness(ms(961), &claimed), Freshness::Fresh);
    }

    #[test]
    fn an_old_snapshot_is_never_used() {
        let claimed = AtomicU64::new(0);
        assert_eq!(freshness(ms(800), &claimed), Freshness::ReloadAhead);
        assert_eq!(freshness(SNAPSHOT_TTL, &claimed), Freshness::Stale);
        assert_eq!(freshness(ms(5_000), &claimed), Freshness::Stale);
    }

    #[test]
    fn a_snapshot_map_hands_the_reload_to_one_caller() {
        let s: Snapshots<u32> = Snapshots::default();
        assert_eq!(s.fresh("a"), None, "missing: load it");
        s.put("a".to_owned(), Some(Arc::new(7)));
        assert_eq!(s.fresh("a"), Some(Some(Arc::new(7))));
        s.put("b".to_owned(), None);
        assert_eq!(s.fresh("b"), Some(None), "a remembered 'not found'");
        s.clear();
        assert_eq!(s.fresh("a"), None);
    }
}
