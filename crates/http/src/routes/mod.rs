pub mod admin;
pub mod epic_env;
pub mod ops;
