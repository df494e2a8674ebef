//! Reading, exporting and verifying the audit log.

use crate::{App, AppError};
use serde::Serialize;
use switchboard_domain::audit::{ChainBreak, ChainVerifier};
use switchboard_store::{AuditFilter, AuditRecord};

const VERIFY_PAGE: i64 = 1_000;

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries_checked: u64,
    pub chains: usize,
    pub problems: Vec<ChainBreak>,
}

impl App {
    pub async fn list_audit(&self, mut filter: AuditFilter) -> Result<Vec<AuditRecord>, AppError> {
        filter.limit = filter.limit.clamp(1, 1_000);
        let mut tx = self.store().read().await?;
        Ok(tx.list_audit(&filter).await?)
    }

    /// Walks every chain from its first entry and compares its end with the recorded head.
    pub async fn verify_audit(&self) -> Result<VerifyReport, AppError> {
        let mut tx = self.store().read().await?;
        let heads = tx.audit_heads().await?;
        let mut problems = Vec::new();
        let mut checked = 0;
        for head in &heads {
            let mut v = ChainVerifier::new(head.chain);
            let mut after = 0;
            let mut broken = false;
            loop {
                let page = tx.audit_chain_page(head.chain, after, VERIFY_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    if let Err(b) = v.feed(e) {
                        problems.push(b);
                        broken = true;
                        break;
                    }
                }
                if broken || i64::try_from(page.len()).unwrap_or(0) < VERIFY_PAGE {
                    break;
                }
            }
            checked += v.checked;
            if !broken && let Err(b) = v.finish(head.seq, &head.hash) {
                problems.push(b);
            }
        }
        Ok(VerifyReport {
            ok: problems.is_empty(),
            entries_checked: checked,
            chains: heads.len(),
            problems,
        })
    }
}
