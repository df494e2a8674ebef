//! Pure domain types and rules. No database, web framework, HTTP client or async runtime here:
//! everything in this crate is deterministic and unit-testable on its own.

pub mod access;
pub mod accounts;
pub mod appconfig;
pub mod audit;
pub mod devices;
pub mod epic;
pub mod gateway;
pub mod hl7;
pub mod ids;
pub mod jobs;
pub mod sso;
pub mod telehealth;
pub mod validation;

pub use access::{Permission, Role};
pub use validation::{FieldError, ValidationErrors};
