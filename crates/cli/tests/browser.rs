//! The console in a real browser: headless Chromium driven by Playwright (`tests/browser/`).
//! Runs when `SWITCHBOARD_TEST_BROWSER=1` (set by `scripts/test` when Chromium and the npm
//! packages are installed); otherwise it says it was skipped.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_and_shows_the_audit_log_in_headless_chromium() {
    if std::env::var("SWITCHBOARD_TEST_BROWSER").as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED (browser): set SWITCHBOARD_TEST_BROWSER=1 with Chromium and tests/browser/node_modules installed"
        );
        return;
    }
    let s = common::TestServer::sqlite().await;
    let sim = switchboard_epic_sim::start(switchboard_epic_sim::SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = std::env::temp_dir().join("switchboard-console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let out = tokio::process::Command::new("node")
        .arg("--test")
        // One file at a time, in name order: they share the server and its data.
        .arg("--test-concurrency=1")
        .arg("tests/browser/")
        .current_dir(&root)
        .env("SWITCHBOARD_URL", &s.url)
        .env("SWITCHBOARD_TOKEN", &s.admin_token)
        .env("SIM_URL", sim.base_url())
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("# pass") && !stdout.contains("# pass 0"),
        "no browser test ran\n{stdout}"
    );
    sim.shutdown().await;
    s.stop().await;
}
