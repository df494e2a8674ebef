//! The tamper-evident audit log: entries are chained by SHA-256.
//!
//! Each entry belongs to one of a few chains (several chains let PostgreSQL replicas append in
//! parallel without one global lock). Inside a chain, entry `n` stores the hash of entry `n - 1`
//! and its own hash over its fields and that previous hash. Editing, deleting or reordering an
//! entry breaks the chain at that point; deleting the newest entries is caught by the chain head,
//! which records the last sequence number and hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash that the first entry of every chain points back to.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// What an audit entry says happened. `details` is JSON text and must never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Who did it: `user:<username>`, `token:<id>`, `system`, `device:<serial>` ...
    pub actor: String,
    /// What happened, dotted: `user.created`, `token.revoked`, `job.dead_retried` ...
    pub action: String,
    /// What it happened to: `user:<id>`, `token:<id>` ... (empty when nothing in particular).
    pub target: String,
    /// Extra facts as a JSON object (no secrets, no PHI).
    pub details: serde_json::Value,
    /// The request that caused it, when there was one.
    pub request_id: Option<String>,
}

impl AuditEvent {
    #[must_use]
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            details: serde_json::Value::Object(serde_json::Map::new()),
            request_id: None,
        }
    }

    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    #[must_use]
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }
}

/// The stored fields that the hash covers, exactly as they are stored.
#[derive(Debug, Clone, Copy)]
pub struct ChainedFields<'a> {
    pub chain: i64,
    pub seq: i64,
    pub at_ms: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub details: &'a str,
    pub request_id: Option<&'a str>,
}

/// The hash of one entry: SHA-256 over the previous hash and every stored field, each field
/// length-prefixed so that no two different entries serialise to the same bytes.
#[must_use]
pub fn entry_hash(prev: &[u8], f: &ChainedFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"switchboard-audit-v1");
    put(&mut h, prev);
    h.update(f.chain.to_be_bytes());
    h.update(f.seq.to_be_bytes());
    h.update(f.at_ms.to_be_bytes());
    put(&mut h, f.actor.as_bytes());
    put(&mut h, f.action.as_bytes());
    put(&mut h, f.target.as_bytes());
    put(&mut h, f.details.as_bytes());
    match f.request_id {
        Some(r) => {
            h.update([1]);
            put(&mut h, r.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// A stored entry as the verifier sees it.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub id: i64,
    pub chain: i64,
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: String,
    pub request_id: Option<String>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl StoredEntry {
    #[must_use]
    pub fn fields(&self) -> ChainedFields<'_> {
        ChainedFields {
            chain: self.chain,
            seq: self.seq,
            at_ms: self.at_ms,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            details: &self.details,
            request_id: self.request_id.as_deref(),
        }
    }
}

/// Where and why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainBreak {
    #[error(
        "chain {chain}: entry {seq} (row {id}) was altered: its hash does not match its content"
    )]
    Altered { chain: i64, seq: i64, id: i64 },
    #[error(
        "chain {chain}: entry {seq} (row {id}) does not point at the entry before it (expected sequence {expected}); an entry was deleted or inserted"
    )]
    Gap {
        chain: i64,
        seq: i64,
        id: i64,
        expected: i64,
    },
    #[error(
        "chain {chain}: entry {seq} (row {id}) names a previous hash that is not the previous entry's hash"
    )]
    Relinked { chain: i64, seq: i64, id: i64 },
    #[error(
        "chain {chain}: the head records {head_seq} entries but the log ends at {last_seq}; the newest entries were deleted or the head was edited"
    )]
    Truncated {
        chain: i64,
        head_seq: i64,
        last_seq: i64,
    },
    #[error("chain {chain}: the head's hash does not match the last entry's hash")]
    HeadMismatch { chain: i64 },
}

/// Incremental verifier for one chain, fed entries in sequence order.
#[derive(Debug)]
pub struct ChainVerifier {
    chain: i64,
    expected_seq: i64,
    prev_hash: Vec<u8>,
    pub checked: u64,
}

impl ChainVerifier {
    #[must_use]
    pub fn new(chain: i64) -> Self {
        Self {
            chain,
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_vec(),
            checked: 0,
        }
    }

    pub fn feed(&mut self, e: &StoredEntry) -> Result<(), ChainBreak> {
        if e.seq != self.expected_seq {
            return Err(ChainBreak::Gap {
                chain: self.chain,
                seq: e.seq,
                id: e.id,
                expected: self.expected_seq,
            });
        }
        if e.prev_hash != self.prev_hash {
            return Err(ChainBreak::Relinked {
                chain: self.chain,
                seq: e.seq,
                id: e.id,
            });
        }
        if entry_hash(&e.prev_hash, &e.fields()).as_slice() != e.hash.as_slice() {
            return Err(ChainBreak::Altered {
                chain: self.chain,
                seq: e.seq,
                id: e.id,
            });
        }
        self.prev_hash.clone_from(&e.hash);
        self.expected_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// Compares the end of the chain with its recorded head.
    pub fn finish(self, head_seq: i64, head_hash: &[u8]) -> Result<u64, ChainBreak> {
        let last_seq = self.expected_seq - 1;
        if head_seq != last_seq {
            return Err(ChainBreak::Truncated {
                chain: self.chain,
                head_seq,
                last_seq,
            });
        }
        if head_hash != self.prev_hash.as_slice() {
            return Err(ChainBreak::HeadMismatch { chain: self.chain });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: i64) -> Vec<StoredEntry> {
        let mut prev = GENESIS_HASH.to_vec();
        (1..=n)
            .map(|seq| {
                let mut e = StoredEntry {
                    id: seq * 10,
                    chain: 0,
                    seq,
                    at_ms: 1_700_000_000_000 + seq,
                    actor: "user:alice".into(),
                    action: "user.created".into(),
                    target: format!("user:{seq}"),
                    details: "{}".into(),
                    request_id: Some("req".into()),
                    prev_hash: prev.clone(),
                    hash: vec![],
                };
                e.hash = entry_hash(&prev, &e.fields()).to_vec();
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    fn verify(entries: &[StoredEntry], head_seq: i64, head_hash: &[u8]) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::new(0);
        for e in entries {
            v.feed(e)?;
        }
        v.finish(head_seq, head_hash)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain_of(5);
        assert_eq!(verify(&c, 5, &c[4].hash), Ok(5));
    }

    #[test]
    fn an_empty_chain_verifies_against_a_genesis_head() {
        assert_eq!(verify(&[], 0, &GENESIS_HASH), Ok(0));
    }

    #[test]
    fn an_edited_field_is_caught_as_altered() {
        let mut c = chain_of(5);
        c[2].target = "user:999".into();
        let head = c[4].hash.clone();
        assert!(matches!(
            verify(&c, 5, &head),
            Err(ChainBreak::Altered { seq: 3, .. })
        ));
    }

    #[test]
    fn a_deleted_middle_entry_is_caught_as_a_gap() {
        let mut c = chain_of(5);
        c.remove(1);
        let head = c[3].hash.clone();
        assert!(matches!(
            verify(&c, 5, &head),
            Err(ChainBreak::Gap { expected: 2, .. })
        ));
    }

    #[test]
    fn deleting_the_newest_entry_is_caught_by_the_head() {
        let mut c = chain_of(5);
        let head = c[4].hash.clone();
        c.pop();
        assert!(matches!(
            verify(&c, 5, &head),
            Err(ChainBreak::Truncated { .. })
        ));
    }

    #[test]
    fn a_rehashed_edit_still_breaks_the_link_to_the_next_entry() {
        let mut c = chain_of(5);
        c[2].actor = "user:mallory".into();
        let prev = c[2].prev_hash.clone();
        c[2].hash = entry_hash(&prev, &c[2].fields()).to_vec();
        let head = c[4].hash.clone();
        assert!(matches!(
            verify(&c, 5, &head),
            Err(ChainBreak::Relinked { seq: 4, .. })
        ));
    }

    #[test]
    fn fields_are_length_prefixed_so_shifting_text_between_them_changes_the_hash() {
        let a = ChainedFields {
            chain: 0,
            seq: 1,
            at_ms: 0,
            actor: "ab",
            action: "c",
            target: "",
            details: "{}",
            request_id: None,
        };
        let b = ChainedFields {
            actor: "a",
            action: "bc",
            ..a
        };
        assert_ne!(entry_hash(&GENESIS_HASH, &a), entry_hash(&GENESIS_HASH, &b));
    }
}
