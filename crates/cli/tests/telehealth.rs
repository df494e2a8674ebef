//! Telehealth against the Epic simulator: Epic's encrypted launch, the SMART EHR launch with
//! PKCE, one conference per appointment named by the rule, the lobby, token renewal, the call
//! status reported to Epic (also through an outage), Jitsi room tokens checked by PyJWT, links
//! encrypted by Python's `cryptography`, named error pages, and removing an integration.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use common::TestServer;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use std::time::Duration;

const KEY: &str = "fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=";
const JITSI_SECRET: &str = "jitsi-shared-secret-for-tests";

async fn start_sim(token_lifetime_secs: u64) -> switchboard_epic_sim::RunningSim {
    let cfg = switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_lifetime_secs,
        instances: vec![switchboard_epic_sim::InstanceConfig {
            name: "interconnect-tst".into(),
            production: false,
        }],
        ..Default::default()
    };
    switchboard_epic_sim::start(cfg).await.unwrap()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Fixture {
    sim: switchboard_epic_sim::RunningSim,
    profile: Value,
}

/// An environment on the simulator, a profile on it, and its two Epic apps registered there.
async fn fixture(s: &TestServer, token_lifetime_secs: u64, extra: Value) -> Fixture {
    let sim = start_sim(token_lifetime_secs).await;
    let env: Value = s
        .post(
            &s.admin_token,
            "/epic-environments",
            json!({"name": format!("Sim {}", &common::uuid_like()[..8]), "kind": "non_production", "interconnect_url": sim.base_url(),
                   "instance": "interconnect-tst", "client_id": "switchboard-test", "publish_delay_secs": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut body = json!({
        "name": "Healthcare Org",
        "environment_id": env["id"],
        "encryption": "aes256",
        "key": KEY,
        "provider_app": {"non_production": {"client_id": "th-provider", "client_secret": "provider-secret"}},
        "patient_app": {"non_production": {"client_id": "th-patient", "client_secret": "patient-secret"}},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = s.post(&s.admin_token, "/telehealth/profiles", body).await;
    assert_eq!(r.status(), 201);
    let profile: Value = r.json().await.unwrap();
    let http = reqwest::Client::new();
    for (id, secret, uri) in [
        (
            "th-provider",
            "provider-secret",
            &profile["provider_redirect_uri"],
        ),
        (
            "th-patient",
            "patient-secret",
            &profile["patient_redirect_uri"],
        ),
    ] {
        let r = http
            .post(format!("{}/_sim/clients", sim.base_url()))
            .json(&json!({"client_id": id, "client_secret": secret, "redirect_uris": [uri], "apis": ["*"]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    Fixture { sim, profile }
}

/// What Epic's video-visit button produces for `role` and `appointment` (via the simulator).
async fn epic_link(f: &Fixture, role: &str, appointment: &str, extra: Value) -> Value {
    let mut body = json!({"launch_url": f.profile[format!("{role}_launch_url")], "instance": "interconnect-tst",
                          "key": KEY, "role": role, "appointment": appointment});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/telehealth/launch", f.sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

fn set_cookie(r: &reqwest::Response, prefix: &str) -> Option<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(prefix))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

fn location(r: &reqwest::Response) -> String {
    r.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// A browser joining from a launch URL: Switchboard → Epic authorize → Switchboard → room.
/// Returns (room URL, participant cookie).
async fn join(s: &TestServer, url: &str) -> Result<(String, String), reqwest::Response> {
    let b = no_redirects();
    let r = b.get(url).send().await.unwrap();
    if r.status() != 303 && r.status() != 302 && r.status() != 307 {
        return Err(r);
    }
    let state_cookie = set_cookie(&r, "sb_th_state=").unwrap();
    let at_epic = b.get(location(&r)).send().await.unwrap();
    assert!(
        at_epic.status().is_redirection(),
        "{}",
        at_epic.text().await.unwrap()
    );
    let back = b
        .get(location(&at_epic))
        .header(COOKIE, &state_cookie)
        .send()
        .await
        .unwrap();
    if !back.status().is_redirection() {
        return Err(back);
    }
    let cookie = set_cookie(&back, "sb_tp_").unwrap();
    Ok((format!("{}{}", s.url, location(&back)), cookie))
}

async fn room_state(room: &str, cookie: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{room}/state"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn leave(room: &str, cookie: &str) {
    let r = no_redirects()
        .post(format!("{room}/leave"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
}

async fn conferences(s: &TestServer, token: &str, query: &str) -> Value {
    s.get(token, &format!("/telehealth/conferences{query}"))
        .await
        .json()
        .await
        .unwrap()
}

async fn epic_statuses(f: &Fixture) -> Vec<Value> {
    reqwest::Client::new()
        .get(format!("{}/_sim/connection-status", f.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls until `check` holds (bounded: 15 s).
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn expected_name(fields: &Value, dept: bool) -> String {
    let names: Vec<&str> = ["fname", "mname", "lname"]
        .iter()
        .filter_map(|k| fields[k].as_str())
        .filter(|v| !v.is_empty())
        .collect();
    let mut n = format!(
        "Appointment for {} Healthcare Org:{}",
        names.join(" "),
        fields["apptid"].as_str().unwrap()
    );
    if dept {
        n.push_str(&format!(" in {}", fields["dept"].as_str().unwrap()));
    }
    n
}

async fn appointments(f: &Fixture) -> Vec<String> {
    reqwest::Client::new()
        .get(format!("{}/_sim/data/Appointment", f.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

server_test!(
    provider_and_patient_of_one_appointment_meet_in_one_named_conference_and_epic_hears_start_and_end,
    |s| {
        let f = fixture(s, 3600, json!({})).await;
        let appt = appointments(&f).await[3].clone();
        // The patient arrives first and waits in the lobby.
        let patient_link = epic_link(&f, "patient", &appt, json!({})).await;
        let (patient_room, patient_cookie) = join(s, patient_link["url"].as_str().unwrap()).await.unwrap();
        let st = room_state(&patient_room, &patient_cookie).await;
        assert_eq!(st["my_state"], "lobby", "{st}");
        let fields = &patient_link["fields"];
        let name = expected_name(fields, !fields["dept"].as_str().unwrap().is_empty());
        assert_eq!(st["conference_name"], name.as_str());
        assert!(epic_statuses(&f).await.is_empty(), "no provider yet: not connected");
        // Another browser cannot see the room.
        let stranger = reqwest::Client::new().get(&patient_room).send().await.unwrap();
        assert_eq!(stranger.status(), 404);

        let provider_link = epic_link(&f, "provider", &appt, json!({"user": "DRJONES"})).await;
        let (provider_room, provider_cookie) = join(s, provider_link["url"].as_str().unwrap()).await.unwrap();
        let st = room_state(&provider_room, &provider_cookie).await;
        assert_eq!(st["my_state"], "joined");
        assert_eq!(st["conference_name"], name.as_str());
        assert_eq!(room_state(&patient_room, &patient_cookie).await["my_state"], "joined", "the provider admits the lobby");
        let html = reqwest::Client::new().get(&provider_room).header(COOKIE, &provider_cookie).send().await.unwrap().text().await.unwrap();
        assert!(html.contains("Healthcare Org") && html.contains("id=\"leave\""), "{html}");

        let list = conferences(s, &s.admin_token, "?state=active").await;
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        let c = &items[0];
        assert_eq!(c["name"], name.as_str());
        let ps = c["participants"].as_array().unwrap();
        assert_eq!(ps.len(), 2);
        let patient_display = ["fname", "mname", "lname"].iter().filter_map(|k| fields[k].as_str()).filter(|v| !v.is_empty()).collect::<Vec<_>>().join(" ");
        assert!(ps.iter().any(|p| p["role"] == "patient" && p["name"] == patient_display.as_str()));
        assert!(ps.iter().any(|p| p["role"] == "provider" && p["name"] == "Healthcare Org" && p["epic_user"] == "DRJONES"));
        // An auditor sees the conference without the patient's name, and cannot search by it.
        let auditor = s.token_for_role("auditor").await;
        let hidden = conferences(s, &auditor, "?state=active").await;
        let hidden_name = hidden["items"][0]["name"].as_str().unwrap();
        assert!(!hidden_name.contains(fields["lname"].as_str().unwrap()) && hidden_name.contains("[patient]"), "{hidden_name}");
        let q = fields["lname"].as_str().unwrap();
        assert_eq!(conferences(s, &auditor, &format!("?q={q}")).await["items"].as_array().unwrap().len(), 0);
        assert_eq!(conferences(s, &s.admin_token, &format!("?q={q}")).await["items"].as_array().unwrap().len(), 1);

        let conf_id = c["id"].as_str().unwrap().to_owned();
        eventually("Epic told connected", || async {
            epic_statuses(&f).await.iter().any(|x| x["status"] == "connected" && x["conference_id"] == conf_id.as_str())
        })
        .await;
        let connected = epic_statuses(&f).await;
        assert_eq!(connected[0]["external_id"], fields["csn"]);
        assert_eq!(connected[0]["external_id_type"], "CSN");
        assert_eq!(connected[0]["vendor_name"], "Switchboard");

        leave(&patient_room, &patient_cookie).await;
        assert_eq!(conferences(s, &s.admin_token, "?state=active").await["items"].as_array().unwrap().len(), 1, "one participant left is not the end");
        leave(&provider_room, &provider_cookie).await;
        let ended = conferences(s, &s.admin_token, "?state=ended").await;
        assert_eq!(ended["items"][0]["id"], conf_id.as_str());
        assert_eq!(ended["items"][0]["ended_reason"], "the last participant left");
        eventually("Epic told ended", || async {
            epic_statuses(&f).await.iter().any(|x| x["status"] == "ended" && x["conference_id"] == conf_id.as_str())
        })
        .await;
        eventually("the end recorded", || async {
            conferences(s, &s.admin_token, "?state=ended").await["items"][0]["epic_ended_at"].is_i64()
        })
        .await;
        assert_eq!(epic_statuses(&f).await.len(), 2, "each status exactly once");
        // A later visit for the same appointment gets a new conference.
        let again = epic_link(&f, "provider", &appt, json!({})).await;
        join(s, again["url"].as_str().unwrap()).await.unwrap();
        assert_eq!(conferences(s, &s.admin_token, "").await["items"].as_array().unwrap().len(), 2);
        f.sim.shutdown().await;
    }
);

server_test!(tokens_are_renewed_while_the_conference_is_active, |s| {
    let f = fixture(s, 3, json!({})).await;
    let appt = appointments(&f).await[0].clone();
    let link = epic_link(&f, "provider", &appt, json!({})).await;
    let (room, cookie) = join(s, link["url"].as_str().unwrap()).await.unwrap();
    eventually("two renewals", || async {
        conferences(s, &s.admin_token, "?state=active").await["items"][0]["participants"][0]["token_renewals"]
            .as_i64()
            .is_some_and(|n| n >= 2)
    })
    .await;
    let p = &conferences(s, &s.admin_token, "?state=active").await["items"][0]["participants"][0];
    assert!(p["token_error"].is_null(), "{p}");
    assert!(p["token_expires_at"].as_i64().unwrap() > switchboard_app::now_ms());
    let refreshes = reqwest::Client::new()
        .get(format!("{}/_sim/calls", f.sim.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        refreshes.contains("refresh_token"),
        "the simulator saw refresh grants"
    );
    leave(&room, &cookie).await;
    // After the end no more renewals happen.
    let n =
        conferences(s, &s.admin_token, "").await["items"][0]["participants"][0]["token_renewals"]
            .as_i64()
            .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        conferences(s, &s.admin_token, "").await["items"][0]["participants"][0]["token_renewals"]
            .as_i64()
            .unwrap(),
        n
    );
    f.sim.shutdown().await;
});

server_test!(epic_down_at_the_end_is_retried_until_it_returns, |s| {
    let f = fixture(s, 3600, json!({})).await;
    let appt = appointments(&f).await[1].clone();
    let link = epic_link(&f, "provider", &appt, json!({})).await;
    join(s, link["url"].as_str().unwrap()).await.unwrap();
    eventually("connected", || async {
        !epic_statuses(&f).await.is_empty()
    })
    .await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/_sim/faults", f.sim.base_url()))
        .json(&json!({"path_contains": "SetExternalConnectionStatus", "effect": {"kind": "status", "status": 503}, "max_faults": 4}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let id = conferences(s, &s.admin_token, "").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let operator = s.token_for_role("operator").await;
    let r = s
        .post(
            &operator,
            &format!("/telehealth/conferences/{id}/end"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let ended: Value = r.json().await.unwrap();
    assert_eq!(ended["state"], "ended");
    assert!(
        ended["ended_reason"]
            .as_str()
            .unwrap()
            .starts_with("ended by")
    );
    assert_eq!(
        s.post(
            &operator,
            &format!("/telehealth/conferences/{id}/end"),
            json!({})
        )
        .await
        .status(),
        409
    );
    eventually("Epic finally told ended", || async {
        epic_statuses(&f)
            .await
            .iter()
            .any(|x| x["status"] == "ended")
    })
    .await;
    let faults: Value = http
        .get(format!("{}/_sim/faults", f.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        faults[0]["faulted"], 4,
        "four 503s before it went through: {faults}"
    );
    assert_eq!(
        epic_statuses(&f)
            .await
            .iter()
            .filter(|x| x["status"] == "ended")
            .count(),
        1
    );
    f.sim.shutdown().await;
});

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let code = body
        .split("data-error=\"")
        .nth(1)
        .and_then(|x| x.split('"').next())
        .unwrap_or("none")
        .to_owned();
    (status, code)
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    u.to_string()
}

server_test!(bad_launches_get_named_error_pages_and_create_nothing, |s| {
    let f = fixture(s, 3600, json!({})).await;
    let appt = appointments(&f).await[2].clone();
    let b = no_redirects();
    let link = epic_link(&f, "provider", &appt, json!({})).await;
    let url = link["url"].as_str().unwrap();
    // Tampered ciphertext.
    let mut raw = base64_decode(link["encrypted"].as_str().unwrap());
    raw[5] ^= 0x20;
    let tampered = with_param(url, "data", &base64_encode(&raw));
    assert_eq!(
        error_code(b.get(&tampered).send().await.unwrap()).await,
        (400, "link_unreadable".into())
    );
    // Wrong key.
    let other = epic_link(
        &f,
        "provider",
        &appt,
        json!({"key": base64_encode(&[7u8; 32])}),
    )
    .await;
    assert_eq!(
        error_code(b.get(other["url"].as_str().unwrap()).send().await.unwrap()).await,
        (400, "link_unreadable".into())
    );
    // Garbage.
    assert_eq!(
        error_code(b.get(with_param(url, "data", "!!!")).send().await.unwrap()).await,
        (400, "link_unreadable".into())
    );
    // A stale link.
    let stale = epic_link(
        &f,
        "provider",
        &appt,
        json!({"ts": switchboard_app::now_ms() / 1000 - 3600}),
    )
    .await;
    assert_eq!(
        error_code(b.get(stale["url"].as_str().unwrap()).send().await.unwrap()).await,
        (410, "link_expired".into())
    );
    // A patient link opened on the provider route.
    let patient = epic_link(&f, "patient", &appt, json!({})).await;
    let swapped = patient["url"]
        .as_str()
        .unwrap()
        .replace("/patient/launch/", "/provider/launch/");
    assert_eq!(
        error_code(b.get(&swapped).send().await.unwrap()).await,
        (400, "link_unreadable".into())
    );
    // Unknown and malformed profiles.
    let unknown = url.replace(
        f.profile["id"].as_str().unwrap(),
        "7b0c58f2-9a3e-4e55-8f3c-2d2f0a7e1b11",
    );
    assert_eq!(
        error_code(b.get(&unknown).send().await.unwrap()).await,
        (404, "integration_not_found".into())
    );
    assert_eq!(
        error_code(
            b.get(format!("{}/telehealth/v1/provider/launch/nope", s.url))
                .send()
                .await
                .unwrap()
        )
        .await,
        (404, "integration_not_found".into())
    );
    assert_eq!(
        error_code(
            b.get(format!(
                "{}/telehealth/v1/nurse/launch/{}",
                s.url,
                f.profile["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap()
        )
        .await,
        (404, "integration_not_found".into())
    );
    // A launch from another Epic server.
    let foreign = with_param(url, "iss", "https://evil.example/api/FHIR/R4");
    assert_eq!(
        error_code(b.get(&foreign).send().await.unwrap()).await,
        (400, "oauth_error".into())
    );

    // State mismatch: the redirect back arrives in a browser that did not start the launch.
    let r = b.get(url).send().await.unwrap();
    assert!(r.status().is_redirection());
    let at_epic = b.get(location(&r)).send().await.unwrap();
    let back = location(&at_epic);
    assert_eq!(
        error_code(b.get(&back).send().await.unwrap()).await,
        (400, "oauth_error".into())
    );
    assert_eq!(
        error_code(
            b.get(&back)
                .header(COOKIE, "sb_th_state=forged")
                .send()
                .await
                .unwrap()
        )
        .await,
        (400, "oauth_error".into())
    );
    // The launch was used: opening it again is refused.
    assert_eq!(
        error_code(b.get(url).send().await.unwrap()).await,
        (409, "link_used".into())
    );

    // Missing code, and Epic refusing: the state is consumed, nothing is created.
    for (name, drop_code) in [("missing code", true), ("epic error", false)] {
        let l = epic_link(
            &f,
            "provider",
            &appt,
            json!({"user": name.replace(' ', "")}),
        )
        .await;
        let r = b.get(l["url"].as_str().unwrap()).send().await.unwrap();
        let cookie = set_cookie(&r, "sb_th_state=").unwrap();
        let state = url::Url::parse(&location(&r))
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let mut cb = url::Url::parse(f.profile["provider_redirect_uri"].as_str().unwrap()).unwrap();
        cb.query_pairs_mut().append_pair("state", &state);
        if !drop_code {
            cb.query_pairs_mut().append_pair("error", "access_denied");
        }
        let (status, code) = error_code(
            b.get(cb.as_str())
                .header(COOKIE, &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "oauth_error"), "{name}");
    }
    assert_eq!(
        conferences(s, &s.admin_token, "").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    f.sim.shutdown().await;
});

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn python(script: &str, args: &[&str]) -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named"), "peer failed: {err}");
        assert!(
            std::env::var_os("CI").is_none(),
            "the Python peers are required on CI"
        );
        eprintln!("SKIPPED (peer): pip install -r tests/peers/requirements.txt");
        return None;
    }
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

server_test!(
    links_encrypted_by_python_cryptography_launch_in_every_mode,
    |s| {
        for (mode, key_arg, profile_extra) in [
            ("zero", KEY.to_owned(), json!({})),
            (
                "prefixed",
                KEY.to_owned(),
                json!({"iv_mode": "prefixed", "name": "Prefixed Org"}),
            ),
            (
                "zero",
                "password:legacy epic password".to_owned(),
                json!({"encryption": "aes128", "key": "legacy epic password", "name": "Legacy Org"}),
            ),
        ] {
            let f = fixture(s, 3600, profile_extra).await;
            let ts = (switchboard_app::now_ms() / 1000).to_string();
            let plaintext = format!(
                "fname=Beverley&mname=P&lname=Spinder&apptid=6ea6d1427f684721abd21c1634386f7b6&dept=Radiology&csn=123&ts={ts}"
            );
            let Some(blob) = python("launch_crypto.py", &["encrypt", &key_arg, mode, &plaintext])
            else {
                f.sim.shutdown().await;
                return;
            };
            let launch = format!("py-{mode}-{}", f.profile["name"].as_str().unwrap().len());
            reqwest::Client::new()
                .post(format!("{}/_sim/launches", f.sim.base_url()))
                .json(&json!({"launch": launch, "context": {}}))
                .send()
                .await
                .unwrap();
            let mut url =
                url::Url::parse(f.profile["provider_launch_url"].as_str().unwrap()).unwrap();
            url.query_pairs_mut()
                .append_pair("iss", &f.sim.fhir_base("interconnect-tst"))
                .append_pair("launch", &launch)
                .append_pair("data", &blob);
            let (room, cookie) = join(s, url.as_str()).await.map_err(|r| r.status()).unwrap();
            let st = room_state(&room, &cookie).await;
            assert_eq!(
            st["conference_name"],
            format!("Appointment for Beverley P Spinder {}:6ea6d1427f684721abd21c1634386f7b6 in Radiology", f.profile["name"].as_str().unwrap()).as_str(),
            "{mode} {key_arg}"
        );
            leave(&room, &cookie).await;
            f.sim.shutdown().await;
        }
    }
);

server_test!(jitsi_room_tokens_verify_with_pyjwt, |s| {
    let f = fixture(
        s,
        3600,
        json!({"video": {"engine": "jitsi", "jitsi_url": "https://meet.example.org", "jitsi_app_id": "switchboard", "jitsi_app_secret": JITSI_SECRET}}),
    )
    .await;
    assert_eq!(f.profile["video"]["jitsi_app_secret_set"], true);
    assert!(!f.profile.to_string().contains(JITSI_SECRET));
    let appt = appointments(&f).await[4].clone();
    let patient = epic_link(&f, "patient", &appt, json!({})).await;
    let (proom, pcookie) = join(s, patient["url"].as_str().unwrap()).await.unwrap();
    assert!(
        room_state(&proom, &pcookie).await["video_url"].is_null(),
        "no room token in the lobby"
    );
    let provider = epic_link(&f, "provider", &appt, json!({})).await;
    let (room, cookie) = join(s, provider["url"].as_str().unwrap()).await.unwrap();
    for (r, c, moderator) in [(&room, &cookie, true), (&proom, &pcookie, false)] {
        let v = room_state(r, c).await["video_url"]
            .as_str()
            .unwrap()
            .to_owned();
        let (base, jwt) = v.split_once("?jwt=").unwrap();
        assert!(base.starts_with("https://meet.example.org/sb"), "{base}");
        let Some(out) = python("verify_hs256.py", &[JITSI_SECRET, "jitsi", jwt]) else {
            f.sim.shutdown().await;
            return;
        };
        let claims: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(claims["iss"], "switchboard");
        assert_eq!(claims["sub"], "meet.example.org");
        assert_eq!(claims["room"], base.rsplit('/').next().unwrap());
        assert_eq!(claims["moderator"], moderator);
        assert_eq!(claims["context"]["user"]["moderator"], moderator);
    }
    let wrong = std::process::Command::new("python3")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/peers/verify_hs256.py"),
        )
        .args([
            "wrong-secret-wrong-secret",
            "jitsi",
            room_state(&room, &cookie).await["video_url"]
                .as_str()
                .unwrap()
                .split("?jwt=")
                .nth(1)
                .unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong secret must not verify");
    f.sim.shutdown().await;
});

server_test!(profiles_are_validated_and_removal_keeps_history, |s| {
    let f = fixture(s, 3600, json!({})).await;
    let env_id = f.profile["environment_id"].as_str().unwrap().to_owned();
    let cases = [
        (
            json!({"name": "X", "environment_id": env_id, "key": base64_encode(&[1u8; 16]), "provider_app": {"non_production": {"client_id": "a", "client_secret": "b"}}, "patient_app": {"non_production": {"client_id": "a", "client_secret": "b"}}}),
            "key",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "provider_app": {"non_production": {"client_id": "a", "client_secret": "b"}}, "patient_app": {"non_production": {"client_id": "a", "client_secret": "b"}}}),
            "key",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "patient_app": {"non_production": {"client_id": "a", "client_secret": "b"}}}),
            "provider_app.non_production",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "provider_app": {"non_production": {"client_id": "a"}}, "patient_app": {"non_production": {"client_id": "a", "client_secret": "b"}}}),
            "provider_app.non_production",
        ),
        (
            json!({"name": "A:B", "environment_id": env_id, "key": KEY}),
            "name",
        ),
        (
            json!({"name": "Healthcare Org", "environment_id": env_id, "key": KEY}),
            "name",
        ),
        (
            json!({"name": "X", "environment_id": "nope", "key": KEY}),
            "environment_id",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "link_validity_secs": 5}),
            "link_validity_secs",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "iv_mode": "prefixed", "encryption": "aes128"}),
            "iv_mode",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "field_map": {"csn": "fname"}}),
            "field_map",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "video": {"engine": "jitsi", "jitsi_url": "ftp://x"}}),
            "video.jitsi_url",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "video": {"engine": "zoom"}}),
            "video.engine",
        ),
        (
            json!({"name": "X", "environment_id": env_id, "key": KEY, "launch_param": "iss"}),
            "launch_param",
        ),
    ];
    for (body, field) in cases {
        let r = s
            .post(&s.admin_token, "/telehealth/profiles", body.clone())
            .await;
        assert_eq!(r.status(), 422, "{body}");
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
    let listed: Vec<Value> = s
        .get(&s.admin_token, "/telehealth/profiles")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "nothing stored by refused requests");
    assert!(
        !serde_json::to_string(&listed).unwrap().contains(KEY)
            && !serde_json::to_string(&listed)
                .unwrap()
                .contains("provider-secret")
    );
    assert_eq!(
        listed[0]["provider_app"]["non_production"]["secret_set"],
        true
    );
    assert!(listed[0]["provider_app"]["production"].is_null());
    assert_eq!(listed[0]["environment_kind"], "non_production");
    let operator = s.token_for_role("operator").await;
    assert_eq!(
        s.post(&operator, "/telehealth/profiles", json!({}))
            .await
            .status(),
        403
    );

    // An update that keeps the secrets still launches.
    let id = f.profile["id"].as_str().unwrap().to_owned();
    let r = s
        .http
        .put(s.api(&format!("/telehealth/profiles/{id}")))
        .bearer_auth(&s.admin_token)
        .json(
            &json!({"name": "Healthcare Org", "environment_id": env_id, "link_validity_secs": 600}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let appt = appointments(&f).await[5].clone();
    let link = epic_link(&f, "provider", &appt, json!({})).await;
    join(s, link["url"].as_str().unwrap()).await.unwrap();

    // Removal is refused while a conference is active, forced removal ends it and tells Epic.
    let del = |force: bool| {
        let url = s.api(&format!("/telehealth/profiles/{id}?force={force}"));
        let http = s.http.clone();
        let token = s.admin_token.clone();
        async move {
            http.delete(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(del(false).await, 409);
    assert_eq!(del(true).await, 204);
    let old = epic_link(&f, "provider", &appt, json!({})).await;
    assert_eq!(
        error_code(
            no_redirects()
                .get(old["url"].as_str().unwrap())
                .send()
                .await
                .unwrap()
        )
        .await,
        (404, "integration_not_found".into())
    );
    let history = conferences(s, &s.admin_token, "").await;
    assert_eq!(history["items"][0]["state"], "ended");
    assert_eq!(
        history["items"][0]["ended_reason"],
        "the integration was removed"
    );
    eventually("Epic told ended", || async {
        epic_statuses(&f)
            .await
            .iter()
            .any(|x| x["status"] == "ended")
    })
    .await;
    let audit: Value = s
        .get(&s.admin_token, "/audit?action=telehealth.profile.removed")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        audit.to_string().contains("telehealth.profile.removed"),
        "{audit}"
    );
    f.sim.shutdown().await;
});

server_test!(epic_metadata_unreachable_is_named, |s| {
    let f = fixture(s, 3600, json!({})).await;
    let appt = appointments(&f).await[0].clone();
    let link = epic_link(&f, "provider", &appt, json!({})).await;
    let http = reqwest::Client::new();
    http.post(format!("{}/_sim/faults", f.sim.base_url()))
        .json(&json!({"path_contains": "smart-configuration", "effect": {"kind": "status", "status": 500}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(
            no_redirects()
                .get(link["url"].as_str().unwrap())
                .send()
                .await
                .unwrap()
        )
        .await,
        (502, "metadata_unreachable".into())
    );
    // The link was not spent by the failure: once Epic is back it works.
    http.delete(format!("{}/_sim/faults", f.sim.base_url()))
        .send()
        .await
        .unwrap();
    join(s, link["url"].as_str().unwrap())
        .await
        .map_err(|r| r.status())
        .unwrap();
    f.sim.shutdown().await;
});
