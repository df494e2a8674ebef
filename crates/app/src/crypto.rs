//! Small cryptographic helpers over aws-lc-rs: randomness, digests, constant-time comparison.

use aws_lc_rs::{constant_time, digest, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `n` bytes from the operating system's CSPRNG.
#[must_use]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[expect(
        clippy::expect_used,
        reason = "the OS CSPRNG failing is not recoverable"
    )]
    rand::fill(&mut buf).expect("operating system random generator");
    buf
}

/// A uniformly random number in `[0, 1)` (for jitter).
#[must_use]
pub fn random_unit() -> f64 {
    let b = random_bytes::<8>();
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A high-entropy secret with a readable prefix: `<prefix>_<43 chars of base64url>`.
#[must_use]
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

#[must_use]
pub fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// SHA-256 as lower-case hex.
#[must_use]
pub fn sha256_hex(data: &str) -> String {
    hex::encode(sha256(data.as_bytes()))
}

#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// An HS256 JWT over `claims` (Jitsi room tokens, gateway access tokens).
#[must_use]
pub fn hs256_jwt(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{body}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// The claims of an HS256 JWT made by [`hs256_jwt`] with `secret`, if the signature holds.
#[must_use]
pub fn verify_hs256_jwt(secret: &[u8], token: &str) -> Option<serde_json::Value> {
    let (input, sig) = token.rsplit_once('.')?;
    let (header, body) = input.split_once('.')?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header["alg"] != "HS256" {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::verify(&key, input.as_bytes(), &sig).ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_and_distinct() {
        let a = new_secret("sbt");
        let b = new_secret("sbt");
        assert!(a.starts_with("sbt_"));
        assert_eq!(a.len(), 4 + 43);
        assert_ne!(a, b);
    }

    #[test]
    fn random_units_stay_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
