//! Every MDM's AppConfig output, read back by Python's own parsers (plistlib, xml.etree, csv);
//! the vendor-neutral XML validated against the AppConfig specification's structure (xmlschema).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use switchboard_domain::appconfig::{
    DeviceVar, EpicAppSettings, LockerSettings, Mdm, app_entries, locker_entries, render,
};

#[test]
fn generated_app_config_parses_back_with_independent_parsers_for_every_mdm() {
    let have_python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_python {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is required on CI"
        );
        eprintln!("SKIPPED (peer): python3 missing");
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers/appconfig_parse.py");
    let rover = EpicAppSettings {
        app: "Rover".into(),
        device_id: DeviceVar::Udid,
        append_app_name: true,
        configuration_url: "epicrover://handheld/config/A&B<1>".into(),
    };
    let locker = LockerSettings {
        server_url: "https://sb.hospital.org".into(),
        enrollment_token: "enr,\"x\"".into(),
        rover_device_id: Some(DeviceVar::Udid),
        unlock_pin: Some("2468".into()),
    };
    let dir = tempfile::tempdir().unwrap();
    for (mdm, name, var) in [
        (Mdm::AppConfigXml, "app_config_xml", "$udid"),
        (Mdm::WorkspaceOne, "workspace_one", "{DeviceUuId}"),
        (Mdm::Intune, "intune", "{{deviceid}}"),
        (Mdm::Jamf, "jamf", "$UDID"),
    ] {
        for (entries, expected) in [
            (
                app_entries(&rover),
                serde_json::json!({"EpicMobileConfigurationURL": "epicrover://handheld/config/A&B<1>", "EpicMobileDeviceID": var, "EpicMobileDeviceIDAppName": true}),
            ),
            (
                locker_entries(&locker),
                serde_json::json!({"SwitchboardServerURL": "https://sb.hospital.org", "SwitchboardEnrollmentToken": "enr,\"x\"", "epicRoverEpicMobileDeviceID": var, "UnlockPIN": "2468"}),
            ),
        ] {
            let path = dir.path().join(format!("{name}.out"));
            std::fs::write(&path, render(mdm, "com.example.app", &entries)).unwrap();
            let out = std::process::Command::new("python3")
                .arg(&script)
                .arg(name)
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(parsed, expected, "{name}");
        }
    }
    // The schema check has teeth: documents that break the specification's structure fail.
    let good = render(
        Mdm::AppConfigXml,
        "com.example.app",
        &locker_entries(&locker),
    );
    for (broken, why) in [
        (
            good.replace("value=\"udid\"", "value=\"$UDID\""),
            "an MDM's own variable syntax",
        ),
        (
            good.replace("<bundleId>com.example.app</bundleId>", ""),
            "no bundleId",
        ),
        (
            good.replace("UnlockPIN", "SwitchboardServerURL"),
            "a key name twice",
        ),
        (
            good.replace("<version>1</version>", "<version>one</version>"),
            "a version that is not a number",
        ),
    ] {
        let path = dir.path().join("broken.xml");
        std::fs::write(&path, broken).unwrap();
        let out = std::process::Command::new("python3")
            .arg(&script)
            .arg("app_config_xml")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted {why}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("XMLSchema"),
            "{why}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
