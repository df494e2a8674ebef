//! Fresh databases for tests, on both backends.
//!
//! SQLite: a new file in a temporary folder. PostgreSQL: a new database on the server named by
//! `SWITCHBOARD_TEST_POSTGRES_URL` (for example `postgres://postgres@127.0.0.1:5432/postgres`);
//! without that variable, PostgreSQL tests are skipped and say so on stderr.

use crate::{ConnectOptions, Store};
use std::sync::Arc;

pub const POSTGRES_ENV: &str = "SWITCHBOARD_TEST_POSTGRES_URL";

/// A database made for one test. Keep it alive for as long as the store is used.
pub struct TestDb {
    pub url: String,
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

/// A migrated SQLite database in a temporary folder.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temporary folder");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = crate::connect(&url, &ConnectOptions::default())
        .await
        .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    TestDb {
        url,
        store,
        _dir: Some(dir),
    }
}

/// The server URL for PostgreSQL tests, or `None` (and a visible skip message) when not set.
pub fn postgres_server(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED (PostgreSQL): {test}: set {POSTGRES_ENV} to run it");
            None
        }
    }
}

/// Creates an empty database on the server and returns its URL. Its name carries the time it
/// was made (`sbtest_<unix seconds>_<uuid>`); the first call of a process drops those left
/// behind more than [`LEFTOVER_AFTER_SECS`] ago (tests do not drop theirs, and a machine that
/// runs the suite many times would otherwise collect hundreds).
pub async fn create_postgres_database(server_url: &str) -> String {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !SWEPT.swap(true, std::sync::atomic::Ordering::AcqRel) {
        drop_leftover_databases(server_url, now).await;
    }
    let name = format!("sbtest_{now}_{}", uuid::Uuid::new_v4().simple());
    on_server(server_url, &format!("CREATE DATABASE {name}")).await;
    replace_database(server_url, &name)
}

/// A test database older than this (by the time in its name) is a leftover.
pub const LEFTOVER_AFTER_SECS: u64 = 2 * 3600;

async fn drop_leftover_databases(server_url: &str, now: u64) {
    use sqlx::{Connection, Row};
    let Ok(mut admin) = sqlx::PgConnection::connect(server_url).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'sbtest\\_%'")
            .fetch_all(&mut admin)
            .await
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r.try_get("datname").ok())
                    .collect()
            })
            .unwrap_or_default();
    for name in names {
        let made = name
            .strip_prefix("sbtest_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(secs, _)| secs.parse::<u64>().ok());
        if made.is_some_and(|t| now.saturating_sub(t) > LEFTOVER_AFTER_SECS)
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
    admin.close().await.ok();
}

/// Drops a database made by [`create_postgres_database`] (`name`: the last part of its URL),
/// closing what is still connected to it. A benchmark run drops its own, so that the next one
/// does not share the machine with the vacuuming of this one's leftovers.
pub async fn drop_postgres_database(server_url: &str, database_url: &str) {
    let name = database_url
        .rsplit('/')
        .next()
        .and_then(|n| n.split('?').next())
        .unwrap_or_default();
    assert!(
        name.starts_with("sbtest_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "not a test database: {name}"
    );
    on_server(
        server_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

/// Runs one statement on the test server's own database (creating or dropping another).
async fn on_server(server_url: &str, sql: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .expect("connect to PostgreSQL test server");
    sqlx::query(sql)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    admin.close().await.ok();
}

/// A migrated PostgreSQL database of its own, or `None` when PostgreSQL tests are not enabled.
pub async fn postgres(test: &str) -> Option<TestDb> {
    let server = postgres_server(test)?;
    let url = create_postgres_database(&server).await;
    let opts = ConnectOptions {
        max_connections: 8,
        ..ConnectOptions::default()
    };
    let store = crate::connect(&url, &opts)
        .await
        .expect("open PostgreSQL test database");
    store.migrate().await.expect("migrate PostgreSQL");
    Some(TestDb {
        url,
        store,
        _dir: None,
    })
}

fn replace_database(server_url: &str, name: &str) -> String {
    let (base, query) = server_url
        .split_once('?')
        .map_or((server_url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs a store test on both backends: `store_test!(name, |store| async move { ... })`.
#[macro_export]
macro_rules! store_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn on_sqlite() {
                let db = $crate::testing::sqlite().await;
                ($body)(std::sync::Arc::clone(&db.store)).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                let Some(db) =
                    $crate::testing::postgres(concat!(module_path!(), "::on_postgres")).await
                else {
                    return;
                };
                ($body)(std::sync::Arc::clone(&db.store)).await;
                db.store.close().await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn the_database_name_replaces_the_one_in_the_server_url() {
        assert_eq!(
            replace_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
