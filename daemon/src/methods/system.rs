//! `system.health` and `reader.list`.

use super::params::Params;
use crate::error::ApiError;
use crate::state::State;
use serde_json::{json, Value};
use std::sync::Arc;

/// `system.health`: `version`, `readers`, `journal` (`ok` | `unavailable`), and beyond
/// api.md `pending` (payments waiting for their card), `keys` (`test` | `keystore` |
/// `psam`), `uptime_s`, and `upload` (null when no settlement centre is configured:
/// `backlog` payments not yet acknowledged, `last_success`, `last_error`, `failures` in
/// a row, `acknowledged` since start). Needs no login.
pub async fn health(st: &Arc<State>, p: &Params<'_>) -> Result<Value, ApiError> {
    p.only(&[])?;
    let counts = st
        .journal
        .call(|j| {
            j.check()?;
            Ok((j.pending()?.len(), j.upload_backlog()?))
        })
        .await;
    let (journal, pending, backlog) = match counts {
        Ok((p, b)) => ("ok", json!(p), json!(b)),
        Err(_) => ("unavailable", Value::Null, Value::Null),
    };
    let upload = match st.config().upload {
        None => Value::Null,
        Some(_) => {
            let u = st.upload_status();
            json!({
                "backlog": backlog,
                "last_success": u.last_success,
                "last_error": u.last_error,
                "failures": u.failures,
                "acknowledged": u.acknowledged,
            })
        }
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "readers": st.readers.list().len(),
        "journal": journal,
        "pending": pending,
        "keys": st.keys.origin(),
        "uptime_s": st.started.elapsed().as_secs(),
        "upload": upload,
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
