use switchboard_domain::ValidationErrors;
use switchboard_store::StoreError;

/// What a use case reports. The HTTP layer maps each variant to one status and problem type.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Validation(#[from] ValidationErrors),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Credentials missing, wrong, expired or revoked (the message says which, for logs only).
    #[error("not authenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// Too many requests of this kind in a short time (the message says which).
    #[error("too many requests: {0}")]
    TooMany(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => {
                Self::Conflict(format!("a record with the same {what} already exists"))
            }
            StoreError::Unavailable(why) => Self::Unavailable(why),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<crate::keyring::KeyringError> for AppError {
    fn from(e: crate::keyring::KeyringError) -> Self {
        Self::Internal(e.to_string())
    }
}
