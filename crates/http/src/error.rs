//! One error type for every HTTP answer: RFC 9457 problem details (`application/problem+json`).
//! Internal causes are logged once here and never echoed to the client.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchboard_app::AppError;
use switchboard_domain::FieldError;
use utoipa::ToSchema;

tokio::task_local! {
    /// The current request's id, so error bodies can carry it.
    pub static REQUEST_ID: String;
}

/// A problem report. `type` is a stable URN per kind of problem; `code` is its short form.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "urn:switchboard:problem:validation_failed")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[schema(example = "validation_failed")]
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldErrorSchema>)]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One invalid field.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorSchema {
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub www_authenticate: bool,
}

impl ApiError {
    #[must_use]
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            www_authenticate: false,
        }
    }

    #[must_use]
    pub fn unauthenticated() -> Self {
        Self {
            www_authenticate: true,
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "Send a valid API token as `Authorization: Bearer <token>`, or sign in to the console.",
            )
        }
    }

    #[must_use]
    pub fn forbidden(needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed",
            format!("This needs the `{needed}` permission, which your role does not have."),
        )
    }

    #[must_use]
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }

    #[must_use]
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    #[must_use]
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
            "Something went wrong on our side; the cause was logged with this request's id.",
        )
    }

    fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:switchboard:problem:{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            errors: self.errors.clone(),
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.www_authenticate {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
        }
        resp
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Validation(v) => Self {
                errors: v.errors,
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "Invalid input",
                    "Some fields are invalid; see `errors`. Nothing was changed.",
                )
            },
            AppError::NotFound(what) => Self::not_found(format!("{what} does not exist.")),
            AppError::Conflict(why) => Self::new(StatusCode::CONFLICT, "conflict", "Conflict", why),
            AppError::Unauthenticated(why) => {
                tracing::info!(reason = why, "authentication failed");
                Self::unauthenticated()
            }
            AppError::Forbidden(why) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", why)
            }
            AppError::Unavailable(why) => {
                tracing::warn!(cause = %why, "service unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Temporarily unavailable",
                    "A dependency (the database) is busy or unreachable; try again shortly.",
                )
            }
            AppError::TooMany(why) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests",
                why,
            ),
            AppError::Internal(why) => {
                tracing::error!(cause = %why, "internal error");
                Self::internal()
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => Self {
                errors: vec![FieldError {
                    field: "body".to_owned(),
                    message: e.body_text(),
                }],
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_body",
                    "Invalid body",
                    "The JSON is well-formed but does not match the expected shape.",
                )
            },
            JsonRejection::JsonSyntaxError(_) => {
                Self::bad_request("malformed_json", "The body is not valid JSON.")
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "Send the body as `Content-Type: application/json`.",
            ),
            JsonRejection::BytesRejection(b) => body_error(b.status(), &b.body_text()),
            other => Self::bad_request("bad_body", other.body_text()),
        }
    }
}

fn body_error(status: StatusCode, text: &str) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "Payload too large",
            "The body is larger than this server accepts (max_body_bytes).",
        )
    } else {
        ApiError::bad_request("bad_body", text.to_owned())
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        match r {
            FormRejection::InvalidFormContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "Send the body as `Content-Type: application/x-www-form-urlencoded`.",
            ),
            FormRejection::BytesRejection(b) => body_error(b.status(), &b.body_text()),
            other => Self {
                errors: vec![FieldError {
                    field: "body".to_owned(),
                    message: other.body_text(),
                }],
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unprocessable_body",
                    "Invalid form",
                    "The form does not match the expected fields.",
                )
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self {
            errors: vec![FieldError {
                field: "query".to_owned(),
                message: r.body_text(),
            }],
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "Bad query string",
                "The query string has an unknown or malformed parameter.",
            )
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::not_found(format!("No such resource ({}).", r.body_text()))
    }
}

/// JSON body extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Form extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(ApiError))]
pub struct Form<T>(pub T);

pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("There is no such route. See /openapi.json for the routes that exist.")
}

pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        "This route exists but not with this HTTP method.",
    )
}

/// A console form that may carry a file: `multipart/form-data` (a file field's content is taken
/// as text; of several fields with one name the last non-empty one wins, so a chosen file
/// replaces an empty textarea of the same name) or a plain URL-encoded form.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadForm<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for UploadForm<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("multipart/form-data"));
        if !multipart {
            let Form(t) = Form::<T>::from_request(req, state).await?;
            return Ok(Self(t));
        }
        let bad = |message: String| ApiError {
            errors: vec![FieldError {
                field: "form".to_owned(),
                message,
            }],
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_form",
                "Invalid form",
                "The form could not be read.",
            )
        };
        let mut parts = axum::extract::Multipart::from_request(req, state)
            .await
            .map_err(|e| bad(e.body_text()))?;
        let mut fields = serde_json::Map::new();
        while let Some(field) = parts.next_field().await.map_err(|e| bad(e.body_text()))? {
            let Some(name) = field.name().map(str::to_owned) else {
                continue;
            };
            let bytes = field.bytes().await.map_err(|e| bad(e.body_text()))?;
            let text = String::from_utf8(bytes.into())
                .map_err(|_| bad(format!("`{name}` is not UTF-8 text")))?;
            if !text.is_empty() || !fields.contains_key(&name) {
                fields.insert(name, serde_json::Value::String(text));
            }
        }
        serde_json::from_value(serde_json::Value::Object(fields))
            .map(Self)
            .map_err(|e| bad(e.to_string()))
    }
}
