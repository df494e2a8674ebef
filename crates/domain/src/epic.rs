//! Epic environments: what a valid one looks like, and how its signing keys rotate.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Production and non-production are kept apart everywhere: mixing them is the classic mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentKind {
    Production,
    NonProduction,
}

impl EnvironmentKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::NonProduction => "non_production",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "production" => Ok(Self::Production),
            "non_production" => Ok(Self::NonProduction),
            other => Err(format!(
                "`{other}` is not an environment type: use production or non_production"
            )),
        }
    }
}

impl fmt::Display for EnvironmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Epic's mobile apps, by their exact (case-sensitive) names.
pub const EPIC_APPS: [&str; 3] = ["Rover", "Haiku", "Canto"];

pub fn check_app(name: &str) -> Result<(), String> {
    if EPIC_APPS.contains(&name) {
        return Ok(());
    }
    match EPIC_APPS
        .iter()
        .find(|a| a.eq_ignore_ascii_case(name.trim()))
    {
        Some(right) => Err(format!(
            "`{name}`: Epic app names are case-sensitive; write `{right}`"
        )),
        None => Err(format!(
            "`{name}` is not an Epic app Switchboard logs out of (Rover, Haiku, Canto)"
        )),
    }
}

/// An instance name as it appears in Interconnect URLs (`interconnect-aocurprd`, `APIProxyPRD`):
/// letters, digits, `-`, `_` and `.`, at most 64 characters, no path characters.
pub fn check_instance(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1–64 characters".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "`{name}` may contain only letters, digits, '-', '_' and '.' (no '/', '?', '%' or spaces)"
        ));
    }
    Ok(())
}

/// An OAuth client id as Epic issues them: printable, no spaces, at most 128 characters.
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be 1–128 characters without spaces".to_owned());
    }
    Ok(())
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// The Interconnect server URL: absolute, no credentials, query or fragment, and `https://` for
/// production unless it points at this machine (the simulator).
pub fn check_interconnect_url(raw: &str, kind: EnvironmentKind) -> Result<String, String> {
    let u = url::Url::parse(raw.trim()).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must start with https://".to_owned());
    }
    let host = u.host().ok_or("must name a host")?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry credentials; use the Basic credential fields".to_owned());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query string or fragment".to_owned());
    }
    if u.scheme() == "http" && kind == EnvironmentKind::Production && !is_loopback(&host) {
        return Err("a production environment needs https:// (http:// is allowed for non-production and for a simulator on this machine)".to_owned());
    }
    Ok(u.as_str().trim_end_matches('/').to_owned())
}

/// Basic-auth user for non-OAuth APIs: `emp$` (any case) and a name.
pub fn check_basic_username(name: &str) -> Result<(), String> {
    match name.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("emp$") && name.len() > 4 && !name.contains(':') => {
            Ok(())
        }
        _ => Err("must be an Epic system user written emp$<name>, without ':'".to_owned()),
    }
}

// ------------------------------------------------------------------ key rotation

/// Keys stay in the JWK set this long after their last use (Epic: at least 5 minutes).
pub const RETIRE_AFTER_LAST_USE_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// In the JWK set, not signing yet (Epic may still hold the old set).
    Published,
    /// Signing.
    Active,
    /// In the JWK set, no longer signing.
    Retiring,
    /// Gone from the JWK set.
    Retired,
}

impl KeyState {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "published" => Ok(Self::Published),
            "active" => Ok(Self::Active),
            "retiring" => Ok(Self::Retiring),
            "retired" => Ok(Self::Retired),
            other => Err(format!("unknown key state `{other}`")),
        }
    }

    #[must_use]
    pub const fn is_published(self) -> bool {
        !matches!(self, Self::Retired)
    }
}

/// What rotation needs to know about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    pub kid: String,
    pub state: KeyState,
    pub created_at: i64,
    pub activate_after: i64,
    pub retiring_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// One step of rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub kid: String,
    pub to: KeyState,
}

/// The transitions due at `now`, and when to look again (`None`: nothing pending).
///
/// The newest published key whose publish delay has passed becomes active and the key it
/// replaces starts retiring; a retiring key is removed from the set no earlier than
/// [`RETIRE_AFTER_LAST_USE_MS`] after both its retirement and its last use.
#[must_use]
pub fn plan_rotation(keys: &[KeyView], now: i64) -> (Vec<Transition>, Option<i64>) {
    let mut out = Vec::new();
    let mut next: Option<i64> = None;
    let mut wake = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
    let ready = keys
        .iter()
        .filter(|k| k.state == KeyState::Published && k.activate_after <= now)
        .max_by_key(|k| (k.created_at, k.kid.clone()));
    let mut retiring_now = Vec::new();
    if let Some(new) = ready {
        out.push(Transition {
            kid: new.kid.clone(),
            to: KeyState::Active,
        });
        for k in keys.iter().filter(|k| {
            k.state == KeyState::Active
                || (k.state == KeyState::Published
                    && k.kid != new.kid
                    && k.created_at < new.created_at)
        }) {
            out.push(Transition {
                kid: k.kid.clone(),
                to: KeyState::Retiring,
            });
            retiring_now.push(k.kid.clone());
        }
    }
    for k in keys.iter().filter(|k| {
        k.state == KeyState::Published
            && ready.is_none_or(|r| r.kid != k.kid)
            && k.activate_after > now
    }) {
        wake(k.activate_after);
    }
    for k in keys {
        let since = if retiring_now.contains(&k.kid) {
            Some(now)
        } else if k.state == KeyState::Retiring {
            k.retiring_at
        } else {
            None
        };
        if let Some(since) = since {
            let due = since.max(k.last_used_at.unwrap_or(0)) + RETIRE_AFTER_LAST_USE_MS;
            if due <= now {
                out.push(Transition {
                    kid: k.kid.clone(),
                    to: KeyState::Retired,
                });
            } else {
                wake(due);
            }
        }
    }
    (out, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, state: KeyState, created: i64, activate_after: i64) -> KeyView {
        KeyView {
            kid: kid.into(),
            state,
            created_at: created,
            activate_after,
            retiring_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn production_urls_must_be_https_unless_on_this_machine() {
        assert!(
            check_interconnect_url("http://epic.example", EnvironmentKind::Production)
                .unwrap_err()
                .contains("https")
        );
        assert!(
            check_interconnect_url("http://epic.example", EnvironmentKind::NonProduction).is_ok()
        );
        assert!(
            check_interconnect_url("http://127.0.0.1:9090", EnvironmentKind::Production).is_ok()
        );
        assert_eq!(
            check_interconnect_url("https://epic.example/", EnvironmentKind::Production).unwrap(),
            "https://epic.example"
        );
        assert!(check_interconnect_url("epic.example", EnvironmentKind::Production).is_err());
        assert!(
            check_interconnect_url("https://u:p@epic.example", EnvironmentKind::Production)
                .is_err()
        );
        assert!(
            check_interconnect_url("https://epic.example/?a=1", EnvironmentKind::Production)
                .is_err()
        );
        assert!(
            check_interconnect_url("ftp://epic.example", EnvironmentKind::NonProduction).is_err()
        );
    }

    #[test]
    fn app_names_are_case_sensitive_with_a_hint() {
        assert!(check_app("Rover").is_ok());
        assert!(check_app("rover").unwrap_err().contains("write `Rover`"));
        assert!(check_app("Hyperspace").is_err());
    }

    #[test]
    fn instance_names_refuse_path_characters() {
        assert!(check_instance("APIProxyPRD").is_ok());
        assert!(check_instance("interconnect-aocurprd").is_ok());
        for bad in ["", "a/b", "a b", "..", "x?y", "%2F"] {
            assert!(check_instance(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_users_are_emp_dollar_names() {
        assert!(check_basic_username("emp$SWITCHBOARD").is_ok());
        assert!(check_basic_username("EMP$x").is_ok());
        assert!(check_basic_username("switchboard").is_err());
        assert!(check_basic_username("emp$").is_err());
    }

    #[test]
    fn a_published_key_waits_for_its_delay_then_replaces_the_active_one() {
        let keys = vec![
            key("old", KeyState::Active, 0, 0),
            key("new", KeyState::Published, 100, 700),
        ];
        let (t, next) = plan_rotation(&keys, 500);
        assert!(t.is_empty());
        assert_eq!(next, Some(700));
        let (t, next) = plan_rotation(&keys, 700);
        assert_eq!(
            t,
            vec![
                Transition {
                    kid: "new".into(),
                    to: KeyState::Active
                },
                Transition {
                    kid: "old".into(),
                    to: KeyState::Retiring
                }
            ]
        );
        assert_eq!(next, Some(700 + RETIRE_AFTER_LAST_USE_MS));
    }

    #[test]
    fn a_retiring_key_leaves_the_set_five_minutes_after_its_last_use_not_before() {
        let mut old = key("old", KeyState::Retiring, 0, 0);
        old.retiring_at = Some(1_000);
        old.last_used_at = Some(2_000);
        let keys = vec![key("new", KeyState::Active, 100, 100), old];
        let (t, next) = plan_rotation(&keys, 2_000 + RETIRE_AFTER_LAST_USE_MS - 1);
        assert!(t.is_empty());
        assert_eq!(next, Some(2_000 + RETIRE_AFTER_LAST_USE_MS));
        let (t, _) = plan_rotation(&keys, 2_000 + RETIRE_AFTER_LAST_USE_MS);
        assert_eq!(
            t,
            vec![Transition {
                kid: "old".into(),
                to: KeyState::Retired
            }]
        );
    }

    #[test]
    fn a_steady_set_needs_nothing() {
        let (t, next) = plan_rotation(&[key("k", KeyState::Active, 0, 0)], 10_000);
        assert!(t.is_empty() && next.is_none());
    }
}
