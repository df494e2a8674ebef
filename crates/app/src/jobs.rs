//! The durable job queue: enqueue inside a use case's transaction, run by workers in every
//! replica. A job is leased (not locked) while it runs: a worker that dies loses its lease and
//! the job runs again elsewhere, so handlers must be idempotent. Failures are retried with
//! exponential backoff and jitter, then dead-lettered for an operator to retry or discard.

use crate::{App, AppError, Principal, RequestContext, now_ms};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::jobs::{JobOutcome, RetryPolicy, is_valid_kind};
use switchboard_store::{JobCounts, JobFilter, JobRow, NewJob, Tx};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A job kind's code. Must be idempotent: it may run more than once.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn policy(&self, defaults: RetryPolicy) -> RetryPolicy {
        defaults
    }
    async fn run(&self, app: &App, job: &JobRow) -> JobOutcome;
}

/// Enqueues a job in `tx`. Returns the id, or `None` when `dedupe_key` is already queued.
pub async fn enqueue(
    tx: &mut dyn Tx,
    kind: &str,
    payload: serde_json::Value,
    dedupe_key: Option<String>,
    delay: Duration,
    max_attempts: u32,
) -> Result<Option<i64>, AppError> {
    check_kind(kind)?;
    let mut job = new_job(kind, payload, now_ms(), max_attempts);
    job.dedupe_key = dedupe_key;
    job.run_at += i64::try_from(delay.as_millis()).unwrap_or(0);
    Ok(tx.enqueue_job(&job).await?)
}

fn check_kind(kind: &str) -> Result<(), AppError> {
    if is_valid_kind(kind) {
        Ok(())
    } else {
        Err(AppError::Internal(format!("invalid job kind `{kind}`")))
    }
}

/// A job to run now, for [`enqueue_all`].
#[must_use]
pub fn new_job(kind: &str, payload: serde_json::Value, now: i64, max_attempts: u32) -> NewJob {
    NewJob {
        kind: kind.to_owned(),
        payload,
        dedupe_key: None,
        run_at: now,
        max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
        now,
    }
}

/// Enqueues several jobs in `tx`, in one statement.
pub async fn enqueue_all(tx: &mut dyn Tx, jobs: &[NewJob]) -> Result<(), AppError> {
    check_kinds(jobs)?;
    tx.enqueue_jobs(jobs).await?;
    Ok(())
}

/// Refuses jobs of a malformed kind (for jobs enqueued through [`Tx::write_all`]).
pub fn check_kinds(jobs: &[NewJob]) -> Result<(), AppError> {
    jobs.iter().try_for_each(|j| check_kind(&j.kind))
}

/// Settings of the worker loop.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub owner: String,
    pub concurrency: u32,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub defaults: RetryPolicy,
}

impl WorkerSettings {
    #[must_use]
    pub fn from_config(c: &crate::Config) -> Self {
        Self {
            owner: format!(
                "{}-{}",
                hostname(),
                crate::crypto::new_secret("w")
                    .get(2..12)
                    .unwrap_or("worker")
            ),
            concurrency: c.job_concurrency,
            poll_interval: Duration::from_millis(c.job_poll_interval_ms),
            lease: Duration::from_secs(c.job_lease_seconds),
            defaults: RetryPolicy {
                max_attempts: c.job_max_attempts,
                base: Duration::from_millis(c.job_backoff_base_ms),
                cap: Duration::from_millis(c.job_backoff_cap_ms),
            },
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}

/// The job kinds this process can run.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
}

impl Registry {
    #[must_use]
    pub fn with(mut self, h: impl JobHandler) -> Self {
        self.handlers.insert(h.kind(), Arc::new(h));
        self
    }

    /// Every kind Switchboard ships.
    #[must_use]
    pub fn standard() -> Self {
        Self::default()
            .with(WebhookDelivery)
            .with(crate::epic_env::AdvanceKeySet)
            .with(crate::telehealth::RenewToken)
            .with(crate::telehealth::ConnectionStatus)
            .with(crate::telehealth::Purge)
            .with(crate::lending::EpicLogout)
            .with(crate::lending::Sweep)
    }
}

/// Runs jobs until `stop` is cancelled; lets running jobs finish (up to their lease) on stop.
pub async fn run_workers(
    app: App,
    registry: Registry,
    settings: WorkerSettings,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency as usize));
    let signal = app.store().job_signal();
    let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(60_000);
    tracing::info!(owner = %settings.owner, concurrency = settings.concurrency, "job workers started");
    while !stop.is_cancelled() {
        let free = slots.available_permits();
        let mut claimed = Vec::new();
        if free > 0 {
            let notified = signal.notified();
            // Job work is background work: on SQLite, requests waiting for the writer go first.
            match switchboard_store::background(claim(&app, &settings.owner, lease_ms, free)).await
            {
                Ok(jobs) => claimed = jobs,
                Err(e) => tracing::warn!(error = %e, "claiming jobs failed; will retry"),
            }
            if claimed.is_empty() {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(settings.poll_interval) => {}
                    () = stop.cancelled() => break,
                }
                continue;
            }
        } else {
            tokio::select! {
                _ = slots.clone().acquire_owned() => {}
                () = stop.cancelled() => break,
            }
            continue;
        }
        for job in claimed {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let app = app.clone();
            let registry = registry.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                switchboard_store::background(execute(&app, &registry, &settings, job)).await;
                drop(permit);
            });
        }
    }
    // Wait for running jobs to finish.
    let _ = tokio::time::timeout(settings.lease, slots.acquire_many(settings.concurrency)).await;
    tracing::info!(owner = %settings.owner, "job workers stopped");
}

async fn claim(
    app: &App,
    owner: &str,
    lease_ms: i64,
    limit: usize,
) -> Result<Vec<JobRow>, AppError> {
    let mut tx = app.store().begin().await?;
    let jobs = tx
        .claim_jobs(owner, now_ms(), lease_ms, i64::try_from(limit).unwrap_or(1))
        .await?;
    tx.commit().await?;
    Ok(jobs)
}

async fn execute(app: &App, registry: &Registry, s: &WorkerSettings, job: JobRow) {
    let started = std::time::Instant::now();
    let (outcome, policy) = match registry.handlers.get(job.kind.as_str()) {
        None => (
            JobOutcome::Permanent {
                error: format!("no handler for job kind `{}` in this version", job.kind),
            },
            s.defaults,
        ),
        Some(h) => {
            let policy = h.policy(s.defaults);
            // A job must finish well inside its lease, or another worker may start it again.
            let outcome = match tokio::time::timeout(s.lease / 2, h.run(app, &job)).await {
                Ok(o) => o,
                Err(_) => JobOutcome::Retry {
                    error: format!("timed out after {:?}", s.lease / 2),
                    after: None,
                },
            };
            (outcome, policy)
        }
    };
    let label = match &outcome {
        JobOutcome::Done | JobOutcome::Settled => "done",
        JobOutcome::Retry { .. } => "retry",
        JobOutcome::Permanent { .. } => "failed",
    };
    metrics::counter!("switchboard_job_attempts_total", "kind" => job.kind.clone(), "outcome" => label).increment(1);
    metrics::histogram!("switchboard_job_duration_seconds", "kind" => job.kind.clone())
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = settle(app, s, &job, outcome, policy).await {
        // The lease will run out and the job will run again: nothing is lost.
        tracing::warn!(job_id = job.id, kind = %job.kind, error = %e, "could not record job outcome");
    }
}

async fn settle(
    app: &App,
    s: &WorkerSettings,
    job: &JobRow,
    outcome: JobOutcome,
    policy: RetryPolicy,
) -> Result<(), AppError> {
    if outcome == JobOutcome::Settled {
        return Ok(());
    }
    let now = now_ms();
    let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
    let max = u32::try_from(job.max_attempts)
        .unwrap_or(policy.max_attempts)
        .min(policy.max_attempts.max(1));
    let mut tx = app.store().begin().await?;
    match outcome {
        JobOutcome::Done | JobOutcome::Settled => {
            tx.complete_job(job.id, &s.owner).await?;
        }
        JobOutcome::Retry { error, after } if attempts < max => {
            let mut delay = policy.delay_after(attempts, crate::crypto::random_unit());
            if let Some(a) = after {
                delay = delay.max(a);
            }
            let run_at = now + i64::try_from(delay.as_millis()).unwrap_or(0);
            tracing::info!(job_id = job.id, kind = %job.kind, attempts, retry_in_ms = delay.as_millis() as u64, error = %error, "job will be retried");
            tx.retry_job_later(job.id, &s.owner, run_at, &error, now)
                .await?;
        }
        JobOutcome::Retry { error, .. } | JobOutcome::Permanent { error } => {
            if tx.bury_job(job.id, &s.owner, &error, now).await? {
                tracing::warn!(job_id = job.id, kind = %job.kind, attempts, error = %error, "job dead-lettered");
                metrics::counter!("switchboard_jobs_dead_lettered_total", "kind" => job.kind.clone()).increment(1);
                let ev = AuditEvent::new("system", "job.dead_lettered", format!("job:{}", job.id))
                    .with_details(
                        serde_json::json!({"kind": job.kind, "attempts": attempts, "error": error}),
                    );
                app.append_audit(&mut *tx, &ev).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

impl App {
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRow>, AppError> {
        if let Some(s) = &filter.state
            && !matches!(s.as_str(), "queued" | "dead")
        {
            return Err(switchboard_domain::ValidationErrors::single(
                "state",
                "must be `queued` or `dead`",
            )
            .into());
        }
        let mut tx = self.store().read().await?;
        Ok(tx
            .list_jobs(&JobFilter {
                limit: filter.limit.clamp(1, 1_000),
                ..filter
            })
            .await?)
    }

    pub async fn job_counts(&self) -> Result<JobCounts, AppError> {
        let mut tx = self.store().read().await?;
        Ok(tx.job_counts(now_ms()).await?)
    }

    pub async fn get_job(&self, id: i64) -> Result<JobRow, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_job(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("job {id}")))
    }

    /// Puts a dead job back in the queue (attempts reset).
    pub async fn retry_dead_job(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        id: i64,
    ) -> Result<JobRow, AppError> {
        let mut tx = self.store().begin().await?;
        let job = tx
            .get_job(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("job {id}")))?;
        if !tx.revive_dead_job(id, now_ms()).await? {
            return Err(AppError::Conflict(format!(
                "job {id} is not dead (state: {})",
                job.state
            )));
        }
        let ev = AuditEvent::new("", "job.retried", format!("job:{id}"))
            .with_details(serde_json::json!({"kind": job.kind}));
        self.audit(&mut *tx, principal, ctx, ev).await?;
        let job = tx
            .get_job(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("job {id}")))?;
        tx.commit().await?;
        Ok(job)
    }

    pub async fn discard_dead_job(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        id: i64,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        let job = tx
            .get_job(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("job {id}")))?;
        if !tx.discard_dead_job(id).await? {
            return Err(AppError::Conflict(format!(
                "job {id} is not dead (state: {})",
                job.state
            )));
        }
        let ev = AuditEvent::new("", "job.discarded", format!("job:{id}"))
            .with_details(serde_json::json!({"kind": job.kind, "last_error": job.last_error}));
        self.audit(&mut *tx, principal, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `webhook.deliver`: POSTs a JSON event to a URL (lost-mode alerts, emergency unlocks, ...).
/// 2xx is done; 408, 429 and 5xx and network failures are retried; other 4xx are permanent.
pub struct WebhookDelivery;

#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookPayload {
    pub url: String,
    pub event: serde_json::Value,
}

pub const WEBHOOK_KIND: &str = "webhook.deliver";

#[async_trait]
impl JobHandler for WebhookDelivery {
    fn kind(&self) -> &'static str {
        WEBHOOK_KIND
    }

    async fn run(&self, app: &App, job: &JobRow) -> JobOutcome {
        let p: WebhookPayload = match serde_json::from_value(job.payload.clone()) {
            Ok(p) => p,
            Err(e) => {
                return JobOutcome::Permanent {
                    error: format!("bad payload: {e}"),
                };
            }
        };
        let resp = app
            .http()
            .post(&p.url)
            .header("Idempotency-Key", format!("switchboard-job-{}", job.id))
            .json(&p.event)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => JobOutcome::Done,
            Ok(r) => {
                let code = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let error = format!("receiver answered HTTP {code}");
                if code == 408 || code == 429 || code >= 500 {
                    JobOutcome::Retry {
                        error,
                        after: retry_after,
                    }
                } else {
                    JobOutcome::Permanent { error }
                }
            }
            Err(e) => JobOutcome::Retry {
                error: format!("could not reach receiver: {}", crate::outbound_error(&e)),
                after: None,
            },
        }
    }
}
