//! The software keystore file (`docs/key-hierarchy.md`): a terminal's or issuing
//! office's keys of one region, encrypted at rest.
//!
//! Format (JSON): a header with the format name, region, terminal id, the key purposes
//! and each key's check value (public), the key-derivation parameters, a nonce, and the
//! AES-256-GCM ciphertext of the keys. The 32-byte file key comes from a passphrase
//! through Argon2id (salt and costs in the header) or, for services, straight from a
//! systemd credential holding 32 raw bytes. On open every key's check value is
//! recomputed and compared; a production open refuses any test key.

use super::{KeyError, SequenceSource, SoftwareKeys};
use crate::crypto;
use crate::keys::{Key16, KeyPurpose};
use crate::testkeys;
use crate::types::{Region, TerminalId};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

/// Keystore failures; none carries key or passphrase material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    #[error("keystore {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("keystore is corrupted or not a keystore: {0}")]
    Corrupted(String),
    #[error("wrong passphrase or credential (the keystore does not decrypt)")]
    WrongSecret,
    #[error("key {purpose}: check value {found} does not match the recorded {recorded}")]
    WrongCheckValue {
        purpose: &'static str,
        recorded: String,
        found: String,
    },
    #[error("key {0}: the test master keys are refused in production")]
    TestKeyInProduction(&'static str),
    #[error("invalid keystore request: {0}")]
    Invalid(String),
}

/// The secret a keystore file is opened with.
pub enum KeystoreSecret {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// A 32-byte file key (from a systemd credential).
    FileKey(Zeroizing<[u8; 32]>),
}

impl KeystoreSecret {
    /// Read a systemd credential (`$CREDENTIALS_DIRECTORY/<name>` or a path): 32 raw
    /// bytes are a file key; anything else is a passphrase (trailing newline trimmed).
    pub fn from_credential(path: &Path) -> Result<Self, KeystoreError> {
        let b = Zeroizing::new(std::fs::read(path).map_err(|e| KeystoreError::Io {
            path: path.display().to_string(),
            source: e,
        })?);
        if b.len() == 32 {
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(&b);
            return Ok(KeystoreSecret::FileKey(k));
        }
        let s = std::str::from_utf8(&b).map_err(|_| {
            KeystoreError::Invalid("credential is neither 32 bytes nor text".into())
        })?;
        Ok(KeystoreSecret::Passphrase(Zeroizing::new(
            s.trim_end_matches(['\n', '\r']).to_string(),
        )))
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct KdfParams {
    alg: String,
    #[serde(default)]
    salt: String,
    #[serde(default)]
    m_cost: u32,
    #[serde(default)]
    t_cost: u32,
    #[serde(default)]
    p_cost: u32,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    format: String,
    region: String,
    terminal_id: String,
    /// Key level: 3 = city K3 (terminals, offices).
    level: u8,
    /// Check value of each key, by purpose name.
    kcv: std::collections::BTreeMap<String, String>,
    kdf: KdfParams,
    nonce: String,
    ciphertext: String,
}

const FORMAT: &str = "sscard-keystore-1";

fn file_key(
    secret: &KeystoreSecret,
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    let mut out = Zeroizing::new([0u8; 32]);
    match (secret, kdf.alg.as_str()) {
        (KeystoreSecret::FileKey(k), "raw") => out.copy_from_slice(&k[..]),
        (KeystoreSecret::Passphrase(p), "argon2id") => {
            let salt =
                hex::decode(&kdf.salt).map_err(|_| KeystoreError::Corrupted("salt".into()))?;
            let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
                .map_err(|e| KeystoreError::Corrupted(format!("argon2 parameters: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(p.as_bytes(), &salt, &mut out[..])
                .map_err(|e| KeystoreError::Corrupted(format!("argon2: {e}")))?;
        }
        (_, "raw") => {
            return Err(KeystoreError::Invalid(
                "this keystore opens with a 32-byte credential".into(),
            ))
        }
        (_, "argon2id") => {
            return Err(KeystoreError::Invalid(
                "this keystore opens with a passphrase".into(),
            ))
        }
        (_, other) => return Err(KeystoreError::Corrupted(format!("unknown kdf {other:?}"))),
    }
    Ok(out)
}

/// A keystore's content.
pub struct Keystore {
    pub region: Region,
    pub terminal_id: TerminalId,
    keys: Vec<(KeyPurpose, Key16)>,
}

impl Keystore {
    /// Create a keystore of K3 keys for `region` from national master keys K1, for the
    /// listed purposes (a terminal: EXT, INT, PURCHASE; an office: all seven).
    pub fn from_master_keys(
        region: Region,
        terminal_id: TerminalId,
        masters: &[(KeyPurpose, Key16)],
    ) -> Keystore {
        Keystore {
            region,
            terminal_id,
            keys: masters
                .iter()
                .map(|(p, k1)| (*p, crypto::derive_level(k1, region, 3)))
                .collect(),
        }
    }

    /// Write the keystore encrypted under `secret` (atomically: temporary file, rename).
    pub fn save(&self, path: &Path, secret: &KeystoreSecret) -> Result<(), KeystoreError> {
        if self.keys.is_empty() {
            return Err(KeystoreError::Invalid("no keys".into()));
        }
        let kdf = match secret {
            KeystoreSecret::FileKey(_) => KdfParams {
                alg: "raw".into(),
                salt: String::new(),
                m_cost: 0,
                t_cost: 0,
                p_cost: 0,
            },
            KeystoreSecret::Passphrase(_) => KdfParams {
                alg: "argon2id".into(),
                salt: hex::encode(rand::random::<[u8; 16]>()),
                m_cost: 19 * 1024,
                t_cost: 2,
                p_cost: 1,
            },
        };
        let key = file_key(secret, &kdf)?;
        let plain: Zeroizing<String> = Zeroizing::new(
            self.keys
                .iter()
                .map(|(p, k)| format!("{}={}", p.name(), hex::encode_upper(k.expose())))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let nonce: [u8; 12] = rand::random();
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|_| KeystoreError::Invalid("file key".into()))?;
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .map_err(|_| KeystoreError::Invalid("encryption failed".into()))?;
        let f = FileFormat {
            format: FORMAT.into(),
            region: self.region.to_string(),
            terminal_id: self.terminal_id.to_hex(),
            level: 3,
            kcv: self
                .keys
                .iter()
                .map(|(p, k)| (p.name().to_string(), hex::encode_upper(crypto::kcv(k))))
                .collect(),
            kdf,
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ct),
        };
        let bytes =
            serde_json::to_vec_pretty(&f).map_err(|e| KeystoreError::Invalid(e.to_string()))?;
        let io = |e| KeystoreError::Io {
            path: path.display().to_string(),
            source: e,
        };
        // 0600 whatever the umask: created so, and set so (a stale temporary file of
        // another mode is replaced, not reused)
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Open a keystore file. `production` refuses the test master keys.
    pub fn open(
        path: &Path,
        secret: &KeystoreSecret,
        production: bool,
    ) -> Result<Keystore, KeystoreError> {
        let bytes = std::fs::read(path).map_err(|e| KeystoreError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let f: FileFormat =
            serde_json::from_slice(&bytes).map_err(|e| KeystoreError::Corrupted(e.to_string()))?;
        if f.format != FORMAT {
            return Err(KeystoreError::Corrupted(format!("format {:?}", f.format)));
        }
        let region: Region = f
            .region
            .parse()
            .map_err(|e| KeystoreError::Corrupted(format!("{e}")))?;
        let terminal_id: TerminalId = f
            .terminal_id
            .parse()
            .map_err(|e| KeystoreError::Corrupted(format!("{e}")))?;
        let key = file_key(secret, &f.kdf)?;
        let nonce = hex::decode(&f.nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or_else(|| KeystoreError::Corrupted("nonce".into()))?;
        let ct = hex::decode(&f.ciphertext)
            .map_err(|_| KeystoreError::Corrupted("ciphertext".into()))?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|_| KeystoreError::Invalid("file key".into()))?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
                .map_err(|_| KeystoreError::WrongSecret)?,
        );
        let text =
            std::str::from_utf8(&plain).map_err(|_| KeystoreError::Corrupted("content".into()))?;
        let mut keys = Vec::new();
        for line in text.lines() {
            let (name, h) = line
                .split_once('=')
                .ok_or_else(|| KeystoreError::Corrupted("content".into()))?;
            let p = KeyPurpose::from_name(name)
                .ok_or_else(|| KeystoreError::Corrupted(format!("purpose {name:?}")))?;
            let k = Key16::from_hex(h)
                .map_err(|_| KeystoreError::Corrupted(format!("key {}", p.name())))?;
            let found = hex::encode_upper(crypto::kcv(&k));
            let recorded = f.kcv.get(p.name()).cloned().unwrap_or_default();
            if found != recorded {
                return Err(KeystoreError::WrongCheckValue {
                    purpose: p.name(),
                    recorded,
                    found,
                });
            }
            if production && testkeys::is_test_key(&k, region) {
                return Err(KeystoreError::TestKeyInProduction(p.name()));
            }
            keys.push((p, k));
        }
        Ok(Keystore {
            region,
            terminal_id,
            keys,
        })
    }

    pub fn purposes(&self) -> Vec<KeyPurpose> {
        self.keys.iter().map(|(p, _)| *p).collect()
    }

    /// The keys as a provider, with its terminal sequence source.
    pub fn into_provider(self, seq: Box<dyn SequenceSource>) -> SoftwareKeys {
        SoftwareKeys::new(self.region, self.terminal_id, self.keys, seq)
    }

    /// The K3 keys, for an issuing office's personalization keys.
    pub fn into_keys(self) -> Vec<(KeyPurpose, Key16)> {
        self.keys
    }
}

impl From<KeystoreError> for KeyError {
    fn from(e: KeystoreError) -> Self {
        KeyError::Psam(e.to_string())
    }
}
