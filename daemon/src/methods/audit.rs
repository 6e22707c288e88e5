//! `audit.query`.

use super::params::Params;
use crate::error::ApiError;
use crate::state::State;
use serde_json::Value;
use std::sync::Arc;

/// Entries returned when the call gives no `limit`, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 100_000;

/// `audit.query {"since"?, "until"?, "operator"?, "limit"?}`: entries oldest first.
/// `since` and `until` are RFC 3339 times or prefixes of them (`2026-11-23`), compared
/// with the entries' times as text.
pub async fn query(st: &Arc<State>, p: &Params<'_>) -> Result<Value, ApiError> {
    p.only(&["since", "until", "operator", "limit"])?;
    let since = p.opt_str("since")?.map(str::to_string);
    let mut until = p.opt_str("until")?.map(str::to_string);
    // a bare date means the whole of that day
    if let Some(u) = until.as_mut().filter(|u| u.len() == 10) {
        u.push('\u{10FFFF}');
    }
    let operator = p.opt_str("operator")?.map(str::to_string);
    let limit = p.opt_count("limit", MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
    let v = st
        .journal
        .call(move |j| {
            j.audit_query(
                since.as_deref(),
                until.as_deref(),
                operator.as_deref(),
                limit,
            )
        })
        .await
        .map_err(ApiError::journal)?;
    Ok(Value::Array(v))
}
