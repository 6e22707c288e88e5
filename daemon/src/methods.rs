//! The method table (api.md "Methods") and the card and money logic behind it.

use crate::config::{Config, Operator};
use crate::error::{from_app, ApiError};
use crate::journal::{Journal, Payment};
use crate::readers::Reader;
use chrono::{Local, NaiveDate};
use serde_json::{json, Value};
use sscard_driver::app::{self, AppError, CardRecord, Pin, Recovery};
use sscard_driver::keyprovider::{KeyError, SequenceSource, SoftwareKeys};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::transport::{CardTransport, Transaction};
use sscard_driver::{Region, TerminalId};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Everything the handlers share.
pub struct State {
    pub config: Config,
    pub journal: Arc<Mutex<Journal>>,
    pub readers: Arc<Mutex<Vec<Reader>>>,
    pub k3: Arc<Vec<(KeyPurpose, Key16)>>,
    pub region: Region,
    pub terminal_id: TerminalId,
}

/// Terminal sequence numbers reserved in the journal: never reused after a crash.
struct JournalSeq(Arc<Mutex<Journal>>);
impl SequenceSource for JournalSeq {
    fn next(&mut self) -> Result<u32, KeyError> {
        lock(&self.0)
            .next_seq()
            .map_err(|e| KeyError::Sequence(e.to_string()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn keys(&self) -> SoftwareKeys {
        SoftwareKeys::new(
            self.region,
            self.terminal_id,
            self.k3.as_ref().clone(),
            Box::new(JournalSeq(self.journal.clone())),
        )
    }
    fn has_key(&self, p: KeyPurpose) -> bool {
        self.k3.iter().any(|(q, _)| *q == p)
    }
    fn wait(&self) -> Duration {
        Duration::from_millis(self.config.reader_wait_ms)
    }
    fn audit(&self, op: &str, method: &str, reader: &str, card: &str, outcome: &str) {
        let t = Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        if let Err(e) = lock(&self.journal).audit(&t, op, method, reader, card, outcome) {
            tracing::error!("audit write failed: {e}");
        }
    }

    /// The reader a call names, or the only one holding a card.
    fn pick_reader(&self, name: Option<&str>) -> Result<Reader, ApiError> {
        let list = lock(&self.readers).clone();
        if let Some(n) = name {
            return list
                .into_iter()
                .find(|r| r.name == n)
                .ok_or_else(|| ApiError::kind("NO_READER", format!("no reader named {n:?}")));
        }
        if list.is_empty() {
            return Err(ApiError::kind("NO_READER", "no reader"));
        }
        let with: Vec<Reader> = list.into_iter().filter(|r| r.presence().0).collect();
        match with.len() {
            0 => Err(ApiError::kind("NO_CARD", "no reader holds a card")),
            1 => Ok(with
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::kind("NO_CARD", "no card"))?),
            _ => Err(ApiError::kind(
                "AMBIGUOUS_READER",
                "several readers hold a card; name one",
            )),
        }
    }
}

fn s<'a>(p: &'a Value, k: &str) -> Result<&'a str, ApiError> {
    p.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::params(format!("{k}: a string is required")))
}
fn opt_s<'a>(p: &'a Value, k: &str) -> Result<Option<&'a str>, ApiError> {
    match p.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => Ok(Some(v)),
        Some(_) => Err(ApiError::params(format!("{k}: must be a string"))),
    }
}
fn amount(p: &Value, k: &str) -> Result<u32, ApiError> {
    p.get(k)
        .and_then(Value::as_u64)
        .filter(|v| *v > 0 && *v <= u32::MAX as u64)
        .map(|v| v as u32)
        .ok_or_else(|| {
            ApiError::params(format!("{k}: a positive integer number of fen is required"))
        })
}
fn pin(p: &Value, k: &str) -> Result<Pin, ApiError> {
    Pin::new(s(p, k)?).map_err(|_| ApiError::params(format!("{k}: 4 to 12 digits")))
}

fn card_json(r: &CardRecord, genuine: bool) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["genuine"] = json!(genuine);
    v
}

/// Read the card and apply the policy of api.md before any debit.
fn policy(
    st: &State,
    tx: &mut Transaction<'_>,
    keys: &mut SoftwareKeys,
    amount: u32,
) -> Result<CardRecord, ApiError> {
    let rec = app::read_card(tx).map_err(|e| from_app(&e))?;
    let today = Local::now().date_naive();
    let blacklisted = lock(&st.journal)
        .blacklisted(&rec.card_number, &rec.card_id.to_hex(), &today.to_string())
        .map_err(ApiError::journal)?;
    if let Some(reason) = blacklisted {
        if !rec.blocked && st.has_key(KeyPurpose::Maint) {
            let _ = app::block_application(tx, keys, &rec.card_id);
        }
        return Err(ApiError::kind(
            "BLACKLISTED",
            format!("card is blacklisted: {reason}"),
        ));
    }
    if rec.blocked {
        return Err(ApiError::kind("CARD_BLOCKED", "application blocked"));
    }
    if rec.expiry_date < today {
        return Err(ApiError::kind(
            "CARD_EXPIRED",
            format!("expired on {}", rec.expiry_date),
        ));
    }
    if !app::internal_authenticate(tx, keys, &rec.card_id).map_err(|e| from_app(&e))? {
        return Err(ApiError::kind(
            "NOT_GENUINE",
            "internal authentication failed",
        ));
    }
    if amount as u64 > st.config.limits.per_transaction_fen {
        return Err(ApiError::kind(
            "LIMIT_EXCEEDED",
            "over the per-transaction limit",
        ));
    }
    let day_total = lock(&st.journal)
        .card_day_total(&rec.card_id.to_hex(), &today.to_string())
        .map_err(ApiError::journal)?;
    if day_total as u64 + amount as u64 > st.config.limits.per_card_per_day_fen {
        return Err(ApiError::kind(
            "LIMIT_EXCEEDED",
            "over the card's daily limit",
        ));
    }
    Ok(rec)
}

/// The debit itself, on the reader thread: policy, PIN, INIT, journal, DEBIT, journal.
fn debit(
    st: &State,
    card: &mut dyn CardTransport,
    order: &str,
    amt: u32,
    pin: &Pin,
    op: &str,
) -> Result<Payment, ApiError> {
    let mut keys = st.keys();
    let mut tx = Transaction::begin(card).map_err(|e| crate::error::from_transport(&e))?;
    if let Some(p) = lock(&st.journal)
        .payment(order)
        .map_err(ApiError::journal)?
    {
        // a repeat that raced with the first: answer like a repeat
        return Err(ApiError::kind(
            "DUPLICATE_ORDER",
            format!("order {} already {}", p.order_id, p.status),
        ));
    }
    let rec = policy(st, &mut tx, &mut keys, amt)?;
    app::verify_pin(&mut tx, pin).map_err(|e| from_app(&e))?;
    let now = Local::now();
    let prepared =
        app::initialize_purchase(&mut tx, &mut keys, &rec.card_id, amt, now.naive_local())
            .map_err(|e| from_app(&e))?;
    let mut p = Payment {
        order_id: order.to_string(),
        txn_id: format!("{}-{:08}", st.terminal_id.to_hex(), prepared.terminal_seq),
        kind: "debit".into(),
        status: "pending".into(),
        card_id: rec.card_id.to_hex(),
        card_number: rec.card_number.clone(),
        amount_fen: amt as i64,
        balance_before_fen: prepared.balance_before as i64,
        balance_after_fen: prepared.balance_before as i64 - amt as i64,
        counter: prepared.counter as i64,
        terminal_id: st.terminal_id.to_hex(),
        terminal_seq: prepared.terminal_seq as i64,
        time: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        tac: String::new(),
        operator: op.to_string(),
    };
    // durable before the DEBIT goes to the card
    lock(&st.journal)
        .insert_pending(&p, &now.date_naive().to_string())
        .map_err(ApiError::journal)?;
    match prepared.debit(&mut tx, &mut keys) {
        Ok(proof) => {
            lock(&st.journal)
                .settle(order, "completed", &proof.tac)
                .map_err(ApiError::journal)?;
            p.status = "completed".into();
            p.tac = proof.tac;
            Ok(p)
        }
        Err(e @ AppError::Uncertain { .. }) => {
            Err(from_app(&e).with(json!({"payment": p.to_json()})))
        }
        Err(e) => {
            let _ = lock(&st.journal).settle(order, "failed", "");
            Err(from_app(&e))
        }
    }
}

/// Settle a pending payment with the card in `card`, if it is that payment's card.
fn settle_pending(
    st: &State,
    card: &mut dyn CardTransport,
    p: &Payment,
) -> Result<Option<Payment>, ApiError> {
    let mut tx = Transaction::begin(card).map_err(|e| crate::error::from_transport(&e))?;
    let rec = app::read_card(&mut tx).map_err(|e| from_app(&e))?;
    if rec.card_id.to_hex() != p.card_id {
        return Ok(None);
    }
    let tid: TerminalId = p
        .terminal_id
        .parse()
        .map_err(|_| ApiError::journal("terminal id"))?;
    let r = app::recover_purchase(&mut tx, p.counter as u16, p.amount_fen as u32, &tid)
        .map_err(|e| from_app(&e))?;
    let j = lock(&st.journal);
    match r {
        Recovery::Happened { tac } => j.settle(&p.order_id, "completed", &tac),
        Recovery::NotHappened => j.settle(&p.order_id, "failed", ""),
    }
    .map_err(ApiError::journal)?;
    j.payment(&p.order_id).map_err(ApiError::journal)
}

/// Try every reader holding a card to settle a pending payment.
async fn try_settle(st: &Arc<State>, p: Payment) -> Result<Payment, ApiError> {
    let readers: Vec<Reader> = lock(&st.readers)
        .iter()
        .filter(|r| r.presence().0)
        .cloned()
        .collect();
    for r in readers {
        let (st2, p2) = (st.clone(), p.clone());
        if let Ok(Some(done)) = r
            .run(st.wait(), move |c| settle_pending(&st2, c, &p2))
            .await
        {
            st.audit(
                &done.operator,
                "settle",
                &r.name,
                &done.card_number,
                &done.status,
            );
            return Ok(done);
        }
    }
    Ok(p)
}

/// Dispatch one authenticated call.
pub async fn call(
    st: &Arc<State>,
    op: &Operator,
    method: &str,
    p: &Value,
) -> Result<Value, ApiError> {
    const METHODS: [&str; 13] = [
        "system.health",
        "reader.list",
        "card.read",
        "card.verify_pin",
        "card.change_pin",
        "card.balance",
        "pay.debit",
        "pay.query",
        "pay.refund",
        "settle.day",
        "audit.query",
        "session.login",
        "events.subscribe",
    ];
    if !METHODS.contains(&method) {
        return Err(ApiError::method_not_found(method));
    }
    if !op.role.may(method) {
        return Err(ApiError::kind(
            "FORBIDDEN",
            format!("{} may not call {method}", op.role.name()),
        ));
    }
    let reader_name = opt_s(p, "reader")?.map(str::to_string);
    match method {
        "system.health" => Ok(health(st)),
        "reader.list" => Ok(reader_list(st)),
        "card.read" | "card.verify_pin" | "card.change_pin" | "card.balance" => {
            let (old, new) = match method {
                "card.verify_pin" => (Some(pin(p, "pin")?), None),
                "card.change_pin" => (Some(pin(p, "old_pin")?), Some(pin(p, "new_pin")?)),
                _ => (None, None),
            };
            let r = st.pick_reader(reader_name.as_deref())?;
            let st2 = st.clone();
            let m = method.to_string();
            let res = r
                .run(st.wait(), move |card| {
                    let mut tx =
                        Transaction::begin(card).map_err(|e| crate::error::from_transport(&e))?;
                    let rec = app::read_card(&mut tx).map_err(|e| from_app(&e))?;
                    let out = match m.as_str() {
                        "card.read" => {
                            let genuine = !rec.blocked
                                && app::internal_authenticate(
                                    &mut tx,
                                    &mut st2.keys(),
                                    &rec.card_id,
                                )
                                .unwrap_or(false);
                            card_json(&rec, genuine)
                        }
                        "card.verify_pin" => {
                            let p = old.ok_or_else(|| ApiError::params("pin"))?;
                            app::verify_pin(&mut tx, &p).map_err(|e| from_app(&e))?;
                            json!({"verified": true})
                        }
                        "card.change_pin" => {
                            let (o, n) = (
                                old.ok_or_else(|| ApiError::params("old_pin"))?,
                                new.ok_or_else(|| ApiError::params("new_pin"))?,
                            );
                            app::change_pin(&mut tx, &o, &n).map_err(|e| from_app(&e))?;
                            json!({"changed": true})
                        }
                        _ => {
                            json!({"balance_fen": app::balance(&mut tx).map_err(|e| from_app(&e))?})
                        }
                    };
                    Ok((rec.card_number, out))
                })
                .await;
            match res {
                Ok((num, out)) => {
                    st.audit(&op.name, method, &r.name, &num, "ok");
                    Ok(out)
                }
                Err(e) => {
                    st.audit(&op.name, method, &r.name, "", e.kind.unwrap_or("error"));
                    Err(e)
                }
            }
        }
        "pay.debit" => {
            let order = s(p, "order_id")?.to_string();
            if order.is_empty() || order.len() > 64 {
                return Err(ApiError::params("order_id: 1 to 64 characters"));
            }
            let amt = amount(p, "amount_fen")?;
            let pn = pin(p, "pin")?;
            let existing = lock(&st.journal)
                .payment(&order)
                .map_err(ApiError::journal)?;
            if let Some(e) = existing {
                if e.amount_fen != amt as i64 || e.kind != "debit" {
                    return Err(ApiError::kind(
                        "DUPLICATE_ORDER",
                        format!("order {order} exists with another amount"),
                    ));
                }
                let e = if e.status == "pending" {
                    try_settle(st, e).await?
                } else {
                    e
                };
                return Ok(e.to_json());
            }
            let r = st.pick_reader(reader_name.as_deref())?;
            let (st2, o2, opn) = (st.clone(), order.clone(), op.name.clone());
            let res = r
                .run(st.wait(), move |card| {
                    debit(&st2, card, &o2, amt, &pn, &opn)
                })
                .await;
            match res {
                Ok(pay) => {
                    st.audit(
                        &op.name,
                        method,
                        &r.name,
                        &pay.card_number,
                        &format!("completed {order} {amt}"),
                    );
                    Ok(pay.to_json())
                }
                Err(e) => {
                    st.audit(
                        &op.name,
                        method,
                        &r.name,
                        "",
                        &format!("{} {order}", e.kind.unwrap_or("error")),
                    );
                    Err(e)
                }
            }
        }
        "pay.query" => {
            let order = s(p, "order_id")?;
            let pay = lock(&st.journal)
                .payment(order)
                .map_err(ApiError::journal)?;
            let pay =
                pay.ok_or_else(|| ApiError::params(format!("order_id: no order {order:?}")))?;
            let pay = if pay.status == "pending" {
                try_settle(st, pay).await?
            } else {
                pay
            };
            Ok(pay.to_json())
        }
        "pay.refund" => {
            if !st.has_key(KeyPurpose::Load) {
                return Err(ApiError::kind(
                    "NOT_SUPPORTED",
                    "this deployment holds no LOAD key",
                ));
            }
            Err(ApiError::kind(
                "NOT_SUPPORTED",
                "refunds are not implemented yet",
            ))
        }
        "settle.day" => {
            let date = s(p, "date")?;
            NaiveDate::parse_from_str(date, "%Y-%m-%d")
                .map_err(|_| ApiError::params("date: YYYY-MM-DD"))?;
            let list = lock(&st.journal).day(date).map_err(ApiError::journal)?;
            fn done<'a>(list: &'a [Payment], k: &'a str) -> impl Iterator<Item = &'a Payment> + 'a {
                list.iter()
                    .filter(move |x| x.kind == k && x.status == "completed")
            }
            st.audit(&op.name, method, "", "", date);
            Ok(json!({
                "date": date,
                "count": done(&list, "debit").count(),
                "total_fen": done(&list, "debit").map(|x| x.amount_fen).sum::<i64>(),
                "refund_count": done(&list, "refund").count(),
                "refund_total_fen": done(&list, "refund").map(|x| x.amount_fen).sum::<i64>(),
                "transactions": list.iter().map(Payment::to_json).collect::<Vec<_>>(),
            }))
        }
        "audit.query" => {
            let v = lock(&st.journal)
                .audit_query(
                    opt_s(p, "since")?,
                    opt_s(p, "until")?,
                    opt_s(p, "operator")?,
                )
                .map_err(ApiError::journal)?;
            Ok(Value::Array(v))
        }
        m => Err(ApiError::method_not_found(m)),
    }
}

pub fn health(st: &State) -> Value {
    let journal = if lock(&st.journal).next_seq_peek().is_ok() {
        "ok"
    } else {
        "unavailable"
    };
    json!({"version": env!("CARGO_PKG_VERSION"), "readers": lock(&st.readers).len(), "journal": journal})
}

pub fn reader_list(st: &State) -> Value {
    let list = lock(&st.readers).clone();
    Value::Array(
        list.iter()
            .map(|r| {
                let (present, atr) = r.presence();
                json!({"name": r.name, "backend": r.backend, "card_present": present, "atr": hex::encode_upper(atr)})
            })
            .collect(),
    )
}
