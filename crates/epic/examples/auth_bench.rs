//! Benchmark for Epic backend OAuth (run by `bench/epic-auth.sh`): assertion signing rate per
//! algorithm, the cost of a cached-token lookup, and the cache hit rate of a steady stream of
//! calls against the simulator with short-lived tokens (so renewals happen during the run).
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark program"
)]

use axum::routing::get;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_epic::auth::{BackendCredentials, TokenCache};
use switchboard_epic::jose::{Alg, JwkSet, SigningKey};

fn signing_rate(alg: Alg, secs: f64) -> f64 {
    let creds = BackendCredentials {
        client_id: "bench".into(),
        token_url: "https://epic.example/x-oauth/oauth2/token".into(),
        key: Arc::new(SigningKey::generate(alg).unwrap()),
        kid: "k".into(),
        alg,
        jku: None,
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        std::hint::black_box(creds.assertion().unwrap());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3.0);
    let rs = signing_rate(Alg::RS384, secs);
    let es = signing_rate(Alg::ES384, secs);

    let key = SigningKey::generate(Alg::RS384).unwrap();
    let keys = Arc::new(Mutex::new(JwkSet {
        keys: vec![key.public_jwk("k1", Alg::RS384)],
    }));
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let set = keys.lock().unwrap().clone();
            async move { axum::Json(set) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    let sim = switchboard_epic_sim::start(switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_lifetime_secs: 2,
        clients: vec![switchboard_epic_sim::ClientConfig {
            client_id: "bench".into(),
            jwks_url: Some(jwks_url),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let creds = BackendCredentials {
        client_id: "bench".into(),
        token_url: sim.token_url("interconnect-tst"),
        key: Arc::new(key),
        kid: "k1".into(),
        alg: Alg::RS384,
        jku: None,
    };
    let cache = TokenCache::new(reqwest::Client::new());
    cache.token(&creds).await.unwrap();

    // Cost of a lookup served from the cache.
    let n = 1_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(cache.token(&creds).await.unwrap());
    }
    let lookup_ns = start.elapsed().as_nanos() as f64 / f64::from(n);

    // A steady stream: 8 callers, each a call every 200 µs, for `secs * 2` seconds (tokens live 2 s).
    let before = cache.stats();
    let run = Duration::from_secs_f64(secs * 2.0);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, creds) = (cache.clone(), creds.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed() < run {
                cache.token(&creds).await.unwrap();
                calls += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let after = cache.stats();
    let fetches = after.fetches - before.fetches;
    let hits = after.hits - before.hits;
    let hit_rate = 100.0 * hits as f64 / (hits + fetches) as f64;
    println!("rs384_signatures_per_sec {rs:.0}");
    println!("es384_signatures_per_sec {es:.0}");
    println!("cached_lookup_ns {lookup_ns:.0}");
    println!("stream_calls {calls}");
    println!("stream_token_fetches {fetches}");
    println!("stream_cache_hit_percent {hit_rate:.3}");
    sim.shutdown().await;
}
