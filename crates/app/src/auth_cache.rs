//! Credentials recently found valid, so that an agent's burst of requests (poll, results, poll
//! again) or an operator's run of API calls costs one database read, not one each.
//!
//! An entry lives [`AUTH_CACHE_TTL`] at most. A change that could make a cached credential
//! invalid (a revoked device or token, a re-enrolled device, a user's role or status changed)
//! clears the whole cache once it has committed, so on the replica that made it it takes effect
//! at once; other replicas see it when their entries are checked again. A read that started
//! before a clear never lands in the cache after it (each clear starts a new generation).
//!
//! No burst of requests waits for the database together: a credential in use is checked again
//! in the background once half its time is up (the request that notices goes on with the
//! remembered answer), so a busy one never ages out; and when one is not remembered, the first
//! request asks and the others with the same credential wait for its answer.

use crate::AppError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a credential found valid is trusted without asking the database again: the longest
/// a revocation made on another replica takes to reach this one.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Entries kept at most; a full cache starts over (it is only a shortcut).
const MAX_ENTRIES: usize = 50_000;

/// The longest a request waits for another's database read of the same credential before it
/// reads for itself.
const FLIGHT_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct AuthCache<V> {
    inner: Mutex<Inner<V>>,
    ttl: Duration,
}

struct Inner<V> {
    generation: u64,
    entries: HashMap<String, Entry<V>>,
    /// Database reads in progress, by key; those who came later wait on the `Notify`.
    flights: HashMap<String, Arc<Notify>>,
}

struct Entry<V> {
    value: V,
    at: Instant,
    /// A background check of this entry is under way.
    refreshing: bool,
}

/// What the cache knows of a key.
enum Cached<V> {
    Fresh(V),
    /// Valid, but half its time is up: the caller that gets this checks it again.
    Refresh(V),
    Miss,
}

impl<V: Clone + Send + 'static> AuthCache<V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                generation: 0,
                entries: HashMap::new(),
                flights: HashMap::new(),
            }),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value for `key`: remembered if it was found valid less than the TTL ago, otherwise
    /// what `lookup` (the database read, which fails for an invalid credential) answers. A
    /// remembered value past half its time is served and checked again in the background (one
    /// check at a time; an invalid answer forgets it). Only one lookup of a key at a time
    /// waits for the database; requests that come meanwhile wait for its answer.
    pub(crate) async fn get_or_lookup<F, Fut>(
        self: &Arc<Self>,
        key: String,
        lookup: F,
    ) -> Result<V, AppError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, AppError>> + Send + 'static,
    {
        match self.get(&key) {
            Cached::Fresh(v) => return Ok(v),
            Cached::Refresh(v) => {
                let generation = self.generation();
                let check = lookup();
                let cache = Arc::clone(self);
                tokio::spawn(async move {
                    let answer = check.await;
                    cache.settle_refresh(generation, &key, answer);
                });
                return Ok(v);
            }
            Cached::Miss => {}
        }
        let lead = self.lead_or_wait(&key).await;
        if lead.is_none()
            && let Cached::Fresh(v) | Cached::Refresh(v) = self.peek(&key)
        {
            return Ok(v);
        }
        let generation = self.generation();
        let v = lookup().await?;
        self.insert(generation, key.clone(), v.clone());
        drop(lead);
        Ok(v)
    }

    /// What is known of `key`; marks it as being checked again when it answers `Refresh`.
    fn get(&self, key: &str) -> Cached<V> {
        let mut inner = self.lock();
        let Some(e) = inner.entries.get_mut(key) else {
            return Cached::Miss;
        };
        let age = e.at.elapsed();
        if age >= self.ttl {
            Cached::Miss
        } else if age >= self.ttl / 2 && !e.refreshing {
            e.refreshing = true;
            Cached::Refresh(e.value.clone())
        } else {
            Cached::Fresh(e.value.clone())
        }
    }

    /// The value for `key` if still valid, without starting a check.
    fn peek(&self, key: &str) -> Cached<V> {
        let inner = self.lock();
        match inner.entries.get(key) {
            Some(e) if e.at.elapsed() < self.ttl => Cached::Fresh(e.value.clone()),
            _ => Cached::Miss,
        }
    }

    /// `Some` when the caller is the one to read the database for `key` (others wait until the
    /// answer is dropped); `None` once another caller's read of it has ended (or taken too long).
    async fn lead_or_wait<'a>(&'a self, key: &'a str) -> Option<Lead<'a, V>> {
        let flight = {
            let mut inner = self.lock();
            match inner.flights.get(key) {
                Some(f) => Arc::clone(f),
                None => {
                    inner
                        .flights
                        .insert(key.to_owned(), Arc::new(Notify::new()));
                    return Some(Lead { cache: self, key });
                }
            }
        };
        let landed = flight.notified();
        tokio::pin!(landed);
        landed.as_mut().enable();
        // The leader removes its flight and wakes the waiters under the lock, so a flight
        // still there now wakes this one when it ends.
        let still_flying = self
            .lock()
            .flights
            .get(key)
            .is_some_and(|f| Arc::ptr_eq(f, &flight));
        if still_flying {
            let _ = tokio::time::timeout(FLIGHT_WAIT, landed).await;
        }
        None
    }

    /// The generation to hand to [`Self::insert`]: take it before reading the database.
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches `value`, read from the database during `generation`, unless a clear came since.
    fn insert(&self, generation: u64, key: String, value: V) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(
            key,
            Entry {
                value,
                at: Instant::now(),
                refreshing: false,
            },
        );
    }

    /// A background check's answer: a valid credential is remembered afresh, an invalid one
    /// forgotten; when the database could not answer, the next request tries again (the entry
    /// still ages out on time).
    fn settle_refresh(&self, generation: u64, key: &str, answer: Result<V, AppError>) {
        match answer {
            Ok(v) => self.insert(generation, key.to_owned(), v),
            Err(AppError::Unauthenticated(_)) => {
                self.lock().entries.remove(key);
            }
            Err(_) => {
                if let Some(e) = self.lock().entries.get_mut(key) {
                    e.refreshing = false;
                }
            }
        }
    }

    /// Forgets everything (call after the change has committed).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
    }
}

/// The one database read of a key in progress: ends the flight when dropped (answered, failed
/// or cancelled), waking those who wait for it.
struct Lead<'a, V> {
    cache: &'a AuthCache<V>,
    key: &'a str,
}

impl<V> Drop for Lead<'_, V> {
    fn drop(&mut self) {
        let mut inner = self
            .cache
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = inner.flights.remove(self.key) {
            f.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A lookup that counts its calls, takes `delay` and answers `answer`.
    fn counted(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
        answer: Result<u32, AppError>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<u32, AppError>> + Send>> {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let answer = match &answer {
                Ok(v) => Ok(*v),
                Err(AppError::Unauthenticated(m)) => Err(AppError::Unauthenticated(m)),
                Err(_) => Err(AppError::Unavailable("down".into())),
            };
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            })
        }
    }

    #[tokio::test]
    async fn an_entry_is_served_until_it_ages_out_or_the_cache_is_cleared() {
        let c = Arc::new(AuthCache::new(Duration::from_millis(200)));
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = counted(&calls, Duration::ZERO, Ok(1));
        assert_eq!(c.get_or_lookup("k".into(), &ok).await.unwrap(), 1);
        assert_eq!(c.get_or_lookup("k".into(), &ok).await.unwrap(), 1);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the second came from memory"
        );
        c.clear();
        assert_eq!(c.get_or_lookup("k".into(), &ok).await.unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "cleared");
        tokio::time::sleep(Duration::from_millis(210)).await;
        assert!(matches!(c.peek("k"), Cached::Miss), "aged out");
    }

    #[tokio::test]
    async fn a_read_that_started_before_a_clear_is_not_cached() {
        let c = AuthCache::new(Duration::from_secs(5));
        let before = c.generation();
        c.clear();
        c.insert(before, "k".into(), 1);
        assert!(matches!(c.peek("k"), Cached::Miss));
    }

    #[tokio::test]
    async fn requests_that_miss_together_read_the_database_once() {
        let c = Arc::new(AuthCache::new(Duration::from_secs(5)));
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = counted(&calls, Duration::from_millis(50), Ok(7));
        let answers =
            futures_util::future::join_all((0..20).map(|_| c.get_or_lookup("k".into(), &slow)))
                .await;
        assert!(answers.iter().all(|a| matches!(a, Ok(7))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn when_the_first_read_fails_the_others_read_for_themselves() {
        let c = Arc::new(AuthCache::new(Duration::from_secs(5)));
        let calls = Arc::new(AtomicUsize::new(0));
        let bad = counted(
            &calls,
            Duration::from_millis(20),
            Err(AppError::Unauthenticated("no")),
        );
        let answers =
            futures_util::future::join_all((0..3).map(|_| c.get_or_lookup("k".into(), &bad))).await;
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, Err(AppError::Unauthenticated(_))))
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "an invalid credential is never remembered"
        );
    }

    #[tokio::test]
    async fn a_busy_entry_is_checked_again_in_the_background_and_never_ages_out() {
        let c = Arc::new(AuthCache::new(Duration::from_millis(200)));
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = counted(&calls, Duration::ZERO, Ok(1));
        for _ in 0..12 {
            assert_eq!(c.get_or_lookup("k".into(), &ok).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // 480 ms of use with a 200 ms TTL: checked again about every 100-140 ms, in the
        // background, never more than one check at a time.
        let n = calls.load(Ordering::SeqCst);
        assert!((3..=6).contains(&n), "{n} reads");
        assert!(matches!(c.peek("k"), Cached::Fresh(1)));
    }

    #[tokio::test]
    async fn a_background_check_that_finds_the_credential_invalid_forgets_it() {
        let c = Arc::new(AuthCache::new(Duration::from_millis(100)));
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = counted(&calls, Duration::ZERO, Ok(1));
        c.get_or_lookup("k".into(), &ok).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let revoked = counted(
            &calls,
            Duration::ZERO,
            Err(AppError::Unauthenticated("revoked")),
        );
        // Served from memory once more while the check runs...
        assert_eq!(c.get_or_lookup("k".into(), &revoked).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // ...then the check's answer stands.
        assert!(c.get_or_lookup("k".into(), &revoked).await.is_err());
    }

    #[tokio::test]
    async fn a_background_check_the_database_could_not_answer_is_tried_again() {
        let c = Arc::new(AuthCache::new(Duration::from_millis(100)));
        let calls = Arc::new(AtomicUsize::new(0));
        let ok = counted(&calls, Duration::ZERO, Ok(1));
        c.get_or_lookup("k".into(), &ok).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let down = counted(
            &calls,
            Duration::ZERO,
            Err(AppError::Unavailable("down".into())),
        );
        assert_eq!(c.get_or_lookup("k".into(), &down).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(c.get_or_lookup("k".into(), &ok).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "first read, failed check, second check"
        );
        assert!(matches!(c.peek("k"), Cached::Fresh(1)));
    }
}
