//! Epic's encrypted launch context ("CAL token"): a `key=value&key=value` string encrypted with
//! AES-CBC and PKCS#7 padding, sent base64-encoded in one query parameter.
//!
//! - AES-256-CBC (Epic August 2019 and later): the key is 32 random bytes shared as base64.
//!   The IV is all zeros (default) or the first 16 bytes of the decoded blob (`prefixed`);
//!   which one a customer's Epic build uses is configured per profile (docs/epic-contract.md).
//! - AES-128-CBC (older Epic): the key is derived from a text password the way Microsoft's
//!   `CryptDeriveKey` does over SHA-1, with a zero IV.

use aws_lc_rs::cipher::{
    AES_128, AES_256, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use aws_lc_rs::iv::FixedLength;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchCryptoError {
    #[error("an AES-256 launch key must be 32 bytes of base64; this one is {0}")]
    BadKey(String),
    #[error("the launch password must not be empty")]
    EmptyPassword,
    /// Deliberately vague: the caller must not learn whether padding, length or base64 failed.
    #[error("the launch data could not be decrypted")]
    Undecryptable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IvMode {
    /// Sixteen zero bytes.
    #[default]
    Zero,
    /// A random IV, sent as the first 16 bytes of the blob.
    Prefixed,
}

/// A launch key, ready to use.
#[derive(Clone)]
pub enum LaunchKey {
    Aes256([u8; 32]),
    Aes128([u8; 16]),
}

impl std::fmt::Debug for LaunchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Aes256(_) => "LaunchKey::Aes256(..)",
            Self::Aes128(_) => "LaunchKey::Aes128(..)",
        })
    }
}

impl LaunchKey {
    pub fn aes256_from_base64(b64: &str) -> Result<Self, LaunchCryptoError> {
        let raw = STANDARD
            .decode(b64.trim())
            .map_err(|_| LaunchCryptoError::BadKey("not base64".to_owned()))?;
        let key: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| LaunchCryptoError::BadKey(format!("{} bytes", raw.len())))?;
        Ok(Self::Aes256(key))
    }

    /// The legacy key: `CryptDeriveKey(SHA-1(password))`, first 16 bytes. `CryptDeriveKey`
    /// derives `SHA-1(h ⊕ 0x36…) ‖ SHA-1(h ⊕ 0x5C…)`; 16 bytes come from the first half alone.
    pub fn aes128_from_password(password: &str) -> Result<Self, LaunchCryptoError> {
        if password.is_empty() {
            return Err(LaunchCryptoError::EmptyPassword);
        }
        let h = digest(&SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        let mut inner = [0x36u8; 64];
        for (i, b) in h.as_ref().iter().enumerate() {
            inner[i] ^= b;
        }
        let first_half = digest(&SHA1_FOR_LEGACY_USE_ONLY, &inner);
        let mut key = [0u8; 16];
        key.copy_from_slice(&first_half.as_ref()[..16]);
        Ok(Self::Aes128(key))
    }

    fn unbound(&self) -> Result<UnboundCipherKey, LaunchCryptoError> {
        match self {
            Self::Aes256(k) => UnboundCipherKey::new(&AES_256, k),
            Self::Aes128(k) => UnboundCipherKey::new(&AES_128, k),
        }
        .map_err(|_| LaunchCryptoError::BadKey("unusable".to_owned()))
    }

    /// Encrypts `plaintext` and returns standard base64 (with the IV in front for `Prefixed`).
    pub fn encrypt(&self, iv_mode: IvMode, plaintext: &[u8]) -> Result<String, LaunchCryptoError> {
        let key = PaddedBlockEncryptingKey::cbc_pkcs7(self.unbound()?)
            .map_err(|_| LaunchCryptoError::Undecryptable)?;
        let iv = match (iv_mode, self) {
            (IvMode::Prefixed, Self::Aes256(_)) => {
                let mut iv = [0u8; 16];
                aws_lc_rs::rand::fill(&mut iv).map_err(|_| LaunchCryptoError::Undecryptable)?;
                iv
            }
            _ => [0u8; 16],
        };
        let mut buf = plaintext.to_vec();
        key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .map_err(|_| LaunchCryptoError::Undecryptable)?;
        if iv_mode == IvMode::Prefixed && matches!(self, Self::Aes256(_)) {
            let mut out = iv.to_vec();
            out.extend_from_slice(&buf);
            buf = out;
        }
        Ok(STANDARD.encode(buf))
    }

    /// Decrypts a launch blob. Tolerates a `+` that arrived as a space. Every failure is the same
    /// error, so a caller cannot be used as a padding oracle.
    pub fn decrypt(&self, iv_mode: IvMode, blob: &str) -> Result<Vec<u8>, LaunchCryptoError> {
        let cleaned: String = blob
            .trim()
            .chars()
            .map(|c| if c == ' ' { '+' } else { c })
            .collect();
        let raw = STANDARD
            .decode(cleaned.as_bytes())
            .map_err(|_| LaunchCryptoError::Undecryptable)?;
        let (iv, body) = match (iv_mode, self) {
            (IvMode::Prefixed, Self::Aes256(_)) => {
                if raw.len() < 32 {
                    return Err(LaunchCryptoError::Undecryptable);
                }
                let mut iv = [0u8; 16];
                iv.copy_from_slice(&raw[..16]);
                (iv, raw[16..].to_vec())
            }
            _ => ([0u8; 16], raw),
        };
        if body.is_empty() || body.len() % 16 != 0 {
            return Err(LaunchCryptoError::Undecryptable);
        }
        let key = PaddedBlockDecryptingKey::cbc_pkcs7(self.unbound()?)
            .map_err(|_| LaunchCryptoError::Undecryptable)?;
        let mut buf = body;
        let plain = key
            .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
            .map_err(|_| LaunchCryptoError::Undecryptable)?;
        Ok(plain.to_vec())
    }
}

/// Splits `key=value&key=value` (form-encoded) into pairs, keeping order.
#[must_use]
pub fn parse_fields(plaintext: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(plaintext.as_bytes())
        .into_owned()
        .collect()
}

/// Builds `key=value&...`, form-encoded.
#[must_use]
pub fn format_fields<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=";

    #[test]
    fn aes256_round_trips_in_both_iv_modes() {
        let k = LaunchKey::aes256_from_base64(KEY).unwrap();
        for mode in [IvMode::Zero, IvMode::Prefixed] {
            let blob = k
                .encrypt(mode, b"fname=Beverley&lname=Spinder&apptid=6ea6")
                .unwrap();
            assert_eq!(
                k.decrypt(mode, &blob).unwrap(),
                b"fname=Beverley&lname=Spinder&apptid=6ea6"
            );
        }
    }

    #[test]
    fn a_plus_that_arrived_as_a_space_still_decrypts() {
        let k = LaunchKey::aes256_from_base64(KEY).unwrap();
        let blob = (0..50)
            .map(|i| {
                k.encrypt(IvMode::Zero, format!("n={i}").as_bytes())
                    .unwrap()
            })
            .find(|b| b.contains('+'))
            .unwrap();
        assert!(k.decrypt(IvMode::Zero, &blob.replace('+', " ")).is_ok());
    }

    #[test]
    fn wrong_keys_tampering_and_garbage_all_give_the_same_error() {
        let k = LaunchKey::aes256_from_base64(KEY).unwrap();
        let other = LaunchKey::aes256_from_base64(&STANDARD.encode([9u8; 32])).unwrap();
        let blob = k.encrypt(IvMode::Zero, b"a=1").unwrap();
        let mut raw = STANDARD.decode(&blob).unwrap();
        raw[0] ^= 0x55;
        for bad in [
            other.decrypt(IvMode::Zero, &blob),
            k.decrypt(IvMode::Zero, &STANDARD.encode(&raw)),
            k.decrypt(IvMode::Zero, "not base64!"),
            k.decrypt(IvMode::Zero, ""),
        ] {
            if let Err(e) = bad {
                assert_eq!(e, LaunchCryptoError::Undecryptable);
            }
        }
        assert_eq!(
            other
                .decrypt(IvMode::Zero, &blob)
                .ok()
                .filter(|p| p == b"a=1"),
            None
        );
    }

    #[test]
    fn keys_that_are_not_32_bytes_of_base64_are_refused() {
        assert!(LaunchKey::aes256_from_base64(&STANDARD.encode([1u8; 16])).is_err());
        assert!(LaunchKey::aes256_from_base64("???").is_err());
        assert_eq!(
            LaunchKey::aes128_from_password("").unwrap_err(),
            LaunchCryptoError::EmptyPassword
        );
    }

    #[test]
    fn the_legacy_password_key_round_trips_with_a_zero_iv() {
        let k = LaunchKey::aes128_from_password("correct horse").unwrap();
        let blob = k.encrypt(IvMode::Prefixed, b"user=DOC1").unwrap();
        assert_eq!(
            k.decrypt(IvMode::Zero, &blob).unwrap(),
            b"user=DOC1",
            "legacy mode ignores the IV mode"
        );
    }

    #[test]
    fn fields_round_trip_with_reserved_characters() {
        let s = format_fields([
            ("fname", "Beverley"),
            ("dept", "Radiology & Imaging"),
            ("x", "a=b"),
        ]);
        assert_eq!(
            parse_fields(&s),
            vec![
                ("fname".into(), "Beverley".into()),
                ("dept".into(), "Radiology & Imaging".into()),
                ("x".into(), "a=b".into())
            ]
        );
    }
}
