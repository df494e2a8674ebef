//! Shift-change benchmark: N simulated devices (agent-sim) checked out, their clinicians signed in
//! to Rover and Haiku in the Epic simulator, then all checked in by 64 concurrent clients through
//! the admin API. Each check-in force-quits both apps on the device and queues two Epic API
//! logouts (DisassociateMobileDevice). Server, simulator and agents share this process and this
//! machine. Prints `key value` lines for bench/shift-change.sh.
//!
//!   shift_change [sqlite|postgres] [DEVICES] [CLIENTS] [clean|faults] [full|normal]
//!
//! `faults` makes the simulator answer 20 % of logouts with 503 and time out 5 % of them;
//! `normal` runs SQLite with synchronous=NORMAL (a power cut may lose the last commits).
//! With `SB_EMPTY_WORKFLOW=1` the group has no check-in steps: the check-in API alone, with no
//! device commands and no Epic jobs competing for the machine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a benchmark fails loudly and prints rounded figures"
)]

use serde_json::{Value, json};

/// The allocator of the `switchboard` binary, so the server here runs as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Check-in latencies by when they started, 100 ms at a time (SB_TIMELINE=1).
fn print_timeline(timeline: &[(Duration, Duration)]) {
    let mut buckets: std::collections::BTreeMap<u128, Vec<Duration>> = Default::default();
    for (start, took) in timeline {
        buckets
            .entry(start.as_millis() / 100)
            .or_default()
            .push(*took);
    }
    for (b, mut v) in buckets {
        let n = v.len();
        println!(
            "timeline {:>5} ms n {:>4} p50 {:>6.1} p99 {:>6.1} max {:>6.1}",
            b * 100,
            n,
            percentile(&mut v, 0.5),
            percentile(&mut v, 0.99),
            percentile(&mut v, 1.0)
        );
    }
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).cloned().unwrap_or_else(|| "sqlite".into());
    let devices: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let clients: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(64);
    let faults = args.get(4).is_some_and(|a| a == "faults");
    let sync = if args.get(5).is_some_and(|a| a == "normal") {
        switchboard_app::config::SqliteSync::Normal
    } else {
        switchboard_app::config::SqliteSync::Full
    };
    let empty_workflow = std::env::var("SB_EMPTY_WORKFLOW").is_ok();
    let dir = tempfile::tempdir().unwrap();
    let pg_server = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_url = if backend == "postgres" {
        switchboard_store::testing::create_postgres_database(&pg_server).await
    } else {
        format!("sqlite://{}", dir.path().join("bench.db").display())
    };
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
    let config = switchboard_app::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        database_url: Some(secrecy::SecretString::from(db_url.clone())),
        // The product's default pool unless SB_DB_CONNECTIONS says otherwise (on PostgreSQL
        // sharing 2 cores, 12-16 connections did best: 64 gave 800 check-ins/s, 16 about 1,100).
        database_max_connections: std::env::var("SB_DB_CONNECTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(switchboard_app::Config::default().database_max_connections),
        sqlite_synchronous: sync,
        log_level: "warn".to_owned(),
        job_concurrency: 32,
        job_backoff_base_ms: 500,
        max_body_bytes: 1024 * 1024,
        audit_chains: std::env::var("SB_AUDIT_CHAINS")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    let server = switchboard_cli::start(config, switchboard_cli::standard_registry())
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let token = server.bootstrap_token.clone().unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let api = |p: &str| format!("{url}/admin/api/v1{p}");
    let post = |p: String, body: Value| {
        let http = http.clone();
        let token = token.clone();
        async move {
            let r = http
                .post(p)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Environment registered with the simulator, a location, a group with the workflow.
    let (st, env) = post(
        api("/epic-environments"),
        json!({"name": "Sim", "kind": "non_production", "interconnect_url": sim.base_url(), "instance": "interconnect-tst",
               "client_id": "bench-shift", "apps": ["Rover", "Haiku"], "publish_delay_secs": 0, "timeout_ms": 1000}),
    )
    .await;
    assert_eq!(st, 201, "{env}");
    let env_id = env["id"].as_str().unwrap().to_owned();
    http.post(format!("{}/_sim/clients", sim.base_url()))
        .json(&json!({"client_id": "bench-shift", "jwks_url": env["key_set"]["jwk_url"], "apis": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        post(
            api("/devices/locations"),
            json!({"id": "icu", "name": "ICU"})
        )
        .await
        .0,
        201
    );
    let (st, group) = post(
        api("/devices/groups"),
        if empty_workflow {
            json!({"name": "ICU phones", "lending_minutes": 780, "workflows": {"ios": []}})
        } else {
            json!({"name": "ICU phones", "lending_minutes": 780, "workflows": {"ios": [
                {"action": "force_quit", "app_id": "com.epic.rover"},
                {"action": "force_quit", "app_id": "com.epic.haiku"},
                {"action": "epic_logout", "environment_id": env_id, "app": "Rover"},
                {"action": "epic_logout", "environment_id": env_id, "app": "Haiku"}]}})
        },
    )
    .await;
    assert_eq!(st, 201, "{group}");
    let (_, et) = post(
        api("/devices/enrolment-tokens"),
        json!({"name": "bench", "group_id": group["id"], "location_id": "icu"}),
    )
    .await;
    // The directory: one clinician per device, imported as CSV.
    let mut csv = String::from("username,display_name,badge\n");
    for i in 0..devices {
        csv.push_str(&format!("rn{i:05},Nurse {i},{}\n", 700_000 + i));
    }
    let r = http
        .post(api("/devices/users/import"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let t = Instant::now();
    let agents = switchboard_agent_sim::start(switchboard_agent_sim::AgentSimConfig {
        server: url.clone(),
        enrolment_token: et["secret"].as_str().unwrap().to_owned(),
        devices,
        serial_prefix: "SHIFT".into(),
        epic_apps: vec!["Rover".into(), "Haiku".into()],
        delay: Duration::from_millis(10),
        heartbeat: Duration::from_secs(120),
        poll_wait_secs: 20,
        epic_sim: Some(sim.base_url()),
        ..Default::default()
    })
    .await
    .unwrap();
    println!("enrolled {devices}");
    println!("enrol_s {:.1}", t.elapsed().as_secs_f64());
    let serials: Vec<String> = agents
        .devices
        .iter()
        .map(|d| d.lock().unwrap().serial.clone())
        .collect();

    // Check every device out (64 at a time), then wait for the sign-ins to reach Epic.
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(clients));
    let mut tasks = Vec::new();
    for (i, serial) in serials.iter().enumerate() {
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        let fut = post(
            api("/devices/checkout"),
            json!({"user": format!("rn{i:05}"), "device": serial}),
        );
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    println!("checkout_s {:.1}", t.elapsed().as_secs_f64());
    let want = devices * 2;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let m: Value = http
            .get(format!("{}/_sim/mobile", sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m.as_array().unwrap().len() >= want {
            break;
        }
        assert!(Instant::now() < deadline, "sign-ins did not all arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A shift change comes hours after the check-outs, when every check-out's device commands
    // (show_ready) have long been confirmed. Wait for that, so that the check-in phase does not
    // also carry the tail of the check-out phase (about 1,800 confirmations still on their way
    // at this point on a 2-core machine); SB_OVERLAP_CHECKOUT=1 starts at once, as before.
    if std::env::var("SB_OVERLAP_CHECKOUT").is_err() {
        let t = Instant::now();
        let mut waiting = serials.clone();
        while !waiting.is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "check-out commands not confirmed"
            );
            let mut tx = server.app.store().read().await.unwrap();
            let mut open = Vec::new();
            for serial in waiting {
                let d = tx.get_device(&serial).await.unwrap().unwrap();
                let commands = tx.device_commands(&d.id, 10).await.unwrap();
                if commands
                    .iter()
                    .any(|c| c.state == "queued" || c.state == "delivered")
                {
                    open.push(serial);
                }
            }
            drop(tx);
            waiting = open;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("checkout_settled_s {:.1}", t.elapsed().as_secs_f64());
    }
    if faults {
        for rule in [
            json!({"path_contains": "DisassociateMobileDevice", "rate": 0.2, "effect": {"kind": "status", "status": 503}}),
            json!({"path_contains": "DisassociateMobileDevice", "rate": 0.0625, "effect": {"kind": "timeout", "hold_ms": 3000}}),
        ] {
            let r = http
                .post(format!("{}/_sim/faults", sim.base_url()))
                .json(&rule)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    }
    http.delete(format!("{}/_sim/calls", sim.base_url()))
        .send()
        .await
        .unwrap();
    let since = switchboard_app::now_ms();

    let writer_before = server.app.store().pool_stats().writer;
    let cpu_before = cpu_ticks();
    let machine_before = machine_ticks();
    // The shift change: every device checked in by 64 concurrent clients.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(clients));
    let mut tasks = Vec::new();
    for serial in &serials {
        let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
        let fut = post(api(&format!("/devices/{serial}/checkin")), json!({}));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = fut.await;
            drop(permit);
            assert_eq!(r.0, 200, "{}", r.1);
            (t.duration_since(t0), t.elapsed())
        }));
    }
    let mut lat = Vec::new();
    let mut timeline = Vec::new();
    for t in tasks {
        let (start, took) = t.await.unwrap();
        timeline.push((start, took));
        lat.push(took);
    }
    if std::env::var_os("SB_TIMELINE").is_some() {
        print_timeline(&timeline);
    }
    let checkin_s = t0.elapsed().as_secs_f64();
    let last_checkin = Instant::now();
    println!("checkins {}", lat.len());
    println!("checkin_total_s {checkin_s:.2}");
    println!("checkins_per_s {:.0}", lat.len() as f64 / checkin_s);
    println!("checkin_p50_ms {:.1}", percentile(&mut lat, 0.5));
    // The check-ins that started in the first 200 ms (every connection's first run of the
    // check-in's statements: PostgreSQL parses and plans them) against the rest.
    let cold = Duration::from_millis(200);
    let (mut first, mut later): (Vec<Duration>, Vec<Duration>) = (
        timeline
            .iter()
            .filter(|(s, _)| *s < cold)
            .map(|(_, t)| *t)
            .collect(),
        timeline
            .iter()
            .filter(|(s, _)| *s >= cold)
            .map(|(_, t)| *t)
            .collect(),
    );
    println!("checkin_p99_ms {:.1}", percentile(&mut lat, 0.99));
    println!("checkin_p90_ms {:.1}", percentile(&mut lat, 0.90));
    println!("checkin_max_ms {:.1}", percentile(&mut lat, 1.0));
    println!(
        "checkin_first_200ms_p99_ms {:.1}",
        percentile(&mut first, 0.99)
    );
    println!(
        "checkin_after_200ms_p99_ms {:.1}",
        percentile(&mut later, 0.99)
    );
    // Everything in this process (server, simulator, agents, clients) shares the machine's cores.
    if let (Some(b), Some(a)) = (cpu_before, cpu_ticks()) {
        println!("cpu_cores_busy {:.2}", (a - b) as f64 / 100.0 / checkin_s);
    }
    // The whole machine, PostgreSQL's processes included; and the share of its time the
    // hypervisor gave to other guests (a virtual machine's figures swing with it).
    if let (Some(b), Some(a)) = (machine_before, machine_ticks()) {
        println!(
            "machine_cores_busy {:.2}",
            (a.busy - b.busy) as f64 / 100.0 / checkin_s
        );
        println!(
            "machine_steal_pct {:.0}",
            (a.steal - b.steal) as f64 * 100.0 / (a.all - b.all).max(1) as f64
        );
    }
    // SQLite's one writer during the check-ins: its busy share of the wall clock (held by write
    // transactions plus group commits) and its time per write transaction.
    if let (Some(b), Some(a)) = (writer_before, server.app.store().pool_stats().writer) {
        let busy_us = (a.held_us - b.held_us) + (a.commit_us - b.commit_us);
        let txs = (a.transactions - b.transactions).max(1);
        println!("writer_busy_pct {:.0}", busy_us as f64 / (checkin_s * 1e4));
        println!("writer_tx_per_checkin {:.1}", txs as f64 / lat.len() as f64);
        println!(
            "writer_background_tx_per_checkin {:.1}",
            (a.background - b.background) as f64 / lat.len() as f64
        );
        println!(
            "writer_us_per_tx {:.0}",
            (a.held_us - b.held_us) as f64 / txs as f64
        );
        println!(
            "writer_tx_per_group_commit {:.1}",
            txs as f64 / (a.group_commits - b.group_commits).max(1) as f64
        );
    }

    // Every logout delivered: all server steps final and the simulator knows no sign-in.
    let limit = if faults { 300 } else { 120 };
    let deadline = Instant::now() + Duration::from_secs(limit);
    let totals = loop {
        let t = server.app.logout_totals(since).await.unwrap();
        // Without steps there is nothing to deliver.
        if t.open == 0 && (empty_workflow || t.server_steps as usize >= want) {
            break t;
        }
        assert!(Instant::now() < deadline, "logouts not delivered: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "logouts_delivered_after_last_checkin_s {:.1}",
        last_checkin.elapsed().as_secs_f64()
    );
    let m: Value = http
        .get(format!("{}/_sim/mobile", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let calls: Value = http
        .get(format!("{}/_sim/calls", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let disassociate_calls = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("DisassociateMobileDevice"))
        })
        .count();
    println!("logout_steps {}", totals.server_steps);
    println!("logout_done {}", totals.done);
    println!("logout_failed {}", totals.failed);
    println!("logout_attempts {}", totals.attempts);
    println!("repeats_after_unknown_outcome {}", totals.repeats);
    println!("disassociate_calls_seen_by_epic {disassociate_calls}");
    println!("sign_ins_left_in_epic {}", m.as_array().unwrap().len());
    // Devices back to available once the agents confirmed the force-quits.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d: Value = http
            .get(api("/devices?status=available"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if d.as_array().unwrap().len() == devices {
            break;
        }
        assert!(Instant::now() < deadline, "devices did not all come back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "devices_available_after_last_checkin_s {:.1}",
        last_checkin.elapsed().as_secs_f64()
    );
    println!(
        "agent_errors {}",
        agents
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    agents.stop().await;
    server.shutdown().await.unwrap();
    sim.shutdown().await;
    if backend == "postgres" {
        switchboard_store::testing::drop_postgres_database(&pg_server, &db_url).await;
    }
}

/// This process's CPU time so far, in clock ticks (1/100 s on Linux), from `/proc/self/stat`.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) are space-separated; utime and
    // stime are the 14th and 15th of the line, the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks of all cores so far, from `/proc/stat`: busy (everything but idle, I/O wait and
/// steal), stolen by the hypervisor for other guests, and in all.
fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let steal = *cpu.get(7)?;
    let all: u64 = cpu.iter().sum();
    Some(MachineTicks {
        busy: all - cpu.get(3)? - cpu.get(4)? - steal,
        steal,
        all,
    })
}

#[derive(Clone, Copy)]
struct MachineTicks {
    busy: u64,
    steal: u64,
    all: u64,
}
