pub mod admin;
pub mod devices;
pub mod epic_env;
pub mod gateway;
pub mod gateway_admin;
pub mod ops;
pub mod telehealth;
pub mod telehealth_admin;
