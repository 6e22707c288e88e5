//! `audit.query`.

use super::params::AuditParams;
use super::Call;
use crate::error::ApiError;
use serde_json::Value;

/// Entries returned when the call gives no `limit`, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 100_000;

/// `audit.query {"since"?, "until"?, "operator"?, "limit"?}`: entries oldest first.
/// `since` and `until` are RFC 3339 times or prefixes of them (`2026-11-23`), compared
/// with the entries' times as text.
pub async fn query(c: &mut Call<'_>, p: AuditParams) -> Result<Value, ApiError> {
    let since = p.since.map(|s| s.0);
    let mut until = p.until.map(|s| s.0);
    // a bare date means the whole of that day
    if let Some(u) = until.as_mut().filter(|u| u.len() == 10) {
        u.push('\u{10FFFF}');
    }
    let operator = p.operator.map(|s| s.0);
    let limit = p.limit.map_or(DEFAULT_LIMIT, |l| l.0);
    let v =
        c.st.journal
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
    c.note.detail = Some(format!("ok {} entries", v.len()));
    Ok(Value::Array(v))
}
