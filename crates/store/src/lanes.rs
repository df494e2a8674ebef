//! Foreground work first: background write transactions (see [`crate::background`]) let the
//! foreground ones go first, for at most [`crate::BACKGROUND_YIELD`] each, one background
//! transaction at a time.
//!
//! What "going first" means depends on what the backend runs out of. SQLite has one writer:
//! foreground transactions count while they queue for it. PostgreSQL runs transactions side by
//! side, on the same cores as this process on a small machine, and on a bounded pool:
//! foreground transactions count while they are open, and background ones also hold one of a
//! few slots (a quarter of the pool) while open, so that work queued behind a burst of requests
//! never takes the connections those requests need. Measured with the shift-change bench
//! (2 cores shared with PostgreSQL): without the slots, background transactions released by the
//! lane piled up in the pool's queue and a few percent of check-ins waited 0.7 s for a
//! connection; with them, check-ins went from 420 to about 970 a second, p99 from 210 to 145 ms
//! (32 connections; about 1,100 and 80 ms with the default 16).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

pub(crate) struct Lanes {
    foreground: AtomicUsize,
    clear: Notify,
    /// Background transactions take their turn one at a time: when the foreground lane
    /// empties, one of them goes, not all of them ahead of the next requests.
    background_turn: Semaphore,
    /// PostgreSQL: background transactions open at once, at most.
    background_slots: Arc<Semaphore>,
}

impl Default for Lanes {
    fn default() -> Self {
        Self::new(Semaphore::MAX_PERMITS)
    }
}

/// A transaction's place in its lane, given up when it ends.
pub(crate) enum Lane {
    Foreground(#[allow(dead_code, reason = "held only to be released")] Foreground),
    Background(#[allow(dead_code, reason = "held only to be released")] OwnedSemaphorePermit),
}

/// A foreground transaction's place in its lane, given up when dropped.
pub(crate) struct Foreground(Arc<Lanes>);

impl Drop for Foreground {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.clear.notify_waiters();
        }
    }
}

impl Lanes {
    pub(crate) fn new(background_slots: usize) -> Self {
        Self {
            foreground: AtomicUsize::new(0),
            clear: Notify::new(),
            background_turn: Semaphore::new(1),
            background_slots: Arc::new(Semaphore::new(background_slots)),
        }
    }

    /// PostgreSQL: a background transaction's turn (see [`Self::let_foreground_go_first`]),
    /// then one of the background slots, held while the transaction is open.
    pub(crate) async fn background_slot(&self) -> OwnedSemaphorePermit {
        let _turn = self.let_foreground_go_first().await;
        Arc::clone(&self.background_slots)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the slots are never closed"))
    }

    /// Counts a foreground transaction until the guard is dropped.
    pub(crate) fn foreground(self: &Arc<Self>) -> Foreground {
        self.foreground.fetch_add(1, Ordering::AcqRel);
        Foreground(Arc::clone(self))
    }

    /// A background transaction's turn: waits for the other background ones before it, then
    /// until no foreground transaction counts, or [`crate::BACKGROUND_YIELD`] has passed. The
    /// permit keeps the next background transaction waiting while the caller holds it.
    pub(crate) async fn let_foreground_go_first(&self) -> Option<SemaphorePermit<'_>> {
        // Never closed, so the permit always comes.
        let turn = self.background_turn.acquire().await.ok();
        self.wait_for_foreground().await;
        turn
    }

    /// Waits until no foreground transaction counts, or [`crate::BACKGROUND_YIELD`] has passed.
    pub(crate) async fn wait_for_foreground(&self) {
        let until = tokio::time::Instant::now() + crate::BACKGROUND_YIELD;
        while self.foreground.load(Ordering::Acquire) > 0 {
            let clear = self.clear.notified();
            tokio::pin!(clear);
            clear.as_mut().enable();
            if self.foreground.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                () = clear => {}
                () = tokio::time::sleep_until(until) => break,
            }
        }
    }
}
