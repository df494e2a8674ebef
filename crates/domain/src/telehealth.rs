//! Telehealth rules: the launch context Epic encrypts into a video-visit link, its freshness,
//! conference and participant naming, and the checks on a telehealth profile.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who launched: the clinician (from Hyperspace / Haiku) or the patient (from MyChart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchRole {
    Provider,
    Patient,
}

impl LaunchRole {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Patient => "patient",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "provider" => Some(Self::Provider),
            "patient" => Some(Self::Patient),
            _ => None,
        }
    }
}

/// Which launch-context key carries which value. Epic's build chooses the keys, so every one is
/// configurable per profile; the defaults are the assumed ones of docs/epic-contract.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMap {
    pub first_name: String,
    pub middle_name: String,
    pub last_name: String,
    pub user: String,
    pub department: String,
    pub csn: String,
    pub appointment_id: String,
    pub role: String,
    pub timestamp: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            first_name: "fname".to_owned(),
            middle_name: "mname".to_owned(),
            last_name: "lname".to_owned(),
            user: "user".to_owned(),
            department: "dept".to_owned(),
            csn: "csn".to_owned(),
            appointment_id: "apptid".to_owned(),
            role: "role".to_owned(),
            timestamp: "ts".to_owned(),
        }
    }
}

impl FieldMap {
    /// Every key must be a short token and no two values may share a key.
    pub fn validate(&self) -> Result<(), String> {
        let keys = [
            &self.first_name,
            &self.middle_name,
            &self.last_name,
            &self.user,
            &self.department,
            &self.csn,
            &self.appointment_id,
            &self.role,
            &self.timestamp,
        ];
        for k in keys {
            if k.is_empty()
                || k.len() > 40
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(format!(
                    "`{k}` is not a usable key: 1-40 letters, digits, `_`, `-` or `.`"
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for k in keys {
            if !seen.insert(k) {
                return Err(format!("`{k}` is used for two values"));
            }
        }
        Ok(())
    }
}

/// The decrypted, checked launch context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchContext {
    pub role: LaunchRole,
    pub first_name: String,
    pub middle_name: String,
    pub last_name: String,
    pub user: Option<String>,
    pub department: Option<String>,
    pub csn: Option<String>,
    pub appointment_id: String,
    /// Unix seconds when Epic built the link.
    pub timestamp: i64,
}

/// Why a decrypted launch context is refused. Shown to the user as a named error page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchContextError {
    #[error("the link does not carry {0}")]
    Missing(&'static str),
    #[error("the link's timestamp is not a number")]
    BadTimestamp,
    #[error("the link was made for a {found} but opened as a {expected}")]
    WrongRole {
        expected: &'static str,
        found: String,
    },
    #[error("the link expired")]
    Expired,
    #[error("the link's timestamp is in the future")]
    FromTheFuture,
}

/// Clock skew tolerated between Epic and us, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;

impl LaunchContext {
    /// Reads the context from decrypted `key=value` pairs. The role comes from the launch URL;
    /// when the context names one too, they must agree.
    pub fn from_fields(
        fields: &[(String, String)],
        map: &FieldMap,
        role: LaunchRole,
    ) -> Result<Self, LaunchContextError> {
        let values: BTreeMap<&str, &str> =
            fields.iter().map(|(k, v)| (k.as_str(), v.trim())).collect();
        let get = |k: &str| {
            values
                .get(k)
                .copied()
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(found) = get(&map.role)
            && LaunchRole::parse(&found.to_ascii_lowercase()) != Some(role)
        {
            return Err(LaunchContextError::WrongRole {
                expected: role.as_str(),
                found,
            });
        }
        let appointment_id =
            get(&map.appointment_id).ok_or(LaunchContextError::Missing("an appointment id"))?;
        let timestamp = get(&map.timestamp)
            .ok_or(LaunchContextError::Missing("a timestamp"))?
            .parse::<i64>()
            .map_err(|_| LaunchContextError::BadTimestamp)?;
        let first_name = get(&map.first_name).unwrap_or_default();
        let last_name = get(&map.last_name).unwrap_or_default();
        if first_name.is_empty() && last_name.is_empty() {
            return Err(LaunchContextError::Missing("the patient's name"));
        }
        Ok(Self {
            role,
            first_name,
            middle_name: get(&map.middle_name).unwrap_or_default(),
            last_name,
            user: get(&map.user),
            department: get(&map.department),
            csn: get(&map.csn),
            appointment_id,
            timestamp,
        })
    }

    /// A link is usable from its timestamp (less the clock skew) for `validity_secs`.
    pub fn check_fresh(&self, now_secs: i64, validity_secs: i64) -> Result<(), LaunchContextError> {
        if self.timestamp > now_secs + CLOCK_SKEW_SECS {
            return Err(LaunchContextError::FromTheFuture);
        }
        if now_secs - self.timestamp > validity_secs {
            return Err(LaunchContextError::Expired);
        }
        Ok(())
    }

    /// The patient as participants see them: first, middle and last name.
    #[must_use]
    pub fn patient_name(&self) -> String {
        join_names(&[&self.first_name, &self.middle_name, &self.last_name])
    }
}

fn join_names(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The conference name: `Appointment for <patient> <profile name>:<appointment id>`, followed by
/// ` in <department>` only when the department is known.
#[must_use]
pub fn conference_name(
    patient: &str,
    profile_name: &str,
    appointment_id: &str,
    department: Option<&str>,
) -> String {
    let mut name = format!("Appointment for {patient} {profile_name}:{appointment_id}");
    if let Some(d) = department.map(str::trim).filter(|d| !d.is_empty()) {
        name.push_str(" in ");
        name.push_str(d);
    }
    name
}

/// What a reader without access to patient data sees in place of a patient's name.
pub const HIDDEN_PATIENT: &str = "[patient]";

/// Checks a profile name: shown to patients as the provider participant and part of every
/// conference name, so it must be short, printable and free of the `:` the name rule uses.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    let n = name.trim();
    if n.is_empty() || n.len() > 80 {
        return Err("must be 1-80 characters".to_owned());
    }
    if n != name {
        return Err("must not start or end with spaces".to_owned());
    }
    if n.contains(':') || n.chars().any(char::is_control) {
        return Err("must not contain `:` or control characters".to_owned());
    }
    Ok(())
}

/// Bounds of a link's validity window, in seconds.
pub const LINK_VALIDITY_RANGE: std::ops::RangeInclusive<i64> = 30..=86_400;

/// The values sent as `ConnectionStatus` to Epic; assumed, so configurable per profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusCodes {
    pub connected: String,
    pub ended: String,
}

impl Default for StatusCodes {
    fn default() -> Self {
        Self {
            connected: "connected".to_owned(),
            ended: "ended".to_owned(),
        }
    }
}

/// A participant's place in a conference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    /// A patient who arrived before any provider.
    Lobby,
    Joined,
    Left,
}

impl ParticipantState {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Lobby => "lobby",
            Self::Joined => "joined",
            Self::Left => "left",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lobby" => Some(Self::Lobby),
            "joined" => Some(Self::Joined),
            "left" => Some(Self::Left),
            _ => None,
        }
    }

    /// Where a new participant starts: patients wait in the lobby until a provider is present.
    #[must_use]
    pub const fn on_arrival(role: LaunchRole, provider_present: bool) -> Self {
        match role {
            LaunchRole::Provider => Self::Joined,
            LaunchRole::Patient if provider_present => Self::Joined,
            LaunchRole::Patient => Self::Lobby,
        }
    }
}

/// When to renew an OAuth token that expires at `expires_at_ms` and was issued at `issued_at_ms`:
/// a tenth of its lifetime before expiry, at least one minute before, never in the past.
#[must_use]
pub fn renew_at(issued_at_ms: i64, expires_at_ms: i64) -> i64 {
    let lifetime = (expires_at_ms - issued_at_ms).max(0);
    let margin = (lifetime / 10).max(60_000).min(lifetime / 2);
    (expires_at_ms - margin).max(issued_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn both_names_from_the_source_document_come_out_identical() {
        let a = LaunchContext::from_fields(
            &fields(&[
                ("fname", "Beverley"),
                ("mname", "P"),
                ("lname", "Spinder"),
                ("apptid", "6ea6d1427f684721abd21c1634386f7b6"),
                ("dept", "Radiology"),
                ("ts", "100"),
            ]),
            &FieldMap::default(),
            LaunchRole::Provider,
        )
        .unwrap();
        assert_eq!(
            conference_name(
                &a.patient_name(),
                "Healthcare Org",
                &a.appointment_id,
                a.department.as_deref()
            ),
            "Appointment for Beverley P Spinder Healthcare Org:6ea6d1427f684721abd21c1634386f7b6 in Radiology"
        );
        let b = LaunchContext::from_fields(
            &fields(&[
                ("fname", "Kai"),
                ("mname", "Oosman"),
                ("lname", "Picardo"),
                ("apptid", "5ec8f1667f531781afe19c1774322f7b8"),
                ("dept", ""),
                ("ts", "100"),
            ]),
            &FieldMap::default(),
            LaunchRole::Patient,
        )
        .unwrap();
        assert_eq!(b.department, None, "an empty department is unknown");
        assert_eq!(
            conference_name(
                &b.patient_name(),
                "Healthcare Org",
                &b.appointment_id,
                b.department.as_deref()
            ),
            "Appointment for Kai Oosman Picardo Healthcare Org:5ec8f1667f531781afe19c1774322f7b8"
        );
    }

    #[test]
    fn a_missing_middle_name_leaves_no_double_space() {
        let c = LaunchContext::from_fields(
            &fields(&[
                ("fname", "Ana"),
                ("lname", "Li"),
                ("apptid", "9"),
                ("ts", "1"),
            ]),
            &FieldMap::default(),
            LaunchRole::Patient,
        )
        .unwrap();
        assert_eq!(c.patient_name(), "Ana Li");
    }

    #[test]
    fn custom_field_maps_are_honoured() {
        let map = FieldMap {
            appointment_id: "EXTID".to_owned(),
            timestamp: "T".to_owned(),
            ..FieldMap::default()
        };
        map.validate().unwrap();
        let c = LaunchContext::from_fields(
            &fields(&[("fname", "A"), ("EXTID", "42"), ("T", "7")]),
            &map,
            LaunchRole::Provider,
        )
        .unwrap();
        assert_eq!((c.appointment_id.as_str(), c.timestamp), ("42", 7));
        let clash = FieldMap {
            csn: "fname".to_owned(),
            ..FieldMap::default()
        };
        assert!(clash.validate().unwrap_err().contains("two values"));
        let bad = FieldMap {
            csn: "a b".to_owned(),
            ..FieldMap::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn missing_or_contradictory_fields_are_named() {
        let map = FieldMap::default();
        let e = |p: &[(&str, &str)], r| LaunchContext::from_fields(&fields(p), &map, r);
        assert_eq!(
            e(&[("fname", "A"), ("ts", "1")], LaunchRole::Provider),
            Err(LaunchContextError::Missing("an appointment id"))
        );
        assert_eq!(
            e(&[("fname", "A"), ("apptid", "1")], LaunchRole::Provider),
            Err(LaunchContextError::Missing("a timestamp"))
        );
        assert_eq!(
            e(
                &[("fname", "A"), ("apptid", "1"), ("ts", "x")],
                LaunchRole::Provider
            ),
            Err(LaunchContextError::BadTimestamp)
        );
        assert_eq!(
            e(&[("apptid", "1"), ("ts", "1")], LaunchRole::Provider),
            Err(LaunchContextError::Missing("the patient's name"))
        );
        assert!(matches!(
            e(
                &[
                    ("fname", "A"),
                    ("apptid", "1"),
                    ("ts", "1"),
                    ("role", "patient")
                ],
                LaunchRole::Provider
            ),
            Err(LaunchContextError::WrongRole { .. })
        ));
        assert!(
            e(
                &[
                    ("fname", "A"),
                    ("apptid", "1"),
                    ("ts", "1"),
                    ("role", "Provider")
                ],
                LaunchRole::Provider
            )
            .is_ok()
        );
    }

    #[test]
    fn freshness_has_a_window_and_a_small_skew() {
        let c = LaunchContext::from_fields(
            &fields(&[("fname", "A"), ("apptid", "1"), ("ts", "1000")]),
            &FieldMap::default(),
            LaunchRole::Provider,
        )
        .unwrap();
        assert_eq!(c.check_fresh(1000, 300), Ok(()));
        assert_eq!(c.check_fresh(1300, 300), Ok(()));
        assert_eq!(c.check_fresh(1301, 300), Err(LaunchContextError::Expired));
        assert_eq!(c.check_fresh(1000 - 60, 300), Ok(()));
        assert_eq!(
            c.check_fresh(1000 - 61, 300),
            Err(LaunchContextError::FromTheFuture)
        );
    }

    #[test]
    fn profile_names_and_states() {
        assert!(check_profile_name("Healthcare Org").is_ok());
        assert!(check_profile_name("").is_err());
        assert!(check_profile_name(" x").is_err());
        assert!(check_profile_name("a:b").is_err());
        assert_eq!(
            ParticipantState::on_arrival(LaunchRole::Patient, false),
            ParticipantState::Lobby
        );
        assert_eq!(
            ParticipantState::on_arrival(LaunchRole::Patient, true),
            ParticipantState::Joined
        );
        assert_eq!(
            ParticipantState::on_arrival(LaunchRole::Provider, false),
            ParticipantState::Joined
        );
    }

    #[test]
    fn renewal_is_a_tenth_before_expiry_but_at_least_a_minute() {
        assert_eq!(renew_at(0, 3_600_000), 3_240_000);
        assert_eq!(renew_at(0, 300_000), 240_000);
        assert_eq!(renew_at(0, 20_000), 10_000, "very short tokens: halfway");
    }
}
