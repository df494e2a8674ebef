//! What the simulator pretends to be: instances, registered clients and system users.
//! Loaded from a TOML or JSON file (`switchboard epic-sim --config sim.toml`) or built in code;
//! clients can also be added at run time through `/_sim/clients`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use switchboard_epic::jose::Jwk;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// The URL clients use to reach the simulator (the `aud` of assertions is built from it).
    pub base_url: Option<String>,
    pub instances: Vec<InstanceConfig>,
    pub clients: Vec<ClientConfig>,
    /// `emp$` system users for Basic-auth private APIs.
    pub system_users: Vec<SystemUser>,
    /// Lifetime of issued access tokens (Epic: 3600 s; shorter to test renewal).
    pub token_lifetime_secs: u64,
    /// Seed of the generated FHIR data set.
    pub seed: u64,
    /// How many calls the journal keeps (oldest dropped first).
    pub journal_capacity: usize,
    /// Allowed clock skew when checking `exp`, `nbf` and `iat`, in seconds.
    pub clock_skew_secs: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            base_url: None,
            instances: vec![
                InstanceConfig {
                    name: "interconnect-prd".to_owned(),
                    production: true,
                },
                InstanceConfig {
                    name: "interconnect-tst".to_owned(),
                    production: false,
                },
            ],
            clients: Vec::new(),
            system_users: Vec::new(),
            token_lifetime_secs: 3600,
            seed: 20_231_101,
            journal_capacity: 10_000,
            clock_skew_secs: 5,
        }
    }
}

impl SimConfig {
    /// Reads a TOML (`.toml`) or JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
        } else {
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// As it appears in URLs before `-oauth` / `-username`, e.g. `interconnect-aocurprd`.
    pub name: String,
    /// Production instances take HL7 processing id `P`, others `T`.
    pub production: bool,
}

/// A client registered with Epic (a backend app or a telehealth app).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// The registered JWK Set URL (needed for ES256 / ES384).
    pub jwks_url: Option<String>,
    /// A statically uploaded public key (RSA only, as Epic allows).
    pub public_jwk: Option<Jwk>,
    /// Whether a background user is mapped (without one Epic answers `unauthorized_client`).
    pub background_user: bool,
    /// APIs attached to the client: `*`, `FHIR`, `FHIR.<Type>`, `DisassociateMobileDevice`,
    /// `SetExternalConnectionStatus`, `HL7v2`.
    pub apis: Vec<String>,
    pub production: bool,
    /// For authorization-code clients (telehealth): the secret and exact redirect URIs.
    pub client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            jwks_url: None,
            public_jwk: None,
            background_user: true,
            apis: vec!["*".to_owned()],
            production: false,
            client_secret: None,
            redirect_uris: Vec::new(),
        }
    }
}

impl ClientConfig {
    #[must_use]
    pub fn allows(&self, api: &str) -> bool {
        self.apis.iter().any(|a| {
            a == "*"
                || a == api
                || (a == "FHIR" && api.starts_with("FHIR."))
                || api
                    .strip_prefix("FHIR.")
                    .is_some_and(|t| a == &format!("FHIR.{t}"))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SystemUser {
    /// With or without the `emp$` prefix.
    pub username: String,
    pub password: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_registry_loads_from_toml_and_json_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("sim.toml");
        std::fs::write(
            &toml_path,
            "token_lifetime_secs = 30\n[[instances]]\nname = \"interconnect-aocurprd\"\nproduction = true\n[[clients]]\nclient_id = \"a\"\njwks_url = \"http://127.0.0.1:1/jwks.json\"\nbackground_user = false\napis = [\"FHIR.Patient\"]\n[[system_users]]\nusername = \"emp$X\"\npassword = \"p\"\n",
        )
        .unwrap();
        let c = SimConfig::from_file(&toml_path).unwrap();
        assert_eq!(
            (
                c.token_lifetime_secs,
                c.instances[0].name.as_str(),
                c.clients[0].background_user
            ),
            (30, "interconnect-aocurprd", false)
        );
        assert!(c.clients[0].allows("FHIR.Patient") && !c.clients[0].allows("FHIR.Slot"));
        let json_path = dir.path().join("sim.json");
        std::fs::write(
            &json_path,
            r#"{"clients": [{"client_id": "b", "apis": ["FHIR"]}]}"#,
        )
        .unwrap();
        let c = SimConfig::from_file(&json_path).unwrap();
        assert!(c.clients[0].allows("FHIR.Slot") && !c.clients[0].allows("HL7v2"));
        std::fs::write(
            &json_path,
            r#"{"clients": [{"client_id": "b", "colour": "blue"}]}"#,
        )
        .unwrap();
        assert!(
            SimConfig::from_file(&json_path)
                .unwrap_err()
                .contains("colour")
        );
    }
}
