//! `card.read`, `card.verify_pin`, `card.change_pin`, `card.balance`.

use super::params::{ChangePinParams, ReaderParams, VerifyPinParams};
use super::{on_card, pin_source, Call};
use crate::error::ApiError;
use crate::ops::{self, PinOp, PinSource};
use serde_json::Value;

/// `card.read {"reader"?}`.
pub async fn read(c: &mut Call<'_>, p: ReaderParams) -> Result<Value, ApiError> {
    on_card(c, p.reader.as_ref(), ops::read_card, |v: &Value| {
        format!("ok genuine={}", v["genuine"])
    })
    .await
}

/// `card.verify_pin {"pin"?, "reader"?}` (no `pin`: typed on the reader's pad).
pub async fn verify_pin(c: &mut Call<'_>, p: VerifyPinParams) -> Result<Value, ApiError> {
    let pin = pin_source(c, p.reader.as_ref(), p.pin.map(|p| p.0), "pin")?;
    let done = ok_by(&pin);
    on_card(
        c,
        p.reader.as_ref(),
        move |t, x| ops::pin_or_balance(t, x, PinOp::Verify(pin)),
        move |_| done.into(),
    )
    .await
}

/// `card.change_pin {"old_pin"?, "new_pin"?, "reader"?}` (neither: both typed on the
/// reader's pad, the new one twice).
pub async fn change_pin(c: &mut Call<'_>, p: ChangePinParams) -> Result<Value, ApiError> {
    let pins = match (p.old_pin, p.new_pin) {
        (Some(o), Some(n)) => Some((o.0, n.0)),
        (None, None) => None,
        (Some(_), None) => return Err(ApiError::params("new_pin: required with old_pin")),
        (None, Some(_)) => return Err(ApiError::params("old_pin: required with new_pin")),
    };
    let pins = pin_source(c, p.reader.as_ref(), pins, "old_pin")?;
    let done = ok_by(&pins);
    on_card(
        c,
        p.reader.as_ref(),
        move |t, x| ops::pin_or_balance(t, x, PinOp::Change(pins)),
        move |_| done.into(),
    )
    .await
}

/// The audit entry of a PIN call says where the PIN was typed.
fn ok_by<T>(pin: &PinSource<T>) -> &'static str {
    match pin {
        PinSource::Sent(_) => "ok",
        PinSource::Pad { .. } => "ok (PIN pad)",
    }
}

/// `card.balance {"reader"?}`.
pub async fn balance(c: &mut Call<'_>, p: ReaderParams) -> Result<Value, ApiError> {
    on_card(
        c,
        p.reader.as_ref(),
        |t, x| ops::pin_or_balance(t, x, PinOp::Balance),
        |v: &Value| format!("ok {} fen", v["balance_fen"]),
    )
    .await
}
