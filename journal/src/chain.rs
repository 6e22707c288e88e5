//! The audit chain and what anchors payments to it (docs/operations.md, "What the audit
//! chain proves").
//!
//! Each audit row's `hash` is SHA-256 hex of `prev_hash | seq | content`; `content` is
//! the JSON array `[time, operator, method, reader, card_number, outcome]`, with
//! `payments` (how many payments the journal had written) appended for rows written by
//! schema 2. `audit_head` holds the last `seq` and `hash`, written with each row.
//!
//! Each payment row carries the head current when it was written or last changed by
//! the journal (`audit_seq`, `audit_hash`), its number in insert order (`pno`,
//! contiguous from 1) and `row_hash`, SHA-256 hex of the JSON array of [`HASHED`].
//! [`verify`] checks all of it and lists every finding.

use super::JResult;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// The payment columns `row_hash` covers, in this order; the anchor comes last.
pub(crate) const HASHED: &str = "pno, order_id, kind, txn_id, status, card_id, card_number, \
    amount_fen, balance_before_fen, balance_after_fen, counter, terminal_id, terminal_seq, \
    time, day, tac, operator, created, settled, uploaded, audit_seq, audit_hash";
const N_HASHED: usize = 22;

/// The chain's newest entry: what `audit_head` holds, and what each upload carries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// An audit entry's content, hashed in this canonical order.
pub(crate) fn content(fields: &[&str; 6], payments: Option<i64>) -> String {
    let [time, operator, method, reader, card, outcome] = fields;
    match payments {
        None => json!([time, operator, method, reader, card, outcome]).to_string(),
        Some(n) => json!([time, operator, method, reader, card, outcome, n]).to_string(),
    }
}

pub fn chain_hash(prev: &str, seq: i64, content: &str) -> String {
    hex::encode(Sha256::digest(format!("{prev}|{seq}|{content}").as_bytes()))
}

/// The head row, if there is one.
pub(crate) fn head(db: &Connection) -> JResult<Option<AuditHead>> {
    db.prepare_cached("SELECT seq, hash FROM audit_head WHERE id=1")?
        .query_row([], |r| {
            Ok(AuditHead {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()
}

/// Append an audit row after the head (after the last row when the head is missing),
/// and move the head. Appending after the head rather than the last row keeps deleted
/// newest rows visible as a gap. Run it inside a transaction.
pub(crate) fn append(db: &Connection, fields: &[&str; 6]) -> JResult<AuditHead> {
    let last = match head(db)? {
        Some(h) => Some(h),
        None => db
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| {
                Ok(AuditHead {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            })
            .optional()?,
    };
    let (prev_seq, prev) = last.map_or((0, String::new()), |h| (h.seq, h.hash));
    let payments: i64 = db
        .prepare_cached("SELECT n FROM payments_written WHERE id=1")?
        .query_row([], |r| r.get(0))?;
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev, seq, &content(fields, Some(payments)));
    let [time, operator, method, reader, card, outcome] = fields;
    db.prepare_cached(
        "INSERT INTO audit(seq, time, operator, method, reader, card_number, outcome, hash, payments)
         VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)",
    )?
    .execute(params![seq, time, operator, method, reader, card, outcome, hash, payments])?;
    db.prepare_cached("INSERT OR REPLACE INTO audit_head(id, seq, hash) VALUES(1, ?1, ?2)")?
        .execute(params![seq, hash])?;
    Ok(AuditHead { seq, hash })
}

fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!({ "blob": hex::encode(b) }),
    }
}

/// `row_hash` of the [`HASHED`] values.
fn row_hash(values: &[Value]) -> String {
    hex::encode(Sha256::digest(
        Value::from(values.to_vec()).to_string().as_bytes(),
    ))
}

fn hashed_values(r: &rusqlite::Row<'_>) -> JResult<Vec<Value>> {
    (0..N_HASHED).map(|i| Ok(to_json(r.get_ref(i)?))).collect()
}

/// Anchor a payment row to the current head and rehash it (after the journal wrote or
/// changed it, in the same transaction).
pub(crate) fn anchor(db: &Connection, rowid: i64) -> JResult<()> {
    let h = head(db)?.unwrap_or(AuditHead {
        seq: 0,
        hash: String::new(),
    });
    let mut values = db
        .prepare_cached(&format!("SELECT {HASHED} FROM payments WHERE rowid=?1"))?
        .query_row([rowid], hashed_values)?;
    values[N_HASHED - 2] = json!(h.seq);
    values[N_HASHED - 1] = json!(h.hash);
    db.prepare_cached(
        "UPDATE payments SET audit_seq=?2, audit_hash=?3, row_hash=?4 WHERE rowid=?1",
    )?
    .execute(params![rowid, h.seq, h.hash, row_hash(&values)])?;
    Ok(())
}

/// What a journal's audit chain and payments show.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Tamper {
    #[error("audit entry {seq} was changed (its hash does not match its content)")]
    Changed { seq: i64 },
    #[error("audit entries after {prev} and before {seq} were deleted")]
    Deleted { seq: i64, prev: i64 },
    #[error("audit entries after {last} were deleted (the chain head says {head})")]
    Truncated { last: i64, head: i64 },
    #[error("the chain head (audit_head) was deleted: the newest audit entries after {last} may have been deleted with it")]
    HeadMissing { last: i64 },
    #[error("the chain head was changed (its hash is not that of entry {seq})")]
    HeadChanged { seq: i64 },
    #[error("payment {txn_id} was changed (its row hash does not match its fields)")]
    PaymentChanged { txn_id: String },
    #[error("payment {txn_id} names audit entry {seq}, which was deleted")]
    AnchorMissing { txn_id: String, seq: i64 },
    #[error("payment {txn_id} names audit entry {seq}, whose hash is not the one it recorded")]
    AnchorMismatch { txn_id: String, seq: i64 },
    #[error("payment {txn_id} carries no anchor (not written by sscardd)")]
    Unanchored { txn_id: String },
    #[error("payments number {from} to {to} were deleted")]
    PaymentsDeleted { from: i64, to: i64 },
    #[error("journal unreadable: {0}")]
    Db(String),
}

/// The result of [`verify`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// `PRAGMA user_version`; payments are checked from schema 2 on.
    pub schema: i64,
    pub entries: usize,
    pub payments: usize,
    pub head: Option<AuditHead>,
    /// Empty when the journal is intact.
    pub findings: Vec<Tamper>,
}

type AuditRow = (i64, [String; 6], String, Option<i64>);

/// Check a journal file (read-only): every audit entry's hash covers its content and
/// the previous hash; sequence numbers have no gaps; the head exists when any entry or
/// payment does and names the last entry; each payment's row hash matches its fields,
/// its anchor names an existing entry with that hash, and payment numbers have no gap
/// up to the count the newest entry recorded.
pub fn verify(path: &Path) -> Result<Verification, String> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    verify_db(&db).map_err(|e| e.to_string())
}

fn verify_db(db: &Connection) -> JResult<Verification> {
    let schema: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut v = Verification {
        schema,
        ..Verification::default()
    };
    let payments_col = if schema >= 2 { "payments" } else { "NULL" };
    let mut st = db.prepare(&format!(
        "SELECT seq, time, operator, method, reader, card_number, outcome, hash, {payments_col}
         FROM audit ORDER BY seq"
    ))?;
    let rows = st.query_map([], |r| -> JResult<AuditRow> {
        Ok((
            r.get(0)?,
            [
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ],
            r.get(7)?,
            r.get(8)?,
        ))
    })?;
    let (mut prev_seq, mut prev_hash) = (0i64, String::new());
    let mut hashes: HashMap<i64, String> = HashMap::new();
    let mut counted: i64 = 0;
    for r in rows {
        let (seq, f, hash, payments) = r?;
        if seq != prev_seq + 1 {
            // the row after a gap cannot be checked: its predecessor is gone
            v.findings.push(Tamper::Deleted {
                seq,
                prev: prev_seq,
            });
        } else {
            let fields = [&*f[0], &*f[1], &*f[2], &*f[3], &*f[4], &*f[5]];
            if chain_hash(&prev_hash, seq, &content(&fields, payments)) != hash {
                v.findings.push(Tamper::Changed { seq });
            }
        }
        counted = counted.max(payments.unwrap_or(0));
        hashes.insert(seq, hash.clone());
        prev_seq = seq;
        prev_hash = hash;
        v.entries += 1;
    }
    let has_head_table: bool = db.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type='table' AND name='audit_head'",
        [],
        |r| r.get(0),
    )?;
    v.head = if has_head_table { head(db)? } else { None };
    if schema >= 2 {
        v.payments = db.query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))?;
    }
    match &v.head {
        // a schema-1 journal without the head table predates it
        None if (has_head_table || schema >= 2) && (v.entries > 0 || v.payments > 0) => {
            v.findings.push(Tamper::HeadMissing { last: prev_seq })
        }
        None => {}
        Some(h) if h.seq != prev_seq => v.findings.push(Tamper::Truncated {
            last: prev_seq,
            head: h.seq,
        }),
        Some(h) if h.hash != prev_hash => v.findings.push(Tamper::HeadChanged { seq: h.seq }),
        Some(_) => {}
    }
    if schema >= 2 {
        check_payments(db, &hashes, counted, &mut v.findings)?;
    }
    Ok(v)
}

fn check_payments(
    db: &Connection,
    hashes: &HashMap<i64, String>,
    counted: i64,
    findings: &mut Vec<Tamper>,
) -> JResult<()> {
    let mut st = db.prepare(&format!(
        "SELECT {HASHED}, row_hash FROM payments ORDER BY pno"
    ))?;
    let mut rows = st.query([])?;
    let mut next_pno = 1i64;
    while let Some(r) = rows.next()? {
        let values = hashed_values(r)?;
        let txn_id =
            String::from_utf8_lossy(r.get_ref(3)?.as_bytes().unwrap_or_default()).into_owned();
        let stored: String = r.get(N_HASHED)?;
        let pno = r.get_ref(0)?.as_i64().ok();
        let seq = r.get_ref(N_HASHED - 2)?.as_i64().unwrap_or(0);
        let hash = r.get_ref(N_HASHED - 1)?.as_str().unwrap_or_default();
        if let Some(p) = pno {
            if p > next_pno {
                findings.push(Tamper::PaymentsDeleted {
                    from: next_pno,
                    to: p - 1,
                });
            }
            next_pno = next_pno.max(p + 1);
        }
        if pno.is_none() || seq == 0 || stored.is_empty() {
            findings.push(Tamper::Unanchored { txn_id });
            continue;
        }
        if row_hash(&values) != stored {
            findings.push(Tamper::PaymentChanged {
                txn_id: txn_id.clone(),
            });
        }
        match hashes.get(&seq) {
            None => findings.push(Tamper::AnchorMissing { txn_id, seq }),
            Some(h) if h != hash => findings.push(Tamper::AnchorMismatch { txn_id, seq }),
            Some(_) => {}
        }
    }
    // the newest payments, deleted after an audit entry counted them
    if counted >= next_pno {
        findings.push(Tamper::PaymentsDeleted {
            from: next_pno,
            to: counted,
        });
    }
    Ok(())
}

/// Check the audit chain of a journal file: the number of audit entries, or the first
/// finding of [`verify`].
pub fn verify_chain(path: &Path) -> Result<usize, Tamper> {
    let v = verify(path).map_err(Tamper::Db)?;
    match v.findings.into_iter().next() {
        Some(t) => Err(t),
        None => Ok(v.entries),
    }
}
