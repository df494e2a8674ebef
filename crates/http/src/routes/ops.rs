//! Operations: liveness, readiness, metrics and the OpenAPI document. No authentication.

use crate::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// The database answers and every embedded migration is applied; 503 otherwise.
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

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let pool = s.app.store().pool_stats();
    metrics::gauge!("switchboard_db_pool_connections").set(f64::from(pool.size));
    metrics::gauge!("switchboard_db_pool_idle").set(f64::from(pool.idle));
    metrics::gauge!("switchboard_db_pool_max").set(f64::from(pool.max));
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

async fn openapi(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.as_str().to_owned(),
    )
}
