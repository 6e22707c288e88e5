//! The journal: one SQLite file (WAL, `synchronous=FULL`) holding the payments, the
//! terminal sequence, the blacklist and the audit log.
//!
//! In the daemon exactly one thread owns the [`Journal`] ([`writer::JournalHandle`]);
//! everyone else sends it closures over a channel. Other programs (`sscard audit
//! verify`, backups) open the file read-only.
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
//! - `audit`: `seq` (1, 2, …), `time`, `operator`, `method`, `reader`, `card_number`,
//!   `outcome`, `hash` = SHA-256 hex of `prev_hash | seq | content`, where `content` is
//!   the JSON array `[time, operator, method, reader, card_number, outcome]` and
//!   `prev_hash` the previous row's hash (empty for the first).
//! - `audit_head`: the last `seq` and `hash`, written in the same transaction as each
//!   audit row, so that deleting the newest rows is found too.

pub mod payment;
mod probe_tmp;
pub mod writer;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

pub use payment::{PaymentKind, PaymentStatus};
pub use writer::{JournalError, JournalHandle};

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 1;

pub type JResult<T> = Result<T, rusqlite::Error>;

/// The open journal.
pub struct Journal {
    db: Connection,
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

/// An audit entry's content, hashed in this canonical order.
fn audit_content(
    time: &str,
    operator: &str,
    method: &str,
    reader: &str,
    card: &str,
    outcome: &str,
) -> String {
    json!([time, operator, method, reader, card, outcome]).to_string()
}

fn chain_hash(prev: &str, seq: i64, content: &str) -> String {
    hex::encode(Sha256::digest(format!("{prev}|{seq}|{content}").as_bytes()))
}

/// Where the audit chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Tamper {
    #[error("audit entry {seq} was changed (its hash does not match its content)")]
    Changed { seq: i64 },
    #[error("audit entries after {prev} and before {seq} were deleted")]
    Deleted { seq: i64, prev: i64 },
    #[error("audit entries after {last} were deleted (the chain head says {head})")]
    Truncated { last: i64, head: i64 },
    #[error("journal unreadable: {0}")]
    Db(String),
}

impl Journal {
    /// Open (creating if needed) a journal file.
    pub fn open(path: &Path) -> JResult<Journal> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")?;
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal schema version {version} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        db.execute_batch(
            "BEGIN;
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
               seq INTEGER NOT NULL, hash TEXT NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
        Ok(Journal { db })
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

    /// Reserve a terminal sequence number: durable before it is used, never reused.
    pub fn next_seq(&mut self) -> JResult<u32> {
        let tx = self.db.transaction()?;
        let n: i64 = tx.query_row("SELECT next FROM sequence WHERE id=1", [], |r| r.get(0))?;
        tx.execute("UPDATE sequence SET next=?1 WHERE id=1", [n + 1])?;
        tx.commit()?;
        u32::try_from(n).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, n))
    }

    /// The payment of an order (`kind` `debit` or `refund`).
    pub fn payment(&self, order_id: &str, kind: PaymentKind) -> JResult<Option<Payment>> {
        self.db
            .query_row(
                &format!("SELECT {COLS} FROM payments WHERE order_id=?1 AND kind=?2"),
                params![order_id, kind],
                row,
            )
            .optional()
    }

    /// Write a new payment (normally `pending`, before the card command). Fails on a
    /// second row for the same order and kind.
    pub fn insert(&self, p: &Payment) -> JResult<()> {
        self.db.execute(
            &format!("INSERT INTO payments({COLS}, day, created) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)"),
            params![p.order_id, p.txn_id, p.kind, p.status, p.card_id, p.card_number, p.amount_fen,
                p.balance_before_fen, p.balance_after_fen, p.counter, p.terminal_id, p.terminal_seq,
                p.time, p.tac, p.operator, p.day(), now()],
        )?;
        Ok(())
    }

    /// Record the outcome of a pending payment: status, TAC, counter and balances.
    /// Returns false when the row was not pending any more (settled meanwhile).
    pub fn settle(&self, p: &Payment) -> JResult<bool> {
        let n = self.db.execute(
            "UPDATE payments SET status=?3, tac=?4, counter=?5, balance_before_fen=?6,
               balance_after_fen=?7, settled=?8
             WHERE order_id=?1 AND kind=?2 AND status='pending'",
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
        )?;
        Ok(n == 1)
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
        self.db.query_row(
            "SELECT COALESCE(SUM(amount_fen),0) FROM payments
             WHERE card_id=?1 AND day=?2 AND kind='debit' AND status!='failed'",
            params![card_id, day],
            |r| r.get(0),
        )
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
            n += tx.execute(
                "UPDATE payments SET uploaded=?2
                 WHERE txn_id=?1 AND status='completed' AND uploaded IS NULL",
                params![id, t],
            )?;
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
            .query_row(
                "SELECT reason FROM blacklist WHERE card IN (?1, ?2) AND (until IS NULL OR until >= ?3)",
                params![card_number, card_id, today],
                |r| r.get(0),
            )
            .optional()
    }

    /// Append an audit entry chained to the last one.
    pub fn audit(
        &mut self,
        time: &str,
        operator: &str,
        method: &str,
        reader: &str,
        card: &str,
        outcome: &str,
    ) -> JResult<()> {
        let tx = self.db.transaction()?;
        let (prev_seq, prev): (i64, String) = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, String::new()));
        let seq = prev_seq + 1;
        let h = chain_hash(
            &prev,
            seq,
            &audit_content(time, operator, method, reader, card, outcome),
        );
        tx.execute(
            "INSERT INTO audit(seq, time, operator, method, reader, card_number, outcome, hash) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
            params![seq, time, operator, method, reader, card, outcome, h],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO audit_head(id, seq, hash) VALUES(1, ?1, ?2)",
            params![seq, h],
        )?;
        tx.commit()
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

/// Check the audit chain of a journal file (`sscard audit verify`): every entry's hash
/// covers its content and the previous hash, sequence numbers have no gaps, and the
/// chain ends where its head says. Returns the number of entries.
pub fn verify_chain(path: &Path) -> Result<usize, Tamper> {
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Tamper::Db(e.to_string()))?;
    let dberr = |e: rusqlite::Error| Tamper::Db(e.to_string());
    let mut st = db
        .prepare("SELECT seq, time, operator, method, reader, card_number, outcome, hash FROM audit ORDER BY seq")
        .map_err(dberr)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                [
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ],
                r.get::<_, String>(7)?,
            ))
        })
        .map_err(dberr)?;
    let (mut prev_seq, mut prev_hash, mut n) = (0i64, String::new(), 0usize);
    for r in rows {
        let (seq, [time, op, method, reader, card, outcome], hash) = r.map_err(dberr)?;
        if seq != prev_seq + 1 {
            return Err(Tamper::Deleted {
                seq,
                prev: prev_seq,
            });
        }
        let content = audit_content(&time, &op, &method, &reader, &card, &outcome);
        if chain_hash(&prev_hash, seq, &content) != hash {
            return Err(Tamper::Changed { seq });
        }
        prev_seq = seq;
        prev_hash = hash;
        n += 1;
    }
    // journals written before the head existed have none
    let head: Option<(i64, String)> = db
        .query_row("SELECT seq, hash FROM audit_head WHERE id=1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .or_else(|e| match e {
            rusqlite::Error::SqliteFailure(_, Some(m)) if m.contains("no such table") => Ok(None),
            e => Err(e),
        })
        .map_err(dberr)?;
    if let Some((head_seq, head_hash)) = head {
        if head_seq != prev_seq {
            return Err(Tamper::Truncated {
                last: prev_seq,
                head: head_seq,
            });
        }
        if head_hash != prev_hash {
            return Err(Tamper::Changed { seq: prev_seq });
        }
    }
    Ok(n)
}

/// Parse a blacklist file: `card,reason,until` a line (`until` `YYYY-MM-DD` or empty),
/// `#` comments and blank lines ignored. Errors name the line. Cards follow the API's
/// rule (`blacklist.add`: letters and digits, a 32-digit card id upper-cased), `until`
/// is exactly `YYYY-MM-DD` (it is compared as text), and reasons are cleaned
/// ([`crate::text::clean_reason`]).
pub fn parse_blacklist(text: &str) -> Result<Vec<BlacklistEntry>, String> {
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.splitn(3, ',').map(str::trim);
        let card = f.next().unwrap_or_default();
        let reason = crate::text::clean_reason(f.next().unwrap_or_default());
        let until = f.next().unwrap_or_default();
        if card.is_empty() || reason.is_empty() {
            return Err(format!("line {}: card,reason[,until] expected", i + 1));
        }
        let card = crate::methods::params::BlacklistCard::deserialize(IntoDeserializer::<
            serde::de::value::Error,
        >::into_deserializer(
            card
        ))
        .map_err(|e| format!("line {}: card: {e}", i + 1))?
        .0;
        let until = if until.is_empty() {
            None
        } else {
            crate::methods::params::strict_date(until)
                .ok_or_else(|| format!("line {}: until {until:?} is not YYYY-MM-DD", i + 1))?;
            Some(until.to_string())
        };
        out.push(BlacklistEntry {
            card,
            reason,
            until,
            source: "file".into(),
        });
    }
    Ok(out)
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
        assert_eq!((j.next_seq().unwrap(), j.next_seq().unwrap()), (1, 2));
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

    /// Found by the `blacklist` fuzz target (docs/fuzzing.md): cards with any bytes,
    /// reasons with control characters, and `until` dates that chrono reads but that
    /// compare wrongly as text (`026-03-01`, `2026-2-1`) were accepted.
    #[test]
    fn blacklist_file_cards_dates_and_reasons_are_checked() {
        assert!(parse_blacklist("F0.iost,lost\n")
            .unwrap_err()
            .starts_with("line 1: card"));
        assert!(parse_blacklist("\0\0o,lost\n").is_err());
        for d in ["026-03-01", "2026-2-1", "+10000-01-01", "2026-02-30"] {
            let e = parse_blacklist(&format!("A1,lost,{d}\n")).unwrap_err();
            assert!(e.starts_with("line 1: until"), "{d}: {e}");
        }
        let file = parse_blacklist(
            "0123456789abcdef0123456789abcdef,lost\u{1b}[31m  red \u{202e}x,2026-02-01\n",
        )
        .unwrap();
        assert_eq!(file[0].card, "0123456789ABCDEF0123456789ABCDEF");
        assert_eq!(file[0].reason, "lost [31m red x");
        assert_eq!(file[0].until.as_deref(), Some("2026-02-01"));
        let long = parse_blacklist(&format!("A1,{}\n", "x".repeat(60_000))).unwrap();
        assert_eq!(long[0].reason.chars().count(), crate::text::MAX_REASON);
        assert!(
            parse_blacklist("A1,\u{200b}\u{1b}\n").is_err(),
            "nothing left of the reason"
        );
    }

    #[test]
    fn blacklist_by_number_or_id_until_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let e = |card: &str, until: Option<&str>| BlacklistEntry {
            card: card.into(),
            reason: "lost".into(),
            until: until.map(str::to_string),
            source: "admin".into(),
        };
        j.blacklist_add(&e("A1", Some("2026-11-23"))).unwrap();
        assert_eq!(
            j.blacklisted("A1", "X", "2026-11-23").unwrap().as_deref(),
            Some("lost")
        );
        assert_eq!(j.blacklisted("A1", "X", "2026-11-24").unwrap(), None);
        let file = parse_blacklist("# c\nID9, stolen ,\nA1,other,2027-01-01\n").unwrap();
        j.blacklist_import(&file).unwrap();
        assert!(j.blacklisted("Z", "ID9", "2030-01-01").unwrap().is_some());
        // the admin's entry for A1 stays as it was
        assert_eq!(j.blacklisted("A1", "X", "2026-11-24").unwrap(), None);
        j.blacklist_import(&[]).unwrap();
        assert!(j.blacklisted("Z", "ID9", "2030-01-01").unwrap().is_none());
        assert!(j.blacklist_remove("A1").unwrap());
        assert!(j.blacklist().unwrap().is_empty());
        assert!(parse_blacklist("A1,lost,2026-13-01")
            .unwrap_err()
            .starts_with("line 1"));
        assert!(parse_blacklist("\nA1").unwrap_err().starts_with("line 2"));
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
        assert_eq!(verify_chain(&path).unwrap(), 4);
        let sql = |s: &str| {
            Connection::open(&path).unwrap().execute(s, []).unwrap();
        };
        sql("DELETE FROM audit WHERE seq=4");
        assert_eq!(
            verify_chain(&path).unwrap_err(),
            Tamper::Truncated { last: 3, head: 4 }
        );
        sql("UPDATE audit SET outcome='x' WHERE seq=3");
        assert_eq!(verify_chain(&path).unwrap_err(), Tamper::Changed { seq: 3 });
        sql("DELETE FROM audit WHERE seq=2");
        assert_eq!(
            verify_chain(&path).unwrap_err(),
            Tamper::Deleted { seq: 3, prev: 1 }
        );
    }
}
