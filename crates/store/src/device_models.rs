//! Rows of the shared-device tables. JSON documents (workflows, inventories, reported
//! AppConfig, command parameters) are stored as text and parsed by the use cases.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LocationRow {
    /// A slug: part of the kiosk URL.
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub kiosk_key_digest: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceGroupRow {
    pub id: String,
    pub name: String,
    pub lending_minutes: i64,
    /// JSON: `{"ios": [step, ...], "android": [...]}`.
    pub workflows: String,
    /// JSON: `[{"app_id": ..., "min_version": ...}]`.
    pub required_apps: String,
    pub checkin_on_dock: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct EnrolmentTokenRow {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub digest: String,
    pub prefix: String,
    pub group_id: String,
    pub location_id: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub uses: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: String,
    pub serial: String,
    pub uuid: Option<String>,
    pub platform: String,
    pub model: Option<String>,
    pub os_version: Option<String>,
    pub name: String,
    pub slot: Option<String>,
    pub group_id: String,
    pub location_id: Option<String>,
    pub credential_digest: String,
    pub status: String,
    pub holder_id: Option<String>,
    pub checkout_id: Option<String>,
    pub pin_set: bool,
    pub battery: Option<i64>,
    pub charging: Option<bool>,
    pub docked: Option<bool>,
    pub reported_location: Option<String>,
    /// JSON array of installed apps.
    pub apps: String,
    /// JSON: app → key → value.
    pub appconfig: String,
    /// JSON array of reasons the device is not ready; `[]` when ready.
    pub readiness: String,
    pub last_heartbeat_at: Option<i64>,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Lost mode: since when, and why.
    pub lost_at: Option<i64>,
    pub lost_reason: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub status: Option<String>,
    pub location_id: Option<String>,
    pub platform: Option<String>,
    pub group_id: Option<String>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceUserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub badge_digest: Option<String>,
    pub password_hash: Option<String>,
    pub device_limit: Option<i64>,
    /// `local` (directory) or `lookup` (identity-lookup hook).
    pub source: String,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CheckoutRow {
    pub id: String,
    pub device_id: String,
    pub user_id: String,
    pub location_id: Option<String>,
    /// `kiosk`, `operator` or `device`.
    pub source: String,
    pub pin_set: bool,
    pub started_at: i64,
    pub due_at: i64,
    pub ended_at: Option<i64>,
    pub checkin_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckinRow {
    pub id: String,
    pub device_id: String,
    pub checkout_id: String,
    pub user_id: String,
    pub requested_by: String,
    pub status: String,
    /// JSON array of sentences (e.g. Enhanced Rover value mismatch).
    pub warnings: String,
    pub started_at: i64,
    pub completed_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckinStepRow {
    pub checkin_id: String,
    pub position: i64,
    pub action: String,
    /// JSON of the workflow step.
    pub spec: String,
    pub on_device: bool,
    pub mandatory: bool,
    pub status: String,
    pub detail: String,
    pub install_id: Option<String>,
    pub attempts: i64,
    /// Some earlier attempt's answer was lost (timeout or crash).
    pub outcome_unknown: bool,
    /// Attempts made after an unknown outcome.
    pub repeats: i64,
    pub command_id: Option<String>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CommandRow {
    pub id: String,
    pub device_id: String,
    pub kind: String,
    /// JSON parameters (never a PIN: that is sealed under `secret_ref`).
    pub params: String,
    pub secret_ref: Option<String>,
    pub state: String,
    pub checkin_id: Option<String>,
    pub position: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    pub delivered_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeviceEventRow {
    pub seq: i64,
    pub device_id: String,
    pub at: i64,
    pub kind: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub scope: String,
    pub key: String,
    pub request_digest: String,
    pub status: i64,
    pub response: String,
    pub created_at: i64,
}

/// Counts of receipt steps, for dashboards and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepTotals {
    pub server_steps: i64,
    pub done: i64,
    pub failed: i64,
    pub open: i64,
    pub repeats: i64,
    pub attempts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SsoProfileRow {
    pub id: String,
    /// The first app's `desc`.
    pub name: String,
    /// JSON: the apps the profile covers (`nm`, `desc`, `one_tap`).
    pub apps: String,
    /// The profile as Switchboard writes it back (same elements, attributes and values).
    pub xml: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SsoCredentialRow {
    pub user_id: String,
    pub profile_id: String,
    pub username: String,
    /// The sealed password in `secrets`.
    pub secret_ref: String,
    /// `admin` or `device` (saved after a manual sign-in).
    pub source: String,
    pub updated_at: i64,
}
