//! Credentials recently found valid, so that an agent's burst of requests (poll, results, poll
//! again) or an operator's run of API calls costs one database read, not one each.
//!
//! An entry lives [`AUTH_CACHE_TTL`] at most. A change that could make a cached credential
//! invalid (a revoked device or token, a re-enrolled device, a user's role or status changed)
//! clears the whole cache once it has committed, so on the replica that made it it takes effect
//! at once; other replicas see it when their entries age out. A read that started before a
//! clear never lands in the cache after it (each clear starts a new generation).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a credential found valid is trusted without asking the database again: the longest
/// a revocation made on another replica takes to reach this one.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Entries kept at most; a full cache starts over (it is only a shortcut).
const MAX_ENTRIES: usize = 50_000;

pub(crate) struct AuthCache<V> {
    inner: Mutex<Inner<V>>,
    ttl: Duration,
}

struct Inner<V> {
    generation: u64,
    entries: HashMap<String, (V, Instant)>,
}

impl<V: Clone> AuthCache<V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                generation: 0,
                entries: HashMap::new(),
            }),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value cached for `key`, if it is younger than the TTL.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let inner = self.lock();
        let (v, at) = inner.entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    /// The generation to hand to [`Self::insert`]: take it before reading the database.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches `value`, read from the database during `generation`, unless a clear came since.
    pub(crate) fn insert(&self, generation: u64, key: String, value: V) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(key, (value, Instant::now()));
    }

    /// Forgets everything (call after the change has committed).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_served_until_it_ages_out_or_the_cache_is_cleared() {
        let c = AuthCache::new(Duration::from_millis(50));
        let g = c.generation();
        c.insert(g, "k".into(), 1);
        assert_eq!(c.get("k"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("k"), None, "aged out");
        c.insert(c.generation(), "k".into(), 2);
        c.clear();
        assert_eq!(c.get("k"), None, "cleared");
    }

    #[test]
    fn a_read_that_started_before_a_clear_is_not_cached() {
        let c = AuthCache::new(Duration::from_secs(5));
        let before = c.generation();
        c.clear();
        c.insert(before, "k".into(), 1);
        assert_eq!(c.get("k"), None);
    }
}
