//! Shared devices, configuration side: locations (a dock and its kiosk), device groups (lending
//! period, check-in workflows per platform, required apps), enrolment tokens, the directory of
//! clinicians who borrow devices (badges stored as keyed hashes) and the optional
//! identity-lookup hook. The lending cycle itself is in [`crate::lending`].

use crate::{App, AppError, Principal, RequestContext, crypto, now_ms};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use switchboard_domain::ValidationErrors;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::devices::{self as dd, Platform, RequiredApp, StepSpec};
use switchboard_store::{
    DeviceFilter, DeviceGroupRow, DeviceRow, DeviceUserRow, EnrolmentTokenRow, LocationRow, Tx,
};

const BADGE_KEY_ID: &str = "sec_badge_key";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A person the identity-lookup hook resolved a badge to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LookedUpUser {
    pub username: String,
    pub display_name: String,
}

/// Resolves a badge number to a person, for sites whose badges live in another system.
#[async_trait]
pub trait IdentityLookup: Send + Sync + 'static {
    /// `Ok(None)` when the badge is unknown there; `Err` (a sentence) when the lookup failed.
    async fn lookup(&self, badge: &str) -> Result<Option<LookedUpUser>, String>;
}

/// The HTTP hook: `POST {url}` with `{"badge": "..."}`; 200 with `{"username", "display_name"}`,
/// 404 for an unknown badge.
pub struct HttpIdentityLookup {
    url: String,
    http: reqwest::Client,
}

impl HttpIdentityLookup {
    #[must_use]
    pub fn new(url: String, http: reqwest::Client) -> Self {
        Self { url, http }
    }
}

#[async_trait]
impl IdentityLookup for HttpIdentityLookup {
    async fn lookup(&self, badge: &str) -> Result<Option<LookedUpUser>, String> {
        let r = self
            .http
            .post(&self.url)
            .json(&json!({"badge": badge}))
            .send()
            .await
            .map_err(|e| format!("identity lookup {}", crate::outbound_error(&e)))?;
        match r.status().as_u16() {
            200 => r.json::<LookedUpUser>().await.map(Some).map_err(|_| {
                "identity lookup answered without username and display_name".to_owned()
            }),
            404 => Ok(None),
            s => Err(format!("identity lookup answered HTTP {s}")),
        }
    }
}

/// Process-wide state of the device features: wake-ups for long-polling agents, the lookup
/// hook and what it answered recently.
#[derive(Default)]
pub struct DeviceState {
    waiters: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    lookup: RwLock<Option<Arc<dyn IdentityLookup>>>,
    lookup_cache: Mutex<HashMap<String, (Instant, Option<LookedUpUser>)>>,
    badge_key: tokio::sync::OnceCell<Vec<u8>>,
    /// When each device's credentials were released in the last minute.
    autofill: Mutex<HashMap<String, std::collections::VecDeque<i64>>>,
    /// Whether this process has purged old device history since it started.
    pub(crate) purged_once: std::sync::atomic::AtomicBool,
}

/// The key badge numbers are hashed with (load it with [`App::badge_key`] before a transaction).
pub(crate) struct BadgeKey(Vec<u8>);

impl BadgeKey {
    /// The keyed hash a badge number is stored and looked up by.
    fn digest(&self, badge: &str) -> String {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.0);
        hex::encode(aws_lc_rs::hmac::sign(&k, badge.as_bytes()).as_ref())
    }
}

// ---------------------------------------------------------------------------------------------
// Views and inputs

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Location {
    pub id: String,
    pub name: String,
    /// The kiosk page for the screen beside the dock.
    pub kiosk_url: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedLocation {
    #[serde(flatten)]
    pub location: Location,
    /// Shown once: open `kiosk_url?key=<kiosk_key>` on the kiosk screen.
    pub kiosk_key: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationInput {
    /// Lower-case letters, digits and `-` (part of the kiosk URL).
    pub id: String,
    pub name: String,
}

/// Check-in workflows of a group, per platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflows {
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub ios: Vec<StepSpec>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub android: Vec<StepSpec>,
}

impl Workflows {
    #[must_use]
    pub fn for_platform(&self, p: Platform) -> &[StepSpec] {
        match p {
            Platform::Ios => &self.ios,
            Platform::Android => &self.android,
        }
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceGroupInput {
    pub name: String,
    /// How long a clinician may keep a device (e.g. the longest shift plus an hour).
    pub lending_minutes: i64,
    #[serde(default)]
    pub workflows: Workflows,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub required_apps: Vec<RequiredApp>,
    /// Check a device in when it is docked while checked out.
    #[serde(default)]
    pub checkin_on_dock: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceGroup {
    pub id: String,
    pub name: String,
    pub lending_minutes: i64,
    pub workflows: Workflows,
    #[schema(value_type = Vec<Object>)]
    pub required_apps: Vec<RequiredApp>,
    pub checkin_on_dock: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(crate) fn group_view(g: DeviceGroupRow) -> DeviceGroup {
    DeviceGroup {
        workflows: serde_json::from_str(&g.workflows).unwrap_or_default(),
        required_apps: serde_json::from_str(&g.required_apps).unwrap_or_default(),
        id: g.id,
        name: g.name,
        lending_minutes: g.lending_minutes,
        checkin_on_dock: g.checkin_on_dock,
        created_at: g.created_at,
        updated_at: g.updated_at,
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentTokenInput {
    pub name: String,
    pub group_id: String,
    #[serde(default)]
    pub location_id: Option<String>,
    /// Days until the token stops enrolling devices (none: until revoked).
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnrolmentToken {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub group_id: String,
    pub location_id: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub uses: i64,
}

impl From<EnrolmentTokenRow> for EnrolmentToken {
    fn from(t: EnrolmentTokenRow) -> Self {
        Self {
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            group_id: t.group_id,
            location_id: t.location_id,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            uses: t.uses,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedEnrolmentToken {
    #[serde(flatten)]
    pub token: EnrolmentToken,
    /// Shown once: put it in the locker app's AppConfig (`SwitchboardEnrollmentToken`).
    pub secret: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUserInput {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The badge number as the reader types it; stored only as a keyed hash. Empty removes it.
    #[serde(default)]
    pub badge: Option<String>,
    /// For signing in on the device itself (at least 8 characters). Empty removes it.
    #[serde(default)]
    pub password: Option<String>,
    /// Devices this person may hold at once (none: the server default).
    #[serde(default)]
    pub device_limit: Option<i64>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceUser {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub has_badge: bool,
    pub has_password: bool,
    pub device_limit: Option<i64>,
    /// `local` or `lookup` (created from the identity-lookup hook).
    pub source: String,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(crate) fn user_view(u: DeviceUserRow) -> DeviceUser {
    DeviceUser {
        has_badge: u.badge_digest.is_some(),
        has_password: u.password_hash.is_some(),
        id: u.id,
        username: u.username,
        display_name: u.display_name,
        device_limit: u.device_limit,
        source: u.source,
        disabled: u.disabled,
        created_at: u.created_at,
        updated_at: u.updated_at,
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
}

fn slug_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

fn text_ok(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

/// Badge numbers as readers type them: trimmed, letters upper-cased.
fn normalise_badge(raw: &str) -> Result<String, String> {
    let b = raw.trim().to_ascii_uppercase();
    if b.is_empty() || b.len() > 64 || !b.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("a badge number is 1-64 letters, digits or `-`".to_owned());
    }
    Ok(b)
}

fn username_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
        })
}

impl App {
    pub(crate) fn device_state(&self) -> &DeviceState {
        &self.inner.devices
    }

    /// Installs the identity-lookup hook (the HTTP one from configuration, or a test's fake).
    pub fn set_identity_lookup(&self, lookup: Option<Arc<dyn IdentityLookup>>) {
        *self
            .device_state()
            .lookup
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lookup;
        lock(&self.device_state().lookup_cache).clear();
    }

    /// The badge hashing key, created on first use. Call it before opening a transaction: on
    /// SQLite a second transaction inside a write transaction would wait for itself.
    pub(crate) async fn badge_key(&self) -> Result<BadgeKey, AppError> {
        let key = self
            .device_state()
            .badge_key
            .get_or_try_init(|| {
                self.singleton_secret(BADGE_KEY_ID, "badge_hash_key", || {
                    crypto::random_bytes::<32>().to_vec()
                })
            })
            .await?;
        Ok(BadgeKey(key.clone()))
    }

    /// The device user a badge belongs to: the directory first, then the lookup hook (whose
    /// answer is remembered and recorded in the directory as a `lookup` user).
    pub(crate) async fn resolve_badge(
        &self,
        tx: &mut dyn Tx,
        key: &BadgeKey,
        raw: &str,
    ) -> Result<Option<DeviceUserRow>, AppError> {
        let Ok(badge) = normalise_badge(raw) else {
            return Ok(None);
        };
        let digest = key.digest(&badge);
        if let Some(u) = tx.find_device_user_by_badge(&digest).await? {
            return Ok(Some(u));
        }
        let hook = self
            .device_state()
            .lookup
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(hook) = hook else {
            return Ok(None);
        };
        let ttl = Duration::from_secs(self.config().identity_lookup_cache_secs);
        let cached = lock(&self.device_state().lookup_cache)
            .get(&digest)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, u)| u.clone());
        let found = match cached {
            Some(hit) => hit,
            None => {
                let answer = hook.lookup(&badge).await.map_err(AppError::Unavailable)?;
                lock(&self.device_state().lookup_cache)
                    .insert(digest.clone(), (Instant::now(), answer.clone()));
                answer
            }
        };
        let Some(found) = found else {
            return Ok(None);
        };
        if !username_ok(&found.username) || !text_ok(&found.display_name, 120) {
            return Err(AppError::Unavailable(
                "the identity lookup answered with an unusable username or display name".to_owned(),
            ));
        }
        let now = now_ms();
        let row = match tx.get_device_user(&found.username).await? {
            Some(mut u) => {
                u.display_name = found.display_name;
                u.badge_digest = Some(digest);
                u.updated_at = now;
                u
            }
            None => DeviceUserRow {
                id: format!("du_{}", &crypto::new_secret("x")[2..18]),
                username: found.username,
                display_name: found.display_name,
                badge_digest: Some(digest),
                password_hash: None,
                device_limit: None,
                source: "lookup".to_owned(),
                disabled: false,
                created_at: now,
                updated_at: now,
            },
        };
        tx.put_device_user(&row).await?;
        Ok(Some(row))
    }

    // --- locations

    pub async fn list_locations(&self) -> Result<Vec<Location>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_locations()
            .await?
            .into_iter()
            .map(|l| self.location_view(l))
            .collect())
    }

    pub(crate) fn location_view(&self, l: LocationRow) -> Location {
        Location {
            kiosk_url: format!("{}/kiosk/{}", self.config().public_url(), l.id),
            id: l.id,
            name: l.name,
            created_at: l.created_at,
        }
    }

    /// Creates a location, or renames one and issues it a new kiosk key.
    pub async fn save_location(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: LocationInput,
    ) -> Result<CreatedLocation, AppError> {
        let mut errors = ValidationErrors::new();
        if !slug_ok(&input.id) {
            errors.add(
                "id",
                "must be 1-40 lower-case letters, digits or `-` (it is part of the kiosk URL)",
            );
        }
        if !text_ok(&input.name, 80) {
            errors.add("name", "must be 1-80 characters of text");
        }
        errors.into_result()?;
        let key = crypto::new_secret("sbk_");
        let mut tx = self.store().begin().await?;
        let old = tx.get_location(&input.id).await?;
        let now = now_ms();
        let row = LocationRow {
            id: input.id,
            name: input.name.trim().to_owned(),
            kiosk_key_digest: Some(crypto::sha256_hex(&key)),
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        tx.put_location(&row).await?;
        let ev = AuditEvent::new(
            "",
            if old.is_some() {
                "location.updated"
            } else {
                "location.created"
            },
            format!("location:{}", row.id),
        )
        .with_details(json!({"name": row.name, "kiosk_key": "issued"}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(CreatedLocation {
            location: self.location_view(row),
            kiosk_key: key,
        })
    }

    pub async fn delete_location(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let filter = DeviceFilter {
            location_id: Some(id.to_owned()),
            limit: 1,
            ..DeviceFilter::default()
        };
        if !tx.list_devices(&filter).await?.is_empty() {
            return Err(AppError::Conflict(format!(
                "location `{id}` still has devices; move them first"
            )));
        }
        if !tx.delete_location(id).await? {
            return Err(AppError::NotFound(format!("location {id}")));
        }
        let ev = AuditEvent::new("", "location.removed", format!("location:{id}"));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks a kiosk key against a location.
    pub async fn kiosk_key_ok(&self, location: &str, key: &str) -> Result<bool, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx.get_location(location).await?.is_some_and(|l| {
            l.kiosk_key_digest.is_some_and(|d| {
                crypto::constant_time_eq(d.as_bytes(), crypto::sha256_hex(key).as_bytes())
            })
        }))
    }

    // --- device groups

    pub async fn list_device_groups(&self) -> Result<Vec<DeviceGroup>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_device_groups()
            .await?
            .into_iter()
            .map(group_view)
            .collect())
    }

    pub async fn get_device_group(&self, id: &str) -> Result<DeviceGroup, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_device_group(id)
            .await?
            .map(group_view)
            .ok_or_else(|| AppError::NotFound(format!("device group {id}")))
    }

    /// Creates (no `id`) or replaces a device group; every device of the group has its readiness
    /// worked out again in the same transaction.
    pub async fn save_device_group(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: Option<&str>,
        input: DeviceGroupInput,
    ) -> Result<DeviceGroup, AppError> {
        let mut tx = self.store().begin().await?;
        let old = match id {
            Some(id) => Some(
                tx.get_device_group(id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("device group {id}")))?,
            ),
            None => None,
        };
        let id = old.as_ref().map_or_else(
            || format!("dg_{}", &crypto::new_secret("x")[2..14]),
            |o| o.id.clone(),
        );
        let mut errors = ValidationErrors::new();
        if !text_ok(&input.name, 80) {
            errors.add("name", "must be 1-80 characters of text");
        } else if tx
            .get_device_group(input.name.trim())
            .await?
            .is_some_and(|g| g.id != id)
        {
            errors.add(
                "name",
                format!(
                    "a device group named `{}` already exists",
                    input.name.trim()
                ),
            );
        }
        if !(15..=10_080).contains(&input.lending_minutes) {
            errors.add(
                "lending_minutes",
                "must be between 15 minutes and 7 days (10080)",
            );
        }
        let envs: BTreeMap<String, Vec<String>> = tx
            .list_environments()
            .await?
            .into_iter()
            .map(|e| (e.id, serde_json::from_str(&e.apps).unwrap_or_default()))
            .collect();
        dd::check_workflow(
            Platform::Ios,
            &input.workflows.ios,
            &envs,
            "workflows.ios",
            &mut errors,
        );
        dd::check_workflow(
            Platform::Android,
            &input.workflows.android,
            &envs,
            "workflows.android",
            &mut errors,
        );
        if input.required_apps.len() > 20 {
            errors.add("required_apps", "at most 20 apps");
        }
        for (i, r) in input.required_apps.iter().enumerate() {
            if !dd::app_id_ok(&r.app_id) {
                errors.add(
                    &format!("required_apps[{i}].app_id"),
                    "must be a bundle id or package name such as `com.epic.rover`",
                );
            }
            if r.min_version.as_ref().is_some_and(|v| {
                v.is_empty()
                    || v.len() > 32
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            }) {
                errors.add(
                    &format!("required_apps[{i}].min_version"),
                    "must be a version such as `9.10` or `23.4.1`",
                );
            }
        }
        errors.into_result()?;
        let now = now_ms();
        let row = DeviceGroupRow {
            id: id.clone(),
            name: input.name.trim().to_owned(),
            lending_minutes: input.lending_minutes,
            workflows: serde_json::to_string(&input.workflows)
                .map_err(|e| AppError::Internal(e.to_string()))?,
            required_apps: serde_json::to_string(&input.required_apps)
                .map_err(|e| AppError::Internal(e.to_string()))?,
            checkin_on_dock: input.checkin_on_dock,
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        tx.put_device_group(&row).await?;
        if old.is_some() {
            let filter = DeviceFilter {
                group_id: Some(id.clone()),
                limit: 100_000,
                ..DeviceFilter::default()
            };
            for mut d in tx.list_devices(&filter).await? {
                let r = readiness_json(&d, &input.required_apps);
                if r != d.readiness {
                    d.readiness = r;
                    d.updated_at = now;
                    tx.update_device(&d).await?;
                }
            }
        }
        let steps = |w: &[StepSpec]| w.iter().map(StepSpec::action).collect::<Vec<_>>();
        let ev = AuditEvent::new(
            "",
            if old.is_some() {
                "device_group.updated"
            } else {
                "device_group.created"
            },
            format!("device_group:{id}"),
        )
        .with_details(json!({
            "name": row.name,
            "lending_minutes": row.lending_minutes,
            "ios": steps(&input.workflows.ios),
            "android": steps(&input.workflows.android),
        }));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(group_view(row))
    }

    pub async fn delete_device_group(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let g = tx
            .get_device_group(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device group {id}")))?;
        let filter = DeviceFilter {
            group_id: Some(g.id.clone()),
            limit: 1,
            ..DeviceFilter::default()
        };
        if !tx.list_devices(&filter).await?.is_empty() {
            return Err(AppError::Conflict(format!(
                "device group `{}` still has devices; move them first",
                g.name
            )));
        }
        tx.delete_device_group(&g.id).await?;
        let ev = AuditEvent::new("", "device_group.removed", format!("device_group:{}", g.id))
            .with_details(json!({"name": g.name}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- enrolment tokens

    pub async fn list_enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_enrolment_tokens()
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    pub async fn create_enrolment_token(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: EnrolmentTokenInput,
    ) -> Result<CreatedEnrolmentToken, AppError> {
        let mut tx = self.store().begin().await?;
        let mut errors = ValidationErrors::new();
        if !text_ok(&input.name, 80) {
            errors.add("name", "must be 1-80 characters of text");
        }
        let group = tx.get_device_group(&input.group_id).await?;
        if group.is_none() {
            errors.add("group_id", format!("no device group `{}`", input.group_id));
        }
        if let Some(l) = &input.location_id
            && tx.get_location(l).await?.is_none()
        {
            errors.add("location_id", format!("no location `{l}`"));
        }
        if input
            .expires_in_days
            .is_some_and(|d| !(1..=3650).contains(&d))
        {
            errors.add("expires_in_days", "must be between 1 and 3650");
        }
        errors.into_result()?;
        let secret = crypto::new_secret("sbe_");
        let now = now_ms();
        let row = EnrolmentTokenRow {
            id: format!("et_{}", &crypto::new_secret("x")[2..14]),
            name: input.name.trim().to_owned(),
            digest: crypto::sha256_hex(&secret),
            prefix: secret.chars().take(8).collect(),
            group_id: group.map(|g| g.id).unwrap_or_default(),
            location_id: input.location_id,
            created_at: now,
            expires_at: input.expires_in_days.map(|d| now + d * 86_400_000),
            revoked_at: None,
            uses: 0,
        };
        tx.insert_enrolment_token(&row).await?;
        let ev = AuditEvent::new(
            "",
            "enrolment_token.created",
            format!("enrolment_token:{}", row.id),
        )
        .with_details(
            json!({"name": row.name, "group_id": row.group_id, "location_id": row.location_id}),
        );
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(CreatedEnrolmentToken {
            token: row.into(),
            secret,
        })
    }

    pub async fn revoke_enrolment_token(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        if !tx.revoke_enrolment_token(id, now_ms()).await? {
            return Err(AppError::NotFound(format!("active enrolment token {id}")));
        }
        let ev = AuditEvent::new(
            "",
            "enrolment_token.revoked",
            format!("enrolment_token:{id}"),
        );
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- the directory of device users

    pub async fn list_device_users(&self) -> Result<Vec<DeviceUser>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_device_users()
            .await?
            .into_iter()
            .map(user_view)
            .collect())
    }

    pub async fn get_device_user(&self, id: &str) -> Result<DeviceUser, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_device_user(id)
            .await?
            .map(user_view)
            .ok_or_else(|| AppError::NotFound(format!("device user {id}")))
    }

    /// Creates (no `id`) or changes a device user.
    pub async fn save_device_user(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: Option<&str>,
        input: DeviceUserInput,
    ) -> Result<DeviceUser, AppError> {
        let key = self.badge_key().await?;
        let mut tx = self.store().begin().await?;
        let (row, created) = self
            .apply_device_user(&mut *tx, &key, id, input, "")
            .await?;
        let ev = AuditEvent::new(
            "",
            if created { "device_user.created" } else { "device_user.updated" },
            format!("device_user:{}", row.id),
        )
        .with_details(json!({"username": row.username, "has_badge": row.badge_digest.is_some(), "disabled": row.disabled}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(user_view(row))
    }

    /// Validates and writes one user inside `tx`; `field` prefixes error names (CSV lines).
    async fn apply_device_user(
        &self,
        tx: &mut dyn Tx,
        key: &BadgeKey,
        id: Option<&str>,
        input: DeviceUserInput,
        field: &str,
    ) -> Result<(DeviceUserRow, bool), AppError> {
        let old = match id {
            Some(id) => Some(
                tx.get_device_user(id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("device user {id}")))?,
            ),
            None => None,
        };
        let f = |n: &str| format!("{field}{n}");
        let mut errors = ValidationErrors::new();
        let username = input
            .username
            .clone()
            .or_else(|| old.as_ref().map(|o| o.username.clone()))
            .unwrap_or_default();
        if !username_ok(&username) {
            errors.add(
                &f("username"),
                "must be 1-64 lower-case letters, digits or . _ - @",
            );
        } else if tx
            .get_device_user(&username)
            .await?
            .is_some_and(|u| old.as_ref().is_none_or(|o| o.id != u.id))
        {
            errors.add(
                &f("username"),
                format!("`{username}` is already in the directory"),
            );
        }
        let display_name = input
            .display_name
            .clone()
            .or_else(|| old.as_ref().map(|o| o.display_name.clone()))
            .unwrap_or_default();
        if !text_ok(&display_name, 120) {
            errors.add(&f("display_name"), "must be 1-120 characters of text");
        }
        let mut badge_digest = old.as_ref().and_then(|o| o.badge_digest.clone());
        if let Some(b) = &input.badge {
            if b.trim().is_empty() {
                badge_digest = None;
            } else {
                match normalise_badge(b) {
                    Err(e) => errors.add(&f("badge"), e),
                    Ok(b) => {
                        let d = key.digest(&b);
                        if tx
                            .find_device_user_by_badge(&d)
                            .await?
                            .is_some_and(|u| old.as_ref().is_none_or(|o| o.id != u.id))
                        {
                            errors.add(&f("badge"), "this badge belongs to someone else");
                        }
                        badge_digest = Some(d);
                    }
                }
            }
        }
        let mut password_hash = old.as_ref().and_then(|o| o.password_hash.clone());
        if let Some(pw) = &input.password {
            if pw.is_empty() {
                password_hash = None;
            } else if pw.len() < 8 || pw.len() > 256 {
                errors.add(&f("password"), "must be 8-256 characters");
            } else {
                let pw = pw.clone();
                password_hash = Some(
                    crate::accounts::blocking(move || crate::accounts::hash_password(&pw))
                        .await??,
                );
            }
        }
        let device_limit = input
            .device_limit
            .or_else(|| old.as_ref().and_then(|o| o.device_limit));
        if device_limit.is_some_and(|l| !(1..=10).contains(&l)) {
            errors.add(&f("device_limit"), "must be between 1 and 10");
        }
        errors.into_result()?;
        let now = now_ms();
        let created = old.is_none();
        let row = DeviceUserRow {
            id: old.as_ref().map_or_else(
                || format!("du_{}", &crypto::new_secret("x")[2..18]),
                |o| o.id.clone(),
            ),
            username,
            display_name: display_name.trim().to_owned(),
            badge_digest,
            password_hash,
            device_limit,
            source: old
                .as_ref()
                .map_or_else(|| "local".to_owned(), |o| o.source.clone()),
            disabled: input
                .disabled
                .unwrap_or_else(|| old.as_ref().is_some_and(|o| o.disabled)),
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        tx.put_device_user(&row).await?;
        Ok((row, created))
    }

    /// Imports users from CSV with the header `username,display_name,badge,device_limit`
    /// (badge and device_limit may be empty). All or nothing: any bad line refuses the file,
    /// naming the line and field.
    pub async fn import_device_users(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        csv_text: &str,
    ) -> Result<ImportReport, AppError> {
        if csv_text.len() > 5 * 1024 * 1024 {
            return Err(ValidationErrors::single("file", "at most 5 MiB").into());
        }
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(csv_text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| ValidationErrors::single("file", format!("unreadable CSV header: {e}")))?
            .clone();
        let col = |n: &str| headers.iter().position(|h| h == n);
        let (Some(cu), Some(cd)) = (col("username"), col("display_name")) else {
            return Err(ValidationErrors::single(
                "file",
                "the header must name at least `username` and `display_name` (also `badge`, `device_limit`)",
            )
            .into());
        };
        let (cb, cl) = (col("badge"), col("device_limit"));
        let key = self.badge_key().await?;
        let mut tx = self.store().begin().await?;
        let mut errors = ValidationErrors::new();
        let (mut created, mut updated) = (0, 0);
        for (i, rec) in reader.records().enumerate() {
            let line = i + 2;
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    errors.add(&format!("line {line}"), format!("unreadable: {e}"));
                    continue;
                }
            };
            let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::to_owned);
            let limit = match get(cl).filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match s.parse::<i64>() {
                    Ok(v) => Some(v),
                    Err(_) => {
                        errors.add(
                            &format!("line {line}: device_limit"),
                            format!("`{s}` is not a number"),
                        );
                        continue;
                    }
                },
            };
            let username = get(Some(cu)).unwrap_or_default();
            let existing = tx.get_device_user(&username).await?.map(|u| u.id);
            let input = DeviceUserInput {
                username: Some(username),
                display_name: get(Some(cd)),
                badge: get(cb).filter(|b| !b.is_empty()),
                password: None,
                device_limit: limit,
                disabled: None,
            };
            match self
                .apply_device_user(
                    &mut *tx,
                    &key,
                    existing.as_deref(),
                    input,
                    &format!("line {line}: "),
                )
                .await
            {
                Ok((_, true)) => created += 1,
                Ok((_, false)) => updated += 1,
                Err(AppError::Validation(v)) => errors.errors.extend(v.errors),
                Err(e) => return Err(e),
            }
        }
        errors.into_result()?;
        let ev = AuditEvent::new("", "device_user.imported", "device_users")
            .with_details(json!({"created": created, "updated": updated}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(ImportReport { created, updated })
    }

    // --- helpers for the lending cycle

    pub(crate) fn device_waiter(&self, device_id: &str) -> Arc<tokio::sync::Notify> {
        lock(&self.device_state().waiters)
            .entry(device_id.to_owned())
            .or_default()
            .clone()
    }

    /// Takes one autofill release for a device under the limit of the last 60 seconds (per
    /// replica).
    pub(crate) fn autofill_allowed(&self, device_id: &str) -> bool {
        let now = now_ms();
        let mut m = lock(&self.device_state().autofill);
        let recent = m.entry(device_id.to_owned()).or_default();
        while recent.front().is_some_and(|t| now - t >= 60_000) {
            recent.pop_front();
        }
        if recent.len() >= crate::sso::AUTOFILL_PER_MINUTE as usize {
            return false;
        }
        recent.push_back(now);
        true
    }

    /// Wakes the agent of a device that is waiting for commands in this process.
    pub(crate) fn wake_device(&self, device_id: &str) {
        if let Some(n) = lock(&self.device_state().waiters).get(device_id) {
            n.notify_waiters();
        }
    }
}

/// The readiness of a device against its group's required apps, as stored (JSON list).
pub(crate) fn readiness_json(d: &DeviceRow, required: &[RequiredApp]) -> String {
    let config: dd::ReportedConfig = serde_json::from_str(&d.appconfig).unwrap_or_default();
    let apps: Vec<dd::InstalledApp> = serde_json::from_str(&d.apps).unwrap_or_default();
    serde_json::to_string(&dd::readiness(&config, &apps, required))
        .unwrap_or_else(|_| "[]".to_owned())
}
