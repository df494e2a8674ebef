//! Talking to Epic: JOSE for backend OAuth (client assertions signed by Switchboard and verified
//! by Epic — or by `switchboard epic-sim`).

pub mod auth;
pub mod jose;
pub mod launch;
