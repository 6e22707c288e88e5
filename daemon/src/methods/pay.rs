//! `pay.debit`, `pay.query`, `pay.refund`.
//!
//! Idempotency on `order_id`: a `pay.debit` for an order the journal has returns the
//! recorded payment when the amount is the same and the card in the reader is the
//! order's (settling it first if it was pending); another amount or card gets
//! `DUPLICATE_ORDER`. A repeat with no card anywhere returns a completed or failed
//! payment as recorded, and `TRANSACTION_UNCERTAIN` for a pending one.

use super::params::{DebitParams, QueryParams, RefundParams};
use super::{ctx, on_card, pin_source, Call};
use crate::config::Operator;
use crate::error::{ApiError, ErrorKind};
use crate::journal::{Payment, PaymentKind, PaymentStatus};
use crate::ops::{self, DebitRequest, Paid, RefundRequest};
use crate::session::Role;
use crate::state::State;
use serde_json::{json, Value};
use sscard_driver::keys::KeyPurpose;
use std::sync::Arc;

fn summary(p: &Payment) -> String {
    format!(
        "{} {} {} {} fen txn {}",
        p.status, p.kind, p.order_id, p.amount_fen, p.txn_id
    )
}

async fn recorded(st: &State, order: &str, kind: PaymentKind) -> Result<Option<Payment>, ApiError> {
    let (o, k) = (order.to_string(), kind);
    st.journal
        .call(move |j| j.payment(&o, k))
        .await
        .map_err(ApiError::journal)
}

/// Try every reader holding a card to settle a pending payment; the payment as it is
/// afterwards.
async fn settle(st: &Arc<State>, op: &Operator, p: Payment) -> Payment {
    for r in st.readers.list().into_iter().filter(|r| r.presence().0) {
        let c = ctx(st);
        let (o, k) = (p.order_id.clone(), p.kind);
        let res = r
            .run(st.reader_wait(), move |t| {
                Ok(ops::settle_pending(t, &c, Some((&o, k))))
            })
            .await;
        if let Ok((card, Ok(done))) = res {
            if let Some(s) = done.into_iter().next() {
                // the settlement stands in the payment row; State::audit logs a failure
                let _ = st
                    .audit(&op.name, "settle", &r.name, &card, &summary(&s))
                    .await;
                return s;
            }
        }
    }
    p
}

/// A payment the card completed whose outcome is still to be written goes into the
/// call's audit entry, which records it in the same commit.
fn unrecorded(c: &mut Call<'_>, paid: Paid) -> Payment {
    if paid.unrecorded {
        c.note.settle = Some(paid.payment.clone());
    }
    paid.payment
}

fn uncertain(p: &Payment) -> ApiError {
    ApiError::kind(
        ErrorKind::TransactionUncertain,
        format!(
            "order {} is pending: present its card to settle it",
            p.order_id
        ),
    )
    .with(json!({"payment": p.to_json()}))
}

/// `pay.debit`.
pub async fn debit(c: &mut Call<'_>, p: DebitParams) -> Result<Value, ApiError> {
    let op = c.operator()?.clone();
    let (order, amount) = (p.order_id.0, p.amount_fen.0);
    let reader = p.reader;
    let shown = p.card_id.map(|c| c.0);
    let pin = pin_source(c, reader.as_ref(), p.pin.map(|p| p.0), "pin");
    if c.st
        .readers
        .pick(reader.as_ref().map(|r| r.0.as_str()))
        .is_err()
    {
        // no card to compare: an order the journal has is answered from its record (no
        // money moves either way); a new one gets the reader's error below
        if let Some(e) = recorded(c.st, &order, PaymentKind::Debit).await? {
            c.note.card = e.card_number.clone();
            if e.amount_fen != i64::from(amount) {
                return Err(duplicate(&e, amount));
            }
            c.note.detail = Some(format!("repeat, no card: {}", summary(&e)));
            return match e.status {
                PaymentStatus::Pending => Err(uncertain(&e)),
                _ => Ok(e.to_json()),
            };
        }
    }
    // the job looks the order up itself (a repeat is answered from the card and the
    // record, settled first if it was pending)
    let req = DebitRequest {
        order_id: order,
        card_id: shown,
        amount,
        pin: pin?,
        operator: op.name.clone(),
    };
    let paid = on_card(
        c,
        reader.as_ref(),
        move |t, x| ops::debit(t, x, req),
        |p| {
            if p.repeat {
                format!("repeat: {}", summary(&p.payment))
            } else {
                summary(&p.payment)
            }
        },
    )
    .await?;
    let p = unrecorded(c, paid);
    match p.status {
        PaymentStatus::Pending => Err(uncertain(&p)),
        _ => Ok(p.to_json()),
    }
}

fn duplicate(e: &Payment, amount: u32) -> ApiError {
    ApiError::kind(
        ErrorKind::DuplicateOrder,
        format!(
            "order {} exists with {} fen, not {amount}",
            e.order_id, e.amount_fen
        ),
    )
}

/// `pay.query`: the debit of an order (or its refund with `"kind": "refund"`); a
/// pending one is settled first if its card is in a reader (not for auditors, who never
/// touch a card).
pub async fn query(c: &mut Call<'_>, p: QueryParams) -> Result<Value, ApiError> {
    let op = c.operator()?.clone();
    let order = p.order_id.0;
    let kind = p.kind.map_or(PaymentKind::Debit, |k| k.0);
    let pay = recorded(c.st, &order, kind)
        .await?
        .ok_or_else(|| ApiError::params(format!("order_id: no {kind} for order {order:?}")))?;
    // an auditor never touches a card: they see the record as it is
    let pay = if pay.status == PaymentStatus::Pending && op.role != Role::Auditor {
        settle(c.st, &op, pay).await
    } else {
        pay
    };
    c.note.card = pay.card_number.clone();
    c.note.detail = Some(summary(&pay));
    Ok(pay.to_json())
}

/// `pay.refund`: money back on the card of a completed debit (purse load, card profile
/// §7). One refund per order, of the whole amount or less.
pub async fn refund(c: &mut Call<'_>, p: RefundParams) -> Result<Value, ApiError> {
    let op = c.operator()?.clone();
    let order = p.order_id.0;
    let amount = p.amount_fen.map(|f| f.0);
    if !c.st.keys.supports(KeyPurpose::Load) {
        return Err(ApiError::kind(
            ErrorKind::NotSupported,
            "refunds need the LOAD key, which this terminal's keys do not include",
        ));
    }
    let original = recorded(c.st, &order, PaymentKind::Debit)
        .await?
        .ok_or_else(|| ApiError::params(format!("order_id: no debit for order {order:?}")))?;
    c.note.card = original.card_number.clone();
    match original.status {
        PaymentStatus::Completed => {}
        PaymentStatus::Pending => return Err(uncertain(&original)),
        _ => {
            return Err(ApiError::params(format!(
                "order_id: the debit of order {order:?} failed; there is nothing to refund"
            )))
        }
    }
    let amount = amount.unwrap_or(u32::try_from(original.amount_fen).unwrap_or(0));
    if i64::from(amount) > original.amount_fen {
        return Err(ApiError::params(format!(
            "amount_fen: {amount} is more than the order's {} fen",
            original.amount_fen
        )));
    }
    let pin = pin_source(c, p.reader.as_ref(), p.pin.map(|p| p.0), "pin")?;
    let req = RefundRequest {
        original,
        card_id: p.card_id.map(|c| c.0),
        amount,
        pin,
        operator: op.name.clone(),
    };
    let paid = on_card(
        c,
        p.reader.as_ref(),
        move |t, x| ops::refund(t, x, req),
        |p| summary(&p.payment),
    )
    .await?;
    let p = unrecorded(c, paid);
    match p.status {
        PaymentStatus::Pending => Err(uncertain(&p)),
        _ => Ok(p.to_json()),
    }
}
