//! What the issuing office's commands share: the office journal and its operator
//! (`--journal`, `--operator`), and the office keys (`--keystore` / `--secret-file`, or
//! `--test-keys` for emulated cards). docs/office.md.

use crate::exit::CliError;
use serde_json::Value;
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keyprovider::{KeyProvider, MemorySequence, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::{Region, TerminalId};
use sscard_journal::office::{NewEntry, OfficeJournal};
use std::path::PathBuf;

/// The office journal every office command writes to.
#[derive(clap::Args, Clone)]
pub struct JournalArgs {
    /// The office journal (SQLite; the issuance journal of `sscard personalize`),
    /// created if missing.
    #[arg(long, env = "SSCARD_OFFICE_JOURNAL", value_name = "PATH")]
    pub journal: PathBuf,
    /// Who is doing this, for the journal (default: the login name).
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
}

impl JournalArgs {
    /// The operator's name: `--operator`, else the login name of the user running this.
    pub fn operator(&self) -> String {
        if let Some(o) = &self.operator {
            return o.clone();
        }
        for v in ["USER", "LOGNAME"] {
            if let Ok(u) = std::env::var(v) {
                if !u.is_empty() {
                    return u;
                }
            }
        }
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").map_or("unknown".into(), |m| format!("uid {}", m.uid()))
    }

    pub fn open(&self) -> Result<Office, CliError> {
        let journal = OfficeJournal::open(&self.journal).map_err(|e| {
            CliError::new(5, format!("office journal {}: {e}", self.journal.display()))
        })?;
        Ok(Office {
            journal,
            operator: self.operator(),
            path: self.journal.clone(),
        })
    }
}

/// The open office journal and the operator writing to it.
pub struct Office {
    pub journal: OfficeJournal,
    pub operator: String,
    pub path: PathBuf,
}

impl Office {
    /// Write one entry; returns its `seq`.
    pub fn log(
        &mut self,
        command: &str,
        card: &str,
        outcome: &str,
        ref_seq: Option<i64>,
        detail: Value,
    ) -> Result<i64, CliError> {
        let op = self.operator.clone();
        self.journal
            .append(&NewEntry {
                operator: &op,
                command,
                card,
                outcome,
                ref_seq,
                detail,
            })
            .map_err(|e| self.error(e))
    }

    /// A journal failure as the command's error (exit code 5).
    pub fn error(&self, e: rusqlite::Error) -> CliError {
        CliError::new(5, format!("office journal {}: {e}", self.path.display()))
    }
}

/// The office's card keys.
#[derive(clap::Args, Clone)]
pub struct KeyArgs {
    /// The office keystore (all seven purposes), with --secret-file.
    #[arg(long, requires = "secret_file", conflicts_with = "test_keys")]
    pub keystore: Option<PathBuf>,
    /// The keystore's secret (passphrase) file.
    #[arg(long, requires = "keystore")]
    pub secret_file: Option<PathBuf>,
    /// The test keys of vectors.json (emulated cards only).
    #[arg(long)]
    pub test_keys: bool,
}

impl KeyArgs {
    /// A key provider for cards of `region` holding `need`; `what` names the operation
    /// in the error when the keys are missing.
    pub fn provider(
        &self,
        region: Region,
        need: &[KeyPurpose],
        what: &str,
    ) -> Result<Box<dyn KeyProvider>, CliError> {
        if self.test_keys {
            let tid: TerminalId = "000000000000"
                .parse()
                .map_err(|e| CliError::failed(format!("{e}")))?;
            return Ok(Box::new(SoftwareKeys::test_keys(region, tid, need)));
        }
        let names = need.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
        let (Some(ks), Some(sf)) = (&self.keystore, &self.secret_file) else {
            return Err(CliError::usage(format!(
                "{what} needs the office's {names} key: --keystore PATH --secret-file PATH (or --test-keys)"
            )));
        };
        let secret =
            KeystoreSecret::from_credential(sf).map_err(|e| CliError::new(5, e.to_string()))?;
        let store =
            Keystore::open(ks, &secret, false).map_err(|e| CliError::new(5, e.to_string()))?;
        if let Some(p) = need.iter().find(|p| !store.purposes().contains(p)) {
            return Err(CliError::usage(format!(
                "{}: the keystore has no {} key (an office keystore has all seven purposes)",
                ks.display(),
                p.name()
            )));
        }
        Ok(Box::new(
            store.into_provider(Box::new(MemorySequence::default())),
        ))
    }
}
