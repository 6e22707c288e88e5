//! The journal: one SQLite file (WAL, `synchronous=FULL`) holding the payments, the
//! terminal sequence, the blacklist and the audit log.
//!
//! In the daemon exactly one thread owns the [`Journal`] ([`writer::JournalHandle`]);
//! everyone else sends it closures over a channel. Other programs (`sscard audit
//! verify`, backups) open the file read-only.
//!
//! This crate (`sscard-journal`) is what `sscardd`, which writes the journal, and
//! `sscard`, which checks its chain (`sscard audit verify`) and backs it up (`sscard
//! backup`), share, so that the command line does not link the daemon: the journal
//! itself, [`backup`] (online backups and their retention) and [`config`] (the journal's
//! path and the `[backup]` section of `sscardd.toml`, with the daemon's defaults).
//!
//! # Schema (`PRAGMA user_version` = [`SCHEMA_VERSION`])
//!
//! - `payments`: one row per debit and per refund, key `(order_id, kind)`.
//!   `order_id`, `kind` (`debit` | `refund`), `txn_id` (unique: terminal id, `-`, the
//!   terminal sequence; refunds `-R`), `status` (`pending` | `completed` | `failed`),
//!   `card_id` (32 hex), `card_number`, `amount_fen`, `balance_before_fen`,
//!   `balance_after_fen`, `counter` (purse counter of a debit, online counter of a
//!   refund), `terminal_id`, `terminal_seq`, `time` (RFC 3339, the date and time sent
//!   to the card), `day` (`YYYY-MM-DD` of `time`), `tac` (8 hex; empty while pending,
//!   when failed, or when recovery found the payment in the card's log without a proof),
//!   `operator`, `created`, `settled` (when the outcome was recorded), `uploaded` (when
//!   the settlement centre acknowledged it; NULL until then).
//!   A debit's row is written `pending` **before** DEBIT goes to the card and updated
//!   after; a pending row is settled by recovery when its card is seen again.
//! - `sequence`: the next terminal sequence number (reserved durably before use).
//! - `blacklist`: `card` (card number or card id), `reason`, `until` (`YYYY-MM-DD`
//!   inclusive, or NULL), `source` (`admin` | `file`), `added`.
//!   Schema 2 adds `pno` (the payment's number in insert order, 1, 2, …, never reused),
//!   `audit_seq`, `audit_hash` (the chain head when the journal last wrote the row) and
//!   `row_hash` ([`chain`]).
//! - `payments_written`: how many payments were ever inserted (the next `pno` − 1).
//! - `sequence`: the next terminal sequence number (reserved durably before use).
//! - `blacklist`: `card` (card number or card id), `reason`, `until` (`YYYY-MM-DD`
//!   inclusive, or NULL), `source` (`admin` | `file`), `added`.
//! - `audit`: `seq` (1, 2, …), `time`, `operator`, `method`, `reader`, `card_number`,
//!   `outcome`, `payments` (`payments_written` when the row was written; NULL in rows
//!   of schema 1), `hash` ([`chain`]).
//! - `audit_head`: the last `seq` and `hash`, written in the same transaction as each
//!   audit row, so that deleting the newest rows is found too.
//! - `probe`: one counter row that [`Journal::probe_write`] bumps.
//!
//! The file and its `-wal` / `-shm` files are mode 0640 (SQLite gives the latter the
//! database file's mode), whatever the umask.
#![forbid(unsafe_code)]

pub mod backup;
pub mod chain;
pub mod config;
#[cfg(test)]
mod fs_tests;
pub mod office;
pub mod payment;
pub mod writer;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use chain::{verify, verify_chain, AuditHead, Tamper, Verification};
pub use payment::{PaymentKind, PaymentStatus};
pub use writer::{JournalError, JournalHandle};

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 2;

/// The mode of the journal and its `-wal` / `-shm` files: the daemon's group may read
/// (an auditor running `sscard audit verify`), others nothing.
pub const FILE_MODE: u32 = 0o640;

pub type JResult<T> = Result<T, rusqlite::Error>;

/// The open journal.
pub struct Journal {
    db: Connection,
    /// Commits of this connection (SQLite's commit hook) and, of those, the unsynced
    /// probes: the difference is the durable commits, each a disk flush.
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    probes: u64,
}

/// A payment row, as the API's payment object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub order_id: String,
    pub txn_id: String,
    pub kind: PaymentKind,
    pub status: PaymentStatus,
    pub card_id: String,
    pub card_number: String,
    pub amount_fen: i64,
    pub balance_before_fen: i64,
    pub balance_after_fen: i64,
    pub counter: i64,
    pub terminal_id: String,
    pub terminal_seq: i64,
    /// RFC 3339 with the terminal's UTC offset.
    pub time: String,
    pub tac: String,
    pub operator: String,
}

impl Payment {
    /// The payment object of api.md.
    pub fn to_json(&self) -> Value {
        json!({
            "order_id": self.order_id, "txn_id": self.txn_id, "kind": self.kind,
            "status": self.status, "card_id": self.card_id, "card_number": self.card_number,
            "amount_fen": self.amount_fen, "balance_before_fen": self.balance_before_fen,
            "balance_after_fen": self.balance_after_fen, "counter": self.counter,
            "terminal_id": self.terminal_id, "terminal_seq": self.terminal_seq,
            "time": self.time, "tac": self.tac, "operator": self.operator,
        })
    }

    /// The day of `time` (`YYYY-MM-DD`).
    pub fn day(&self) -> &str {
        self.time.get(..10).unwrap_or("")
    }
}

/// A blacklist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlacklistEntry {
    pub card: String,
    pub reason: String,
    pub until: Option<String>,
    pub source: String,
}

const COLS: &str = "order_id, txn_id, kind, status, card_id, card_number, amount_fen, \
    balance_before_fen, balance_after_fen, counter, terminal_id, terminal_seq, time, tac, operator";

fn row(r: &rusqlite::Row<'_>) -> JResult<Payment> {
    Ok(Payment {
        order_id: r.get(0)?,
        txn_id: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        card_id: r.get(4)?,
        card_number: r.get(5)?,
        amount_fen: r.get(6)?,
        balance_before_fen: r.get(7)?,
        balance_after_fen: r.get(8)?,
        counter: r.get(9)?,
        terminal_id: r.get(10)?,
        terminal_seq: r.get(11)?,
        time: r.get(12)?,
        tac: r.get(13)?,
        operator: r.get(14)?,
    })
}

fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn now_ms() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

fn io_error(path: &Path, e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(format!("{}: {e}", path.display())),
    )
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Create the journal file with [`FILE_MODE`] before SQLite does (SQLite would use the
/// umask's mode, and gives the `-wal` / `-shm` files the database file's mode), and
/// take the others' access from existing files.
fn prepare_files(path: &Path) -> JResult<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(f) => f
            // the umask may have taken the group's read
            .set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_error(path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(path, e)),
    }
    for p in [
        path.to_path_buf(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ] {
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        let mode = m.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !0o007))
                .map_err(|e| io_error(&p, e))?;
        }
    }
    Ok(())
}

/// Schema 1 (as the builds before anchoring wrote it).
const SCHEMA_1: &str = "
     CREATE TABLE IF NOT EXISTS payments(
       order_id TEXT NOT NULL, kind TEXT NOT NULL CHECK(kind IN ('debit','refund')),
       txn_id TEXT NOT NULL UNIQUE,
       status TEXT NOT NULL CHECK(status IN ('pending','completed','failed')),
       card_id TEXT NOT NULL, card_number TEXT NOT NULL, amount_fen INTEGER NOT NULL,
       balance_before_fen INTEGER NOT NULL, balance_after_fen INTEGER NOT NULL,
       counter INTEGER NOT NULL, terminal_id TEXT NOT NULL, terminal_seq INTEGER NOT NULL,
       time TEXT NOT NULL, day TEXT NOT NULL, tac TEXT NOT NULL DEFAULT '',
       operator TEXT NOT NULL, created TEXT NOT NULL, settled TEXT, uploaded TEXT,
       PRIMARY KEY(order_id, kind));
     CREATE INDEX IF NOT EXISTS payments_card_day ON payments(card_id, day);
     CREATE INDEX IF NOT EXISTS payments_status ON payments(status);
     CREATE INDEX IF NOT EXISTS payments_to_upload ON payments(time) WHERE uploaded IS NULL;
     CREATE TABLE IF NOT EXISTS sequence(id INTEGER PRIMARY KEY CHECK(id=1), next INTEGER NOT NULL);
     INSERT OR IGNORE INTO sequence(id, next) VALUES(1, 1);
     CREATE TABLE IF NOT EXISTS blacklist(card TEXT PRIMARY KEY, reason TEXT NOT NULL,
       until TEXT, source TEXT NOT NULL DEFAULT 'admin', added TEXT NOT NULL DEFAULT '');
     CREATE TABLE IF NOT EXISTS audit(
       seq INTEGER PRIMARY KEY, time TEXT NOT NULL, operator TEXT NOT NULL, method TEXT NOT NULL,
       reader TEXT NOT NULL, card_number TEXT NOT NULL, outcome TEXT NOT NULL, hash TEXT NOT NULL);
     CREATE TABLE IF NOT EXISTS audit_head(id INTEGER PRIMARY KEY CHECK(id=1),
       seq INTEGER NOT NULL, hash TEXT NOT NULL);";

/// Schema 1 → 2: the anchor columns, payment numbers and the probe.
const SCHEMA_2: &str = "
     ALTER TABLE payments ADD COLUMN pno INTEGER;
     ALTER TABLE payments ADD COLUMN audit_seq INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE payments ADD COLUMN audit_hash TEXT NOT NULL DEFAULT '';
     ALTER TABLE payments ADD COLUMN row_hash TEXT NOT NULL DEFAULT '';
     ALTER TABLE audit ADD COLUMN payments INTEGER;
     CREATE TABLE payments_written(id INTEGER PRIMARY KEY CHECK(id=1), n INTEGER NOT NULL);
     CREATE TABLE probe(id INTEGER PRIMARY KEY CHECK(id=1), n INTEGER NOT NULL);
     INSERT INTO probe(id, n) VALUES(1, 0);";

/// Bring a schema-1 (or new) journal to schema 2 in one transaction: number the
/// payments in insert order, write an audit entry saying so (`journal.create` for a new
/// file, `journal.migrate` otherwise) and anchor every payment to it.
fn migrate_to_2(db: &mut Connection, fresh: bool) -> JResult<()> {
    let tx = db.transaction()?;
    tx.execute_batch(SCHEMA_1)?;
    tx.execute_batch(SCHEMA_2)?;
    let rowids = tx
        .prepare("SELECT rowid FROM payments ORDER BY rowid")?
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<JResult<Vec<_>>>()?;
    for (i, rowid) in rowids.iter().enumerate() {
        tx.execute(
            "UPDATE payments SET pno=?2 WHERE rowid=?1",
            params![rowid, i as i64 + 1],
        )?;
    }
    tx.execute_batch("CREATE UNIQUE INDEX payments_pno ON payments(pno);")?;
    tx.execute(
        "INSERT INTO payments_written(id, n) VALUES(1, ?1)",
        [rowids.len() as i64],
    )?;
    let (method, outcome) = if fresh {
        ("journal.create", format!("schema {SCHEMA_VERSION}"))
    } else {
        (
            "journal.migrate",
            format!(
                "schema 1 to {SCHEMA_VERSION}: {} payments anchored to this entry",
                rowids.len()
            ),
        )
    };
    chain::append(&tx, &[&now_ms(), "sscardd", method, "", "", &outcome])?;
    for rowid in rowids {
        chain::anchor(&tx, rowid)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Record a pending payment's outcome inside `tx` (see [`Journal::settle`]).
fn settle_in(tx: &rusqlite::Transaction<'_>, p: &Payment) -> JResult<bool> {
    let rowid: Option<i64> = tx
        .prepare_cached(
            "UPDATE payments SET status=?3, tac=?4, counter=?5, balance_before_fen=?6,
                   balance_after_fen=?7, settled=?8
                 WHERE order_id=?1 AND kind=?2 AND status='pending' RETURNING rowid",
        )?
        .query_row(
            params![
                p.order_id,
                p.kind,
                p.status,
                p.tac,
                p.counter,
                p.balance_before_fen,
                p.balance_after_fen,
                now()
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(rowid) = rowid else {
        return Ok(false);
    };
    chain::anchor(tx, rowid)?;
    Ok(true)
}

impl Journal {
    /// Open (creating if needed, mode [`FILE_MODE`]) a journal file, migrating a
    /// schema-1 journal to schema 2.
    pub fn open(path: &Path) -> JResult<Journal> {
        prepare_files(path)?;
        let mut db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal schema version {version} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        if version < SCHEMA_VERSION {
            let fresh: bool = db.query_row(
                "SELECT COUNT(*) = 0 FROM sqlite_master WHERE name='payments'",
                [],
                |r| r.get(0),
            )?;
            migrate_to_2(&mut db, fresh)?;
        }
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = commits.clone();
        db.commit_hook(Some(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }));
        Ok(Journal {
            db,
            commits,
            probes: 0,
        })
    }

    /// Commit one tiny write (the `probe` counter), so that a full disk or a read-only
    /// journal shows here, before a call that must be audited. Not synced (a lost probe
    /// costs nothing): microseconds, not a disk flush. A WAL that still has room can
    /// take the probe on a full disk; the audit write after it then has room too.
    pub fn probe_write(&mut self) -> JResult<()> {
        let pragma = |db: &Connection, sql: &str| db.prepare_cached(sql)?.execute([]);
        pragma(&self.db, "PRAGMA synchronous=NORMAL")?;
        let r = self
            .db
            .prepare_cached("UPDATE probe SET n=n+1 WHERE id=1")
            .and_then(|mut st| st.execute([]));
        pragma(&self.db, "PRAGMA synchronous=FULL")?;
        match r? {
            1 => {
                self.probes += 1;
                Ok(())
            }
            _ => Err(rusqlite::Error::QueryReturnedNoRows),
        }
    }

    /// Durable commits (each a disk flush: everything but the write probes) since the
    /// journal was opened.
    pub fn durable_commits(&self) -> u64 {
        self.commits
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(self.probes)
    }

    /// The chain's newest entry (none in a journal that never audited).
    pub fn audit_head(&self) -> JResult<Option<AuditHead>> {
        chain::head(&self.db)
    }

    /// A cheap read that proves the database answers.
    pub fn check(&self) -> JResult<()> {
        self.db
            .query_row("SELECT next FROM sequence WHERE id=1", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|_| ())
    }

    /// Fold the WAL back into the database file (at shutdown).
    pub fn checkpoint(&self) -> JResult<()> {
        self.db
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }

    /// The next terminal sequence number no payment row has used: where
    /// [`JournalHandle::reserve_seq`] starts.
    pub fn stored_next_seq(&self) -> JResult<i64> {
        self.db
            .prepare_cached("SELECT next FROM sequence WHERE id=1")?
            .query_row([], |r| r.get(0))
    }

    /// The payment of an order (`kind` `debit` or `refund`).
    pub fn payment(&self, order_id: &str, kind: PaymentKind) -> JResult<Option<Payment>> {
        self.db
            .prepare_cached(&format!(
                "SELECT {COLS} FROM payments WHERE order_id=?1 AND kind=?2"
            ))?
            .query_row(params![order_id, kind], row)
            .optional()
    }

    /// Write a new payment (normally `pending`, before the card command), numbered
    /// and anchored to the chain head, with its terminal sequence number made durable in
    /// the same commit (the stored next number moves past it: reserved in memory by
    /// [`JournalHandle::reserve_seq`], it is never handed out again). Fails on a second
    /// row for the same order and kind.
    pub fn insert(&self, p: &Payment) -> JResult<()> {
        let tx = self.db.unchecked_transaction()?;
        tx.prepare_cached("UPDATE sequence SET next=MAX(next, ?1) WHERE id=1")?
            .execute([p.terminal_seq.saturating_add(1)])?;
        let pno: i64 = tx
            .prepare_cached("UPDATE payments_written SET n=n+1 WHERE id=1 RETURNING n")?
            .query_row([], |r| r.get(0))?;
        tx.prepare_cached(&format!(
            "INSERT INTO payments({COLS}, day, created, pno)
             VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)"
        ))?
        .execute(params![
            p.order_id,
            p.txn_id,
            p.kind,
            p.status,
            p.card_id,
            p.card_number,
            p.amount_fen,
            p.balance_before_fen,
            p.balance_after_fen,
            p.counter,
            p.terminal_id,
            p.terminal_seq,
            p.time,
            p.tac,
            p.operator,
            p.day(),
            now(),
            pno
        ])?;
        chain::anchor(&tx, tx.last_insert_rowid())?;
        tx.commit()
    }

    /// Record the outcome of a pending payment: status, TAC, counter and balances
    /// (re-anchored to the chain head). Returns false when the row was not pending any
    /// more (settled meanwhile).
    pub fn settle(&self, p: &Payment) -> JResult<bool> {
        let tx = self.db.unchecked_transaction()?;
        if !settle_in(&tx, p)? {
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    /// Every pending payment, oldest first.
    pub fn pending(&self) -> JResult<Vec<Payment>> {
        self.query(
            &format!("SELECT {COLS} FROM payments WHERE status='pending' ORDER BY time"),
            [],
        )
    }

    /// Sum of a card's debits on a day that are completed or pending (a pending one
    /// may have happened).
    pub fn card_day_total(&self, card_id: &str, day: &str) -> JResult<i64> {
        self.db
            .prepare_cached(
                "SELECT COALESCE(SUM(amount_fen),0) FROM payments
                 WHERE card_id=?1 AND day=?2 AND kind='debit' AND status!='failed'",
            )?
            .query_row(params![card_id, day], |r| r.get(0))
    }

    /// Every payment of a day, in time order.
    pub fn day(&self, day: &str) -> JResult<Vec<Payment>> {
        self.query(
            &format!("SELECT {COLS} FROM payments WHERE day=?1 ORDER BY time, txn_id"),
            [day],
        )
    }

    /// Completed payments the settlement centre has not acknowledged, oldest first.
    pub fn to_upload(&self, limit: usize) -> JResult<Vec<Payment>> {
        self.query(
            &format!(
                "SELECT {COLS} FROM payments WHERE status='completed' AND uploaded IS NULL
                 ORDER BY time, txn_id LIMIT ?1"
            ),
            [limit as i64],
        )
    }

    /// How many completed payments wait for the settlement centre's acknowledgement.
    pub fn upload_backlog(&self) -> JResult<i64> {
        self.db.query_row(
            "SELECT COUNT(*) FROM payments WHERE status='completed' AND uploaded IS NULL",
            [],
            |r| r.get(0),
        )
    }

    /// Mark completed payments acknowledged by the settlement centre; returns how many
    /// rows changed (ids unknown, not completed or already marked change nothing).
    pub fn mark_uploaded(&mut self, txn_ids: &[String]) -> JResult<usize> {
        let tx = self.db.transaction()?;
        let t = now();
        let mut n = 0;
        for id in txn_ids {
            let rowid: Option<i64> = tx
                .query_row(
                    "UPDATE payments SET uploaded=?2
                     WHERE txn_id=?1 AND status='completed' AND uploaded IS NULL RETURNING rowid",
                    params![id, t],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(rowid) = rowid {
                chain::anchor(&tx, rowid)?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    fn query<P: rusqlite::Params>(&self, sql: &str, p: P) -> JResult<Vec<Payment>> {
        let mut st = self.db.prepare(sql)?;
        let v = st.query_map(p, row)?.collect::<JResult<Vec<_>>>()?;
        Ok(v)
    }

    /// Add or replace a blacklist entry.
    pub fn blacklist_add(&self, e: &BlacklistEntry) -> JResult<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO blacklist(card, reason, until, source, added) VALUES(?1,?2,?3,?4,?5)",
            params![e.card, e.reason, e.until, e.source, now()],
        )?;
        Ok(())
    }

    /// Remove an entry; false if there was none.
    pub fn blacklist_remove(&self, card: &str) -> JResult<bool> {
        Ok(self
            .db
            .execute("DELETE FROM blacklist WHERE card=?1", [card])?
            == 1)
    }

    pub fn blacklist(&self) -> JResult<Vec<BlacklistEntry>> {
        let mut st = self
            .db
            .prepare("SELECT card, reason, until, source FROM blacklist ORDER BY card")?;
        let v = st
            .query_map([], |r| {
                Ok(BlacklistEntry {
                    card: r.get(0)?,
                    reason: r.get(1)?,
                    until: r.get(2)?,
                    source: r.get(3)?,
                })
            })?
            .collect::<JResult<Vec<_>>>()?;
        Ok(v)
    }

    /// Replace the entries imported from the blacklist file by `entries`.
    pub fn blacklist_import(&mut self, entries: &[BlacklistEntry]) -> JResult<()> {
        let tx = self.db.transaction()?;
        tx.execute("DELETE FROM blacklist WHERE source='file'", [])?;
        let t = now();
        for e in entries {
            // an admin's entry for the same card stays
            tx.execute(
                "INSERT OR IGNORE INTO blacklist(card, reason, until, source, added) VALUES(?1,?2,?3,'file',?4)",
                params![e.card, e.reason, e.until, t],
            )?;
        }
        tx.commit()
    }

    /// The reason a card (by number or id) is blacklisted on `today`, if it is.
    pub fn blacklisted(
        &self,
        card_number: &str,
        card_id: &str,
        today: &str,
    ) -> JResult<Option<String>> {
        self.db
            .prepare_cached(
                "SELECT reason FROM blacklist WHERE card IN (?1, ?2) AND (until IS NULL OR until >= ?3)",
            )?
            .query_row(params![card_number, card_id, today], |r| r.get(0))
            .optional()
    }

    /// Append an audit entry chained to the head. A failed write (a full disk, a
    /// read-only file) is this call's error.
    pub fn audit(
        &mut self,
        time: &str,
        operator: &str,
        method: &str,
        reader: &str,
        card: &str,
        outcome: &str,
    ) -> JResult<()> {
        self.audit_settling(time, operator, method, reader, card, outcome, None)
            .map(|_| ())
    }

    /// [`Journal::audit`] with the outcome of the call's pending payment `settle` in the
    /// same commit (one disk flush where there would be two); the payment is anchored
    /// to this very entry. Returns whether the payment was still pending.
    #[allow(clippy::too_many_arguments)]
    pub fn audit_settling(
        &mut self,
        time: &str,
        operator: &str,
        method: &str,
        reader: &str,
        card: &str,
        outcome: &str,
        settle: Option<&Payment>,
    ) -> JResult<bool> {
        let tx = self.db.transaction()?;
        chain::append(&tx, &[time, operator, method, reader, card, outcome])?;
        let changed = match settle {
            Some(p) => settle_in(&tx, p)?,
            None => false,
        };
        tx.commit()?;
        Ok(changed)
    }

    /// Audit entries between `since` and `until` (RFC 3339 prefixes compare as text),
    /// of one operator, at most `limit`, oldest first.
    pub fn audit_query(
        &self,
        since: Option<&str>,
        until: Option<&str>,
        operator: Option<&str>,
        limit: usize,
    ) -> JResult<Vec<Value>> {
        let mut st = self.db.prepare(
            "SELECT seq, time, operator, method, reader, card_number, outcome, hash FROM audit
             WHERE (?1 IS NULL OR time >= ?1) AND (?2 IS NULL OR time <= ?2) AND (?3 IS NULL OR operator = ?3)
             ORDER BY seq LIMIT ?4",
        )?;
        let v = st
            .query_map(params![since, until, operator, limit as i64], |r| {
                Ok(json!({"seq": r.get::<_, i64>(0)?, "time": r.get::<_, String>(1)?, "operator": r.get::<_, String>(2)?,
                    "method": r.get::<_, String>(3)?, "reader": r.get::<_, String>(4)?, "card_number": r.get::<_, String>(5)?,
                    "outcome": r.get::<_, String>(6)?, "hash": r.get::<_, String>(7)?}))
            })?
            .collect::<JResult<Vec<_>>>()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(order: &str, amount: i64, status: PaymentStatus) -> Payment {
        Payment {
            order_id: order.into(),
            txn_id: format!("650200000001-{order}"),
            kind: PaymentKind::Debit,
            status,
            card_id: "C".into(),
            card_number: "A1".into(),
            amount_fen: amount,
            balance_before_fen: 1000,
            balance_after_fen: 1000 - amount,
            counter: 3,
            terminal_id: "650200000001".into(),
            terminal_seq: 1,
            time: "2026-11-23T10:00:00+08:00".into(),
            tac: String::new(),
            operator: "li".into(),
        }
    }

    #[test]
    fn payments_orders_totals_and_upload_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        assert_eq!(j.stored_next_seq().unwrap(), 1);
        j.insert(&payment("A", 100, PaymentStatus::Pending))
            .unwrap();
        assert!(
            j.insert(&payment("A", 100, PaymentStatus::Pending))
                .is_err(),
            "order is unique"
        );
        j.insert(&payment("B", 50, PaymentStatus::Pending)).unwrap();
        j.insert(&payment("C", 7, PaymentStatus::Failed)).unwrap();
        assert_eq!(j.card_day_total("C", "2026-11-23").unwrap(), 150);
        assert_eq!(j.pending().unwrap().len(), 2);
        let mut done = payment("A", 100, PaymentStatus::Completed);
        done.tac = "0102A0B0".into();
        assert!(j.settle(&done).unwrap());
        assert!(!j.settle(&done).unwrap(), "only a pending row settles");
        assert_eq!(
            j.payment("A", PaymentKind::Debit).unwrap().unwrap().tac,
            "0102A0B0"
        );
        assert_eq!(j.payment("A", PaymentKind::Refund).unwrap(), None);
        let up = j.to_upload(10).unwrap();
        assert_eq!(up.len(), 1);
        j.mark_uploaded(&[up[0].txn_id.clone()]).unwrap();
        assert!(j.to_upload(10).unwrap().is_empty());
        assert_eq!(j.day("2026-11-23").unwrap().len(), 3);
    }

    #[test]
    fn a_rows_sequence_is_durable_with_it_and_the_outcome_with_its_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.stored_next_seq().unwrap(), 1);
        let mut p = payment("A", 100, PaymentStatus::Pending);
        p.terminal_seq = 5;
        let c1 = j.durable_commits();
        j.insert(&p).unwrap();
        assert_eq!(j.durable_commits(), c1 + 1, "row and sequence: one commit");
        drop(j);
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.stored_next_seq().unwrap(), 6, "never handed out again");
        // a lower number (another reader's, inserted later) does not move it back
        let mut q = payment("B", 100, PaymentStatus::Pending);
        q.terminal_seq = 4;
        j.insert(&q).unwrap();
        assert_eq!(j.stored_next_seq().unwrap(), 6);
        // the outcome with the call's audit entry: one commit, anchored to that entry
        let mut done = p.clone();
        done.status = PaymentStatus::Completed;
        let c2 = j.durable_commits();
        assert!(j
            .audit_settling("t", "li", "pay.debit", "r", "A1", "ok", Some(&done))
            .unwrap());
        assert_eq!(j.durable_commits(), c2 + 1);
        assert_eq!(
            j.payment("A", PaymentKind::Debit).unwrap().unwrap().status,
            PaymentStatus::Completed
        );
        assert!(!j
            .audit_settling("t", "li", "pay.debit", "r", "A1", "ok", Some(&done))
            .unwrap());
        verify(&path).unwrap();
    }

    #[test]
    fn audit_chain_finds_changes_gaps_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        for i in 0..4 {
            j.audit("t", "li", "pay.debit", "r", "A1", &format!("ok {i}"))
                .unwrap();
        }
        // entry 1 is the journal's creation
        assert_eq!(verify_chain(&path).unwrap(), 5);
        sql(&path, "DELETE FROM audit WHERE seq=5");
        assert_eq!(
            verify_chain(&path).unwrap_err(),
            Tamper::Truncated { last: 4, head: 5 }
        );
        sql(&path, "UPDATE audit SET outcome='x' WHERE seq=4");
        assert_eq!(verify_chain(&path).unwrap_err(), Tamper::Changed { seq: 4 });
        sql(&path, "DELETE FROM audit WHERE seq=3");
        assert_eq!(
            verify_chain(&path).unwrap_err(),
            Tamper::Deleted { seq: 4, prev: 2 }
        );
    }

    fn sql(path: &Path, s: &str) {
        Connection::open(path).unwrap().execute_batch(s).unwrap();
    }

    fn findings(path: &Path) -> Vec<Tamper> {
        verify(path).unwrap().findings
    }

    /// A journal as the daemon leaves it: audit entries around 6 debits, settled and
    /// uploaded; returns the audit seq after which the last 3 payments were written.
    fn busy_journal(path: &Path) -> i64 {
        let mut j = Journal::open(path).unwrap();
        let mut mid = 0;
        for i in 0..6 {
            let o = format!("O{i}");
            j.audit("t", "li", "session.login", "", "", "ok").unwrap();
            let mut p = payment(&o, 10 + i, PaymentStatus::Pending);
            p.txn_id = format!("650200000001-{i}");
            j.insert(&p).unwrap();
            p.status = PaymentStatus::Completed;
            p.tac = "0102A0B0".into();
            j.settle(&p).unwrap();
            j.audit("t", "li", "pay.debit", "r", "A1", &format!("ok {o}"))
                .unwrap();
            if i == 2 {
                mid = j.audit_head().unwrap().unwrap().seq;
            }
        }
        j.mark_uploaded(&["650200000001-0".to_string()]).unwrap();
        mid
    }

    #[test]
    fn an_untouched_journal_verifies_after_inserts_settles_and_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        busy_journal(&path);
        let v = verify(&path).unwrap();
        assert_eq!(v.findings, []);
        assert_eq!((v.schema, v.entries, v.payments), (2, 13, 6));
        // reopening changes nothing
        drop(Journal::open(&path).unwrap());
        assert_eq!(verify_chain(&path).unwrap(), 13);
    }

    #[test]
    fn newest_entries_deleted_with_the_head_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mid = busy_journal(&path);
        sql(
            &path,
            &format!("DELETE FROM audit WHERE seq > {mid}; DELETE FROM audit_head;"),
        );
        let f = findings(&path);
        assert!(f.contains(&Tamper::HeadMissing { last: mid }), "{f:?}");
        // the payments written after `mid`, and the one uploaded after it, name
        // entries that are gone
        let missing = f
            .iter()
            .filter(|t| matches!(t, Tamper::AnchorMissing { .. }))
            .count();
        assert_eq!(missing, 4, "{f:?}");
    }

    #[test]
    fn newest_entries_deleted_and_the_head_moved_back_still_show_through_payments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mid = busy_journal(&path);
        sql(&path, &format!("DELETE FROM audit WHERE seq > {mid};"));
        sql(
            &path,
            &format!("UPDATE audit_head SET seq=seq_, hash=hash_ FROM (SELECT seq AS seq_, hash AS hash_ FROM audit WHERE seq={mid})"),
        );
        let f = findings(&path);
        assert!(
            f.iter().all(|t| matches!(t, Tamper::AnchorMissing { .. })),
            "{f:?}"
        );
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn an_emptied_audit_table_beside_payments_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        busy_journal(&path);
        sql(&path, "DELETE FROM audit;");
        let f = findings(&path);
        assert!(
            f.contains(&Tamper::Truncated { last: 0, head: 13 }),
            "{f:?}"
        );
        sql(&path, "DELETE FROM audit_head;");
        let f = findings(&path);
        assert!(f.contains(&Tamper::HeadMissing { last: 0 }), "{f:?}");
        assert_eq!(
            f.iter()
                .filter(|t| matches!(t, Tamper::AnchorMissing { .. }))
                .count(),
            6
        );
    }

    #[test]
    fn an_edited_payment_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        busy_journal(&path);
        sql(
            &path,
            "UPDATE payments SET amount_fen=1 WHERE txn_id='650200000001-4'",
        );
        assert_eq!(
            findings(&path),
            [Tamper::PaymentChanged {
                txn_id: "650200000001-4".into()
            }]
        );
        // a row written by hand carries no anchor
        sql(&path, "UPDATE payments SET amount_fen=14 WHERE txn_id='650200000001-4';
                    INSERT INTO payments(order_id, kind, txn_id, status, card_id, card_number,
                      amount_fen, balance_before_fen, balance_after_fen, counter, terminal_id,
                      terminal_seq, time, day, operator, created, pno)
                    VALUES('X','debit','T-X','completed','C','A1',5,0,0,0,'t',0,'2026','2026','li','', 7);");
        assert_eq!(
            findings(&path),
            [Tamper::Unanchored {
                txn_id: "T-X".into()
            }]
        );
    }

    #[test]
    fn deleted_payments_show_unless_no_audit_entry_followed_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        busy_journal(&path);
        // one in the middle: a gap in the numbers
        sql(&path, "DELETE FROM payments WHERE pno=3");
        assert_eq!(
            findings(&path),
            [Tamper::PaymentsDeleted { from: 3, to: 3 }]
        );
        // the newest: the last audit entry counted 6
        sql(&path, "DELETE FROM payments WHERE pno=6");
        assert_eq!(
            findings(&path),
            [
                Tamper::PaymentsDeleted { from: 3, to: 3 },
                Tamper::PaymentsDeleted { from: 6, to: 6 }
            ]
        );
        // what cannot show: a payment written after the last audit entry (a crash
        // between the two), deleted before any entry counted it
        let dir2 = tempfile::tempdir().unwrap();
        let p2 = dir2.path().join("j.db");
        busy_journal(&p2);
        let j = Journal::open(&p2).unwrap();
        let mut p = payment("LAST", 5, PaymentStatus::Pending);
        p.txn_id = "650200000001-99".into();
        j.insert(&p).unwrap();
        drop(j);
        sql(&p2, "DELETE FROM payments WHERE pno=7");
        assert_eq!(findings(&p2), []);
    }

    /// Schema 1 as the builds before anchoring wrote it: chained audit rows without
    /// `payments`, payment rows without anchors.
    fn schema_1_journal(path: &Path, payments: usize) {
        let db = Connection::open(path).unwrap();
        db.execute_batch(SCHEMA_1).unwrap();
        db.execute_batch("PRAGMA user_version = 1").unwrap();
        let mut prev = String::new();
        for seq in 1..=3i64 {
            let f = ["t", "li", "pay.debit", "r", "A1", "ok"];
            let h = chain::chain_hash(&prev, seq, &chain::content(&f, None));
            db.execute(
                "INSERT INTO audit VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
                params![seq, f[0], f[1], f[2], f[3], f[4], f[5], h],
            )
            .unwrap();
            db.execute(
                "INSERT OR REPLACE INTO audit_head VALUES(1, ?1, ?2)",
                params![seq, h],
            )
            .unwrap();
            prev = h;
        }
        for i in 0..payments {
            let p = payment(&format!("M{i}"), 3, PaymentStatus::Completed);
            db.execute(
                &format!("INSERT INTO payments({COLS}, day, created) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)"),
                params![p.order_id, format!("T-{i}"), p.kind, p.status, p.card_id, p.card_number, p.amount_fen,
                    p.balance_before_fen, p.balance_after_fen, p.counter, p.terminal_id, p.terminal_seq,
                    p.time, p.tac, p.operator, p.day(), "t"],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_schema_1_journal_is_migrated_and_its_payments_anchored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        schema_1_journal(&path, 4);
        let v = verify(&path).unwrap();
        assert_eq!((v.schema, v.entries, v.payments), (1, 3, 0));
        assert_eq!(v.findings, []);
        let j = Journal::open(&path).unwrap();
        let head = j.audit_head().unwrap().unwrap();
        assert_eq!(head.seq, 4);
        let log = j.audit_query(None, None, None, 10).unwrap();
        assert_eq!(log[3]["method"], "journal.migrate");
        assert_eq!(
            log[3]["outcome"],
            "schema 1 to 2: 4 payments anchored to this entry"
        );
        j.insert(&payment("NEW", 1, PaymentStatus::Pending))
            .unwrap();
        drop(j);
        let v = verify(&path).unwrap();
        assert_eq!(v.findings, []);
        assert_eq!((v.schema, v.entries, v.payments), (2, 4, 5));
        let pnos: Vec<i64> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT pno FROM payments WHERE audit_seq=4 ORDER BY pno")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pnos, [1, 2, 3, 4, 5]);
        // and the migrated rows are protected like new ones
        sql(
            &path,
            "UPDATE payments SET amount_fen=300 WHERE txn_id='T-1'",
        );
        assert_eq!(
            findings(&path),
            [Tamper::PaymentChanged {
                txn_id: "T-1".into()
            }]
        );
    }

    #[test]
    fn appends_after_the_head_so_deleted_newest_entries_stay_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        for _ in 0..4 {
            j.audit("t", "li", "m", "", "", "ok").unwrap();
        }
        sql(&path, "DELETE FROM audit WHERE seq > 3");
        j.audit("t", "li", "m", "", "", "ok").unwrap();
        assert_eq!(
            verify_chain(&path).unwrap_err(),
            Tamper::Deleted { seq: 6, prev: 3 }
        );
    }

    #[test]
    fn the_probe_writes_and_costs_microseconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        let n: i64 = 200;
        let mut probe = Vec::new();
        let mut audit = Vec::new();
        for _ in 0..n {
            let t = std::time::Instant::now();
            j.probe_write().unwrap();
            probe.push(t.elapsed());
            let t = std::time::Instant::now();
            j.audit("t", "li", "m", "", "", "ok").unwrap();
            audit.push(t.elapsed());
        }
        probe.sort();
        audit.sort();
        let (p, a) = (probe[probe.len() / 2], audit[audit.len() / 2]);
        eprintln!("median probe_write {p:?}, audit {a:?} (synchronous=FULL)");
        assert!(p < std::time::Duration::from_millis(1), "probe {p:?}");
        let count: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT n FROM probe", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, n);
    }
}
