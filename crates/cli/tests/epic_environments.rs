//! Epic environments: validation, the hosted JWK set, PEM, and backend OAuth against the
//! simulator including a key rotation the simulator has to notice.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn env_body(url: &str) -> Value {
    json!({"name": "Test environment", "kind": "non_production", "interconnect_url": url, "instance": "interconnect-tst",
           "client_id": "switchboard-test", "apps": ["Rover", "Haiku"], "basic_username": "emp$SWITCHBOARD",
           "basic_password": "interconnect-secret-pw", "epic_client_id": "switchboard-test", "publish_delay_secs": 0})
}

server_test!(
    bad_environments_are_refused_field_by_field_and_nothing_is_stored,
    |s| {
        let cases = [
            (
                json!({"name": "P", "kind": "production", "interconnect_url": "http://epic.example", "instance": "prd", "client_id": "c"}),
                "interconnect_url",
            ),
            (
                json!({"name": "P", "kind": "production", "interconnect_url": "not a url", "instance": "prd", "client_id": "c"}),
                "interconnect_url",
            ),
            (
                json!({"name": "P", "kind": "production", "interconnect_url": "https://epic.example", "instance": "a/../b", "client_id": "c"}),
                "instance",
            ),
            (
                json!({"name": "P", "kind": "production", "interconnect_url": "https://epic.example", "instance": "prd", "client_id": "c", "key_algorithm": "HS256"}),
                "key_algorithm",
            ),
            (
                json!({"name": "P", "kind": "production", "interconnect_url": "https://epic.example", "instance": "prd", "client_id": "c", "apps": ["rover"]}),
                "apps",
            ),
            (
                json!({"name": "P", "kind": "staging", "interconnect_url": "https://epic.example", "instance": "prd", "client_id": "c"}),
                "kind",
            ),
            (
                json!({"name": "P", "kind": "production", "interconnect_url": "https://epic.example", "instance": "prd", "client_id": "c", "basic_username": "bob"}),
                "basic_username",
            ),
            (json!({"kind": "production"}), "client_id"),
        ];
        for (body, field) in cases {
            let r = s
                .post(&s.admin_token, "/epic-environments", body.clone())
                .await;
            assert_eq!(r.status(), 422, "{body}");
            let p: Value = r.json().await.unwrap();
            assert!(
                p["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["field"] == field),
                "{field} not named in {p}"
            );
        }
        let listed: Vec<Value> = s
            .get(&s.admin_token, "/epic-environments")
            .await
            .json()
            .await
            .unwrap();
        assert!(listed.is_empty());
    }
);

server_test!(
    an_environment_hosts_its_jwk_set_offers_pem_and_keeps_secrets_out_of_answers,
    |s| {
        let r = s
            .post(
                &s.admin_token,
                "/epic-environments",
                env_body("https://epic.example"),
            )
            .await;
        assert_eq!(r.status(), 201);
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("interconnect-secret-pw"),
            "the Basic password never comes back"
        );
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            e["token_url"],
            "https://epic.example/interconnect-tst-oauth/oauth2/token"
        );
        assert_eq!(e["has_basic_password"], true);
        let jwk_url = e["key_set"]["jwk_url"].as_str().unwrap().to_owned();
        assert!(jwk_url.starts_with(&s.url) && jwk_url.ends_with(".json"));
        let r = s.http.get(&jwk_url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age=")
        );
        let set: Value = r.json().await.unwrap();
        assert_eq!(set["keys"].as_array().unwrap().len(), 1);
        let jwk = &set["keys"][0];
        assert_eq!(
            (jwk["kty"].as_str(), jwk["alg"].as_str()),
            (Some("RSA"), Some("RS384"))
        );
        assert_eq!(jwk["kid"], e["key_set"]["keys"][0]["kid"]);
        assert!(jwk.get("d").is_none(), "no private parts");
        let pem = s
            .get(
                &s.admin_token,
                &format!(
                    "/epic-environments/{}/public-key.pem",
                    e["id"].as_str().unwrap()
                ),
            )
            .await
            .text()
            .await
            .unwrap();
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
                && pem.trim_end().ends_with("-----END PUBLIC KEY-----")
        );
        assert_eq!(
            s.http
                .get(format!("{}/jwks/ks_nope.json", s.url))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        let again = s
            .post(
                &s.admin_token,
                "/epic-environments",
                env_body("https://epic.example"),
            )
            .await;
        assert_eq!(again.status(), 422, "names are unique");
        let id = e["id"].as_str().unwrap();
        let patched = s.http.patch(s.api(&format!("/epic-environments/{id}"))).bearer_auth(&s.admin_token).json(&json!({"apps": ["Canto"], "kind": "production", "interconnect_url": "https://epic.example"})).send().await.unwrap();
        assert_eq!(patched.status(), 200);
        let patched: Value = patched.json().await.unwrap();
        assert_eq!(
            (patched["apps"].clone(), patched["kind"].clone()),
            (json!(["Canto"]), json!("production"))
        );
        let es = s.post(&s.admin_token, "/epic-environments", json!({"name": "EC", "kind": "non_production", "interconnect_url": "https://epic.example", "instance": "tst", "client_id": "c2", "key_algorithm": "ES384"})).await;
        let es: Value = es.json().await.unwrap();
        let set: Value = s
            .http
            .get(es["key_set"]["jwk_url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (
                set["keys"][0]["kty"].as_str(),
                set["keys"][0]["crv"].as_str()
            ),
            (Some("EC"), Some("P-384"))
        );
        assert_eq!(
            s.http
                .delete(s.api(&format!("/epic-environments/{id}")))
                .bearer_auth(&s.admin_token)
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
        let set: Value = s
            .http
            .get(&jwk_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            set["keys"].as_array().unwrap().is_empty(),
            "a removed environment's keys leave the set"
        );
        let audit: Vec<Value> = s
            .get(&s.admin_token, "/audit?action=epic_environment.")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(audit.len(), 4);
        assert!(
            !serde_json::to_string(&audit)
                .unwrap()
                .contains("interconnect-secret-pw")
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_from_the_simulator_and_a_rotation_is_noticed_through_one_jwk_set_refetch() {
    let s = TestServer::sqlite().await;
    let sim = start_sim().await;
    let e: Value = s
        .post(
            &s.admin_token,
            "/epic-environments",
            env_body(&sim.base_url()),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap().to_owned();
    sim.sim.register_client(switchboard_epic_sim::ClientConfig {
        client_id: "switchboard-test".into(),
        jwks_url: Some(e["key_set"]["jwk_url"].as_str().unwrap().into()),
        ..Default::default()
    });
    let app = &s.running.app;
    let t1 = app.epic_token(&id).await.unwrap();
    assert_eq!(sim.sim.jwks_fetches().len(), 1);
    assert_eq!(app.epic_token(&id).await.unwrap(), t1, "cached");

    let rotated: Value = s
        .post(
            &s.admin_token,
            &format!("/epic-environments/{id}/rotate-keys"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let keys = rotated["key_set"]["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    let new_kid = keys.iter().find(|k| k["state"] == "published").unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // The worker activates the new key (publish delay 0) and starts retiring the old one.
    let mut active = String::new();
    for _ in 0..100 {
        let env: Value = s
            .get(&s.admin_token, &format!("/epic-environments/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if let Some(k) = env["key_set"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["state"] == "active")
        {
            active = k["kid"].as_str().unwrap().to_owned();
            if active == new_kid {
                assert!(
                    env["key_set"]["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["state"] == "retiring"),
                    "the old key overlaps"
                );
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(active, new_kid);
    let set: Value = s
        .http
        .get(e["key_set"]["jwk_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        set["keys"].as_array().unwrap().len(),
        2,
        "both keys are published during the overlap"
    );
    // The next assertion carries the new kid; the simulator refetches once and accepts.
    let creds = app.backend_credentials(&id).await.unwrap();
    assert_eq!(creds.kid, new_kid);
    app.epic_tokens().invalidate(&creds);
    let t2 = app.epic_token(&id).await.unwrap();
    assert_ne!(t1, t2);
    verify_captured_assertion_with_pyjwt(
        &s,
        &sim,
        e["key_set"]["jwk_url"].as_str().unwrap(),
        &new_kid,
    )
    .await;
    assert_eq!(
        sim.sim.jwks_fetches().len(),
        2,
        "exactly one refetch for the new kid"
    );
    let audit: Vec<Value> = s
        .get(&s.admin_token, "/audit?action=key_set.")
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"key_set.rotation_started")
            && actions.contains(&"key_set.key_activated")
            && actions.contains(&"key_set.key_retiring"),
        "{actions:?}"
    );
    sim.shutdown().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_doctor_names_each_failing_step_and_the_logout_test_explains_unknown_install_ids()
 {
    let s = TestServer::sqlite().await;
    let sim = start_sim().await;
    let e: Value = s
        .post(
            &s.admin_token,
            "/epic-environments",
            env_body(&sim.base_url()),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap().to_owned();
    let jwk_url = e["key_set"]["jwk_url"].as_str().unwrap().to_owned();
    let op = s.token_for_role("operator").await;
    let status_of = |report: &Value, step: &str| {
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == step)
            .map(|x| x["status"].as_str().unwrap().to_owned())
            .unwrap()
    };

    // Not registered with Epic yet: everything up to the token works; the token step says why.
    let r: Value = s
        .post(
            &op,
            &format!("/epic-environments/{id}/test-connection"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(
        (
            status_of(&r, "dns"),
            status_of(&r, "tcp"),
            status_of(&r, "tls"),
            status_of(&r, "metadata"),
            status_of(&r, "token")
        ),
        (
            "pass".into(),
            "pass".into(),
            "skipped".into(),
            "pass".into(),
            "fail".into()
        )
    );
    let token_step = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "token")
        .unwrap()
        .clone();
    assert!(
        token_step["hint"].as_str().unwrap().contains("12 hours"),
        "{token_step}"
    );

    // Registered, but no background user mapped.
    sim.sim.register_client(switchboard_epic_sim::ClientConfig {
        client_id: "switchboard-test".into(),
        jwks_url: Some(jwk_url.clone()),
        background_user: false,
        ..Default::default()
    });
    let r: Value = s
        .post(
            &op,
            &format!("/epic-environments/{id}/test-connection"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let token_step = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "token")
        .unwrap()
        .clone();
    assert!(
        token_step["detail"]
            .as_str()
            .unwrap()
            .starts_with("not_mapped"),
        "{token_step}"
    );
    assert!(
        token_step["hint"]
            .as_str()
            .unwrap()
            .contains("background user")
    );

    // Mapped: all green, and the stored result reads back.
    sim.sim.register_client(switchboard_epic_sim::ClientConfig {
        client_id: "switchboard-test".into(),
        jwks_url: Some(jwk_url),
        ..Default::default()
    });
    let r: Value = s
        .post(
            &op,
            &format!("/epic-environments/{id}/test-connection"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let stored: Value = s
        .get(&op, &format!("/epic-environments/{id}/test-connection"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["at"], r["at"]);

    // Test Epic API logout for a device, AppName on.
    sim.sim
        .mobile_login("J4X7X22WGARover", "nurse.kim", Some("Rover".into()));
    let r: Value = s
        .post(
            &op,
            &format!("/epic-environments/{id}/test-logout"),
            json!({"serial": "J4X7X22WGA", "app": "Rover"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert!(sim.sim.mobile_logins().is_empty());
    let r: Value = s
        .post(
            &op,
            &format!("/epic-environments/{id}/test-logout"),
            json!({"serial": "J4X7X22WGA", "app": "Rover"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["ok"], false);
    let logout = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "logout")
        .unwrap()
        .clone();
    assert!(
        logout["hint"]
            .as_str()
            .unwrap()
            .contains("No user has signed in"),
        "{logout}"
    );
    let bad = s
        .post(
            &op,
            &format!("/epic-environments/{id}/test-logout"),
            json!({"serial": "J4X7X22WGA", "app": "rover"}),
        )
        .await;
    assert_eq!(bad.status(), 422);

    // Unreachable hosts fail at the step that breaks, and the rest is skipped.
    for (url, failing) in [
        ("http://no-such-host.invalid", "dns"),
        ("http://127.0.0.1:9", "tcp"),
    ] {
        let e2: Value = s.post(&s.admin_token, "/epic-environments", json!({"name": format!("broken {failing}"), "kind": "non_production", "interconnect_url": url, "instance": "x", "client_id": "c", "timeout_ms": 2000})).await.json().await.unwrap();
        let r: Value = s
            .post(
                &op,
                &format!(
                    "/epic-environments/{}/test-connection",
                    e2["id"].as_str().unwrap()
                ),
                json!({}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(status_of(&r, failing), "fail", "{r}");
        assert_eq!(status_of(&r, "token"), "skipped");
    }
    let audit: Vec<Value> = s
        .get(&s.admin_token, "/audit?action=epic_environment.")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "epic_environment.connection_tested")
    );
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "epic_environment.logout_tested")
    );
    sim.shutdown().await;
    s.stop().await;
}

/// A TLS server whose certificate is issued by a private CA (made with `openssl`), served by
/// Python's `ssl` module. Returns (port, CA PEM, the child) or `None` when the tools are missing.
fn private_ca_server(dir: &std::path::Path) -> Option<(u16, String, std::process::Child)> {
    use std::process::{Command, Stdio};
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "365",
        "-subj",
        "/CN=Test Hospital Private CA",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "20",
        "-extfile",
        "ext.cnf",
    ]);
    if !ok {
        return None;
    }
    let script = "import http.server, ssl, sys\nctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\nctx.load_cert_chain('leaf.pem', 'leaf.key')\nsrv = http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)\nsrv.socket = ctx.wrap_socket(srv.socket, server_side=True)\nprint(srv.server_address[1], flush=True)\nsrv.serve_forever()\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take()?),
        &mut line,
    )
    .ok()?;
    let port = line.trim().parse().ok()?;
    Some((
        port,
        std::fs::read_to_string(dir.join("ca.pem")).ok()?,
        child,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_bundle_makes_tls_pass_and_the_doctor_warns_about_a_certificate_close_to_expiry()
 {
    let dir = tempfile::tempdir().unwrap();
    let Some((port, ca_pem, mut child)) = private_ca_server(dir.path()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl and python3 are required on CI"
        );
        eprintln!("SKIPPED (tools): openssl or python3 missing");
        return;
    };
    let s = TestServer::sqlite().await;
    let e: Value = s
        .post(&s.admin_token, "/epic-environments", json!({"name": "Private CA", "kind": "production", "interconnect_url": format!("https://127.0.0.1:{port}"), "instance": "interconnect-prd", "client_id": "c", "timeout_ms": 3000}))
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap().to_owned();
    let tls = |r: &Value| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "tls")
            .unwrap()
            .clone()
    };

    let r: Value = s
        .post(
            &s.admin_token,
            &format!("/epic-environments/{id}/test-connection"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let step = tls(&r);
    assert_eq!(step["status"], "fail", "{r}");
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .contains("not signed by a trusted authority"),
        "{step}"
    );

    let bad = s
        .http
        .patch(s.api(&format!("/epic-environments/{id}")))
        .bearer_auth(&s.admin_token)
        .json(&json!({"ca_bundle": "not a certificate"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let ok = s
        .http
        .patch(s.api(&format!("/epic-environments/{id}")))
        .bearer_auth(&s.admin_token)
        .json(&json!({"ca_bundle": ca_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["ca_certificates"], 1);

    let r: Value = s
        .post(
            &s.admin_token,
            &format!("/epic-environments/{id}/test-connection"),
            json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let step = tls(&r);
    assert_eq!(step["status"], "warn", "{r}");
    let detail = step["detail"].as_str().unwrap();
    assert!(
        detail.contains("expires in 19 days") || detail.contains("expires in 20 days"),
        "{detail}"
    );
    let _ = child.kill();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_toward_epic_spaces_out_calls() {
    let s = TestServer::sqlite().await;
    let sim = start_sim().await;
    let mut body = env_body(&sim.base_url());
    body["rate_limit_per_sec"] = json!(2);
    let e: Value = s
        .post(&s.admin_token, "/epic-environments", body)
        .await
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap().to_owned();
    sim.sim.register_client(switchboard_epic_sim::ClientConfig {
        client_id: "switchboard-test".into(),
        jwks_url: Some(e["key_set"]["jwk_url"].as_str().unwrap().into()),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    for _ in 0..5 {
        s.post(
            &s.admin_token,
            &format!("/epic-environments/{id}/test-logout"),
            json!({"serial": "SER1", "app": "Rover"}),
        )
        .await;
    }
    // 2 per second with a burst of 2: the 5th call waits about 1.5 s.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    let logouts = sim
        .sim
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("DisassociateMobileDevice"))
        .count();
    assert_eq!(logouts, 5);
    sim.shutdown().await;
    s.stop().await;
}

/// The independent check: the assertion the simulator received (from its journal), verified by
/// PyJWT against the JWK set Switchboard publishes, with every Epic claim rule.
async fn verify_captured_assertion_with_pyjwt(
    s: &TestServer,
    sim: &switchboard_epic_sim::RunningSim,
    jwk_url: &str,
    kid: &str,
) {
    let have_peer = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_peer {
        assert!(std::env::var_os("CI").is_none(), "PyJWT is required on CI");
        eprintln!("SKIPPED (peer): pip install -r tests/peers/requirements.txt");
        return;
    }
    let call = sim
        .sim
        .calls()
        .into_iter()
        .rev()
        .find(|c| c.path.ends_with("/oauth2/token") && c.status == 200)
        .unwrap();
    let assertion = url::form_urlencoded::parse(call.body.as_bytes())
        .find(|(k, _)| k == "client_assertion")
        .unwrap()
        .1
        .into_owned();
    assert!(
        assertion
            .split('.')
            .next()
            .map(|h| String::from_utf8(base64_url_decode(h)).unwrap())
            .unwrap()
            .contains(kid)
    );
    let jwks = s
        .http
        .get(jwk_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers/verify_assertion.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([
            jwks.as_str(),
            assertion.as_str(),
            "switchboard-test",
            &sim.token_url("interconnect-tst"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

server_test!(
    a_scheduled_rotation_starts_when_due_and_schedules_the_next_one,
    |s| {
        let mut body = env_body("https://epic.example");
        body["rotate_every_days"] = json!(90);
        body["publish_delay_secs"] = json!(3600);
        let e: Value = s
            .post(&s.admin_token, "/epic-environments", body)
            .await
            .json()
            .await
            .unwrap();
        let ks_id = e["key_set"]["id"].as_str().unwrap().to_owned();
        let first_due = e["key_set"]["next_rotation_at"].as_i64().unwrap();
        assert!(
            first_due > switchboard_app::now_ms() + 89 * 86_400_000,
            "due in 90 days"
        );
        let app = &s.running.app;
        // Make it due now.
        let mut tx = app.store().begin().await.unwrap();
        let mut ks = tx.get_key_set(&ks_id).await.unwrap().unwrap();
        ks.next_rotation_at = Some(switchboard_app::now_ms() - 1);
        tx.update_key_set(&ks).await.unwrap();
        tx.commit().await.unwrap();
        app.advance_key_set(&ks_id).await.unwrap();
        let env: Value = s
            .get(
                &s.admin_token,
                &format!("/epic-environments/{}", e["id"].as_str().unwrap()),
            )
            .await
            .json()
            .await
            .unwrap();
        let states: Vec<&str> = env["key_set"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            vec!["published", "active"],
            "a new key is published and waits its publish delay"
        );
        assert!(
            env["key_set"]["next_rotation_at"].as_i64().unwrap()
                > switchboard_app::now_ms() + 89 * 86_400_000,
            "the next rotation is scheduled"
        );
        let audit: Vec<Value> = s
            .get(&s.admin_token, &format!("/audit?target=key_set:{ks_id}"))
            .await
            .json()
            .await
            .unwrap();
        assert!(audit.iter().any(
            |a| a["action"] == "key_set.rotation_started" && a["details"]["scheduled"] == true
        ));
        // Running it again changes nothing: the published key is still waiting.
        app.advance_key_set(&ks_id).await.unwrap();
        let env: Value = s
            .get(
                &s.admin_token,
                &format!("/epic-environments/{}", e["id"].as_str().unwrap()),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(env["key_set"]["keys"].as_array().unwrap().len(), 2);
    }
);

/// A simulator with one non-production instance, `interconnect-tst`.
async fn start_sim() -> switchboard_epic_sim::RunningSim {
    let mut cfg = switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    cfg.instances = vec![switchboard_epic_sim::InstanceConfig {
        name: "interconnect-tst".into(),
        production: false,
    }];
    switchboard_epic_sim::start(cfg).await.unwrap()
}
