//! FHIR gateway rules: SMART scopes (v1 and v2 syntax) of client-credentials apps, the FHIR
//! interaction a request is, and which requests a scope set allows.

use std::collections::BTreeSet;

/// A FHIR interaction, as SMART v2 letters name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    #[must_use]
    pub const fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Search => "search",
        }
    }
}

/// One `system/<Type|*>.<permissions>` scope, normalised to v2 letters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope {
    /// `None` for `*`.
    pub resource: Option<String>,
    pub allowed: BTreeSet<char>,
    /// As written.
    pub text: String,
}

fn is_type(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_uppercase())
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Scope {
    /// Parses `system/Patient.read` (v1: `read`, `write`, `*`) or `system/Patient.rs` (v2:
    /// letters from `cruds` in that order). Client-credentials apps act as the system, so
    /// `user/` and `patient/` scopes are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix("system/") else {
            return Err(format!(
                "`{text}`: apps with client credentials act as the system; use system/<Type>.<read|write|*|cruds>"
            ));
        };
        if rest.contains('?') {
            return Err(format!(
                "`{text}`: granular scopes with `?` are not supported"
            ));
        }
        let Some((ty, perm)) = rest.split_once('.') else {
            return Err(format!("`{text}`: expected system/<Type>.<permissions>"));
        };
        let resource = match ty {
            "*" => None,
            t if is_type(t) => Some(t.to_owned()),
            _ => return Err(format!("`{text}`: `{ty}` is not a FHIR resource type")),
        };
        let allowed: BTreeSet<char> = match perm {
            "read" => ['r', 's'].into(),
            "write" => ['c', 'u', 'd'].into(),
            "*" => ['c', 'r', 'u', 'd', 's'].into(),
            v2 if !v2.is_empty() && is_ordered_subsequence(v2, "cruds") => v2.chars().collect(),
            _ => {
                return Err(format!(
                    "`{text}`: permissions must be read, write, * or letters of cruds in that order"
                ));
            }
        };
        Ok(Self {
            resource,
            allowed,
            text: text.to_owned(),
        })
    }

    #[must_use]
    pub fn allows(&self, resource: &str, i: Interaction) -> bool {
        self.resource.as_deref().is_none_or(|r| r == resource) && self.allowed.contains(&i.letter())
    }

    /// Whether every request this scope allows is also allowed by `other`.
    #[must_use]
    pub fn within(&self, other: &Self) -> bool {
        (other.resource.is_none() || other.resource == self.resource)
            && self.allowed.is_subset(&other.allowed)
    }
}

fn is_ordered_subsequence(s: &str, of: &str) -> bool {
    let mut it = of.chars();
    s.chars().all(|c| it.any(|o| o == c))
}

/// Parses a space-separated scope list; every bad scope is reported.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for s in text.split_whitespace() {
        match Scope::parse(s) {
            Ok(sc) => out.push(sc),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

#[must_use]
pub fn allowed(scopes: &[Scope], resource: &str, i: Interaction) -> bool {
    scopes.iter().any(|s| s.allows(resource, i))
}

/// What a request to `/fhir/R4/<path>` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FhirRequest {
    /// `metadata` or `.well-known/smart-configuration`: open to every authenticated app.
    Capabilities,
    Resource {
        resource: String,
        id: Option<String>,
        interaction: Interaction,
    },
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !s.contains("..")
        && s != "."
}

fn is_operation(s: &str) -> bool {
    s.strip_prefix('$').is_some_and(|o| {
        !o.is_empty() && o.len() <= 64 && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Classifies a FHIR request by method and path (the part after `/fhir/R4/`, already
/// percent-decoded by nobody: encoded separators are refused). `None` when the path is not a
/// FHIR path this gateway forwards (traversal, encoded characters, unknown shapes).
#[must_use]
pub fn classify(method: &str, path: &str) -> Option<FhirRequest> {
    if path.contains('%') || path.contains('\\') || path.contains("//") {
        return None;
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return None;
    }
    let r = |resource: &str, id: Option<&str>, interaction| {
        Some(FhirRequest::Resource {
            resource: resource.to_owned(),
            id: id.map(str::to_owned),
            interaction,
        })
    };
    match (method, parts.as_slice()) {
        ("GET", ["metadata"] | [".well-known", "smart-configuration"]) => {
            Some(FhirRequest::Capabilities)
        }
        ("GET", [t]) if is_type(t) => r(t, None, Interaction::Search),
        ("POST", [t, "_search"]) if is_type(t) => r(t, None, Interaction::Search),
        ("POST", [t]) if is_type(t) => r(t, None, Interaction::Create),
        ("POST", [t, op]) if is_type(t) && is_operation(op) => r(t, None, Interaction::Create),
        ("GET", [t, op]) if is_type(t) && is_operation(op) => r(t, None, Interaction::Read),
        ("GET", [t, id]) if is_type(t) && is_id(id) => r(t, Some(id), Interaction::Read),
        ("PUT", [t, id]) if is_type(t) && is_id(id) => r(t, Some(id), Interaction::Update),
        ("PATCH", [t, id]) if is_type(t) && is_id(id) => r(t, Some(id), Interaction::Update),
        ("DELETE", [t, id]) if is_type(t) && is_id(id) => r(t, Some(id), Interaction::Delete),
        ("GET", [t, id, "_history"]) if is_type(t) && is_id(id) => {
            r(t, Some(id), Interaction::Read)
        }
        ("GET", [t, id, "_history", v]) if is_type(t) && is_id(id) && is_id(v) => {
            r(t, Some(id), Interaction::Read)
        }
        ("POST" | "GET", [t, id, op]) if is_type(t) && is_id(id) && is_operation(op) => r(
            t,
            Some(id),
            if method == "GET" {
                Interaction::Read
            } else {
                Interaction::Update
            },
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_scopes_mean_the_same_thing() {
        let v1 = Scope::parse("system/Patient.read").unwrap();
        let v2 = Scope::parse("system/Patient.rs").unwrap();
        assert_eq!(v1.allowed, v2.allowed);
        assert!(v1.allows("Patient", Interaction::Read));
        assert!(v1.allows("Patient", Interaction::Search));
        assert!(!v1.allows("Patient", Interaction::Create));
        assert!(!v1.allows("Slot", Interaction::Read));
        let all = Scope::parse("system/*.*").unwrap();
        assert!(all.allows("Appointment", Interaction::Delete));
        let w = Scope::parse("system/Appointment.write").unwrap();
        assert!(
            w.allows("Appointment", Interaction::Create)
                && !w.allows("Appointment", Interaction::Read)
        );
        assert!(v2.within(&all) && !all.within(&v2));
    }

    #[test]
    fn bad_scopes_are_explained() {
        for bad in [
            "patient/Patient.read",
            "user/*.read",
            "system/patient.read",
            "system/Patient",
            "system/Patient.sr",
            "system/Patient.x",
            "system/Patient.rs?category=vital-signs",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        let e = parse_scopes("system/Patient.read user/x.read system/Slot.q").unwrap_err();
        assert!(
            e.contains("user/x.read") && e.contains("system/Slot.q"),
            "{e}"
        );
    }

    #[test]
    fn requests_are_classified() {
        use Interaction::*;
        let res = |m, p| classify(m, p);
        assert_eq!(res("GET", "metadata"), Some(FhirRequest::Capabilities));
        let is = |m, p, t: &str, i| match res(m, p) {
            Some(FhirRequest::Resource {
                resource,
                interaction,
                ..
            }) => resource == t && interaction == i,
            _ => false,
        };
        assert!(is("GET", "Patient/abc-1", "Patient", Read));
        assert!(is("GET", "Slot", "Slot", Search));
        assert!(is("POST", "Slot/_search", "Slot", Search));
        assert!(is("POST", "Appointment", "Appointment", Create));
        assert!(is("POST", "Appointment/$book", "Appointment", Create));
        assert!(is("PUT", "Appointment/1", "Appointment", Update));
        assert!(is("DELETE", "Appointment/1", "Appointment", Delete));
        assert!(is("GET", "Patient/1/_history/2", "Patient", Read));
        for bad in [
            "Patient/../Secret",
            "Patient/%2e%2e",
            "..",
            "Patient//1",
            "patient/1",
            "Patient/1/2/3/4",
            "Patient\\1",
        ] {
            assert_eq!(res("GET", bad), None, "{bad}");
        }
        assert_eq!(res("POST", ""), None, "no batch/transaction at the root");
    }
}
