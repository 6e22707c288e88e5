//! Card operations as plain blocking functions, run as reader jobs (one transaction
//! each, so nothing interleaves with them). Each returns the card number it saw (for
//! the audit log) with its result.
//!
//! The money rules live here:
//! - the policy of api.md before a debit: issued (the application answers), card of
//!   this city, not blacklisted (a presented blacklisted card is blocked on the card
//!   when the MAINT key is held), insured status not suspended (api.md 1.1
//!   `INSURANCE_SUSPENDED`), not blocked, not expired, genuine (INTERNAL
//!   AUTHENTICATE), within the per-transaction and per-card daily limits;
//! - a debit is journaled `pending` after INITIALIZE FOR PURCHASE and before DEBIT
//!   (card profile §6), and its outcome after;
//! - a payment whose outcome is unknown is settled from the card itself: GET
//!   TRANSACTION PROOF (§6 step 4) and the transaction log (§3).

use crate::config::Config;
use crate::error::{from_driver, ApiError, ErrorKind};
use crate::events::Event;
use crate::journal::{JournalError, JournalHandle, Payment, PaymentKind, PaymentStatus};
use crate::keys::KeySource;
use chrono::{DateTime, FixedOffset, Local};
use serde_json::{json, Value};
use sscard_driver::app::{self, AppError, CardRecord, Pin, Recovery};
use sscard_driver::crypto::{TXN_LOAD, TXN_PURCHASE};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::{CardTransport, Transaction};
use sscard_driver::TerminalId;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The payments table's key `(order_id, kind)` already holds that order (any other
/// constraint, such as a reused `txn_id`, is a journal problem).
const SQLITE_CONSTRAINT_PRIMARYKEY: std::os::raw::c_int =
    rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY;

/// What a card job needs besides the card.
#[derive(Clone)]
pub struct Ctx {
    pub journal: JournalHandle,
    pub keys: Arc<KeySource>,
    pub config: Arc<Config>,
    pub events: broadcast::Sender<Event>,
}

/// A card operation's result with the card number it saw (empty if none).
pub type Seen<T> = (String, Result<T, ApiError>);

fn jerr(e: JournalError) -> ApiError {
    ApiError::journal(e)
}

fn begin(card: &mut dyn CardTransport) -> Result<Transaction<'_>, ApiError> {
    Transaction::begin(card).map_err(|e| from_driver(&e))
}

fn now() -> DateTime<Local> {
    // whole seconds: what the card gets (BCD) and what the journal says must agree
    let t = Local::now();
    t - chrono::Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos()))
}

fn rfc3339(t: &DateTime<Local>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// The BCD date and time a payment's `time` sent to the card, as the log shows them.
fn card_datetime(time: &str) -> Option<(String, String)> {
    let t: DateTime<FixedOffset> = DateTime::parse_from_rfc3339(time).ok()?;
    let (d, h) = app::bcd_datetime(t.naive_local());
    Some((hex::encode(d), hex::encode(h)))
}

/// The card object of api.md.
pub fn card_json(r: &CardRecord, genuine: bool) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_else(|_| json!({}));
    v["genuine"] = json!(genuine);
    v
}

fn read(tx: &mut Transaction<'_>) -> Result<CardRecord, ApiError> {
    app::read_card(tx).map_err(|e| from_driver(&e))
}

/// One card operation: a transaction, the card's records, then `f`; the card number
/// comes back with the result (empty when the card could not be read).
fn on_card<T>(
    card: &mut dyn CardTransport,
    f: impl FnOnce(&mut Transaction<'_>, &CardRecord) -> Result<T, ApiError>,
) -> Seen<T> {
    let mut tx = match begin(card) {
        Ok(t) => t,
        Err(e) => return (String::new(), Err(e)),
    };
    let rec = match read(&mut tx) {
        Ok(r) => r,
        Err(e) => return (String::new(), Err(e)),
    };
    let r = f(&mut tx, &rec);
    (rec.card_number, r)
}

fn same_city(ctx: &Ctx, rec: &CardRecord) -> Result<(), ApiError> {
    let card = rec.card_id.region();
    if card.city() != ctx.config.region.city() {
        return Err(ApiError::kind(
            ErrorKind::CardNotSupported,
            format!(
                "a card of region {card}; this terminal serves {}",
                ctx.config.region
            ),
        ));
    }
    Ok(())
}

fn genuine(tx: &mut Transaction<'_>, ctx: &Ctx, rec: &CardRecord) -> Result<bool, ApiError> {
    ctx.keys
        .with(&ctx.journal, |k| {
            app::internal_authenticate(tx, k, &rec.card_id)
        })
        .map_err(|e| from_driver(&e))
}

/// `card.read`: the card object, with `genuine` from INTERNAL AUTHENTICATE (a blocked
/// card cannot answer it and is reported not genuine).
pub fn read_card(card: &mut dyn CardTransport, ctx: &Ctx) -> Seen<Value> {
    on_card(card, |tx, rec| {
        let g = if rec.blocked || same_city(ctx, rec).is_err() {
            false
        } else {
            genuine(tx, ctx, rec)?
        };
        Ok(card_json(rec, g))
    })
}

/// `card.verify_pin`, `card.change_pin` (`new` given) and `card.balance` (`pin` None).
pub fn pin_or_balance(
    card: &mut dyn CardTransport,
    pin: Option<&Pin>,
    new: Option<&Pin>,
) -> Seen<Value> {
    on_card(card, |tx, rec| {
        if rec.blocked {
            return Err(ApiError::kind(
                ErrorKind::CardBlocked,
                "the application is blocked",
            ));
        }
        match (pin, new) {
            (Some(p), Some(n)) => app::change_pin(tx, p, n)
                .map(|_| json!({"changed": true}))
                .map_err(|e| from_driver(&e)),
            (Some(p), None) => app::verify_pin(tx, p)
                .map(|_| json!({"verified": true}))
                .map_err(|e| from_driver(&e)),
            _ => app::balance(tx)
                .map(|b| json!({"balance_fen": b}))
                .map_err(|e| from_driver(&e)),
        }
    })
}

/// The insured status (EF15 tag 22, card profile §3) of a suspended insured person.
const INSURED_SUSPENDED: &str = "02";

/// A suspended insured person loses card settlement (api.md 1.1 `INSURANCE_SUSPENDED`):
/// decided from the records already read, so nothing more goes to the card.
fn insurance_active(rec: &CardRecord) -> Result<(), ApiError> {
    if rec.insured_status == INSURED_SUSPENDED {
        return Err(ApiError::kind(
            ErrorKind::InsuranceSuspended,
            "the holder's insurance is suspended (insured status 02): card settlement is refused",
        ));
    }
    Ok(())
}

/// The blacklist and the card's own state, before any money moves.
fn check_card(tx: &mut Transaction<'_>, ctx: &Ctx, rec: &CardRecord) -> Result<(), ApiError> {
    same_city(ctx, rec)?;
    let today = Local::now().date_naive().to_string();
    let (num, id, day) = (rec.card_number.clone(), rec.card_id.to_hex(), today.clone());
    let listed = ctx
        .journal
        .call_blocking(move |j| j.blacklisted(&num, &id, &day))
        .map_err(jerr)?;
    if let Some(reason) = listed {
        let mut note = String::new();
        if !rec.blocked && ctx.keys.supports(KeyPurpose::Maint) {
            match ctx.keys.with(&ctx.journal, |k| {
                app::block_application(tx, k, &rec.card_id)
            }) {
                Ok(()) => note = "; the card has been blocked".into(),
                Err(e) => {
                    tracing::warn!(card = %rec.card_number, "blocking a blacklisted card failed: {e}")
                }
            }
        }
        return Err(ApiError::kind(
            ErrorKind::Blacklisted,
            format!("the card is blacklisted: {reason}{note}"),
        ));
    }
    // before INTERNAL AUTHENTICATE and the PIN: a suspended card gets no command
    insurance_active(rec)?;
    if rec.blocked {
        return Err(ApiError::kind(
            ErrorKind::CardBlocked,
            "the application is blocked",
        ));
    }
    if rec.expiry_date < Local::now().date_naive() {
        return Err(ApiError::kind(
            ErrorKind::CardExpired,
            format!("the card expired on {}", rec.expiry_date),
        ));
    }
    if !genuine(tx, ctx, rec)? {
        return Err(ApiError::kind(
            ErrorKind::NotGenuine,
            "internal authentication failed: the card does not hold this city's keys",
        ));
    }
    Ok(())
}

fn limits(ctx: &Ctx, rec: &CardRecord, amount: u32) -> Result<(), ApiError> {
    let l = &ctx.config.limits;
    if u64::from(amount) > l.per_transaction_fen {
        return Err(ApiError::kind(
            ErrorKind::LimitExceeded,
            format!(
                "{amount} fen is over the per-transaction limit of {} fen",
                l.per_transaction_fen
            ),
        )
        .with(json!({"limit_fen": l.per_transaction_fen})));
    }
    let (id, day) = (rec.card_id.to_hex(), Local::now().date_naive().to_string());
    let spent = ctx
        .journal
        .call_blocking(move |j| j.card_day_total(&id, &day))
        .map_err(jerr)?;
    let spent = u64::try_from(spent).unwrap_or(0);
    if spent + u64::from(amount) > l.per_card_per_day_fen {
        return Err(ApiError::kind(
            ErrorKind::LimitExceeded,
            format!(
                "{amount} fen would bring the card's day to {} fen, over its daily limit of {} fen",
                spent + u64::from(amount),
                l.per_card_per_day_fen
            ),
        )
        .with(json!({"limit_fen": l.per_card_per_day_fen, "spent_today_fen": spent})));
    }
    Ok(())
}

fn notify(ctx: &Ctx, p: &Payment) {
    let _ = ctx.events.send(Event::PaymentSettled {
        order_id: p.order_id.clone(),
        kind: p.kind,
        status: p.status,
    });
}

/// Record a pending payment's outcome (and tell subscribers).
fn record(ctx: &Ctx, p: &Payment) -> Result<(), ApiError> {
    let q = p.clone();
    let changed = ctx
        .journal
        .call_blocking(move |j| j.settle(&q))
        .map_err(jerr)?;
    if changed {
        notify(ctx, p);
    }
    Ok(())
}

/// The counter of the log record (card profile §3) of payment `p`, if the card's log
/// holds it: same kind, amount, terminal, date and time (and counter for a purchase).
fn find_in_log(tx: &mut Transaction<'_>, p: &Payment, kind: u8) -> Result<Option<u16>, AppError> {
    let Some((date, time)) = card_datetime(&p.time) else {
        return Ok(None);
    };
    Ok(app::transaction_log(tx)?
        .into_iter()
        .find(|l| {
            l.kind == kind
                && i64::from(l.amount) == p.amount_fen
                && l.terminal_id.eq_ignore_ascii_case(&p.terminal_id)
                && l.date == date
                && l.time == time
                && (kind != TXN_PURCHASE || i64::from(l.counter) == p.counter)
        })
        .map(|l| l.counter))
}

/// What the card says about a pending payment: `Some(p)` settled (completed or failed),
/// `None` if the card cannot tell.
fn recover(tx: &mut Transaction<'_>, p: &Payment) -> Result<Option<Payment>, AppError> {
    if card_datetime(&p.time).is_none() {
        return Ok(None);
    }
    let mut s = p.clone();
    if p.kind == PaymentKind::Debit {
        let tid: TerminalId = match p.terminal_id.parse() {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let (Ok(counter), Ok(amount)) = (u16::try_from(p.counter), u32::try_from(p.amount_fen))
        else {
            return Ok(None);
        };
        match app::recover_purchase(tx, counter, amount, &tid)? {
            Recovery::Happened { tac } => {
                s.status = PaymentStatus::Completed;
                s.tac = tac;
            }
            // the card's log holds it but its proof was replaced: completed, no TAC
            Recovery::HappenedWithoutProof => s.status = PaymentStatus::Completed,
            // the log no longer reaches back: leave it pending for manual settlement
            Recovery::Unknown => return Ok(None),
            // no proof for that counter: a later purchase may have replaced it, so the
            // log decides (a purchase cannot commit after its card session ended)
            Recovery::NotHappened => {
                if find_in_log(tx, p, TXN_PURCHASE)?.is_some() {
                    s.status = PaymentStatus::Completed;
                } else {
                    s.status = PaymentStatus::Failed;
                    s.balance_after_fen = s.balance_before_fen;
                }
            }
        }
    } else {
        match find_in_log(tx, p, TXN_LOAD)? {
            Some(online_counter) => {
                s.status = PaymentStatus::Completed;
                s.counter = i64::from(online_counter);
            }
            None => {
                s.status = PaymentStatus::Failed;
                s.balance_after_fen = s.balance_before_fen;
            }
        }
    }
    Ok(Some(s))
}

/// Settle the card's pending payments (all of them, or only `only`'s order and kind).
/// Returns the payments settled.
pub fn settle_pending(
    card: &mut dyn CardTransport,
    ctx: &Ctx,
    only: Option<(&str, PaymentKind)>,
) -> Seen<Vec<Payment>> {
    on_card(card, |tx, rec| {
        let id = rec.card_id.to_hex();
        let pending = ctx.journal.call_blocking(|j| j.pending()).map_err(jerr)?;
        let mut done = Vec::new();
        for p in pending.iter().filter(|p| p.card_id == id) {
            if only.is_some_and(|(o, k)| o != p.order_id || k != p.kind) {
                continue;
            }
            match recover(tx, p) {
                Ok(Some(s)) => {
                    record(ctx, &s)?;
                    tracing::info!(order = %s.order_id, kind = %s.kind, status = %s.status, "pending payment settled");
                    done.push(s);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(order = %p.order_id, "settling a pending payment: {e}");
                    return Err(from_driver(&e));
                }
            }
        }
        Ok(done)
    })
}

/// What `pay.debit` was asked.
pub struct DebitRequest {
    pub order_id: String,
    pub amount: u32,
    pub pin: Pin,
    pub operator: String,
}

/// The answer to a repeated order: the recorded payment if it is for this card (and
/// amount, checked by the caller), settled first if pending.
fn repeat(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    rec: &CardRecord,
    p: Payment,
) -> Result<Payment, ApiError> {
    if p.card_id != rec.card_id.to_hex() {
        return Err(ApiError::kind(
            ErrorKind::DuplicateOrder,
            format!("order {} was paid with another card", p.order_id),
        ));
    }
    if p.status != PaymentStatus::Pending {
        return Ok(p);
    }
    match recover(tx, &p).map_err(|e| from_driver(&e))? {
        Some(s) => {
            record(ctx, &s)?;
            Ok(s)
        }
        None => Ok(p),
    }
}

/// `pay.debit` on the card: policy, PIN, INITIALIZE FOR PURCHASE, the journal's
/// pending row, DEBIT, the outcome (card profile §6).
pub fn debit(card: &mut dyn CardTransport, ctx: &Ctx, req: DebitRequest) -> Seen<Payment> {
    on_card(card, |tx, rec| debit_card(tx, ctx, rec, req))
}

fn debit_card(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    rec: &CardRecord,
    req: DebitRequest,
) -> Result<Payment, ApiError> {
    let order = req.order_id.clone();
    // a repeat that raced with the first (two readers, or two clients)
    if let Some(p) = ctx
        .journal
        .call_blocking(move |j| j.payment(&order, PaymentKind::Debit))
        .map_err(jerr)?
    {
        if p.amount_fen != i64::from(req.amount) {
            return Err(duplicate(&p));
        }
        return repeat(tx, ctx, rec, p);
    }
    check_card(tx, ctx, rec)?;
    limits(ctx, rec, req.amount)?;
    app::verify_pin(tx, &req.pin).map_err(|e| from_driver(&e))?;
    let when = now();
    ctx.keys.with(&ctx.journal, |keys| {
        let prepared = app::initialize_purchase(tx, keys, &rec.card_id, req.amount, when.naive_local())
            .map_err(|e| from_driver(&e))?;
        let tid = prepared.terminal_id.to_hex();
        let mut p = Payment {
            order_id: req.order_id.clone(),
            txn_id: format!("{tid}-{:08}", prepared.terminal_seq),
            kind: PaymentKind::Debit,
            status: PaymentStatus::Pending,
            card_id: rec.card_id.to_hex(),
            card_number: rec.card_number.clone(),
            amount_fen: i64::from(req.amount),
            balance_before_fen: i64::from(prepared.balance_before),
            balance_after_fen: i64::from(prepared.balance_before) - i64::from(req.amount),
            counter: i64::from(prepared.counter),
            terminal_id: tid,
            terminal_seq: i64::from(prepared.terminal_seq),
            time: rfc3339(&when),
            tac: String::new(),
            operator: req.operator.clone(),
        };
        // durable before the DEBIT leaves; a second row for the order is refused here
        let row = p.clone();
        match ctx.journal.call_blocking(move |j| j.insert(&row)) {
            Ok(()) => {}
            Err(JournalError::Db(rusqlite::Error::SqliteFailure(f, _)))
                if f.extended_code == SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return Err(ApiError::kind(ErrorKind::DuplicateOrder,
                    format!("order {} is being paid at the same time", p.order_id),
                ))
            }
            Err(e) => return Err(jerr(e)),
        }
        match prepared.debit(tx, keys) {
            Ok(proof) => {
                p.status = PaymentStatus::Completed;
                p.tac = proof.tac;
                if let Err(e) = record(ctx, &p) {
                    // the card has paid: the row stays pending and recovery completes it
                    tracing::error!(order = %p.order_id, "debit done but not recorded: {}", e.message);
                }
                Ok(p)
            }
            Err(e) => Err(card_error(tx, ctx, &p, e)),
        }
    })
}

/// The card's error after the journaled DEBIT or CREDIT of `p`. When the link was lost
/// the outcome is uncertain; when the card answered, it is asked whether it committed,
/// and the journal records what it says.
fn card_error(tx: &mut Transaction<'_>, ctx: &Ctx, p: &Payment, e: AppError) -> ApiError {
    let err = from_driver(&e);
    if matches!(e, AppError::Uncertain { .. }) {
        return err.with(json!({"payment": p.to_json()}));
    }
    match recover(tx, p) {
        Ok(Some(s)) => {
            if let Err(j) = record(ctx, &s) {
                return j;
            }
            if s.status == PaymentStatus::Failed {
                err
            } else {
                err.with(json!({"payment": s.to_json()}))
            }
        }
        _ => ApiError::kind(
            ErrorKind::TransactionUncertain,
            format!("{}; the outcome is not known yet", err.message),
        )
        .with(json!({"payment": p.to_json()})),
    }
}

fn duplicate(p: &Payment) -> ApiError {
    ApiError::kind(
        ErrorKind::DuplicateOrder,
        format!(
            "order {} exists ({} of {} fen, {})",
            p.order_id, p.kind, p.amount_fen, p.status
        ),
    )
}

/// `pay.debit` for an order the journal has: the recorded payment (settled if it was
/// pending) when the card in the reader is the order's.
pub fn debit_again(card: &mut dyn CardTransport, ctx: &Ctx, p: Payment) -> Seen<Payment> {
    on_card(card, |tx, rec| repeat(tx, ctx, rec, p))
}

/// What `pay.refund` was asked.
pub struct RefundRequest {
    /// The completed debit being refunded.
    pub original: Payment,
    pub amount: u32,
    pub pin: Pin,
    pub operator: String,
}

/// `pay.refund` on the card: the original order's card, checks, PIN, the journal's
/// pending row, purse load (card profile §7), the outcome.
pub fn refund(card: &mut dyn CardTransport, ctx: &Ctx, req: RefundRequest) -> Seen<Payment> {
    on_card(card, |tx, rec| refund_card(tx, ctx, rec, req))
}

fn refund_card(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    rec: &CardRecord,
    req: RefundRequest,
) -> Result<Payment, ApiError> {
    let o = &req.original;
    if o.card_id != rec.card_id.to_hex() {
        return Err(ApiError::kind(
            ErrorKind::NoCard,
            format!(
                "the card of order {} (card number {}) is not in the reader",
                o.order_id, o.card_number
            ),
        ));
    }
    let order = o.order_id.clone();
    if let Some(p) = ctx
        .journal
        .call_blocking(move |j| j.payment(&order, PaymentKind::Refund))
        .map_err(jerr)?
    {
        if p.amount_fen != i64::from(req.amount) {
            return Err(duplicate(&p));
        }
        return repeat(tx, ctx, rec, p);
    }
    same_city(ctx, rec)?;
    if rec.blocked {
        return Err(ApiError::kind(
            ErrorKind::CardBlocked,
            "the application is blocked",
        ));
    }
    if !genuine(tx, ctx, rec)? {
        return Err(ApiError::kind(
            ErrorKind::NotGenuine,
            "internal authentication failed: the card does not hold this city's keys",
        ));
    }
    app::verify_pin(tx, &req.pin).map_err(|e| from_driver(&e))?;
    let before = app::balance(tx).map_err(|e| from_driver(&e))?;
    let seq = ctx.journal.call_blocking(|j| j.next_seq()).map_err(jerr)?;
    let when = now();
    let tid = ctx.keys.terminal_id().to_hex();
    let mut p = Payment {
        order_id: o.order_id.clone(),
        txn_id: format!("{tid}-R{seq:08}"),
        kind: PaymentKind::Refund,
        status: PaymentStatus::Pending,
        card_id: o.card_id.clone(),
        card_number: rec.card_number.clone(),
        amount_fen: i64::from(req.amount),
        balance_before_fen: i64::from(before),
        balance_after_fen: i64::from(before) + i64::from(req.amount),
        // the online counter is known once the card answers
        counter: -1,
        terminal_id: tid,
        terminal_seq: i64::from(seq),
        time: rfc3339(&when),
        tac: String::new(),
        operator: req.operator.clone(),
    };
    let row = p.clone();
    match ctx.journal.call_blocking(move |j| j.insert(&row)) {
        Ok(()) => {}
        Err(JournalError::Db(rusqlite::Error::SqliteFailure(f, _)))
            if f.extended_code == SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            return Err(ApiError::kind(
                ErrorKind::DuplicateOrder,
                format!("order {} is being refunded at the same time", p.order_id),
            ))
        }
        Err(e) => return Err(jerr(e)),
    }
    let loaded = ctx.keys.with(&ctx.journal, |keys| {
        app::load(tx, keys, &rec.card_id, req.amount, when.naive_local())
    });
    match loaded {
        Ok(proof) => {
            p.status = PaymentStatus::Completed;
            p.tac = proof.tac;
            p.counter = i64::from(proof.online_counter);
            p.balance_before_fen = i64::from(proof.balance_before);
            p.balance_after_fen = i64::from(proof.balance_after);
            if let Err(e) = record(ctx, &p) {
                tracing::error!(order = %p.order_id, "refund done but not recorded: {}", e.message);
            }
            Ok(p)
        }
        Err(e) => Err(card_error(tx, ctx, &p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_time_gives_the_card_bcd() {
        assert_eq!(
            card_datetime("2026-11-23T09:30:15+08:00"),
            Some(("20261123".into(), "093015".into()))
        );
        assert_eq!(card_datetime("yesterday"), None);
    }
}
