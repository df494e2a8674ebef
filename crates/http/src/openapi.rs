//! The OpenAPI 3.1 document, generated from the handlers' annotations. Every admin operation gets
//! the standard problem responses here, so no route can forget to document them.

use crate::AppState;
use crate::error::{FieldErrorSchema, Problem};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Doc, Ref, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;

pub const ADMIN_PREFIX: &str = "/admin/api/v1";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Connects a hospital's shared mobile devices, third-party apps and video visits to Epic. \
                       Errors are `application/problem+json` documents with a stable `type` and `code`.",
    ),
    components(schemas(Problem, FieldErrorSchema)),
    tags(
        (name = "operations", description = "Liveness, readiness, metrics and this document (no authentication)"),
        (name = "accounts", description = "Staff users and API tokens"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "epic", description = "Epic environments, their key sets and the public JWK sets registered with Epic"),
        (name = "jobs", description = "The durable job queue and its dead letters"),
        (name = "gateway", description = "FHIR gateway: data adapters, gateways, apps, activations and access records"),
        (name = "telehealth", description = "Epic video-visit profiles and their conferences"),
        (name = "devices", description = "Shared devices: locations, groups and check-in workflows, enrolment, the user directory, check-out, check-in receipts"),
        (name = "agent", description = "The protocol a device's locker app speaks (enrolment token or device credential)"),
    )
)]
struct ApiDoc;

pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::routes::ops::router())
        .merge(crate::routes::epic_env::public_router())
        .merge(crate::routes::devices::agent_router())
        .nest(
            ADMIN_PREFIX,
            crate::routes::admin::router()
                .merge(crate::routes::epic_env::admin_router())
                .merge(crate::routes::telehealth_admin::router())
                .merge(crate::routes::gateway_admin::router())
                .merge(crate::routes::devices::admin_router()),
        )
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn add_problems(op: &mut Operation, writes: bool) {
    let has_body = op.request_body.is_some();
    let mut std: Vec<(&str, &str)> = vec![
        ("400", "Malformed query string"),
        ("401", "Missing, unknown, expired or revoked credentials"),
        (
            "403",
            "Your role lacks the permission this operation needs, or the CSRF token is missing",
        ),
        ("404", "No such resource"),
        (
            "500",
            "Internal error (the cause is logged with the request id, never returned)",
        ),
        ("503", "The database is busy or unreachable"),
    ];
    if writes {
        std.push(("409", "Conflicts with existing state"));
    }
    if has_body {
        std.extend([
            ("400", "Malformed JSON"),
            ("413", "Body larger than max_body_bytes"),
            ("415", "Body is not application/json"),
            ("422", "Invalid fields (see `errors`)"),
        ]);
    }
    for (code, description) in std {
        op.responses
            .responses
            .entry(code.to_owned())
            .or_insert_with(|| problem_response(description).into());
    }
}

/// Adds security schemes and the standard problem responses; returns the final document.
pub fn finish(mut doc: Doc) -> Doc {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("sbt_...")
                .build(),
        ),
    );
    for (name, format) in [
        ("enrolment_token", "sbe_..."),
        ("device_credential", "sbd_..."),
    ] {
        components.add_security_scheme(
            name,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .build(),
            ),
        );
    }
    components.add_security_scheme(
        "console_session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
            crate::auth::SESSION_COOKIE,
        ))),
    );
    for (path, item) in &mut doc.paths.paths {
        if !path.starts_with(ADMIN_PREFIX) {
            continue;
        }
        if let Some(op) = &mut item.get {
            add_problems(op, false);
        }
        for op in [
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            add_problems(op, true);
        }
    }
    doc
}

/// The document as served at `/openapi.json`.
#[must_use]
pub fn document() -> Doc {
    finish(api_router().split_for_parts().1)
}
