//! The admin API's contract: authorization on every route, problem bodies, OpenAPI, tokens,
//! sessions, CSRF and the dead-letter workflow — on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const ROLES: [&str; 3] = ["admin", "operator", "auditor"];

fn role_allows(role: &str, permission: &str) -> bool {
    let role: switchboard_domain::Role = role.parse().expect("role");
    let p = match permission {
        "read" => switchboard_domain::Permission::Read,
        "operate" => switchboard_domain::Permission::Operate,
        "audit" => switchboard_domain::Permission::Audit,
        "administer" => switchboard_domain::Permission::Administer,
        other => panic!("unknown permission {other}"),
    };
    role.allows(p)
}

async fn send(s: &TestServer, method: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let url = format!("{}{}", s.url, path);
    let mut req = s.http.request(method.parse().expect("method"), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if matches!(method, "POST" | "PUT" | "PATCH") {
        req = req.json(&json!({}));
    }
    req.send().await.expect("request")
}

server_test!(
    every_admin_route_rejects_missing_wrong_and_under_privileged_tokens,
    |s| {
        let doc: Value = s
            .http
            .get(format!("{}/openapi.json", s.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut tokens = std::collections::HashMap::new();
        tokens.insert("admin", s.admin_token.clone());
        tokens.insert("operator", s.token_for_role("operator").await);
        tokens.insert("auditor", s.token_for_role("auditor").await);
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/admin/api/v1") {
                continue;
            }
            for (method, op) in item.as_object().unwrap() {
                let method = method.to_uppercase();
                let concrete = path.replace("{id}", "1");
                let needed = op["security"][0]["api_token"][0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} declares no permission"));
                assert_eq!(
                    send(s, &method, &concrete, None).await.status(),
                    401,
                    "{method} {path} without a token"
                );
                assert_eq!(
                    send(s, &method, &concrete, Some("sbt_not-a-real-token-at-all"))
                        .await
                        .status(),
                    401,
                    "{method} {path} with a wrong token"
                );
                assert_eq!(
                    send(s, &method, &concrete, Some("Basic abc"))
                        .await
                        .status(),
                    401,
                    "{method} {path} with a malformed token"
                );
                for role in ROLES {
                    let status = send(s, &method, &concrete, Some(&tokens[role]))
                        .await
                        .status();
                    if role_allows(role, needed) {
                        assert!(
                            status != 401 && status != 403,
                            "{method} {path} as {role} got {status}"
                        );
                    } else {
                        assert_eq!(status, 403, "{method} {path} as {role} (needs {needed})");
                    }
                }
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} admin operations found");
    }
);

#[tokio::test]
async fn the_openapi_document_is_3_1_and_matches_its_snapshot() {
    let doc = serde_json::to_value(switchboard_http::openapi::document()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut lines = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let scope = op["security"][0]["api_token"][0].as_str().unwrap_or("-");
            let mut codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            codes.sort();
            let codes: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
            lines.insert(format!(
                "{} {path} [{scope}] {}",
                method.to_uppercase(),
                codes.join(",")
            ));
            if path.starts_with("/admin/") {
                assert!(
                    op["responses"]["401"]["content"]["application/problem+json"].is_object(),
                    "{method} {path} documents its 401 body"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["api_token"].is_object());
    assert!(doc["components"]["securitySchemes"]["console_session"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let actual = lines.into_iter().collect::<Vec<_>>().join("\n") + "\n";
    let snapshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots/openapi-operations.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
        std::fs::write(&snapshot, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "OpenAPI operations changed; review and rerun with UPDATE_SNAPSHOTS=1"
    );
}

server_test!(
    errors_are_problem_documents_for_every_kind_of_bad_request,
    |s| {
        let t = &s.admin_token;
        let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
            (
                s.http
                    .post(s.api("/users"))
                    .bearer_auth(t)
                    .header("content-type", "application/json")
                    .body("{not json"),
                400,
                "malformed_json",
            ),
            (
                s.http
                    .post(s.api("/users"))
                    .bearer_auth(t)
                    .header("content-type", "text/plain")
                    .body("x"),
                415,
                "unsupported_media_type",
            ),
            (
                s.http
                    .post(s.api("/users"))
                    .bearer_auth(t)
                    .json(&json!({"username": 5})),
                422,
                "unprocessable_body",
            ),
            (
                s.http
                    .post(s.api("/users"))
                    .bearer_auth(t)
                    .json(&json!({"username": "x", "role": "admin", "extra": 1})),
                422,
                "unprocessable_body",
            ),
            (
                s.http
                    .post(s.api("/users"))
                    .bearer_auth(t)
                    .json(&json!({"username": "", "role": "boss"})),
                422,
                "validation_failed",
            ),
            (
                s.http
                    .post(s.api("/users"))
                    .bearer_auth(t)
                    .header("content-type", "application/json")
                    .body(vec![b' '; 70_000]),
                413,
                "payload_too_large",
            ),
            (
                s.http.get(format!("{}/no/such/route", s.url)),
                404,
                "not_found",
            ),
            (
                s.http.delete(s.api("/me")).bearer_auth(t),
                405,
                "method_not_allowed",
            ),
            (
                s.http.get(s.api("/users/does-not-exist")).bearer_auth(t),
                404,
                "not_found",
            ),
            (
                s.http.get(s.api("/audit?limit=0")).bearer_auth(t),
                422,
                "validation_failed",
            ),
            (
                s.http.get(s.api("/audit?from=yesterday")).bearer_auth(t),
                422,
                "validation_failed",
            ),
            (
                s.http.get(s.api("/audit?bogus=1")).bearer_auth(t),
                400,
                "bad_query",
            ),
            (
                s.http.get(s.api("/jobs/not-a-number")).bearer_auth(t),
                404,
                "not_found",
            ),
        ];
        for (req, status, code) in cases {
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "expected {code}");
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "{code}"
            );
            let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], code);
            assert_eq!(body["type"], format!("urn:switchboard:problem:{code}"));
            assert_eq!(body["status"], status);
            assert_eq!(body["request_id"], request_id.as_str());
            assert!(!body["detail"].as_str().unwrap().is_empty());
        }
        // Invalid input changed nothing.
        let users: Vec<Value> = s.get(t, "/users").await.json().await.unwrap();
        assert_eq!(users.len(), 1);
    }
);

server_test!(
    a_token_is_shown_once_works_until_revoked_and_never_exceeds_its_user,
    |s| {
        let op = s.token_for_role("operator").await;
        let me: Value = s.get(&op, "/me").await.json().await.unwrap();
        assert_eq!(me["role"], "operator");
        // A narrower token for oneself is fine; a wider one is refused.
        let r = s
            .post(&op, "/tokens", json!({"name": "ro", "role": "admin"}))
            .await;
        assert_eq!(r.status(), 422);
        let r = s.post(&op, "/tokens", json!({"name": "other", "user_id": me["user_id"], "role": "operator", "expires_in_days": 1})).await;
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        let secret = created["secret"].as_str().unwrap().to_owned();
        let listed: Vec<Value> = s.get(&op, "/tokens").await.json().await.unwrap();
        assert!(
            listed.iter().all(|t| t.get("secret").is_none()),
            "secrets never listed"
        );
        assert!(
            listed.iter().all(|t| t["user_id"] == me["user_id"]),
            "operators see only their own tokens"
        );
        assert_eq!(s.get(&secret, "/me").await.status(), 200);
        let r = s
            .http
            .delete(s.api(&format!("/tokens/{}", created["id"].as_str().unwrap())))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(s.get(&secret, "/me").await.status(), 401, "revoked at once");
        // Disabling a user ends their tokens.
        let r = s
            .http
            .patch(s.api(&format!("/users/{}", me["user_id"].as_str().unwrap())))
            .bearer_auth(&s.admin_token)
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(s.get(&op, "/me").await.status(), 401);
        // The last admin can be neither demoted nor disabled.
        let admin: Value = s.get(&s.admin_token, "/me").await.json().await.unwrap();
        let r = s
            .http
            .patch(s.api(&format!("/users/{}", admin["user_id"].as_str().unwrap())))
            .bearer_auth(&s.admin_token)
            .json(&json!({"role": "auditor"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        // Every change is in the audit log.
        let audit: Vec<Value> = s
            .get(&s.admin_token, "/audit?action=token.")
            .await
            .json()
            .await
            .unwrap();
        let actions: BTreeSet<&str> = audit
            .iter()
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        assert!(
            actions.contains("token.created") && actions.contains("token.revoked"),
            "{actions:?}"
        );
        common::assert_audit_log_verifies(s).await;
    }
);

server_test!(
    console_sessions_need_csrf_for_changes_and_sign_in_with_password_works,
    |s| {
        let r = s.post(&s.admin_token, "/users", json!({"username": "nurse.admin", "role": "admin", "password": "correct horse battery"})).await;
        assert_eq!(r.status(), 201);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let bad = http
            .post(format!("{}/console/login", s.url))
            .form(&[
                ("username", "nurse.admin"),
                ("password", "wrong password!!"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 401);
        let ok = http
            .post(format!("{}/console/login", s.url))
            .form(&[
                ("username", "nurse.admin"),
                ("password", "correct horse battery"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 303);
        let cookie = ok.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert!(
            ok.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .contains("HttpOnly")
        );
        let me = http
            .get(s.api("/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 200);
        let me: Value = me.json().await.unwrap();
        assert_eq!(me["authenticated_by"], "console");
        let no_csrf = http
            .post(s.api("/tokens"))
            .header("cookie", &cookie)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(no_csrf.status(), 403);
        let page = http
            .get(format!("{}/console/users", s.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        let with_csrf = http
            .post(s.api("/tokens"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(with_csrf.status(), 201);
        let audit: Vec<Value> = s
            .get(&s.admin_token, "/audit?action=session.")
            .await
            .json()
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|a| a["action"] == "session.sign_in_failed")
        );
        assert!(audit.iter().any(|a| a["action"] == "session.signed_in"));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_started_on_one_replica_works_on_another() {
    let Some(a) =
        TestServer::postgres("a_console_session_started_on_one_replica_works_on_another").await
    else {
        return;
    };
    let master = a.running.app.config().master_key_path();
    let key = std::fs::read_to_string(&master).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shared_key = dir.path().join("master.key");
    switchboard_app::files::write_private(&shared_key, key.as_bytes()).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(b_dir.path(), &a.db_url);
    cfg.master_key_file = Some(shared_key);
    let b = switchboard_cli::start(cfg, switchboard_cli::standard_registry())
        .await
        .unwrap();
    assert!(
        b.bootstrap_token.is_none(),
        "the second replica does not bootstrap again"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/console/login", a.url))
        .form(&[("token", a.admin_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http
        .get(format!("http://{}/console/audit", b.addr))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("session.signed_in"));
    b.shutdown().await.unwrap();
    a.stop().await;
}

server_test!(
    a_console_session_opened_with_a_narrowed_token_keeps_the_narrow_role,
    |s| {
        let r = s
            .post(
                &s.admin_token,
                "/tokens",
                json!({"name": "read-only", "role": "auditor"}),
            )
            .await;
        let narrowed: Value = r.json().await.unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = http
            .post(format!("{}/console/login", s.url))
            .form(&[("token", narrowed["secret"].as_str().unwrap())])
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 303);
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let me: Value = http
            .get(s.api("/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["role"], "auditor");
        let page = http
            .get(format!("{}/console/users", s.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !page.contains("id=\"new-user\""),
            "no admin form for an auditor session"
        );
    }
);

server_test!(
    a_failing_job_is_dead_lettered_then_retried_or_discarded_by_an_operator,
    |s| {
        use axum::routing::post;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = std::sync::Arc::clone(&hits);
        let receiver = axum::Router::new().route(
            "/hook",
            post(move || {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, receiver).await.ok() });

        let mut tx = s.running.app.store().begin().await.unwrap();
        let id = switchboard_app::jobs::enqueue(
            &mut *tx,
            "webhook.deliver",
            json!({"url": hook, "event": {"n": 1}}),
            None,
            std::time::Duration::ZERO,
            3,
        )
        .await
        .unwrap()
        .unwrap();
        tx.commit().await.unwrap();

        let op = s.token_for_role("operator").await;
        let dead = wait_for_dead(s, &op, id).await;
        assert_eq!(dead["attempts"], 3);
        assert_eq!(dead["last_error"], "receiver answered HTTP 500");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
        let audit: Vec<Value> = s
            .get(&s.admin_token, &format!("/audit?target=job:{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert!(audit.iter().any(|a| a["action"] == "job.dead_lettered"));

        let auditor = s.token_for_role("auditor").await;
        assert_eq!(
            s.post(&auditor, &format!("/jobs/{id}/retry"), json!({}))
                .await
                .status(),
            403
        );
        assert_eq!(
            s.post(&op, &format!("/jobs/{id}/retry"), json!({}))
                .await
                .status(),
            200
        );
        wait_for_dead(s, &op, id).await;
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            6,
            "the retry ran all attempts again"
        );
        assert_eq!(
            s.post(&op, &format!("/jobs/{id}/discard"), json!({}))
                .await
                .status(),
            204
        );
        assert_eq!(s.get(&op, &format!("/jobs/{id}")).await.status(), 404);
        assert_eq!(
            s.post(&op, &format!("/jobs/{id}/discard"), json!({}))
                .await
                .status(),
            404
        );
        let stats: Value = s.get(&op, "/jobs/stats").await.json().await.unwrap();
        // Only the standing clean-ups remain queued: telehealth (hourly) and devices (every 15 s).
        assert_eq!(stats, json!({"queued": 2, "running": 0, "dead": 0}));
    }
);

async fn wait_for_dead(s: &TestServer, token: &str, id: i64) -> Value {
    for _ in 0..200 {
        let j: Value = s
            .get(token, &format!("/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if j["state"] == "dead" {
            return j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {id} never reached the dead letters");
}

server_test!(health_readiness_and_metrics_answer, |s| {
    let h: Value = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let r = s
        .http
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = s.get(&s.admin_token, "/users").await;
    let m = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "switchboard_http_requests_total",
        "switchboard_http_request_duration_seconds",
        "switchboard_jobs_queued",
        "switchboard_jobs_dead",
        "switchboard_db_pool_connections",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    // SQLite's one writer tells how busy it is (the metrics registry is shared by the tests of
    // this process, so PostgreSQL's absence of the figures cannot be told here).
    if s.db_url.starts_with("sqlite:") {
        for name in [
            "switchboard_db_write_transactions_total",
            "switchboard_db_writer_held_microseconds_total",
            "switchboard_db_group_commits_total",
        ] {
            assert!(m.contains(name), "{name} missing from /metrics");
        }
    }
    assert!(
        m.contains("route=\"/admin/api/v1/users\""),
        "requests are labelled by route"
    );
});
