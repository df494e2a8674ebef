//! Tests that run the real `switchboard` binary as separate processes: several replicas on one
//! database, a worker killed mid-job, logs checked for planted secrets, the CLI's audit check.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_store::{ConnectOptions, NewJob, Store};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn master_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(switchboard_app::crypto::random_bytes::<32>())
}

/// A `switchboard serve` child process, with its address read from its first lines.
struct Proc {
    child: Child,
    url: String,
    stderr: std::path::PathBuf,
}

impl Proc {
    fn spawn(dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        let stderr = dir.join(format!("stderr-{}.log", common::uuid_like()));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", dir)
            .env("SWITCHBOARD_JOB_POLL_INTERVAL_MS", "100")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start switchboard");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Self {
            child,
            url: format!("http://{addr}"),
            stderr,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn metric(&self, line_prefix: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A webhook receiver that counts deliveries by the event's `n`; `hang_first` makes the first
/// delivery of that `n` hang (and reports it), to kill a worker while it waits.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<HashMap<u64, u32>>>,
    attempts: Arc<Mutex<HashMap<u64, u32>>>,
}

async fn start_receiver(
    hang_first: Option<u64>,
    arrived: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> (String, Receiver) {
    use axum::routing::post;
    let r = Receiver::default();
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<Value>| {
            let state = state.clone();
            let arrived = arrived.clone();
            async move {
                let n = body["n"].as_u64().unwrap_or(u64::MAX);
                let attempt = {
                    let mut a = state.attempts.lock().expect("lock");
                    let e = a.entry(n).or_insert(0);
                    *e += 1;
                    *e
                };
                if hang_first == Some(n) && attempt == 1 {
                    if let Some(tx) = arrived {
                        let _ = tx.send(());
                    }
                    tokio::time::sleep(Duration::from_secs(120)).await;
                }
                *state.seen.lock().expect("lock").entry(n).or_insert(0) += 1;
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, r)
}

async fn enqueue_webhooks(store: &Arc<dyn Store>, url: &str, range: std::ops::Range<u64>) {
    let mut tx = store.begin().await.expect("tx");
    let now = switchboard_app::now_ms();
    for n in range {
        tx.enqueue_job(&NewJob {
            kind: "webhook.deliver".into(),
            payload: json!({"url": url, "event": {"n": n}}),
            dedupe_key: None,
            run_at: now,
            max_attempts: 10,
            now,
        })
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

/// Waits until no job other than the standing clean-ups (telehealth, devices) is left.
async fn wait_until_queue_empty(store: &Arc<dyn Store>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut tx = store.read().await.expect("tx");
        let left: Vec<_> = tx
            .list_jobs(&switchboard_store::JobFilter {
                state: None,
                kind: None,
                limit: 10_000,
            })
            .await
            .expect("jobs")
            .into_iter()
            .filter(|j| {
                j.kind != switchboard_app::telehealth::JOB_PURGE
                    && j.kind != switchboard_app::lending::JOB_SWEEP
            })
            .collect();
        drop(tx);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue not drained in time: {} job(s) left",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_postgres_run_a_thousand_jobs_each_exactly_once() {
    let Some(server) = switchboard_store::testing::postgres_server(
        "two_server_processes_on_one_postgres_run_a_thousand_jobs_each_exactly_once",
    ) else {
        return;
    };
    let db = switchboard_store::testing::create_postgres_database(&server).await;
    let key = master_key();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [
        ("SWITCHBOARD_DATABASE_URL", db.clone()),
        ("SWITCHBOARD_MASTER_KEY", key.clone()),
        ("SWITCHBOARD_JOB_CONCURRENCY", "16".to_owned()),
    ];
    let a = Proc::spawn(dir_a.path(), &env);
    let b = Proc::spawn(dir_b.path(), &env);
    let (url, receiver) = start_receiver(None, None).await;
    let store = switchboard_store::connect(&db, &ConnectOptions::default())
        .await
        .unwrap();
    enqueue_webhooks(&store, &url, 0..1000).await;
    wait_until_queue_empty(&store, Duration::from_secs(120)).await;

    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1000, "every job delivered");
    assert!(
        seen.values().all(|&c| c == 1),
        "no job delivered twice: {:?}",
        seen.iter().filter(|(_, c)| **c != 1).collect::<Vec<_>>()
    );
    let done = "switchboard_job_attempts_total{kind=\"webhook.deliver\",outcome=\"done\"}";
    let (da, dbn) = (a.metric(done).await, b.metric(done).await);
    assert_eq!(da + dbn, 1000.0);
    assert!(da > 0.0 && dbn > 0.0, "both replicas worked: {da} + {dbn}");
    store.close().await;
}

async fn killed_worker_case(db: String) {
    let key = master_key();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let (url, receiver) = start_receiver(Some(7), Some(tx)).await;
    let env = [
        ("SWITCHBOARD_DATABASE_URL", db.clone()),
        ("SWITCHBOARD_MASTER_KEY", key),
        ("SWITCHBOARD_JOB_LEASE_SECONDS", "4".to_owned()),
    ];
    let mut a = Proc::spawn(dir_a.path(), &env);
    let store = switchboard_store::connect(&db, &ConnectOptions::default())
        .await
        .unwrap();
    enqueue_webhooks(&store, &url, 7..8).await;
    tokio::time::timeout(Duration::from_secs(20), arrived.recv())
        .await
        .expect("the job started")
        .expect("signal");
    a.kill(); // SIGKILL while the job's call is in flight
    let b = Proc::spawn(dir_b.path(), &env);
    wait_until_queue_empty(&store, Duration::from_secs(30)).await;
    assert_eq!(
        receiver.seen.lock().unwrap().get(&7),
        Some(&1),
        "delivered once after the crash"
    );
    assert_eq!(
        receiver.attempts.lock().unwrap().get(&7),
        Some(&2),
        "the killed attempt and the one that completed"
    );
    drop(b);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_its_lease_and_the_job_completes_later_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    killed_worker_case(format!("sqlite://{}", dir.path().join("q.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_its_lease_and_the_job_completes_later_on_postgres() {
    let Some(server) = switchboard_store::testing::postgres_server(
        "a_worker_killed_mid_job_loses_its_lease_and_the_job_completes_later_on_postgres",
    ) else {
        return;
    };
    killed_worker_case(switchboard_store::testing::create_postgres_database(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_passwords_cookies_or_keys_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let key = master_key();
    let mut p = Proc::spawn(
        dir.path(),
        &[
            ("SWITCHBOARD_LOG_FORMAT", "json".to_owned()),
            ("SWITCHBOARD_LOG_LEVEL", "debug".to_owned()),
            ("SWITCHBOARD_MASTER_KEY", key.clone()),
        ],
    );
    let admin = std::fs::read_to_string(dir.path().join("bootstrap-admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = |path: &str| format!("{}/admin/api/v1{path}", p.url);
    let password = "Planted-Password-7f3a9c";
    let r = http
        .post(api("/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "plant", "role": "operator", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = http
        .post(api("/tokens"))
        .bearer_auth(&admin)
        .json(&json!({"name": "plant"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        http.get(api("/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let wrong = "sbt_PlantedWrongTokenValue0123456789abcdefghijk";
    assert_eq!(
        http.get(api("/me"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let login = http
        .post(format!("{}/console/login", p.url))
        .form(&[("username", "plant"), ("password", password)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split('=')
        .nth(1)
        .unwrap()
        .to_owned();
    let _ = http
        .post(format!("{}/console/login", p.url))
        .form(&[
            ("username", "plant"),
            ("password", "Planted-Wrong-Password-99"),
        ])
        .send()
        .await
        .unwrap();
    let _ = http
        .post(api("/users"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!("{{\"password\": \"{password}\" oops"))
        .send()
        .await
        .unwrap();
    let _ = http
        .get(format!("{}/console/audit?actor={password}", p.url))
        .header("cookie", format!("sb_session={cookie}"))
        .send()
        .await
        .unwrap();
    p.terminate();
    let logs = p.logs();
    assert!(
        logs.contains("finished processing request"),
        "request logs were captured"
    );
    for (what, secret) in [
        ("password", password),
        ("API token", token.as_str()),
        ("bootstrap token", admin.as_str()),
        ("wrong token", wrong),
        ("session cookie", cookie.as_str()),
        ("master key", key.as_str()),
        ("wrong password", "Planted-Wrong-Password-99"),
    ] {
        assert!(!logs.contains(secret), "the {what} appeared in the logs");
    }
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["fields"]["message"] == "finished processing request" {
            assert!(
                v["span"]["request_id"].is_string(),
                "request lines carry the request id: {line}"
            );
        }
    }
}

fn run_cli(dir: &std::path::Path, db: &str, args: &[&str]) -> std::process::Output {
    // One audit chain, so the tampered row is the same on both backends.
    Command::new(BIN)
        .args(args)
        .env("SWITCHBOARD_DATA_DIR", dir)
        .env("SWITCHBOARD_DATABASE_URL", db)
        .env("SWITCHBOARD_AUDIT_CHAINS", "1")
        .output()
        .expect("run switchboard")
}

async fn audit_tamper_case(db: String) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["alice", "bob", "carol"] {
        let out = run_cli(
            dir.path(),
            &db,
            &["users", "create", name, "--role", "operator"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ok = run_cli(dir.path(), &db, &["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("3 entries"));

    let export = run_cli(dir.path(), &db, &["audit", "export"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["action"], "user.created");

    let pool = switchboard_store::connect(&db, &ConnectOptions::default())
        .await
        .unwrap();
    drop(pool);
    let exec = |sql: &'static str| {
        let db = db.clone();
        async move {
            use sqlx::Connection;
            if db.starts_with("sqlite") {
                let mut c = sqlx::SqliteConnection::connect(&db).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            } else {
                let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
                sqlx::query(sql).execute(&mut c).await.unwrap();
            }
        }
    };
    exec("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 2").await;
    let bad = run_cli(dir.path(), &db, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains("TAMPERED") && text.contains("entry 2") && text.contains("altered"),
        "{text}"
    );

    exec("UPDATE audit_log SET actor = 'cli' WHERE seq = 2").await;
    assert!(
        run_cli(dir.path(), &db, &["audit", "verify"])
            .status
            .success(),
        "restoring the row restores the chain"
    );
    // The head moved back one entry (with that entry's hash): the newest entry is past it.
    exec("UPDATE audit_heads SET seq = 2, hash = (SELECT hash FROM audit_log l WHERE l.chain = audit_heads.chain AND l.seq = 2) WHERE seq = 3").await;
    let bad = run_cli(dir.path(), &db, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("the head was edited"));
    exec("UPDATE audit_heads SET seq = 3, hash = (SELECT hash FROM audit_log l WHERE l.chain = audit_heads.chain AND l.seq = 3) WHERE seq = 2").await;
    exec("DELETE FROM audit_log WHERE seq = 3").await;
    let bad = run_cli(dir.path(), &db, &["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("newest entries were deleted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_an_edited_row_and_a_deleted_row_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    audit_tamper_case(format!("sqlite://{}", dir.path().join("a.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_an_edited_row_and_a_deleted_row_on_postgres() {
    let Some(server) = switchboard_store::testing::postgres_server("audit_verify_on_postgres")
    else {
        return;
    };
    audit_tamper_case(switchboard_store::testing::create_postgres_database(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_key_reseals_every_secret_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let config = common::test_config(dir.path(), &db);
    let (app, created) = switchboard_cli::open_app(config.clone()).await.unwrap();
    assert!(created);
    let mut tx = app.store().begin().await.unwrap();
    let id = app
        .put_secret(&mut *tx, "env:test", "client_secret", b"s3cret-value")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let before = app.keyring().primary_id().to_owned();
    app.store().close().await;

    let out = run_cli(dir.path(), &db, &["rotate-master-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 secrets re-sealed"));

    let (app, _) = switchboard_cli::open_app(config).await.unwrap();
    assert_ne!(app.keyring().primary_id(), before);
    assert_eq!(
        app.keyring().key_ids().len(),
        1,
        "the old key is gone from the keyring"
    );
    let mut tx = app.store().read().await.unwrap();
    assert_eq!(
        app.get_secret(&mut *tx, &id).await.unwrap(),
        b"s3cret-value"
    );
    let row = tx.get_secret(&id).await.unwrap().unwrap();
    assert_eq!(row.key_id, app.keyring().primary_id());
    assert!(
        !row.ciphertext.windows(12).any(|w| w == b"s3cret-value"),
        "stored sealed, not in clear"
    );
}

#[test]
fn config_check_explains_mistakes_and_warns_about_unknown_variables() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("SWITCHBOARD_DATA_DIR", dir.path())
        .env("SWITCHBOARD_DATABSE_URL", "x")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("configuration is valid")
            && text.contains("did you mean SWITCHBOARD_DATABASE_URL"),
        "{text}"
    );

    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("SWITCHBOARD_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));

    let toml = dir.path().join("bad.toml");
    std::fs::write(&toml, "job_workers = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", toml.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("job_workers"));
}

#[test]
fn keygen_prints_32_random_bytes_as_base64_and_refuses_other_sizes() {
    use base64::Engine;
    let a = Command::new(BIN).args(["keygen", "32"]).output().unwrap();
    let b = Command::new(BIN).args(["keygen", "32"]).output().unwrap();
    let text = String::from_utf8_lossy(&a.stdout).to_string();
    let value = text.trim().strip_prefix("value: ").expect("value: prefix");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap()
            .len(),
        32
    );
    assert_ne!(a.stdout, b.stdout);
    let legacy = Command::new(BIN).args(["keygen", "16"]).output().unwrap();
    let v = String::from_utf8_lossy(&legacy.stdout)
        .trim()
        .strip_prefix("value: ")
        .unwrap()
        .to_owned();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .unwrap()
            .len(),
        16
    );
    let bad = Command::new(BIN).args(["keygen", "24"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use 32"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_switchboard_and_the_epic_simulator_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("demo.db").display());
    let demo = switchboard_cli::start_demo(
        common::test_config(dir.path(), &db),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let token = demo.admin_token.clone().expect("first start has a token");
    let users = http
        .get(format!("http://{}/admin/api/v1/users", demo.server.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    let minted: Value = http
        .post(format!("{}/_sim/tokens", demo.sim.base_url()))
        .json(&json!({"client_id": "switchboard-demo", "instance": "interconnect-tst"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patients: Value = http
        .get(format!(
            "{}/Patient?_count=1",
            demo.sim.fhir_base("interconnect-tst")
        ))
        .bearer_auth(minted["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patients["total"], 300);
    // Password AutoFill is seeded: the Epic Rover profile and rn.garcia's credential for it.
    let get = |path: &str| {
        http.get(format!("http://{}/admin/api/v1{path}", demo.server.addr))
            .bearer_auth(&token)
            .send()
    };
    let profiles: Value = get("/devices/sso-profiles")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profiles[0]["apps"][0]["one_tap"], true, "{profiles}");
    let creds: Value = get("/devices/users/rn.garcia/credentials")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(creds[0]["username"], "GARCIA", "{creds}");
    demo.server.shutdown().await.unwrap();
    demo.sim.shutdown().await;
}

#[test]
fn the_cli_creates_lists_tests_and_rotates_epic_environments() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("e.db").display());
    let out = run_cli(
        dir.path(),
        &db,
        &[
            "epic",
            "create",
            "--name",
            "TST",
            "--kind",
            "non_production",
            "--url",
            "http://127.0.0.1:9",
            "--instance",
            "interconnect-tst",
            "--client-id",
            "cli-client",
            "--apps",
            "Rover,Haiku",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("register this JWK URL with Epic: "));
    let bad = run_cli(
        dir.path(),
        &db,
        &[
            "epic",
            "create",
            "--name",
            "PRD",
            "--kind",
            "production",
            "--url",
            "http://epic.example",
            "--instance",
            "p",
            "--client-id",
            "c",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("interconnect_url"));
    let list = run_cli(dir.path(), &db, &["epic", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("TST") && text.contains("NON_PRODUCTION") && text.contains("/jwks/ks_"),
        "{text}"
    );
    let test = run_cli(dir.path(), &db, &["epic", "test", "TST"]);
    assert_eq!(test.status.code(), Some(1));
    let text = String::from_utf8_lossy(&test.stdout);
    assert!(
        text.contains("[FAIL] tcp") && text.contains("fix: "),
        "{text}"
    );
    let rotate = run_cli(dir.path(), &db, &["epic", "rotate", "TST"]);
    assert!(
        String::from_utf8_lossy(&rotate.stdout).contains("published"),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
}

#[test]
fn the_cli_configures_the_gateway_and_shows_an_app_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("g.db").display());
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let create = |kind: &str, file: &str| {
        let out = run_cli(
            dir.path(),
            &db,
            &["gateway", "create", kind, "--file", file],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let adapter = create(
        "adapter",
        &write(
            "a.json",
            r#"{"name": "Sandbox", "settings": {"useStagingEnvironment": false, "backendAuthEnabled": false, "epicR4Endpoint": "https://apporchard.epic.com/interconnect-aocurprd-oauth/api/FHIR/R4"}}"#,
        ),
    );
    let gateway = create(
        "gateway",
        &write(
            "g.json",
            &format!(
                r#"{{"name": "orchard", "adapter_id": "{}"}}"#,
                adapter["id"].as_str().unwrap()
            ),
        ),
    );
    let app = create(
        "app",
        &write(
            "p.json",
            r#"{"name": "Sync", "launch_uri": "http://someurl.com", "scopes": "system/Schedule.read system/Slot.read"}"#,
        ),
    );
    assert!(app["client_secret"].as_str().unwrap().starts_with("sbs_"));
    let act = create(
        "activation",
        &write(
            "v.json",
            &format!(
                r#"{{"app_id": "{}", "gateway_id": "{}", "ehr_auth": "backend", "epic_client_id": "orchard-client"}}"#,
                app["app"]["id"].as_str().unwrap(),
                gateway["id"].as_str().unwrap()
            ),
        ),
    );
    assert_eq!(
        act["token_url"],
        "https://apporchard.epic.com/interconnect-aocurprd-oauth/oauth2/token"
    );
    let list = run_cli(dir.path(), &db, &["gateway", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("orchard") && text.contains("JWK URL") && text.contains("system/Slot.read"),
        "{text}"
    );
    assert!(
        !text.contains(app["client_secret"].as_str().unwrap()),
        "the secret is shown once only"
    );
    let bad = run_cli(
        dir.path(),
        &db,
        &[
            "gateway",
            "create",
            "app",
            "--file",
            &write("b.json", r#"{"name": "X", "scopes": "user/Patient.read"}"#),
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("scopes"));
}

/// A free loopback port (so a restarted server comes back where the agents expect it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn check_in_storm_case(db: String) {
    let key = master_key();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("SWITCHBOARD_DATABASE_URL", db.clone()),
        ("SWITCHBOARD_MASTER_KEY", key),
        ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
        ("SWITCHBOARD_JOB_LEASE_SECONDS", "4".to_owned()),
    ];
    let sim = switchboard_epic_sim::start(switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        instances: vec![switchboard_epic_sim::InstanceConfig {
            name: "interconnect-tst".into(),
            production: false,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut a = Proc::spawn(dir.path(), &env);
    let token = std::fs::read_to_string(dir.path().join("bootstrap-admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/admin/api/v1{p}", a.url);
    let post = |url: String, body: Value| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            r.json::<Value>().await.unwrap()
        }
    };
    let env_row = post(
        api("/epic-environments"),
        json!({"name": "Sim", "kind": "non_production", "interconnect_url": sim.base_url(), "instance": "interconnect-tst",
               "client_id": "storm", "apps": ["Rover", "Haiku"], "publish_delay_secs": 0, "timeout_ms": 2000}),
    )
    .await;
    http.post(format!("{}/_sim/clients", sim.base_url()))
        .json(&json!({"client_id": "storm", "jwks_url": env_row["key_set"]["jwk_url"], "apis": ["*"]}))
        .send()
        .await
        .unwrap();
    let env_id = env_row["id"].as_str().unwrap();
    post(api("/devices/locations"), json!({"id": "ed", "name": "ED"})).await;
    let group = post(
        api("/devices/groups"),
        json!({"name": "ED", "lending_minutes": 600, "workflows": {"ios": [
            {"action": "force_quit", "app_id": "com.epic.rover"},
            {"action": "epic_logout", "environment_id": env_id, "app": "Rover"},
            {"action": "epic_logout", "environment_id": env_id, "app": "Haiku"}]}}),
    )
    .await;
    let et = post(
        api("/devices/enrolment-tokens"),
        json!({"name": "storm", "group_id": group["id"], "location_id": "ed"}),
    )
    .await;
    let n = 24;
    let agents = switchboard_agent_sim::start(switchboard_agent_sim::AgentSimConfig {
        server: a.url.clone(),
        enrolment_token: et["secret"].as_str().unwrap().to_owned(),
        devices: n,
        serial_prefix: "STORM".into(),
        epic_apps: vec!["Rover".into(), "Haiku".into()],
        delay: Duration::from_millis(5),
        heartbeat: Duration::from_secs(5),
        poll_wait_secs: 5,
        epic_sim: Some(sim.base_url()),
        ..Default::default()
    })
    .await
    .unwrap();
    let serials: Vec<String> = agents
        .devices
        .iter()
        .map(|d| d.lock().unwrap().serial.clone())
        .collect();
    for (i, serial) in serials.iter().enumerate() {
        post(
            api("/devices/users"),
            json!({"username": format!("u{i}"), "display_name": format!("User {i}")}),
        )
        .await;
        post(
            api("/devices/checkout"),
            json!({"user": format!("u{i}"), "device": serial}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/_sim/mobile", sim.base_url()))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .len()
        < 2 * n
    {
        assert!(Instant::now() < deadline, "sign-ins did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Epic is slow, so logouts are in flight when the server dies.
    http.post(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"path_contains": "DisassociateMobileDevice", "rate": 0.0, "effect": {"kind": "status", "status": 503}, "latency_ms": 150}))
        .send()
        .await
        .unwrap();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let storm: Vec<_> = serials
        .iter()
        .map(|s| {
            let (http, token, url) = (
                http.clone(),
                token.clone(),
                api(&format!("/devices/{s}/checkin")),
            );
            let answered = Arc::clone(&answered);
            tokio::spawn(async move {
                if let Ok(r) = http.post(url).bearer_auth(token).send().await
                    && r.status() == 200
                {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(std::sync::atomic::Ordering::SeqCst) < n / 3 {
        assert!(Instant::now() < deadline, "no check-in answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill(); // SIGKILL in the middle of the storm
    let signed_in = reqwest::get(format!("{}/_sim/mobile", sim.base_url()))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        !signed_in.as_array().unwrap().is_empty(),
        "logouts were still owed when the server died"
    );
    for t in storm {
        t.await.unwrap();
    }
    let b = Proc::spawn(dir.path(), &env);
    // The operator repeats every check-in: done ones answer with their receipt.
    let mut receipts = Vec::new();
    for s in &serials {
        let r = http
            .post(format!("{}/admin/api/v1/devices/{s}/checkin", b.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        receipts.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Value::Null;
    'wait: loop {
        assert!(
            Instant::now() < deadline,
            "check-ins did not all complete after the crash: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        for id in &receipts {
            let r: Value = http
                .get(format!("{}/admin/api/v1/devices/checkins/{id}", b.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if r["status"] != "complete" {
                last = r;
                continue 'wait;
            }
            assert_eq!(
                r["steps"].as_array().unwrap().len(),
                3,
                "no step lost: {r:#}"
            );
        }
        break;
    }
    let mobile: Value = reqwest::get(format!("{}/_sim/mobile", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        mobile.as_array().unwrap().is_empty(),
        "every logout delivered: {mobile:#}"
    );
    agents.stop().await;
    drop(b);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_in_a_check_in_storm_loses_no_step_and_no_logout_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    check_in_storm_case(format!(
        "sqlite://{}",
        dir.path().join("storm.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_in_a_check_in_storm_loses_no_step_and_no_logout_on_postgres() {
    let Some(server) = switchboard_store::testing::postgres_server(
        "a_server_killed_in_a_check_in_storm_loses_no_step_and_no_logout_on_postgres",
    ) else {
        return;
    };
    check_in_storm_case(switchboard_store::testing::create_postgres_database(&server).await).await;
}
