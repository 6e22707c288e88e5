//! Online backups of the journal (docs/operations.md, "Backups").
//!
//! A backup is SQLite's online backup of the live journal, taken through a connection
//! of its own while the daemon goes on writing (WAL: the copy is one consistent
//! snapshot). It is written under a temporary name with mode 0600 (it holds card
//! numbers), checked with `PRAGMA integrity_check`, synced, then renamed to
//! `journal-YYYYMMDDTHHMMSS.mmmZ.db` (UTC). The name carries the time, so retention and
//! the schedule do not depend on file times.
//!
//! The daemon takes one whenever the newest backup is older than the schedule's period
//! (`daily`, `weekly`; checked at start and hourly, so a restart neither skips nor
//! repeats one; its schedule is `sscard_daemon::backup::run`) and then deletes backups
//! older than `retention_weeks`, never the newest.
//! `sscard backup` takes one on demand with the same code.

use crate::config::BackupConfig;
use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{backup::StepResult, Connection, OpenFlags};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PREFIX: &str = "journal-";
const SUFFIX: &str = ".db";
const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0}: no such journal")]
    NoJournal(PathBuf),
    #[error("backup of {0}: {1}")]
    Db(PathBuf, rusqlite::Error),
    #[error("backup {0} failed its integrity check: {1}")]
    Integrity(PathBuf, String),
    /// The daemon's configuration could not be read ([`crate::config::JournalFiles`]).
    #[error("{0}: {1}")]
    Config(PathBuf, String),
}

/// A backup file and the time it was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    pub taken: DateTime<Utc>,
}

/// The file name of a backup taken at `t`.
pub fn file_name(t: DateTime<Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", t.format(STAMP))
}

/// The time in a backup's file name (`None`: not a backup's name).
pub fn parse_name(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|n| n.and_utc())
}

/// The backups in `dir`, oldest first (an absent directory has none).
pub fn list(dir: &Path) -> Result<Vec<BackupFile>, BackupError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BackupError::Io(dir.into(), e)),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| BackupError::Io(dir.into(), e))?;
        let name = e.file_name();
        if let Some(taken) = name.to_str().and_then(parse_name) {
            v.push(BackupFile {
                path: e.path(),
                taken,
            });
        }
    }
    v.sort_by_key(|b| b.taken);
    Ok(v)
}

/// Take a backup of `journal` into `dir` (created 0700 if absent).
pub fn take(journal: &Path, dir: &Path, now: DateTime<Utc>) -> Result<BackupFile, BackupError> {
    if !journal.is_file() {
        return Err(BackupError::NoJournal(journal.into()));
    }
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| BackupError::Io(dir.into(), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| BackupError::Io(dir.into(), e))?;
    }
    let name = file_name(now);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = copy_checked(journal, &tmp);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| BackupError::Io(path.clone(), e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(BackupFile { path, taken: now })
}

/// Copy through SQLite's backup API into `tmp` (mode 0600), check it and sync it.
fn copy_checked(journal: &Path, tmp: &Path) -> Result<(), BackupError> {
    let db = |e| BackupError::Db(journal.into(), e);
    // create the file first so that SQLite never makes it with the umask's mode
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| BackupError::Io(tmp.into(), e))?;
    let src = Connection::open_with_flags(
        journal,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db)?;
    src.busy_timeout(Duration::from_secs(5)).map_err(db)?;
    let mut dst = Connection::open(tmp).map_err(db)?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(db)?;
        let mut tries = 0;
        // all pages in one step: one read transaction, one consistent snapshot
        loop {
            match b.step(-1).map_err(db)? {
                StepResult::Done => break,
                StepResult::More => continue,
                _ if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    return Err(BackupError::Integrity(
                        tmp.into(),
                        "the journal stayed locked".into(),
                    ))
                }
            }
        }
    }
    // a backup of a WAL database is itself in WAL mode: fold it into one file
    dst.execute_batch("PRAGMA journal_mode=DELETE;")
        .map_err(db)?;
    let check: String = dst
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(db)?;
    if check != "ok" {
        return Err(BackupError::Integrity(tmp.into(), check));
    }
    drop(dst);
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| BackupError::Io(tmp.into(), e))
}

/// Delete the backups taken more than `weeks` weeks before `now`, except the newest.
/// Returns the deleted files.
pub fn prune(dir: &Path, weeks: u32, now: DateTime<Utc>) -> Result<Vec<PathBuf>, BackupError> {
    let all = list(dir)?;
    let cutoff = now - chrono::Duration::weeks(i64::from(weeks));
    let mut gone = Vec::new();
    let keep_newest = all.len().saturating_sub(1);
    for b in all.into_iter().take(keep_newest) {
        if b.taken < cutoff {
            std::fs::remove_file(&b.path).map_err(|e| BackupError::Io(b.path.clone(), e))?;
            gone.push(b.path);
        }
    }
    Ok(gone)
}

/// The schedule's period (`None` for `off`).
pub fn period(schedule: &str) -> Option<chrono::Duration> {
    match schedule {
        "daily" => Some(chrono::Duration::days(1)),
        "weekly" => Some(chrono::Duration::weeks(1)),
        _ => None,
    }
}

/// Whether a backup is due: the schedule is on and the newest backup is at least one
/// period old (or there is none).
pub fn due(cfg: &BackupConfig, now: DateTime<Utc>) -> Result<bool, BackupError> {
    let Some(p) = period(&cfg.schedule) else {
        return Ok(false);
    };
    Ok(match list(&cfg.dir)?.last() {
        None => true,
        Some(b) => now - b.taken >= p,
    })
}

/// Take a backup now and apply the retention: what `sscard backup` and the schedule do.
pub fn take_and_prune(
    journal: &Path,
    cfg: &BackupConfig,
) -> Result<(BackupFile, Vec<PathBuf>), BackupError> {
    let now = Utc::now();
    let b = take(journal, &cfg.dir, now)?;
    let gone = prune(&cfg.dir, cfg.retention_weeks, now)?;
    Ok((b, gone))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Journal;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn names_carry_the_time_and_other_files_are_ignored() {
        let t = at("2026-11-23T02:15:00.250Z");
        let n = file_name(t);
        assert_eq!(n, "journal-20261123T021500.250Z.db");
        assert_eq!(parse_name(&n), Some(t));
        for other in [
            "journal.db",
            "journal-x.db",
            ".journal-20261123T021500.250Z.db.tmp",
            "notes.txt",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_backup_is_a_checked_copy_readable_on_its_own() {
        let d = tempfile::tempdir().unwrap();
        let jp = d.path().join("journal.db");
        let mut j = Journal::open(&jp).unwrap();
        j.audit("t", "op", "m", "r", "c", "ok").unwrap();
        let b = take(&jp, &d.path().join("bk"), Utc::now()).unwrap();
        // the daemon goes on writing after the snapshot
        j.audit("t", "op", "m", "r", "c", "after").unwrap();
        assert_eq!(j.audit_head().unwrap().unwrap().seq, 3);
        let mode = std::fs::metadata(&b.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // the journal's creation and the entry above
        assert_eq!(crate::verify_chain(&b.path).unwrap(), 2);
        let copy = Journal::open(&b.path).unwrap();
        assert_eq!(
            copy.audit_head().unwrap().unwrap().seq,
            2,
            "the copy is the snapshot"
        );
        assert_eq!(list(&d.path().join("bk")).unwrap().len(), 1);
        assert!(matches!(
            take(&d.path().join("none.db"), d.path(), Utc::now()),
            Err(BackupError::NoJournal(_))
        ));
    }

    #[test]
    fn retention_deletes_old_backups_but_never_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let now = at("2026-11-23T00:00:00Z");
        let weeks_ago = |w: i64| now - chrono::Duration::weeks(w);
        for w in [60, 30, 27, 25, 1] {
            std::fs::write(d.path().join(file_name(weeks_ago(w))), b"x").unwrap();
        }
        std::fs::write(d.path().join("keep-me.txt"), b"x").unwrap();
        let gone = prune(d.path(), 26, now).unwrap();
        assert_eq!(gone.len(), 3);
        let left: Vec<_> = list(d.path()).unwrap().iter().map(|b| b.taken).collect();
        assert_eq!(left, [weeks_ago(25), weeks_ago(1)]);
        assert!(d.path().join("keep-me.txt").exists());
        // a lone old backup stays: it is the newest there is
        let e = tempfile::tempdir().unwrap();
        std::fs::write(e.path().join(file_name(weeks_ago(100))), b"x").unwrap();
        assert!(prune(e.path(), 26, now).unwrap().is_empty());
    }

    #[test]
    fn a_backup_is_due_once_a_period() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = BackupConfig {
            dir: d.path().join("bk"),
            ..BackupConfig::default()
        };
        let now = at("2026-11-23T00:00:00Z");
        assert!(due(&cfg, now).unwrap(), "none yet");
        std::fs::create_dir_all(&cfg.dir).unwrap();
        std::fs::write(
            cfg.dir.join(file_name(now - chrono::Duration::days(6))),
            b"x",
        )
        .unwrap();
        assert!(!due(&cfg, now).unwrap());
        assert!(due(&cfg, now + chrono::Duration::days(1)).unwrap());
        cfg.schedule = "daily".into();
        assert!(due(&cfg, now).unwrap());
        cfg.schedule = "off".into();
        assert!(!due(&cfg, now + chrono::Duration::weeks(10)).unwrap());
    }
}
