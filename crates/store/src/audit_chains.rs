//! Which audit chain a transaction appends to, and what this process knows of its head.
//!
//! Each chain's head row is locked by the transaction that appends to it, until it ends. Chosen
//! at random, two of a process's transactions often picked the same chain and one waited for the
//! other's commit (1.4-2.3 ms on average in the PostgreSQL shift-change bench, holding its
//! connection meanwhile). Here a transaction takes a chain no other transaction of this process
//! holds, while there is one ([`Chains::take`]); with at least as many chains as pooled
//! connections there always is. Only when all are taken does it share one (in turn).
//!
//! A chain held alone also carries the head as this process last committed it: a PostgreSQL
//! append can then send its entry with the batch's other writes, the head moving only if it is
//! still where this process left it (`... WHERE seq = <known>`); another replica may have moved
//! it, and then the append reads the head under its lock and writes again (see
//! `sql_impl::audit_statements`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A chain's head: its last entry's `seq` and `hash` (0 and 32 zero bytes when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: Vec<u8>,
}

#[derive(Debug)]
struct Slot {
    chain: i64,
    /// The head as last committed by this process; `None` when unknown.
    known: Option<Head>,
}

/// The audit chains of one store.
#[derive(Debug)]
pub(crate) struct Chains {
    count: u64,
    free: Mutex<Vec<Slot>>,
    /// Spreads the transactions that share a chain (every chain held) over all of them.
    shared: AtomicU64,
}

impl Chains {
    /// Chains `0..count` (1 to 16, as the migrations create 16 head rows).
    pub(crate) fn new(count: u32) -> Arc<Self> {
        let count = count.clamp(1, 16);
        Arc::new(Self {
            count: u64::from(count),
            // Popped from the end: chain 0 first.
            free: Mutex::new(
                (0..i64::from(count))
                    .rev()
                    .map(|chain| Slot { chain, known: None })
                    .collect(),
            ),
            shared: AtomicU64::new(0),
        })
    }

    /// A chain for one transaction: one no other transaction of this process holds, or, when
    /// every chain is held, one shared in turn (its head is then always read under its lock).
    pub(crate) fn take(self: &Arc<Self>) -> Lease {
        let slot = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match slot {
            Some(slot) => Lease {
                chain: slot.chain,
                own: Some((Arc::clone(self), slot)),
            },
            None => Lease {
                chain: i64::try_from(self.shared.fetch_add(1, Ordering::Relaxed) % self.count)
                    .unwrap_or(0),
                own: None,
            },
        }
    }
}

/// A transaction's chain, given back when the transaction ends (dropped).
#[derive(Debug)]
pub(crate) struct Lease {
    pub chain: i64,
    own: Option<(Arc<Chains>, Slot)>,
}

impl Lease {
    /// The head as this process last committed it, when the chain is held alone (no other
    /// transaction of this process appends to it meanwhile) and that head is known.
    pub(crate) fn known(&self) -> Option<&Head> {
        self.own.as_ref().and_then(|(_, slot)| slot.known.as_ref())
    }

    /// Remembers the head a committed transaction left. Only a hint: an append checks it
    /// against the head row and reads the row when they differ, so a head not remembered (a
    /// rollback, a commit whose answer was lost) costs a read, never a wrong link.
    pub(crate) fn remember(&mut self, head: Head) {
        if let Some((_, slot)) = &mut self.own {
            slot.known = Some(head);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((chains, slot)) = self.own.take() {
            chains
                .free
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_held_alone_until_its_lease_ends_then_shared_when_all_are_held() {
        let chains = Chains::new(2);
        let mut a = chains.take();
        let b = chains.take();
        assert!(a.own.is_some() && b.own.is_some());
        assert_ne!(a.chain, b.chain);
        let c = chains.take();
        assert!(c.own.is_none(), "both chains held: the third shares one");
        assert!((0..2).contains(&c.chain));
        let head = Head {
            seq: 7,
            hash: vec![1; 32],
        };
        a.remember(head.clone());
        let chain = a.chain;
        drop(a);
        let again = chains.take();
        assert_eq!(again.chain, chain);
        assert_eq!(again.known(), Some(&head), "the head it was left with");
    }
}
