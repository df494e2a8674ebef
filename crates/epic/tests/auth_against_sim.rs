//! The backend OAuth client against `switchboard epic-sim`: tokens with RS384 and ES384, one
//! fetch for 200 concurrent callers, classified failures that are never cached.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use axum::routing::get;
use std::sync::{Arc, Mutex};
use switchboard_epic::auth::{BackendCredentials, EpicAuthError, TokenCache};
use switchboard_epic::jose::{Alg, JwkSet, SigningKey};
use switchboard_epic_sim::{ClientConfig, RunningSim, SimConfig, start};

const INSTANCE: &str = "interconnect-tst";

async fn jwks(keys: Arc<Mutex<JwkSet>>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            let set = keys.lock().unwrap().clone();
            async move { axum::Json(set) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    url
}

async fn setup(alg: Alg, background_user: bool, lifetime: u64) -> (RunningSim, BackendCredentials) {
    let key = SigningKey::generate(alg).unwrap();
    let keys = Arc::new(Mutex::new(JwkSet {
        keys: vec![key.public_jwk("kid-1", alg)],
    }));
    let url = jwks(keys).await;
    let cfg = SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_lifetime_secs: lifetime,
        clients: vec![ClientConfig {
            client_id: "sb-client".into(),
            jwks_url: Some(url),
            background_user,
            ..ClientConfig::default()
        }],
        ..SimConfig::default()
    };
    let sim = start(cfg).await.unwrap();
    let creds = BackendCredentials {
        client_id: "sb-client".into(),
        token_url: sim.token_url(INSTANCE),
        key: Arc::new(key),
        kid: "kid-1".into(),
        alg,
        jku: None,
    };
    (sim, creds)
}

fn token_calls(sim: &RunningSim) -> usize {
    sim.sim
        .calls()
        .iter()
        .filter(|c| c.path.ends_with("/oauth2/token"))
        .count()
}

#[tokio::test]
async fn tokens_are_acquired_with_rs384_and_es384_and_then_served_from_the_cache() {
    for alg in [Alg::RS384, Alg::ES384] {
        let (sim, creds) = setup(alg, true, 3600).await;
        let cache = TokenCache::new(reqwest::Client::new());
        let a = cache.token(&creds).await.unwrap();
        let b = cache.token(&creds).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(
            token_calls(&sim),
            1,
            "{alg}: the second call is served from the cache"
        );
        assert_eq!(cache.stats().fetches, 1);
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_callers_with_an_empty_cache_cause_exactly_one_token_request() {
    let (sim, creds) = setup(Alg::RS384, true, 3600).await;
    let cache = TokenCache::new(reqwest::Client::new());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (cache, creds) = (cache.clone(), creds.clone());
        tasks.push(tokio::spawn(
            async move { cache.token(&creds).await.unwrap() },
        ));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(token_calls(&sim), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let (sim, creds) = setup(Alg::RS384, true, 2).await;
    let cache = TokenCache::new(reqwest::Client::new());
    let first = cache.token(&creds).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = cache.token(&creds).await.unwrap();
    assert_ne!(first, second, "renewed at half of a 2-second lifetime");
    assert_eq!(token_calls(&sim), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_without_a_background_user_gets_the_mapping_hint() {
    let (sim, creds) = setup(Alg::RS384, false, 3600).await;
    let err = TokenCache::new(reqwest::Client::new())
        .token(&creds)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EpicAuthError::NotMapped {
            client_id: "sb-client".into()
        }
    );
    assert!(
        err.to_string()
            .contains("map a background user to client sb-client")
    );
    assert!(!err.is_retryable());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_key_is_rejected_with_the_jwk_url_hint() {
    let (sim, mut creds) = setup(Alg::RS384, true, 3600).await;
    creds.key = Arc::new(SigningKey::generate(Alg::RS384).unwrap());
    let err = TokenCache::new(reqwest::Client::new())
        .token(&creds)
        .await
        .unwrap_err();
    assert_eq!(err.class(), "rejected");
    assert!(err.to_string().contains("12 hours"));
    sim.shutdown().await;
}

#[tokio::test]
async fn epic_down_is_classified_retryable_and_nothing_is_cached() {
    let (sim, creds) = setup(Alg::RS384, true, 3600).await;
    sim.sim
        .add_fault(switchboard_epic_sim::faults::parse_fault_spec("/oauth2/token:503").unwrap());
    let cache = TokenCache::new(reqwest::Client::new());
    let err = cache.token(&creds).await.unwrap_err();
    assert_eq!(err, EpicAuthError::EpicDown { status: 503 });
    assert!(err.is_retryable());
    sim.sim.clear_faults();
    assert!(
        cache.token(&creds).await.is_ok(),
        "the failure was not cached"
    );
    assert_eq!(cache.stats().fetches, 2);
    let gone = BackendCredentials {
        token_url: "http://127.0.0.1:9/nothing/oauth2/token".into(),
        ..creds
    };
    assert_eq!(cache.token(&gone).await.unwrap_err().class(), "network");
    sim.shutdown().await;
}

#[test]
fn pyjwt_verifies_our_assertions_against_our_published_keys_and_every_epic_claim_rule() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers/verify_assertion.py");
    let have_peer = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_peer {
        assert!(std::env::var_os("CI").is_none(), "PyJWT is required on CI");
        eprintln!("SKIPPED (peer): pip install -r tests/peers/requirements.txt");
        return;
    }
    let token_url = "https://epic.example/interconnect-prd-oauth/oauth2/token";
    let mut seen_jti = std::collections::HashSet::new();
    for alg in [Alg::RS384, Alg::ES384] {
        let key = SigningKey::generate(alg).unwrap();
        let jwks = serde_json::to_string(&JwkSet {
            keys: vec![key.public_jwk("k-2026", alg)],
        })
        .unwrap();
        let creds = BackendCredentials {
            client_id: "sb-client".into(),
            token_url: token_url.into(),
            key: Arc::new(key),
            kid: "k-2026".into(),
            alg,
            jku: None,
        };
        for _ in 0..3 {
            let assertion = creds.assertion().unwrap();
            let out = std::process::Command::new("python3")
                .arg(&script)
                .args([jwks.as_str(), assertion.as_str(), "sb-client", token_url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{alg}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let parsed = switchboard_epic::jose::Unverified::parse(&assertion).unwrap();
            assert!(
                seen_jti.insert(parsed.claims["jti"].as_str().unwrap().to_owned()),
                "jti values are unique"
            );
        }
    }
}
