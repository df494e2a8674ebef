//! SSO credential profiles: the `<SSO>` documents that tell the locker app which sign-in screens
//! it may fill (`switchboard_domain::sso` parses and checks them). Imported, listed, exported
//! exactly, replaced and removed; hostile or incomplete XML is refused and nothing is stored.

use crate::devices::ImportReport;
use crate::{App, AppError, Principal, RequestContext, crypto, now_ms};
use serde::Serialize;
use serde_json::json;
use switchboard_domain::ValidationErrors;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::sso::{self, ProfileApp};
use switchboard_store::SsoProfileRow;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SsoProfile {
    pub id: String,
    pub name: String,
    /// The apps the profile covers; `one_tap` when `nm` is an associated domain.
    #[schema(value_type = Vec<Object>)]
    pub apps: Vec<ProfileApp>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(serde::Deserialize)]
struct StoredApp {
    nm: String,
    desc: String,
    one_tap: bool,
}

fn view(r: &SsoProfileRow) -> SsoProfile {
    let apps: Vec<StoredApp> = serde_json::from_str(&r.apps).unwrap_or_default();
    SsoProfile {
        id: r.id.clone(),
        name: r.name.clone(),
        apps: apps
            .into_iter()
            .map(|a| ProfileApp {
                nm: a.nm,
                desc: a.desc,
                one_tap: a.one_tap,
            })
            .collect(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

impl App {
    pub async fn list_sso_profiles(&self) -> Result<Vec<SsoProfile>, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx.list_sso_profiles().await?.iter().map(view).collect())
    }

    pub async fn get_sso_profile(&self, id: &str) -> Result<SsoProfile, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_sso_profile(id)
            .await?
            .as_ref()
            .map(view)
            .ok_or_else(|| AppError::NotFound(format!("SSO profile {id}")))
    }

    /// The profile's XML: the same elements, attributes (in their order) and values as imported.
    pub async fn export_sso_profile(&self, id: &str) -> Result<String, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_sso_profile(id)
            .await?
            .map(|r| r.xml)
            .ok_or_else(|| AppError::NotFound(format!("SSO profile {id}")))
    }

    /// Imports a profile (no `id`) or replaces one.
    pub async fn save_sso_profile(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: Option<&str>,
        xml: &str,
    ) -> Result<SsoProfile, AppError> {
        let profile =
            sso::parse_profile(xml).map_err(|e| ValidationErrors::single("xml", e.to_string()))?;
        let mut tx = self.store().begin().await?;
        let old = match id {
            Some(id) => Some(
                tx.get_sso_profile(id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("SSO profile {id}")))?,
            ),
            None => None,
        };
        let now = now_ms();
        let row = SsoProfileRow {
            id: old.as_ref().map_or_else(
                || format!("sso_{}", &crypto::new_secret("x")[2..14]),
                |o| o.id.clone(),
            ),
            name: profile
                .apps
                .first()
                .map(|a| a.desc.clone())
                .unwrap_or_default(),
            apps: serde_json::to_string(&profile.apps)
                .map_err(|e| AppError::Internal(e.to_string()))?,
            xml: sso::to_xml(&profile.tree),
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        tx.put_sso_profile(&row).await?;
        let names: Vec<&str> = profile.apps.iter().map(|a| a.nm.as_str()).collect();
        let ev = AuditEvent::new(
            "",
            if old.is_some() {
                "sso_profile.replaced"
            } else {
                "sso_profile.imported"
            },
            format!("sso_profile:{}", row.id),
        )
        .with_details(json!({"apps": names}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(view(&row))
    }

    pub async fn delete_sso_profile(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        if !tx.delete_sso_profile(id).await? {
            return Err(AppError::NotFound(format!("SSO profile {id}")));
        }
        // The profile's stored credentials go with it, sealed passwords included.
        let secrets = tx.delete_sso_credentials(id, None).await?;
        for s in &secrets {
            tx.delete_secret(s).await?;
        }
        let ev = AuditEvent::new("", "sso_profile.removed", format!("sso_profile:{id}"))
            .with_details(json!({"credentials_removed": secrets.len()}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The credential vault and autofill

/// A device may release at most this many credentials a minute.
pub(crate) const AUTOFILL_PER_MINUTE: u32 = 10;

#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    pub profile_id: String,
    pub username: String,
    /// Sealed at rest; never returned by the admin API.
    pub password: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Credential {
    pub profile_id: String,
    pub profile_name: String,
    pub username: String,
    /// `admin` or `device`.
    pub source: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutofillInput {
    /// The associated domain of the sign-in screen (e.g. `epic.com`).
    #[serde(default)]
    pub domain: Option<String>,
    /// The profile the user picked from `choices`.
    #[serde(default)]
    pub profile_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleasedCredential {
    pub profile_id: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Choice {
    pub profile_id: String,
    pub name: String,
    pub username: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Autofill {
    /// The one credential for this domain (one tap), when there is exactly one.
    pub credential: Option<ReleasedCredential>,
    /// Otherwise: what the holder may choose from (no passwords).
    pub choices: Vec<Choice>,
}

fn check_credential(input: &CredentialInput) -> Result<(), AppError> {
    let mut e = ValidationErrors::new();
    if input.username.trim().is_empty()
        || input.username.len() > 256
        || input.username.chars().any(char::is_control)
    {
        e.add("username", "must be 1-256 characters of text");
    }
    if input.password.is_empty() || input.password.len() > 256 {
        e.add("password", "must be 1-256 characters");
    }
    e.into_result()?;
    Ok(())
}

impl App {
    /// Seals and stores a user's credential for a profile; answers it and whether it replaced
    /// one (whose sealed password is deleted).
    async fn store_credential(
        &self,
        tx: &mut dyn switchboard_store::Tx,
        user_id: &str,
        input: &CredentialInput,
        source: &str,
    ) -> Result<(Credential, bool), AppError> {
        let profile = tx
            .get_sso_profile(&input.profile_id)
            .await?
            .ok_or_else(|| {
                AppError::Validation(ValidationErrors::single(
                    "profile_id",
                    format!("no SSO profile `{}`", input.profile_id),
                ))
            })?;
        let secret_ref = self
            .put_secret(
                tx,
                &format!("sso:{user_id}:{}", profile.id),
                "sso_password",
                input.password.as_bytes(),
            )
            .await?;
        let row = switchboard_store::SsoCredentialRow {
            user_id: user_id.to_owned(),
            profile_id: profile.id.clone(),
            username: input.username.trim().to_owned(),
            secret_ref,
            source: source.to_owned(),
            updated_at: now_ms(),
        };
        let replaced = tx.put_sso_credential(&row).await?;
        if let Some(old) = &replaced {
            tx.delete_secret(old).await?;
        }
        let c = Credential {
            profile_id: profile.id,
            profile_name: profile.name,
            username: row.username,
            source: row.source,
            updated_at: row.updated_at,
        };
        Ok((c, replaced.is_some()))
    }

    /// An administrator sets a device user's credential for a profile.
    pub async fn set_sso_credential(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        user: &str,
        input: CredentialInput,
    ) -> Result<Credential, AppError> {
        check_credential(&input)?;
        let mut tx = self.store().begin().await?;
        let u = tx
            .get_device_user(user)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device user {user}")))?;
        let (c, _) = self
            .store_credential(&mut *tx, &u.id, &input, "admin")
            .await?;
        let ev = AuditEvent::new("", "sso.credential_set", format!("device_user:{}", u.id))
            .with_details(json!({"profile_id": c.profile_id, "username": c.username}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// An administrator removes a device user's credential for a profile.
    pub async fn delete_sso_credential(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        user: &str,
        profile_id: &str,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let u = tx
            .get_device_user(user)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device user {user}")))?;
        let secrets = tx.delete_sso_credentials(profile_id, Some(&u.id)).await?;
        if secrets.is_empty() {
            return Err(AppError::NotFound(format!(
                "a credential of {} for SSO profile {profile_id}",
                u.username
            )));
        }
        for s in &secrets {
            tx.delete_secret(s).await?;
        }
        let ev = AuditEvent::new(
            "",
            "sso.credential_removed",
            format!("device_user:{}", u.id),
        )
        .with_details(json!({"profile_id": profile_id}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Imports credentials from CSV with the header `user,profile,username,password`: `user` is
    /// a directory user's username or id, `profile` an SSO profile's id or name. All or
    /// nothing: any bad line refuses the file, naming the line and field (never the password).
    pub async fn import_sso_credentials(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        csv_text: &str,
    ) -> Result<ImportReport, AppError> {
        if csv_text.len() > 5 * 1024 * 1024 {
            return Err(ValidationErrors::single("file", "at most 5 MiB").into());
        }
        let mut reader = csv::ReaderBuilder::new().from_reader(csv_text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| ValidationErrors::single("file", format!("unreadable CSV header: {e}")))?
            .clone();
        let col = |n: &str| headers.iter().position(|h| h.trim() == n);
        let (Some(cu), Some(cp), Some(cn), Some(cw)) = (
            col("user"),
            col("profile"),
            col("username"),
            col("password"),
        ) else {
            return Err(ValidationErrors::single(
                "file",
                "the header must be `user,profile,username,password`",
            )
            .into());
        };
        let mut tx = self.store().begin().await?;
        let profiles = tx.list_sso_profiles().await?;
        let mut errors = ValidationErrors::new();
        let (mut created, mut updated) = (0, 0);
        let mut seen = std::collections::HashSet::new();
        for (i, rec) in reader.records().enumerate() {
            let line = i + 2;
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    errors.add(&format!("line {line}"), format!("unreadable: {e}"));
                    continue;
                }
            };
            // Passwords are taken as written (spaces included); the other fields are trimmed.
            let field = |c: usize, trim: bool| {
                let v = rec.get(c).unwrap_or_default();
                if trim { v.trim() } else { v }.to_owned()
            };
            let (user, profile) = (field(cu, true), field(cp, true));
            let Some(u) = tx.get_device_user(&user).await? else {
                errors.add(
                    &format!("line {line}: user"),
                    format!("no directory user `{user}`"),
                );
                continue;
            };
            let matches: Vec<&SsoProfileRow> = profiles
                .iter()
                .filter(|r| r.id == profile || r.name.eq_ignore_ascii_case(&profile))
                .collect();
            let profile_id = match matches.as_slice() {
                [one] => one.id.clone(),
                [] => {
                    errors.add(
                        &format!("line {line}: profile"),
                        format!("no SSO profile with the id or name `{profile}`"),
                    );
                    continue;
                }
                _ => {
                    errors.add(
                        &format!("line {line}: profile"),
                        format!("`{profile}` names several profiles: use the profile id"),
                    );
                    continue;
                }
            };
            if !seen.insert((u.id.clone(), profile_id.clone())) {
                errors.add(
                    &format!("line {line}"),
                    format!("a second line for {} and `{profile}`", u.username),
                );
                continue;
            }
            let input = CredentialInput {
                profile_id,
                username: field(cn, true),
                password: field(cw, false),
            };
            if let Err(AppError::Validation(v)) = check_credential(&input) {
                for e in v.errors {
                    errors.add(&format!("line {line}: {}", e.field), e.message);
                }
                continue;
            }
            let (_, replaced) = self
                .store_credential(&mut *tx, &u.id, &input, "admin")
                .await?;
            if replaced {
                updated += 1;
            } else {
                created += 1;
            }
        }
        errors.into_result()?;
        let ev = AuditEvent::new("", "sso.credentials_imported", "sso_credentials")
            .with_details(json!({"created": created, "updated": updated}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(ImportReport { created, updated })
    }

    /// A device user's credentials (never the passwords).
    pub async fn list_sso_credentials(&self, user: &str) -> Result<Vec<Credential>, AppError> {
        let mut tx = self.store().read().await?;
        let u = tx
            .get_device_user(user)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device user {user}")))?;
        let mut out = Vec::new();
        for c in tx.sso_credentials_of(&u.id).await? {
            let name = tx
                .get_sso_profile(&c.profile_id)
                .await?
                .map(|p| p.name)
                .unwrap_or_default();
            out.push(Credential {
                profile_id: c.profile_id,
                profile_name: name,
                username: c.username,
                source: c.source,
                updated_at: c.updated_at,
            });
        }
        Ok(out)
    }

    /// The user currently holding `device`, or why autofill is refused.
    async fn holder_of(
        &self,
        tx: &mut dyn switchboard_store::Tx,
        device: &switchboard_store::DeviceRow,
    ) -> Result<switchboard_store::DeviceRow, AppError> {
        let d = tx
            .get_device(&device.id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("device {}", device.id)))?;
        if d.holder_id.is_none() || d.status != "checked_out" {
            return Err(AppError::Forbidden("no one holds this device: credentials are released only to the user who checked it out".to_owned()));
        }
        Ok(d)
    }

    /// The holder saves or updates their credential from the device after a manual sign-in.
    pub async fn agent_save_credential(
        &self,
        device: &switchboard_store::DeviceRow,
        input: CredentialInput,
    ) -> Result<Credential, AppError> {
        check_credential(&input)?;
        let mut tx = self.store().begin().await?;
        let d = self.holder_of(&mut *tx, device).await?;
        let user = d.holder_id.clone().unwrap_or_default();
        let (c, _) = self
            .store_credential(&mut *tx, &user, &input, "device")
            .await?;
        let ev = AuditEvent::new(
            format!("device:{}", d.serial),
            "sso.credential_saved",
            format!("device_user:{user}"),
        )
        .with_details(json!({"profile_id": c.profile_id, "device": d.id}));
        self.append_audit(&mut *tx, &ev).await?;
        tx.commit().await?;
        Ok(c)
    }

    /// Autofill for the device's current holder: one credential when exactly one of their
    /// profiles has an app for `domain` (or they picked `profile_id`), else the list to choose
    /// from. Never to another device, never after check-in; rate-limited; every release audited.
    pub async fn autofill(
        &self,
        device: &switchboard_store::DeviceRow,
        input: AutofillInput,
    ) -> Result<Autofill, AppError> {
        let mut tx = self.store().read().await?;
        let d = self.holder_of(&mut *tx, device).await?;
        let user = d.holder_id.clone().unwrap_or_default();
        let creds = tx.sso_credentials_of(&user).await?;
        let mut profiles = Vec::new();
        for c in &creds {
            if let Some(p) = tx.get_sso_profile(&c.profile_id).await? {
                profiles.push((c.clone(), view(&p)));
            }
        }
        drop(tx);
        let pick: Option<&(switchboard_store::SsoCredentialRow, SsoProfile)> =
            match (&input.profile_id, &input.domain) {
                (Some(id), _) => Some(
                    profiles
                        .iter()
                        .find(|(c, _)| &c.profile_id == id)
                        .ok_or_else(|| {
                            AppError::NotFound(format!(
                                "a credential of this user for profile {id}"
                            ))
                        })?,
                ),
                (None, Some(domain)) => {
                    let hits: Vec<_> = profiles
                        .iter()
                        .filter(|(_, p)| {
                            p.apps
                                .iter()
                                .any(|a| a.one_tap && a.nm.eq_ignore_ascii_case(domain.trim()))
                        })
                        .collect();
                    if hits.len() == 1 { Some(hits[0]) } else { None }
                }
                (None, None) => {
                    return Err(ValidationErrors::single(
                        "domain",
                        "give the sign-in screen's domain or a profile_id",
                    )
                    .into());
                }
            };
        let Some((cred, profile)) = pick else {
            return Ok(Autofill {
                credential: None,
                choices: profiles
                    .iter()
                    .map(|(c, p)| Choice {
                        profile_id: c.profile_id.clone(),
                        name: p.name.clone(),
                        username: c.username.clone(),
                    })
                    .collect(),
            });
        };
        if !self.autofill_allowed(&d.id) {
            return Err(AppError::TooMany(format!(
                "at most {AUTOFILL_PER_MINUTE} credentials a minute per device"
            )));
        }
        let mut tx = self.store().begin().await?;
        let d = self.holder_of(&mut *tx, device).await?;
        if d.holder_id.as_deref() != Some(user.as_str()) {
            return Err(AppError::Forbidden("the device changed hands".to_owned()));
        }
        let password = self.get_secret(&mut *tx, &cred.secret_ref).await?;
        let ev = AuditEvent::new(
            format!("device:{}", d.serial),
            "sso.credential_released",
            format!("device_user:{user}"),
        )
        .with_details(json!({"profile_id": profile.id, "device": d.id, "domain": input.domain}));
        self.append_audit(&mut *tx, &ev).await?;
        tx.commit().await?;
        Ok(Autofill {
            credential: Some(ReleasedCredential {
                profile_id: profile.id.clone(),
                username: cred.username.clone(),
                password: String::from_utf8_lossy(&password).into_owned(),
            }),
            choices: Vec::new(),
        })
    }
}
