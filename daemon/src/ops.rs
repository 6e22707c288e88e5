//! Card operations as plain blocking functions, run as reader jobs (one transaction
//! each, so nothing interleaves with them). Each returns the card number it saw (for
//! the audit log) with its result.
//!
//! Each operation starts from the reader's presentation cache ([`Card::cached`]): with
//! the card's records known, a payment sends SELECT (its answer says whether the
//! application is blocked now), INTERNAL AUTHENTICATE against the key diversified from
//! the cached card id (the same genuine card is there, or `CARD_CHANGED`), VERIFY,
//! INITIALIZE FOR PURCHASE and DEBIT; with nothing cached it reads only the records
//! policy and the payment need ([`app::read_policy`]). Settling a pending payment always
//! reads the card afresh.
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
use crate::readers::{Card, Presentation, Waiting};
use chrono::{DateTime, FixedOffset, Local};
use serde_json::{json, Value};
use sscard_driver::app::{self, AppError, CardRecord, Pin, PolicyRecords, Recovery};
use sscard_driver::crypto::{TXN_LOAD, TXN_PURCHASE};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::pinpad::Purpose;
use sscard_driver::transport::{CardTransport, Transaction};
use sscard_driver::{CardId, TerminalId};
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

fn drv(e: AppError) -> ApiError {
    from_driver(&e)
}

/// How an operation takes the card's identity.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// From the presentation cache when it holds the card (after a SELECT), else read.
    Cached,
    /// Always read in this operation's transaction (settling money after the fact).
    Fresh,
}

/// What an operation knows of the card it works on, written back to the cache when its
/// transaction ends.
struct Known {
    p: Presentation,
    /// Read in this transaction (not taken from the cache).
    fresh: bool,
    forget: bool,
}

impl Known {
    fn rec(&self) -> &PolicyRecords {
        &self.p.policy
    }

    /// The card in the reader is not the presentation this operation started from:
    /// forget it and refuse (nothing has moved).
    fn changed(&mut self, why: &str) -> ApiError {
        self.forget = true;
        ApiError::kind(
            ErrorKind::CardChanged,
            format!("{why}; read the card again before paying"),
        )
    }
}

/// One card operation: a transaction, the card's identity (cached or read, as `src`
/// says), then `f`; the card number comes back with the result (empty when the card
/// could not be read), and what was learnt goes back into the cache.
fn on_card<T>(
    card: &mut Card<'_>,
    src: Source,
    f: impl FnOnce(&mut Transaction<'_>, &mut Known) -> Result<T, ApiError>,
) -> Seen<T> {
    let (known, r) = {
        let (mut tx, cached) = match card.open() {
            Ok(t) => t,
            Err(e) => return (String::new(), Err(from_driver(&e))),
        };
        // SELECT's word on the application's state agrees with the cache, or the card
        // is read again (only a write or a reset changes it, and both drop the cache)
        let cached = match (src, cached) {
            (Source::Cached, Some(p)) => match app::select_application(&mut tx) {
                Ok(sel) if sel.blocked == p.policy.blocked => Ok(Some(p)),
                Ok(_) => Ok(None),
                Err(e) => Err(drv(e)),
            },
            (_, cached) => Ok(cached),
        };
        let known = match (src, cached) {
            (_, Err(e)) => Err(e),
            (Source::Cached, Ok(Some(p))) => Ok(Known {
                p,
                fresh: false,
                forget: false,
            }),
            (_, Ok(cached)) => match app::read_policy(&mut tx) {
                // the card as cached: what else is known of it stands
                Ok(policy) => Ok(Known {
                    p: match cached {
                        Some(p) if p.policy == policy => p,
                        _ => Presentation::of(policy),
                    },
                    fresh: true,
                    forget: false,
                }),
                Err(e) => Err(drv(e)),
            },
        };
        match known {
            Err(e) => return (String::new(), Err(e)),
            Ok(mut k) => {
                let r = f(&mut tx, &mut k);
                (k, r)
            }
        }
    };
    let number = known.rec().card_number.clone();
    if known.forget {
        card.forget();
    } else {
        card.remember(known.p);
    }
    (number, r)
}

fn same_city(ctx: &Ctx, id: &CardId) -> Result<(), ApiError> {
    let card = id.region();
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

fn internal_auth(tx: &mut Transaction<'_>, ctx: &Ctx, id: &CardId) -> Result<bool, ApiError> {
    ctx.keys
        .with(&ctx.journal, |k| app::internal_authenticate(tx, k, id))
        .map_err(drv)
}

/// INTERNAL AUTHENTICATE with the key diversified from the card id `k` holds. A card
/// read in this transaction that fails is not genuine. A cached presentation that
/// proved genuine and fails now is not the card in the reader any more (`CARD_CHANGED`:
/// forgotten, nothing moved); one never proved genuine is read again to tell a changed
/// card from a false one.
fn authenticate(tx: &mut Transaction<'_>, ctx: &Ctx, k: &mut Known) -> Result<(), ApiError> {
    let id = k.rec().card_id;
    if internal_auth(tx, ctx, &id)? {
        k.p.genuine = Some(true);
        return Ok(());
    }
    if !k.fresh {
        if k.p.genuine == Some(true) {
            return Err(k.changed("the card in the reader does not answer as the card read before"));
        }
        reread(tx, k)?;
    }
    k.p.genuine = Some(false);
    Err(ApiError::kind(
        ErrorKind::NotGenuine,
        "internal authentication failed: the card does not hold this city's keys",
    ))
}

/// Whether a card's INTERNAL AUTHENTICATE proves it genuine (a blocked card, or one of
/// another city, cannot and is reported not genuine).
fn genuine_of(tx: &mut Transaction<'_>, ctx: &Ctx, rec: &PolicyRecords) -> Result<bool, ApiError> {
    if rec.blocked || same_city(ctx, &rec.card_id).is_err() {
        return Ok(false);
    }
    internal_auth(tx, ctx, &rec.card_id)
}

/// `card.read`: the card object, with `genuine` from INTERNAL AUTHENTICATE. Answered
/// from the presentation cache when it holds the whole card (no command to the card),
/// else read whole in one transaction and remembered.
pub fn read_card(card: &mut Card<'_>, ctx: &Ctx) -> Seen<Value> {
    card.confirm();
    if let Some(p) = card.cached() {
        if let (Some(r), Some(g)) = (&p.record, p.genuine) {
            return (r.card_number.clone(), Ok(card_json(r, g)));
        }
    }
    let read = (|| {
        let mut tx = begin(card)?;
        let rec = app::read_card(&mut tx).map_err(drv)?;
        let g = genuine_of(&mut tx, ctx, &rec.policy())?;
        Ok::<_, ApiError>((rec, g))
    })();
    match read {
        Ok((rec, g)) => {
            let v = card_json(&rec, g);
            let number = rec.card_number.clone();
            let mut p = Presentation::whole(rec);
            p.genuine = Some(g);
            card.remember(p);
            (number, Ok(v))
        }
        Err(e) => (String::new(), Err(e)),
    }
}

/// The read at insertion, in the background (one transaction): the policy records, then
/// INTERNAL AUTHENTICATE, then the rest, each step remembered, stopping at the next step
/// as soon as a caller's job waits for the reader (a payment then needs only its five
/// commands, or the few records still missing).
pub fn prefetch(card: &mut Card<'_>, ctx: &Ctx, waiting: &Waiting) {
    let mut known: Option<Presentation> = None;
    {
        let Ok((mut tx, cached)) = card.open() else {
            return;
        };
        if cached.is_some_and(|p| p.record.is_some() && p.genuine.is_some()) {
            return;
        }
        let steps = (|| -> Result<(), ApiError> {
            let policy = app::read_policy(&mut tx).map_err(drv)?;
            let p = known.insert(Presentation::of(policy));
            if waiting.any() {
                return Ok(());
            }
            p.genuine = Some(genuine_of(&mut tx, ctx, &p.policy)?);
            if waiting.any() {
                return Ok(());
            }
            p.record = Some(app::read_rest(&mut tx, &p.policy).map_err(drv)?);
            Ok(())
        })();
        if let Err(e) = steps {
            tracing::debug!("reading the card at insertion: {}", e.message);
        }
    }
    if let Some(p) = known {
        card.remember(p);
    }
}

/// Where the holder's PIN comes from (api.md 1.1: on a reader with a PIN pad, `pin` is
/// optional and without it the holder types on the pad).
pub enum PinSource<T> {
    /// Sent in the call.
    Sent(T),
    /// Typed on the pad of the named reader.
    Pad { reader: String },
}

/// What `card.verify_pin`, `card.change_pin` and `card.balance` do.
pub enum PinOp {
    Verify(PinSource<Pin>),
    /// The current PIN and the new one.
    Change(PinSource<(Pin, Pin)>),
    Balance,
}

/// Run a PIN entry on a reader's pad: `pin.prompt` before (the POS tells the holder to
/// type), `pin.done` after, whatever came of it (api.md 1.1 events).
fn on_pad<T>(
    ctx: &Ctx,
    reader: &str,
    purpose: Purpose,
    entry: impl FnOnce(u8) -> Result<T, AppError>,
) -> Result<T, ApiError> {
    let _ = ctx.events.send(Event::PinPrompt {
        reader: reader.to_string(),
        purpose,
    });
    let r = entry(ctx.config.pin_pad_timeout_s);
    let _ = ctx.events.send(Event::PinDone {
        reader: reader.to_string(),
    });
    r.map_err(drv)
}

/// VERIFY with the PIN sent, or typed on the pad.
fn verify(tx: &mut Transaction<'_>, ctx: &Ctx, pin: &PinSource<Pin>) -> Result<(), ApiError> {
    match pin {
        PinSource::Sent(p) => app::verify_pin(tx, p).map_err(drv),
        PinSource::Pad { reader } => on_pad(ctx, reader, Purpose::Verify, |t| {
            app::verify_pin_on_pad(tx, t)
        }),
    }
}

/// `card.verify_pin`, `card.change_pin` and `card.balance`.
pub fn pin_or_balance(card: &mut Card<'_>, ctx: &Ctx, op: PinOp) -> Seen<Value> {
    on_card(card, Source::Cached, |tx, k| {
        if k.rec().blocked {
            return Err(ApiError::kind(
                ErrorKind::CardBlocked,
                "the application is blocked",
            ));
        }
        match &op {
            PinOp::Change(PinSource::Sent((p, n))) => app::change_pin(tx, p, n)
                .map(|_| json!({"changed": true}))
                .map_err(drv),
            PinOp::Change(PinSource::Pad { reader }) => on_pad(ctx, reader, Purpose::Change, |t| {
                app::change_pin_on_pad(tx, t)
            })
            .map(|_| json!({"changed": true})),
            PinOp::Verify(pin) => verify(tx, ctx, pin).map(|_| json!({"verified": true})),
            PinOp::Balance => app::balance(tx)
                .map(|b| json!({"balance_fen": b}))
                .map_err(drv),
        }
    })
}

/// The insured status (EF15 tag 22, card profile §3) of a suspended insured person.
const INSURED_SUSPENDED: &str = "02";

/// A suspended insured person loses card settlement (api.md 1.1 `INSURANCE_SUSPENDED`):
/// decided from the records already read, so nothing more goes to the card.
fn insurance_active(rec: &PolicyRecords) -> Result<(), ApiError> {
    if rec.insured_status == INSURED_SUSPENDED {
        return Err(ApiError::kind(
            ErrorKind::InsuranceSuspended,
            "the holder's insurance is suspended (insured status 02): card settlement is refused",
        ));
    }
    Ok(())
}

/// The blacklist and the card's own state, judged now from the records `k` holds and
/// the journal, then INTERNAL AUTHENTICATE: before any PIN or money.
fn check_card(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    k: &mut Known,
    listed: Option<String>,
) -> Result<(), ApiError> {
    let rec = k.rec().clone();
    let rec = &rec;
    same_city(ctx, &rec.card_id)?;
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
    authenticate(tx, ctx, k)
}

/// What the journal says of a debit before it starts, in one round trip: the order's
/// payment if it exists, the card's blacklist entry, and its debits of the day.
struct Standing {
    existing: Option<Payment>,
    listed: Option<String>,
    spent: i64,
}

fn standing(ctx: &Ctx, order: &str, rec: &PolicyRecords) -> Result<Standing, ApiError> {
    let (order, num, id) = (
        order.to_string(),
        rec.card_number.clone(),
        rec.card_id.to_hex(),
    );
    let day = Local::now().date_naive().to_string();
    ctx.journal
        .call_blocking(move |j| {
            Ok(Standing {
                existing: j.payment(&order, PaymentKind::Debit)?,
                listed: j.blacklisted(&num, &id, &day)?,
                spent: j.card_day_total(&id, &day)?,
            })
        })
        .map_err(jerr)
}

fn limits(ctx: &Ctx, spent: i64, amount: u32) -> Result<(), ApiError> {
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
    let _ = ctx.events.send(Event::settled(p));
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
    card: &mut Card<'_>,
    ctx: &Ctx,
    only: Option<(&str, PaymentKind)>,
) -> Seen<Vec<Payment>> {
    on_card(card, Source::Fresh, |tx, k| {
        let id = k.rec().card_id.to_hex();
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
    /// The card the POS showed the holder (api.md 1.1 `card_id`).
    pub card_id: Option<CardId>,
    pub amount: u32,
    pub pin: PinSource<Pin>,
    pub operator: String,
}

/// The answer to a repeated order: the recorded payment if it is for this card (and
/// amount, checked by the caller), settled first if pending.
fn repeat(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    rec: &PolicyRecords,
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

/// A payment as a card operation left it.
pub struct Paid {
    pub payment: Payment,
    /// The order was paid before: this is its recorded payment (settled from the card
    /// if it was pending), and nothing was debited now.
    pub repeat: bool,
    /// The card completed it and its outcome is still to be written: the caller
    /// records it with the call's audit entry, in one commit (the row stays `pending`
    /// until then, and a crash in between is settled from the card like any other).
    pub unrecorded: bool,
}

impl Paid {
    fn repeated(payment: Payment) -> Self {
        Paid {
            payment,
            repeat: true,
            unrecorded: false,
        }
    }
}

/// `pay.debit` on the card: policy, PIN, INITIALIZE FOR PURCHASE, the journal's
/// pending row, DEBIT; a completed outcome comes back unrecorded (card profile §6).
pub fn debit(card: &mut Card<'_>, ctx: &Ctx, req: DebitRequest) -> Seen<Paid> {
    on_card(card, Source::Cached, |tx, k| debit_card(tx, ctx, k, req))
}

/// The card the POS names (`card_id`) is the one in the reader, or `CARD_CHANGED`.
fn as_shown(k: &mut Known, shown: Option<&CardId>) -> Result<(), ApiError> {
    match shown {
        Some(id) if *id != k.rec().card_id => Err(k.changed(&format!(
            "the card in the reader ({}) is not the card {} the call names",
            k.rec().card_number,
            id.to_hex()
        ))),
        _ => Ok(()),
    }
}

/// A repeated order is settled from the card itself: its identity read afresh in this
/// transaction (a cached presentation that is not the card in the reader any more is
/// `CARD_CHANGED`).
fn reread(tx: &mut Transaction<'_>, k: &mut Known) -> Result<(), ApiError> {
    if k.fresh {
        return Ok(());
    }
    let now = app::read_policy(tx).map_err(drv)?;
    if now.card_id != k.rec().card_id {
        return Err(k.changed("another card is in the reader"));
    }
    k.p.policy = now;
    k.fresh = true;
    Ok(())
}

fn debit_card(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    k: &mut Known,
    req: DebitRequest,
) -> Result<Paid, ApiError> {
    as_shown(k, req.card_id.as_ref())?;
    let st = standing(ctx, &req.order_id, k.rec())?;
    // a repeat that raced with the first (two readers, or two clients)
    if let Some(p) = st.existing {
        if p.amount_fen != i64::from(req.amount) {
            return Err(duplicate(&p));
        }
        reread(tx, k)?;
        return repeat(tx, ctx, k.rec(), p).map(Paid::repeated);
    }
    check_card(tx, ctx, k, st.listed)?;
    let rec = k.rec().clone();
    let rec = &rec;
    limits(ctx, st.spent, req.amount)?;
    verify(tx, ctx, &req.pin)?;
    let when = now();
    ctx.keys.with(&ctx.journal, |keys| {
        let prepared =
            app::initialize_purchase(tx, keys, &rec.card_id, req.amount, when.naive_local())
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
                return Err(ApiError::kind(
                    ErrorKind::DuplicateOrder,
                    format!("order {} is being paid at the same time", p.order_id),
                ))
            }
            Err(e) => return Err(jerr(e)),
        }
        match prepared.debit(tx, keys) {
            Ok(proof) => {
                p.status = PaymentStatus::Completed;
                p.tac = proof.tac;
                Ok(Paid {
                    payment: p,
                    repeat: false,
                    unrecorded: true,
                })
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

/// What `pay.refund` was asked.
pub struct RefundRequest {
    /// The completed debit being refunded.
    pub original: Payment,
    /// The card the POS showed the holder (api.md 1.1 `card_id`).
    pub card_id: Option<CardId>,
    pub amount: u32,
    pub pin: PinSource<Pin>,
    pub operator: String,
}

/// `pay.refund` on the card: the original order's card, checks, PIN, the journal's
/// pending row, purse load (card profile §7), the outcome.
pub fn refund(card: &mut Card<'_>, ctx: &Ctx, req: RefundRequest) -> Seen<Paid> {
    on_card(card, Source::Cached, |tx, k| refund_card(tx, ctx, k, req))
}

fn refund_card(
    tx: &mut Transaction<'_>,
    ctx: &Ctx,
    k: &mut Known,
    req: RefundRequest,
) -> Result<Paid, ApiError> {
    as_shown(k, req.card_id.as_ref())?;
    let rec = k.rec().clone();
    let rec = &rec;
    let o = &req.original;
    if o.card_id != rec.card_id.to_hex() {
        // a cached presentation is checked against the card before it is believed
        reread(tx, k)?;
    }
    if o.card_id != k.rec().card_id.to_hex() {
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
        reread(tx, k)?;
        return repeat(tx, ctx, k.rec(), p).map(Paid::repeated);
    }
    same_city(ctx, &rec.card_id)?;
    if rec.blocked {
        return Err(ApiError::kind(
            ErrorKind::CardBlocked,
            "the application is blocked",
        ));
    }
    authenticate(tx, ctx, k)?;
    verify(tx, ctx, &req.pin)?;
    let before = app::balance(tx).map_err(|e| from_driver(&e))?;
    // durable with the pending row below (it names the refund, and no card sees it)
    let seq = ctx.journal.reserve_seq().map_err(jerr)?;
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
            Ok(Paid {
                payment: p,
                repeat: false,
                unrecorded: true,
            })
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
