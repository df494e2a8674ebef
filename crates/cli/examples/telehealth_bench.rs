//! Telehealth benchmark: launch handling (decrypt + validate + single use + pending state) and
//! Epic's redirect back (state check, code exchange with the loopback simulator, conference
//! lookup / create, participant), each timed per request; then the historic status page over
//! HTTP with 10,000 ended conferences. Prints `key value` lines for bench/telehealth.sh.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchboard_app::telehealth::{AppClientsInput, ClientInput, ProfileInput};
use switchboard_app::{Principal, RequestContext};
use switchboard_domain::telehealth::LaunchRole;
use switchboard_epic::launch::{IvMode, LaunchKey, format_fields};

const KEY: &str = "fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=";

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let launches: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let sim = switchboard_epic_sim::start(switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let config = switchboard_app::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        log_level: "warn".to_owned(),
        ..Default::default()
    };
    let server = switchboard_cli::start(config, switchboard_cli::standard_registry())
        .await
        .unwrap();
    let app = server.app.clone();
    let cli = Principal::cli();
    let ctx = RequestContext::default();
    let env = app
        .create_environment(
            &cli,
            &ctx,
            switchboard_app::epic_env::EnvironmentInput {
                name: Some("Sim".into()),
                kind: Some("non_production".into()),
                interconnect_url: Some(sim.base_url()),
                instance: Some("interconnect-tst".into()),
                client_id: Some("bench".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let client = || AppClientsInput {
        production: None,
        non_production: Some(ClientInput {
            client_id: "bench-th".into(),
            client_secret: Some("bench-secret".into()),
        }),
    };
    let profile = app
        .create_telehealth_profile(
            &cli,
            &ctx,
            ProfileInput {
                name: "Bench Org".into(),
                environment_id: env.id.clone(),
                key: Some(KEY.into()),
                provider_app: client(),
                patient_app: client(),
                ..ProfileInput::default()
            },
            None,
        )
        .await
        .unwrap();
    sim.sim.register_client(switchboard_epic_sim::ClientConfig {
        client_id: "bench-th".into(),
        client_secret: Some("bench-secret".into()),
        redirect_uris: vec![
            profile.provider_redirect_uri.clone(),
            profile.patient_redirect_uri.clone(),
        ],
        ..Default::default()
    });
    let key = LaunchKey::aes256_from_base64(KEY).unwrap();
    let iss = sim.fhir_base("interconnect-tst");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut launch_times = Vec::with_capacity(launches);
    let mut join_times = Vec::with_capacity(launches);
    for i in 0..launches + 20 {
        // Two launches (provider then patient) per appointment.
        let role = if i % 2 == 0 {
            LaunchRole::Provider
        } else {
            LaunchRole::Patient
        };
        let ts = (switchboard_app::now_ms() / 1000).to_string();
        let appt = format!("bench-{}", i / 2);
        let user = format!("U{i}");
        let plain = format_fields([
            ("fname", "Beverley"),
            ("mname", "P"),
            ("lname", "Spinder"),
            ("dept", "Radiology"),
            ("apptid", appt.as_str()),
            ("csn", "1"),
            ("user", user.as_str()),
            ("ts", ts.as_str()),
        ]);
        let q: HashMap<String, String> = [
            ("iss".to_owned(), iss.clone()),
            ("launch".to_owned(), format!("L{i}")),
            (
                "data".to_owned(),
                key.encrypt(IvMode::Zero, plain.as_bytes()).unwrap(),
            ),
        ]
        .into();
        let t = Instant::now();
        let r = app.telehealth_launch(role, &profile.id, &q).await.unwrap();
        let launch_time = t.elapsed();
        // Epic's sign-in (not timed).
        let at_epic = http.get(&r.authorize_url).send().await.unwrap();
        let back = url::Url::parse(at_epic.headers()["location"].to_str().unwrap()).unwrap();
        let cq: HashMap<String, String> = back.query_pairs().into_owned().collect();
        let t = Instant::now();
        app.telehealth_authorized(role, &profile.id, &cq, Some(&r.state))
            .await
            .unwrap();
        let join_time = t.elapsed();
        if i >= 20 {
            launch_times.push(launch_time);
            join_times.push(join_time);
        }
    }
    println!("launches {launches}");
    println!("launch_p50_ms {:.2}", percentile(&mut launch_times, 0.50));
    println!("launch_p99_ms {:.2}", percentile(&mut launch_times, 0.99));
    println!("join_p50_ms {:.2}", percentile(&mut join_times, 0.50));
    println!("join_p99_ms {:.2}", percentile(&mut join_times, 0.99));

    // 10,000 historic conferences, two participants each.
    let store = app.store().clone();
    let now = switchboard_app::now_ms();
    for batch in 0..20 {
        let mut tx = store.begin().await.unwrap();
        for j in 0..500 {
            let n = batch * 500 + j;
            let c = switchboard_store::ConferenceRow {
                id: uuid::Uuid::new_v4().to_string(),
                profile_id: profile.id.clone(),
                profile_name: "Bench Org".into(),
                environment_id: env.id.clone(),
                appointment_id: format!("hist-{n}"),
                csn: Some(n.to_string()),
                name: format!("Appointment for Patient {n} Bench Org:hist-{n} in Radiology"),
                patient_name: format!("Patient {n}"),
                department: Some("Radiology".into()),
                room: format!("r{n}"),
                state: "active".into(),
                started_at: now - 86_400_000 + i64::from(n) * 1000,
                ended_at: None,
                ended_reason: None,
                epic_connected_at: None,
                epic_ended_at: None,
            };
            tx.insert_or_get_active_conference(&c).await.unwrap();
            for (k, role) in ["provider", "patient"].iter().enumerate() {
                tx.insert_participant(&switchboard_store::ParticipantRow {
                    id: uuid::Uuid::new_v4().to_string(),
                    conference_id: c.id.clone(),
                    role: (*role).into(),
                    display_name: if k == 0 {
                        "Bench Org".into()
                    } else {
                        c.patient_name.clone()
                    },
                    epic_user: None,
                    state: "left".into(),
                    session_digest: uuid::Uuid::new_v4().to_string(),
                    client_id: "bench-th".into(),
                    arrived_at: c.started_at,
                    joined_at: Some(c.started_at),
                    left_at: Some(c.started_at + 600_000),
                    token_ref: None,
                    token_issued_at: None,
                    token_expires_at: None,
                    token_renewals: 0,
                    token_error: None,
                })
                .await
                .unwrap();
            }
            tx.end_conference(&c.id, c.started_at + 600_000, "the last participant left")
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let base = format!("http://{}", server.addr);
    let token = server.bootstrap_token.clone().unwrap();
    let login = http
        .post(format!("{base}/console/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    let session = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let cases = [
        (
            "api_first_page",
            format!("{base}/admin/api/v1/telehealth/conferences?state=ended"),
            false,
        ),
        (
            "api_search",
            format!("{base}/admin/api/v1/telehealth/conferences?state=ended&q=patient%209999"),
            false,
        ),
        (
            "console_first_page",
            format!("{base}/console/telehealth/conferences?state=ended"),
            true,
        ),
        (
            "console_search",
            format!("{base}/console/telehealth/conferences?state=ended&q=hist-42"),
            true,
        ),
    ];
    for (name, url, console) in cases {
        let mut times = Vec::new();
        for _ in 0..200 {
            let req = if console {
                http.get(&url).header("cookie", &session)
            } else {
                http.get(&url).bearer_auth(&token)
            };
            let t = Instant::now();
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{name}: {}", r.status());
            let body = r.text().await.unwrap();
            times.push(t.elapsed());
            assert!(body.contains("Bench Org"), "{name}");
        }
        println!("{name}_p50_ms {:.2}", percentile(&mut times, 0.50));
        println!("{name}_p99_ms {:.2}", percentile(&mut times, 0.99));
    }
    server.stop.cancel();
    sim.shutdown().await;
}
