//! Operations: liveness, readiness, metrics and the OpenAPI document. No authentication.

use crate::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is up")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// The database answers and every embedded migration is applied; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: database reachable, migrations current"),
    (status = 503, description = "Not ready: database unreachable or migrations pending")))]
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let store = s.app.store();
    let db = store.ping().await;
    let migrations = store.migration_status().await;
    let (status, body) = match (db, migrations) {
        (Ok(()), Ok(m)) if m.is_current() => (
            StatusCode::OK,
            json!({"status": "ready", "database": "ok", "migrations": "current"}),
        ),
        (Ok(()), Ok(m)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "database": "ok", "migrations": "pending", "pending": m.pending(), "hint": "run `switchboard migrate`"}),
        ),
        (Err(e), _) | (Ok(()), Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "database": "unreachable"}),
            )
        }
    };
    (status, axum::Json(body))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let pool = s.app.store().pool_stats();
    metrics::gauge!("switchboard_db_pool_connections").set(f64::from(pool.size));
    metrics::gauge!("switchboard_db_pool_idle").set(f64::from(pool.idle));
    metrics::gauge!("switchboard_db_pool_max").set(f64::from(pool.max));
    if let Some(w) = pool.writer {
        // SQLite's one writer: its busy share (held + commits over the wall clock) is how close
        // the database is to its write capacity.
        metrics::counter!("switchboard_db_write_transactions_total", "lane" => "foreground")
            .absolute(w.transactions - w.background);
        metrics::counter!("switchboard_db_write_transactions_total", "lane" => "background")
            .absolute(w.background);
        metrics::counter!("switchboard_db_writer_held_microseconds_total").absolute(w.held_us);
        metrics::counter!("switchboard_db_group_commits_total").absolute(w.group_commits);
        metrics::counter!("switchboard_db_group_commit_microseconds_total").absolute(w.commit_us);
    }
    match s.app.job_counts().await {
        Ok(c) => {
            metrics::gauge!("switchboard_jobs_queued").set(c.queued as f64);
            metrics::gauge!("switchboard_jobs_running").set(c.running as f64);
            metrics::gauge!("switchboard_jobs_dead").set(c.dead as f64);
        }
        Err(e) => tracing::warn!(error = %e, "job counts unavailable for metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.as_str().to_owned(),
    )
}
