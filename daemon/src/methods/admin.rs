//! Blacklist management (admins): `blacklist.add {"card", "reason", "until"?}`,
//! `blacklist.remove {"card"}`, `blacklist.list`. `card` is a card number or a card id
//! (32 hex digits); `until` (`YYYY-MM-DD`) is the last day the entry applies.

use super::params::{BlacklistAddParams, BlacklistRemoveParams, NoParams};
use super::Call;
use crate::error::ApiError;
use crate::journal::BlacklistEntry;
use serde_json::{json, Value};

/// `blacklist.add`.
pub async fn add(c: &mut Call<'_>, p: BlacklistAddParams) -> Result<Value, ApiError> {
    let e = BlacklistEntry {
        card: p.card.0,
        reason: p.reason.0,
        until: p.until.map(|d| d.0.format("%Y-%m-%d").to_string()),
        source: "admin".into(),
    };
    c.note.card = e.card.clone();
    let detail = format!("ok added until {:?}: {}", e.until, e.reason);
    c.st.journal
        .call(move |j| j.blacklist_add(&e))
        .await
        .map_err(ApiError::journal)?;
    c.note.detail = Some(detail);
    Ok(json!({"added": true}))
}

/// `blacklist.remove`.
pub async fn remove(c: &mut Call<'_>, p: BlacklistRemoveParams) -> Result<Value, ApiError> {
    let card = p.card.0;
    c.note.card = card.clone();
    let removed =
        c.st.journal
            .call(move |j| j.blacklist_remove(&card))
            .await
            .map_err(ApiError::journal)?;
    c.note.detail = Some(format!("ok removed={removed}"));
    Ok(json!({"removed": removed}))
}

/// `blacklist.list`.
pub async fn list(c: &mut Call<'_>, _: NoParams) -> Result<Value, ApiError> {
    let list =
        c.st.journal
            .call(|j| j.blacklist())
            .await
            .map_err(ApiError::journal)?;
    c.note.detail = Some(format!("ok {} entries", list.len()));
    Ok(Value::Array(
        list.into_iter()
            .map(|e| json!({"card": e.card, "reason": e.reason, "until": e.until, "source": e.source}))
            .collect(),
    ))
}
