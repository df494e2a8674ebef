//! The console's AppConfig generator: the administrator picks the Epic apps and their settings,
//! the locker app's settings and the MDM; the page shows every document `render_appconfig`
//! produced (after its checks) with a download button for each, or the fields that are wrong.

use super::{CURRENT, Choice, Outcome, choices};
use crate::AppState;
use crate::console::{Chrome, Console, app_error, render};
use crate::error::Form;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use std::collections::HashMap;
use switchboard_app::AppError;
use switchboard_app::appconfig::{
    AppConfigFile, AppConfigPlan, render_appconfig, render_appconfig_file,
};
use switchboard_domain::appconfig::{DeviceVar, EpicAppSettings, LockerSettings, Mdm};
use switchboard_domain::{FieldError, Permission};

pub(super) fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/console/devices/appconfig",
            get(appconfig_page).post(generate),
        )
        .route("/console/devices/appconfig/download", post(download))
}

/// The Epic apps the form offers: (name in the plan, form-field prefix).
const APPS: [(&str, &str); 3] = [("Rover", "rover"), ("Haiku", "haiku"), ("Canto", "canto")];

const MDMS: [(&str, &str); 4] = [
    (
        "app_config_xml",
        "AppConfig XML (managedAppConfiguration, any MDM)",
    ),
    ("workspace_one", "Workspace ONE UEM"),
    ("intune", "Microsoft Intune"),
    ("jamf", "Jamf Pro"),
];

const DEVICE_VARS: [(&str, &str); 2] = [("serial_number", "serial number"), ("udid", "UDID")];

/// One Epic app's part of the form, as typed.
struct AppDraft {
    app: &'static str,
    key: &'static str,
    enabled: bool,
    device_id: String,
    append_app_name: bool,
    configuration_url: String,
    errors: Vec<FieldError>,
}

/// The whole form as typed, with each field's errors beside it.
struct PlanDraft {
    /// Empty: all four MDMs.
    mdm: String,
    apps: Vec<AppDraft>,
    server_url: String,
    enrollment_token: String,
    /// Empty: not set (no Enhanced Rover logout).
    rover_device_id: String,
    unlock_pin: String,
    locker_errors: Vec<FieldError>,
    /// Errors that belong to no section (the MDM choice).
    errors: Vec<FieldError>,
}

fn field_error(field: String, message: &str) -> FieldError {
    FieldError {
        field,
        message: message.to_owned(),
    }
}

fn one_of(allowed: &[(&str, &str)]) -> String {
    let names: Vec<String> = allowed.iter().map(|(v, _)| format!("`{v}`")).collect();
    format!("must be one of {}", names.join(", "))
}

/// A form value as the enum serde knows it by (`serial_number`, `workspace_one`, ...).
fn parse_enum<T: serde::de::DeserializeOwned>(v: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(v.to_owned())).ok()
}

impl PlanDraft {
    /// The blank form: Rover by serial number with its app name appended, the locker reaching
    /// this server's public URL when one is configured, all four MDMs.
    fn blank(public_url: Option<&str>) -> Self {
        Self {
            mdm: String::new(),
            apps: APPS
                .iter()
                .map(|(app, key)| AppDraft {
                    app,
                    key,
                    enabled: *app == "Rover",
                    device_id: "serial_number".to_owned(),
                    append_app_name: true,
                    configuration_url: String::new(),
                    errors: Vec::new(),
                })
                .collect(),
            server_url: public_url
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            enrollment_token: String::new(),
            rover_device_id: "serial_number".to_owned(),
            unlock_pin: String::new(),
            locker_errors: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn from_form(f: &HashMap<String, String>) -> Self {
        let text = |k: &str| f.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let checked = |k: &str| f.contains_key(k);
        Self {
            mdm: text("mdm"),
            apps: APPS
                .iter()
                .map(|(app, key)| AppDraft {
                    app,
                    key,
                    enabled: checked(&format!("{key}_enabled")),
                    device_id: text(&format!("{key}_device_id")),
                    append_app_name: checked(&format!("{key}_append_app_name")),
                    configuration_url: text(&format!("{key}_configuration_url")),
                    errors: Vec::new(),
                })
                .collect(),
            server_url: text("server_url"),
            enrollment_token: text("enrollment_token"),
            rover_device_id: text("rover_device_id"),
            unlock_pin: text("unlock_pin"),
            locker_errors: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The plan the form describes, or the fields the form itself cannot read (each placed
    /// beside its field).
    fn plan(&mut self) -> Option<AppConfigPlan> {
        let mdm = match self.mdm.as_str() {
            "" => None,
            m => match parse_enum::<Mdm>(m) {
                Some(m) => Some(m),
                None => {
                    self.errors
                        .push(field_error("mdm".to_owned(), &one_of(&MDMS)));
                    None
                }
            },
        };
        let mut apps = Vec::new();
        for a in self.apps.iter_mut().filter(|a| a.enabled) {
            match parse_enum::<DeviceVar>(&a.device_id) {
                Some(device_id) => apps.push(EpicAppSettings {
                    app: a.app.to_owned(),
                    device_id,
                    append_app_name: a.append_app_name,
                    configuration_url: a.configuration_url.clone(),
                }),
                None => a.errors.push(field_error(
                    format!("{}.device_id", a.app),
                    &one_of(&DEVICE_VARS),
                )),
            }
        }
        let rover_device_id = match self.rover_device_id.as_str() {
            "" => None,
            v => {
                let var = parse_enum::<DeviceVar>(v);
                if var.is_none() {
                    self.locker_errors.push(field_error(
                        "locker.rover_device_id".to_owned(),
                        &one_of(&DEVICE_VARS),
                    ));
                }
                var
            }
        };
        if !self.errors.is_empty()
            || !self.locker_errors.is_empty()
            || self.apps.iter().any(|a| !a.errors.is_empty())
        {
            return None;
        }
        Some(AppConfigPlan {
            mdm,
            apps,
            locker: LockerSettings {
                server_url: self.server_url.clone(),
                enrollment_token: self.enrollment_token.clone(),
                rover_device_id,
                unlock_pin: Some(self.unlock_pin.clone()).filter(|p| !p.is_empty()),
            },
            bundle_ids: std::collections::BTreeMap::new(),
        })
    }

    /// Puts the errors `render_appconfig` found beside their fields: `apps[i].…` goes to the
    /// i-th chosen app (named by the app), `locker.…` to the locker's section.
    fn place(&mut self, errors: Vec<FieldError>) {
        for e in errors {
            let app_part = e
                .field
                .strip_prefix("apps[")
                .and_then(|rest| rest.split_once("]."))
                .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest.to_owned())));
            if let Some((i, rest)) = app_part
                && let Some(a) = self.apps.iter_mut().filter(|a| a.enabled).nth(i)
            {
                a.errors.push(FieldError {
                    field: format!("{}.{rest}", a.app),
                    message: e.message,
                });
            } else if e.field.starts_with("locker.") {
                self.locker_errors.push(e);
            } else {
                self.errors.push(e);
            }
        }
    }
}

/// One generated document as the page shows it.
struct FileView {
    filename: String,
    app: String,
    bundle_id: String,
    mdm: String,
    mdm_label: &'static str,
    content: String,
}

fn file_view(f: AppConfigFile) -> FileView {
    FileView {
        mdm_label: MDMS
            .iter()
            .find(|(v, _)| *v == f.mdm)
            .map_or("", |(_, l)| *l),
        filename: f.filename,
        app: f.app,
        bundle_id: f.bundle_id,
        mdm: f.mdm,
        content: f.content,
    }
}

#[derive(Template)]
#[template(path = "devices_appconfig.html")]
struct AppConfigPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    form: PlanDraft,
    files: Vec<FileView>,
    mdms: Vec<Choice>,
    device_vars: Vec<Choice>,
    can_admin: bool,
}

fn page(c: &Console, x: Outcome, form: PlanDraft, files: Vec<AppConfigFile>) -> Response {
    render(
        x.status,
        &AppConfigPage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            form,
            files: files.into_iter().map(file_view).collect(),
            mdms: choices(&MDMS),
            device_vars: choices(&DEVICE_VARS),
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn appconfig_page(State(s): State<AppState>, c: Console) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    let form = PlanDraft::blank(s.app.config().public_url.as_deref());
    page(&c, Outcome::ok(), form, Vec::new())
}

/// The page for a plan `render_appconfig` refused (its errors beside the fields).
fn refused(c: &Console, mut form: PlanDraft, e: AppError) -> Response {
    match e {
        AppError::Validation(v) => {
            form.place(v.errors);
            let x = Outcome::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Nothing was generated: correct the fields below.".to_owned(),
            );
            page(c, x, form, Vec::new())
        }
        AppError::NotFound(m) => page(
            c,
            Outcome::error(StatusCode::NOT_FOUND, format!("No {m}: generate again.")),
            form,
            Vec::new(),
        ),
        e => app_error(c.chrome(CURRENT), e),
    }
}

fn csrf(f: &HashMap<String, String>) -> &str {
    f.get("csrf").map_or("", String::as_str)
}

async fn generate(c: Console, Form(f): Form<HashMap<String, String>>) -> Response {
    if let Some(r) = c.form_guard(csrf(&f), Permission::Administer, CURRENT) {
        return r;
    }
    let mut form = PlanDraft::from_form(&f);
    let Some(plan) = form.plan() else {
        return page(&c, Outcome::invalid(Vec::new()), form, Vec::new());
    };
    match render_appconfig(&plan) {
        Ok(files) => {
            let m = format!(
                "{} documents generated. Load each into your MDM as the managed app configuration of the app it names.",
                files.len()
            );
            page(&c, Outcome::notice(m), form, files)
        }
        Err(e) => refused(&c, form, e),
    }
}

/// One document of the plan as a file: the form is posted again with the file's name.
async fn download(c: Console, Form(f): Form<HashMap<String, String>>) -> Response {
    if let Some(r) = c.form_guard(csrf(&f), Permission::Administer, CURRENT) {
        return r;
    }
    let mut form = PlanDraft::from_form(&f);
    let Some(plan) = form.plan() else {
        return page(&c, Outcome::invalid(Vec::new()), form, Vec::new());
    };
    let name = f.get("file").map_or("", String::as_str);
    match render_appconfig_file(&plan, name) {
        Ok(file) => crate::routes::attachment(&file.media_type, &file.filename, file.content),
        Err(e) => refused(&c, form, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_form_reads_into_a_plan_of_the_ticked_apps() {
        let mut d = PlanDraft::from_form(&form(&[
            ("mdm", "intune"),
            ("haiku_enabled", "on"),
            ("haiku_device_id", "udid"),
            ("haiku_configuration_url", " epichaiku://x "),
            ("rover_device_id", "serial_number"),
            ("server_url", "https://sb.example.org"),
            ("enrollment_token", "sbe_x"),
        ]));
        let plan = d.plan().expect("a plan");
        assert_eq!(plan.mdm, Some(Mdm::Intune));
        assert_eq!(plan.apps.len(), 1);
        assert_eq!(plan.apps[0].app, "Haiku");
        assert_eq!(plan.apps[0].device_id, DeviceVar::Udid);
        assert!(!plan.apps[0].append_app_name);
        assert_eq!(plan.apps[0].configuration_url, "epichaiku://x");
        assert_eq!(plan.locker.rover_device_id, Some(DeviceVar::SerialNumber));
        assert_eq!(plan.locker.unlock_pin, None);
    }

    #[test]
    fn values_the_form_never_offers_are_field_errors() {
        let mut d = PlanDraft::from_form(&form(&[
            ("mdm", "airwatch"),
            ("canto_enabled", "on"),
            ("canto_device_id", "imei"),
        ]));
        assert!(d.plan().is_none());
        assert_eq!(d.errors[0].field, "mdm");
        assert_eq!(d.apps[2].errors[0].field, "Canto.device_id");
        assert!(d.apps[2].errors[0].message.contains("`udid`"));
    }

    #[test]
    fn errors_of_the_plan_go_beside_the_app_or_locker_field_they_name() {
        let mut d =
            PlanDraft::from_form(&form(&[("haiku_enabled", "on"), ("canto_enabled", "on")]));
        d.place(vec![
            field_error("apps[1].configuration_url".to_owned(), "bad"),
            field_error("locker.unlock_pin".to_owned(), "must be 4 to 8 digits"),
            field_error("bundle_ids.x".to_owned(), "odd"),
        ]);
        assert_eq!(d.apps[2].errors[0].field, "Canto.configuration_url");
        assert_eq!(d.locker_errors[0].field, "locker.unlock_pin");
        assert_eq!(d.errors[0].field, "bundle_ids.x");
    }
}
