//! What of the daemon's configuration (`sscardd.toml`) the journal's users share: where
//! the journal is and the `[backup]` section (docs/operations.md, "Backups"), with the
//! defaults the daemon uses.
//!
//! `sscardd` reads the whole file with its own checks (`sscard_daemon::config`), taking
//! [`BackupConfig`], [`DEFAULT_PATH`] and [`DEFAULT_JOURNAL`] from here. `sscard backup`
//! reads only these keys ([`JournalFiles::load`]) and ignores the rest of the file, so
//! it links neither the daemon nor its checks of the other sections; the `[backup]`
//! section is checked the same way by both, since both read it through [`BackupConfig`].

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The daemon's configuration file.
pub const DEFAULT_PATH: &str = "/etc/sscard/sscardd.toml";

/// The journal when the configuration names none (`journal = …`).
pub const DEFAULT_JOURNAL: &str = "/var/lib/sscard/journal.db";

/// Where backups go when `[backup]` names no `dir`.
pub const DEFAULT_BACKUP_DIR: &str = "/var/lib/sscard/backup";

/// Scheduled journal backups (carried out by the backup module).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `daily`, `weekly` or `off`.
    #[serde(default = "weekly", deserialize_with = "schedule")]
    pub schedule: String,
    #[serde(default = "backup_dir")]
    pub dir: PathBuf,
    /// Backups older than this many weeks are deleted (the newest one never is).
    #[serde(default = "retention", deserialize_with = "positive_u32")]
    pub retention_weeks: u32,
}

fn weekly() -> String {
    "weekly".into()
}
fn backup_dir() -> PathBuf {
    PathBuf::from(DEFAULT_BACKUP_DIR)
}
fn retention() -> u32 {
    26
}
fn journal() -> PathBuf {
    PathBuf::from(DEFAULT_JOURNAL)
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            schedule: weekly(),
            dir: backup_dir(),
            retention_weeks: retention(),
        }
    }
}

fn positive_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be positive")),
        v => Ok(v),
    }
}

fn schedule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "daily" | "weekly" | "off" => Ok(s),
        _ => Err(serde::de::Error::custom(format!(
            "{s:?}: daily, weekly or off"
        ))),
    }
}

/// The keys of `sscardd.toml` that name the journal's files; every other key is
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct JournalFiles {
    #[serde(default = "journal")]
    pub journal: PathBuf,
    #[serde(default)]
    pub backup: BackupConfig,
}

impl JournalFiles {
    /// Parse TOML text; an error names the line and the key (`line 5, key
    /// backup.schedule: "hourly": daily, weekly or off`).
    pub fn parse(text: &str) -> Result<JournalFiles, String> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            match (line, key.as_str()) {
                (Some(l), "" | ".") => format!("line {l}: {}", e.message()),
                (Some(l), k) => format!("line {l}, key {k}: {}", e.message()),
                (None, _) => e.message().to_string(),
            }
        })
    }

    /// Read and parse a file; errors start with its path.
    pub fn load(path: &Path) -> Result<JournalFiles, crate::backup::BackupError> {
        use crate::backup::BackupError;
        let text = std::fs::read_to_string(path).map_err(|e| BackupError::Io(path.into(), e))?;
        Self::parse(&text).map_err(|e| BackupError::Config(path.into(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_journal_and_the_backup_section_are_read() {
        let f = JournalFiles::parse(
            "terminal_id = \"not checked here\"\n[limits]\nanything = 1\n[backup]\ndir = \"/b\"\n",
        )
        .unwrap();
        assert_eq!(f.journal, PathBuf::from(DEFAULT_JOURNAL));
        assert_eq!(f.backup.dir, PathBuf::from("/b"));
        assert_eq!(f.backup.schedule, "weekly");
        assert_eq!(f.backup.retention_weeks, 26);
        let f = JournalFiles::parse("journal = \"/j.db\"\n").unwrap();
        assert_eq!(f.journal, PathBuf::from("/j.db"));
        assert_eq!(f.backup, BackupConfig::default());
    }

    #[test]
    fn the_backup_section_is_checked_as_the_daemon_checks_it() {
        let e = JournalFiles::parse("journal = \"/j\"\n\n[backup]\nschedule = \"hourly\"\n")
            .unwrap_err();
        assert!(e.starts_with("line 4, key backup.schedule:"), "{e}");
        let e = JournalFiles::parse("[backup]\nretention_weeks = 0\n").unwrap_err();
        assert!(
            e.contains("backup.retention_weeks: must be positive"),
            "{e}"
        );
        let e = JournalFiles::parse("[backup]\nretention = 26\n").unwrap_err();
        assert!(e.contains("retention"), "{e}");
        let e = JournalFiles::parse("journal = 3\n").unwrap_err();
        assert!(e.starts_with("line 1, key journal:"), "{e}");
        assert!(JournalFiles::parse("journal = \"/j\n").is_err());
    }
}
