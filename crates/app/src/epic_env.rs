//! The Epic-environment registry shared by device logout, the FHIR gateway and telehealth:
//! connection settings, Basic credentials for non-OAuth APIs, and a key set per environment whose
//! public half Switchboard hosts as the JWK URL registered with Epic.

use crate::{App, AppError, Principal, RequestContext, jobs, now_ms};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use switchboard_domain::ValidationErrors;
use switchboard_domain::accounts::parse_label;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::epic::{
    EnvironmentKind, KeyState, KeyView, check_app, check_basic_username, check_client_id,
    check_instance, check_interconnect_url, plan_rotation,
};
use switchboard_epic::auth::BackendCredentials;
use switchboard_epic::jose::{Alg, Jwk, JwkSet, SigningKey};
use switchboard_store::{EnvironmentRow, KeySetRow, SigningKeyRow, Tx};

pub const ADVANCE_KIND: &str = "keyset.advance";
const DEFAULT_PUBLISH_DELAY_SECS: i64 = 600;
const DEFAULT_TIMEOUT_MS: i64 = 15_000;
/// How long resolved credentials (environment + active key) are reused by `epic_token`.
pub const CREDENTIALS_TTL: Duration = Duration::from_secs(5);

/// Fields of an environment as the API takes them; on update, absent fields keep their value.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnvironmentInput {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub interconnect_url: Option<String>,
    pub instance: Option<String>,
    /// Overrides the derived `{interconnect_url}/{instance}-oauth/oauth2/token`.
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub apps: Option<Vec<String>>,
    pub basic_username: Option<String>,
    pub basic_password: Option<String>,
    pub epic_client_id: Option<String>,
    pub timeout_ms: Option<i64>,
    pub rate_limit_per_sec: Option<i64>,
    /// Extra trusted CA certificates (PEM) for a private CA; empty string clears.
    pub ca_bundle: Option<String>,
    /// `RS384` (default) or `ES384`; only when creating.
    pub key_algorithm: Option<String>,
    pub publish_delay_secs: Option<i64>,
    pub rotate_every_days: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: i64,
    pub activate_after: i64,
    pub activated_at: Option<i64>,
    pub retiring_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeySetInfo {
    pub id: String,
    /// Register this URL with Epic.
    pub jwk_url: String,
    pub alg: String,
    pub publish_delay_secs: i64,
    pub rotate_every_days: Option<i64>,
    pub next_rotation_at: Option<i64>,
    pub keys: Vec<KeyInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub interconnect_url: String,
    pub instance: String,
    pub token_url: String,
    pub token_url_overridden: bool,
    pub fhir_base: String,
    pub oauth_base: String,
    pub username_base: String,
    pub client_id: String,
    pub apps: Vec<String>,
    pub basic_username: Option<String>,
    pub has_basic_password: bool,
    pub epic_client_id: Option<String>,
    pub timeout_ms: i64,
    pub rate_limit_per_sec: Option<i64>,
    /// How many extra CA certificates are trusted for this environment.
    pub ca_certificates: usize,
    pub key_set: KeySetInfo,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The URLs Switchboard derives from the server URL and instance (docs/epic-contract.md).
#[must_use]
pub fn oauth_base(interconnect_url: &str, instance: &str) -> String {
    format!(
        "{}/{instance}-oauth",
        interconnect_url.trim_end_matches('/')
    )
}

fn key_info(k: &SigningKeyRow) -> KeyInfo {
    KeyInfo {
        kid: k.kid.clone(),
        alg: k.alg.clone(),
        state: k.state.clone(),
        created_at: k.created_at,
        activate_after: k.activate_after,
        activated_at: k.activated_at,
        retiring_at: k.retiring_at,
        retired_at: k.retired_at,
        last_used_at: k.last_used_at,
    }
}

fn random_hex(n: usize) -> String {
    hex::encode(crate::crypto::random_bytes::<16>())[..n].to_owned()
}

pub(crate) fn parse_alg(s: &str) -> Result<Alg, String> {
    match s {
        "RS384" => Ok(Alg::RS384),
        "ES384" => Ok(Alg::ES384),
        other => Err(format!(
            "`{other}` is not offered: use RS384 (RSA 2048, the default) or ES384 (P-384)"
        )),
    }
}

/// Validates the merged fields of an environment into a row (secrets handled by the caller).
fn validate(
    existing: Option<&EnvironmentRow>,
    input: &EnvironmentInput,
) -> Result<(EnvironmentRow, Option<Alg>), ValidationErrors> {
    let mut e = ValidationErrors::new();
    let pick = |new: &Option<String>, old: Option<&String>| new.clone().or_else(|| old.cloned());
    let name = pick(&input.name, existing.map(|x| &x.name));
    let name = match name {
        Some(n) => e.check("name", parse_label(&n)),
        None => {
            e.add("name", "is required");
            None
        }
    };
    let kind = match pick(&input.kind, existing.map(|x| &x.kind)) {
        Some(k) => e.check("kind", EnvironmentKind::parse(&k)),
        None => {
            e.add("kind", "is required: production or non_production");
            None
        }
    };
    let url = match (
        pick(
            &input.interconnect_url,
            existing.map(|x| &x.interconnect_url),
        ),
        kind,
    ) {
        (Some(u), Some(k)) => e.check("interconnect_url", check_interconnect_url(&u, k)),
        (None, _) => {
            e.add(
                "interconnect_url",
                "is required (e.g. https://epic.hospital.org)",
            );
            None
        }
        _ => None,
    };
    let instance = match pick(&input.instance, existing.map(|x| &x.instance)) {
        Some(i) => e.check("instance", check_instance(&i).map(|()| i)),
        None => {
            e.add(
                "instance",
                "is required (e.g. interconnect-prd or APIProxyPRD)",
            );
            None
        }
    };
    let token_override = match &input.token_url {
        Some(t) if t.trim().is_empty() => None,
        Some(t) => kind.and_then(|k| e.check("token_url", check_interconnect_url(t, k))),
        None => existing.and_then(|x| x.token_url_override.clone()),
    };
    let client_id = match pick(&input.client_id, existing.map(|x| &x.client_id)) {
        Some(c) => e.check("client_id", check_client_id(&c).map(|()| c)),
        None => {
            e.add(
                "client_id",
                "is required: the backend client id Epic issued",
            );
            None
        }
    };
    let apps = input
        .apps
        .clone()
        .or_else(|| existing.and_then(|x| serde_json::from_str::<Vec<String>>(&x.apps).ok()))
        .unwrap_or_default();
    for app in &apps {
        if let Err(m) = check_app(app) {
            e.add("apps", m);
        }
    }
    let basic_username = match &input.basic_username {
        Some(u) if u.is_empty() => None,
        Some(u) => e.check(
            "basic_username",
            check_basic_username(u).map(|()| u.clone()),
        ),
        None => existing.and_then(|x| x.basic_username.clone()),
    };
    let epic_client_id = match &input.epic_client_id {
        Some(c) if c.is_empty() => None,
        Some(c) => e.check("epic_client_id", check_client_id(c).map(|()| c.clone())),
        None => existing.and_then(|x| x.epic_client_id.clone()),
    };
    let timeout_ms = input
        .timeout_ms
        .or(existing.map(|x| x.timeout_ms))
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(100..=120_000).contains(&timeout_ms) {
        e.add("timeout_ms", "must be between 100 and 120000");
    }
    let rate = input
        .rate_limit_per_sec
        .or(existing.and_then(|x| x.rate_limit_per_sec));
    if rate.is_some_and(|r| !(1..=10_000).contains(&r)) {
        e.add("rate_limit_per_sec", "must be between 1 and 10000");
    }
    if let Some(d) = input.publish_delay_secs
        && !(0..=7 * 86_400).contains(&d)
    {
        e.add(
            "publish_delay_secs",
            "must be between 0 and 604800 (7 days)",
        );
    }
    if let Some(d) = input.rotate_every_days
        && !(1..=3650).contains(&d)
    {
        e.add("rotate_every_days", "must be between 1 and 3650");
    }
    let ca_bundle = match &input.ca_bundle {
        Some(p) if p.trim().is_empty() => None,
        Some(p) if p.len() > 256 * 1024 => {
            e.add("ca_bundle", "is larger than 256 KiB");
            None
        }
        Some(p) => match reqwest::Certificate::from_pem_bundle(p.as_bytes()) {
            Ok(certs) if !certs.is_empty() && p.contains("-----BEGIN CERTIFICATE-----") => {
                Some(p.clone())
            }
            _ => {
                e.add(
                    "ca_bundle",
                    "must be one or more PEM certificates (-----BEGIN CERTIFICATE-----)",
                );
                None
            }
        },
        None => existing.and_then(|x| x.ca_bundle.clone()),
    };
    let alg = match (&input.key_algorithm, existing) {
        (Some(a), None) => e.check("key_algorithm", parse_alg(a)),
        (Some(_), Some(_)) => {
            e.add(
                "key_algorithm",
                "is chosen when the environment is created; rotate keys to change them",
            );
            None
        }
        (None, None) => Some(Alg::RS384),
        (None, Some(_)) => None,
    };
    e.clone().into_result()?;
    let now = now_ms();
    let row = EnvironmentRow {
        id: existing.map_or_else(
            || switchboard_domain::ids::SecretId::new().to_string(),
            |x| x.id.clone(),
        ),
        name: name.unwrap_or_default(),
        kind: kind
            .map(EnvironmentKind::as_str)
            .unwrap_or_default()
            .to_owned(),
        interconnect_url: url.unwrap_or_default(),
        instance: instance.unwrap_or_default(),
        token_url_override: token_override,
        client_id: client_id.unwrap_or_default(),
        apps: serde_json::to_string(&apps).unwrap_or_else(|_| "[]".to_owned()),
        basic_username,
        basic_password_ref: existing.and_then(|x| x.basic_password_ref.clone()),
        epic_client_id,
        timeout_ms,
        rate_limit_per_sec: rate,
        ca_bundle,
        key_set_id: existing.map(|x| x.key_set_id.clone()).unwrap_or_default(),
        created_at: existing.map_or(now, |x| x.created_at),
        updated_at: now,
    };
    Ok((row, alg))
}

impl App {
    fn jwk_url(&self, key_set_id: &str) -> String {
        format!("{}/jwks/{key_set_id}.json", self.config().public_url())
    }

    async fn environment_view(
        &self,
        tx: &mut dyn Tx,
        row: EnvironmentRow,
    ) -> Result<Environment, AppError> {
        let ks = tx
            .get_key_set(&row.key_set_id)
            .await?
            .ok_or_else(|| AppError::Internal(format!("key set {} missing", row.key_set_id)))?;
        let keys = tx.signing_keys(&ks.id).await?;
        let oauth = oauth_base(&row.interconnect_url, &row.instance);
        Ok(Environment {
            token_url: row
                .token_url_override
                .clone()
                .unwrap_or_else(|| format!("{oauth}/oauth2/token")),
            token_url_overridden: row.token_url_override.is_some(),
            fhir_base: format!("{oauth}/api/FHIR/R4"),
            username_base: format!("{}/{}-username", row.interconnect_url, row.instance),
            oauth_base: oauth,
            apps: serde_json::from_str(&row.apps).unwrap_or_default(),
            has_basic_password: row.basic_password_ref.is_some(),
            key_set: KeySetInfo {
                jwk_url: self.jwk_url(&ks.id),
                id: ks.id,
                alg: ks.alg,
                publish_delay_secs: ks.publish_delay_secs,
                rotate_every_days: ks.rotate_every_days,
                next_rotation_at: ks.next_rotation_at,
                keys: keys.iter().map(key_info).collect(),
            },
            id: row.id,
            name: row.name,
            kind: row.kind,
            interconnect_url: row.interconnect_url,
            instance: row.instance,
            client_id: row.client_id,
            basic_username: row.basic_username,
            epic_client_id: row.epic_client_id,
            timeout_ms: row.timeout_ms,
            rate_limit_per_sec: row.rate_limit_per_sec,
            ca_certificates: row
                .ca_bundle
                .as_deref()
                .map_or(0, |p| p.matches("-----BEGIN CERTIFICATE-----").count()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    /// Generates a key (off the async threads: RSA generation takes tens of milliseconds) and
    /// stores its private half sealed.
    async fn new_signing_key(
        &self,
        tx: &mut dyn Tx,
        key_set_id: &str,
        alg: Alg,
        state: KeyState,
        activate_after: i64,
    ) -> Result<SigningKeyRow, AppError> {
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
            .await
            .map_err(|e| AppError::Internal(format!("key generation thread: {e}")))?
            .map_err(|e| AppError::Internal(format!("key generation: {e}")))?;
        let now = now_ms();
        let kid = format!("{}-{}", chrono_date(now), random_hex(8));
        let pkcs8 = key
            .to_pkcs8()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let secret = self
            .put_secret(
                tx,
                &format!("key_set:{key_set_id}"),
                &format!("signing_key:{kid}"),
                &pkcs8,
            )
            .await?;
        let jwk = key.public_jwk(&kid, alg);
        let row = SigningKeyRow {
            kid,
            key_set_id: key_set_id.to_owned(),
            alg: alg.as_str().to_owned(),
            public_jwk: serde_json::to_string(&jwk)
                .map_err(|e| AppError::Internal(e.to_string()))?,
            private_secret: secret,
            state: state.as_str().to_owned(),
            created_at: now,
            activate_after,
            activated_at: (state == KeyState::Active).then_some(now),
            retiring_at: None,
            retired_at: None,
            last_used_at: None,
        };
        tx.insert_signing_key(&row).await?;
        Ok(row)
    }

    pub async fn create_environment(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: EnvironmentInput,
    ) -> Result<Environment, AppError> {
        let (mut row, alg) = validate(None, &input)?;
        let alg = alg.unwrap_or(Alg::RS384);
        let mut tx = self.store().begin().await?;
        if tx
            .list_environments()
            .await?
            .iter()
            .any(|e| e.name == row.name)
        {
            return Err(ValidationErrors::single(
                "name",
                format!("an environment named `{}` already exists", row.name),
            )
            .into());
        }
        let now = now_ms();
        let ks = KeySetRow {
            id: format!("ks_{}", random_hex(20)),
            owner: format!("epic_environment:{}", row.id),
            alg: alg.as_str().to_owned(),
            publish_delay_secs: input
                .publish_delay_secs
                .unwrap_or(DEFAULT_PUBLISH_DELAY_SECS),
            rotate_every_days: input.rotate_every_days,
            next_rotation_at: input.rotate_every_days.map(|d| now + d * 86_400_000),
            created_at: now,
        };
        tx.insert_key_set(&ks).await?;
        let key = self
            .new_signing_key(&mut *tx, &ks.id, alg, KeyState::Active, now)
            .await?;
        row.key_set_id.clone_from(&ks.id);
        if let Some(pw) = input.basic_password.as_deref().filter(|p| !p.is_empty()) {
            row.basic_password_ref = Some(
                self.put_secret(
                    &mut *tx,
                    &format!("epic_environment:{}", row.id),
                    "basic_password",
                    pw.as_bytes(),
                )
                .await?,
            );
        }
        tx.insert_environment(&row).await?;
        if let Some(at) = ks.next_rotation_at {
            self.schedule_advance(&mut *tx, &ks.id, at).await?;
        }
        let ev = AuditEvent::new("", "epic_environment.created", format!("epic_environment:{}", row.id))
            .with_details(serde_json::json!({"name": row.name, "kind": row.kind, "instance": row.instance, "client_id": row.client_id, "key_set": ks.id, "kid": key.kid, "alg": key.alg}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        let view = self.environment_view(&mut *tx, row).await?;
        tx.commit().await?;
        Ok(view)
    }

    pub async fn update_environment(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        input: EnvironmentInput,
    ) -> Result<Environment, AppError> {
        let mut tx = self.store().begin().await?;
        let existing = tx
            .get_environment(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("Epic environment {id}")))?;
        let (mut row, _) = validate(Some(&existing), &input)?;
        if tx
            .list_environments()
            .await?
            .iter()
            .any(|e| e.name == row.name && e.id != row.id)
        {
            return Err(ValidationErrors::single(
                "name",
                format!("an environment named `{}` already exists", row.name),
            )
            .into());
        }
        match input.basic_password.as_deref() {
            Some("") => row.basic_password_ref = None,
            Some(pw) => {
                row.basic_password_ref = Some(
                    self.put_secret(
                        &mut *tx,
                        &format!("epic_environment:{id}"),
                        "basic_password",
                        pw.as_bytes(),
                    )
                    .await?,
                )
            }
            None => {}
        }
        if row.basic_password_ref != existing.basic_password_ref
            && let Some(old) = &existing.basic_password_ref
        {
            tx.delete_secret(old).await?;
        }
        tx.update_environment(&row).await?;
        if input.publish_delay_secs.is_some() || input.rotate_every_days.is_some() {
            let mut ks = tx
                .get_key_set(&row.key_set_id)
                .await?
                .ok_or_else(|| AppError::Internal("key set missing".to_owned()))?;
            if let Some(d) = input.publish_delay_secs {
                ks.publish_delay_secs = d;
            }
            if let Some(days) = input.rotate_every_days {
                ks.rotate_every_days = Some(days);
                ks.next_rotation_at = Some(now_ms() + days * 86_400_000);
                if let Some(at) = ks.next_rotation_at {
                    self.schedule_advance(&mut *tx, &ks.id, at).await?;
                }
            }
            tx.update_key_set(&ks).await?;
        }
        let changed: Vec<&str> = [
            ("name", input.name.is_some()),
            ("kind", input.kind.is_some()),
            ("interconnect_url", input.interconnect_url.is_some()),
            ("instance", input.instance.is_some()),
            ("token_url", input.token_url.is_some()),
            ("client_id", input.client_id.is_some()),
            ("apps", input.apps.is_some()),
            ("basic_username", input.basic_username.is_some()),
            ("basic_password", input.basic_password.is_some()),
            ("epic_client_id", input.epic_client_id.is_some()),
            ("timeout_ms", input.timeout_ms.is_some()),
            ("rate_limit_per_sec", input.rate_limit_per_sec.is_some()),
            ("ca_bundle", input.ca_bundle.is_some()),
            ("publish_delay_secs", input.publish_delay_secs.is_some()),
            ("rotate_every_days", input.rotate_every_days.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.then_some(k))
        .collect();
        let ev = AuditEvent::new(
            "",
            "epic_environment.updated",
            format!("epic_environment:{id}"),
        )
        .with_details(serde_json::json!({"changed": changed}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        let view = self.environment_view(&mut *tx, row).await?;
        tx.commit().await?;
        self.forget_credentials();
        Ok(view)
    }

    pub async fn list_environments(&self) -> Result<Vec<Environment>, AppError> {
        let mut tx = self.store().read().await?;
        let rows = tx.list_environments().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.environment_view(&mut *tx, r).await?);
        }
        Ok(out)
    }

    pub async fn get_environment(&self, id: &str) -> Result<Environment, AppError> {
        let mut tx = self.store().read().await?;
        let row = tx
            .get_environment(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("Epic environment {id}")))?;
        self.environment_view(&mut *tx, row).await
    }

    /// Removes an environment; its keys leave the published JWK set at once.
    pub async fn delete_environment(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_environment(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("Epic environment {id}")))?;
        let now = now_ms();
        for mut k in tx.signing_keys(&row.key_set_id).await? {
            if k.state != KeyState::Retired.as_str() {
                k.state = KeyState::Retired.as_str().to_owned();
                k.retired_at = Some(now);
                tx.update_signing_key(&k).await?;
            }
        }
        if let Some(s) = &row.basic_password_ref {
            tx.delete_secret(s).await?;
        }
        tx.delete_environment(id).await?;
        let ev = AuditEvent::new(
            "",
            "epic_environment.deleted",
            format!("epic_environment:{id}"),
        )
        .with_details(serde_json::json!({"name": row.name, "key_set": row.key_set_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.forget_credentials();
        Ok(())
    }

    /// The public JWK set at `/jwks/{key_set_id}.json`: published, active and retiring keys.
    pub async fn jwk_set(&self, key_set_id: &str) -> Result<JwkSet, AppError> {
        let mut tx = self.store().read().await?;
        if tx.get_key_set(key_set_id).await?.is_none() {
            return Err(AppError::NotFound(format!("key set {key_set_id}")));
        }
        let mut keys = Vec::new();
        for k in tx.signing_keys(key_set_id).await? {
            if KeyState::parse(&k.state).is_ok_and(KeyState::is_published) {
                keys.push(
                    serde_json::from_str::<Jwk>(&k.public_jwk)
                        .map_err(|e| AppError::Internal(format!("stored JWK {}: {e}", k.kid)))?,
                );
            }
        }
        Ok(JwkSet { keys })
    }

    /// The active key's public half as PEM, for upload where a JWK URL cannot be used.
    pub async fn environment_public_key_pem(&self, id: &str) -> Result<String, AppError> {
        let (key, _, _) = self.active_signing_key(id).await?;
        key.public_key_pem()
            .map_err(|e| AppError::Internal(e.to_string()))
    }

    /// A new key set owned by `owner` (e.g. `activation:<id>`) with one active key; its JWK set
    /// is served at `/jwks/{id}.json` like an environment's.
    pub(crate) async fn create_key_set(
        &self,
        tx: &mut dyn Tx,
        owner: &str,
        alg: Alg,
    ) -> Result<String, AppError> {
        let now = now_ms();
        let ks = KeySetRow {
            id: format!("ks_{}", random_hex(20)),
            owner: owner.to_owned(),
            alg: alg.as_str().to_owned(),
            publish_delay_secs: DEFAULT_PUBLISH_DELAY_SECS,
            rotate_every_days: None,
            next_rotation_at: None,
            created_at: now,
        };
        tx.insert_key_set(&ks).await?;
        self.new_signing_key(tx, &ks.id, alg, KeyState::Active, now)
            .await?;
        Ok(ks.id)
    }

    /// The active key of a key set, parsed once and kept in memory.
    pub(crate) async fn active_key_of_set(
        &self,
        key_set_id: &str,
    ) -> Result<(Arc<SigningKey>, SigningKeyRow), AppError> {
        let mut tx = self.store().read().await?;
        let row = tx
            .signing_keys(key_set_id)
            .await?
            .into_iter()
            .find(|k| k.state == KeyState::Active.as_str())
            .ok_or_else(|| {
                AppError::Conflict("the key set has no active signing key".to_owned())
            })?;
        if let Some(k) = self.cached_signing_key(&row.kid) {
            return Ok((k, row));
        }
        let pkcs8 = self.get_secret(&mut *tx, &row.private_secret).await?;
        let alg = parse_alg(&row.alg).map_err(AppError::Internal)?;
        let key = Arc::new(
            SigningKey::from_pkcs8(alg, &pkcs8).map_err(|e| AppError::Internal(e.to_string()))?,
        );
        self.cache_signing_key(&row.kid, Arc::clone(&key));
        Ok((key, row))
    }

    /// Starts a rotation of any key set (audited with `details`).
    pub(crate) async fn rotate_key_set(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        key_set_id: &str,
        details: serde_json::Value,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let ks = tx
            .get_key_set(key_set_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("key set {key_set_id}")))?;
        let key = self.start_rotation(&mut *tx, &ks).await?;
        let mut d = details;
        d["kid"] = serde_json::Value::String(key.kid.clone());
        d["activate_after"] = serde_json::json!(key.activate_after);
        let ev = AuditEvent::new("", "key_set.rotation_started", format!("key_set:{}", ks.id))
            .with_details(d);
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts a rotation now: a new key is published at once and starts signing after the key
    /// set's publish delay; the old key leaves the set 5 minutes after its last use.
    pub async fn rotate_environment_keys(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Environment, AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_environment(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("Epic environment {id}")))?;
        let ks = tx
            .get_key_set(&row.key_set_id)
            .await?
            .ok_or_else(|| AppError::Internal("key set missing".to_owned()))?;
        let key = self.start_rotation(&mut *tx, &ks).await?;
        let ev = AuditEvent::new("", "key_set.rotation_started", format!("key_set:{}", ks.id))
            .with_details(serde_json::json!({"environment": id, "kid": key.kid, "activate_after": key.activate_after}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        let view = self.environment_view(&mut *tx, row).await?;
        tx.commit().await?;
        Ok(view)
    }

    async fn start_rotation(
        &self,
        tx: &mut dyn Tx,
        ks: &KeySetRow,
    ) -> Result<SigningKeyRow, AppError> {
        if tx
            .signing_keys(&ks.id)
            .await?
            .iter()
            .any(|k| k.state == KeyState::Published.as_str())
        {
            return Err(AppError::Conflict("a rotation is already under way: a new key is published and waiting to start signing".to_owned()));
        }
        let alg = parse_alg(&ks.alg).map_err(AppError::Internal)?;
        let at = now_ms() + ks.publish_delay_secs * 1000;
        let key = self
            .new_signing_key(tx, &ks.id, alg, KeyState::Published, at)
            .await?;
        self.schedule_advance(tx, &ks.id, at).await?;
        Ok(key)
    }

    async fn schedule_advance(
        &self,
        tx: &mut dyn Tx,
        key_set_id: &str,
        at: i64,
    ) -> Result<(), AppError> {
        let delay = Duration::from_millis(u64::try_from((at - now_ms()).max(0)).unwrap_or(0));
        jobs::enqueue(
            tx,
            ADVANCE_KIND,
            serde_json::json!({"key_set_id": key_set_id, "at": at}),
            Some(format!("{ADVANCE_KIND}:{key_set_id}:{at}")),
            delay,
            20,
        )
        .await?;
        Ok(())
    }

    /// Applies the rotation steps that are due for a key set (and a scheduled rotation), audits
    /// each one, and schedules the next look.
    pub async fn advance_key_set(&self, key_set_id: &str) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let Some(mut ks) = tx.get_key_set(key_set_id).await? else {
            return Ok(());
        };
        let now = now_ms();
        if ks.next_rotation_at.is_some_and(|t| t <= now) {
            match self.start_rotation(&mut *tx, &ks).await {
                Ok(key) => {
                    let ev = AuditEvent::new(
                        "system",
                        "key_set.rotation_started",
                        format!("key_set:{}", ks.id),
                    )
                    .with_details(serde_json::json!({"kid": key.kid, "scheduled": true}));
                    self.append_audit(&mut *tx, &ev).await?;
                }
                Err(AppError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            ks.next_rotation_at = ks.rotate_every_days.map(|d| now + d * 86_400_000);
            tx.update_key_set(&ks).await?;
        }
        let mut rows = tx.signing_keys(&ks.id).await?;
        let views: Vec<KeyView> = rows
            .iter()
            .filter_map(|k| {
                Some(KeyView {
                    kid: k.kid.clone(),
                    state: KeyState::parse(&k.state).ok()?,
                    created_at: k.created_at,
                    activate_after: k.activate_after,
                    retiring_at: k.retiring_at,
                    last_used_at: k.last_used_at,
                })
            })
            .collect();
        let (steps, next) = plan_rotation(&views, now);
        for step in steps {
            let Some(k) = rows.iter_mut().find(|k| k.kid == step.kid) else {
                continue;
            };
            k.state = step.to.as_str().to_owned();
            match step.to {
                KeyState::Active => k.activated_at = Some(now),
                KeyState::Retiring => k.retiring_at = Some(now),
                KeyState::Retired => k.retired_at = Some(now),
                KeyState::Published => {}
            }
            tx.update_signing_key(k).await?;
            let action = match step.to {
                KeyState::Active => "key_set.key_activated",
                KeyState::Retiring => "key_set.key_retiring",
                KeyState::Retired => "key_set.key_removed",
                KeyState::Published => "key_set.key_published",
            };
            let ev = AuditEvent::new("system", action, format!("key_set:{}", ks.id))
                .with_details(serde_json::json!({"kid": step.kid}));
            self.append_audit(&mut *tx, &ev).await?;
        }
        let wake = [next, ks.next_rotation_at].into_iter().flatten().min();
        if let Some(at) = wake {
            self.schedule_advance(&mut *tx, &ks.id, at).await?;
        }
        tx.commit().await?;
        self.forget_credentials();
        Ok(())
    }

    /// The environment's signing key that is active now, parsed once and kept in memory.
    async fn active_signing_key(
        &self,
        env_id: &str,
    ) -> Result<(Arc<SigningKey>, SigningKeyRow, EnvironmentRow), AppError> {
        let mut tx = self.store().read().await?;
        let env = tx
            .get_environment(env_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("Epic environment {env_id}")))?;
        let row = tx
            .signing_keys(&env.key_set_id)
            .await?
            .into_iter()
            .find(|k| k.state == KeyState::Active.as_str())
            .ok_or_else(|| {
                AppError::Conflict("the environment has no active signing key".to_owned())
            })?;
        if let Some(k) = self.cached_signing_key(&row.kid) {
            return Ok((k, row, env));
        }
        let pkcs8 = self.get_secret(&mut *tx, &row.private_secret).await?;
        let alg = parse_alg(&row.alg).map_err(AppError::Internal)?;
        let key = Arc::new(
            SigningKey::from_pkcs8(alg, &pkcs8).map_err(|e| AppError::Internal(e.to_string()))?,
        );
        self.cache_signing_key(&row.kid, Arc::clone(&key));
        Ok((key, row, env))
    }

    /// What to authenticate to an environment with (its active key, client id and token URL).
    pub async fn backend_credentials(&self, env_id: &str) -> Result<BackendCredentials, AppError> {
        Ok(self.resolve_credentials(env_id).await?.0)
    }

    /// Loads the environment and its active key once: the credentials and the row.
    async fn resolve_credentials(
        &self,
        env_id: &str,
    ) -> Result<(BackendCredentials, EnvironmentRow), AppError> {
        let (key, row, env) = self.active_signing_key(env_id).await?;
        let alg = parse_alg(&row.alg).map_err(AppError::Internal)?;
        let oauth = oauth_base(&env.interconnect_url, &env.instance);
        let now = now_ms();
        if row.last_used_at.is_none_or(|t| now - t > 60_000) {
            let mut tx = self.store().begin().await?;
            tx.touch_signing_key(&row.kid, now).await?;
            tx.commit().await?;
        }
        let creds = BackendCredentials {
            client_id: env.client_id.clone(),
            token_url: env
                .token_url_override
                .clone()
                .unwrap_or_else(|| format!("{oauth}/oauth2/token")),
            key,
            kid: row.kid,
            alg,
            jku: None,
        };
        Ok((creds, env))
    }

    /// An Epic access token for the environment, from the cache when it is still good (fetched
    /// through the environment's own HTTP client: its timeout and CA bundle). The resolved
    /// credentials are kept for a few seconds so a cached token costs no database read; this
    /// process forgets them at once when it changes the environment or activates a key, other
    /// replicas within [`CREDENTIALS_TTL`].
    pub async fn epic_token(&self, env_id: &str) -> Result<Arc<str>, EpicTokenError> {
        let (creds, http) = match self.cached_credentials(env_id) {
            Some(hit) => hit,
            None => {
                let (creds, env) = self
                    .resolve_credentials(env_id)
                    .await
                    .map_err(EpicTokenError::App)?;
                let http = self.epic_http(&env).map_err(EpicTokenError::App)?;
                self.cache_credentials(env_id, creds.clone(), http.clone());
                (creds, http)
            }
        };
        self.epic_tokens()
            .token_via(&http, &creds)
            .await
            .map_err(EpicTokenError::Epic)
    }

    /// The HTTP client for calls to one environment: its timeout, no redirects, the system roots
    /// plus the environment's CA bundle, and TLS details kept for the connection doctor.
    /// Built once per version of the environment.
    pub fn epic_http(&self, env: &EnvironmentRow) -> Result<reqwest::Client, AppError> {
        let key = format!("{}@{}", env.id, env.updated_at);
        if let Some(c) = self.cached_epic_http(&key) {
            return Ok(c);
        }
        let timeout = u64::try_from(env.timeout_ms).unwrap_or(15_000);
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_millis(timeout))
            .connect_timeout(Duration::from_millis(timeout.min(10_000)))
            .redirect(reqwest::redirect::Policy::none())
            .tls_info(true);
        if let Some(pem) = &env.ca_bundle {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| AppError::Internal(format!("stored CA bundle: {e}")))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let client = b
            .build()
            .map_err(|e| AppError::Internal(format!("HTTP client: {e}")))?;
        self.cache_epic_http(key, client.clone());
        Ok(client)
    }

    /// An environment's row, remembered for [`CREDENTIALS_TTL`] (hot paths such as logout jobs
    /// call Epic thousands of times a minute).
    async fn environment_row_cached(&self, env_id: &str) -> Result<EnvironmentRow, AppError> {
        if let Some(row) = self.cached_environment_row(env_id) {
            return Ok(row);
        }
        let row = self.environment_row(env_id).await?;
        self.cache_environment_row(row.clone());
        Ok(row)
    }

    /// One DisassociateMobileDevice call (epic-facts §3, assumed contract) for an Install ID,
    /// with the environment's backend token, timeout and rate limit. Says how it ended without
    /// interpreting it; nothing here is logged but the outcome class.
    pub async fn disassociate_device(
        &self,
        env_id: &str,
        install_id: &str,
    ) -> Result<switchboard_domain::devices::LogoutAttempt, AppError> {
        use switchboard_domain::devices::LogoutAttempt;
        let token = match self.epic_token(env_id).await {
            Ok(t) => t,
            Err(EpicTokenError::Epic(e)) => {
                return Ok(LogoutAttempt::NoToken {
                    class: e.class().to_owned(),
                    detail: e.to_string(),
                });
            }
            Err(EpicTokenError::App(e)) => return Err(e),
        };
        let env = self.environment_row_cached(env_id).await?;
        let url = format!(
            "{}/api/epic/2023/Security/MobileDevice/DisassociateMobileDevice",
            oauth_base(&env.interconnect_url, &env.instance)
        );
        self.epic_permit(&env).await?;
        let resp = self
            .epic_http(&env)?
            .post(url)
            .bearer_auth(&*token)
            .json(&serde_json::json!({"InstallID": install_id}))
            .send()
            .await;
        Ok(match resp {
            Ok(r) if r.status().is_success() => LogoutAttempt::Accepted,
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                if body.contains("Install ID not found") {
                    LogoutAttempt::InstallIdNotFound
                } else {
                    LogoutAttempt::Status(status)
                }
            }
            Err(e) if e.is_connect() => {
                LogoutAttempt::NotSent(crate::outbound_error(&e).to_owned())
            }
            Err(_) => LogoutAttempt::TimedOut,
        })
    }

    /// Waits for a slot under the environment's rate limit toward Epic (per replica); gives up
    /// after 30 seconds.
    pub async fn epic_permit(&self, env: &EnvironmentRow) -> Result<(), AppError> {
        let Some(rate) = env.rate_limit_per_sec.filter(|r| *r > 0) else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.take_epic_slot(&env.id, rate as f64) {
                None => return Ok(()),
                Some(w) if std::time::Instant::now() + w > deadline => {
                    return Err(AppError::Unavailable(format!(
                        "the rate limit toward Epic environment `{}` ({rate}/s) is saturated",
                        env.name
                    )));
                }
                Some(w) => tokio::time::sleep(w).await,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EpicTokenError {
    #[error(transparent)]
    App(AppError),
    #[error(transparent)]
    Epic(switchboard_epic::auth::EpicAuthError),
}

fn chrono_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y%m%d").to_string())
}

/// `keyset.advance`: applies due rotation steps (idempotent: a step already taken is not due).
pub struct AdvanceKeySet;

#[async_trait::async_trait]
impl jobs::JobHandler for AdvanceKeySet {
    fn kind(&self) -> &'static str {
        ADVANCE_KIND
    }

    async fn run(
        &self,
        app: &App,
        job: &switchboard_store::JobRow,
    ) -> switchboard_domain::jobs::JobOutcome {
        use switchboard_domain::jobs::JobOutcome;
        let Some(id) = job.payload["key_set_id"].as_str() else {
            return JobOutcome::Permanent {
                error: "payload lacks key_set_id".to_owned(),
            };
        };
        match app.advance_key_set(id).await {
            Ok(()) => JobOutcome::Done,
            Err(e) => JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_for_key_ids_are_civil_dates() {
        assert_eq!(chrono_date(0), "19700101");
        assert_eq!(chrono_date(1_795_523_939_000), "20261124");
        assert_eq!(chrono_date(951_782_400_000), "20000229");
    }
}
