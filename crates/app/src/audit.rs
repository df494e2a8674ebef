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
            // The chain up to the head read above. Entries committed since (the log is written
            // while this runs, and on PostgreSQL each page is read afresh) are left for the next
            // run, but their existence is checked against the head read again below: an entry
            // and its head move commit together, so a head that is still behind an entry seen
            // here was edited.
            let mut v = ChainVerifier::new(head.chain);
            let mut after = 0;
            let mut broken = false;
            let mut newer = None;
            'pages: loop {
                let page = tx.audit_chain_page(head.chain, after, VERIFY_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    if e.seq > head.seq {
                        newer = Some(e.seq);
                        break 'pages;
                    }
                    if let Err(b) = v.feed(e) {
                        problems.push(b);
                        broken = true;
                        break 'pages;
                    }
                }
                if i64::try_from(page.len()).unwrap_or(0) < VERIFY_PAGE {
                    break;
                }
            }
            checked += v.checked;
            if broken {
                continue;
            }
            if let Err(b) = v.finish(head.seq, &head.hash) {
                problems.push(b);
                continue;
            }
            if let Some(seq) = newer {
                let now = tx.audit_heads().await?;
                let head_now = now
                    .iter()
                    .find(|h| h.chain == head.chain)
                    .map_or(0, |h| h.seq);
                if head_now < seq {
                    problems.push(ChainBreak::Truncated {
                        chain: head.chain,
                        head_seq: head_now,
                        last_seq: seq,
                    });
                }
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
