//! Managed AppConfig for the Epic apps and the locker app, per MDM, with the checks that make
//! Epic API logout and Enhanced Rover logout work the first time.
//!
//! The Install ID Epic knows a device by is the app's `EpicMobileDeviceID` (an MDM device
//! variable), with the app name appended when `EpicMobileDeviceIDAppName` is true. For Enhanced
//! Rover logout the locker's `epicRoverEpicMobileDeviceID` must resolve to the same value as
//! Rover's `EpicMobileDeviceID`, so both must use the same variable.

use crate::ValidationErrors;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mdm {
    /// The vendor-neutral AppConfig specification XML (`managedAppConfiguration`).
    AppConfigXml,
    /// Workspace ONE UEM: a key / type / value table (CSV).
    WorkspaceOne,
    /// Microsoft Intune: iOS app configuration XML (a plist `dict`).
    Intune,
    /// Jamf Pro: an app configuration plist.
    Jamf,
}

/// A per-device value the MDM substitutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceVar {
    SerialNumber,
    Udid,
}

impl DeviceVar {
    /// How the MDM writes this variable.
    #[must_use]
    pub const fn syntax(self, mdm: Mdm) -> &'static str {
        match (mdm, self) {
            (Mdm::WorkspaceOne, Self::SerialNumber) => "{DeviceSerialNumber}",
            (Mdm::WorkspaceOne, Self::Udid) => "{DeviceUuId}",
            (Mdm::Intune, Self::SerialNumber) => "{{serialnumber}}",
            (Mdm::Intune, Self::Udid) => "{{deviceid}}",
            (Mdm::Jamf, Self::SerialNumber) => "$SERIALNUMBER",
            (Mdm::Jamf, Self::Udid) => "$UDID",
            (Mdm::AppConfigXml, Self::SerialNumber) => "serialNumber",
            (Mdm::AppConfigXml, Self::Udid) => "udid",
        }
    }

    /// Every spelling of every MDM: a reported value equal to one of these was never substituted.
    #[must_use]
    pub fn unsubstituted(value: &str) -> bool {
        [Mdm::WorkspaceOne, Mdm::Intune, Mdm::Jamf]
            .iter()
            .flat_map(|m| [Self::SerialNumber.syntax(*m), Self::Udid.syntax(*m)])
            .any(|s| value.contains(s))
    }
}

/// One Epic app's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpicAppSettings {
    /// `Rover`, `Haiku` or `Canto`.
    pub app: String,
    pub device_id: DeviceVar,
    pub append_app_name: bool,
    /// From the customer's Epic team, e.g. `epicrover://handheld/config/XXXX`.
    pub configuration_url: String,
}

/// The locker app's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockerSettings {
    pub server_url: String,
    pub enrollment_token: String,
    /// For Enhanced Rover logout: must be Rover's variable.
    pub rover_device_id: Option<DeviceVar>,
    /// Emergency unlock PIN, 4–8 digits.
    pub unlock_pin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Text(String),
    Bool(bool),
    Var(DeviceVar),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: &'static str,
    pub value: ConfigValue,
}

/// Checks the whole plan before anything is exported.
pub fn validate(apps: &[EpicAppSettings], locker: &LockerSettings) -> Result<(), ValidationErrors> {
    let mut e = ValidationErrors::new();
    for (i, a) in apps.iter().enumerate() {
        if let Err(m) = crate::epic::check_app(&a.app) {
            e.add(&format!("apps[{i}].app"), m);
            continue;
        }
        let scheme = format!("epic{}://", a.app.to_lowercase());
        match a.configuration_url.strip_prefix(&scheme) {
            Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {}
            _ => e.add(
                &format!("apps[{i}].configuration_url"),
                format!("must look like Epic's: {scheme}… (ask your Epic team for the URL)"),
            ),
        }
    }
    if locker
        .unlock_pin
        .as_ref()
        .is_some_and(|p| !(4..=8).contains(&p.len()) || !p.chars().all(|c| c.is_ascii_digit()))
    {
        e.add("locker.unlock_pin", "must be 4 to 8 digits");
    }
    if locker.enrollment_token.trim().is_empty() {
        e.add("locker.enrollment_token", "is required");
    }
    if !(locker.server_url.starts_with("https://")
        || locker.server_url.starts_with("http://127.0.0.1")
        || locker.server_url.starts_with("http://localhost"))
    {
        e.add(
            "locker.server_url",
            "must be https:// (devices reach Switchboard over the network)",
        );
    }
    if let Some(var) = locker.rover_device_id {
        match apps.iter().find(|a| a.app == "Rover") {
            Some(rover) if rover.device_id == var => {}
            Some(_) => e.add("locker.rover_device_id", "must be the same variable as Rover's EpicMobileDeviceID, or Enhanced Rover logout will not find the device"),
            None => e.add("locker.rover_device_id", "Enhanced Rover logout needs Rover's settings in the same plan"),
        }
    }
    e.into_result()
}

#[must_use]
pub fn app_entries(a: &EpicAppSettings) -> Vec<Entry> {
    vec![
        Entry {
            key: "EpicMobileDeviceID",
            value: ConfigValue::Var(a.device_id),
        },
        Entry {
            key: "EpicMobileDeviceIDAppName",
            value: ConfigValue::Bool(a.append_app_name),
        },
        Entry {
            key: "EpicMobileConfigurationURL",
            value: ConfigValue::Text(a.configuration_url.clone()),
        },
    ]
}

#[must_use]
pub fn locker_entries(l: &LockerSettings) -> Vec<Entry> {
    let mut v = vec![
        Entry {
            key: "SwitchboardServerURL",
            value: ConfigValue::Text(l.server_url.clone()),
        },
        Entry {
            key: "SwitchboardEnrollmentToken",
            value: ConfigValue::Text(l.enrollment_token.clone()),
        },
    ];
    if let Some(var) = l.rover_device_id {
        v.push(Entry {
            key: "epicRoverEpicMobileDeviceID",
            value: ConfigValue::Var(var),
        });
    }
    if let Some(pin) = &l.unlock_pin {
        v.push(Entry {
            key: "UnlockPIN",
            value: ConfigValue::Text(pin.clone()),
        });
    }
    v
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn plist_dict(mdm: Mdm, entries: &[Entry], indent: &str) -> String {
    let mut out = format!("{indent}<dict>\n");
    for e in entries {
        out.push_str(&format!("{indent}  <key>{}</key>\n", xml_escape(e.key)));
        match &e.value {
            ConfigValue::Text(t) => {
                out.push_str(&format!("{indent}  <string>{}</string>\n", xml_escape(t)))
            }
            ConfigValue::Var(v) => out.push_str(&format!(
                "{indent}  <string>{}</string>\n",
                xml_escape(v.syntax(mdm))
            )),
            ConfigValue::Bool(b) => out.push_str(&format!(
                "{indent}  <{}/>\n",
                if *b { "true" } else { "false" }
            )),
        }
    }
    out.push_str(&format!("{indent}</dict>\n"));
    out
}

/// Renders `entries` for `mdm`. `bundle_id` is used by the AppConfig specification XML.
#[must_use]
pub fn render(mdm: Mdm, bundle_id: &str, entries: &[Entry]) -> String {
    match mdm {
        Mdm::WorkspaceOne => {
            let mut out = String::from("Configuration Key,Value Type,Configuration Value\n");
            for e in entries {
                let (ty, val) = match &e.value {
                    ConfigValue::Text(t) => ("String", t.clone()),
                    ConfigValue::Var(v) => ("String", v.syntax(mdm).to_owned()),
                    ConfigValue::Bool(b) => ("Boolean", b.to_string()),
                };
                out.push_str(&format!("{},{ty},{}\n", csv_field(e.key), csv_field(&val)));
            }
            out
        }
        Mdm::Intune => plist_dict(mdm, entries, ""),
        Mdm::Jamf => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n{}</plist>\n",
            plist_dict(mdm, entries, "")
        ),
        Mdm::AppConfigXml => {
            let mut out = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<managedAppConfiguration>\n  <version>1</version>\n  <bundleId>{}</bundleId>\n  <dict>\n",
                xml_escape(bundle_id)
            );
            for e in entries {
                let k = xml_escape(e.key);
                match &e.value {
                    ConfigValue::Text(t) => out.push_str(&format!("    <string keyName=\"{k}\">\n      <defaultValue>\n        <value>{}</value>\n      </defaultValue>\n    </string>\n", xml_escape(t))),
                    ConfigValue::Var(v) => out.push_str(&format!("    <string keyName=\"{k}\">\n      <defaultValue>\n        <deviceVariable value=\"{}\"/>\n      </defaultValue>\n    </string>\n", v.syntax(mdm))),
                    ConfigValue::Bool(b) => out.push_str(&format!("    <boolean keyName=\"{k}\">\n      <defaultValue>\n        <value>{b}</value>\n      </defaultValue>\n    </boolean>\n")),
                }
            }
            out.push_str("  </dict>\n</managedAppConfiguration>\n");
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rover(var: DeviceVar) -> EpicAppSettings {
        EpicAppSettings {
            app: "Rover".into(),
            device_id: var,
            append_app_name: true,
            configuration_url: "epicrover://handheld/config/ABCD".into(),
        }
    }

    fn locker(var: Option<DeviceVar>, pin: Option<&str>) -> LockerSettings {
        LockerSettings {
            server_url: "https://switchboard.hospital.org".into(),
            enrollment_token: "enr_123".into(),
            rover_device_id: var,
            unlock_pin: pin.map(str::to_owned),
        }
    }

    #[test]
    fn a_consistent_plan_validates() {
        assert!(
            validate(
                &[rover(DeviceVar::Udid)],
                &locker(Some(DeviceVar::Udid), Some("2468"))
            )
            .is_ok()
        );
    }

    #[test]
    fn enhanced_rover_logout_needs_the_same_variable_on_rover_and_the_locker() {
        let e = validate(
            &[rover(DeviceVar::SerialNumber)],
            &locker(Some(DeviceVar::Udid), None),
        )
        .unwrap_err();
        assert!(e.errors.iter().any(|f| f.field == "locker.rover_device_id"));
    }

    #[test]
    fn pins_urls_and_app_names_are_checked() {
        for pin in ["123", "123456789", "12a4"] {
            assert!(
                validate(&[rover(DeviceVar::Udid)], &locker(None, Some(pin))).is_err(),
                "{pin}"
            );
        }
        let mut bad = rover(DeviceVar::Udid);
        bad.configuration_url = "https://epic.example/config".into();
        assert!(
            validate(&[bad], &locker(None, None)).unwrap_err().errors[0]
                .field
                .ends_with("configuration_url")
        );
        let mut haiku = rover(DeviceVar::Udid);
        haiku.app = "Haiku".into();
        assert!(
            validate(&[haiku.clone()], &locker(None, None)).is_err(),
            "a Rover URL for Haiku"
        );
        haiku.configuration_url = "epichaiku://x".into();
        assert!(validate(&[haiku], &locker(None, None)).is_ok());
    }

    #[test]
    fn each_mdm_spells_the_device_variables_its_own_way() {
        let entries = app_entries(&rover(DeviceVar::SerialNumber));
        assert!(render(Mdm::WorkspaceOne, "", &entries).contains("EpicMobileDeviceID,String,{DeviceSerialNumber}\nEpicMobileDeviceIDAppName,Boolean,true\n"));
        assert!(render(Mdm::Intune, "", &entries).contains("<string>{{serialnumber}}</string>"));
        assert!(render(Mdm::Jamf, "", &entries).contains("<string>$SERIALNUMBER</string>"));
        assert!(
            render(Mdm::AppConfigXml, "com.epic.rover", &entries)
                .contains("<deviceVariable value=\"serialNumber\"/>")
        );
    }

    #[test]
    fn literal_variables_in_reported_values_are_recognised() {
        assert!(DeviceVar::unsubstituted("{DeviceUuId}"));
        assert!(DeviceVar::unsubstituted("$SERIALNUMBERRover"));
        assert!(!DeviceVar::unsubstituted("J4X7X22WGARover"));
    }
}
