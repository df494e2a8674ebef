//! The master keyring and sealing of secrets at rest (AES-256-GCM).
//!
//! Every secret column is stored sealed: a random 96-bit nonce, the ciphertext with its tag, and
//! the id of the master key that sealed it. The associated data binds the ciphertext to its row
//! (`secret id`, owner and purpose), so a sealed value copied to another row does not open.
//!
//! The keyring is a JSON file (mode 0600) with one primary key and older keys kept for opening
//! until `rotate-master-key` has re-sealed everything. Alternatively a single key may be given
//! through configuration (`master_key`), which replicas then share.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("master key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("master key: {0}")]
    Invalid(String),
    #[error("a secret was sealed with master key `{0}`, which this keyring does not hold")]
    UnknownKey(String),
    #[error(
        "a sealed secret does not open: wrong key, or the stored value was altered or moved to another row"
    )]
    Tampered,
}

struct MasterKey {
    id: String,
    key: LessSafeKey,
}

/// Keys by id, with one primary for sealing.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<KeyringInner>,
}

struct KeyringInner {
    primary: String,
    keys: BTreeMap<String, MasterKey>,
    /// The file it came from, when it came from a file (rotation rewrites it).
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.inner.primary)
            .field("keys", &self.inner.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    primary: String,
    keys: BTreeMap<String, String>,
}

/// A sealed value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

fn key_id_for(raw: &[u8]) -> String {
    format!("mk-{}", &hex::encode(crate::crypto::sha256(raw))[..12])
}

fn make_key(raw: &[u8]) -> Result<MasterKey, KeyringError> {
    if raw.len() != 32 {
        return Err(KeyringError::Invalid(format!(
            "a master key is 32 bytes, this one is {}",
            raw.len()
        )));
    }
    let unbound = UnboundKey::new(&AES_256_GCM, raw)
        .map_err(|_| KeyringError::Invalid("unusable key".to_owned()))?;
    Ok(MasterKey {
        id: key_id_for(raw),
        key: LessSafeKey::new(unbound),
    })
}

impl Keyring {
    /// A keyring of one key given as base64 (from configuration).
    pub fn from_base64(b64: &str) -> Result<Self, KeyringError> {
        let raw = STANDARD
            .decode(b64.trim())
            .map_err(|e| KeyringError::Invalid(format!("master_key is not base64: {e}")))?;
        let k = make_key(&raw)?;
        Ok(Self::single(k, None))
    }

    fn single(k: MasterKey, path: Option<PathBuf>) -> Self {
        let primary = k.id.clone();
        let mut keys = BTreeMap::new();
        keys.insert(k.id.clone(), k);
        Self {
            inner: Arc::new(KeyringInner {
                primary,
                keys,
                path,
            }),
        }
    }

    /// Opens the keyring file, creating it with a fresh key (mode 0600) when it does not exist.
    /// Returns the keyring and whether it was created.
    pub fn open_or_create(path: &Path) -> Result<(Self, bool), KeyringError> {
        if path.exists() {
            return Ok((Self::open(path)?, false));
        }
        let raw = crate::crypto::random_bytes::<32>();
        let k = make_key(&raw)?;
        let file = KeyringFile {
            primary: k.id.clone(),
            keys: BTreeMap::from([(k.id.clone(), STANDARD.encode(raw))]),
        };
        write_private(path, &file)?;
        Ok((Self::single(k, Some(path.to_owned())), true))
    }

    pub fn open(path: &Path) -> Result<Self, KeyringError> {
        let err = |reason: String| KeyringError::File {
            path: path.to_owned(),
            reason,
        };
        check_private(path).map_err(err)?;
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyringFile =
            serde_json::from_str(&text).map_err(|e| err(format!("not a keyring: {e}")))?;
        let mut keys = BTreeMap::new();
        for (id, b64) in &file.keys {
            let raw = STANDARD
                .decode(b64)
                .map_err(|e| err(format!("key {id} is not base64: {e}")))?;
            let k = make_key(&raw)?;
            if &k.id != id {
                return Err(err(format!("key {id} does not match its id")));
            }
            keys.insert(id.clone(), k);
        }
        if !keys.contains_key(&file.primary) {
            return Err(err(format!(
                "primary key {} is not in the file",
                file.primary
            )));
        }
        Ok(Self {
            inner: Arc::new(KeyringInner {
                primary: file.primary,
                keys,
                path: Some(path.to_owned()),
            }),
        })
    }

    #[must_use]
    pub fn primary_id(&self) -> &str {
        &self.inner.primary
    }

    #[must_use]
    pub fn key_ids(&self) -> Vec<String> {
        self.inner.keys.keys().cloned().collect()
    }

    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Sealed, KeyringError> {
        let k = self
            .inner
            .keys
            .get(&self.inner.primary)
            .ok_or_else(|| KeyringError::UnknownKey(self.inner.primary.clone()))?;
        let nonce_bytes = crate::crypto::random_bytes::<NONCE_LEN>();
        let mut buf = plaintext.to_vec();
        k.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| KeyringError::Invalid("sealing failed".to_owned()))?;
        Ok(Sealed {
            key_id: k.id.clone(),
            nonce: nonce_bytes.to_vec(),
            ciphertext: buf,
        })
    }

    pub fn open_sealed(&self, aad: &str, sealed: &Sealed) -> Result<Vec<u8>, KeyringError> {
        let k = self
            .inner
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| KeyringError::UnknownKey(sealed.key_id.clone()))?;
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| KeyringError::Tampered)?;
        let mut buf = sealed.ciphertext.clone();
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| KeyringError::Tampered)?;
        Ok(plain.to_vec())
    }

    /// Adds a fresh key as primary, keeping the others for opening; rewrites the file.
    pub fn with_new_primary(&self) -> Result<Self, KeyringError> {
        let path = self.inner.path.clone().ok_or_else(|| {
            KeyringError::Invalid("the master key comes from configuration (master_key); change it there, there is no keyring file to rotate".to_owned())
        })?;
        let raw = crate::crypto::random_bytes::<32>();
        let new = make_key(&raw)?;
        let mut file = read_file(&path)?;
        file.keys.insert(new.id.clone(), STANDARD.encode(raw));
        file.primary = new.id;
        write_private(&path, &file)?;
        Self::open(&path)
    }

    /// Removes every key but the primary from the file (after everything was re-sealed).
    pub fn retire_old_keys(&self) -> Result<Self, KeyringError> {
        let Some(path) = self.inner.path.clone() else {
            return Ok(self.clone());
        };
        let mut file = read_file(&path)?;
        let primary = file.primary.clone();
        file.keys.retain(|id, _| *id == primary);
        write_private(&path, &file)?;
        Self::open(&path)
    }
}

fn read_file(path: &Path) -> Result<KeyringFile, KeyringError> {
    let err = |reason: String| KeyringError::File {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("not a keyring: {e}")))
}

/// Writes atomically (temporary file + rename) with mode 0600.
fn write_private(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let err = |reason: String| KeyringError::File {
        path: path.to_owned(),
        reason,
    };
    let text = serde_json::to_string_pretty(file).map_err(|e| err(e.to_string()))?;
    crate::files::write_private(path, text.as_bytes()).map_err(|e| err(e.to_string()))
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "is readable by group or others (mode {:o}); run chmod 600 on it",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_keyring_is_private_and_reopens_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let (k, created) = Keyring::open_or_create(&p).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let sealed = k.seal("secret:1", b"hunter2").unwrap();
        let (again, created) = Keyring::open_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(again.open_sealed("secret:1", &sealed).unwrap(), b"hunter2");
    }

    #[test]
    fn a_sealed_value_does_not_open_for_another_row_or_when_altered() {
        let k = Keyring::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let mut sealed = k.seal("secret:1", b"pw").unwrap();
        assert!(matches!(
            k.open_sealed("secret:2", &sealed),
            Err(KeyringError::Tampered)
        ));
        sealed.ciphertext[0] ^= 1;
        assert!(matches!(
            k.open_sealed("secret:1", &sealed),
            Err(KeyringError::Tampered)
        ));
    }

    #[test]
    fn rotation_keeps_old_keys_for_opening_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let (k1, _) = Keyring::open_or_create(&p).unwrap();
        let old = k1.seal("a", b"x").unwrap();
        let k2 = k1.with_new_primary().unwrap();
        assert_ne!(k2.primary_id(), k1.primary_id());
        assert_eq!(k2.open_sealed("a", &old).unwrap(), b"x");
        let k3 = k2.retire_old_keys().unwrap();
        assert!(matches!(
            k3.open_sealed("a", &old),
            Err(KeyringError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_world_readable_keyring_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        Keyring::open_or_create(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Keyring::open(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn configured_keys_must_be_32_bytes_of_base64() {
        assert!(Keyring::from_base64("not base64!").is_err());
        assert!(Keyring::from_base64(&STANDARD.encode([1u8; 16])).is_err());
    }
}
