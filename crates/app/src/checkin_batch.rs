//! Check-ins that arrive together share one transaction (PostgreSQL).
//!
//! At a shift change dozens of check-ins arrive at once. Alone, each is four round trips to
//! PostgreSQL (`BEGIN`, lock the device, the writes, `COMMIT`) and a commit of its own, and on a
//! small machine the database's share of the cores is what limits them. Here a few workers (one
//! per connection kept for batches) take the check-ins queued meanwhile, up to [`MAX_BATCH`] at
//! a time, lock all their devices in one statement (in id order, so batches never wait for each
//! other in a cycle), run each check-in as it would run alone (its writes, audit entry and Epic
//! logout jobs in one statement) and commit once: a check-in costs about one round trip instead
//! of four.
//! Measured with the shift-change bench (2 cores shared with PostgreSQL, 64 clients): about
//! 1,550 → 2,000 check-ins a second, and 2,200-2,400 with the write transactions' generic plans
//! (`store/src/postgres.rs`).
//!
//! Each check-in is still all or nothing: when anything in a batch fails, the whole transaction
//! is rolled back and every check-in of it runs again alone, answering its own error. A device
//! named twice in one batch is checked in by the first; the second runs alone after the commit
//! and answers the receipt (`already_checked_in`), as two requests one after the other would.
//! The batches run on connections of their own (`Store::begin_batch`), which keep the batch's
//! statements prepared. SQLite commits in groups already (its writer), so it checks in one at a
//! time.

use crate::devices::group_view;
use crate::lending::{Receipt, receipt_view};
use crate::{App, AppError, AppInner, Principal, RequestContext};
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Check-ins in one transaction at most.
const MAX_BATCH: usize = 16;

/// Check-ins waiting for a worker at most; further ones wait to be queued.
const QUEUE: usize = 1024;

/// The queue the workers take batches from.
pub(crate) type CheckinQueue = mpsc::Sender<Queued>;

/// A check-in waiting for its batch.
pub(crate) struct Queued {
    p: Principal,
    ctx: RequestContext,
    device: String,
    requested_by: String,
    answer: oneshot::Sender<Result<Receipt, AppError>>,
}

impl App {
    /// Runs the check-in in a batch (PostgreSQL); `None` when this store checks in one at a
    /// time, or the workers are gone, and the caller should run it alone.
    pub(crate) async fn checkin_batched(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        device: &str,
        requested_by: &str,
    ) -> Option<Result<Receipt, AppError>> {
        if self.store().batch_connections() == 0 {
            return None;
        }
        let queue = self
            .inner
            .checkins
            .get_or_init(|| start_workers(&self.inner));
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            p: p.clone(),
            ctx: ctx.clone(),
            device: device.to_owned(),
            requested_by: requested_by.to_owned(),
            answer,
        };
        queue.send(queued).await.ok()?;
        Some(answered.await.unwrap_or_else(|_| {
            Err(AppError::Unavailable(
                "the check-in stopped before it was answered; checking in again is safe".to_owned(),
            ))
        }))
    }

    /// Runs one batch and answers every check-in in it.
    async fn check_in_batch(&self, batch: Vec<Queued>) {
        metrics::histogram!("switchboard_checkin_batch_size").record(batch.len() as f64);
        let answers = match self.check_in_together(&batch).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::warn!(error = %e, checkins = batch.len(), "a batch of check-ins failed; each runs again alone");
                batch.iter().map(|_| None).collect()
            }
        };
        for (q, answer) in batch.into_iter().zip(answers) {
            let answer = match answer {
                Some(a) => a,
                None => {
                    self.checkin_alone(&q.p, &q.ctx, &q.device, &q.requested_by)
                        .await
                }
            };
            // The requester may have gone; the check-in stands either way.
            let _ = q.answer.send(answer);
        }
    }

    /// The batch in one transaction: an answer for each check-in, `None` for one to run alone
    /// after the commit (its device came twice). An error rolls everything back.
    async fn check_in_together(
        &self,
        batch: &[Queued],
    ) -> Result<Vec<Option<Result<Receipt, AppError>>>, AppError> {
        let keys: Vec<&str> = batch.iter().map(|q| q.device.as_str()).collect();
        let mut tx = self.store().begin_batch().await?;
        let locked = tx.lock_devices_with_group_and_holder(&keys).await?;
        let mut taken = HashSet::new();
        let mut answers = Vec::with_capacity(batch.len());
        let mut checked_in = Vec::new();
        for q in batch {
            let Some((d, group, user)) = locked
                .iter()
                .find(|(d, ..)| d.id == q.device || d.serial == q.device)
            else {
                answers.push(Some(Err(AppError::NotFound(format!(
                    "device {}",
                    q.device
                )))));
                continue;
            };
            if !taken.insert(d.id.as_str()) {
                answers.push(None);
                continue;
            }
            if d.status != "checked_out" {
                answers.push(Some(self.not_checked_out(&mut *tx, d).await));
                continue;
            }
            let group = group.clone().map(group_view);
            let (c, rows) = self
                .checkin_in_tx(
                    &mut *tx,
                    d.clone(),
                    group.as_ref(),
                    &q.requested_by,
                    Some((&q.p, &q.ctx)),
                )
                .await?;
            answers.push(Some(Ok(receipt_view(&c, d, user.as_ref(), &rows))));
            checked_in.push(d.id.as_str());
        }
        tx.commit().await?;
        for id in checked_in {
            self.wake_device(id);
        }
        Ok(answers)
    }
}

/// Starts the workers; answers the queue they take batches from. They stop when the app (and
/// with it the queue's sender) is dropped.
fn start_workers(app: &Arc<AppInner>) -> CheckinQueue {
    let (queue, waiting) = mpsc::channel(QUEUE);
    let waiting = Arc::new(tokio::sync::Mutex::new(waiting));
    // One worker per connection the store keeps for batches (a quarter of the pool). Measured
    // with the shift-change bench (2 cores, pool of 16, 64 clients): 4 workers of up to 16 did
    // best; 8 of 8 and 16 of 4 ran as many check-ins a second with a longer tail.
    for _ in 0..app.store.batch_connections().max(1) {
        tokio::spawn(work(Arc::downgrade(app), Arc::clone(&waiting)));
    }
    queue
}

/// One worker: takes what is queued (up to [`MAX_BATCH`]; waits for the first) and runs it.
async fn work(app: Weak<AppInner>, waiting: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>) {
    loop {
        let batch = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            batch
        };
        let Some(inner) = app.upgrade() else {
            return;
        };
        App { inner }.check_in_batch(batch).await;
    }
}
