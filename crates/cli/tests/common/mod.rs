//! Test support: a real Switchboard started in-process on port 0, on SQLite or PostgreSQL.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use secrecy::SecretString;
use serde_json::{Value, json};
use switchboard_app::Config;
use switchboard_cli::{Running, standard_registry, start};

pub struct TestServer {
    pub url: String,
    pub admin_token: String,
    pub db_url: String,
    pub running: Running,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path, db_url: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.to_owned(),
        database_url: Some(SecretString::from(db_url.to_owned())),
        job_poll_interval_ms: 50,
        job_backoff_base_ms: 20,
        job_backoff_cap_ms: 200,
        max_body_bytes: 64 * 1024,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start_with(db_url: String, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut config = test_config(dir.path(), &db_url);
        tweak(&mut config);
        let running = start(config, standard_registry())
            .await
            .expect("server starts");
        let admin_token = running
            .bootstrap_token
            .clone()
            .expect("first start creates the admin");
        Self {
            url: format!("http://{}", running.addr),
            admin_token,
            db_url,
            running,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let s = Self::start_with(url, |_| {}).await;
        // Keep the database folder alive as long as the server.
        std::mem::forget(dir);
        s
    }

    pub async fn postgres(test: &str) -> Option<Self> {
        let server = switchboard_store::testing::postgres_server(test)?;
        let url = switchboard_store::testing::create_postgres_database(&server).await;
        Some(Self::start_with(url, |_| {}).await)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/admin/api/v1{path}", self.url)
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.api(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.api(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    /// Creates a user with `role` and returns an API token for it.
    pub async fn token_for_role(&self, role: &str) -> String {
        let username = format!("{role}-{}", &uuid_like()[..8]);
        let r = self
            .post(
                &self.admin_token,
                "/users",
                json!({"username": username, "role": role}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let user: Value = r.json().await.expect("json");
        let r = self
            .post(
                &self.admin_token,
                "/tokens",
                json!({"name": "test", "user_id": user["id"]}),
            )
            .await;
        assert_eq!(r.status(), 201);
        let t: Value = r.json().await.expect("json");
        t["secret"].as_str().expect("secret").to_owned()
    }

    pub async fn stop(self) {
        self.running.shutdown().await.expect("clean shutdown");
    }
}

/// The body of a `201 Created` answer (failing loudly on any other status).
/// Asserts that the audit log's hash chains verify (`GET /audit/verify`).
pub async fn assert_audit_log_verifies(s: &TestServer) {
    let verify: Value = s
        .get(&s.admin_token, "/audit/verify")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
}

pub async fn created(r: reqwest::Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.expect("a JSON body");
    assert_eq!(status, 201, "{body}");
    body
}

pub fn uuid_like() -> String {
    use std::fmt::Write;
    switchboard_app::crypto::random_bytes::<16>()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Runs a server test on SQLite and on PostgreSQL (when enabled).
#[macro_export]
macro_rules! server_test {
    ($name:ident, |$s:ident| $body:block) => {
        mod $name {
            use super::*;

            async fn run($s: &$crate::common::TestServer) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                let s = $crate::common::TestServer::sqlite().await;
                run(&s).await;
                s.stop().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                let Some(s) = $crate::common::TestServer::postgres(concat!(module_path!(), "::on_postgres")).await else {
                    return;
                };
                run(&s).await;
                s.stop().await;
            }
        }
    };
}
