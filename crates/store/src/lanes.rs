//! Foreground work first on SQLite: background write transactions (see [`crate::background`])
//! let the foreground ones queued for the one writer go first, for at most
//! [`crate::BACKGROUND_YIELD`] each, one background transaction at a time.
//!
//! PostgreSQL runs transactions side by side and has no such queue. Letting its background
//! transactions wait for open foreground ones was measured (shift-change bench, 2 cores shared
//! with PostgreSQL): check-ins went from 325 to about 590 a second, but a few percent of them
//! stalled for 0.7-0.9 s, so it is not done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

pub(crate) struct Lanes {
    foreground: AtomicUsize,
    clear: Notify,
    /// Background transactions take their turn one at a time: when the foreground lane
    /// empties, one of them goes, not all of them ahead of the next requests.
    background_turn: Semaphore,
}

impl Default for Lanes {
    fn default() -> Self {
        Self {
            foreground: AtomicUsize::new(0),
            clear: Notify::new(),
            background_turn: Semaphore::new(1),
        }
    }
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
