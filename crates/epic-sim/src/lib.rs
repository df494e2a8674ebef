//! `switchboard epic-sim`: a strict stand-in for a customer's Epic Interconnect.
//!
//! Instances are addressed the way Epic addresses them: `/{instance}-oauth/...` for OAuth-protected
//! calls and `/{instance}-username/...` for Basic-auth private APIs. Everything the simulator
//! receives is written to a call journal (`/_sim/calls`) that tests read, and faults can be
//! injected per endpoint (`/_sim/faults`). See docs/epic-sim.md.

#![allow(
    clippy::result_large_err,
    reason = "handlers return ready-made axum responses as their error; built only for failed requests"
)]

pub mod config;
pub mod control;
pub mod data;
pub mod epic_api;
pub mod faults;
pub mod fhir;
pub mod hl7;
pub mod oauth;
pub mod state;

use axum::Router;
use axum::routing::{get, post};
use std::net::SocketAddr;

pub use config::{ClientConfig, InstanceConfig, SimConfig, SystemUser};
pub use state::Sim;

/// A running simulator.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub sim: Sim,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningSim {
    /// `http://127.0.0.1:PORT`
    #[must_use]
    pub fn base_url(&self) -> String {
        self.sim.base_url()
    }

    /// The OAuth token URL of `instance` (what `aud` must equal).
    #[must_use]
    pub fn token_url(&self, instance: &str) -> String {
        format!("{}/{instance}-oauth/oauth2/token", self.base_url())
    }

    /// The FHIR R4 base of `instance`.
    #[must_use]
    pub fn fhir_base(&self, instance: &str) -> String {
        format!("{}/{instance}-oauth/api/FHIR/R4", self.base_url())
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `config.listen` (port 0 picks one) and serves until shut down.
pub async fn start(config: SimConfig) -> std::io::Result<RunningSim> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let sim = Sim::new(config, &base).map_err(std::io::Error::other)?;
    let app = router(sim.clone());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, "Epic simulator listening");
    Ok(RunningSim {
        addr,
        sim,
        stop,
        task,
    })
}

pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/{base}/oauth2/token", post(oauth::token))
        .route("/{base}/oauth2/authorize", get(oauth::authorize))
        .route(
            "/{base}/api/FHIR/R4/{*rest}",
            get(fhir::read_or_search).post(fhir::create_or_operation),
        )
        .route(
            "/{base}/api/FHIR/R4/.well-known/smart-configuration",
            get(fhir::smart_configuration),
        )
        .route("/{base}/api/epic/{*rest}", post(epic_api::dispatch))
        .merge(control::router())
        .fallback(epic_api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            faults::journal_and_faults,
        ))
        .with_state(sim)
}
