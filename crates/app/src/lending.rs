//! The lending cycle of shared devices: the agent protocol (enrol, heartbeat, commands), check-out
//! (kiosk, operator, device), check-in with its workflow and receipt, Epic API logout as durable
//! jobs, and the sweep that expires unanswered commands.
//!
//! Every change of a device's state happens with its row locked (PostgreSQL) or under SQLite's
//! single writer, in one transaction with its audit entry, timeline event, commands and jobs.

use crate::devices::{DeviceGroup, DeviceUser, group_view, readiness_json, user_view};
use crate::jobs::{self, JobHandler};
use crate::{App, AppError, Principal, RequestContext, crypto, now_ms};
use async_trait::async_trait;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use switchboard_domain::ValidationErrors;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::devices::{
    self as dd, DeviceStatus, InstallId, InstalledApp, LogoutVerdict, Platform, ReportedConfig,
    StepSpec, StepStatus,
};
use switchboard_domain::jobs::{JobOutcome, RetryPolicy};
use switchboard_store::{
    CheckinRow, CheckinStepRow, CheckoutRow, CommandRow, DeviceFilter, DeviceRow, DeviceUserRow,
    IdempotencyRow, JobRow, StepTotals, Tx, Write,
};

pub const JOB_LOGOUT: &str = "devices.epic_logout";
pub const JOB_SWEEP: &str = "devices.sweep";
/// A delivered command with no result is handed out again after this long.
const REDELIVER_MS: i64 = 30_000;
/// How often a waiting long poll looks for commands queued by another replica.
const CROSS_REPLICA_RECHECK: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Views and inputs

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserBrief {
    pub id: String,
    pub username: String,
    pub display_name: String,
}

fn brief(u: &DeviceUserRow) -> UserBrief {
    UserBrief {
        id: u.id.clone(),
        username: u.username.clone(),
        display_name: u.display_name.clone(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceBrief {
    pub id: String,
    pub serial: String,
    pub name: String,
    pub slot: Option<String>,
}

fn device_brief(d: &DeviceRow) -> DeviceBrief {
    DeviceBrief {
        id: d.id.clone(),
        serial: d.serial.clone(),
        name: d.name.clone(),
        slot: d.slot.clone(),
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Device {
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
    /// available, checked_out, returning (check-in steps running) or attention.
    pub status: String,
    pub holder: Option<UserBrief>,
    pub checkout_id: Option<String>,
    pub due_at: Option<i64>,
    pub overdue: bool,
    pub pin_set: bool,
    pub battery: Option<i64>,
    pub charging: Option<bool>,
    pub docked: Option<bool>,
    pub reported_location: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub apps: Vec<InstalledApp>,
    #[schema(value_type = Object)]
    pub appconfig: ReportedConfig,
    pub ready: bool,
    /// Why the device is not handed out, in words.
    pub not_ready: Vec<String>,
    /// Each Epic app's Install ID as Epic will be asked to sign it out (null: cannot be formed).
    pub install_ids: BTreeMap<String, Option<String>>,
    /// Configuration problems worth knowing (e.g. Enhanced Rover value mismatch).
    pub warnings: Vec<String>,
    pub last_heartbeat_at: Option<i64>,
    pub enrolled_at: i64,
    pub revoked: bool,
    /// Lost mode: since when and why (ends when the device is docked again).
    pub lost_at: Option<i64>,
    pub lost_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceiptStep {
    pub position: i64,
    pub action: String,
    pub description: String,
    /// `device` (a command to the agent) or `server` (a job toward Epic).
    pub side: String,
    pub mandatory: bool,
    /// pending, done, retrying, failed or skipped.
    pub status: String,
    pub detail: String,
    pub install_id: Option<String>,
    pub attempts: i64,
    /// Attempts made after an earlier attempt's answer was lost.
    pub repeats: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub id: String,
    pub device: DeviceBrief,
    pub user: Option<UserBrief>,
    pub requested_by: String,
    /// in_progress, complete or complete_with_problems.
    pub status: String,
    pub started_at: i64,
    pub completed_at: Option<i64>,
    pub warnings: Vec<String>,
    pub steps: Vec<ReceiptStep>,
    /// True when the device was already checked in and this is its last receipt.
    #[serde(default)]
    pub already_checked_in: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    /// The badge number as the reader typed it.
    #[serde(default)]
    pub badge: Option<String>,
    /// A device user's id or username (operators).
    #[serde(default)]
    pub user: Option<String>,
    /// A device id or serial; without it Switchboard picks the best ready device at `location`.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    /// A PIN (4-8 digits) the agent sets on the device; removed again at check-in.
    #[serde(default)]
    pub pin: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkout {
    pub id: String,
    pub device: DeviceBrief,
    pub user: UserBrief,
    pub started_at: i64,
    pub due_at: i64,
    pub pin_set: bool,
    /// What the device's screen shows.
    pub message: String,
}

/// Why a check-out was refused (each with its own words and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownBadge,
    UnknownUser(String),
    UserDisabled,
    AtLimit(i64),
    NoneReady(String),
    UnknownLocation(String),
    UnknownDevice(String),
    DeviceNotAvailable(String, String),
    DeviceNotReady(String, Vec<String>),
    NoTarget,
    BadPin(String),
    BadCredentials,
}

impl Refusal {
    /// A stable code for kiosks and clients.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::UnknownBadge => "unknown_badge",
            Self::UnknownUser(_) => "unknown_user",
            Self::UserDisabled => "user_disabled",
            Self::AtLimit(_) => "at_device_limit",
            Self::NoneReady(_) => "none_ready",
            Self::UnknownLocation(_) => "unknown_location",
            Self::UnknownDevice(_) => "unknown_device",
            Self::DeviceNotAvailable(..) => "device_not_available",
            Self::DeviceNotReady(..) => "device_not_ready",
            Self::NoTarget => "no_target",
            Self::BadPin(_) => "bad_pin",
            Self::BadCredentials => "bad_credentials",
        }
    }

    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Self::UnknownBadge => {
                "This badge is not known. Ask the unit's device coordinator to register it."
                    .to_owned()
            }
            Self::UnknownUser(u) => format!("no device user `{u}`"),
            Self::UserDisabled => {
                "This user may not check out devices (disabled in the directory).".to_owned()
            }
            Self::AtLimit(n) => {
                format!("You already hold {n} device(s), your limit. Return one first.")
            }
            Self::NoneReady(l) => format!("No device is ready at {l} right now."),
            Self::UnknownLocation(l) => format!("no location `{l}`"),
            Self::UnknownDevice(d) => format!("no device `{d}`"),
            Self::DeviceNotAvailable(d, s) => format!("device {d} is not available (it is {s})"),
            Self::DeviceNotReady(d, r) => format!("device {d} is not ready: {}", r.join("; ")),
            Self::NoTarget => "name a device or a location".to_owned(),
            Self::BadPin(e) => format!("pin {e}"),
            Self::BadCredentials => "wrong username, password or badge".to_owned(),
        }
    }
}

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        let m = r.message();
        match r {
            Refusal::UnknownBadge => Self::NotFound("a device user with this badge".to_owned()),
            Refusal::UnknownUser(u) => Self::NotFound(format!("device user {u}")),
            Refusal::UnknownLocation(l) => Self::NotFound(format!("location {l}")),
            Refusal::UnknownDevice(d) => Self::NotFound(format!("device {d}")),
            Refusal::UserDisabled => Self::Forbidden(m),
            Refusal::BadCredentials => Self::Unauthenticated("wrong device user credentials"),
            Refusal::NoTarget => ValidationErrors::single("device", m).into(),
            Refusal::BadPin(e) => ValidationErrors::single("pin", e).into(),
            Refusal::AtLimit(_)
            | Refusal::NoneReady(_)
            | Refusal::DeviceNotAvailable(..)
            | Refusal::DeviceNotReady(..) => Self::Conflict(m),
        }
    }
}

/// What a device sends to enrol.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolInput {
    pub serial: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub platform: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
    /// A friendly name (defaults to the serial).
    #[serde(default)]
    pub name: Option<String>,
    /// The dock slot the device lives in.
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub apps: Vec<InstalledApp>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub appconfig: ReportedConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Enrolled {
    pub device_id: String,
    /// The device's credential (`Authorization: Bearer`), shown once.
    pub credential: String,
    pub heartbeat_secs: u64,
    pub poll_wait_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatInput {
    #[serde(default)]
    pub battery: Option<i64>,
    #[serde(default)]
    pub charging: Option<bool>,
    #[serde(default)]
    pub docked: Option<bool>,
    /// Where the device says it is (a dock or unit name).
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub apps: Option<Vec<InstalledApp>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub appconfig: Option<ReportedConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAnswer {
    pub status: String,
    pub holder: Option<String>,
    pub ready: bool,
    /// Commands are waiting: poll now.
    pub commands_waiting: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentCommand {
    pub id: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: Value,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResultInput {
    /// succeeded, failed or skipped (not applicable on this device).
    pub status: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// One result in a report of several (`POST /agent/v1/commands/results`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResultItem {
    /// The command's id.
    pub id: String,
    /// succeeded, failed or skipped (not applicable on this device).
    pub status: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// What became of one result of a report, in the report's order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandResultOutcome {
    pub id: String,
    /// `recorded` (also for a repeat of the same result), `not_found` (no such command of this
    /// device) or `conflict` (a different result was recorded, or the command expired).
    pub outcome: String,
    /// The command as it is now (when recorded).
    pub command: Option<CommandView>,
    /// Why it was not recorded.
    pub error: Option<String>,
}

/// Results one report may carry.
pub const MAX_RESULTS_PER_REPORT: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandView {
    pub id: String,
    pub kind: String,
    /// queued, delivered, succeeded, failed, skipped or expired.
    pub state: String,
    pub checkin_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub delivered_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result: Option<String>,
}

fn command_view(c: &CommandRow) -> CommandView {
    CommandView {
        id: c.id.clone(),
        kind: c.kind.clone(),
        state: c.state.clone(),
        checkin_id: c.checkin_id.clone(),
        created_at: c.created_at,
        expires_at: c.expires_at,
        delivered_at: c.delivered_at,
        finished_at: c.finished_at,
        result: c.result.clone(),
    }
}

/// Device-side check-out: the clinician signs in on the device itself.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentCheckoutInput {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub badge: Option<String>,
    /// The user set a device PIN through the agent.
    #[serde(default)]
    pub pin_set: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub at: i64,
    /// event, command, checkout or checkin.
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: Device,
    pub group_name: String,
    pub receipts: Vec<Receipt>,
    pub commands: Vec<CommandView>,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct DeviceQuery {
    /// available, checked_out, returning, attention, or `overdue`.
    pub status: Option<String>,
    pub location: Option<String>,
    pub platform: Option<String>,
    pub group: Option<String>,
    /// `ready` or `not_ready`.
    pub readiness: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LocationSummary {
    pub location_id: String,
    pub name: String,
    pub available: usize,
    pub checked_out: usize,
    pub overdue: usize,
    pub returning: usize,
    pub attention: usize,
    pub not_ready: usize,
    /// Devices in lost mode (also counted under their status).
    pub lost: usize,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub group_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LostInput {
    /// Shown on the locked screen (default: where to return the device).
    #[serde(default)]
    pub message: Option<String>,
}

/// Something the agent reports that is not a command result.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEventInput {
    /// `emergency_unlock`: someone unlocked the device with the emergency PIN.
    pub kind: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandInput {
    /// lock, show_message or lock_with_message.
    pub kind: String,
    #[serde(default)]
    pub message: Option<String>,
}

// ---------------------------------------------------------------------------------------------

fn parse_json<T: DeserializeOwned + Default>(s: &str) -> T {
    serde_json::from_str(s).unwrap_or_default()
}

fn to_json(v: &impl Serialize) -> Result<String, AppError> {
    serde_json::to_string(v).map_err(|e| AppError::Internal(e.to_string()))
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", &crypto::new_secret("x")[2..22])
}

/// A result's status and detail, checked (`field` prefixes the error's field names).
fn checked_result(
    status: &str,
    detail: Option<String>,
    field: &str,
) -> Result<(String, String), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if !matches!(status, "succeeded" | "failed" | "skipped") {
        errors.add(
            &format!("{field}status"),
            format!("`{status}` is not succeeded, failed or skipped"),
        );
    }
    let detail = detail.unwrap_or_default();
    if !printable(&detail, 500) {
        errors.add(&format!("{field}detail"), "at most 500 characters of text");
    }
    errors.into_result()?;
    Ok((status.to_owned(), detail))
}

fn printable(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// The Install IDs and warnings a device's reported AppConfig gives.
fn install_ids(config: &ReportedConfig) -> (BTreeMap<String, Option<String>>, Vec<String>) {
    let mut ids = BTreeMap::new();
    for app in dd::EPIC_APPS {
        if config.contains_key(app) {
            ids.insert(
                app.to_owned(),
                match dd::install_id(config, app) {
                    InstallId::Known(id) => Some(id),
                    InstallId::Unavailable(_) => None,
                },
            );
        }
    }
    let mut warnings = Vec::new();
    if config
        .get(dd::LOCKER)
        .is_some_and(|l| l.contains_key("epicRoverEpicMobileDeviceID"))
    {
        let (_, w) = dd::enhanced_rover_install_id(config);
        warnings.extend(w);
    }
    (ids, warnings)
}

fn device_view(
    d: &DeviceRow,
    holder: Option<&DeviceUserRow>,
    due_at: Option<i64>,
    now: i64,
) -> Device {
    let config: ReportedConfig = parse_json(&d.appconfig);
    let not_ready: Vec<String> = parse_json(&d.readiness);
    let (ids, warnings) = install_ids(&config);
    Device {
        id: d.id.clone(),
        serial: d.serial.clone(),
        uuid: d.uuid.clone(),
        platform: d.platform.clone(),
        model: d.model.clone(),
        os_version: d.os_version.clone(),
        name: d.name.clone(),
        slot: d.slot.clone(),
        group_id: d.group_id.clone(),
        location_id: d.location_id.clone(),
        status: d.status.clone(),
        holder: holder.map(brief),
        checkout_id: d.checkout_id.clone(),
        due_at,
        overdue: due_at.is_some_and(|t| t < now) && d.status == "checked_out",
        pin_set: d.pin_set,
        battery: d.battery,
        charging: d.charging,
        docked: d.docked,
        reported_location: d.reported_location.clone(),
        apps: parse_json(&d.apps),
        appconfig: config,
        ready: not_ready.is_empty(),
        not_ready,
        install_ids: ids,
        warnings,
        last_heartbeat_at: d.last_heartbeat_at,
        enrolled_at: d.enrolled_at,
        revoked: d.revoked_at.is_some(),
        lost_at: d.lost_at,
        lost_reason: d.lost_reason.clone(),
    }
}

fn step_view(s: &CheckinStepRow) -> ReceiptStep {
    let spec: Option<StepSpec> = serde_json::from_str(&s.spec).ok();
    ReceiptStep {
        position: s.position,
        action: s.action.clone(),
        description: spec.map_or_else(|| s.action.clone(), |x| x.describe()),
        side: if s.on_device { "device" } else { "server" }.to_owned(),
        mandatory: s.mandatory,
        status: s.status.clone(),
        detail: s.detail.clone(),
        install_id: s.install_id.clone(),
        attempts: s.attempts,
        repeats: s.repeats,
        updated_at: s.updated_at,
    }
}

pub(crate) fn receipt_view(
    c: &CheckinRow,
    d: &DeviceRow,
    user: Option<&DeviceUserRow>,
    steps: &[CheckinStepRow],
) -> Receipt {
    Receipt {
        id: c.id.clone(),
        device: device_brief(d),
        user: user.map(brief),
        requested_by: c.requested_by.clone(),
        status: c.status.clone(),
        started_at: c.started_at,
        completed_at: c.completed_at,
        warnings: parse_json(&c.warnings),
        steps: steps.iter().map(step_view).collect(),
        already_checked_in: false,
    }
}

/// A check-in's status from its steps: finished (with the time) once every step is final.
fn checkin_status(steps: &[CheckinStepRow], now: i64) -> (&'static str, Option<i64>) {
    let status = |s: &CheckinStepRow| StepStatus::parse(&s.status).unwrap_or(StepStatus::Pending);
    if !steps.iter().all(|s| status(s).is_final()) {
        ("in_progress", None)
    } else if steps.iter().any(|s| status(s) == StepStatus::Failed) {
        ("complete_with_problems", Some(now))
    } else {
        ("complete", Some(now))
    }
}

fn command_row(device_id: &str, kind: &str, params: &Value, now: i64, ttl_ms: i64) -> CommandRow {
    CommandRow {
        id: new_id("cmd_"),
        device_id: device_id.to_owned(),
        kind: kind.to_owned(),
        params: params.to_string(),
        secret_ref: None,
        state: "queued".to_owned(),
        checkin_id: None,
        position: None,
        created_at: now,
        expires_at: now + ttl_ms,
        delivered_at: None,
        finished_at: None,
        result: None,
    }
}

impl App {
    fn command_ttl_ms(&self) -> i64 {
        i64::try_from(self.config().device_command_ttl_secs).unwrap_or(600) * 1000
    }

    async fn event(
        &self,
        tx: &mut dyn Tx,
        device_id: &str,
        kind: &str,
        detail: Value,
    ) -> Result<(), AppError> {
        tx.insert_device_event(device_id, now_ms(), kind, &detail.to_string())
            .await?;
        Ok(())
    }

    async fn device_audit(
        &self,
        tx: &mut dyn Tx,
        d: &DeviceRow,
        action: &str,
        details: Value,
    ) -> Result<(), AppError> {
        let ev = AuditEvent::new(
            format!("device:{}", d.serial),
            action,
            format!("device:{}", d.id),
        )
        .with_details(details);
        self.append_audit(tx, &ev).await
    }

    // --- the agent protocol

    /// Enrols a device with an enrolment token. Re-enrolling a serial replaces its credential.
    pub async fn enrol_device(&self, token: &str, input: EnrolInput) -> Result<Enrolled, AppError> {
        let now = now_ms();
        let mut tx = self.store().begin().await?;
        let t = tx
            .find_enrolment_token(&crypto::sha256_hex(token))
            .await?
            .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now))
            .ok_or(AppError::Unauthenticated(
                "unknown, expired or revoked enrolment token",
            ))?;
        let mut errors = ValidationErrors::new();
        if !dd::serial_ok(&input.serial) {
            errors.add("serial", "must be 1-64 letters, digits or `-`");
        }
        if input.uuid.as_ref().is_some_and(|u| !dd::serial_ok(u)) {
            errors.add("uuid", "must be 1-64 letters, digits or `-`");
        }
        let platform = errors.check("platform", Platform::parse(&input.platform));
        for (f, v, max) in [
            ("model", &input.model, 80),
            ("os_version", &input.os_version, 40),
            ("name", &input.name, 80),
            ("slot", &input.slot, 40),
        ] {
            if v.as_ref()
                .is_some_and(|v| v.trim().is_empty() || !printable(v, max))
            {
                errors.add(f, format!("must be 1-{max} characters of text"));
            }
        }
        dd::check_inventory(&input.apps, "apps", &mut errors);
        dd::check_reported_config(&input.appconfig, "appconfig", &mut errors);
        errors.into_result()?;
        let platform = platform.unwrap_or(Platform::Ios);
        let group = tx
            .get_device_group(&t.group_id)
            .await?
            .map(group_view)
            .ok_or_else(|| {
                AppError::Conflict("the enrolment token's device group was removed".to_owned())
            })?;
        let credential = crypto::new_secret("sbd_");
        let digest = crypto::sha256_hex(&credential);
        let existing = match tx.get_device(&input.serial).await? {
            Some(d) => tx.lock_device(&d.id).await?,
            None => None,
        };
        let mut d = existing.clone().unwrap_or_else(|| DeviceRow {
            id: new_id("dev_"),
            serial: input.serial.clone(),
            uuid: None,
            platform: platform.as_str().to_owned(),
            model: None,
            os_version: None,
            name: input.serial.clone(),
            slot: None,
            group_id: group.id.clone(),
            location_id: t.location_id.clone(),
            credential_digest: String::new(),
            status: DeviceStatus::Available.as_str().to_owned(),
            holder_id: None,
            checkout_id: None,
            pin_set: false,
            battery: None,
            charging: None,
            docked: None,
            reported_location: None,
            apps: "[]".to_owned(),
            appconfig: "{}".to_owned(),
            readiness: "[]".to_owned(),
            last_heartbeat_at: Some(now),
            enrolled_at: now,
            revoked_at: None,
            created_at: now,
            updated_at: now,
            lost_at: None,
            lost_reason: None,
        });
        d.credential_digest = digest;
        d.uuid = input.uuid.clone().or(d.uuid);
        d.platform = platform.as_str().to_owned();
        d.model = input.model.clone().or(d.model);
        d.os_version = input.os_version.clone().or(d.os_version);
        if let Some(n) = &input.name {
            d.name = n.trim().to_owned();
        }
        d.slot = input.slot.clone().or(d.slot);
        d.apps = to_json(&input.apps)?;
        d.appconfig = to_json(&input.appconfig)?;
        d.readiness = readiness_json(&d, &group.required_apps);
        d.enrolled_at = now;
        d.revoked_at = None;
        d.last_heartbeat_at = Some(now);
        d.updated_at = now;
        if existing.is_some() {
            tx.update_device(&d).await?;
        } else {
            tx.insert_device(&d).await?;
        }
        tx.count_enrolment_use(&t.id).await?;
        let action = if existing.is_some() {
            "device.re_enrolled"
        } else {
            "device.enrolled"
        };
        self.event(
            &mut *tx,
            &d.id,
            if existing.is_some() {
                "re_enrolled"
            } else {
                "enrolled"
            },
            json!({"platform": d.platform, "enrolment_token": t.id}),
        )
        .await?;
        self.device_audit(&mut *tx, &d, action, json!({"serial": d.serial, "platform": d.platform, "enrolment_token": t.id, "credential": if existing.is_some() { "replaced" } else { "issued" }})).await?;
        tx.commit().await?;
        if existing.is_some() {
            // The device's old credential is void.
            self.inner.device_credentials.clear();
        }
        Ok(Enrolled {
            device_id: d.id,
            credential,
            heartbeat_secs: 60,
            poll_wait_secs: self.config().agent_poll_max_secs,
        })
    }

    /// The device a credential belongs to (revoked credentials are refused).
    pub async fn authenticate_device(&self, credential: &str) -> Result<DeviceRow, AppError> {
        let mut tx = self.store().read().await?;
        let d = tx
            .find_device_by_credential(&crypto::sha256_hex(credential))
            .await?
            .ok_or(AppError::Unauthenticated("unknown device credential"))?;
        if d.revoked_at.is_some() {
            return Err(AppError::Unauthenticated("device credential revoked"));
        }
        Ok(d)
    }

    /// The id of the device a credential belongs to, as [`Self::authenticate_device`], answered
    /// from memory when the credential was found valid in the last few seconds (see
    /// [`crate::auth_cache`]): an agent's poll, results and next poll come together.
    pub async fn authenticate_device_id(&self, credential: &str) -> Result<String, AppError> {
        let key = crypto::sha256_hex(credential);
        self.inner
            .device_credentials
            .get_or_lookup(key, || {
                let (app, credential) = (self.clone(), credential.to_owned());
                async move { Ok(app.authenticate_device(&credential).await?.id) }
            })
            .await
    }

    /// Records a heartbeat. Docking a checked-out device checks it in when its group says so.
    pub async fn device_heartbeat(
        &self,
        device_id: &str,
        input: HeartbeatInput,
    ) -> Result<HeartbeatAnswer, AppError> {
        let mut errors = ValidationErrors::new();
        if input.battery.is_some_and(|b| !(0..=100).contains(&b)) {
            errors.add("battery", "must be a percentage from 0 to 100");
        }
        for (f, v, max) in [
            ("location", &input.location, 80),
            ("os_version", &input.os_version, 40),
        ] {
            if v.as_ref().is_some_and(|v| !printable(v, max)) {
                errors.add(f, format!("must be at most {max} characters of text"));
            }
        }
        if let Some(apps) = &input.apps {
            dd::check_inventory(apps, "apps", &mut errors);
        }
        if let Some(c) = &input.appconfig {
            dd::check_reported_config(c, "appconfig", &mut errors);
        }
        errors.into_result()?;
        let now = now_ms();
        let mut tx = self.store().begin().await?;
        let mut d = tx
            .lock_device(device_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {device_id}")))?;
        let group = tx.get_device_group(&d.group_id).await?.map(group_view);
        let was_docked = d.docked;
        if let Some(b) = input.battery {
            if b < 20 && d.battery.is_none_or(|old| old >= 20) {
                self.event(&mut *tx, &d.id, "battery_low", json!({"battery": b}))
                    .await?;
            }
            d.battery = Some(b);
        }
        d.charging = input.charging.or(d.charging);
        if let Some(dock) = input.docked {
            if was_docked != Some(dock) {
                self.event(
                    &mut *tx,
                    &d.id,
                    if dock { "docked" } else { "undocked" },
                    json!({}),
                )
                .await?;
            }
            d.docked = Some(dock);
        }
        d.reported_location = input.location.or(d.reported_location);
        d.os_version = input.os_version.or(d.os_version);
        if let Some(apps) = &input.apps {
            let s = to_json(apps)?;
            if s != d.apps {
                self.event(
                    &mut *tx,
                    &d.id,
                    "apps_changed",
                    json!({"count": apps.len()}),
                )
                .await?;
                d.apps = s;
            }
        }
        if let Some(c) = &input.appconfig {
            let s = to_json(c)?;
            if s != d.appconfig {
                self.event(
                    &mut *tx,
                    &d.id,
                    "appconfig_changed",
                    json!({"apps": c.keys().collect::<Vec<_>>()}),
                )
                .await?;
                d.appconfig = s;
            }
        }
        if let Some(g) = &group {
            d.readiness = readiness_json(&d, &g.required_apps);
        }
        d.last_heartbeat_at = Some(now);
        d.updated_at = now;
        tx.update_device(&d).await?;
        let docked_now = input.docked == Some(true) && was_docked != Some(true);
        // Lost mode ends when the device is put back on a dock (off, then on again).
        let redocked = input.docked == Some(true) && was_docked == Some(false);
        if redocked && d.lost_at.is_some() {
            d.lost_at = None;
            d.lost_reason = None;
            tx.update_device(&d).await?;
            self.event(&mut *tx, &d.id, "found", json!({})).await?;
            self.device_audit(&mut *tx, &d, "device.found", json!({"how": "docked"}))
                .await?;
            self.device_alert(&mut *tx, "device.found", &d, json!({"how": "docked"}))
                .await?;
        }
        if docked_now
            && d.status == "checked_out"
            && group.as_ref().is_some_and(|g| g.checkin_on_dock)
        {
            self.checkin_in_tx(&mut *tx, d.clone(), group.as_ref(), "dock", None)
                .await?;
        }
        let waiting = !tx
            .deliverable_commands(&d.id, now, now - REDELIVER_MS)
            .await?
            .is_empty();
        let d = tx.get_device(&d.id).await?.unwrap_or(d);
        let holder = match &d.holder_id {
            Some(h) => tx.get_device_user(h).await?.map(|u| u.display_name),
            None => None,
        };
        tx.commit().await?;
        Ok(HeartbeatAnswer {
            ready: d.readiness == "[]",
            status: d.status,
            holder,
            commands_waiting: waiting,
        })
    }

    /// Hands a device its pending commands, waiting up to `wait` for one to appear.
    pub async fn poll_commands(
        &self,
        device_id: &str,
        wait: Duration,
    ) -> Result<Vec<AgentCommand>, AppError> {
        // An agent's poll and results are background work: staff requests go first.
        switchboard_store::background(self.poll_commands_inner(device_id, wait)).await
    }

    async fn poll_commands_inner(
        &self,
        device_id: &str,
        wait: Duration,
    ) -> Result<Vec<AgentCommand>, AppError> {
        let wait = wait.min(Duration::from_secs(self.config().agent_poll_max_secs));
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.device_waiter(device_id);
        let mut woken = false;
        loop {
            let notified = waiter.notified();
            let out = self.take_commands(device_id, woken).await?;
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            // Woken by this process at once; commands queued by another replica are seen
            // within a few seconds (thousands of waiting agents must not query every second).
            woken = tokio::select! {
                () = notified => true,
                () = tokio::time::sleep(CROSS_REPLICA_RECHECK) => false,
                () = tokio::time::sleep_until(deadline) => false,
            };
        }
    }

    /// Hands out the device's deliverable commands. Most polls find none, so a read comes
    /// first and only commands found open a write transaction; after a wake-up (commands were
    /// just queued for this device) the read is skipped.
    async fn take_commands(
        &self,
        device_id: &str,
        woken: bool,
    ) -> Result<Vec<AgentCommand>, AppError> {
        let now = now_ms();
        if !woken {
            let mut tx = self.store().read().await?;
            let pending = tx
                .deliverable_commands(device_id, now, now - REDELIVER_MS)
                .await?;
            drop(tx);
            if pending.is_empty() {
                return Ok(Vec::new());
            }
        }
        // One statement, committed on its own; a PIN to hand over is read after it.
        let delivered = self
            .store()
            .deliver_commands(device_id, now, now - REDELIVER_MS)
            .await?;
        let mut secrets = if delivered.iter().any(|c| c.secret_ref.is_some()) {
            Some(self.store().read().await?)
        } else {
            None
        };
        let mut out = Vec::with_capacity(delivered.len());
        for c in delivered {
            let mut params: Value = serde_json::from_str(&c.params).unwrap_or_else(|_| json!({}));
            if let (Some(r), Some(tx)) = (&c.secret_ref, secrets.as_mut()) {
                let pin = match self.get_secret(&mut **tx, r).await {
                    Ok(pin) => pin,
                    // Deleted since: a check-in made the command moot (it is skipped).
                    Err(AppError::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                params["pin"] = Value::String(String::from_utf8_lossy(&pin).into_owned());
            }
            out.push(AgentCommand {
                id: c.id,
                kind: c.kind,
                params,
                expires_at: c.expires_at,
            });
        }
        Ok(out)
    }

    /// Records a command's result. Repeating the same result is harmless; a different one for a
    /// finished command, or a result for another device's command, changes nothing.
    pub async fn command_result(
        &self,
        device_id: &str,
        command_id: &str,
        input: CommandResultInput,
    ) -> Result<CommandView, AppError> {
        let (state, detail) = checked_result(&input.status, input.detail, "")?;
        let mut out = self
            .record_results(device_id, vec![(command_id.to_owned(), state, detail)])
            .await?;
        out.pop()
            .unwrap_or_else(|| Err(AppError::Internal("no outcome".to_owned())))
    }

    /// Records the results of several commands in one transaction (an agent that ran the
    /// commands of one poll reports them together). The report is checked as a whole first:
    /// one malformed result changes nothing. Each result then has its own outcome; a check-in
    /// whose steps changed is settled once, after all of them.
    pub async fn command_results(
        &self,
        device_id: &str,
        items: Vec<CommandResultItem>,
    ) -> Result<Vec<CommandResultOutcome>, AppError> {
        let mut errors = ValidationErrors::new();
        if items.is_empty() || items.len() > MAX_RESULTS_PER_REPORT {
            errors.add(
                "results",
                format!("give 1 to {MAX_RESULTS_PER_REPORT} results"),
            );
        }
        let mut checked = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if checked.iter().any(|(id, _, _)| *id == item.id) {
                errors.add(
                    &format!("results[{i}].id"),
                    "the same command twice in one report",
                );
            }
            match checked_result(&item.status, item.detail, &format!("results[{i}].")) {
                Ok((state, detail)) => checked.push((item.id, state, detail)),
                Err(e) => errors.errors.extend(e.errors),
            }
        }
        errors.into_result()?;
        let ids: Vec<String> = checked.iter().map(|(id, _, _)| id.clone()).collect();
        let outcomes = self.record_results(device_id, checked).await?;
        Ok(ids
            .into_iter()
            .zip(outcomes)
            .map(|(id, r)| match r {
                Ok(view) => CommandResultOutcome {
                    id,
                    outcome: "recorded".to_owned(),
                    command: Some(view),
                    error: None,
                },
                Err(AppError::NotFound(why)) => CommandResultOutcome {
                    id,
                    outcome: "not_found".to_owned(),
                    command: None,
                    error: Some(format!("no {why}")),
                },
                Err(e) => CommandResultOutcome {
                    id,
                    outcome: "conflict".to_owned(),
                    command: None,
                    error: Some(e.to_string()),
                },
            })
            .collect())
    }

    /// Checked results `(command, state, detail)` of one device in one transaction: every read
    /// first, then all writes together (one round trip on PostgreSQL). The outer error fails
    /// the whole report; an inner one refuses that result only.
    async fn record_results(
        &self,
        device_id: &str,
        checked: Vec<(String, String, String)>,
    ) -> Result<Vec<Result<CommandView, AppError>>, AppError> {
        let mut tx = switchboard_store::background(self.store().begin()).await?;
        let ids: Vec<String> = checked.iter().map(|(id, _, _)| id.clone()).collect();
        let mine = |rows: Vec<CommandRow>| {
            rows.into_iter()
                .filter(|c| c.device_id == device_id)
                .map(|c| (c.id.clone(), c))
        };
        let mut commands: HashMap<String, CommandRow> =
            mine(tx.get_commands(&ids).await?).collect();
        // Each check-in of these commands locked once, in the report's order, with its steps;
        // then the commands read again under those locks (another writer may have finished
        // them meanwhile).
        let mut open = Vec::new();
        for id in &ids {
            if let Some(ch) = commands.get(id).and_then(|c| c.checkin_id.clone())
                && !open.iter().any(|s: &Settling| s.checkin.id == ch)
            {
                open_settling(&mut *tx, &mut open, &ch).await?;
            }
        }
        if tx.row_locks() && !open.is_empty() {
            commands.extend(mine(tx.get_commands(&ids).await?));
        }
        let mut writes = Vec::new();
        let mut out = Vec::with_capacity(checked.len());
        for (id, state, detail) in checked {
            let r = self
                .record_result(
                    &mut *tx,
                    (&id, commands.remove(&id)),
                    &state,
                    &detail,
                    &mut open,
                    &mut writes,
                )
                .await?;
            out.push(r);
        }
        self.settle_all(&mut *tx, open, &mut writes).await?;
        tx.write_all(&writes).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// One command's result inside `tx` (the command as read, `None` when it is not this
    /// device's), its writes added to `writes`. The outer error fails the transaction; the inner
    /// one (not found, conflict) refuses this result before anything of it was written. The
    /// step of a check-in changes in `open` (its check-in locked there by the caller, which
    /// settles it).
    async fn record_result(
        &self,
        tx: &mut dyn Tx,
        (command_id, command): (&str, Option<CommandRow>),
        state: &str,
        detail: &str,
        open: &mut [Settling],
        writes: &mut Vec<Write>,
    ) -> Result<Result<CommandView, AppError>, AppError> {
        let now = now_ms();
        let Some(mut c) = command else {
            return Ok(Err(AppError::NotFound(format!(
                "command {command_id} of this device"
            ))));
        };
        let device_id = c.device_id.clone();
        let settling = c
            .checkin_id
            .as_ref()
            .and_then(|ch| open.iter().position(|s| s.checkin.id == *ch));
        match c.state.as_str() {
            s if s == state => return Ok(Ok(command_view(&c))),
            "succeeded" | "failed" | "skipped" => {
                return Ok(Err(AppError::Conflict(format!(
                    "command {command_id} already reported `{}`",
                    c.state
                ))));
            }
            "expired" => {
                return Ok(Err(AppError::Conflict(format!(
                    "command {command_id} expired before its result arrived"
                ))));
            }
            _ => {}
        }
        c.state = state.to_owned();
        c.finished_at = Some(now);
        c.result = Some(detail.to_owned()).filter(|d| !d.is_empty());
        if let Some(r) = c.secret_ref.take() {
            writes.push(Write::DeleteSecret(r));
        }
        if state == "succeeded" && (c.kind == "set_pin" || c.kind == "clear_pin") {
            let mut d = tx
                .lock_device(&device_id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("device {device_id}")))?;
            d.pin_set = c.kind == "set_pin";
            d.updated_at = now;
            tx.update_device(&d).await?;
        }
        writes.push(device_event(
            &device_id,
            now,
            "command_result",
            &json!({"command": c.id, "kind": c.kind, "status": state}),
        ));
        if let (Some(i), Some(pos)) = (settling, c.position) {
            let (st, text) = match state {
                "succeeded" => (
                    StepStatus::Done,
                    if detail.is_empty() {
                        "done on the device".to_owned()
                    } else {
                        detail.to_owned()
                    },
                ),
                "skipped" => (
                    StepStatus::Skipped,
                    if detail.is_empty() {
                        "not applicable on this device".to_owned()
                    } else {
                        detail.to_owned()
                    },
                ),
                _ => (
                    StepStatus::Failed,
                    if detail.is_empty() {
                        "the device reported a failure".to_owned()
                    } else {
                        format!("the device reported: {detail}")
                    },
                ),
            };
            open[i].change(pos, now, |s| {
                s.status = st.as_str().to_owned();
                s.detail = text;
                s.attempts += 1;
            });
        }
        let view = command_view(&c);
        writes.push(Write::UpdateCommand(c));
        Ok(Ok(view))
    }

    /// Settles the check-ins of `open` whose steps changed, one after the other: writes
    /// pending before a second one are sent first, so it reads what the first wrote.
    async fn settle_all(
        &self,
        tx: &mut dyn Tx,
        open: Vec<Settling>,
        writes: &mut Vec<Write>,
    ) -> Result<(), AppError> {
        for (i, s) in open
            .into_iter()
            .filter(|s| !s.changed.is_empty())
            .enumerate()
        {
            if i > 0 {
                tx.write_all(&std::mem::take(writes)).await?;
            }
            self.settle_checkin(tx, s, writes).await?;
        }
        Ok(())
    }

    /// Works out a check-in's status and its device's after its steps changed (in `s`), adds
    /// the writes to `writes` and returns the check-in as it will stand.
    async fn settle_checkin(
        &self,
        tx: &mut dyn Tx,
        s: Settling,
        writes: &mut Vec<Write>,
    ) -> Result<CheckinRow, AppError> {
        let Settling {
            checkin: mut c,
            steps,
            changed,
        } = s;
        writes.extend(
            steps
                .iter()
                .filter(|s| changed.contains(&s.position))
                .cloned()
                .map(Write::UpdateCheckinStep),
        );
        let status =
            |s: &CheckinStepRow| StepStatus::parse(&s.status).unwrap_or(StepStatus::Pending);
        let mandatory: Vec<_> = steps
            .iter()
            .filter(|s| s.on_device && s.mandatory)
            .collect();
        let now = now_ms();
        // Only the device's own steps decide its status: after a server step (an Epic logout)
        // it stands as the last device step left it, and its row is neither read nor locked.
        let device_step_changed = steps
            .iter()
            .any(|s| s.on_device && changed.contains(&s.position));
        if device_step_changed
            && let Some(mut d) = tx.lock_device(&c.device_id).await?
            && d.checkout_id.is_none()
            && d.status == DeviceStatus::Returning.as_str()
        {
            let next = if mandatory.iter().any(|s| status(s) == StepStatus::Failed) {
                Some(DeviceStatus::Attention)
            } else if mandatory
                .iter()
                .all(|s| matches!(status(s), StepStatus::Done | StepStatus::Skipped))
            {
                Some(DeviceStatus::Available)
            } else {
                None
            };
            if let Some(n) = next {
                d.status = n.as_str().to_owned();
                d.updated_at = now;
                writes.push(device_event(
                    &d.id,
                    now,
                    n.as_str(),
                    &json!({"checkin": c.id}),
                ));
                writes.push(Write::UpdateDevice(Box::new(d)));
            }
        }
        if c.completed_at.is_none()
            && let (done, Some(at)) = checkin_status(&steps, now)
        {
            c.completed_at = Some(at);
            c.status = done.to_owned();
            writes.push(Write::UpdateCheckin(c.clone()));
        }
        Ok(c)
    }

    // --- check-out

    /// Checks a device out (kiosk, operator). `idempotency_key` makes a retried request return
    /// the first answer instead of a second device.
    pub async fn checkout(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: CheckoutInput,
        source: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Checkout, AppError> {
        self.checkout_inner(p, ctx, input, source, idempotency_key)
            .await
            .and_then(|r| r.map_err(AppError::from))
    }

    /// Like [`App::checkout`], with a refusal told apart from failures (for the kiosk).
    pub async fn checkout_inner(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        input: CheckoutInput,
        source: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Result<Checkout, Refusal>, AppError> {
        if let Some(pin) = &input.pin
            && let Err(e) = dd::check_pin(pin)
        {
            return Ok(Err(Refusal::BadPin(e)));
        }
        let key = self.badge_key().await?;
        let mut tx = self.store().begin().await?;
        let scope = format!("checkout:{}", p.actor());
        let request_digest = idempotency_digest(
            &json!({"badge": input.badge.as_ref().map(|b| crypto::sha256_hex(b)), "user": input.user, "device": input.device, "location": input.location, "pin": input.pin.is_some()}),
        );
        if let Some(k) = idempotency_key
            && let Some(prev) = replay::<Checkout>(&mut *tx, &scope, k, &request_digest).await?
        {
            return Ok(Ok(prev));
        }
        let user = if let Some(b) = &input.badge {
            match self.resolve_badge(&mut *tx, &key, b).await? {
                Some(u) => u,
                None => return Ok(Err(Refusal::UnknownBadge)),
            }
        } else if let Some(u) = &input.user {
            match tx.get_device_user(u).await? {
                Some(u) => u,
                None => return Ok(Err(Refusal::UnknownUser(u.clone()))),
            }
        } else {
            return Err(ValidationErrors::single("badge", "give a badge or a user").into());
        };
        let device = match (&input.device, &input.location) {
            (Some(dev), _) => match tx.get_device(dev).await? {
                Some(d) => d,
                None => return Ok(Err(Refusal::UnknownDevice(dev.clone()))),
            },
            (None, Some(loc)) => {
                let Some(l) = tx.get_location(loc).await? else {
                    return Ok(Err(Refusal::UnknownLocation(loc.clone())));
                };
                let filter = DeviceFilter {
                    status: Some("available".to_owned()),
                    location_id: Some(l.id.clone()),
                    limit: 10_000,
                    ..DeviceFilter::default()
                };
                let list = tx.list_devices(&filter).await?;
                let candidates: Vec<dd::Candidate> = list
                    .iter()
                    .filter(|d| d.revoked_at.is_none())
                    .map(|d| dd::Candidate {
                        id: d.id.clone(),
                        battery: d.battery,
                        last_heartbeat_at: d.last_heartbeat_at,
                        ready: d.readiness == "[]",
                    })
                    .collect();
                let fresh =
                    i64::try_from(self.config().device_heartbeat_fresh_secs).unwrap_or(600) * 1000;
                match dd::pick_device(&candidates, now_ms(), fresh) {
                    Some(c) => list
                        .into_iter()
                        .find(|d| d.id == c.id)
                        .ok_or_else(|| AppError::Internal("picked device vanished".to_owned()))?,
                    None => return Ok(Err(Refusal::NoneReady(l.name))),
                }
            }
            (None, None) => return Ok(Err(Refusal::NoTarget)),
        };
        let r = self
            .checkout_device(
                &mut *tx,
                p,
                ctx,
                &user,
                device,
                input.pin.as_deref(),
                false,
                source,
            )
            .await?;
        let out = match r {
            Ok(c) => c,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if let Some(k) = idempotency_key {
            remember(&mut *tx, &scope, k, &request_digest, 201, &out).await?;
        }
        tx.commit().await?;
        self.wake_device(&out.device.id);
        Ok(Ok(out))
    }

    #[allow(clippy::too_many_arguments)]
    async fn checkout_device(
        &self,
        tx: &mut dyn Tx,
        p: &Principal,
        ctx: &RequestContext,
        user: &DeviceUserRow,
        device: DeviceRow,
        pin: Option<&str>,
        pin_set_by_device: bool,
        source: &str,
    ) -> Result<Result<Checkout, Refusal>, AppError> {
        if user.disabled {
            return Ok(Err(Refusal::UserDisabled));
        }
        tx.lock_device_user(&user.id).await?;
        let limit = user
            .device_limit
            .unwrap_or_else(|| i64::from(self.config().device_limit_per_user));
        let held =
            i64::try_from(tx.open_checkouts(Some(&user.id), None).await?.len()).unwrap_or(i64::MAX);
        if held >= limit {
            return Ok(Err(Refusal::AtLimit(held)));
        }
        let Some(device) = tx.lock_device(&device.id).await? else {
            return Ok(Err(Refusal::UnknownDevice(device.id)));
        };
        if device.revoked_at.is_some() {
            return Ok(Err(Refusal::DeviceNotAvailable(
                device.name,
                "revoked".to_owned(),
            )));
        }
        if device.status != "available" {
            return Ok(Err(Refusal::DeviceNotAvailable(
                device.name,
                device.status.replace('_', " "),
            )));
        }
        let reasons: Vec<String> = parse_json(&device.readiness);
        if !reasons.is_empty() {
            return Ok(Err(Refusal::DeviceNotReady(device.name, reasons)));
        }
        let group = tx
            .get_device_group(&device.group_id)
            .await?
            .ok_or_else(|| AppError::Internal("device group missing".to_owned()))?;
        let now = now_ms();
        let checkout = CheckoutRow {
            id: new_id("co_"),
            device_id: device.id.clone(),
            user_id: user.id.clone(),
            location_id: device.location_id.clone(),
            source: source.to_owned(),
            pin_set: pin.is_some() || pin_set_by_device,
            started_at: now,
            due_at: now + group.lending_minutes * 60_000,
            ended_at: None,
            checkin_id: None,
        };
        if !tx
            // A PIN asked for counts as set until a check-in removes it, even if the agent has
            // not confirmed it yet: the check-in must never leave a PIN behind.
            .take_device(&device.id, &user.id, &checkout.id, checkout.pin_set, now)
            .await?
        {
            return Ok(Err(Refusal::DeviceNotAvailable(
                device.name,
                "taken".to_owned(),
            )));
        }
        tx.insert_checkout(&checkout).await.map_err(|e| match e {
            switchboard_store::StoreError::Conflict(_) => AppError::Conflict(format!(
                "device {} was just checked out by someone else",
                device.name
            )),
            other => other.into(),
        })?;
        let message = format!("Ready for {}", user.display_name);
        let ttl = self.command_ttl_ms();
        tx.insert_command(&command_row(
            &device.id,
            "show_ready",
            &json!({"message": message, "user": user.display_name, "username": user.username}),
            now,
            ttl,
        ))
        .await?;
        if let Some(pin) = pin {
            let mut c = command_row(&device.id, "set_pin", &json!({}), now, ttl);
            c.position = Some(1);
            c.secret_ref = Some(
                self.put_secret(
                    tx,
                    &format!("command:{}", c.id),
                    "device_pin",
                    pin.as_bytes(),
                )
                .await?,
            );
            tx.insert_command(&c).await?;
        }
        self.event(
            tx,
            &device.id,
            "checked_out",
            json!({"user": user.username, "source": source, "checkout": checkout.id}),
        )
        .await?;
        let ev = AuditEvent::new("", "device.checked_out", format!("device:{}", device.id)).with_details(json!({
            "checkout": checkout.id, "user_id": user.id, "username": user.username, "source": source, "pin": checkout.pin_set,
        }));
        self.audit(tx, p, ctx, ev).await?;
        metrics::counter!("switchboard_device_checkouts_total", "source" => source.to_owned())
            .increment(1);
        Ok(Ok(Checkout {
            id: checkout.id,
            device: device_brief(&device),
            user: brief(user),
            started_at: now,
            due_at: checkout.due_at,
            pin_set: checkout.pin_set,
            message,
        }))
    }

    /// Check-out on the device itself: username + password, or a badge.
    pub async fn agent_checkout(
        &self,
        device_id: &str,
        input: AgentCheckoutInput,
    ) -> Result<Checkout, AppError> {
        let key = self.badge_key().await?;
        let mut tx = self.store().begin().await?;
        let device = tx
            .get_device(device_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {device_id}")))?;
        let user = if let Some(b) = &input.badge {
            self.resolve_badge(&mut *tx, &key, b)
                .await?
                .ok_or(Refusal::UnknownBadge)?
        } else {
            let (Some(u), Some(pw)) = (&input.username, &input.password) else {
                return Err(ValidationErrors::single(
                    "username",
                    "give username and password, or badge",
                )
                .into());
            };
            let row = tx.get_device_user(u).await?;
            let hash = row
                .as_ref()
                .and_then(|r| r.password_hash.clone())
                .unwrap_or_else(|| crate::accounts::dummy_hash().to_owned());
            let pw = pw.clone();
            let ok =
                crate::accounts::blocking(move || crate::accounts::verify_password(&pw, &hash))
                    .await?;
            match row {
                Some(r) if ok && r.password_hash.is_some() => r,
                _ => return Err(Refusal::BadCredentials.into()),
            }
        };
        let p = Principal::station(format!("device:{}", device.serial));
        let out = self
            .checkout_device(
                &mut *tx,
                &p,
                &RequestContext::default(),
                &user,
                device,
                None,
                input.pin_set,
                "device",
            )
            .await??;
        tx.commit().await?;
        self.wake_device(&out.device.id);
        Ok(out)
    }

    // --- check-in

    /// Checks a device in. A device that is not checked out answers with its last receipt.
    pub async fn checkin(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        device: &str,
        requested_by: &str,
    ) -> Result<Receipt, AppError> {
        if let Some(answer) = self.checkin_batched(p, ctx, device, requested_by).await {
            return answer;
        }
        self.checkin_alone(p, ctx, device, requested_by).await
    }

    /// A check-in in a transaction of its own.
    pub(crate) async fn checkin_alone(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        device: &str,
        requested_by: &str,
    ) -> Result<Receipt, AppError> {
        let mut tx = self.store().begin().await?;
        let (d, group, user) = tx
            .lock_device_with_group_and_holder(device)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {device}")))?;
        if d.status != "checked_out" {
            return self.not_checked_out(&mut *tx, &d).await;
        }
        let group = group.map(group_view);
        let (c, rows) = self
            .checkin_in_tx(
                &mut *tx,
                d.clone(),
                group.as_ref(),
                requested_by,
                Some((p, ctx)),
            )
            .await?;
        let r = receipt_view(&c, &d, user.as_ref(), &rows);
        tx.commit().await?;
        self.wake_device(&d.id);
        Ok(r)
    }

    /// The answer to checking in a device that is not checked out: the receipt of its last
    /// check-in (`already_checked_in`), or a conflict when it never was.
    pub(crate) async fn not_checked_out(
        &self,
        tx: &mut dyn Tx,
        d: &DeviceRow,
    ) -> Result<Receipt, AppError> {
        let last = tx.device_checkins(&d.id, 1).await?;
        let Some(c) = last.into_iter().next() else {
            return Err(AppError::Conflict(format!(
                "device {} is not checked out and has never been",
                d.name
            )));
        };
        let mut r = self.receipt_in(tx, &c).await?;
        r.already_checked_in = true;
        Ok(r)
    }

    /// Check-in from the device's agent.
    pub async fn agent_checkin(&self, device: &DeviceRow) -> Result<Receipt, AppError> {
        let p = Principal::station(format!("device:{}", device.serial));
        self.checkin(&p, &RequestContext::default(), &device.id, "device")
            .await
    }

    /// The check-in itself, inside `tx` with the device locked: ends the check-out, writes the
    /// receipt, queues the device's commands and the Epic logout jobs.
    pub(crate) async fn checkin_in_tx(
        &self,
        tx: &mut dyn Tx,
        mut d: DeviceRow,
        group: Option<&DeviceGroup>,
        requested_by: &str,
        audit: Option<(&Principal, &RequestContext)>,
    ) -> Result<(CheckinRow, Vec<CheckinStepRow>), AppError> {
        let now = now_ms();
        let checkout_id = d.checkout_id.clone().unwrap_or_default();
        let user_id = d.holder_id.clone().unwrap_or_default();
        let platform = Platform::parse(&d.platform).unwrap_or(Platform::Ios);
        let workflow = group
            .map(|g| g.workflows.for_platform(platform).to_vec())
            .unwrap_or_default();
        let steps = dd::steps_for_checkin(&workflow, d.pin_set);
        let config: ReportedConfig = parse_json(&d.appconfig);
        let checkin_id = new_id("ci_");
        // Every write of the check-in, sent together. First: the ended lending's commands that
        // were never confirmed are moot now.
        let mut writes = vec![Write::CancelLendingCommands {
            device_id: d.id.clone(),
            at: now,
            reason: "cancelled by check-in".to_owned(),
        }];
        let mut warnings = Vec::new();
        let mut rows = Vec::new();
        let mut commands = Vec::new();
        let mut logouts = Vec::new();
        let mut seen: HashMap<String, i64> = HashMap::new();
        let ttl = self.command_ttl_ms();
        for (i, s) in steps.iter().enumerate() {
            let position = i64::try_from(i).unwrap_or(0);
            let mut row = CheckinStepRow {
                checkin_id: checkin_id.clone(),
                position,
                action: s.action().to_owned(),
                spec: to_json(s)?,
                on_device: s.on_device(),
                mandatory: s.mandatory(),
                status: StepStatus::Pending.as_str().to_owned(),
                detail: String::new(),
                install_id: None,
                attempts: 0,
                outcome_unknown: false,
                repeats: 0,
                command_id: None,
                updated_at: now,
            };
            if s.on_device() {
                let params = match s {
                    StepSpec::ForceQuit { app_id, .. } | StepSpec::ClearData { app_id, .. } => {
                        json!({"app_id": app_id})
                    }
                    StepSpec::UniversalLinkLogout { url, .. } => json!({"url": url}),
                    _ => json!({}),
                };
                let mut c = command_row(&d.id, s.action(), &params, now, ttl);
                c.checkin_id = Some(checkin_id.clone());
                c.position = Some(position);
                row.command_id = Some(c.id.clone());
                row.detail = "sent to the device".to_owned();
                commands.push(c);
            } else {
                let (env_id, app, install) = match s {
                    StepSpec::EpicLogout {
                        environment_id,
                        app,
                    } => (
                        environment_id.as_str(),
                        app.as_str(),
                        dd::install_id(&config, app),
                    ),
                    StepSpec::EnhancedRoverLogout { environment_id } => {
                        let (id, w) = dd::enhanced_rover_install_id(&config);
                        warnings.extend(w);
                        (environment_id.as_str(), "Rover", id)
                    }
                    _ => (
                        "",
                        "",
                        InstallId::Unavailable("not a server-side step".to_owned()),
                    ),
                };
                match install {
                    InstallId::Known(id) if seen.contains_key(&id) => {
                        row.detail = format!(
                            "skipped: step {} already signs out Install ID {id} (with EpicMobileDeviceIDAppName false, Epic cannot tell the apps on one device apart)",
                            seen[&id] + 1
                        );
                        row.install_id = Some(id);
                        row.status = StepStatus::Skipped.as_str().to_owned();
                    }
                    InstallId::Known(id) => {
                        seen.insert(id.clone(), position);
                        row.detail = format!("queued: sign the user out of {app} in Epic");
                        logouts.push(jobs::new_job(
                            JOB_LOGOUT,
                            json!({"checkin_id": checkin_id, "position": position, "environment_id": env_id, "app": app, "install_id": id}),
                            now,
                            LOGOUT_MAX_ATTEMPTS,
                        ));
                        row.install_id = Some(id);
                    }
                    InstallId::Unavailable(why) => {
                        row.status = StepStatus::Skipped.as_str().to_owned();
                        row.detail = why;
                    }
                }
            }
            rows.push(row);
        }
        jobs::check_kinds(&logouts)?;
        let mandatory_left = rows.iter().any(|r| r.on_device && r.mandatory);
        let (status, completed_at) = checkin_status(&rows, now);
        let c = CheckinRow {
            id: checkin_id.clone(),
            device_id: d.id.clone(),
            checkout_id: checkout_id.clone(),
            user_id,
            requested_by: requested_by.to_owned(),
            status: status.to_owned(),
            warnings: to_json(&warnings)?,
            started_at: now,
            completed_at,
        };
        d.status = if mandatory_left {
            DeviceStatus::Returning
        } else {
            DeviceStatus::Available
        }
        .as_str()
        .to_owned();
        d.holder_id = None;
        d.checkout_id = None;
        d.updated_at = now;
        let event = device_event(
            &d.id,
            now,
            "checked_in",
            &json!({"checkin": checkin_id, "requested_by": requested_by, "steps": rows.len()}),
        );
        // The check-in first: its commands and steps refer to it.
        writes.extend([
            Write::InsertCheckin(c.clone()),
            Write::InsertCommands(commands),
            Write::InsertCheckinSteps(rows.clone()),
            Write::EnqueueJobs(logouts),
            Write::EndCheckout {
                id: checkout_id,
                at: now,
                checkin_id,
            },
            Write::UpdateDevice(Box::new(d)),
            event,
        ]);
        // Audited first, so that the entry goes out with the writes (one statement on
        // PostgreSQL).
        if let Some((p, ctx)) = audit {
            let ev = AuditEvent::new("", "device.checked_in", format!("device:{}", c.device_id))
                .with_details(json!({"checkin": c.id, "requested_by": requested_by}));
            self.audit(&mut *tx, p, ctx, ev).await?;
        }
        tx.write_all(&writes).await?;
        metrics::counter!("switchboard_device_checkins_total").increment(1);
        Ok((c, rows))
    }

    async fn receipt_in(&self, tx: &mut dyn Tx, c: &CheckinRow) -> Result<Receipt, AppError> {
        let c = tx.get_checkin(&c.id).await?.unwrap_or_else(|| c.clone());
        let d = tx
            .get_device(&c.device_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {}", c.device_id)))?;
        let u = tx.get_device_user(&c.user_id).await?;
        let steps = tx.checkin_steps(&c.id).await?;
        Ok(receipt_view(&c, &d, u.as_ref(), &steps))
    }

    pub async fn get_receipt(&self, id: &str) -> Result<Receipt, AppError> {
        let mut tx = self.store().read().await?;
        let c = tx
            .get_checkin(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("check-in {id}")))?;
        self.receipt_in(&mut *tx, &c).await
    }

    /// Server-side step totals of check-ins since `since` (benchmarks, dashboards).
    pub async fn logout_totals(&self, since: i64) -> Result<StepTotals, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx.step_totals(since).await?)
    }

    // --- reading devices

    pub async fn list_devices(&self, q: &DeviceQuery) -> Result<Vec<Device>, AppError> {
        let mut errors = ValidationErrors::new();
        let overdue_only = q.status.as_deref() == Some("overdue");
        if let Some(s) = q.status.as_deref().filter(|_| !overdue_only) {
            errors.check("status", DeviceStatus::parse(s));
        }
        if let Some(p) = &q.platform {
            errors.check("platform", Platform::parse(p));
        }
        if q.readiness
            .as_deref()
            .is_some_and(|r| r != "ready" && r != "not_ready")
        {
            errors.add("readiness", "must be ready or not_ready");
        }
        errors.into_result()?;
        let mut tx = self.store().read().await?;
        let filter = DeviceFilter {
            status: if overdue_only {
                Some("checked_out".to_owned())
            } else {
                q.status.clone()
            },
            location_id: q.location.clone(),
            platform: q.platform.clone(),
            group_id: q.group.clone(),
            limit: 100_000,
        };
        let rows = tx.list_devices(&filter).await?;
        let users: HashMap<String, DeviceUserRow> = tx
            .list_device_users()
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        let due: HashMap<String, i64> = tx
            .open_checkouts(None, None)
            .await?
            .into_iter()
            .map(|c| (c.device_id, c.due_at))
            .collect();
        let now = now_ms();
        Ok(rows
            .iter()
            .map(|d| {
                device_view(
                    d,
                    d.holder_id.as_ref().and_then(|h| users.get(h)),
                    due.get(&d.id).copied(),
                    now,
                )
            })
            .filter(|d| !overdue_only || d.overdue)
            .filter(|d| match q.readiness.as_deref() {
                Some("ready") => d.ready,
                Some("not_ready") => !d.ready,
                _ => true,
            })
            .collect())
    }

    pub async fn get_device(&self, id: &str) -> Result<DeviceDetail, AppError> {
        let mut tx = self.store().read().await?;
        let d = tx
            .get_device(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {id}")))?;
        let holder = match &d.holder_id {
            Some(h) => tx.get_device_user(h).await?,
            None => None,
        };
        let checkouts = tx.device_checkouts(&d.id, 50).await?;
        let due = checkouts
            .iter()
            .find(|c| c.ended_at.is_none())
            .map(|c| c.due_at);
        let view = device_view(&d, holder.as_ref(), due, now_ms());
        let group_name = tx
            .get_device_group(&d.group_id)
            .await?
            .map(|g| g.name)
            .unwrap_or_default();
        let mut receipts = Vec::new();
        for c in tx.device_checkins(&d.id, 10).await? {
            receipts.push(self.receipt_in(&mut *tx, &c).await?);
        }
        let commands = tx.device_commands(&d.id, 30).await?;
        let events = tx.device_events(&d.id, 100).await?;
        let mut users: HashMap<String, String> = HashMap::new();
        for c in &checkouts {
            if !users.contains_key(&c.user_id)
                && let Some(u) = tx.get_device_user(&c.user_id).await?
            {
                users.insert(c.user_id.clone(), u.display_name);
            }
        }
        let mut timeline: Vec<TimelineEntry> = Vec::new();
        for e in &events {
            timeline.push(TimelineEntry {
                at: e.at,
                kind: "event".to_owned(),
                text: event_text(&e.kind, &e.detail),
            });
        }
        for c in &commands {
            timeline.push(TimelineEntry {
                at: c.created_at,
                kind: "command".to_owned(),
                text: format!("command {} → {}", c.kind, c.state),
            });
        }
        for c in &checkouts {
            let who = users
                .get(&c.user_id)
                .cloned()
                .unwrap_or_else(|| c.user_id.clone());
            timeline.push(TimelineEntry {
                at: c.started_at,
                kind: "checkout".to_owned(),
                text: format!(
                    "checked out to {who} ({}), due {}",
                    c.source,
                    fmt_time(c.due_at)
                ),
            });
        }
        for r in &receipts {
            let done = r.steps.iter().filter(|s| s.status == "done").count();
            timeline.push(TimelineEntry {
                at: r.started_at,
                kind: "checkin".to_owned(),
                text: format!(
                    "checked in ({}): {done}/{} steps done, {}",
                    r.requested_by,
                    r.steps.len(),
                    r.status.replace('_', " ")
                ),
            });
        }
        timeline.sort_by_key(|e| std::cmp::Reverse(e.at));
        timeline.truncate(150);
        Ok(DeviceDetail {
            device: view,
            group_name,
            receipts,
            commands: commands.iter().map(command_view).collect(),
            timeline,
        })
    }

    /// Counts per location for the dashboard.
    pub async fn location_summaries(&self) -> Result<Vec<LocationSummary>, AppError> {
        let devices = self.list_devices(&DeviceQuery::default()).await?;
        let locations = self.list_locations().await?;
        let mut out: Vec<LocationSummary> = locations
            .into_iter()
            .map(|l| LocationSummary {
                location_id: l.id,
                name: l.name,
                available: 0,
                checked_out: 0,
                overdue: 0,
                returning: 0,
                attention: 0,
                not_ready: 0,
                lost: 0,
            })
            .collect();
        for d in devices {
            let Some(s) = out
                .iter_mut()
                .find(|s| Some(&s.location_id) == d.location_id.as_ref())
            else {
                continue;
            };
            if d.lost_at.is_some() {
                s.lost += 1;
            }
            match d.status.as_str() {
                "available" if d.ready => s.available += 1,
                "available" => s.not_ready += 1,
                "checked_out" => {
                    s.checked_out += 1;
                    if d.overdue {
                        s.overdue += 1;
                    }
                }
                "returning" => s.returning += 1,
                _ => s.attention += 1,
            }
        }
        Ok(out)
    }

    // --- operator actions on a device

    pub async fn update_device(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        input: DeviceUpdate,
    ) -> Result<Device, AppError> {
        let mut tx = self.store().begin().await?;
        let mut d = tx
            .lock_device(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {id}")))?;
        let mut errors = ValidationErrors::new();
        if let Some(n) = &input.name {
            if n.trim().is_empty() || !printable(n, 80) {
                errors.add("name", "must be 1-80 characters of text");
            }
            d.name = n.trim().to_owned();
        }
        if let Some(s) = &input.slot {
            if !printable(s, 40) {
                errors.add("slot", "must be at most 40 characters of text");
            }
            d.slot = Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        }
        if let Some(l) = &input.location_id {
            if tx.get_location(l).await?.is_none() {
                errors.add("location_id", format!("no location `{l}`"));
            }
            d.location_id = Some(l.clone());
        }
        if let Some(g) = &input.group_id {
            match tx.get_device_group(g).await? {
                None => errors.add("group_id", format!("no device group `{g}`")),
                Some(g) => {
                    d.group_id.clone_from(&g.id);
                    d.readiness = readiness_json(&d, &group_view(g).required_apps);
                }
            }
        }
        errors.into_result()?;
        d.updated_at = now_ms();
        tx.update_device(&d).await?;
        let ev = AuditEvent::new("", "device.updated", format!("device:{}", d.id))
            .with_details(json!({"name": d.name, "slot": d.slot, "location_id": d.location_id, "group_id": d.group_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(device_view(&d, None, None, now_ms()))
    }

    /// Revokes a device's credential: its agent is refused until it enrols again.
    pub async fn revoke_device(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let mut d = tx
            .lock_device(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {id}")))?;
        if d.revoked_at.is_some() {
            return Err(AppError::Conflict(format!(
                "device {} is already revoked",
                d.name
            )));
        }
        d.revoked_at = Some(now_ms());
        d.updated_at = now_ms();
        tx.update_device(&d).await?;
        self.event(&mut *tx, &d.id, "credential_revoked", json!({}))
            .await?;
        let ev = AuditEvent::new("", "device.revoked", format!("device:{}", d.id))
            .with_details(json!({"serial": d.serial}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.inner.device_credentials.clear();
        Ok(())
    }

    /// Marks a device that needed attention as available again (after someone checked it).
    pub async fn release_device(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<Device, AppError> {
        let mut tx = self.store().begin().await?;
        let mut d = tx
            .lock_device(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {id}")))?;
        if d.status != "attention" && d.status != "returning" {
            return Err(AppError::Conflict(format!(
                "device {} is {}, not waiting for attention",
                d.name,
                d.status.replace('_', " ")
            )));
        }
        d.status = "available".to_owned();
        d.updated_at = now_ms();
        tx.update_device(&d).await?;
        self.event(&mut *tx, &d.id, "released", json!({"by": p.actor()}))
            .await?;
        let ev = AuditEvent::new("", "device.released", format!("device:{}", d.id));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(device_view(&d, None, None, now_ms()))
    }

    /// Sends an operator's command (lock, message) to a device.
    pub async fn send_command(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        input: CommandInput,
    ) -> Result<CommandView, AppError> {
        let mut errors = ValidationErrors::new();
        let message = input.message.clone().unwrap_or_default();
        match input.kind.as_str() {
            "lock" => {}
            "show_message" | "lock_with_message" => {
                if message.trim().is_empty() || !printable(&message, 200) {
                    errors.add("message", "must be 1-200 characters of text");
                }
            }
            other => errors.add(
                "kind",
                format!("`{other}` is not lock, show_message or lock_with_message"),
            ),
        }
        errors.into_result()?;
        let mut tx = self.store().begin().await?;
        let d = tx
            .get_device(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {id}")))?;
        let c = command_row(
            &d.id,
            &input.kind,
            &json!({"message": message}),
            now_ms(),
            self.command_ttl_ms(),
        );
        tx.insert_command(&c).await?;
        let ev = AuditEvent::new("", "device.command_sent", format!("device:{}", d.id))
            .with_details(json!({"command": c.id, "kind": c.kind}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.wake_device(&d.id);
        Ok(command_view(&c))
    }

    /// Queues the device-events webhook (when one is configured) in `tx`.
    async fn device_alert(
        &self,
        tx: &mut dyn Tx,
        kind: &str,
        d: &DeviceRow,
        extra: Value,
    ) -> Result<(), AppError> {
        let Some(url) = self.config().device_events_webhook_url.clone() else {
            return Ok(());
        };
        let mut event = json!({
            "type": kind,
            "at": now_ms(),
            "device": {"id": d.id, "serial": d.serial, "name": d.name, "location_id": d.location_id},
        });
        if let (Value::Object(m), Value::Object(x)) = (&mut event, extra) {
            m.extend(x);
        }
        let payload = serde_json::to_value(jobs::WebhookPayload { url, event })
            .map_err(|e| AppError::Internal(e.to_string()))?;
        jobs::enqueue(tx, jobs::WEBHOOK_KIND, payload, None, Duration::ZERO, 20).await?;
        Ok(())
    }

    /// Puts a device into lost mode inside `tx`: locked with a message, alert sent, audited.
    async fn lost_in_tx(
        &self,
        tx: &mut dyn Tx,
        mut d: DeviceRow,
        reason: String,
        message: Option<String>,
    ) -> Result<DeviceRow, AppError> {
        let now = now_ms();
        let place = match &d.location_id {
            Some(l) => tx
                .get_location(l)
                .await?
                .map_or_else(|| l.clone(), |l| l.name),
            None => "the device desk".to_owned(),
        };
        let message =
            message.unwrap_or_else(|| format!("This device is lost. Please return it to {place}."));
        d.lost_at = Some(now);
        d.lost_reason = Some(reason.clone());
        d.updated_at = now;
        tx.update_device(&d).await?;
        tx.insert_command(&command_row(
            &d.id,
            "lock_with_message",
            &json!({"message": message}),
            now,
            self.command_ttl_ms(),
        ))
        .await?;
        self.event(tx, &d.id, "lost", json!({"reason": reason}))
            .await?;
        self.device_alert(
            tx,
            "device.lost",
            &d,
            json!({"reason": reason, "holder_id": d.holder_id}),
        )
        .await?;
        Ok(d)
    }

    /// An operator marks a device lost.
    pub async fn mark_lost(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
        input: LostInput,
    ) -> Result<Device, AppError> {
        if input
            .message
            .as_ref()
            .is_some_and(|m| m.trim().is_empty() || !printable(m, 200))
        {
            return Err(
                ValidationErrors::single("message", "must be 1-200 characters of text").into(),
            );
        }
        let mut tx = self.store().begin().await?;
        let d = tx
            .lock_device(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {id}")))?;
        if d.lost_at.is_some() {
            return Err(AppError::Conflict(format!(
                "device {} is already in lost mode",
                d.name
            )));
        }
        let reason = format!("marked lost by {}", p.actor());
        let d = self.lost_in_tx(&mut *tx, d, reason, input.message).await?;
        let ev = AuditEvent::new("", "device.lost", format!("device:{}", d.id))
            .with_details(json!({"serial": d.serial}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        self.wake_device(&d.id);
        Ok(device_view(&d, None, None, now_ms()))
    }

    /// Events the agent reports: an emergency unlock with the unlock PIN (no user involved).
    pub async fn agent_event(
        &self,
        device: &DeviceRow,
        input: AgentEventInput,
    ) -> Result<(), AppError> {
        if input.kind != "emergency_unlock" {
            return Err(ValidationErrors::single(
                "kind",
                format!("`{}` is not a known event (emergency_unlock)", input.kind),
            )
            .into());
        }
        if input.detail.as_ref().is_some_and(|m| !printable(m, 200)) {
            return Err(
                ValidationErrors::single("detail", "at most 200 characters of text").into(),
            );
        }
        let mut tx = self.store().begin().await?;
        let d = tx
            .lock_device(&device.id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {}", device.id)))?;
        self.event(
            &mut *tx,
            &d.id,
            "emergency_unlock",
            json!({"detail": input.detail}),
        )
        .await?;
        self.device_audit(
            &mut *tx,
            &d,
            "device.emergency_unlock",
            json!({"by": "unlock PIN", "holder_id": d.holder_id}),
        )
        .await?;
        self.device_alert(
            &mut *tx,
            "device.emergency_unlock",
            &d,
            json!({"by": "unlock PIN"}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Users with the devices they hold now.
    pub async fn device_user_holdings(&self) -> Result<Vec<(DeviceUser, usize)>, AppError> {
        let mut tx = self.store().read().await?;
        let open = tx.open_checkouts(None, None).await?;
        Ok(tx
            .list_device_users()
            .await?
            .into_iter()
            .map(|u| {
                let n = open.iter().filter(|c| c.user_id == u.id).count();
                (user_view(u), n)
            })
            .collect())
    }

    /// Queues the periodic sweep (expired commands) unless it is queued already.
    pub async fn schedule_device_sweep(&self, delay: Duration) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let slot = (now_ms() + i64::try_from(delay.as_millis()).unwrap_or(0)) / 15_000;
        jobs::enqueue(
            &mut *tx,
            JOB_SWEEP,
            json!({}),
            Some(format!("{JOB_SWEEP}:{slot}")),
            delay,
            5,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

fn event_text(kind: &str, detail: &str) -> String {
    let d: Value = serde_json::from_str(detail).unwrap_or(Value::Null);
    match kind {
        "enrolled" => "enrolled".to_owned(),
        "re_enrolled" => "enrolled again: the previous credential no longer works".to_owned(),
        "docked" => "docked".to_owned(),
        "undocked" => "taken off the dock".to_owned(),
        "battery_low" => format!("battery low ({}%)", d["battery"]),
        "apps_changed" => format!("app inventory changed ({} apps)", d["count"]),
        "appconfig_changed" => "reported AppConfig changed".to_owned(),
        "checked_out" => format!("checked out ({})", d["source"].as_str().unwrap_or("")),
        "checked_in" => format!("checked in ({})", d["requested_by"].as_str().unwrap_or("")),
        "command_result" => format!(
            "{} {}",
            d["kind"].as_str().unwrap_or("command"),
            d["status"].as_str().unwrap_or("")
        ),
        "available" => "available again: check-in steps on the device are done".to_owned(),
        "attention" => "needs attention: a mandatory check-in step failed on the device".to_owned(),
        "credential_revoked" => "device credential revoked".to_owned(),
        "released" => "released by an operator".to_owned(),
        "lost" => format!("lost mode: {}", d["reason"].as_str().unwrap_or("")),
        "found" => "docked again: lost mode ended".to_owned(),
        "emergency_unlock" => "unlocked by the emergency PIN (no user)".to_owned(),
        other => other.replace('_', " "),
    }
}

fn idempotency_digest(v: &Value) -> String {
    crypto::sha256_hex(&v.to_string())
}

async fn replay<T: DeserializeOwned>(
    tx: &mut dyn Tx,
    scope: &str,
    key: &str,
    digest: &str,
) -> Result<Option<T>, AppError> {
    if key.is_empty() || key.len() > 200 {
        return Err(ValidationErrors::single("Idempotency-Key", "must be 1-200 characters").into());
    }
    match tx.get_idempotency(scope, key).await? {
        None => Ok(None),
        Some(r) if r.request_digest == digest => serde_json::from_str(&r.response)
            .map(Some)
            .map_err(|e| AppError::Internal(e.to_string())),
        Some(_) => Err(ValidationErrors::single(
            "Idempotency-Key",
            "was already used for a different request",
        )
        .into()),
    }
}

async fn remember(
    tx: &mut dyn Tx,
    scope: &str,
    key: &str,
    digest: &str,
    status: i64,
    v: &impl Serialize,
) -> Result<(), AppError> {
    tx.put_idempotency(&IdempotencyRow {
        scope: scope.to_owned(),
        key: key.to_owned(),
        request_digest: digest.to_owned(),
        status,
        response: to_json(v)?,
        created_at: now_ms(),
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Attempts of an Epic logout before it is dead-lettered: with the back-off capped at 15 s this
/// rides out an Epic outage of about 45 minutes; an operator can retry it after that.
pub const LOGOUT_MAX_ATTEMPTS: u32 = 200;

/// `devices.epic_logout`: one DisassociateMobileDevice for one receipt step.
pub struct EpicLogout;

#[derive(Deserialize)]
struct LogoutPayload {
    checkin_id: String,
    position: i64,
    /// Known at check-in, so a first attempt needs no read before calling Epic.
    #[serde(default)]
    environment_id: Option<String>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    install_id: Option<String>,
}

#[async_trait]
impl JobHandler for EpicLogout {
    fn kind(&self) -> &'static str {
        JOB_LOGOUT
    }

    fn policy(&self, _defaults: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: LOGOUT_MAX_ATTEMPTS,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(15),
        }
    }

    async fn run(&self, app: &App, job: &JobRow) -> JobOutcome {
        let Ok(p) = serde_json::from_value::<LogoutPayload>(job.payload.clone()) else {
            return JobOutcome::Permanent {
                error: "malformed payload".to_owned(),
            };
        };
        match logout_step(app, &p, job).await {
            Ok(o) => o,
            Err(e) => JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            },
        }
    }
}

/// One attempt of a logout step. `attempt` is the job's attempt number (1 for the first): when
/// earlier attempts of the job recorded fewer answers than they made calls, an answer was lost (a
/// crash, or a lease that ran out), and Epic may already have acted.
async fn logout_step(app: &App, p: &LogoutPayload, job: &JobRow) -> Result<JobOutcome, AppError> {
    let attempt = job.attempts;
    let known = match (&p.environment_id, &p.app, &p.install_id) {
        (Some(e), Some(a), Some(i)) if attempt <= 1 => Some((e.clone(), a.clone(), i.clone())),
        _ => None,
    };
    let (env_id, app_name, install_id) = match known {
        Some(k) => k,
        None => {
            // A retry (or an older job): the step may be finished already; never call Epic again
            // after a known answer.
            let mut tx = app.store().read().await?;
            let Some(step) = tx.get_checkin_step(&p.checkin_id, p.position).await? else {
                return Ok(JobOutcome::Done);
            };
            drop(tx);
            if StepStatus::parse(&step.status).is_ok_and(StepStatus::is_final) {
                return Ok(JobOutcome::Done);
            }
            let spec: StepSpec =
                serde_json::from_str(&step.spec).map_err(|e| AppError::Internal(e.to_string()))?;
            let (env, name) = match spec {
                StepSpec::EpicLogout {
                    environment_id,
                    app,
                } => (environment_id, app),
                StepSpec::EnhancedRoverLogout { environment_id } => {
                    (environment_id, "Rover".to_owned())
                }
                _ => {
                    return Ok(JobOutcome::Permanent {
                        error: "not a server-side step".to_owned(),
                    });
                }
            };
            (env, name, step.install_id.unwrap_or_default())
        }
    };
    let call = match app.disassociate_device(&env_id, &install_id).await {
        Ok(a) => Ok(a),
        Err(AppError::NotFound(what)) => Err((
            StepStatus::Failed,
            format!("{what} not found: the Epic environment was removed"),
        )),
        Err(e) => Err((StepStatus::Retrying, format!("{e}; retrying"))),
    };
    if let Ok(a) = &call {
        let label = match a {
            dd::LogoutAttempt::Accepted => "accepted",
            dd::LogoutAttempt::InstallIdNotFound => "not_found",
            dd::LogoutAttempt::Status(_) => "error_status",
            dd::LogoutAttempt::TimedOut => "timeout",
            dd::LogoutAttempt::NotSent(_) => "unreachable",
            dd::LogoutAttempt::NoToken { .. } => "no_token",
        };
        metrics::counter!("switchboard_epic_logout_attempts_total", "outcome" => label)
            .increment(1);
    }
    record_attempt(app, p, job, &app_name, &install_id, call).await
}

/// Records one attempt's answer on its step (the check-in locked), settles the check-in when the
/// step is finished, and says whether the job is done.
async fn record_attempt(
    app: &App,
    p: &LogoutPayload,
    job: &JobRow,
    app_name: &str,
    install_id: &str,
    call: Result<dd::LogoutAttempt, (StepStatus, String)>,
) -> Result<JobOutcome, AppError> {
    let attempt = i64::from(job.attempts.max(1));
    let mut tx = app.store().begin().await?;
    let mut open = Vec::new();
    let Some(i) = open_settling(&mut *tx, &mut open, &p.checkin_id).await? else {
        return Ok(JobOutcome::Done);
    };
    let Some(mut step) = open[i]
        .steps
        .iter()
        .find(|s| s.position == p.position)
        .cloned()
    else {
        return Ok(JobOutcome::Done);
    };
    if StepStatus::parse(&step.status).is_ok_and(StepStatus::is_final) {
        return Ok(JobOutcome::Done);
    }
    // Calls made before this one whose answers were never recorded.
    let lost = attempt - 1 > step.attempts;
    let unknown_before = step.outcome_unknown || lost;
    if unknown_before {
        step.repeats += 1;
    }
    step.attempts = step.attempts.max(attempt - 1) + 1;
    let (status, detail, outcome) = match call {
        Err((status, detail)) => {
            let outcome = if status == StepStatus::Retrying {
                JobOutcome::Retry {
                    error: detail.clone(),
                    after: None,
                }
            } else {
                JobOutcome::Done
            };
            (status, detail, outcome)
        }
        Ok(a) => match dd::logout_verdict(app_name, install_id, &a, unknown_before) {
            LogoutVerdict::Done(text) => (StepStatus::Done, text, JobOutcome::Done),
            LogoutVerdict::Failed(text) => (StepStatus::Failed, text, JobOutcome::Done),
            LogoutVerdict::Retry {
                detail,
                outcome_unknown,
            } => {
                step.outcome_unknown |= outcome_unknown;
                (
                    StepStatus::Retrying,
                    detail.clone(),
                    JobOutcome::Retry {
                        error: detail,
                        after: None,
                    },
                )
            }
        },
    };
    step.outcome_unknown |= unknown_before;
    step.status = status.as_str().to_owned();
    step.detail = detail;
    step.updated_at = now_ms();
    let mut writes = Vec::new();
    let settled = if status.is_final() {
        let mut s = open.swap_remove(i);
        s.change(p.position, step.updated_at, |row| row.clone_from(&step));
        Some(app.settle_checkin(&mut *tx, s, &mut writes).await?)
    } else {
        writes.push(Write::UpdateCheckinStep(step.clone()));
        None
    };
    // A finished step finishes its job in the same commit.
    let outcome = match (outcome, &job.lease_owner) {
        (JobOutcome::Done, Some(owner)) => {
            writes.push(Write::CompleteJob {
                id: job.id,
                owner: owner.clone(),
            });
            JobOutcome::Settled
        }
        (o, _) => o,
    };
    // Audited first, so that the entry goes out with the writes.
    if let Some(c) = settled {
        let ev = AuditEvent::new("system", "device.epic_logout", format!("device:{}", c.device_id)).with_details(json!({
            "checkin": c.id, "action": step.action, "install_id": step.install_id, "status": step.status, "attempts": step.attempts, "repeats": step.repeats,
        }));
        app.append_audit(&mut *tx, &ev).await?;
    }
    tx.write_all(&writes).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// `devices.sweep`: expires commands nobody confirmed in time (failing their check-in steps),
/// then queues itself again.
pub struct Sweep;

#[async_trait]
impl JobHandler for Sweep {
    fn kind(&self) -> &'static str {
        JOB_SWEEP
    }

    async fn run(&self, app: &App, _job: &JobRow) -> JobOutcome {
        let r = async {
            sweep(app).await?;
            app.schedule_device_sweep(Duration::from_secs(15)).await
        }
        .await;
        match r {
            Ok(()) => JobOutcome::Done,
            Err(e) => JobOutcome::Retry {
                error: e.to_string(),
                after: None,
            },
        }
    }
}

/// Expires unconfirmed commands; returns how many.
pub async fn sweep(app: &App) -> Result<usize, AppError> {
    let now = now_ms();
    let mut tx = app.store().begin().await?;
    let expired = tx.expired_commands(now, 500).await?;
    let mut open = Vec::new();
    let mut writes = Vec::new();
    for mut c in expired.clone() {
        let settling = match &c.checkin_id {
            Some(ch) => match open.iter().position(|s: &Settling| s.checkin.id == *ch) {
                Some(i) => Some(i),
                None => open_settling(&mut *tx, &mut open, ch).await?,
            },
            None => None,
        };
        c.state = "expired".to_owned();
        c.finished_at = Some(now);
        c.result = Some("the device did not confirm in time".to_owned());
        if let Some(r) = c.secret_ref.take() {
            writes.push(Write::DeleteSecret(r));
        }
        if let (Some(i), Some(pos)) = (settling, c.position) {
            open[i].change(pos, now, |s| {
                s.status = StepStatus::Failed.as_str().to_owned();
                s.detail = format!(
                    "the device did not confirm within {} minutes (is it switched on and online?)",
                    app.config().device_command_ttl_secs / 60
                );
            });
        }
        writes.push(Write::UpdateCommand(c));
    }
    app.settle_all(&mut *tx, open, &mut writes).await?;
    tx.write_all(&writes).await?;
    // Once an hour (the sweep's first run in each hour): old history and idempotency keys go.
    if now % 3_600_000 < 15_000
        || !app
            .device_state()
            .purged_once
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        let days = i64::from(app.config().device_history_retention_days);
        let before = if days > 0 {
            now - days * 86_400_000
        } else {
            i64::MIN
        };
        let n = tx.purge_device_history(before, now - 86_400_000).await?;
        if n > 0 {
            tracing::info!(rows = n, "purged old device history");
        }
    }
    let minutes = i64::try_from(app.config().device_lost_after_overdue_minutes).unwrap_or(0);
    if minutes > 0 {
        for c in tx
            .open_checkouts(None, Some(now - minutes * 60_000))
            .await?
        {
            if let Some(d) = tx.lock_device(&c.device_id).await?
                && d.lost_at.is_none()
            {
                let reason = format!("overdue by more than {minutes} minutes");
                let d = app.lost_in_tx(&mut *tx, d, reason, None).await?;
                app.device_audit(
                    &mut *tx,
                    &d,
                    "device.lost",
                    json!({"reason": "overdue", "minutes": minutes}),
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(expired.len())
}

/// A device's history entry, as a write for [`Tx::write_all`].
fn device_event(device_id: &str, at: i64, kind: &str, detail: &Value) -> Write {
    Write::DeviceEvent {
        device_id: device_id.to_owned(),
        at,
        kind: kind.to_owned(),
        detail: detail.to_string(),
    }
}

/// A check-in whose steps one transaction changes: its row (locked on PostgreSQL), its steps
/// as changed so far, and the positions that changed. Settled once, after every change.
struct Settling {
    checkin: CheckinRow,
    steps: Vec<CheckinStepRow>,
    changed: Vec<i64>,
}

impl Settling {
    /// Changes the step at `pos` with `f`, unless it is missing or already final.
    fn change(&mut self, pos: i64, now: i64, f: impl FnOnce(&mut CheckinStepRow)) -> bool {
        let Some(s) = self.steps.iter_mut().find(|s| s.position == pos) else {
            return false;
        };
        if StepStatus::parse(&s.status).is_ok_and(StepStatus::is_final) {
            return false;
        }
        f(s);
        s.updated_at = now;
        if !self.changed.contains(&pos) {
            self.changed.push(pos);
        }
        true
    }
}

/// Locks a check-in and reads its steps into `open`; answers its index there (`None`: no such
/// check-in, or one without steps).
async fn open_settling(
    tx: &mut dyn Tx,
    open: &mut Vec<Settling>,
    checkin_id: &str,
) -> Result<Option<usize>, AppError> {
    let Some((checkin, steps)) = tx.lock_checkin(checkin_id).await? else {
        return Ok(None);
    };
    open.push(Settling {
        checkin,
        steps,
        changed: Vec::new(),
    });
    Ok(Some(open.len() - 1))
}
