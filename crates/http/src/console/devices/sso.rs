//! Console pages for Password AutoFill: the SSO profiles (import, view, replace, export, remove)
//! and each directory user's credentials (usernames only: passwords are sealed, never shown).

use super::{CURRENT, Choice, CsrfForm, ImportForm, Outcome, UsersExtra, users_with};
use crate::AppState;
use crate::console::{Chrome, Console, app_error, fmt_time, render};
use crate::error::{Form, UploadForm};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use switchboard_app::sso::CredentialInput;
use switchboard_domain::sso::ProfileApp;
use switchboard_domain::{FieldError, Permission};

pub(super) fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/console/devices/sso-profiles",
            get(profiles_page).post(import_profile),
        )
        .route(
            "/console/devices/sso-profiles/{id}",
            get(profile_page).post(replace_profile),
        )
        .route(
            "/console/devices/sso-profiles/{id}/xml",
            get(export_profile),
        )
        .route(
            "/console/devices/sso-profiles/{id}/delete",
            post(delete_profile),
        )
        .route(
            "/console/devices/users/{id}/credentials",
            get(credentials_page).post(set_credential),
        )
        .route(
            "/console/devices/users/{id}/credentials/{profile_id}/delete",
            post(delete_credential),
        )
        .route(
            "/console/devices/users/import-credentials",
            post(import_credentials),
        )
}

#[derive(Deserialize)]
struct XmlForm {
    csrf: String,
    xml: String,
}

// ------------------------------------------------------------------ the profile list

struct ProfileLine {
    id: String,
    name: String,
    apps: Vec<ProfileApp>,
    updated: String,
}

#[derive(Template)]
#[template(path = "devices_sso_profiles.html")]
struct ProfilesPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    errors: Vec<FieldError>,
    profiles: Vec<ProfileLine>,
    /// The XML as typed, when an import was refused.
    draft: String,
    can_admin: bool,
}

async fn profiles_with(s: &AppState, c: &Console, x: Outcome, draft: String) -> Response {
    let list = match s.app.list_sso_profiles().await {
        Ok(l) => l,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    render(
        x.status,
        &ProfilesPage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            errors: x.errors,
            profiles: list
                .into_iter()
                .map(|p| ProfileLine {
                    updated: fmt_time(p.updated_at),
                    id: p.id,
                    name: p.name,
                    apps: p.apps,
                })
                .collect(),
            draft,
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn profiles_page(State(s): State<AppState>, c: Console) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    profiles_with(&s, &c, Outcome::ok(), String::new()).await
}

/// "2 apps (1 one-tap)" and the like.
fn apps_summary(apps: &[ProfileApp]) -> String {
    let one_tap = apps.iter().filter(|a| a.one_tap).count();
    format!(
        "{} app{} ({one_tap} one-tap)",
        apps.len(),
        if apps.len() == 1 { "" } else { "s" }
    )
}

async fn import_profile(
    State(s): State<AppState>,
    c: Console,
    UploadForm(f): UploadForm<XmlForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    match s
        .app
        .save_sso_profile(&c.principal, &c.ctx, None, &f.xml)
        .await
    {
        Ok(p) => {
            let m = format!("Profile `{}` imported: {}.", p.name, apps_summary(&p.apps));
            profiles_with(&s, &c, Outcome::notice(m), String::new()).await
        }
        Err(e) => match Outcome::from_error(&e) {
            Some(x) => profiles_with(&s, &c, refused(x), f.xml).await,
            None => app_error(c.chrome(CURRENT), e),
        },
    }
}

/// A refused profile: the parser's reason is next to the form; the banner says nothing changed.
fn refused(mut x: Outcome) -> Outcome {
    if x.status == StatusCode::UNPROCESSABLE_ENTITY {
        x.error = Some("The profile was refused and nothing was stored: see why below.".to_owned());
    }
    x
}

// ------------------------------------------------------------------ one profile

#[derive(Template)]
#[template(path = "devices_sso_profile.html")]
struct ProfilePage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    errors: Vec<FieldError>,
    id: String,
    name: String,
    apps: Vec<ProfileApp>,
    created: String,
    updated: String,
    /// The stored XML, or what was typed when a replacement was refused.
    xml: String,
    can_admin: bool,
}

async fn profile_with(
    s: &AppState,
    c: &Console,
    id: &str,
    x: Outcome,
    draft: Option<String>,
) -> Response {
    let loaded = async {
        Ok::<_, switchboard_app::AppError>((
            s.app.get_sso_profile(id).await?,
            s.app.export_sso_profile(id).await?,
        ))
    }
    .await;
    let (p, stored) = match loaded {
        Ok(v) => v,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    render(
        x.status,
        &ProfilePage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            errors: x.errors,
            created: fmt_time(p.created_at),
            updated: fmt_time(p.updated_at),
            id: p.id,
            name: p.name,
            apps: p.apps,
            xml: draft.unwrap_or(stored),
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn profile_page(State(s): State<AppState>, c: Console, Path(id): Path<String>) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    profile_with(&s, &c, &id, Outcome::ok(), None).await
}

async fn replace_profile(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    UploadForm(f): UploadForm<XmlForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    match s
        .app
        .save_sso_profile(&c.principal, &c.ctx, Some(&id), &f.xml)
        .await
    {
        Ok(p) => {
            let m = format!("Profile `{}` replaced: {}.", p.name, apps_summary(&p.apps));
            profile_with(&s, &c, &id, Outcome::notice(m), None).await
        }
        Err(e) => match Outcome::from_error(&e) {
            Some(x) => profile_with(&s, &c, &id, refused(x), Some(f.xml)).await,
            None => app_error(c.chrome(CURRENT), e),
        },
    }
}

async fn export_profile(State(s): State<AppState>, c: Console, Path(id): Path<String>) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    match s.app.export_sso_profile(&id).await {
        Ok(xml) => crate::routes::attachment("application/xml", &format!("{id}.xml"), xml),
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[derive(Deserialize)]
struct DeleteForm {
    csrf: String,
    confirm: Option<String>,
}

async fn delete_profile(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    if f.confirm.is_none() {
        let x = Outcome {
            error: Some("Nothing was removed: tick the box to confirm first.".to_owned()),
            ..Outcome::invalid(vec![FieldError {
                field: "confirm".to_owned(),
                message: "tick “Yes, remove this profile” to remove it".to_owned(),
            }])
        };
        return profile_with(&s, &c, &id, x, None).await;
    }
    let name = match s.app.get_sso_profile(&id).await {
        Ok(p) => p.name,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    match s.app.delete_sso_profile(&c.principal, &c.ctx, &id).await {
        Ok(()) => {
            let m = format!("Profile `{name}` removed.");
            profiles_with(&s, &c, Outcome::notice(m), String::new()).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

// ------------------------------------------------------------------ a user's credentials

struct CredentialLine {
    profile_id: String,
    profile_name: String,
    username: String,
    source: String,
    updated: String,
}

/// The set-credential form as typed (never the password).
#[derive(Default)]
struct CredentialDraft {
    profile_id: String,
    username: String,
}

#[derive(Template)]
#[template(path = "devices_credentials.html")]
struct CredentialsPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    errors: Vec<FieldError>,
    user_id: String,
    username: String,
    display_name: String,
    credentials: Vec<CredentialLine>,
    profiles: Vec<Choice>,
    draft: CredentialDraft,
    can_admin: bool,
}

async fn credentials_with(
    s: &AppState,
    c: &Console,
    user: &str,
    x: Outcome,
    draft: CredentialDraft,
) -> Response {
    let loaded = async {
        Ok::<_, switchboard_app::AppError>((
            s.app.get_device_user(user).await?,
            s.app.list_sso_credentials(user).await?,
            s.app.list_sso_profiles().await?,
        ))
    }
    .await;
    let (u, credentials, profiles) = match loaded {
        Ok(v) => v,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    render(
        x.status,
        &CredentialsPage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            errors: x.errors,
            user_id: u.id,
            username: u.username,
            display_name: u.display_name,
            credentials: credentials
                .into_iter()
                .map(|cr| CredentialLine {
                    updated: fmt_time(cr.updated_at),
                    profile_id: cr.profile_id,
                    profile_name: cr.profile_name,
                    username: cr.username,
                    source: cr.source,
                })
                .collect(),
            profiles: profiles
                .into_iter()
                .map(|p| Choice {
                    value: p.id,
                    label: p.name,
                })
                .collect(),
            draft,
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn credentials_page(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    credentials_with(&s, &c, &id, Outcome::ok(), CredentialDraft::default()).await
}

#[derive(Deserialize)]
struct CredentialForm {
    csrf: String,
    profile_id: String,
    username: String,
    password: String,
}

async fn set_credential(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<CredentialForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    let draft = CredentialDraft {
        profile_id: f.profile_id.clone(),
        username: f.username.clone(),
    };
    let input = CredentialInput {
        profile_id: f.profile_id,
        username: f.username,
        password: f.password,
    };
    match s
        .app
        .set_sso_credential(&c.principal, &c.ctx, &id, input)
        .await
    {
        Ok(cr) => {
            let m = format!(
                "Credential for `{}` set: username `{}`; the password is sealed and never shown.",
                cr.profile_name, cr.username
            );
            credentials_with(&s, &c, &id, Outcome::notice(m), CredentialDraft::default()).await
        }
        Err(e) => match Outcome::from_error(&e) {
            Some(x) => credentials_with(&s, &c, &id, x, draft).await,
            None => app_error(c.chrome(CURRENT), e),
        },
    }
}

async fn delete_credential(
    State(s): State<AppState>,
    c: Console,
    Path((id, profile_id)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    let x = match s
        .app
        .delete_sso_credential(&c.principal, &c.ctx, &id, &profile_id)
        .await
    {
        Ok(()) => Outcome::notice(
            "Credential removed, its sealed password with it: AutoFill no longer offers it."
                .to_owned(),
        ),
        Err(switchboard_app::AppError::NotFound(m)) => {
            Outcome::error(StatusCode::NOT_FOUND, format!("No {m}."))
        }
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    credentials_with(&s, &c, &id, x, CredentialDraft::default()).await
}

/// The directory page's credential CSV import. The file is never shown back: it holds
/// passwords (and the errors never quote one).
async fn import_credentials(
    State(s): State<AppState>,
    c: Console,
    UploadForm(f): UploadForm<ImportForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    match s
        .app
        .import_sso_credentials(&c.principal, &c.ctx, &f.csv)
        .await
    {
        Ok(r) => {
            let m = format!(
                "Credentials imported: {} set, {} replaced. Passwords are sealed and never shown.",
                r.created, r.updated
            );
            users_with(&s, &c, Outcome::notice(m), UsersExtra::default()).await
        }
        Err(switchboard_app::AppError::Validation(v)) => {
            let x = UsersExtra {
                credential_import_errors: v.errors,
                ..UsersExtra::default()
            };
            users_with(&s, &c, Outcome::import_refused(), x).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_summed_up_by_its_apps_and_how_many_are_one_tap() {
        let app = |nm: &str, one_tap| ProfileApp {
            nm: nm.to_owned(),
            desc: nm.to_owned(),
            one_tap,
        };
        assert_eq!(apps_summary(&[app("epic.com", true)]), "1 app (1 one-tap)");
        assert_eq!(
            apps_summary(&[app("epic.com", true), app("Haiku", false)]),
            "2 apps (1 one-tap)"
        );
    }
}
