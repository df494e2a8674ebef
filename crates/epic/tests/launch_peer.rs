//! Launch tokens cross-checked with Python's `cryptography`: what it encrypts we decrypt, and the
//! other way round, for AES-256-CBC (zero and prefixed IV) and the legacy password mode.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use switchboard_epic::launch::{IvMode, LaunchKey};

fn peer(args: &[&str]) -> Option<String> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/launch_crypto.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named"), "peer failed: {err}");
        assert!(
            std::env::var_os("CI").is_none(),
            "Python `cryptography` is required on CI"
        );
        eprintln!("SKIPPED (peer): pip install -r tests/peers/requirements.txt");
        return None;
    }
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[test]
fn launch_tokens_interoperate_with_python_cryptography() {
    let plaintext = "fname=Beverley&mname=P&lname=Spinder&apptid=6ea6d1427f684721abd21c1634386f7b6&dept=Radiology&ts=1795523939";
    let b64 = "fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=";
    let cases = [
        (
            b64.to_owned(),
            LaunchKey::aes256_from_base64(b64).unwrap(),
            IvMode::Zero,
            "zero",
        ),
        (
            b64.to_owned(),
            LaunchKey::aes256_from_base64(b64).unwrap(),
            IvMode::Prefixed,
            "prefixed",
        ),
        (
            "password:Epic-legacy-2018".to_owned(),
            LaunchKey::aes128_from_password("Epic-legacy-2018").unwrap(),
            IvMode::Zero,
            "zero",
        ),
    ];
    for (key_arg, key, mode, mode_arg) in cases {
        let Some(theirs) = peer(&["encrypt", &key_arg, mode_arg, plaintext]) else {
            return;
        };
        assert_eq!(
            key.decrypt(mode, &theirs).unwrap(),
            plaintext.as_bytes(),
            "{key_arg} {mode_arg}: we decrypt theirs"
        );
        let ours = key.encrypt(mode, plaintext.as_bytes()).unwrap();
        assert_eq!(
            peer(&["decrypt", &key_arg, mode_arg, &ours]).unwrap(),
            plaintext,
            "{key_arg} {mode_arg}: they decrypt ours"
        );
    }
}
