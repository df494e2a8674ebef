//! JSON Web Signatures (compact form) and JSON Web Keys, over aws-lc-rs.
//!
//! Only the algorithms Epic accepts for client assertions: RS256 / RS384 / RS512 (RSA ≥ 2048
//! bits) and ES256 / ES384. Parsed keys are kept, so signing and verifying do not re-parse.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
}

impl Alg {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    #[must_use]
    pub const fn is_ec(self) -> bool {
        matches!(self, Self::ES256 | Self::ES384)
    }

    /// The curve an ES algorithm signs on.
    #[must_use]
    pub const fn curve(self) -> Option<&'static str> {
        match self {
            Self::ES256 => Some("P-256"),
            Self::ES384 => Some("P-384"),
            _ => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = JoseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Self::RS256),
            "RS384" => Ok(Self::RS384),
            "RS512" => Ok(Self::RS512),
            "ES256" => Ok(Self::ES256),
            "ES384" => Ok(Self::ES384),
            other => Err(JoseError::UnsupportedAlg(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoseError {
    #[error("not a compact JWS (three base64url parts separated by dots)")]
    Malformed,
    #[error("the JWS header is not valid JSON: {0}")]
    BadHeader(String),
    #[error("the JWT claims are not a JSON object: {0}")]
    BadClaims(String),
    #[error("algorithm `{0}` is not supported (RS256, RS384, RS512, ES256, ES384)")]
    UnsupportedAlg(String),
    #[error("the key does not suit algorithm {0}")]
    KeyMismatch(Alg),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("unusable key: {0}")]
    BadKey(String),
    #[error("signing failed")]
    SigningFailed,
}

/// A JSON Web Key (public parts only, as published in a JWK set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    #[must_use]
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may have signed a JWT: the one named by `kid`, or without a `kid` every
    /// key of the algorithm's family.
    #[must_use]
    pub fn candidates(&self, kid: Option<&str>, alg: Alg) -> Vec<&Jwk> {
        match kid {
            Some(kid) => self.find(kid).into_iter().collect(),
            None => self
                .keys
                .iter()
                .filter(|k| (k.kty == "EC") == alg.is_ec())
                .collect(),
        }
    }
}

/// A parsed public key ready to verify signatures.
#[derive(Debug, Clone)]
pub enum VerifyingKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: &'static str, point: Vec<u8> },
}

fn b64(field: &str, v: Option<&String>) -> Result<Vec<u8>, JoseError> {
    let v = v.ok_or_else(|| JoseError::BadKey(format!("missing `{field}`")))?;
    B64.decode(v)
        .map_err(|_| JoseError::BadKey(format!("`{field}` is not base64url")))
}

impl VerifyingKey {
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        match jwk.kty.as_str() {
            "RSA" => {
                let n = b64("n", jwk.n.as_ref())?;
                let e = b64("e", jwk.e.as_ref())?;
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(JoseError::BadKey(format!(
                        "RSA key of {bits} bits; at least 2048 are required"
                    )));
                }
                Ok(Self::Rsa { n, e })
            }
            "EC" => {
                let curve = match jwk.crv.as_deref() {
                    Some("P-256") => "P-256",
                    Some("P-384") => "P-384",
                    other => return Err(JoseError::BadKey(format!("unsupported curve {other:?}"))),
                };
                let (x, y) = (b64("x", jwk.x.as_ref())?, b64("y", jwk.y.as_ref())?);
                let size = if curve == "P-256" { 32 } else { 48 };
                if x.len() != size || y.len() != size {
                    return Err(JoseError::BadKey(format!(
                        "{curve} coordinates must be {size} bytes"
                    )));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(Self::Ec { curve, point })
            }
            other => Err(JoseError::BadKey(format!("unsupported key type `{other}`"))),
        }
    }

    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> Result<(), JoseError> {
        match (self, alg) {
            (Self::Rsa { n, e }, Alg::RS256 | Alg::RS384 | Alg::RS512) => {
                let params = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA512,
                };
                PublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .verify(params, message, sig)
                .map_err(|_| JoseError::BadSignature)
            }
            (Self::Ec { curve, point }, Alg::ES256 | Alg::ES384) if alg.curve() == Some(curve) => {
                let a = if alg == Alg::ES256 {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                UnparsedPublicKey::new(a, point)
                    .verify(message, sig)
                    .map_err(|_| JoseError::BadSignature)
            }
            _ => Err(JoseError::KeyMismatch(alg)),
        }
    }
}

/// A JWS header as Epic reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jku: Option<String>,
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub header: Header,
    pub claims: serde_json::Map<String, serde_json::Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl Unverified {
    pub fn parse(token: &str) -> Result<Self, JoseError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Malformed);
        };
        let hb = B64.decode(h).map_err(|_| JoseError::Malformed)?;
        let cb = B64.decode(c).map_err(|_| JoseError::Malformed)?;
        let signature = B64.decode(s).map_err(|_| JoseError::Malformed)?;
        let header: Header =
            serde_json::from_slice(&hb).map_err(|e| JoseError::BadHeader(e.to_string()))?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&cb).map_err(|e| JoseError::BadClaims(e.to_string()))?;
        Ok(Self {
            header,
            claims,
            signing_input: format!("{h}.{c}"),
            signature,
        })
    }

    pub fn alg(&self) -> Result<Alg, JoseError> {
        self.header.alg.parse()
    }

    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), JoseError> {
        key.verify(self.alg()?, self.signing_input.as_bytes(), &self.signature)
    }
}

/// A private key that signs client assertions. Holds the parsed key; export with [`Self::to_pkcs8`].
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, Alg),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rsa(_) => "SigningKey::Rsa(..)",
            Self::Ec(..) => "SigningKey::Ec(..)",
        })
    }
}

impl SigningKey {
    /// A fresh key for `alg`: RSA 2048 for RS*, P-256 / P-384 for ES256 / ES384.
    pub fn generate(alg: Alg) -> Result<Self, JoseError> {
        match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 => RsaKeyPair::generate(KeySize::Rsa2048)
                .map(Self::Rsa)
                .map_err(|_| JoseError::SigningFailed),
            Alg::ES256 => EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .map(|k| Self::Ec(k, alg))
                .map_err(|_| JoseError::SigningFailed),
            Alg::ES384 => EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)
                .map(|k| Self::Ec(k, alg))
                .map_err(|_| JoseError::SigningFailed),
        }
    }

    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Self, JoseError> {
        match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 => RsaKeyPair::from_pkcs8(der)
                .map(Self::Rsa)
                .map_err(|e| JoseError::BadKey(e.to_string())),
            Alg::ES256 => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map(|k| Self::Ec(k, alg))
                    .map_err(|e| JoseError::BadKey(e.to_string()))
            }
            Alg::ES384 => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .map(|k| Self::Ec(k, alg))
                    .map_err(|e| JoseError::BadKey(e.to_string()))
            }
        }
    }

    pub fn to_pkcs8(&self) -> Result<Vec<u8>, JoseError> {
        match self {
            Self::Rsa(k) => AsDer::<Pkcs8V1Der<'static>>::as_der(k)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| JoseError::SigningFailed),
            Self::Ec(k, _) => k
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| JoseError::SigningFailed),
        }
    }

    /// The public half as a JWK with `kid`, `use: sig` and `alg`.
    #[must_use]
    pub fn public_jwk(&self, kid: &str, alg: Alg) -> Jwk {
        let mut jwk = Jwk {
            kty: String::new(),
            kid: Some(kid.to_owned()),
            use_: Some("sig".to_owned()),
            alg: Some(alg.as_str().to_owned()),
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        match self {
            Self::Rsa(k) => {
                let p = k.public_key();
                jwk.kty = "RSA".to_owned();
                jwk.n = Some(B64.encode(p.modulus().big_endian_without_leading_zero()));
                jwk.e = Some(B64.encode(p.exponent().big_endian_without_leading_zero()));
            }
            Self::Ec(k, a) => {
                let point = k.public_key().as_ref();
                let size = (point.len() - 1) / 2;
                jwk.kty = "EC".to_owned();
                jwk.crv = a.curve().map(str::to_owned);
                jwk.x = Some(B64.encode(&point[1..=size]));
                jwk.y = Some(B64.encode(&point[1 + size..]));
            }
        }
        jwk
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo), the form Epic's
    /// App Orchard / Showroom accepts for upload.
    pub fn public_key_pem(&self) -> Result<String, JoseError> {
        use aws_lc_rs::encoding::PublicKeyX509Der;
        let der: Vec<u8> = match self {
            Self::Rsa(k) => AsDer::<PublicKeyX509Der<'static>>::as_der(k.public_key())
                .map(|d| d.as_ref().to_vec()),
            Self::Ec(k, _) => AsDer::<PublicKeyX509Der<'static>>::as_der(k.public_key())
                .map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| JoseError::SigningFailed)?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        Ok(pem)
    }

    /// Signs `header.claims` and returns the compact JWS.
    pub fn sign_jwt(
        &self,
        header: &Header,
        claims: &serde_json::Value,
    ) -> Result<String, JoseError> {
        let alg: Alg = header.alg.parse()?;
        let h = B64.encode(serde_json::to_vec(header).map_err(|_| JoseError::SigningFailed)?);
        let c = B64.encode(serde_json::to_vec(claims).map_err(|_| JoseError::SigningFailed)?);
        let input = format!("{h}.{c}");
        let sig = self.sign(alg, input.as_bytes())?;
        Ok(format!("{input}.{}", B64.encode(sig)))
    }

    pub fn sign(&self, alg: Alg, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        let rng = SystemRandom::new();
        match (self, alg) {
            (Self::Rsa(k), Alg::RS256 | Alg::RS384 | Alg::RS512) => {
                let padding = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                    _ => &signature::RSA_PKCS1_SHA512,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| JoseError::SigningFailed)?;
                Ok(sig)
            }
            (Self::Ec(k, a), _) if *a == alg => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JoseError::SigningFailed),
            _ => Err(JoseError::KeyMismatch(alg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(alg: Alg) {
        let key = SigningKey::generate(alg).unwrap();
        let jwk = key.public_jwk("k1", alg);
        let header = Header {
            alg: alg.as_str().into(),
            typ: Some("JWT".into()),
            kid: Some("k1".into()),
            jku: None,
        };
        let token = key
            .sign_jwt(&header, &serde_json::json!({"iss": "x"}))
            .unwrap();
        let parsed = Unverified::parse(&token).unwrap();
        assert_eq!(parsed.header.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims["iss"], "x");
        let vk = VerifyingKey::from_jwk(&jwk).unwrap();
        parsed.verify_with(&vk).unwrap();
        let other =
            VerifyingKey::from_jwk(&SigningKey::generate(alg).unwrap().public_jwk("k2", alg))
                .unwrap();
        assert_eq!(parsed.verify_with(&other), Err(JoseError::BadSignature));
        let reloaded = SigningKey::from_pkcs8(alg, &key.to_pkcs8().unwrap()).unwrap();
        assert_eq!(reloaded.public_jwk("k1", alg), jwk);
    }

    #[test]
    fn every_supported_algorithm_signs_and_verifies() {
        for alg in [Alg::RS256, Alg::RS384, Alg::RS512, Alg::ES256, Alg::ES384] {
            round_trip(alg);
        }
    }

    #[test]
    fn a_tampered_token_does_not_verify() {
        let key = SigningKey::generate(Alg::ES384).unwrap();
        let vk = VerifyingKey::from_jwk(&key.public_jwk("k", Alg::ES384)).unwrap();
        let header = Header {
            alg: "ES384".into(),
            ..Header::default()
        };
        let token = key
            .sign_jwt(&header, &serde_json::json!({"sub": "a"}))
            .unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(br#"{"sub":"b"}"#);
        let forged = Unverified::parse(&parts.join(".")).unwrap();
        assert_eq!(forged.verify_with(&vk), Err(JoseError::BadSignature));
    }

    #[test]
    fn an_rsa_key_cannot_verify_an_es_signature_and_curves_must_match() {
        let rsa = VerifyingKey::from_jwk(
            &SigningKey::generate(Alg::RS384)
                .unwrap()
                .public_jwk("r", Alg::RS384),
        )
        .unwrap();
        assert_eq!(
            rsa.verify(Alg::ES384, b"m", b"s"),
            Err(JoseError::KeyMismatch(Alg::ES384))
        );
        let p256 = VerifyingKey::from_jwk(
            &SigningKey::generate(Alg::ES256)
                .unwrap()
                .public_jwk("e", Alg::ES256),
        )
        .unwrap();
        assert_eq!(
            p256.verify(Alg::ES384, b"m", b"s"),
            Err(JoseError::KeyMismatch(Alg::ES384))
        );
    }

    #[test]
    fn malformed_tokens_and_unknown_algorithms_are_refused() {
        assert_eq!(Unverified::parse("a.b").unwrap_err(), JoseError::Malformed);
        assert_eq!(
            Unverified::parse("a.b.c.d").unwrap_err(),
            JoseError::Malformed
        );
        assert!(matches!(
            "HS256".parse::<Alg>(),
            Err(JoseError::UnsupportedAlg(_))
        ));
        assert!(matches!(
            "none".parse::<Alg>(),
            Err(JoseError::UnsupportedAlg(_))
        ));
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let jwk = Jwk {
            kty: "RSA".into(),
            kid: None,
            use_: None,
            alg: None,
            n: Some(B64.encode([0xff; 128])),
            e: Some("AQAB".into()),
            crv: None,
            x: None,
            y: None,
        };
        assert!(matches!(
            VerifyingKey::from_jwk(&jwk),
            Err(JoseError::BadKey(_))
        ));
    }
}
