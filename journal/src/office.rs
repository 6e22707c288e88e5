//! The office journal: what an issuing office did to cards, hash-chained like the
//! daemon's audit log ([`crate::chain`]), in the same SQLite file as `sscard
//! personalize`'s issuance table (the issuance journal, grown; docs/office.md).
//!
//! # Tables
//!
//! - `office_log`: `seq` (1, 2, …), `time` (RFC 3339 UTC), `operator`, `command`
//!   (`personalize`, `load`, `pin.reload`, `card.block`, `card.unblock`, `card.update`,
//!   `blacklist.add`, `blacklist.remove`, `card.replace`), `card` (card number or card
//!   id, empty when none), `outcome` (`pending`, `completed`, `failed`, `uncertain`, or
//!   a command's own word), `ref_seq` (the `pending` entry this one closes, else NULL),
//!   `detail` (a JSON object: amounts, TACs, reasons; never a PIN or a key), `hash`:
//!   SHA-256 hex of `prev_hash | seq | content` where `content` is the JSON array
//!   `[time, operator, command, card, outcome, ref_seq, detail]`.
//! - `office_head`: the last `seq` and `hash`, written with each entry, so that deleted
//!   newest entries are found.
//! - `office_blacklist`: the office's list of lost and suspended cards (`card`,
//!   `reason`, `until`), changed only together with a `blacklist.add` /
//!   `blacklist.remove` entry or a completed `card.replace` (which lists its
//!   `detail.old`, "replaced by `detail.new`"); [`verify_office`] replays those entries
//!   and finds a table edited behind the log's back.
//!
//! An operation whose outcome the card decides (a load: CREDIT) is written `pending`
//! before the command goes to the card and closed by a later entry whose `ref_seq`
//! names it; [`OfficeJournal::open_items`] lists what is still open (a pulled card, a
//! crash), for the command to settle from the card.

use crate::chain::{chain_hash, AuditHead};
use crate::JResult;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// One entry of the office log.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OfficeEntry {
    pub seq: i64,
    pub time: String,
    pub operator: String,
    pub command: String,
    pub card: String,
    pub outcome: String,
    pub ref_seq: Option<i64>,
    pub detail: Value,
}

/// An entry of the office's blacklist.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OfficeBlacklisted {
    pub card: String,
    pub reason: String,
    pub until: Option<String>,
}

/// What is to be written: an entry before its `seq`, `time` and hash.
#[derive(Clone, Debug)]
pub struct NewEntry<'a> {
    pub operator: &'a str,
    pub command: &'a str,
    pub card: &'a str,
    pub outcome: &'a str,
    pub ref_seq: Option<i64>,
    pub detail: Value,
}

fn content(e: &OfficeEntry) -> String {
    json!([e.time, e.operator, e.command, e.card, e.outcome, e.ref_seq, e.detail]).to_string()
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS office_log(
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        operator TEXT NOT NULL,
        command TEXT NOT NULL,
        card TEXT NOT NULL,
        outcome TEXT NOT NULL,
        ref_seq INTEGER,
        detail TEXT NOT NULL,
        hash TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS office_log_ref ON office_log(ref_seq);
    CREATE INDEX IF NOT EXISTS office_log_card ON office_log(card);
    CREATE TABLE IF NOT EXISTS office_head(
        id INTEGER PRIMARY KEY CHECK(id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS office_blacklist(
        card TEXT PRIMARY KEY, reason TEXT NOT NULL, until TEXT);";

/// The office journal, open for writing.
pub struct OfficeJournal {
    db: Connection,
}

fn entry_row(r: &rusqlite::Row<'_>) -> JResult<OfficeEntry> {
    let detail: String = r.get(7)?;
    Ok(OfficeEntry {
        seq: r.get(0)?,
        time: r.get(1)?,
        operator: r.get(2)?,
        command: r.get(3)?,
        card: r.get(4)?,
        outcome: r.get(5)?,
        ref_seq: r.get(6)?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
    })
}

const ENTRY_COLS: &str = "seq, time, operator, command, card, outcome, ref_seq, detail";

impl OfficeJournal {
    /// Open (creating if needed) the office journal in `path`, mode 0600 when created
    /// (it names the office's cards and holders).
    pub fn open(path: &Path) -> JResult<OfficeJournal> {
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    rusqlite::Error::InvalidPath(format!("{}: {e}", path.display()).into())
                })?;
        }
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        db.execute_batch(SCHEMA)?;
        Ok(OfficeJournal { db })
    }

    /// Append an entry after the head and move the head, in one transaction; returns
    /// its `seq`.
    pub fn append(&mut self, e: &NewEntry<'_>) -> JResult<i64> {
        let tx = self.db.transaction()?;
        let seq = append_in(&tx, e)?;
        tx.commit()?;
        Ok(seq)
    }

    /// The entries written `pending` for `command` that no later entry closes, oldest
    /// first.
    pub fn open_items(&self, command: &str) -> JResult<Vec<OfficeEntry>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {ENTRY_COLS} FROM office_log p WHERE command=?1 AND outcome='pending'
             AND NOT EXISTS (SELECT 1 FROM office_log c WHERE c.ref_seq = p.seq) ORDER BY seq"
        ))?;
        let rows = st.query_map([command], entry_row)?;
        rows.collect()
    }

    /// The open `pending` entries of `command` for one `card`, oldest first.
    pub fn open_items_of(&self, command: &str, card: &str) -> JResult<Vec<OfficeEntry>> {
        Ok(self
            .open_items(command)?
            .into_iter()
            .filter(|e| e.card == card)
            .collect())
    }

    /// Close the `card.replace` entry `pending` as completed: the old card number
    /// `old` goes on the office's blacklist ("replaced by `new`") and the closing entry
    /// (`detail`: `old`, `new`, `reason`, and what `extra` adds) is written, in one
    /// transaction. `pending` must be an open `card.replace` entry for `old`; returns
    /// the closing entry's `seq`.
    pub fn replace_completed(
        &mut self,
        operator: &str,
        pending: i64,
        old: &str,
        new: &str,
        extra: Value,
    ) -> JResult<i64> {
        let tx = self.db.transaction()?;
        let open: Option<(String, String)> = tx
            .query_row(
                "SELECT command, card FROM office_log p WHERE seq=?1 AND outcome='pending'
                 AND NOT EXISTS (SELECT 1 FROM office_log c WHERE c.ref_seq = p.seq)",
                [pending],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if open.as_ref().map(|(c, k)| (c.as_str(), k.as_str())) != Some(("card.replace", old)) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                Some(format!(
                    "entry {pending} is not an open card.replace of {old}"
                )),
            ));
        }
        let reason = format!("replaced by {new}");
        tx.execute(
            "INSERT INTO office_blacklist(card, reason, until) VALUES(?1, ?2, NULL)
             ON CONFLICT(card) DO UPDATE SET reason=?2, until=NULL",
            params![old, reason],
        )?;
        let mut detail = json!({"old": old, "new": new, "reason": reason});
        if let (Some(d), Value::Object(x)) = (detail.as_object_mut(), extra) {
            for (k, v) in x {
                d.entry(k).or_insert(v);
            }
        }
        let seq = append_in(
            &tx,
            &NewEntry {
                operator,
                command: "card.replace",
                card: old,
                outcome: "completed",
                ref_seq: Some(pending),
                detail,
            },
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Entries, oldest first: of one card (card number or card id) and/or one command,
    /// written on or after `since` (RFC 3339 or a date prefix).
    pub fn entries(
        &self,
        card: Option<&str>,
        command: Option<&str>,
        since: Option<&str>,
    ) -> JResult<Vec<OfficeEntry>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {ENTRY_COLS} FROM office_log
             WHERE (?1 IS NULL OR card = ?1) AND (?2 IS NULL OR command = ?2)
               AND (?3 IS NULL OR time >= ?3) ORDER BY seq"
        ))?;
        let rows = st.query_map(params![card, command, since], entry_row)?;
        rows.collect()
    }

    /// The newest entry of the chain.
    pub fn head(&self) -> JResult<Option<AuditHead>> {
        office_head(&self.db)
    }

    /// Put `card` on the office's blacklist (or change its reason and end date), with
    /// its `blacklist.add` entry, in one transaction.
    pub fn blacklist_add(&mut self, operator: &str, e: &OfficeBlacklisted) -> JResult<i64> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO office_blacklist(card, reason, until) VALUES(?1, ?2, ?3)
             ON CONFLICT(card) DO UPDATE SET reason=?2, until=?3",
            params![e.card, e.reason, e.until],
        )?;
        let seq = append_in(
            &tx,
            &NewEntry {
                operator,
                command: "blacklist.add",
                card: &e.card,
                outcome: "completed",
                ref_seq: None,
                detail: json!({"reason": e.reason, "until": e.until}),
            },
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Take `card` off the office's blacklist, with its `blacklist.remove` entry;
    /// `false` (and no entry) when it was not on it.
    pub fn blacklist_remove(&mut self, operator: &str, card: &str, why: &str) -> JResult<bool> {
        let tx = self.db.transaction()?;
        if tx.execute("DELETE FROM office_blacklist WHERE card=?1", [card])? == 0 {
            return Ok(false);
        }
        append_in(
            &tx,
            &NewEntry {
                operator,
                command: "blacklist.remove",
                card,
                outcome: "completed",
                ref_seq: None,
                detail: json!({"reason": why}),
            },
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The office's blacklist, by card.
    pub fn blacklist(&self) -> JResult<Vec<OfficeBlacklisted>> {
        blacklist_of(&self.db)
    }

    /// The connection: for a command that changes office state of its own and
    /// journals it in the same transaction ([`append_in`]).
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.db
    }
}

fn blacklist_of(db: &Connection) -> JResult<Vec<OfficeBlacklisted>> {
    let mut st = db.prepare("SELECT card, reason, until FROM office_blacklist ORDER BY card")?;
    let rows = st.query_map([], |r| {
        Ok(OfficeBlacklisted {
            card: r.get(0)?,
            reason: r.get(1)?,
            until: r.get(2)?,
        })
    })?;
    rows.collect()
}

fn office_head(db: &Connection) -> JResult<Option<AuditHead>> {
    db.prepare_cached("SELECT seq, hash FROM office_head WHERE id=1")?
        .query_row([], |r| {
            Ok(AuditHead {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()
}

/// Append `e` inside the caller's transaction (after the head, else after the last
/// row) and move the head; returns its `seq`.
pub fn append_in(db: &Connection, e: &NewEntry<'_>) -> JResult<i64> {
    let last = match office_head(db)? {
        Some(h) => Some(h),
        None => db
            .prepare_cached("SELECT seq, hash FROM office_log ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| {
                Ok(AuditHead {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            })
            .optional()?,
    };
    let (prev_seq, prev) = last.map_or((0, String::new()), |h| (h.seq, h.hash));
    let entry = OfficeEntry {
        seq: prev_seq + 1,
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        operator: e.operator.to_string(),
        command: e.command.to_string(),
        card: e.card.to_string(),
        outcome: e.outcome.to_string(),
        ref_seq: e.ref_seq,
        detail: e.detail.clone(),
    };
    let hash = chain_hash(&prev, entry.seq, &content(&entry));
    db.prepare_cached(
        "INSERT INTO office_log(seq, time, operator, command, card, outcome, ref_seq, detail, hash)
         VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)",
    )?
    .execute(params![
        entry.seq,
        entry.time,
        entry.operator,
        entry.command,
        entry.card,
        entry.outcome,
        entry.ref_seq,
        entry.detail.to_string(),
        hash
    ])?;
    db.prepare_cached("INSERT OR REPLACE INTO office_head(id, seq, hash) VALUES(1, ?1, ?2)")?
        .execute(params![entry.seq, hash])?;
    Ok(entry.seq)
}

/// What [`verify_office`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OfficeVerification {
    pub entries: usize,
    pub head: Option<AuditHead>,
    /// Empty when the journal is intact; one line a finding.
    pub findings: Vec<String>,
}

/// Does the file at `path` hold an office journal?
pub fn has_office_log(path: &Path) -> Result<bool, String> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    db.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type='table' AND name='office_log'",
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}

/// Check an office journal (read-only): each entry's hash covers its content and the
/// previous hash, `seq` has no gap, the head names the last entry, each `ref_seq`
/// names an earlier `pending` entry, and the blacklist table is what the
/// `blacklist.*` entries and the completed `card.replace` entries leave.
pub fn verify_office(path: &Path) -> Result<OfficeVerification, String> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    verify_db(&db).map_err(|e| e.to_string())
}

fn verify_db(db: &Connection) -> JResult<OfficeVerification> {
    let mut v = OfficeVerification::default();
    let mut st = db.prepare(&format!(
        "SELECT {ENTRY_COLS}, hash FROM office_log ORDER BY seq"
    ))?;
    let rows = st.query_map([], |r| Ok((entry_row(r)?, r.get::<_, String>(8)?)))?;
    let mut prev = String::new();
    let mut expected = 1;
    let mut pending = std::collections::HashSet::new();
    let mut replay: BTreeMap<String, OfficeBlacklisted> = BTreeMap::new();
    let mut last = None;
    for row in rows {
        let (e, hash) = row?;
        v.entries += 1;
        if e.seq != expected {
            v.findings
                .push(format!("entries {expected} to {} are missing", e.seq - 1));
        }
        if chain_hash(&prev, e.seq, &content(&e)) != hash {
            v.findings.push(format!(
                "entry {} was changed (its hash does not match)",
                e.seq
            ));
        }
        if let Some(r) = e.ref_seq {
            if !pending.remove(&r) {
                v.findings.push(format!(
                    "entry {} closes {r}, which is not an open pending entry",
                    e.seq
                ));
            }
        }
        if e.outcome == "pending" {
            pending.insert(e.seq);
        }
        match e.command.as_str() {
            "blacklist.add" => {
                replay.insert(
                    e.card.clone(),
                    OfficeBlacklisted {
                        card: e.card.clone(),
                        reason: e.detail["reason"].as_str().unwrap_or_default().to_string(),
                        until: e.detail["until"].as_str().map(str::to_string),
                    },
                );
            }
            "blacklist.remove" => {
                replay.remove(&e.card);
            }
            // a completed replacement put the old card number on the blacklist
            "card.replace" if e.outcome == "completed" => {
                if let Some(old) = e.detail["old"].as_str() {
                    let reason = match e.detail["reason"].as_str() {
                        Some(r) => r.to_string(),
                        None => format!(
                            "replaced by {}",
                            e.detail["new"].as_str().unwrap_or_default()
                        ),
                    };
                    replay.insert(
                        old.to_string(),
                        OfficeBlacklisted {
                            card: old.to_string(),
                            reason,
                            until: None,
                        },
                    );
                }
            }
            _ => {}
        }
        prev = hash.clone();
        expected = e.seq + 1;
        last = Some(AuditHead { seq: e.seq, hash });
    }
    v.head = office_head(db)?;
    match (&v.head, &last) {
        (None, None) => {}
        (None, Some(_)) => v.findings.push("the head row is missing".into()),
        (Some(h), None) => v.findings.push(format!(
            "the head names entry {} but there are no entries",
            h.seq
        )),
        (Some(h), Some(l)) if h != l => v.findings.push(format!(
            "the head names entry {} but the last entry is {} (entries deleted or changed)",
            h.seq, l.seq
        )),
        _ => {}
    }
    let table: BTreeMap<String, OfficeBlacklisted> = blacklist_of(db)?
        .into_iter()
        .map(|b| (b.card.clone(), b))
        .collect();
    for (card, b) in &table {
        match replay.get(card) {
            None => v.findings.push(format!(
                "blacklist: {card} is listed with no blacklist.add entry"
            )),
            Some(r) if r != b => v.findings.push(format!(
                "blacklist: {card} differs from its last blacklist.add entry"
            )),
            _ => {}
        }
    }
    for card in replay.keys().filter(|c| !table.contains_key(*c)) {
        v.findings.push(format!(
            "blacklist: {card} was removed with no blacklist.remove entry"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(command: &'a str, outcome: &'a str, ref_seq: Option<i64>) -> NewEntry<'a> {
        NewEntry {
            operator: "clerk1",
            command,
            card: "A65020001",
            outcome,
            ref_seq,
            detail: json!({"amount_fen": 500}),
        }
    }

    #[test]
    fn pending_entries_stay_open_until_closed_and_the_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.db");
        let mut j = OfficeJournal::open(&path).unwrap();
        let p = j.append(&entry("load", "pending", None)).unwrap();
        assert_eq!(j.open_items("load").unwrap().len(), 1);
        assert!(j.open_items("card.block").unwrap().is_empty());
        j.append(&entry("load", "completed", Some(p))).unwrap();
        assert!(j.open_items("load").unwrap().is_empty());
        j.blacklist_add(
            "clerk1",
            &OfficeBlacklisted {
                card: "A65020009".into(),
                reason: "lost, reported at the counter".into(),
                until: None,
            },
        )
        .unwrap();
        assert!(j.blacklist_remove("clerk1", "A1", "no").is_ok_and(|r| !r));
        let v = verify_office(&path).unwrap();
        assert_eq!((v.entries, v.findings.clone()), (3, vec![]), "{v:?}");
        assert_eq!(v.head.unwrap().seq, 3);
        assert!(has_office_log(&path).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn edits_deletions_and_a_quiet_blacklist_change_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.db");
        let mut j = OfficeJournal::open(&path).unwrap();
        for _ in 0..3 {
            j.append(&entry("pin.reload", "completed", None)).unwrap();
        }
        j.blacklist_add(
            "clerk1",
            &OfficeBlacklisted {
                card: "A65020009".into(),
                reason: "lost".into(),
                until: Some("2027-01-01".into()),
            },
        )
        .unwrap();
        let db = j.connection();
        db.execute("UPDATE office_log SET operator='someone' WHERE seq=2", [])
            .unwrap();
        db.execute("DELETE FROM office_blacklist", []).unwrap();
        db.execute(
            "INSERT INTO office_blacklist(card, reason) VALUES('A65029999','x')",
            [],
        )
        .unwrap();
        let f = verify_office(&path).unwrap().findings;
        assert!(f.iter().any(|t| t.contains("entry 2 was changed")), "{f:?}");
        assert!(f.iter().any(|t| t.contains("A65029999 is listed")), "{f:?}");
        assert!(
            f.iter().any(|t| t.contains("A65020009 was removed")),
            "{f:?}"
        );
        let db = j.connection();
        db.execute("DELETE FROM office_log WHERE seq=4", [])
            .unwrap();
        let f = verify_office(&path).unwrap().findings;
        assert!(f.iter().any(|t| t.contains("last entry is 3")), "{f:?}");
        // closing an entry that was never pending is a finding too
        let mut j = OfficeJournal::open(&path).unwrap();
        j.connection()
            .execute("DELETE FROM office_head", [])
            .unwrap();
        j.append(&entry("load", "completed", Some(1))).unwrap();
        let f = verify_office(&path).unwrap().findings;
        assert!(
            f.iter().any(|t| t.contains("not an open pending entry")),
            "{f:?}"
        );
    }

    #[test]
    fn a_completed_replacement_blacklists_the_old_number_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("office.db");
        let mut j = OfficeJournal::open(&path).unwrap();
        let pending = j
            .append(&NewEntry {
                operator: "clerk2",
                command: "card.replace",
                card: "A65020001",
                outcome: "pending",
                ref_seq: None,
                detail: json!({"old": "A65020001", "new": "A65020777"}),
            })
            .unwrap();
        assert_eq!(
            j.open_items_of("card.replace", "A65020001").unwrap().len(),
            1
        );
        assert!(j
            .open_items_of("card.replace", "A65029999")
            .unwrap()
            .is_empty());
        // only an open card.replace of that old number can be closed
        assert!(j
            .replace_completed("clerk2", pending, "A65020002", "A65020777", json!({}))
            .is_err());
        assert!(
            j.blacklist().unwrap().is_empty(),
            "nothing written on a refusal"
        );
        let seq = j
            .replace_completed(
                "clerk2",
                pending,
                "A65020001",
                "A65020777",
                json!({"card_id": "650200D156000005A1A2A3A4A5A6A7A8", "old": "ignored"}),
            )
            .unwrap();
        assert_eq!(seq, pending + 1);
        assert!(j.open_items("card.replace").unwrap().is_empty());
        assert_eq!(
            j.blacklist().unwrap(),
            vec![OfficeBlacklisted {
                card: "A65020001".into(),
                reason: "replaced by A65020777".into(),
                until: None,
            }]
        );
        let closing = j.entries(None, Some("card.replace"), None).unwrap();
        assert_eq!(
            closing[1].detail["old"], "A65020001",
            "extra keys never override"
        );
        assert_eq!(
            closing[1].detail["card_id"],
            "650200D156000005A1A2A3A4A5A6A7A8"
        );
        assert_eq!(closing[1].ref_seq, Some(pending));
        // closed once: a second close is refused
        assert!(j
            .replace_completed("clerk2", pending, "A65020001", "A65020777", json!({}))
            .is_err());
        let v = verify_office(&path).unwrap();
        assert_eq!((v.entries, v.findings), (2, vec![]));
        // the row taken off the table behind the log's back is found
        j.connection()
            .execute("DELETE FROM office_blacklist", [])
            .unwrap();
        let f = verify_office(&path).unwrap().findings;
        assert!(
            f.iter().any(|t| t.contains("A65020001 was removed")),
            "{f:?}"
        );
    }
}
