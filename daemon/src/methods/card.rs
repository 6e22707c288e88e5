//! `card.read`, `card.verify_pin`, `card.change_pin`, `card.balance`.

use super::params::{ChangePinParams, ReaderParams, VerifyPinParams};
use super::{on_card, Call};
use crate::error::ApiError;
use crate::ops;
use serde_json::Value;

/// `card.read {"reader"?}`.
pub async fn read(c: &mut Call<'_>, p: ReaderParams) -> Result<Value, ApiError> {
    on_card(c, p.reader.as_ref(), ops::read_card, |v: &Value| {
        format!("ok genuine={}", v["genuine"])
    })
    .await
}

/// `card.verify_pin {"pin", "reader"?}`.
pub async fn verify_pin(c: &mut Call<'_>, p: VerifyPinParams) -> Result<Value, ApiError> {
    let pin = p.pin.0;
    on_card(
        c,
        p.reader.as_ref(),
        move |t, _| ops::pin_or_balance(t, Some(&pin), None),
        |_| "ok".into(),
    )
    .await
}

/// `card.change_pin {"old_pin", "new_pin", "reader"?}`.
pub async fn change_pin(c: &mut Call<'_>, p: ChangePinParams) -> Result<Value, ApiError> {
    let (old, new) = (p.old_pin.0, p.new_pin.0);
    on_card(
        c,
        p.reader.as_ref(),
        move |t, _| ops::pin_or_balance(t, Some(&old), Some(&new)),
        |_| "ok".into(),
    )
    .await
}

/// `card.balance {"reader"?}`.
pub async fn balance(c: &mut Call<'_>, p: ReaderParams) -> Result<Value, ApiError> {
    on_card(
        c,
        p.reader.as_ref(),
        |t, _| ops::pin_or_balance(t, None, None),
        |v: &Value| format!("ok {} fen", v["balance_fen"]),
    )
    .await
}
