//! The journal (SQLite, WAL, `synchronous=FULL`): payments written before their DEBIT
//! and updated after, terminal sequence numbers, the blacklist, and the audit log with
//! each entry chained by SHA-256 to the one before (`verify_chain`).

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

pub type JResult<T> = Result<T, rusqlite::Error>;

pub struct Journal {
    db: Connection,
}

/// A payment row, as the API's payment object.
#[derive(Clone, Debug, PartialEq)]
pub struct Payment {
    pub order_id: String,
    pub txn_id: String,
    pub kind: String,
    pub status: String,
    pub card_id: String,
    pub card_number: String,
    pub amount_fen: i64,
    pub balance_before_fen: i64,
    pub balance_after_fen: i64,
    pub counter: i64,
    pub terminal_id: String,
    pub terminal_seq: i64,
    pub time: String,
    pub tac: String,
    pub operator: String,
}

impl Payment {
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
pub enum Tamper {
    #[error("audit entry {seq} was changed (its hash does not match its content)")]
    Changed { seq: i64 },
    #[error("audit entries before {seq} were deleted (sequence jumps from {prev})")]
    Deleted { seq: i64, prev: i64 },
    #[error("audit entry {seq} does not chain to the entry before it")]
    Unchained { seq: i64 },
    #[error("journal unreadable: {0}")]
    Db(String),
}

impl Journal {
    pub fn open(path: &Path) -> JResult<Journal> {
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
             CREATE TABLE IF NOT EXISTS payments(
               order_id TEXT PRIMARY KEY, txn_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
               status TEXT NOT NULL CHECK(status IN ('pending','completed','failed')),
               card_id TEXT NOT NULL, card_number TEXT NOT NULL, amount_fen INTEGER NOT NULL,
               balance_before_fen INTEGER NOT NULL, balance_after_fen INTEGER NOT NULL,
               counter INTEGER NOT NULL, terminal_id TEXT NOT NULL, terminal_seq INTEGER NOT NULL,
               time TEXT NOT NULL, day TEXT NOT NULL, tac TEXT NOT NULL DEFAULT '',
               operator TEXT NOT NULL, uploaded INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS sequence(id INTEGER PRIMARY KEY CHECK(id=1), next INTEGER NOT NULL);
             INSERT OR IGNORE INTO sequence(id, next) VALUES(1, 1);
             CREATE TABLE IF NOT EXISTS blacklist(card TEXT PRIMARY KEY, reason TEXT NOT NULL, until TEXT);
             CREATE TABLE IF NOT EXISTS audit(
               seq INTEGER PRIMARY KEY, time TEXT NOT NULL, operator TEXT NOT NULL, method TEXT NOT NULL,
               reader TEXT NOT NULL, card_number TEXT NOT NULL, outcome TEXT NOT NULL, hash TEXT NOT NULL);",
        )?;
        Ok(Journal { db })
    }

    /// Reserve a terminal sequence number: durable before it is used.
    pub fn next_seq(&mut self) -> JResult<u32> {
        let tx = self.db.transaction()?;
        let n: i64 = tx.query_row("SELECT next FROM sequence WHERE id=1", [], |r| r.get(0))?;
        tx.execute("UPDATE sequence SET next=?1 WHERE id=1", [n + 1])?;
        tx.commit()?;
        Ok(n as u32)
    }

    pub fn payment(&self, order_id: &str) -> JResult<Option<Payment>> {
        self.db
            .query_row(
                &format!("SELECT {COLS} FROM payments WHERE order_id=?1"),
                [order_id],
                row,
            )
            .optional()
    }

    /// Write a pending payment (before the DEBIT).
    pub fn insert_pending(&self, p: &Payment, day: &str) -> JResult<()> {
        self.db.execute(
            &format!("INSERT INTO payments({COLS}, day) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)"),
            params![p.order_id, p.txn_id, p.kind, p.status, p.card_id, p.card_number, p.amount_fen,
                p.balance_before_fen, p.balance_after_fen, p.counter, p.terminal_id, p.terminal_seq,
                p.time, p.tac, p.operator, day],
        )?;
        Ok(())
    }

    /// Settle a payment: completed (with TAC) or failed.
    pub fn settle(&self, order_id: &str, status: &str, tac: &str) -> JResult<()> {
        self.db.execute(
            "UPDATE payments SET status=?2, tac=?3 WHERE order_id=?1 AND status='pending'",
            params![order_id, status, tac],
        )?;
        Ok(())
    }

    pub fn pending(&self) -> JResult<Vec<Payment>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLS} FROM payments WHERE status='pending'"
        ))?;
        let v = st.query_map([], row)?.collect::<JResult<Vec<_>>>()?;
        Ok(v)
    }

    /// Sum of a card's completed or pending debits on a day (the daily limit counts
    /// pending ones too: they may have happened).
    pub fn card_day_total(&self, card_id: &str, day: &str) -> JResult<i64> {
        self.db.query_row(
            "SELECT COALESCE(SUM(amount_fen),0) FROM payments WHERE card_id=?1 AND day=?2 AND kind='debit' AND status!='failed'",
            params![card_id, day],
            |r| r.get(0),
        )
    }

    pub fn day(&self, day: &str) -> JResult<Vec<Payment>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLS} FROM payments WHERE day=?1 ORDER BY time"
        ))?;
        let v = st.query_map([day], row)?.collect::<JResult<Vec<_>>>()?;
        Ok(v)
    }

    pub fn blacklist_add(&self, card: &str, reason: &str, until: Option<&str>) -> JResult<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO blacklist(card, reason, until) VALUES(?1,?2,?3)",
            params![card, reason, until],
        )?;
        Ok(())
    }

    /// The reason a card (by number or id) is blacklisted today, if it is.
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
        tx.commit()
    }

    pub fn audit_query(
        &self,
        since: Option<&str>,
        until: Option<&str>,
        operator: Option<&str>,
    ) -> JResult<Vec<Value>> {
        let mut st = self.db.prepare(
            "SELECT seq, time, operator, method, reader, card_number, outcome, hash FROM audit
             WHERE (?1 IS NULL OR time >= ?1) AND (?2 IS NULL OR time <= ?2) AND (?3 IS NULL OR operator = ?3) ORDER BY seq",
        )?;
        let v = st
            .query_map(params![since, until, operator], |r| {
                Ok(json!({"seq": r.get::<_, i64>(0)?, "time": r.get::<_, String>(1)?, "operator": r.get::<_, String>(2)?,
                    "method": r.get::<_, String>(3)?, "reader": r.get::<_, String>(4)?, "card_number": r.get::<_, String>(5)?,
                    "outcome": r.get::<_, String>(6)?, "hash": r.get::<_, String>(7)?}))
            })?
            .collect::<JResult<Vec<_>>>()?;
        Ok(v)
    }
}

/// Check the audit chain of a journal file: every entry's hash covers its content and
/// the previous hash, and sequence numbers have no gaps (`sscard audit verify`).
pub fn verify_chain(path: &Path) -> Result<usize, Tamper> {
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Tamper::Db(e.to_string()))?;
    let mut st = db
        .prepare("SELECT seq, time, operator, method, reader, card_number, outcome, hash FROM audit ORDER BY seq")
        .map_err(|e| Tamper::Db(e.to_string()))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
            ))
        })
        .map_err(|e| Tamper::Db(e.to_string()))?;
    let (mut prev_seq, mut prev_hash, mut n) = (0i64, String::new(), 0usize);
    for r in rows {
        let (seq, time, op, method, reader, card, outcome, hash) =
            r.map_err(|e| Tamper::Db(e.to_string()))?;
        if seq != prev_seq + 1 {
            return Err(Tamper::Deleted {
                seq,
                prev: prev_seq,
            });
        }
        let content = audit_content(&time, &op, &method, &reader, &card, &outcome);
        if chain_hash(&prev_hash, seq, &content) != hash {
            // distinguish an edited row from a broken link
            return Err(Tamper::Changed { seq });
        }
        prev_seq = seq;
        prev_hash = hash;
        n += 1;
    }
    Ok(n)
}

impl Journal {
    /// A cheap read that proves the database answers.
    pub fn next_seq_peek(&self) -> JResult<i64> {
        self.db
            .query_row("SELECT next FROM sequence WHERE id=1", [], |r| r.get(0))
    }
}
