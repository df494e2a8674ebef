//! Managed AppConfig documents for the Epic apps and the locker app, for each MDM, checked before
//! anything is handed out (`switchboard_domain::appconfig` has the rules and the formats).

use crate::AppError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use switchboard_domain::ValidationErrors;
use switchboard_domain::appconfig::{self as ac, EpicAppSettings, LockerSettings, Mdm};

/// What an administrator wants configured.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppConfigPlan {
    /// `app_config_xml`, `workspace_one`, `intune` or `jamf`; omitted: all four.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mdm: Option<Mdm>,
    /// Rover / Haiku / Canto: `{"app", "device_id": "serial_number"|"udid", "append_app_name", "configuration_url"}`.
    #[schema(value_type = Vec<Object>)]
    pub apps: Vec<EpicAppSettings>,
    /// `{"server_url", "enrollment_token", "rover_device_id"?, "unlock_pin"?}`.
    #[schema(value_type = Object)]
    pub locker: LockerSettings,
    /// Bundle ids / package names as your MDM lists the apps (defaults: `com.epic.rover`, …,
    /// `org.switchboard.locker`).
    #[serde(default)]
    pub bundle_ids: BTreeMap<String, String>,
}

/// One document to load into the MDM.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppConfigFile {
    /// `Rover`, `Haiku`, `Canto` or `locker`.
    pub app: String,
    pub bundle_id: String,
    pub mdm: String,
    pub filename: String,
    pub media_type: String,
    pub content: String,
}

const ALL: [Mdm; 4] = [Mdm::AppConfigXml, Mdm::WorkspaceOne, Mdm::Intune, Mdm::Jamf];

fn mdm_name(m: Mdm) -> &'static str {
    match m {
        Mdm::AppConfigXml => "app_config_xml",
        Mdm::WorkspaceOne => "workspace_one",
        Mdm::Intune => "intune",
        Mdm::Jamf => "jamf",
    }
}

/// Checks the plan and renders every document it asks for; nothing when anything is wrong.
pub fn render_appconfig(plan: &AppConfigPlan) -> Result<Vec<AppConfigFile>, AppError> {
    ac::validate(&plan.apps, &plan.locker)?;
    let mut errors = ValidationErrors::new();
    for (k, v) in &plan.bundle_ids {
        if !switchboard_domain::devices::app_id_ok(v) {
            errors.add(
                &format!("bundle_ids.{k}"),
                "must be a bundle id or package name such as `com.epic.rover`",
            );
        }
        if k != "locker" && !plan.apps.iter().any(|a| &a.app == k) {
            errors.add(
                &format!("bundle_ids.{k}"),
                "names no app of this plan (Rover, Haiku, Canto or locker)",
            );
        }
    }
    errors.into_result()?;
    let bundle = |app: &str| {
        plan.bundle_ids.get(app).cloned().unwrap_or_else(|| {
            if app == "locker" {
                "org.switchboard.locker".to_owned()
            } else {
                format!("com.epic.{}", app.to_ascii_lowercase())
            }
        })
    };
    let mut docs: Vec<(String, Vec<ac::Entry>)> = plan
        .apps
        .iter()
        .map(|a| (a.app.clone(), ac::app_entries(a)))
        .collect();
    docs.push(("locker".to_owned(), ac::locker_entries(&plan.locker)));
    let mdms: Vec<Mdm> = plan.mdm.map_or_else(|| ALL.to_vec(), |m| vec![m]);
    let mut out = Vec::new();
    for m in mdms {
        let (ext, media) = match m {
            Mdm::AppConfigXml | Mdm::Intune => ("xml", "application/xml"),
            Mdm::WorkspaceOne => ("csv", "text/csv"),
            Mdm::Jamf => ("plist", "application/x-plist"),
        };
        for (app, entries) in &docs {
            let bundle_id = bundle(app);
            out.push(AppConfigFile {
                filename: format!(
                    "{}-{}.{ext}",
                    app.to_ascii_lowercase(),
                    mdm_name(m).replace('_', "-")
                ),
                content: ac::render(m, &bundle_id, entries),
                app: app.clone(),
                bundle_id,
                mdm: mdm_name(m).to_owned(),
                media_type: media.to_owned(),
            });
        }
    }
    Ok(out)
}

/// The one document of the plan called `filename` (as `render_appconfig` names them).
pub fn render_appconfig_file(
    plan: &AppConfigPlan,
    filename: &str,
) -> Result<AppConfigFile, AppError> {
    render_appconfig(plan)?
        .into_iter()
        .find(|f| f.filename == filename)
        .ok_or_else(|| AppError::NotFound(format!("AppConfig document {filename}")))
}
