//! The terminal's keys (card profile §4, §8): software K3 keys (a keystore file, or the
//! test master keys in test mode) or a PSAM. Card operations borrow a
//! [`KeyProvider`] for their duration through [`KeySource::with`].
//!
//! Software keys take terminal sequence numbers from the journal (reserved durably,
//! never reused after a crash); a PSAM keeps its own.

use crate::config::{Config, KeysConfig, KeystoreSecretSource};
use crate::journal::JournalHandle;
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keyprovider::psam::PsamProvider;
use sscard_driver::keyprovider::{KeyError, KeyProvider, SequenceSource, SoftwareKeys};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::transport::CardTransport;
use sscard_driver::{Region, TerminalId};
use std::sync::Mutex;

/// Where the keys are.
pub enum KeySource {
    /// K3 keys in memory (zeroized on drop).
    Software {
        region: Region,
        terminal_id: TerminalId,
        k3: Vec<(KeyPurpose, Key16)>,
        /// `test` or `keystore`, for `system.health`.
        origin: &'static str,
    },
    /// A PSAM; one operation at a time uses it.
    Psam {
        provider: Mutex<PsamProvider>,
        terminal_id: TerminalId,
    },
}

/// Terminal sequence numbers reserved in the journal (durable with the payment row
/// that carries them, before DEBIT: `JournalHandle::reserve_seq`).
struct JournalSequence(JournalHandle);

impl SequenceSource for JournalSequence {
    fn next(&mut self) -> Result<u32, KeyError> {
        self.0
            .reserve_seq()
            .map_err(|e| KeyError::Sequence(e.to_string()))
    }
}

impl KeySource {
    /// The test master keys' K3 for `region`: EXT, INT, PURCHASE, MAINT and LOAD (so
    /// that demos can block blacklisted cards and refund).
    pub fn test(region: Region, terminal_id: TerminalId) -> KeySource {
        let m = sscard_driver::testkeys::test_master_keys();
        let k3 = [
            KeyPurpose::Ext,
            KeyPurpose::Int,
            KeyPurpose::Purchase,
            KeyPurpose::Maint,
            KeyPurpose::Load,
        ]
        .iter()
        .map(|p| (*p, m.k3(*p, region)))
        .collect();
        KeySource::Software {
            region,
            terminal_id,
            k3,
            origin: "test",
        }
    }

    /// A PSAM behind `card` (its terminal id must be the configuration's).
    pub fn psam(card: Box<dyn CardTransport>, config: &Config) -> Result<KeySource, String> {
        let p = PsamProvider::open(card).map_err(|e| format!("PSAM: {e}"))?;
        let tid = p.terminal_id();
        if tid != config.terminal_id {
            return Err(format!(
                "PSAM terminal id {tid} is not the configured terminal_id {}",
                config.terminal_id
            ));
        }
        Ok(KeySource::Psam {
            provider: Mutex::new(p),
            terminal_id: tid,
        })
    }

    /// The key source a configuration names: a keystore is opened (production mode
    /// refuses test keys in it), a PSAM is connected through PC/SC.
    pub fn from_config(config: &Config) -> Result<KeySource, String> {
        match &config.keys {
            None => Err("keys: no [keys] section (keystore, psam, or test in test_mode)".into()),
            Some(KeysConfig::Test) => Ok(KeySource::test(config.region, config.terminal_id)),
            Some(KeysConfig::Keystore { path, secret }) => {
                let secret_path = match secret {
                    KeystoreSecretSource::PassphraseFile(p) => p.clone(),
                    KeystoreSecretSource::Credential(name) => {
                        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                            format!("keys.keystore.credential {name:?}: $CREDENTIALS_DIRECTORY is not set")
                        })?;
                        std::path::PathBuf::from(dir).join(name)
                    }
                };
                let secret = KeystoreSecret::from_credential(&secret_path)
                    .map_err(|e| format!("keys.keystore: {e}"))?;
                let ks = Keystore::open(path, &secret, !config.test_mode)
                    .map_err(|e| format!("keys.keystore: {e}"))?;
                if ks.region.city() != config.region.city() || ks.terminal_id != config.terminal_id
                {
                    return Err(format!(
                        "keys.keystore: the keystore is for region {} terminal {}, the configuration says {} {}",
                        ks.region, ks.terminal_id, config.region, config.terminal_id
                    ));
                }
                let region = ks.region;
                let terminal_id = ks.terminal_id;
                Ok(KeySource::Software {
                    region,
                    terminal_id,
                    k3: ks.into_keys(),
                    origin: "keystore",
                })
            }
            Some(KeysConfig::Psam { reader }) => {
                let ctx = sscard_driver::transport::pcsc::PcscContext::establish()
                    .map_err(|e| format!("keys.psam: {e}"))?;
                let card = ctx
                    .connect(
                        reader,
                        sscard_driver::transport::pcsc::ShareMode::Exclusive,
                        None,
                    )
                    .map_err(|e| format!("keys.psam: reader {reader:?}: {e}"))?;
                KeySource::psam(Box::new(card), config)
            }
        }
    }

    /// `test`, `keystore` or `psam`.
    pub fn origin(&self) -> &'static str {
        match self {
            KeySource::Software { origin, .. } => origin,
            KeySource::Psam { .. } => "psam",
        }
    }

    pub fn terminal_id(&self) -> TerminalId {
        match self {
            KeySource::Software { terminal_id, .. } | KeySource::Psam { terminal_id, .. } => {
                *terminal_id
            }
        }
    }

    /// Whether the keys include `purpose`.
    pub fn supports(&self, purpose: KeyPurpose) -> bool {
        match self {
            KeySource::Software { k3, .. } => k3.iter().any(|(p, _)| *p == purpose),
            KeySource::Psam { .. } => matches!(
                purpose,
                KeyPurpose::Ext | KeyPurpose::Int | KeyPurpose::Purchase
            ),
        }
    }

    /// Run `f` with a provider (blocking: call it from a reader job). A PSAM is held for
    /// the whole of `f`, so a purchase's MAC1 and MAC2 stay in one PSAM session.
    pub fn with<R>(&self, journal: &JournalHandle, f: impl FnOnce(&mut dyn KeyProvider) -> R) -> R {
        match self {
            KeySource::Software {
                region,
                terminal_id,
                k3,
                ..
            } => {
                let mut p = SoftwareKeys::new(
                    *region,
                    *terminal_id,
                    k3.clone(),
                    Box::new(JournalSequence(journal.clone())),
                );
                f(&mut p)
            }
            KeySource::Psam { provider, .. } => {
                let mut g = provider.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut *g)
            }
        }
    }
}
