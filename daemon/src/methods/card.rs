//! `card.read`, `card.verify_pin`, `card.change_pin`, `card.balance`.

use super::on_card;
use super::params::Params;
use crate::config::Operator;
use crate::error::ApiError;
use crate::ops;
use crate::state::State;
use serde_json::Value;
use std::sync::Arc;

/// Run one of the card methods.
pub async fn call(
    st: &Arc<State>,
    op: &Operator,
    method: &str,
    p: &Params<'_>,
) -> Result<Value, ApiError> {
    match method {
        "card.read" => {
            p.only(&["reader"])?;
            on_card(
                st,
                op,
                method,
                p.opt_str("reader")?,
                ops::read_card,
                |v: &Value| format!("ok genuine={}", v["genuine"]),
            )
            .await
        }
        "card.verify_pin" => {
            p.only(&["reader", "pin"])?;
            let pin = p.pin("pin")?;
            on_card(
                st,
                op,
                method,
                p.opt_str("reader")?,
                move |c, _| ops::pin_or_balance(c, Some(&pin), None),
                |_| "ok".into(),
            )
            .await
        }
        "card.change_pin" => {
            p.only(&["reader", "old_pin", "new_pin"])?;
            let (old, new) = (p.pin("old_pin")?, p.pin("new_pin")?);
            on_card(
                st,
                op,
                method,
                p.opt_str("reader")?,
                move |c, _| ops::pin_or_balance(c, Some(&old), Some(&new)),
                |_| "ok".into(),
            )
            .await
        }
        _ => {
            p.only(&["reader"])?;
            on_card(
                st,
                op,
                method,
                p.opt_str("reader")?,
                |c, _| ops::pin_or_balance(c, None, None),
                |v: &Value| format!("ok {} fen", v["balance_fen"]),
            )
            .await
        }
    }
}
