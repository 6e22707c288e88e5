//! Blacklist management (admins): `blacklist.add {"card", "reason", "until"?}`,
//! `blacklist.remove {"card"}`, `blacklist.list`. `card` is a card number or a card id
//! (32 hex digits); `until` (`YYYY-MM-DD`) is the last day the entry applies.

use super::params::Params;
use crate::config::Operator;
use crate::error::ApiError;
use crate::journal::BlacklistEntry;
use crate::state::State;
use serde_json::{json, Value};
use std::sync::Arc;

fn card(p: &Params<'_>) -> Result<String, ApiError> {
    let c = p.str("card")?.trim();
    if c.is_empty() || c.len() > 32 || !c.chars().all(|x| x.is_ascii_alphanumeric()) {
        return Err(ApiError::params(
            "card: a card number or a card id (letters and digits)",
        ));
    }
    // card ids are kept as the card reads them: upper-case hex
    Ok(if c.len() == 32 {
        c.to_ascii_uppercase()
    } else {
        c.to_string()
    })
}

/// Run one of the blacklist methods.
pub async fn call(
    st: &Arc<State>,
    op: &Operator,
    method: &str,
    p: &Params<'_>,
) -> Result<Value, ApiError> {
    let r = match method {
        "blacklist.add" => {
            p.only(&["card", "reason", "until"])?;
            let e = BlacklistEntry {
                card: card(p)?,
                reason: p.str("reason")?.to_string(),
                until: p.opt_date("until")?.map(|d| d.to_string()),
                source: "admin".into(),
            };
            let out = format!("ok added {} until {:?}", e.card, e.until);
            let c = e.card.clone();
            st.journal
                .call(move |j| j.blacklist_add(&e))
                .await
                .map_err(ApiError::journal)?;
            st.audit(&op.name, method, "", &c, &out).await;
            json!({"added": true})
        }
        "blacklist.remove" => {
            p.only(&["card"])?;
            let c = card(p)?;
            let c2 = c.clone();
            let removed = st
                .journal
                .call(move |j| j.blacklist_remove(&c2))
                .await
                .map_err(ApiError::journal)?;
            st.audit(&op.name, method, "", &c, &format!("ok removed={removed}"))
                .await;
            json!({"removed": removed})
        }
        _ => {
            p.only(&[])?;
            let list = st
                .journal
                .call(|j| j.blacklist())
                .await
                .map_err(ApiError::journal)?;
            Value::Array(
                list.into_iter()
                    .map(|e| json!({"card": e.card, "reason": e.reason, "until": e.until, "source": e.source}))
                    .collect(),
            )
        }
    };
    Ok(r)
}
