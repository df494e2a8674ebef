//! The HTTP surface. Handlers parse input, check authorization through their extractor, call one
//! use case and map its result; they never touch the database.

pub mod auth;
pub mod console;
pub mod error;
pub mod front;
pub mod h1;
pub mod metrics_layer;
pub mod openapi;
pub mod routes;
pub mod upstream;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use switchboard_app::App;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveHeadersLayer;
use tower_http::trace::TraceLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub metrics: PrometheusHandle,
    pub openapi: Arc<String>,
}

impl FromRef<AppState> for App {
    fn from_ref(s: &AppState) -> Self {
        s.app.clone()
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole router: operations, admin API, console, with the shared middleware.
pub fn router(app: App, metrics: PrometheusHandle) -> Router {
    let max_body = app.config().max_body_bytes;
    let (api, doc) = openapi::api_router().split_for_parts();
    let doc = openapi::finish(doc);
    let state = AppState {
        app,
        metrics,
        openapi: Arc::new(serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_owned())),
    };
    let gateway_state = state.clone();
    Router::new()
        .merge(api)
        .merge(console::router())
        .merge(routes::telehealth::router())
        .merge(routes::kiosk::router())
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(metrics_layer::track))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            axum::response::IntoResponse::into_response(error::ApiError::internal())
        }))
        .layer(middleware::from_fn(scope_request_id))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    // The path only: query strings may carry launch data or tokens.
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_request(())
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetSensitiveHeadersLayer::new([header::AUTHORIZATION, header::COOKIE, header::SET_COOKIE]))
        // The gateway's data path skips the per-route metrics and tracing spans (each request
        // leaves its own access record instead) so a proxied call costs as little as possible.
        .merge(
            routes::gateway::router()
                .with_state(gateway_state)
                .layer(DefaultBodyLimit::max(max_body))
                .layer(CatchPanicLayer::custom(|_| {
                    tracing::error!("a gateway handler panicked");
                    axum::response::IntoResponse::into_response(error::ApiError::internal())
                })),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, CounterRequestId::default()))
}

/// Request ids: a random per-process prefix and a counter (unique, and no system call per
/// request as a random UUID would cost).
#[derive(Clone)]
pub(crate) struct CounterRequestId {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for CounterRequestId {
    fn default() -> Self {
        Self {
            prefix: uuid::Uuid::new_v4().simple().to_string()[..12].into(),
            next: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }
}

impl CounterRequestId {
    pub(crate) fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}

impl MakeRequestId for CounterRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&self.next_id())
            .ok()
            .map(RequestId::new)
    }
}

/// Makes the request id available to error bodies (task-local for the request's handler).
async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    error::REQUEST_ID.scope(id, next.run(req)).await
}

pub use front::serve;
