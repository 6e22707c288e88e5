//! `system.health` and `reader.list`.

use super::params::Params;
use crate::error::ApiError;
use crate::state::State;
use serde_json::{json, Value};
use std::sync::Arc;

/// `system.health`: `version`, `readers`, `journal` (`ok` | `unavailable`), and beyond
/// api.md `pending` (payments waiting for their card), `keys` (`test` | `keystore` |
/// `psam`) and `uptime_s`. Needs no login.
pub async fn health(st: &Arc<State>, p: &Params<'_>) -> Result<Value, ApiError> {
    p.only(&[])?;
    let pending = st
        .journal
        .call(|j| {
            j.check()?;
            j.pending()
        })
        .await;
    let (journal, pending) = match pending {
        Ok(p) => ("ok", json!(p.len())),
        Err(_) => ("unavailable", Value::Null),
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "readers": st.readers.list().len(),
        "journal": journal,
        "pending": pending,
        "keys": st.keys.origin(),
        "uptime_s": st.started.elapsed().as_secs(),
    }))
}

/// `reader.list`: `[{"name", "backend", "card_present", "atr"}]`, ATR in hex.
pub fn reader_list(st: &Arc<State>, p: &Params<'_>) -> Result<Value, ApiError> {
    p.only(&[])?;
    Ok(Value::Array(
        st.readers
            .list()
            .iter()
            .map(|r| {
                let (present, atr) = r.presence();
                json!({"name": r.name, "backend": r.backend, "card_present": present, "atr": hex::encode_upper(atr)})
            })
            .collect(),
    ))
}
