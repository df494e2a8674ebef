//! Shared devices against `switchboard epic-sim` and `switchboard agent-sim`: check-out by badge
//! with a PIN, the clinician "signs in" to Rover and Haiku in the simulator, check-in force-quits
//! the apps, clears the PIN and signs the user out of Epic (Install IDs disassociated, presence
//! offline); AppName off; Canto; Enhanced Rover logout with its mismatch warning; Epic faults
//! (5xx, timeouts, `Install ID not found`); races; bad input. Every server test runs on SQLite and
//! PostgreSQL.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::time::Duration;
use switchboard_agent_sim::{AgentSimConfig, RunningAgents};

struct Fixture {
    sim: switchboard_epic_sim::RunningSim,
    client_id: String,
    env_id: String,
    group_id: String,
    enrol_token: String,
    location: String,
}

async fn start_sim() -> switchboard_epic_sim::RunningSim {
    let cfg = switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        instances: vec![switchboard_epic_sim::InstanceConfig {
            name: "interconnect-tst".into(),
            production: false,
        }],
        ..Default::default()
    };
    switchboard_epic_sim::start(cfg).await.unwrap()
}

/// A simulator environment (registered with the simulator), a location, a device group with
/// `workflow` for iOS and an enrolment token.
async fn fixture(s: &TestServer, workflow: impl Fn(&str) -> Value) -> Fixture {
    let sim = start_sim().await;
    let client_id = format!("sb-{}", &common::uuid_like()[..8]);
    let r = s
        .post(
            &s.admin_token,
            "/epic-environments",
            json!({"name": format!("Sim {}", &common::uuid_like()[..8]), "kind": "non_production", "interconnect_url": sim.base_url(),
                   "instance": "interconnect-tst", "client_id": client_id, "apps": ["Rover", "Haiku", "Canto"],
                   "publish_delay_secs": 0, "timeout_ms": 1500}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let env: Value = r.json().await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/clients", sim.base_url()))
        .json(
            &json!({"client_id": client_id, "jwks_url": env["key_set"]["jwk_url"], "apis": ["*"]}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let env_id = env["id"].as_str().unwrap().to_owned();
    let location = format!("4west-{}", &common::uuid_like()[..6]);
    let r = s
        .post(
            &s.admin_token,
            "/devices/locations",
            json!({"id": location, "name": "4 West"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = s
        .post(
            &s.admin_token,
            "/devices/groups",
            json!({"name": format!("Nursing {}", &common::uuid_like()[..6]), "lending_minutes": 780, "workflows": {"ios": workflow(&env_id)}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let group: Value = r.json().await.unwrap();
    let r = s
        .post(
            &s.admin_token,
            "/devices/enrolment-tokens",
            json!({"name": "test", "group_id": group["id"], "location_id": location}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    Fixture {
        sim,
        client_id,
        env_id,
        group_id: group["id"].as_str().unwrap().to_owned(),
        enrol_token: t["secret"].as_str().unwrap().to_owned(),
        location,
    }
}

fn rover_haiku_workflow(env: &str) -> Value {
    json!([
        {"action": "force_quit", "app_id": "com.epic.rover"},
        {"action": "force_quit", "app_id": "com.epic.haiku"},
        {"action": "epic_logout", "environment_id": env, "app": "Rover"},
        {"action": "epic_logout", "environment_id": env, "app": "Haiku"},
    ])
}

async fn agents(
    s: &TestServer,
    f: &Fixture,
    tweak: impl FnOnce(&mut AgentSimConfig),
) -> RunningAgents {
    let mut cfg = AgentSimConfig {
        server: s.url.clone(),
        enrolment_token: f.enrol_token.clone(),
        devices: 1,
        serial_prefix: format!("T{}", &common::uuid_like()[..5].to_ascii_uppercase()),
        epic_apps: vec!["Rover".into(), "Haiku".into()],
        delay: Duration::from_millis(5),
        heartbeat: Duration::from_secs(2),
        poll_wait_secs: 5,
        epic_sim: Some(f.sim.base_url()),
        ..AgentSimConfig::default()
    };
    tweak(&mut cfg);
    switchboard_agent_sim::start(cfg).await.unwrap()
}

/// `n` simulated phones that are not signed in to any Epic simulator, and their serials.
async fn phones(s: &TestServer, f: &Fixture, n: usize) -> (RunningAgents, Vec<String>) {
    let a = agents(s, f, |c| {
        c.devices = n;
        c.epic_sim = None;
    })
    .await;
    let serials = serials_of(&a);
    (a, serials)
}

/// The serials of the simulated devices, in order.
fn serials_of(a: &RunningAgents) -> Vec<String> {
    a.devices
        .iter()
        .map(|d| d.lock().unwrap().serial.clone())
        .collect()
}

async fn add_user(s: &TestServer, username: &str, badge: &str) -> Value {
    let r = s
        .post(
            &s.admin_token,
            "/devices/users",
            json!({"username": username, "display_name": format!("Nurse {username}"), "badge": badge, "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// A device's detail (by serial) as the admin API shows it.
async fn device_json(s: &TestServer, serial: &str) -> Value {
    s.get(&s.admin_token, &format!("/devices/{serial}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Checks a device in through the admin API; answers the receipt.
async fn checkin_json(s: &TestServer, serial: &str) -> Value {
    s.post(
        &s.admin_token,
        &format!("/devices/{serial}/checkin"),
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap()
}

async fn sim_json(f: &Fixture, path: &str) -> Value {
    reqwest::get(format!("{}{path}", f.sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `what` until `done` holds, for up to `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, mut probe: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, Value)>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, v) = probe().await;
        if ok {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn receipt_done(s: &TestServer, id: &str, secs: u64) -> Value {
    eventually(secs, "the check-in completing", || async {
        let r: Value = s
            .get(&s.admin_token, &format!("/devices/checkins/{id}"))
            .await
            .json()
            .await
            .unwrap();
        (r["status"] != "in_progress", r)
    })
    .await
}

fn step<'a>(receipt: &'a Value, action: &str, nth: usize) -> &'a Value {
    receipt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == action)
        .nth(nth)
        .unwrap_or_else(|| panic!("no step {action} #{nth} in {receipt:#}"))
}

server_test!(
    a_shift_from_check_out_with_a_pin_to_check_in_signs_the_user_out_everywhere,
    |s| {
        let f = fixture(s, rover_haiku_workflow).await;
        let a = agents(s, &f, |_| {}).await;
        let serial = a.devices[0].lock().unwrap().serial.clone();
        add_user(s, "nurse1", "10001").await;

        // Kiosk-style check-out by badge at the location, with a PIN.
        let r = s
            .post(
                &s.admin_token,
                "/devices/checkout",
                json!({"badge": " 10001\n", "location": f.location, "pin": "4321"}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let co: Value = r.json().await.unwrap();
        assert_eq!(co["device"]["serial"], serial.as_str());
        assert_eq!(co["message"], "Ready for Nurse nurse1");
        assert_eq!(co["pin_set"], true);

        // The agent shows "Ready for", sets the PIN and the user signs in to Rover and Haiku.
        eventually(10, "the PIN being set on the device", || async {
            let d = a.device(&serial).unwrap();
            (d.pin_set && d.screen == "Ready for Nurse nurse1", json!(d))
        })
        .await;
        let logins = eventually(10, "the user signing in to Epic apps", || async {
            let m = sim_json(&f, "/_sim/mobile").await;
            let ids: Vec<&str> = m
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["install_id"].as_str().unwrap())
                .collect();
            (
                ids.contains(&format!("{serial}Rover").as_str())
                    && ids.contains(&format!("{serial}Haiku").as_str()),
                m.clone(),
            )
        })
        .await;
        assert!(
            logins
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["user"] == "nurse1")
        );
        let d: Value = device_json(s, &serial).await;
        assert_eq!(d["status"], "checked_out");
        assert_eq!(d["holder"]["username"], "nurse1");
        assert_eq!(d["pin_set"], true);
        assert_eq!(d["install_ids"]["Rover"], format!("{serial}Rover"));

        // Check-in: force quit both apps, clear the PIN, Epic logout of both.
        let r = s
            .post(
                &s.admin_token,
                &format!("/devices/{serial}/checkin"),
                json!({}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let receipt: Value = r.json().await.unwrap();
        let actions: Vec<&str> = receipt["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "force_quit",
                "force_quit",
                "epic_logout",
                "epic_logout",
                "clear_pin"
            ]
        );
        let done = receipt_done(s, receipt["id"].as_str().unwrap(), 15).await;
        assert_eq!(done["status"], "complete", "{done:#}");
        assert!(
            done["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["status"] == "done"),
            "{done:#}"
        );
        assert_eq!(
            step(&done, "epic_logout", 0)["install_id"],
            format!("{serial}Rover")
        );
        assert!(
            step(&done, "epic_logout", 1)["detail"]
                .as_str()
                .unwrap()
                .contains("signed the user out of Haiku")
        );
        let dev = a.device(&serial).unwrap();
        assert!(!dev.pin_set && dev.running.is_empty(), "{dev:?}");
        let m = sim_json(&f, "/_sim/mobile").await;
        assert!(
            m.as_array()
                .unwrap()
                .iter()
                .all(|l| !l["install_id"].as_str().unwrap().starts_with(&serial)),
            "{m:#}"
        );
        let presence = sim_json(&f, "/_sim/presence").await;
        let offline = presence
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["presence"] == "offline" && p["user"] == "nurse1")
            .count();
        assert_eq!(offline, 2, "{presence:#}");
        let d: Value = device_json(s, &serial).await;
        assert_eq!(d["status"], "available");
        assert_eq!(d["pin_set"], false);
        assert!(d["holder"].is_null());
        assert!(
            d["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "checkin")
        );

        // Checking in an available device is a no-op with the existing receipt.
        let r = s
            .post(
                &s.admin_token,
                &format!("/devices/{serial}/checkin"),
                json!({}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let again: Value = r.json().await.unwrap();
        assert_eq!(again["id"], done["id"]);
        assert_eq!(again["already_checked_in"], true);
        // The logout jobs finished with their steps: only the standing clean-ups are queued.
        let stats: Value = s
            .get(&s.admin_token, "/jobs/stats")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(stats, json!({"queued": 2, "running": 0, "dead": 0}));
        a.stop().await;
        f.sim.shutdown().await;
    }
);

server_test!(
    app_name_off_canto_and_enhanced_rover_logout_use_the_right_install_ids,
    |s| {
        let f = fixture(s, |env| {
            json!([
                {"action": "force_quit", "app_id": "com.epic.rover"},
                {"action": "enhanced_rover_logout", "environment_id": env},
                {"action": "epic_logout", "environment_id": env, "app": "Canto"},
            ])
        })
        .await;
        let a = agents(s, &f, |c| {
            c.epic_apps = vec!["Rover".into(), "Canto".into()];
            c.append_app_name = false;
            c.id_from_uuid = true;
            c.enhanced_rover = true;
        })
        .await;
        let dev = a.devices[0].lock().unwrap().clone();
        add_user(s, "nurse2", "20002").await;
        // AppName off: both apps share one Install ID (the UUID), as Epic would see it.
        let r = s
            .post(
                &s.admin_token,
                "/devices/checkout",
                json!({"user": "nurse2", "device": dev.serial}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        eventually(10, "sign-in", || async {
            let m = sim_json(&f, "/_sim/mobile").await;
            (
                m.as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["install_id"] == dev.uuid.as_str()),
                m,
            )
        })
        .await;
        let r: Value = checkin_json(s, &dev.serial).await;
        let done = receipt_done(s, r["id"].as_str().unwrap(), 15).await;
        let er = step(&done, "enhanced_rover_logout", 0);
        assert_eq!(er["install_id"], dev.uuid.as_str());
        assert_eq!(er["status"], "done", "{done:#}");
        // Canto has the same Install ID (AppName off): Epic cannot tell the apps apart, so the
        // receipt says the earlier step covers it instead of failing with "not found".
        let canto = step(&done, "epic_logout", 0);
        assert_eq!(canto["install_id"], dev.uuid.as_str());
        assert_eq!(canto["status"], "skipped");
        assert!(
            canto["detail"]
                .as_str()
                .unwrap()
                .contains("step 2 already signs out"),
            "{canto:#}"
        );
        assert_eq!(done["status"], "complete");
        assert!(done["warnings"].as_array().unwrap().is_empty());

        // A device whose locker reports another value than Rover: the receipt and the device say so.
        let serial = format!("MM{}", &common::uuid_like()[..8].to_ascii_uppercase());
        let r = s
            .http
            .post(format!("{}/agent/v1/enrol", s.url))
            .bearer_auth(&f.enrol_token)
            .json(&json!({"serial": serial, "platform": "ios", "appconfig": {
            "Rover": {"EpicMobileDeviceID": serial, "EpicMobileDeviceIDAppName": "true"},
            "locker": {"epicRoverEpicMobileDeviceID": "SOME-UUID-1"}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let d: Value = device_json(s, &serial).await;
        assert!(
            d["warnings"][0]
                .as_str()
                .unwrap()
                .contains("differs from Rover"),
            "{d:#}"
        );
        let r = s
            .post(
                &s.admin_token,
                "/devices/checkout",
                json!({"user": "nurse2", "device": serial}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let r: Value = checkin_json(s, &serial).await;
        assert!(
            r["warnings"][0]
                .as_str()
                .unwrap()
                .contains("both must use the same MDM variable"),
            "{r:#}"
        );
        let er = step(&r, "enhanced_rover_logout", 0);
        assert_eq!(er["install_id"], "SOME-UUID-1Rover");
        a.stop().await;
        f.sim.shutdown().await;
    }
);

async fn add_fault(f: &Fixture, rule: Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_sim/faults", f.sim.base_url()))
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

server_test!(
    epic_outages_never_fail_a_check_in_and_every_logout_is_delivered_once,
    |s| {
        let f = fixture(s, rover_haiku_workflow).await;
        let a = agents(s, &f, |c| c.devices = 3).await;
        for i in 0..3 {
            add_user(s, &format!("n{i}"), &format!("3000{i}")).await;
        }
        let serials = serials_of(&a);
        for (i, serial) in serials.iter().enumerate() {
            let r = s
                .post(
                    &s.admin_token,
                    "/devices/checkout",
                    json!({"badge": format!("3000{i}"), "device": serial}),
                )
                .await;
            assert_eq!(r.status(), 201);
        }
        eventually(10, "sign-ins", || async {
            let m = sim_json(&f, "/_sim/mobile").await;
            (m.as_array().unwrap().len() >= 6, m)
        })
        .await;
        // Device 0: Epic answers 503 three times. Device 1: the first call times out (the answer is
        // lost). Device 2: the user never signed in to Haiku (Install ID not found).
        add_fault(&f, json!({"path_contains": "DisassociateMobileDevice", "effect": {"kind": "status", "status": 503}, "max_faults": 3})).await;
        let r: Value = checkin_json(s, &serials[0]).await;
        // The device is back as soon as its own steps are done, whatever Epic does.
        eventually(10, "device 0 available", || async {
            let d: Value = device_json(s, &serials[0]).await;
            (d["status"] == "available", d)
        })
        .await;
        let done0 = receipt_done(s, r["id"].as_str().unwrap(), 20).await;
        assert_eq!(done0["status"], "complete", "{done0:#}");
        let attempts: i64 = done0["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["side"] == "server")
            .map(|s| s["attempts"].as_i64().unwrap())
            .sum();
        assert_eq!(attempts, 5, "two logouts, three 503s: {done0:#}");

        reqwest::Client::new()
            .delete(format!("{}/_sim/faults", f.sim.base_url()))
            .send()
            .await
            .unwrap();
        add_fault(&f, json!({"path_contains": "DisassociateMobileDevice", "effect": {"kind": "timeout", "hold_ms": 3000}, "max_faults": 1})).await;
        let r: Value = checkin_json(s, &serials[1]).await;
        let done1 = receipt_done(s, r["id"].as_str().unwrap(), 30).await;
        assert_eq!(done1["status"], "complete", "{done1:#}");
        let repeats: i64 = done1["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["repeats"].as_i64().unwrap())
            .sum();
        assert_eq!(
            repeats, 1,
            "exactly one call repeated after the lost answer: {done1:#}"
        );

        reqwest::Client::new()
            .delete(format!("{}/_sim/faults", f.sim.base_url()))
            .send()
            .await
            .unwrap();
        // Sign device 2's user out of Haiku behind Switchboard's back.
        let m = sim_json(&f, "/_sim/mobile").await;
        assert!(
            m.as_array()
                .unwrap()
                .iter()
                .any(|l| l["install_id"] == format!("{}Haiku", serials[2]))
        );
        let r = reqwest::Client::new()
        .post(format!("{}/interconnect-tst-oauth/api/epic/2023/Security/MobileDevice/DisassociateMobileDevice", f.sim.base_url()))
        .bearer_auth(mint_token(&f).await)
        .json(&json!({"InstallID": format!("{}Haiku", serials[2])}))
        .send()
        .await
        .unwrap();
        assert!(r.status().is_success());
        let r: Value = checkin_json(s, &serials[2]).await;
        let done2 = receipt_done(s, r["id"].as_str().unwrap(), 15).await;
        assert_eq!(done2["status"], "complete_with_problems");
        let haiku = step(&done2, "epic_logout", 1);
        assert_eq!(haiku["status"], "failed");
        assert_eq!(haiku["attempts"], 1, "Install ID not found is not retried");
        assert!(haiku["detail"].as_str().unwrap().contains(
            "no user has signed in to Haiku on this device since its AppConfig was applied"
        ));
        assert_eq!(step(&done2, "epic_logout", 0)["status"], "done");
        let d: Value = device_json(s, &serials[2]).await;
        assert_eq!(
            d["status"], "available",
            "an Epic failure never keeps the device"
        );

        // Every logout reached Epic exactly once as far as the simulator is concerned.
        let m = sim_json(&f, "/_sim/mobile").await;
        assert!(m.as_array().unwrap().is_empty(), "{m:#}");
        a.stop().await;
        f.sim.shutdown().await;
    }
);

async fn mint_token(f: &Fixture) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/_sim/tokens", f.sim.base_url()))
        .json(&json!({"client_id": f.client_id, "instance": "interconnect-tst"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_owned()
}

server_test!(racing_check_outs_limits_and_revoked_credentials, |s| {
    let f = fixture(s, rover_haiku_workflow).await;
    let a = agents(s, &f, |c| c.devices = 2).await;
    let serials = serials_of(&a);
    add_user(s, "ra", "40001").await;
    add_user(s, "rb", "40002").await;
    // Two clinicians race for one device: exactly one wins.
    let (x, y) = tokio::join!(
        s.post(
            &s.admin_token,
            "/devices/checkout",
            json!({"badge": "40001", "device": serials[0]})
        ),
        s.post(
            &s.admin_token,
            "/devices/checkout",
            json!({"badge": "40002", "device": serials[0]})
        ),
    );
    let mut codes = [x.status().as_u16(), y.status().as_u16()];
    codes.sort_unstable();
    assert_eq!(codes, [201, 409]);
    // The loser is at no limit: they get the other device; the winner is at their limit.
    let winner = if x.status() == 201 { "40001" } else { "40002" };
    let loser = if winner == "40001" { "40002" } else { "40001" };
    let r = s
        .post(
            &s.admin_token,
            "/devices/checkout",
            json!({"badge": winner, "location": f.location}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert!(p["detail"].as_str().unwrap().contains("your limit"), "{p}");
    // Idempotency-Key: the retried request gets the first answer, not a second device.
    let send = || {
        s.http
            .post(s.api("/devices/checkout"))
            .bearer_auth(&s.admin_token)
            .header("Idempotency-Key", "retry-1")
            .json(&json!({"badge": loser, "location": f.location}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let r = s
        .post(
            &s.admin_token,
            "/devices/checkout",
            json!({"badge": "99999", "location": f.location}),
        )
        .await;
    assert_eq!(r.status(), 404);
    // A revoked credential is refused.
    let r = s
        .post(
            &s.admin_token,
            &format!("/devices/{}/revoke", serials[1]),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 204);
    let cred = a.devices[1].lock().unwrap().credential.clone();
    let r = s
        .http
        .post(format!("{}/agent/v1/heartbeat", s.url))
        .bearer_auth(&cred)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Its agent was polling with it a moment ago: the poll is refused at once too.
    let r = s
        .http
        .get(format!("{}/agent/v1/commands?wait=0", s.url))
        .bearer_auth(&cred)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    a.stop().await;
    f.sim.shutdown().await;
});

server_test!(bad_agent_input_is_refused_and_changes_nothing, |s| {
    let f = fixture(s, rover_haiku_workflow).await;
    let enrol = |token: String, body: Value| {
        let http = s.http.clone();
        let url = format!("{}/agent/v1/enrol", s.url);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = enrol(
        "sbe_wrong".into(),
        json!({"serial": "X1", "platform": "ios"}),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = enrol(f.enrol_token.clone(), json!({"serial": "bad serial!", "platform": "windows",
        "appconfig": {"rover": {"EpicMobileDeviceID": "X"}, "Haiku": {"EpicMobileDeviceIDAppName": "maybe"}}})).await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "serial",
            "platform",
            "appconfig.Haiku.EpicMobileDeviceIDAppName",
            "appconfig.rover"
        ]
    );
    let many: Vec<Value> = (0..301)
        .map(|i| json!({"id": format!("com.example.app{i}")}))
        .collect();
    let r = enrol(
        f.enrol_token.clone(),
        json!({"serial": "BIG1", "platform": "ios", "apps": many}),
    )
    .await;
    assert_eq!(r.status(), 422);
    let devices: Value = s
        .get(&s.admin_token, "/devices")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        devices.as_array().unwrap().is_empty(),
        "nothing enrolled: {devices:#}"
    );

    // Two devices; one reports a result for the other's command.
    let (a, serials) = phones(s, &f, 2).await;
    let r = s
        .post(
            &s.admin_token,
            &format!("/devices/{}/commands", serials[0]),
            json!({"kind": "lock"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let cmd: Value = r.json().await.unwrap();
    let other = a.devices[1].lock().unwrap().credential.clone();
    let r = s
        .http
        .post(format!(
            "{}/agent/v1/commands/{}/result",
            s.url,
            cmd["id"].as_str().unwrap()
        ))
        .bearer_auth(&other)
        .json(&json!({"status": "failed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let done = eventually(10, "the lock being confirmed by its own device", || async {
        let d: Value = device_json(s, &serials[0]).await;
        let c = d["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == cmd["id"])
            .cloned()
            .unwrap();
        (c["state"] == "succeeded", c)
    })
    .await;
    assert_eq!(done["result"], "locked");
    let r = s
        .post(&s.admin_token, "/devices/UNKNOWN-SERIAL/checkin", json!({}))
        .await;
    assert_eq!(r.status(), 404);
    let r = s
        .post(
            &s.admin_token,
            "/devices/checkout",
            json!({"user": "nobody", "location": f.location, "pin": "12"}),
        )
        .await;
    assert_eq!(r.status(), 422, "a bad PIN is refused before anything else");
    let r = s
        .post(&s.admin_token, "/devices/groups", json!({"name": "Bad", "lending_minutes": 5, "workflows": {"ios": [{"action": "clear_data", "app_id": "com.epic.rover"}, {"action": "epic_logout", "environment_id": f.env_id, "app": "rover"}]}}))
        .await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "lending_minutes",
            "workflows.ios[0]",
            "workflows.ios[1].app"
        ]
    );
    let _ = &f.group_id;
    a.stop().await;
    f.sim.shutdown().await;
});

server_test!(
    the_directory_imports_csv_all_or_nothing_and_badges_stay_hashed,
    |s| {
        let csv = "username,display_name,badge,device_limit\nalice,Alice A,5001,2\nbob,Bob B,,\n";
        let send = |body: &'static str| {
            s.http
                .post(s.api("/devices/users/import"))
                .bearer_auth(&s.admin_token)
                .header("content-type", "text/csv")
                .body(body)
                .send()
        };
        let r = send(csv).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let bad = "username,display_name,badge,device_limit\ncarol,Carol,5001,\nDave!,Dave,,x\n";
        let r = send(bad).await.unwrap();
        assert_eq!(r.status(), 422);
        let p: Value = r.json().await.unwrap();
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["line 2: badge", "line 3: device_limit"]);
        let users: Value = s
            .get(&s.admin_token, "/devices/users")
            .await
            .json()
            .await
            .unwrap();
        let names: Vec<&str> = users
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["alice", "bob"], "carol was not imported");
        assert!(
            !users.to_string().contains("5001"),
            "badges are never returned"
        );
        assert_eq!(users[0]["has_badge"], true);
        assert_eq!(users[0]["device_limit"], 2);
    }
);

async fn run_sql(s: &TestServer, sql: &str) {
    use sqlx::Connection;
    if s.db_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&s.db_url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&s.db_url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

/// A badge directory elsewhere: `POST {"badge"}` → the person, or 404; counts its calls.
async fn start_lookup() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::{Json, Router, routing::post};
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = std::sync::Arc::clone(&calls);
    let app = Router::new().route(
        "/badge",
        post(move |Json(b): Json<Value>| {
            let calls = std::sync::Arc::clone(&c2);
            async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if b["badge"] == "77007" {
                    Ok(Json(
                        json!({"username": "dr.remote", "display_name": "Dr Remote"}),
                    ))
                } else {
                    Err(axum::http::StatusCode::NOT_FOUND)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/badge"), calls)
}

server_test!(
    badges_from_the_lookup_hook_device_side_check_out_overdue_and_an_epic_outage,
    |s| {
        let f = fixture(s, rover_haiku_workflow).await;
        let (lookup_url, calls) = start_lookup().await;
        s.running.app.set_identity_lookup(Some(std::sync::Arc::new(
            switchboard_app::devices::HttpIdentityLookup::new(lookup_url, reqwest::Client::new()),
        )));
        let a = agents(s, &f, |c| c.devices = 3).await;
        let serials = serials_of(&a);
        // A badge the directory does not know, resolved by the hook on the device itself.
        let co = a.checkout_by_badge(0, "77007", true).await.unwrap();
        assert_eq!(co["user"]["username"], "dr.remote");
        assert_eq!(co["pin_set"], true, "the agent set the PIN itself");
        let u: Value = s
            .get(&s.admin_token, "/devices/users/dr.remote")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(u["source"], "lookup");
        assert_eq!(u["has_badge"], true);
        assert!(
            a.checkout_by_badge(1, "55555", false)
                .await
                .unwrap_err()
                .contains("404")
        );
        assert!(a.checkout_by_badge(1, "55555", false).await.is_err());
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the known badge is in the directory now; the unknown one is remembered"
        );
        // Username and password on the device; a wrong password changes nothing.
        add_user(s, "nurse.pw", "66006").await;
        let cred = a.devices[1].lock().unwrap().credential.clone();
        let try_login = |pw: &'static str| {
            s.http
                .post(format!("{}/agent/v1/checkout", s.url))
                .bearer_auth(&cred)
                .json(&json!({"username": "nurse.pw", "password": pw}))
                .send()
        };
        assert_eq!(try_login("wrong password!").await.unwrap().status(), 401);
        let d: Value = device_json(s, &serials[1]).await;
        assert_eq!(d["status"], "available");
        assert_eq!(
            try_login("correct horse battery").await.unwrap().status(),
            201
        );

        // Overdue: the lending period ran out.
        run_sql(s, &format!("UPDATE checkouts SET due_at = 1000 WHERE device_id = (SELECT id FROM devices WHERE serial = '{}')", serials[1])).await;
        let overdue: Value = s
            .get(&s.admin_token, "/devices?status=overdue")
            .await
            .json()
            .await
            .unwrap();
        let list: Vec<&str> = overdue
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["serial"].as_str().unwrap())
            .collect();
        assert_eq!(list, [serials[1].as_str()]);
        assert_eq!(overdue[0]["overdue"], true);
        let dash: Value = s
            .get(&s.admin_token, "/devices/dashboard")
            .await
            .json()
            .await
            .unwrap();
        let ward = dash
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["location_id"] == f.location.as_str())
            .unwrap();
        assert_eq!(
            (
                ward["checked_out"].as_i64(),
                ward["overdue"].as_i64(),
                ward["available"].as_i64()
            ),
            (Some(2), Some(1), Some(1))
        );

        // Epic down for a while (every call refused for 4 s): the check-in completes on the device at
        // once and the logouts arrive after the outage, each exactly once.
        eventually(10, "sign-ins", || async {
            let m = sim_json(&f, "/_sim/mobile").await;
            (m.as_array().unwrap().len() >= 4, m)
        })
        .await;
        let now = switchboard_app::now_ms();
        add_fault(&f, json!({"path_contains": "DisassociateMobileDevice", "effect": {"kind": "status", "status": 503}, "from_ms": now, "until_ms": now + 4000})).await;
        let r: Value = checkin_json(s, &serials[0]).await;
        eventually(10, "the device back during the outage", || async {
            let d: Value = device_json(s, &serials[0]).await;
            (d["status"] == "available", d)
        })
        .await;
        assert!(
            switchboard_app::now_ms() < now + 4000,
            "the device came back while Epic was still down"
        );
        let done = receipt_done(s, r["id"].as_str().unwrap(), 30).await;
        assert_eq!(done["status"], "complete", "{done:#}");
        assert!(switchboard_app::now_ms() >= now + 4000);
        let rover = step(&done, "epic_logout", 0);
        assert!(rover["attempts"].as_i64().unwrap() > 1, "{rover:#}");
        assert_eq!(
            rover["repeats"], 0,
            "a refused call is a known answer: nothing to repeat"
        );
        let m = sim_json(&f, "/_sim/mobile").await;
        assert!(
            m.as_array()
                .unwrap()
                .iter()
                .all(|l| !l["install_id"].as_str().unwrap().starts_with(&serials[0]))
        );
        a.stop().await;
        f.sim.shutdown().await;
    }
);

fn appconfig_plan(locker_var: &str, pin: &str) -> Value {
    json!({
        "apps": [
            {"app": "Rover", "device_id": "udid", "append_app_name": true, "configuration_url": "epicrover://handheld/config/ABC123"},
            {"app": "Haiku", "device_id": "serial_number", "append_app_name": false, "configuration_url": "epichaiku://handheld/config/XYZ"},
        ],
        "locker": {"server_url": "https://switchboard.example.org", "enrollment_token": "sbe_example", "rover_device_id": locker_var, "unlock_pin": pin},
    })
}

server_test!(
    appconfig_documents_for_every_mdm_are_checked_rendered_and_read_back_by_python,
    |s| {
        let r = s
            .post(
                &s.admin_token,
                "/devices/appconfig",
                appconfig_plan("udid", "2468"),
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let files: Vec<Value> = r.json().await.unwrap();
        assert_eq!(files.len(), 12, "Rover, Haiku and the locker for four MDMs");
        let find = |name: &str| {
            files
                .iter()
                .find(|f| f["filename"] == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert!(
            find("rover-jamf.plist")["content"]
                .as_str()
                .unwrap()
                .contains("$UDID")
        );
        assert!(
            find("haiku-workspace-one.csv")["content"]
                .as_str()
                .unwrap()
                .contains("{DeviceSerialNumber}")
        );
        assert!(
            find("locker-intune.xml")["content"]
                .as_str()
                .unwrap()
                .contains("{{deviceid}}")
        );
        // Each document read back by Python's own parsers.
        let dir = tempfile::tempdir().unwrap();
        for (name, mdm, key, want) in [
            (
                "rover-jamf.plist",
                "jamf",
                "EpicMobileDeviceID",
                json!("$UDID"),
            ),
            (
                "rover-intune.xml",
                "intune",
                "EpicMobileDeviceIDAppName",
                json!(true),
            ),
            (
                "locker-workspace-one.csv",
                "workspace_one",
                "epicRoverEpicMobileDeviceID",
                json!("{DeviceUuId}"),
            ),
            (
                "haiku-app-config-xml.xml",
                "app_config_xml",
                "EpicMobileConfigurationURL",
                json!("epichaiku://handheld/config/XYZ"),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, find(name)["content"].as_str().unwrap()).unwrap();
            let out = std::process::Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../tests/peers/appconfig_parse.py"
                ))
                .arg(mdm)
                .arg(&path)
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(parsed[key], want, "{name}: {parsed}");
        }
        // One document as a download.
        let r = s
            .http
            .post(s.api("/devices/appconfig?file=rover-jamf.plist"))
            .bearer_auth(&s.admin_token)
            .json(&appconfig_plan("udid", "2468"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-plist");
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains("rover-jamf.plist")
        );
        // Mistakes are refused before anything is exported.
        let mut bad = appconfig_plan("serial_number", "12");
        bad["apps"][0]["configuration_url"] = json!("https://not-epic.example.org");
        let r = s.post(&s.admin_token, "/devices/appconfig", bad).await;
        assert_eq!(r.status(), 422);
        let p: Value = r.json().await.unwrap();
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&"apps[0].configuration_url"), "{p}");
        assert!(fields.contains(&"locker.unlock_pin"), "{p}");
        assert!(fields.contains(&"locker.rover_device_id"), "{p}");
        // The CLI renders the same documents from a file.
        let plan_path = dir.path().join("plan.json");
        std::fs::write(&plan_path, appconfig_plan("udid", "2468").to_string()).unwrap();
        let out_dir = dir.path().join("out");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["appconfig", "--file"])
            .arg(&plan_path)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(out_dir.join("rover-jamf.plist")).unwrap(),
            find("rover-jamf.plist")["content"].as_str().unwrap()
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_command_expires_fails_its_step_and_the_device_needs_attention() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let s = TestServer::start_with(url, |c| c.device_command_ttl_secs = 1).await;
    let f = fixture(
        &s,
        |_| json!([{"action": "force_quit", "app_id": "com.epic.rover"}]),
    )
    .await;
    // A device whose agent enrols and then goes silent.
    let r = s
        .http
        .post(format!("{}/agent/v1/enrol", s.url))
        .bearer_auth(&f.enrol_token)
        .json(&json!({"serial": "SILENT1", "platform": "ios"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.post(
        &s.admin_token,
        "/devices/users",
        json!({"username": "quiet", "display_name": "Quiet"}),
    )
    .await;
    let r = s
        .post(
            &s.admin_token,
            "/devices/checkout",
            json!({"user": "quiet", "device": "SILENT1"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let receipt: Value = s
        .post(&s.admin_token, "/devices/SILENT1/checkin", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(receipt["status"], "in_progress");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = switchboard_app::lending::sweep(&s.running.app)
        .await
        .unwrap();
    assert!(
        expired >= 1,
        "the show-ready and force-quit commands expired"
    );
    let r: Value = s
        .get(
            &s.admin_token,
            &format!("/devices/checkins/{}", receipt["id"].as_str().unwrap()),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "complete_with_problems");
    assert!(
        r["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("did not confirm"),
        "{r:#}"
    );
    let d: Value = s
        .get(&s.admin_token, "/devices/SILENT1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["status"], "attention");
    assert!(
        d["commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "expired" || c["state"] == "skipped"),
        "{d:#}"
    );
    // Someone checks the phone and releases it.
    let r = s
        .post(&s.admin_token, "/devices/SILENT1/release", json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let d: Value = s
        .get(&s.admin_token, "/devices/SILENT1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["status"], "available");
    f.sim.shutdown().await;
    s.stop().await;
}

/// A webhook receiver keeping every event it gets.
async fn start_hook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::{Json, Router, routing::post};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = std::sync::Arc::clone(&seen);
    let app = Router::new().route(
        "/hook",
        post(move |Json(b): Json<Value>| {
            let seen = std::sync::Arc::clone(&s2);
            async move {
                seen.lock().unwrap().push(b);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

async fn lost_mode_case(db_url: String) {
    let (hook, seen) = start_hook().await;
    let s = TestServer::start_with(db_url, |c| {
        c.device_events_webhook_url = Some(hook.clone());
        c.device_lost_after_overdue_minutes = 60;
    })
    .await;
    let f = fixture(&s, |_| json!([])).await;
    let (a, serials) = phones(&s, &f, 2).await;
    let hook_event = |kind: &'static str, serial: String| {
        let seen = std::sync::Arc::clone(&seen);
        async move {
            eventually(10, kind, || async {
                let v = seen.lock().unwrap().clone();
                let hit = v
                    .iter()
                    .any(|e| e["type"] == kind && e["device"]["serial"] == serial.as_str());
                (hit, json!(v))
            })
            .await
        }
    };
    // An operator marks device 0 lost: it locks with the message and the MDM hears of it.
    let r = s
        .post(
            &s.admin_token,
            &format!("/devices/{}/lost", serials[0]),
            json!({"message": "Lost: call x5555"}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let d: Value = r.json().await.unwrap();
    assert!(
        d["lost_reason"]
            .as_str()
            .unwrap()
            .starts_with("marked lost by")
    );
    eventually(10, "the lock with the message", || async {
        let d = a.device(&serials[0]).unwrap();
        (d.locked && d.screen == "Lost: call x5555", json!(d))
    })
    .await;
    hook_event("device.lost", serials[0].clone()).await;
    assert_eq!(
        s.post(
            &s.admin_token,
            &format!("/devices/{}/lost", serials[0]),
            json!({})
        )
        .await
        .status(),
        409
    );
    // Docking it again ends lost mode.
    let cred = a.devices[0].lock().unwrap().credential.clone();
    for docked in [false, true] {
        let r = s
            .http
            .post(format!("{}/agent/v1/heartbeat", s.url))
            .bearer_auth(&cred)
            .json(&json!({"docked": docked}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let d: Value = device_json(&s, &serials[0]).await;
    assert!(d["lost_at"].is_null(), "{d:#}");
    hook_event("device.found", serials[0].clone()).await;
    // An emergency unlock with the unlock PIN is recorded, audited and reported.
    let ev = |kind: &str| {
        s.http
            .post(format!("{}/agent/v1/events", s.url))
            .bearer_auth(&cred)
            .json(&json!({"kind": kind}))
            .send()
    };
    assert_eq!(ev("emergency_unlock").await.unwrap().status(), 204);
    assert_eq!(ev("self_destruct").await.unwrap().status(), 422);
    hook_event("device.emergency_unlock", serials[0].clone()).await;
    let audit: Value = s
        .get(&s.admin_token, "/audit?action=device.emergency_unlock")
        .await
        .json()
        .await
        .unwrap();
    let entries = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .unwrap()
        .clone();
    assert_eq!(entries.len(), 1, "{audit:#}");
    assert_eq!(entries[0]["actor"], format!("device:{}", serials[0]));
    let d: Value = device_json(&s, &serials[0]).await;
    assert!(
        d["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains("emergency PIN"))
    );
    // Overdue past the threshold: lost mode by itself.
    s.post(
        &s.admin_token,
        "/devices/users",
        json!({"username": "late", "display_name": "Late"}),
    )
    .await;
    assert_eq!(
        s.post(
            &s.admin_token,
            "/devices/checkout",
            json!({"user": "late", "device": serials[1]})
        )
        .await
        .status(),
        201
    );
    let long_ago = switchboard_app::now_ms() - 2 * 3_600_000;
    run_sql(&s, &format!("UPDATE checkouts SET due_at = {long_ago} WHERE device_id = (SELECT id FROM devices WHERE serial = '{}')", serials[1])).await;
    switchboard_app::lending::sweep(&s.running.app)
        .await
        .unwrap();
    let d: Value = device_json(&s, &serials[1]).await;
    assert_eq!(d["lost_reason"], "overdue by more than 60 minutes");
    hook_event("device.lost", serials[1].clone()).await;
    a.stop().await;
    f.sim.shutdown().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_mode_docking_and_emergency_unlock_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    lost_mode_case(format!("sqlite://{}", dir.path().join("t.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_mode_docking_and_emergency_unlock_on_postgres() {
    let Some(server) = switchboard_store::testing::postgres_server(
        "lost_mode_docking_and_emergency_unlock_on_postgres",
    ) else {
        return;
    };
    lost_mode_case(switchboard_store::testing::create_postgres_database(&server).await).await;
}

/// The structure of the SSO profile example in the product's source material.
const SSO_EXAMPLE: &str = switchboard_domain::sso::EXAMPLE_PROFILE;

/// Imports the example profile; answers its id.
async fn import_example_profile(s: &TestServer) -> String {
    let r = send_xml(
        s,
        reqwest::Method::POST,
        "/devices/sso-profiles",
        SSO_EXAMPLE,
    )
    .await;
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    p["id"].as_str().unwrap().to_owned()
}

async fn send_xml(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    xml: &str,
) -> reqwest::Response {
    s.http
        .request(method, s.api(path))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/xml")
        .body(xml.to_owned())
        .send()
        .await
        .unwrap()
}

server_test!(
    sso_profiles_import_export_exactly_and_hostile_xml_changes_nothing,
    |s| {
        let r = send_xml(
            s,
            reqwest::Method::POST,
            "/devices/sso-profiles",
            SSO_EXAMPLE,
        )
        .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["name"], "Epic Rover");
        assert_eq!(
            p["apps"],
            json!([{"nm": "epic.com", "desc": "Epic Rover", "one_tap": true}])
        );
        let id = p["id"].as_str().unwrap().to_owned();
        let exported = s
            .get(&s.admin_token, &format!("/devices/sso-profiles/{id}/xml"))
            .await
            .text()
            .await
            .unwrap();
        // Same elements, attributes (in order) and values: parsing both gives the same tree.
        let a = switchboard_domain::sso::parse_tree(SSO_EXAMPLE).unwrap();
        let b = switchboard_domain::sso::parse_tree(&exported).unwrap();
        assert_eq!(a, b, "{exported}");
        assert!(
            exported.contains(r#"<scn nm="" auto="0" dgs="1">"#),
            "{exported}"
        );
        for (xml, why) in [
            (r#"<!DOCTYPE SSO [<!ENTITY x "y">]><SSO/>"#, "DOCTYPE"),
            (&SSO_EXAMPLE.replace(r#"<ctl var="PWD"/>"#, ""), "USR"),
            (
                &SSO_EXAMPLE.replace(r#"nm="epic.com""#, r#"nm="Rover app""#),
                "domain",
            ),
            (
                &format!("{}{}", "<a>".repeat(40), "</a>".repeat(40)),
                "deeper",
            ),
            ("<SSO><app", "malformed"),
        ] {
            let r = send_xml(s, reqwest::Method::POST, "/devices/sso-profiles", xml).await;
            assert_eq!(r.status(), 422, "{why}");
            let body: Value = r.json().await.unwrap();
            assert!(
                body["errors"][0]["message"].as_str().unwrap().contains(why),
                "{why}: {body}"
            );
        }
        let r = s
            .post(
                &s.admin_token,
                "/devices/sso-profiles",
                json!({"xml": SSO_EXAMPLE}),
            )
            .await;
        assert_eq!(r.status(), 415, "XML only");
        // The CLI checks a profile before import: the same rules, offline.
        let dir = tempfile::tempdir().unwrap();
        let cli = |xml: &str| {
            let path = dir.path().join("profile.xml");
            std::fs::write(&path, xml).unwrap();
            std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .arg("sso-profile")
                .arg(&path)
                .arg("--export")
                .output()
                .unwrap()
        };
        let out = cli(SSO_EXAMPLE);
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("epic.com: Epic Rover (one-tap autofill")
                && stdout.contains(r#"<scn nm="" auto="0" dgs="1">"#),
            "{stdout}"
        );
        let out = cli(r#"<!DOCTYPE SSO [<!ENTITY x "y">]><SSO/>"#);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("DOCTYPE"));
        let list: Value = s
            .get(&s.admin_token, "/devices/sso-profiles")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            list.as_array().unwrap().len(),
            1,
            "nothing stored by the refused imports"
        );
        // Replace, then remove.
        let two = SSO_EXAMPLE.replace(r#"<containers/>"#, r#"<app nm="Haiku" desc="Haiku"><env type="200" nm="iOS"><scn nm="login"><ctl var="USR"/><ctl var="PWD"/></scn></env></app><containers/>"#);
        let r = send_xml(
            s,
            reqwest::Method::PUT,
            &format!("/devices/sso-profiles/{id}"),
            &two,
        )
        .await;
        assert_eq!(r.status(), 200);
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            p["apps"][1],
            json!({"nm": "Haiku", "desc": "Haiku", "one_tap": false})
        );
        let r = s
            .http
            .delete(s.api(&format!("/devices/sso-profiles/{id}")))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            s.get(&s.admin_token, &format!("/devices/sso-profiles/{id}"))
                .await
                .status(),
            404
        );
    }
);

server_test!(
    autofill_releases_the_holders_credential_only_to_their_device_while_they_hold_it,
    |s| {
        let f = fixture(s, |_| json!([])).await;
        let (a, serials) = phones(s, &f, 2).await;
        let creds: Vec<String> = a
            .devices
            .iter()
            .map(|d| d.lock().unwrap().credential.clone())
            .collect();
        let pid = import_example_profile(s).await;
        add_user(s, "af.nurse", "81001").await;
        add_user(s, "af.other", "81002").await;
        let r = s
            .http
            .put(s.api("/devices/users/af.nurse/credentials"))
            .bearer_auth(&s.admin_token)
            .json(&json!({"profile_id": pid, "username": "NURSE1", "password": "epic-secret-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let listed = s
            .get(&s.admin_token, "/devices/users/af.nurse/credentials")
            .await
            .text()
            .await
            .unwrap();
        assert!(
            listed.contains("NURSE1") && !listed.contains("epic-secret-1"),
            "{listed}"
        );
        let autofill = |i: usize, body: Value| {
            s.http
                .post(format!("{}/agent/v1/autofill", s.url))
                .bearer_auth(&creds[i])
                .json(&body)
                .send()
        };
        // Nobody holds the device yet.
        assert_eq!(
            autofill(0, json!({"domain": "epic.com"}))
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            s.post(
                &s.admin_token,
                "/devices/checkout",
                json!({"user": "af.nurse", "device": serials[0]})
            )
            .await
            .status(),
            201
        );
        let r = autofill(0, json!({"domain": "epic.com"})).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["credential"],
            json!({"profile_id": pid, "username": "NURSE1", "password": "epic-secret-1"})
        );
        // Another domain: the list to choose from, without passwords; picking releases it.
        let v: Value = autofill(0, json!({"domain": "example.org"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["credential"].is_null());
        assert_eq!(
            v["choices"],
            json!([{"profile_id": pid, "name": "Epic Rover", "username": "NURSE1"}])
        );
        let v: Value = autofill(0, json!({"profile_id": pid}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["credential"]["password"], "epic-secret-1");
        // The other device, held by another user, never gets this user's credential.
        assert_eq!(
            autofill(1, json!({"domain": "epic.com"}))
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            s.post(
                &s.admin_token,
                "/devices/checkout",
                json!({"user": "af.other", "device": serials[1]})
            )
            .await
            .status(),
            201
        );
        let v: Value = autofill(1, json!({"domain": "epic.com"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            v["credential"].is_null() && v["choices"].as_array().unwrap().is_empty(),
            "{v}"
        );
        assert_eq!(
            autofill(1, json!({"profile_id": pid}))
                .await
                .unwrap()
                .status(),
            404
        );
        // The other user saves their own after a manual sign-in; now they get theirs.
        let r = s
            .http
            .post(format!("{}/agent/v1/credentials", s.url))
            .bearer_auth(&creds[1])
            .json(&json!({"profile_id": pid, "username": "OTHER2", "password": "epic-secret-2"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = autofill(1, json!({"domain": "epic.com"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["credential"]["username"], "OTHER2");
        // After check-in: refused.
        checkin_json(s, &serials[0]).await;
        assert_eq!(
            autofill(0, json!({"domain": "epic.com"}))
                .await
                .unwrap()
                .status(),
            403
        );
        // Rate limit: device 1 has used 1 release this minute; 9 more pass, then 429.
        let mut codes = Vec::new();
        for _ in 0..10 {
            codes.push(
                autofill(1, json!({"domain": "epic.com"}))
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 9, "{codes:?}");
        assert_eq!(codes.last(), Some(&429));
        // Every release audited, never with the secret.
        let audit = s
            .get(&s.admin_token, "/audit?action=sso.")
            .await
            .text()
            .await
            .unwrap();
        assert!(
            audit.contains("sso.credential_released") && audit.contains("sso.credential_saved")
        );
        assert!(!audit.contains("epic-secret"), "{audit}");
        a.stop().await;
        f.sim.shutdown().await;
    }
);

async fn count_sql(s: &TestServer, sql: &str) -> i64 {
    use sqlx::Connection;
    if s.db_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&s.db_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&s.db_url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

async fn send_csv(s: &TestServer, path: &str, csv: &str) -> reqwest::Response {
    s.http
        .post(s.api(path))
        .bearer_auth(&s.admin_token)
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .unwrap()
}

server_test!(
    credentials_import_from_csv_all_or_nothing_and_removal_takes_the_sealed_password,
    |s| {
        let pid = import_example_profile(s).await;
        add_user(s, "csv.one", "82001").await;
        add_user(s, "csv.two", "82002").await;
        let sealed = "SELECT COUNT(*) FROM secrets WHERE purpose = 'sso_password'";
        let listed = |u: &'static str| async move {
            s.get(&s.admin_token, &format!("/devices/users/{u}/credentials"))
                .await
                .json::<Value>()
                .await
                .unwrap()
        };
        // A wrong header, and a file with bad lines: refused, naming each line; nothing stored.
        let r = send_csv(s, "/devices/credentials/import", "user,login,secret\n").await;
        assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
        let bad = format!(
            "user,profile,username,password\n\
             csv.one,Epic Rover,ONE,pw-1\n\
             nobody,Epic Rover,X,pw\n\
             csv.two,No Such App,X,pw\n\
             csv.two,{pid},TWO,\n\
             csv.one,{pid},ONE,pw-again\n"
        );
        let r = send_csv(s, "/devices/credentials/import", &bad).await;
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "line 3: user",
                "line 4: profile",
                "line 5: password",
                "line 6"
            ],
            "{body}"
        );
        assert!(!body.to_string().contains("pw-1"), "{body}");
        assert_eq!(listed("csv.one").await, json!([]));
        assert_eq!(count_sql(s, sealed).await, 0);
        // A good file: by profile name and by id; passwords kept as written (commas, spaces).
        let good = format!(
            "user,profile,username,password\n\
             csv.one,epic rover,ONE,\"pw, with comma \"\n\
             csv.two,{pid},TWO,pw-2\n"
        );
        let r = send_csv(s, "/devices/credentials/import", &good).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"created": 2, "updated": 0})
        );
        let r = send_csv(s, "/devices/credentials/import", &good).await;
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"created": 0, "updated": 2})
        );
        let one = listed("csv.one").await;
        assert_eq!(one[0]["username"], "ONE");
        assert_eq!(one[0]["source"], "admin");
        assert!(!one.to_string().contains("pw, with comma"), "{one}");
        assert_eq!(
            count_sql(s, sealed).await,
            2,
            "replaced passwords are deleted"
        );
        let r = s
            .post(
                &s.admin_token,
                "/devices/credentials/import",
                json!({"csv": good}),
            )
            .await;
        assert_eq!(r.status(), 415);
        // Removing one credential takes its sealed password; a second removal is a 404.
        let del = |u: &str| {
            s.http
                .delete(s.api(&format!("/devices/users/{u}/credentials/{pid}")))
                .bearer_auth(&s.admin_token)
                .send()
        };
        assert_eq!(del("csv.one").await.unwrap().status(), 204);
        assert_eq!(del("csv.one").await.unwrap().status(), 404);
        assert_eq!(listed("csv.one").await, json!([]));
        assert_eq!(count_sql(s, sealed).await, 1);
        // Removing the profile removes every credential stored for it.
        let r = s
            .http
            .delete(s.api(&format!("/devices/sso-profiles/{pid}")))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(listed("csv.two").await, json!([]));
        assert_eq!(count_sql(s, sealed).await, 0);
        let audit = s
            .get(&s.admin_token, "/audit?action=sso.")
            .await
            .text()
            .await
            .unwrap();
        assert!(
            audit.contains("sso.credentials_imported") && audit.contains("sso.credential_removed"),
            "{audit}"
        );
        assert!(!audit.contains("pw-"), "{audit}");
    }
);

server_test!(
    readiness_follows_what_the_devices_report_and_check_out_skips_devices_not_ready,
    |s| {
        let f = fixture(s, |_| json!([])).await;
        let (a, serials) = phones(s, &f, 2).await;
        add_user(s, "ready.nurse", "83001").await;
        let checkout = || {
            s.post(
                &s.admin_token,
                "/devices/checkout",
                json!({"user": "ready.nurse", "location": f.location}),
            )
        };
        // The group starts requiring Rover 24.3; the simulated phones run 24.2.0.
        let mut group: Value = s
            .get(&s.admin_token, &format!("/devices/groups/{}", f.group_id))
            .await
            .json()
            .await
            .unwrap();
        let group = group.as_object_mut().unwrap();
        group.insert(
            "required_apps".into(),
            json!([{"app_id": "com.epic.rover", "min_version": "24.3"}]),
        );
        for k in ["id", "created_at", "updated_at"] {
            group.remove(k);
        }
        let r = s
            .http
            .put(s.api(&format!("/devices/groups/{}", f.group_id)))
            .bearer_auth(&s.admin_token)
            .json(&group)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        for serial in &serials {
            let d = device_json(s, serial).await;
            assert_eq!(d["ready"], false);
            assert_eq!(
                d["not_ready"],
                json!(["com.epic.rover 24.2.0 is older than the required 24.3"])
            );
        }
        let r = checkout().await;
        assert_eq!(r.status(), 409, "no device is ready");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("No device is ready"),
            "{body}"
        );
        // The MDM updates Rover on the first phone: it becomes ready and is the one handed out.
        let answer = a.report_app(0, "Rover", Some("24.3.1")).await.unwrap();
        assert_eq!(answer["ready"], true, "{answer}");
        let r = checkout().await;
        assert_eq!(r.status(), 201);
        let out: Value = r.json().await.unwrap();
        assert_eq!(out["device"]["serial"], serials[0], "{out}");
        checkin_json(s, &serials[0]).await;
        // The second phone: updated, but its MDM left the variables literal; then fixed; then
        // Rover removed.
        a.report_app(1, "Rover", Some("25.1")).await.unwrap();
        let answer = a.report_appconfig(1, false).await.unwrap();
        assert_eq!(answer["ready"], false);
        let d = device_json(s, &serials[1]).await;
        let reasons = d["not_ready"].as_array().unwrap();
        assert!(
            !reasons.is_empty()
                && reasons.iter().all(|r| r
                    .as_str()
                    .unwrap()
                    .contains("the MDM did not substitute its variable")),
            "{d}"
        );
        let dashboard: Value = s
            .get(&s.admin_token, "/devices/dashboard")
            .await
            .json()
            .await
            .unwrap();
        assert!(
            dashboard.to_string().contains(&f.location),
            "the dashboard counts per location: {dashboard}"
        );
        let not_ready: Value = s
            .get(&s.admin_token, "/devices?readiness=not_ready")
            .await
            .json()
            .await
            .unwrap();
        let listed: Vec<&str> = not_ready["items"]
            .as_array()
            .or(not_ready.as_array())
            .unwrap()
            .iter()
            .map(|d| d["serial"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [serials[1].as_str()]);
        let answer = a.report_appconfig(1, true).await.unwrap();
        assert_eq!(answer["ready"], true);
        let answer = a.report_app(1, "Rover", None).await.unwrap();
        assert_eq!(answer["ready"], false);
        assert_eq!(
            device_json(s, &serials[1]).await["not_ready"],
            json!(["com.epic.rover is not installed"])
        );
        // Check-out by name refuses the device that is not ready, saying why.
        let r = s
            .post(
                &s.admin_token,
                "/devices/checkout",
                json!({"user": "ready.nurse", "device": serials[1]}),
            )
            .await;
        assert_eq!(r.status(), 409);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("com.epic.rover is not installed"),
            "{body}"
        );
        a.stop().await;
        f.sim.shutdown().await;
    }
);

server_test!(an_agent_reports_several_results_at_once, |s| {
    let f = fixture(s, rover_haiku_workflow).await;
    // Two devices enrolled by hand (no simulated agent answers for them).
    let mut creds = Vec::new();
    for serial in ["BATCH1", "BATCH2"] {
        let r = s
            .http
            .post(format!("{}/agent/v1/enrol", s.url))
            .bearer_auth(&f.enrol_token)
            .json(&json!({"serial": serial, "platform": "ios"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let e: Value = r.json().await.unwrap();
        creds.push(e["credential"].as_str().unwrap().to_owned());
    }
    let mut ids = Vec::new();
    for kind in ["lock", "lock"] {
        let r = s
            .post(
                &s.admin_token,
                "/devices/BATCH1/commands",
                json!({"kind": kind}),
            )
            .await;
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let polled: Value = s
        .http
        .get(format!("{}/agent/v1/commands?wait=0", s.url))
        .bearer_auth(&creds[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled.as_array().unwrap().len(), 2, "{polled}");
    let report = |cred: String, body: Value| {
        let http = s.http.clone();
        let url = format!("{}/agent/v1/commands/results", s.url);
        async move {
            http.post(url)
                .bearer_auth(cred)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let states = || async {
        let d = device_json(s, "BATCH1").await;
        let mut v: Vec<(String, String)> = d["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = states().await;
    // A malformed report changes nothing, and says what is wrong with each result.
    let r = report(
        creds[0].clone(),
        json!({"results": [
            {"id": ids[0], "status": "succeeded"},
            {"id": ids[1], "status": "done", "detail": "x".repeat(501)},
            {"id": ids[0], "status": "succeeded"}]}),
    )
    .await;
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["results[1].status", "results[1].detail", "results[2].id"]
    );
    for empty in [
        json!({"results": []}),
        json!({"results": vec![json!({"id": "c", "status": "failed"}); 51]}),
    ] {
        assert_eq!(report(creds[0].clone(), empty).await.status(), 422);
    }
    assert_eq!(states().await, before, "a refused report changed nothing");
    // Another device's report of these commands finds none of them.
    let r = report(
        creds[1].clone(),
        json!({"results": [{"id": ids[0], "status": "failed"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out[0]["outcome"], "not_found", "{out}");
    assert_eq!(states().await, before);
    // One report: both commands and an unknown one, each with its own outcome.
    let r = report(
        creds[0].clone(),
        json!({"results": [
            {"id": ids[0], "status": "succeeded", "detail": "locked"},
            {"id": "cmd_nope", "status": "skipped"},
            {"id": ids[1], "status": "failed", "detail": "no screen"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    let outcomes: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["recorded", "not_found", "recorded"], "{out}");
    assert_eq!(out[0]["command"]["state"], "succeeded");
    assert_eq!(out[2]["command"]["result"], "no screen");
    // Repeating a result is harmless; a different one is a conflict and changes nothing.
    let r = report(
        creds[0].clone(),
        json!({"results": [
            {"id": ids[0], "status": "succeeded", "detail": "locked"},
            {"id": ids[1], "status": "succeeded"}]}),
    )
    .await;
    let out: Value = r.json().await.unwrap();
    assert_eq!(out[0]["outcome"], "recorded", "{out}");
    assert_eq!(out[1]["outcome"], "conflict", "{out}");
    assert!(
        out[1]["error"]
            .as_str()
            .unwrap()
            .contains("already reported `failed`")
    );
    let mut want = vec![
        (ids[0].clone(), "succeeded".to_owned()),
        (ids[1].clone(), "failed".to_owned()),
    ];
    want.sort();
    assert_eq!(states().await, want);
    f.sim.shutdown().await;
});

server_test!(check_ins_that_arrive_together_are_each_done_once, |s| {
    // On PostgreSQL these share transactions (`checkin_batch`); on SQLite they queue for
    // the writer. Either way: each device checked in once, every request answered.
    let f = fixture(s, rover_haiku_workflow).await;
    let a = agents(s, &f, |c| c.devices = 12).await;
    let serials = serials_of(&a);
    for (i, serial) in serials.iter().enumerate() {
        add_user(s, &format!("b{i}"), &format!("5000{i}")).await;
        let r = s
            .post(
                &s.admin_token,
                "/devices/checkout",
                json!({"badge": format!("5000{i}"), "device": serial}),
            )
            .await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    eventually(20, "the users signing in to Rover and Haiku", || async {
        let m = sim_json(&f, "/_sim/mobile").await;
        (m.as_array().unwrap().len() >= 24, m)
    })
    .await;
    // Every device twice (once by serial, once by id), and one that does not exist.
    let mut keys: Vec<String> = serials.clone();
    for serial in &serials {
        keys.push(
            device_json(s, serial).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    keys.push("no-such-device".to_owned());
    let answers = futures_util::future::join_all(keys.iter().map(|k| async move {
        let r = s
            .post(&s.admin_token, &format!("/devices/{k}/checkin"), json!({}))
            .await;
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    }))
    .await;
    assert_eq!(answers.last().unwrap().0, 404, "{:?}", answers.last());
    for (i, serial) in serials.iter().enumerate() {
        let (by_serial, by_id) = (&answers[i], &answers[serials.len() + i]);
        assert_eq!(
            (by_serial.0, by_id.0),
            (200, 200),
            "{by_serial:?} {by_id:?}"
        );
        assert_eq!(by_serial.1["id"], by_id.1["id"], "one check-in of {serial}");
        let again = [&by_serial.1, &by_id.1]
            .iter()
            .filter(|r| r["already_checked_in"] == true)
            .count();
        assert_eq!(again, 1, "{by_serial:?} {by_id:?}");
        assert_eq!(by_serial.1["steps"].as_array().unwrap().len(), 4);
    }
    let n = count_sql(s, "SELECT COUNT(*) FROM checkins").await;
    assert_eq!(n, 12);
    let n = count_sql(
        s,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'device.checked_in'",
    )
    .await;
    assert_eq!(n, 12);
    let n = count_sql(
        s,
        "SELECT COUNT(*) FROM checkin_steps WHERE action = 'epic_logout'",
    )
    .await;
    assert_eq!(n, 24, "an Epic logout step for each app of each check-in");
    common::assert_audit_log_verifies(s).await;
    // The workflows run to the end: the agents force-quit, Epic signs the users out.
    for (_, receipt) in &answers[..serials.len()] {
        receipt_done(s, receipt["id"].as_str().unwrap(), 30).await;
    }
    drop(a);
});
