//! Console page for the FHIR gateway: adapters, gateways, apps (created here with the secret
//! shown once) and activations with their health report.

use super::{Console, app_error, render};
use crate::AppState;
use crate::error::Form;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use switchboard_app::AppError;
use switchboard_app::gateway::{Activation, Adapter, AppInput, Gateway, GatewayApp, HealthReport};
use switchboard_domain::Permission;

pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/console/gateway", get(page))
        .route("/console/gateway/apps", post(create_app))
        .route("/console/gateway/activations/{id}/health", post(health))
}

#[derive(Template)]
#[template(path = "gateway.html")]
struct GatewayPage {
    chrome: super::Chrome,
    notice: Option<String>,
    error: Option<String>,
    new_secret: Option<(String, String)>,
    health: Option<(String, HealthReport)>,
    adapters: Vec<Adapter>,
    gateways: Vec<Gateway>,
    apps: Vec<GatewayApp>,
    activations: Vec<Activation>,
    can_admin: bool,
    can_operate: bool,
}

struct Extra {
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    new_secret: Option<(String, String)>,
    health: Option<(String, HealthReport)>,
}

async fn page_with(s: &AppState, c: &Console, x: Extra) -> Response {
    let loaded = async {
        Ok::<_, AppError>((
            s.app.list_adapters().await?,
            s.app.list_gateways().await?,
            s.app.list_gateway_apps().await?,
            s.app.list_activations().await?,
        ))
    }
    .await;
    match loaded {
        Ok((adapters, gateways, apps, activations)) => render(
            x.status,
            &GatewayPage {
                chrome: c.chrome("gateway"),
                notice: x.notice,
                error: x.error,
                new_secret: x.new_secret,
                health: x.health,
                adapters,
                gateways,
                apps,
                activations,
                can_admin: c.allows(Permission::Administer),
                can_operate: c.allows(Permission::Operate),
            },
        ),
        Err(e) => app_error(c.chrome("gateway"), e),
    }
}

fn plain(status: StatusCode) -> Extra {
    Extra {
        status,
        notice: None,
        error: None,
        new_secret: None,
        health: None,
    }
}

async fn page(State(s): State<AppState>, c: Console) -> Response {
    page_with(&s, &c, plain(StatusCode::OK)).await
}

#[derive(Deserialize)]
struct NewApp {
    csrf: String,
    name: String,
    scopes: String,
    launch_uri: Option<String>,
}

async fn create_app(State(s): State<AppState>, c: Console, Form(f): Form<NewApp>) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, "gateway") {
        return r;
    }
    let input = AppInput {
        name: f.name,
        scopes: f.scopes,
        launch_uri: f.launch_uri.filter(|u| !u.trim().is_empty()),
        ..AppInput::default()
    };
    match s.app.create_gateway_app(&c.principal, &c.ctx, input).await {
        Ok(created) => {
            let x = Extra {
                notice: Some(format!(
                    "App `{}` created. Copy the client secret now: it is not shown again.",
                    created.app.name
                )),
                new_secret: Some((created.app.client_id.clone(), created.client_secret)),
                ..plain(StatusCode::OK)
            };
            page_with(&s, &c, x).await
        }
        Err(AppError::Validation(v)) => {
            let x = Extra {
                error: Some(v.to_string()),
                ..plain(StatusCode::UNPROCESSABLE_ENTITY)
            };
            page_with(&s, &c, x).await
        }
        Err(e) => app_error(c.chrome("gateway"), e),
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn health(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Operate, "gateway") {
        return r;
    }
    match s.app.activation_health(&id).await {
        Ok(h) => {
            let x = Extra {
                health: Some((id, h)),
                ..plain(StatusCode::OK)
            };
            page_with(&s, &c, x).await
        }
        Err(e) => app_error(c.chrome("gateway"), e),
    }
}
