//! Roles and what they may do.
//!
//! Three roles: `admin` (everything), `operator` (day-to-day device and conference operations)
//! and `auditor` (read-only, plus audit export). Each route asks for one [`Permission`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Auditor,
}

/// What a route requires. A role grants a fixed set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read configuration and state (devices, environments, conferences, jobs).
    Read,
    /// Day-to-day operations: check devices in and out, end conferences, retry jobs.
    Operate,
    /// Read and export the audit log.
    Audit,
    /// Manage users, tokens, Epic environments, keys and every other configuration.
    Administer,
}

impl Permission {
    pub const ALL: [Self; 4] = [Self::Read, Self::Operate, Self::Audit, Self::Administer];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Audit => "audit",
            Self::Administer => "administer",
        }
    }
}

impl Role {
    pub const ALL: [Self; 3] = [Self::Admin, Self::Operator, Self::Auditor];

    /// Whether this role may see patient data (names in conference and participant lists).
    /// Auditors review what happened, not who the patients were.
    #[must_use]
    pub const fn sees_patient_data(self) -> bool {
        matches!(self, Self::Admin | Self::Operator)
    }

    #[must_use]
    pub const fn allows(self, permission: Permission) -> bool {
        match self {
            Self::Admin => true,
            Self::Operator => matches!(permission, Permission::Read | Permission::Operate),
            Self::Auditor => matches!(permission, Permission::Read | Permission::Audit),
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
        }
    }

    /// Whether every permission of `other` is also one of ours (a token may narrow, never widen).
    #[must_use]
    pub fn covers(self, other: Self) -> bool {
        Permission::ALL
            .iter()
            .all(|p| !other.allows(*p) || self.allows(*p))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role `{0}`: expected admin, operator or auditor")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            "auditor" => Ok(Self::Auditor),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_may_do_everything() {
        assert!(Permission::ALL.iter().all(|p| Role::Admin.allows(*p)));
    }

    #[test]
    fn operator_operates_but_neither_audits_nor_administers() {
        assert!(Role::Operator.allows(Permission::Operate));
        assert!(!Role::Operator.allows(Permission::Audit));
        assert!(!Role::Operator.allows(Permission::Administer));
    }

    #[test]
    fn auditor_is_read_only_plus_audit() {
        assert!(Role::Auditor.allows(Permission::Read));
        assert!(Role::Auditor.allows(Permission::Audit));
        assert!(!Role::Auditor.allows(Permission::Operate));
        assert!(!Role::Auditor.allows(Permission::Administer));
    }

    #[test]
    fn a_role_covers_itself_and_admin_covers_all_but_operator_does_not_cover_auditor() {
        for r in Role::ALL {
            assert!(r.covers(r));
            assert!(Role::Admin.covers(r));
        }
        assert!(!Role::Operator.covers(Role::Auditor));
        assert!(!Role::Auditor.covers(Role::Admin));
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("Admin".parse::<Role>().is_err());
    }
}
