//! Secrets at rest: every secret value lives sealed in the `secrets` table; rows elsewhere hold
//! only its id. The associated data is `secret:<id>|<owner>|<purpose>`.

use crate::keyring::Sealed;
use crate::{App, AppError, Principal, RequestContext, now_ms};
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::ids::SecretId;
use switchboard_store::{SecretRow, Tx};

fn aad(id: &str, owner: &str, purpose: &str) -> String {
    format!("secret:{id}|{owner}|{purpose}")
}

impl App {
    /// Seals `plaintext` and stores it; returns the new secret's id.
    pub async fn put_secret(
        &self,
        tx: &mut dyn Tx,
        owner: &str,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<String, AppError> {
        let id = SecretId::new().to_string();
        tx.put_secret(&self.sealed_row(&id, owner, purpose, plaintext)?)
            .await?;
        Ok(id)
    }

    fn sealed_row(
        &self,
        id: &str,
        owner: &str,
        purpose: &str,
        plaintext: &[u8],
    ) -> Result<SecretRow, AppError> {
        let sealed = self.keyring().seal(&aad(id, owner, purpose), plaintext)?;
        let now = now_ms();
        Ok(SecretRow {
            id: id.to_owned(),
            owner: owner.to_owned(),
            purpose: purpose.to_owned(),
            key_id: sealed.key_id,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            created_at: now,
            updated_at: now,
        })
    }

    /// A secret Switchboard makes for itself once (`id` fixed), shared by every replica: read it,
    /// or create it from `init` when it does not exist yet (a racing replica's value wins).
    pub async fn singleton_secret(
        &self,
        id: &str,
        purpose: &str,
        init: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, AppError> {
        let mut tx = self.store().read().await?;
        if tx.get_secret(id).await?.is_some() {
            return self.get_secret(&mut *tx, id).await;
        }
        drop(tx);
        let value = init();
        let row = self.sealed_row(id, "switchboard", purpose, &value)?;
        let mut tx = self.store().begin().await?;
        match tx.put_secret(&row).await {
            Ok(()) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(switchboard_store::StoreError::Conflict(_)) => {
                drop(tx);
                let mut tx = self.store().read().await?;
                self.get_secret(&mut *tx, id).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a stored secret.
    pub async fn get_secret(&self, tx: &mut dyn Tx, id: &str) -> Result<Vec<u8>, AppError> {
        let row = tx
            .get_secret(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("secret {id}")))?;
        Ok(self.keyring().open_sealed(
            &aad(&row.id, &row.owner, &row.purpose),
            &Sealed {
                key_id: row.key_id,
                nonce: row.nonce,
                ciphertext: row.ciphertext,
            },
        )?)
    }

    /// Generates a new master key, re-seals every secret under it in one transaction, then
    /// retires the old keys. Returns (old primary, new primary, secrets re-sealed).
    pub async fn rotate_master_key(
        &self,
        principal: &Principal,
    ) -> Result<(String, String, usize), AppError> {
        let old = self.keyring();
        let new = old.with_new_primary()?;
        let mut tx = self.store().begin().await?;
        let rows = tx.list_secrets().await?;
        let now = now_ms();
        for row in &rows {
            let a = aad(&row.id, &row.owner, &row.purpose);
            let plain = new.open_sealed(
                &a,
                &Sealed {
                    key_id: row.key_id.clone(),
                    nonce: row.nonce.clone(),
                    ciphertext: row.ciphertext.clone(),
                },
            )?;
            let sealed = new.seal(&a, &plain)?;
            tx.put_secret(&SecretRow {
                key_id: sealed.key_id,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
                updated_at: now,
                ..row.clone()
            })
            .await?;
        }
        let event = AuditEvent::new(
            "",
            "master_key.rotated",
            format!("master_key:{}", new.primary_id()),
        )
        .with_details(serde_json::json!({"previous": old.primary_id(), "resealed": rows.len()}));
        self.audit(&mut *tx, principal, &RequestContext::default(), event)
            .await?;
        tx.commit().await?;
        let retired = new.retire_old_keys()?;
        self.replace_keyring(retired);
        Ok((
            old.primary_id().to_owned(),
            new.primary_id().to_owned(),
            rows.len(),
        ))
    }
}
