//! Shared devices: what a device reports, how a check-in workflow is written, which device a
//! clinician should take, and what a check-in step's outcome means. Pure rules; the use cases
//! in `switchboard_app::devices` store and act on them.

use crate::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The Epic apps whose users are signed out at check-in (case-sensitive, as Epic names them).
pub const EPIC_APPS: [&str; 3] = ["Rover", "Haiku", "Canto"];
/// The key under which the locker app's own AppConfig values are reported.
pub const LOCKER: &str = "locker";
/// Largest inventory a device may report.
pub const MAX_APPS: usize = 300;
/// Longest AppConfig value, app id or version accepted from a device.
pub const MAX_VALUE_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Ios,
    Android,
}

impl Platform {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ios => "ios",
            Self::Android => "android",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ios" => Ok(Self::Ios),
            "android" => Ok(Self::Android),
            other => Err(format!(
                "unknown platform `{other}`: expected ios or android"
            )),
        }
    }
}

/// Where a device is in its lending cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// On the dock, cleaned, ready for the next clinician (if it is also ready, see [`readiness`]).
    Available,
    CheckedOut,
    /// Checked in; its mandatory device-side check-in steps are still running.
    Returning,
    /// A mandatory device-side check-in step failed: someone must look at it.
    Attention,
}

impl DeviceStatus {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::CheckedOut => "checked_out",
            Self::Returning => "returning",
            Self::Attention => "attention",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "available" => Ok(Self::Available),
            "checked_out" => Ok(Self::CheckedOut),
            "returning" => Ok(Self::Returning),
            "attention" => Ok(Self::Attention),
            other => Err(format!(
                "unknown device status `{other}`: expected available, checked_out, returning or attention"
            )),
        }
    }
}

/// One installed app as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledApp {
    /// iOS bundle id or Android package name.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// AppConfig values as reported: per Epic app name (`Rover`, `Haiku`, `Canto`) or `locker`, key → value.
pub type ReportedConfig = BTreeMap<String, BTreeMap<String, String>>;

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// A reverse-DNS iOS bundle id or Android package name.
#[must_use]
pub fn app_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 155
        && id.contains('.')
        && id.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A serial number or UUID (letters, digits, `-`), 1–64 characters.
#[must_use]
pub fn serial_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Reads a boolean AppConfig value the way MDMs write them.
#[must_use]
pub fn config_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Checks an app inventory; `field` prefixes each error.
pub fn check_inventory(apps: &[InstalledApp], field: &str, errors: &mut ValidationErrors) {
    if apps.len() > MAX_APPS {
        errors.add(
            field,
            format!(
                "{} apps reported; at most {MAX_APPS} are accepted",
                apps.len()
            ),
        );
        return;
    }
    for (i, a) in apps.iter().enumerate() {
        if !app_id_ok(&a.id) {
            errors.add(
                &format!("{field}[{i}].id"),
                "must be a bundle id or package name such as `com.example.app`",
            );
        }
        for (what, v) in [("name", &a.name), ("version", &a.version)] {
            if v.as_ref()
                .is_some_and(|v| v.len() > MAX_VALUE_LEN || !printable(v))
            {
                errors.add(
                    &format!("{field}[{i}].{what}"),
                    format!("must be printable text of at most {MAX_VALUE_LEN} characters"),
                );
            }
        }
    }
}

/// Checks reported AppConfig values: known apps, printable bounded values, booleans where
/// Epic expects one. An unsubstituted MDM variable is *not* an error here (the device reported
/// what it has); it makes the device not ready instead.
pub fn check_reported_config(config: &ReportedConfig, field: &str, errors: &mut ValidationErrors) {
    for (app, values) in config {
        if !EPIC_APPS.contains(&app.as_str()) && app != LOCKER {
            let hint = EPIC_APPS
                .iter()
                .find(|a| a.eq_ignore_ascii_case(app))
                .map(|a| format!(" (write `{a}`: Epic app names are case-sensitive)"))
                .unwrap_or_default();
            errors.add(
                &format!("{field}.{app}"),
                format!("unknown app: expected Rover, Haiku, Canto or locker{hint}"),
            );
            continue;
        }
        if values.len() > 64 {
            errors.add(&format!("{field}.{app}"), "at most 64 keys per app");
            continue;
        }
        for (k, v) in values {
            let f = format!("{field}.{app}.{k}");
            if k.is_empty() || k.len() > 128 || !printable(k) {
                errors.add(&f, "keys must be printable text of at most 128 characters");
            } else if v.len() > MAX_VALUE_LEN || !printable(v) {
                errors.add(
                    &f,
                    format!("must be printable text of at most {MAX_VALUE_LEN} characters"),
                );
            } else if k == "EpicMobileDeviceIDAppName" && config_bool(v).is_none() {
                errors.add(
                    &f,
                    format!("`{v}` is not a boolean: expected true or false"),
                );
            } else if (k == "EpicMobileDeviceID" || k == "epicRoverEpicMobileDeviceID")
                && !crate::appconfig::DeviceVar::unsubstituted(v)
                && !serial_ok(v)
            {
                errors.add(
                    &f,
                    "must be the device's serial number or UUID (letters, digits, `-`)",
                );
            }
        }
    }
}

/// How Epic knows one app on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallId {
    Known(String),
    /// The Install ID cannot be formed; the reason is a sentence for the receipt.
    Unavailable(String),
}

/// The Install ID of an Epic app from the device's reported AppConfig: the app's
/// `EpicMobileDeviceID`, with the app name appended when `EpicMobileDeviceIDAppName` is true
/// (`J4X7X22WGA` + `Rover` → `J4X7X22WGARover`).
#[must_use]
pub fn install_id(config: &ReportedConfig, app: &str) -> InstallId {
    let Some(values) = config.get(app) else {
        return InstallId::Unavailable(format!(
            "{app}'s AppConfig is not reported by this device, so its Install ID is unknown"
        ));
    };
    let Some(id) = values.get("EpicMobileDeviceID").filter(|v| !v.is_empty()) else {
        return InstallId::Unavailable(format!(
            "{app} has no EpicMobileDeviceID in its AppConfig, so Epic cannot identify this device"
        ));
    };
    if crate::appconfig::DeviceVar::unsubstituted(id) {
        return InstallId::Unavailable(format!(
            "{app}'s EpicMobileDeviceID is the literal `{id}`: the MDM did not substitute its variable"
        ));
    }
    let append = values
        .get("EpicMobileDeviceIDAppName")
        .and_then(|v| config_bool(v))
        .unwrap_or(false);
    InstallId::Known(if append {
        format!("{id}{app}")
    } else {
        id.clone()
    })
}

/// The Install ID for Enhanced Rover logout: the locker's `epicRoverEpicMobileDeviceID`, with
/// `Rover` appended when Rover's `EpicMobileDeviceIDAppName` is true. The second value is a
/// warning when the locker's value differs from Rover's own `EpicMobileDeviceID`.
#[must_use]
pub fn enhanced_rover_install_id(config: &ReportedConfig) -> (InstallId, Option<String>) {
    let locker = config
        .get(LOCKER)
        .and_then(|v| v.get("epicRoverEpicMobileDeviceID"))
        .filter(|v| !v.is_empty());
    let Some(locker) = locker else {
        return (
            InstallId::Unavailable(
                "the locker app reports no epicRoverEpicMobileDeviceID, so Enhanced Rover logout cannot identify this device".to_owned(),
            ),
            None,
        );
    };
    if crate::appconfig::DeviceVar::unsubstituted(locker) {
        return (
            InstallId::Unavailable(format!(
                "the locker's epicRoverEpicMobileDeviceID is the literal `{locker}`: the MDM did not substitute its variable"
            )),
            None,
        );
    }
    let rover = config.get("Rover");
    let warning = match rover.and_then(|r| r.get("EpicMobileDeviceID")) {
        Some(r) if r != locker => Some(format!(
            "the locker's epicRoverEpicMobileDeviceID (`{locker}`) differs from Rover's EpicMobileDeviceID (`{r}`): both must use the same MDM variable, or Epic signs out nobody"
        )),
        None => Some("Rover reports no EpicMobileDeviceID to compare with the locker's epicRoverEpicMobileDeviceID".to_owned()),
        Some(_) => None,
    };
    let append = rover
        .and_then(|r| r.get("EpicMobileDeviceIDAppName"))
        .and_then(|v| config_bool(v))
        .unwrap_or(false);
    let id = if append {
        format!("{locker}Rover")
    } else {
        locker.clone()
    };
    (InstallId::Known(id), warning)
}

/// One action of a check-in workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepSpec {
    /// iOS: force-quit an app (by bundle id), ending its session.
    ForceQuit {
        app_id: String,
        #[serde(default = "yes")]
        mandatory: bool,
    },
    /// Android: force-stop an app and clear its data (by package name).
    ClearData {
        app_id: String,
        #[serde(default = "yes")]
        mandatory: bool,
    },
    /// Opens a universal link that signs the app out, with success / error callbacks.
    UniversalLinkLogout {
        url: String,
        #[serde(default)]
        mandatory: bool,
    },
    /// Removes the PIN the user set at check-out (added automatically when a PIN was set).
    ClearPin {
        #[serde(default = "yes")]
        mandatory: bool,
    },
    Lock {
        #[serde(default)]
        mandatory: bool,
    },
    /// Server side: DisassociateMobileDevice for an Epic app's Install ID.
    EpicLogout { environment_id: String, app: String },
    /// Server side: DisassociateMobileDevice with the locker's `epicRoverEpicMobileDeviceID`.
    EnhancedRoverLogout { environment_id: String },
}

const fn yes() -> bool {
    true
}

impl StepSpec {
    #[must_use]
    pub const fn action(&self) -> &'static str {
        match self {
            Self::ForceQuit { .. } => "force_quit",
            Self::ClearData { .. } => "clear_data",
            Self::UniversalLinkLogout { .. } => "universal_link_logout",
            Self::ClearPin { .. } => "clear_pin",
            Self::Lock { .. } => "lock",
            Self::EpicLogout { .. } => "epic_logout",
            Self::EnhancedRoverLogout { .. } => "enhanced_rover_logout",
        }
    }

    /// Device-side steps are commands to the agent; the others are jobs on the server.
    #[must_use]
    pub const fn on_device(&self) -> bool {
        !matches!(
            self,
            Self::EpicLogout { .. } | Self::EnhancedRoverLogout { .. }
        )
    }

    /// Whether the device may go back to "available" before this step is done.
    #[must_use]
    pub const fn mandatory(&self) -> bool {
        match self {
            Self::ForceQuit { mandatory, .. }
            | Self::ClearData { mandatory, .. }
            | Self::UniversalLinkLogout { mandatory, .. }
            | Self::ClearPin { mandatory }
            | Self::Lock { mandatory } => *mandatory,
            Self::EpicLogout { .. } | Self::EnhancedRoverLogout { .. } => false,
        }
    }

    /// A sentence for the receipt.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::ForceQuit { app_id, .. } => format!("Force quit {app_id}"),
            Self::ClearData { app_id, .. } => format!("Force stop {app_id} and clear its data"),
            Self::UniversalLinkLogout { url, .. } => format!("Open logout link {url}"),
            Self::ClearPin { .. } => "Remove the device PIN".to_owned(),
            Self::Lock { .. } => "Lock the device".to_owned(),
            Self::EpicLogout { app, .. } => format!("Sign the user out of {app} in Epic"),
            Self::EnhancedRoverLogout { .. } => {
                "Enhanced Rover logout (sign out of Rover in Epic)".to_owned()
            }
        }
    }
}

/// Checks a workflow for a platform. `environments` are the known Epic environments with the
/// apps each has enabled.
pub fn check_workflow(
    platform: Platform,
    steps: &[StepSpec],
    environments: &BTreeMap<String, Vec<String>>,
    field: &str,
    errors: &mut ValidationErrors,
) {
    if steps.len() > 32 {
        errors.add(field, "at most 32 steps");
        return;
    }
    for (i, s) in steps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match s {
            StepSpec::ForceQuit { app_id, .. } => {
                if platform != Platform::Ios {
                    errors.add(&f, "force_quit is an iOS action; on Android use clear_data");
                } else if !app_id_ok(app_id) {
                    errors.add(
                        &format!("{f}.app_id"),
                        "must be a bundle id such as `com.epic.rover`",
                    );
                }
            }
            StepSpec::ClearData { app_id, .. } => {
                if platform != Platform::Android {
                    errors.add(&f, "clear_data is an Android action; on iOS use force_quit");
                } else if !app_id_ok(app_id) {
                    errors.add(
                        &format!("{f}.app_id"),
                        "must be a package name such as `com.epic.rover`",
                    );
                }
            }
            StepSpec::UniversalLinkLogout { url, .. } => {
                let ok = url.len() <= 2048
                    && url.split_once("://").is_some_and(|(scheme, rest)| {
                        !scheme.is_empty()
                            && scheme
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                            && !rest.is_empty()
                    })
                    && printable(url)
                    && !url.contains(' ');
                if !ok {
                    errors.add(&format!("{f}.url"), "must be an absolute link such as `https://app.example.org/logout` or `epichaiku://logout`");
                }
            }
            StepSpec::ClearPin { .. } | StepSpec::Lock { .. } => {}
            StepSpec::EpicLogout {
                environment_id,
                app,
            } => {
                if !EPIC_APPS.contains(&app.as_str()) {
                    let hint = EPIC_APPS
                        .iter()
                        .find(|a| a.eq_ignore_ascii_case(app))
                        .map(|a| format!(" (write `{a}`: app names are case-sensitive)"))
                        .unwrap_or_default();
                    errors.add(
                        &format!("{f}.app"),
                        format!("must be Rover, Haiku or Canto{hint}"),
                    );
                }
                check_env(environment_id, Some(app), environments, &f, errors);
            }
            StepSpec::EnhancedRoverLogout { environment_id } => {
                check_env(environment_id, Some("Rover"), environments, &f, errors);
            }
        }
    }
}

fn check_env(
    id: &str,
    app: Option<&str>,
    environments: &BTreeMap<String, Vec<String>>,
    f: &str,
    errors: &mut ValidationErrors,
) {
    match environments.get(id) {
        None => errors.add(
            &format!("{f}.environment_id"),
            format!("no Epic environment `{id}`"),
        ),
        Some(apps) => {
            if let Some(app) = app
                && EPIC_APPS.contains(&app)
                && !apps.iter().any(|a| a == app)
            {
                errors.add(
                    &format!("{f}.environment_id"),
                    format!("{app} is not among this environment's Epic apps; add it to the environment first"),
                );
            }
        }
    }
}

/// Adds a PIN-removal step when the user set a PIN and the workflow does not remove it.
#[must_use]
pub fn steps_for_checkin(workflow: &[StepSpec], pin_set: bool) -> Vec<StepSpec> {
    let mut steps = workflow.to_vec();
    if pin_set && !steps.iter().any(|s| matches!(s, StepSpec::ClearPin { .. })) {
        steps.push(StepSpec::ClearPin { mandatory: true });
    }
    steps
}

/// A receipt step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Done,
    Retrying,
    Failed,
    Skipped,
}

impl StepStatus {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Self::Pending),
            "done" => Ok(Self::Done),
            "retrying" => Ok(Self::Retrying),
            "failed" => Ok(Self::Failed),
            "skipped" => Ok(Self::Skipped),
            other => Err(format!("unknown step status `{other}`")),
        }
    }

    #[must_use]
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Skipped)
    }
}

/// What Epic's answer to one DisassociateMobileDevice call means for the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutVerdict {
    Done(String),
    /// Try again later; `outcome_unknown` when the call may have reached Epic.
    Retry {
        detail: String,
        outcome_unknown: bool,
    },
    Failed(String),
}

/// How a DisassociateMobileDevice attempt ended, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutAttempt {
    Accepted,
    InstallIdNotFound,
    /// Any other HTTP answer.
    Status(u16),
    /// Timed out after the request was sent: Epic may or may not have acted.
    TimedOut,
    /// Never reached Epic (connection refused, DNS, TLS).
    NotSent(String),
    /// No token from Epic: the failure class (`not_mapped`, `epic_down`, ...) and a sentence.
    NoToken {
        class: String,
        detail: String,
    },
}

/// Interprets an attempt. `earlier_unknown` is true when an earlier attempt's answer was lost
/// (a timeout or a crash): then `Install ID not found` means that attempt already worked.
#[must_use]
pub fn logout_verdict(
    app: &str,
    install_id: &str,
    attempt: &LogoutAttempt,
    earlier_unknown: bool,
) -> LogoutVerdict {
    match attempt {
        LogoutAttempt::Accepted => LogoutVerdict::Done(format!(
            "Epic signed the user out of {app} on this device (Install ID {install_id}); it sends no more messages, alerts or calls here"
        )),
        LogoutAttempt::InstallIdNotFound if earlier_unknown => LogoutVerdict::Done(format!(
            "Epic no longer knows Install ID {install_id}: an earlier attempt whose answer was lost had already signed the user out"
        )),
        LogoutAttempt::InstallIdNotFound => LogoutVerdict::Failed(format!(
            "Epic does not know Install ID {install_id}: no user has signed in to {app} on this device since its AppConfig was applied (nothing to sign out; not retried)"
        )),
        LogoutAttempt::Status(s) if *s == 401 || *s == 403 => LogoutVerdict::Retry {
            detail: format!(
                "Epic refused the call (HTTP {s}): DisassociateMobileDevice may not be attached to the backend client; retrying"
            ),
            outcome_unknown: false,
        },
        LogoutAttempt::Status(s) => LogoutVerdict::Retry {
            detail: format!("Epic answered HTTP {s}; retrying"),
            outcome_unknown: false,
        },
        LogoutAttempt::TimedOut => LogoutVerdict::Retry {
            detail: "Epic did not answer in time; retrying (the call may already have worked)"
                .to_owned(),
            outcome_unknown: true,
        },
        LogoutAttempt::NotSent(why) => LogoutVerdict::Retry {
            detail: format!("Epic could not be reached ({why}); retrying"),
            outcome_unknown: false,
        },
        LogoutAttempt::NoToken { detail, .. } => LogoutVerdict::Retry {
            detail: format!("no access token from Epic: {detail}; retrying"),
            outcome_unknown: false,
        },
    }
}

/// A candidate device for check-out.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub battery: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub ready: bool,
}

/// Picks the device to hand out: ready, heard from within `fresh_ms`, most battery, then the
/// most recent heartbeat, then the id (so the choice is stable).
#[must_use]
pub fn pick_device(candidates: &[Candidate], now: i64, fresh_ms: i64) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.ready && c.last_heartbeat_at.is_some_and(|t| now - t <= fresh_ms))
        .max_by(|a, b| {
            a.battery
                .unwrap_or(0)
                .cmp(&b.battery.unwrap_or(0))
                .then(a.last_heartbeat_at.cmp(&b.last_heartbeat_at))
                .then(b.id.cmp(&a.id))
        })
}

/// Why a device is not ready for check-out; empty when it is.
#[must_use]
pub fn readiness(
    config: &ReportedConfig,
    apps: &[InstalledApp],
    required: &[RequiredApp],
) -> Vec<String> {
    let mut reasons = Vec::new();
    for r in required {
        match apps.iter().find(|a| a.id == r.app_id) {
            None => reasons.push(format!("{} is not installed", r.app_id)),
            Some(a) => {
                if let Some(min) = &r.min_version
                    && version_lt(a.version.as_deref().unwrap_or("0"), min)
                {
                    reasons.push(format!(
                        "{} {} is older than the required {min}",
                        r.app_id,
                        a.version.as_deref().unwrap_or("(unknown version)")
                    ));
                }
            }
        }
    }
    for (app, values) in config {
        for (k, v) in values {
            if crate::appconfig::DeviceVar::unsubstituted(v) {
                reasons.push(format!(
                    "{app}'s {k} is the literal `{v}`: the MDM did not substitute its variable"
                ));
            }
        }
        // An Epic app configured without a device id has no Install ID: Epic could never sign
        // its user out at check-in.
        if EPIC_APPS.contains(&app.as_str())
            && values
                .get("EpicMobileDeviceID")
                .is_none_or(|v| v.trim().is_empty())
        {
            reasons.push(format!(
                "{app}'s AppConfig has no EpicMobileDeviceID, so it has no Install ID and Epic cannot sign its user out"
            ));
        }
    }
    reasons
}

/// An app a device group requires before its devices are handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredApp {
    pub app_id: String,
    #[serde(default)]
    pub min_version: Option<String>,
}

/// Compares dotted versions numerically (`9.10` > `9.9`); non-numeric parts compare as text.
#[must_use]
pub fn version_lt(a: &str, b: &str) -> bool {
    let parts = |s: &str| -> Vec<String> { s.split(['.', '-']).map(str::to_owned).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).map_or("0", String::as_str);
        let y = pb.get(i).map_or("0", String::as_str);
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord == std::cmp::Ordering::Less;
        }
    }
    false
}

/// A device PIN: 4–8 digits.
pub fn check_pin(pin: &str) -> Result<(), String> {
    if (4..=8).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err("must be 4 to 8 digits".to_owned())
    }
}

/// The commands an agent understands.
pub const COMMAND_KINDS: [&str; 9] = [
    "show_ready",
    "lock",
    "set_pin",
    "clear_pin",
    "force_quit",
    "clear_data",
    "universal_link_logout",
    "show_message",
    "lock_with_message",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(entries: &[(&str, &str, &str)]) -> ReportedConfig {
        let mut c = ReportedConfig::new();
        for (app, k, v) in entries {
            c.entry((*app).to_owned())
                .or_default()
                .insert((*k).to_owned(), (*v).to_owned());
        }
        c
    }

    #[test]
    fn the_install_id_appends_the_app_name_only_when_asked() {
        let c = cfg(&[
            ("Rover", "EpicMobileDeviceID", "J4X7X22WGA"),
            ("Rover", "EpicMobileDeviceIDAppName", "true"),
            ("Haiku", "EpicMobileDeviceID", "J4X7X22WGA"),
            ("Haiku", "EpicMobileDeviceIDAppName", "false"),
        ]);
        assert_eq!(
            install_id(&c, "Rover"),
            InstallId::Known("J4X7X22WGARover".into())
        );
        assert_eq!(
            install_id(&c, "Haiku"),
            InstallId::Known("J4X7X22WGA".into())
        );
        assert!(
            matches!(install_id(&c, "Canto"), InstallId::Unavailable(m) if m.contains("not reported"))
        );
        let bad = cfg(&[("Rover", "EpicMobileDeviceID", "{DeviceUuId}")]);
        assert!(
            matches!(install_id(&bad, "Rover"), InstallId::Unavailable(m) if m.contains("did not substitute"))
        );
    }

    #[test]
    fn enhanced_rover_uses_the_lockers_value_and_warns_when_it_differs_from_rovers() {
        let same = cfg(&[
            ("Rover", "EpicMobileDeviceID", "AB-12"),
            ("Rover", "EpicMobileDeviceIDAppName", "true"),
            (LOCKER, "epicRoverEpicMobileDeviceID", "AB-12"),
        ]);
        assert_eq!(
            enhanced_rover_install_id(&same),
            (InstallId::Known("AB-12Rover".into()), None)
        );
        let differ = cfg(&[
            ("Rover", "EpicMobileDeviceID", "SERIAL1"),
            (LOCKER, "epicRoverEpicMobileDeviceID", "UUID-1"),
        ]);
        let (id, warning) = enhanced_rover_install_id(&differ);
        assert_eq!(id, InstallId::Known("UUID-1".into()));
        assert!(warning.unwrap().contains("differs"));
        let none = cfg(&[("Rover", "EpicMobileDeviceID", "SERIAL1")]);
        assert!(matches!(
            enhanced_rover_install_id(&none).0,
            InstallId::Unavailable(_)
        ));
    }

    #[test]
    fn reported_config_rejects_unknown_apps_wrong_case_and_bad_booleans_but_accepts_variables() {
        let mut e = ValidationErrors::new();
        check_reported_config(
            &cfg(&[
                ("rover", "EpicMobileDeviceID", "X"),
                ("Haiku", "EpicMobileDeviceIDAppName", "maybe"),
                ("Canto", "EpicMobileDeviceID", "bad value!"),
                ("Rover", "EpicMobileDeviceID", "{DeviceUuId}"),
            ]),
            "appconfig",
            &mut e,
        );
        let fields: Vec<_> = e.errors.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "appconfig.Canto.EpicMobileDeviceID",
                "appconfig.Haiku.EpicMobileDeviceIDAppName",
                "appconfig.rover"
            ]
        );
        assert!(e.errors[2].message.contains("write `Rover`"));
    }

    #[test]
    fn workflows_are_checked_per_platform_and_environment() {
        let envs: BTreeMap<String, Vec<String>> =
            [("env1".to_owned(), vec!["Rover".to_owned()])].into();
        let steps = vec![
            StepSpec::ForceQuit {
                app_id: "com.epic.rover".into(),
                mandatory: true,
            },
            StepSpec::ClearData {
                app_id: "com.epic.rover".into(),
                mandatory: true,
            },
            StepSpec::EpicLogout {
                environment_id: "env1".into(),
                app: "haiku".into(),
            },
            StepSpec::EpicLogout {
                environment_id: "env2".into(),
                app: "Rover".into(),
            },
            StepSpec::UniversalLinkLogout {
                url: "not a link".into(),
                mandatory: false,
            },
        ];
        let mut e = ValidationErrors::new();
        check_workflow(Platform::Ios, &steps, &envs, "ios", &mut e);
        let fields: Vec<_> = e.errors.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "ios[1]",
                "ios[2].app",
                "ios[3].environment_id",
                "ios[4].url"
            ]
        );
        let mut e = ValidationErrors::new();
        check_workflow(Platform::Android, &steps[1..2], &envs, "android", &mut e);
        assert!(e.is_empty());
    }

    #[test]
    fn a_pin_removal_is_added_when_a_pin_was_set() {
        let wf = vec![StepSpec::Lock { mandatory: false }];
        assert_eq!(steps_for_checkin(&wf, false).len(), 1);
        let s = steps_for_checkin(&wf, true);
        assert_eq!(s.last(), Some(&StepSpec::ClearPin { mandatory: true }));
    }

    #[test]
    fn not_found_after_an_unknown_outcome_counts_as_done() {
        assert!(matches!(
            logout_verdict("Rover", "X", &LogoutAttempt::InstallIdNotFound, false),
            LogoutVerdict::Failed(m) if m.contains("not retried")
        ));
        assert!(matches!(
            logout_verdict("Rover", "X", &LogoutAttempt::InstallIdNotFound, true),
            LogoutVerdict::Done(_)
        ));
        assert!(matches!(
            logout_verdict("Rover", "X", &LogoutAttempt::TimedOut, false),
            LogoutVerdict::Retry {
                outcome_unknown: true,
                ..
            }
        ));
        assert!(matches!(
            logout_verdict("Rover", "X", &LogoutAttempt::Status(503), false),
            LogoutVerdict::Retry {
                outcome_unknown: false,
                ..
            }
        ));
    }

    #[test]
    fn the_best_device_is_fresh_ready_and_fullest() {
        let c = |id: &str, battery, hb, ready| Candidate {
            id: id.into(),
            battery: Some(battery),
            last_heartbeat_at: Some(hb),
            ready,
        };
        let now = 1_000_000;
        let list = vec![
            c("a", 50, now - 1000, true),
            c("b", 90, now - 1000, false),
            c("c", 95, now - 10_000_000, true),
            c("d", 80, now - 2000, true),
        ];
        assert_eq!(pick_device(&list, now, 600_000).unwrap().id, "d");
        assert!(pick_device(&list[1..3], now, 600_000).is_none());
    }

    #[test]
    fn readiness_names_missing_apps_old_versions_and_unsubstituted_variables() {
        let apps = vec![InstalledApp {
            id: "com.epic.rover".into(),
            name: None,
            version: Some("9.9".into()),
        }];
        let req = vec![
            RequiredApp {
                app_id: "com.epic.rover".into(),
                min_version: Some("9.10".into()),
            },
            RequiredApp {
                app_id: "com.epic.haiku".into(),
                min_version: None,
            },
        ];
        let r = readiness(
            &cfg(&[("Rover", "EpicMobileDeviceID", "$SERIALNUMBER")]),
            &apps,
            &req,
        );
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(readiness(&ReportedConfig::new(), &apps, &req[..0]).is_empty());
        let r = readiness(
            &cfg(&[("Haiku", "EpicMobileDeviceIDAppName", "true")]),
            &apps,
            &req[..0],
        );
        assert!(
            r[0].contains("Haiku's AppConfig has no EpicMobileDeviceID"),
            "{r:?}"
        );
        assert!(
            readiness(
                &cfg(&[("Haiku", "EpicMobileDeviceID", "J4X7X22WGA")]),
                &apps,
                &req[..0]
            )
            .is_empty(),
            "a well-formed Install ID"
        );
        assert!(
            version_lt("9.9", "9.10") && !version_lt("10.0", "9.10") && !version_lt("1.2", "1.2.0")
        );
    }

    #[test]
    fn pins_are_four_to_eight_digits() {
        assert!(check_pin("1234").is_ok() && check_pin("12345678").is_ok());
        assert!(
            check_pin("123").is_err()
                && check_pin("123456789").is_err()
                && check_pin("12a4").is_err()
        );
    }
}
