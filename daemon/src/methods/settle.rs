//! `settle.day`: the day's payments and their totals.

use super::params::SettleParams;
use super::Call;
use crate::error::ApiError;
use crate::journal::{Payment, PaymentKind, PaymentStatus};
use serde_json::{json, Value};

/// `settle.day {"date"}`: counts and totals of the day's completed debits and refunds
/// (and, beyond api.md, `pending_count`), and every payment of the day. Closing the day
/// also wakes the uploader, so the day's payments go to the settlement centre now.
pub async fn day(c: &mut Call<'_>, p: SettleParams) -> Result<Value, ApiError> {
    let date = p.date.0.format("%Y-%m-%d").to_string();
    let d = date.clone();
    let list =
        c.st.journal
            .call(move |j| j.day(&d))
            .await
            .map_err(ApiError::journal)?;
    let done = |k: PaymentKind| {
        list.iter()
            .filter(move |x| x.kind == k && x.status == PaymentStatus::Completed)
    };
    let v = json!({
        "date": date,
        "count": done(PaymentKind::Debit).count(),
        "total_fen": done(PaymentKind::Debit).map(|x| x.amount_fen).sum::<i64>(),
        "refund_count": done(PaymentKind::Refund).count(),
        "refund_total_fen": done(PaymentKind::Refund).map(|x| x.amount_fen).sum::<i64>(),
        "pending_count": list.iter().filter(|x| x.status == PaymentStatus::Pending).count(),
        "transactions": list.iter().map(Payment::to_json).collect::<Vec<_>>(),
    });
    c.st.upload_wake.notify_one();
    c.note.detail = Some(format!(
        "ok {date}: {} debits, {} fen",
        v["count"], v["total_fen"]
    ));
    Ok(v)
}
