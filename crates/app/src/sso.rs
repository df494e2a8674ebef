//! SSO credential profiles: the `<SSO>` documents that tell the locker app which sign-in screens
//! it may fill (`switchboard_domain::sso` parses and checks them). Imported, listed, exported
//! exactly, replaced and removed; hostile or incomplete XML is refused and nothing is stored.

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
        let ev = AuditEvent::new("", "sso_profile.removed", format!("sso_profile:{id}"));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }
}
