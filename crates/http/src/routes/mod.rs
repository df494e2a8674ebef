pub mod admin;
pub mod epic_env;
pub mod ops;
pub mod telehealth;
pub mod telehealth_admin;
