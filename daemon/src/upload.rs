//! Upload of completed payments to the settlement centre (docs/operations.md, "Upload").
//!
//! Every `interval` (20 minutes by default) the completed payments not yet acknowledged
//! are sent, oldest first, in batches of `batch_size`:
//!
//! ```text
//! POST <endpoint>
//! Content-Type: application/json
//! Authorization: Bearer <token>            (when token_file is set)
//!
//! {"terminal_id": "650200000001", "sent": "<RFC 3339>",
//!  "audit_head": {"seq": 412, "hash": "<64 hex>"}, "payments": [<payment>, …]}
//! ```
//!
//! The payments are the API's payment objects. `audit_head` is the journal's audit
//! chain head when the batch was read (null in a journal that never audited), so the
//! centre holds a copy that a local rewrite of the chain cannot change. The centre answers `2xx` with
//! `{"acknowledged": ["<txn_id>", …]}`; exactly those payments of the batch are marked
//! `uploaded` in the journal. Any other answer, a timeout or an acknowledgement of none
//! is a failure: the batch is sent again after a wait that starts at
//! `retry_min_seconds` and doubles, never beyond the interval. Nothing is ever deleted:
//! a row only gains its `uploaded` time. A batch whose answer was lost is sent again, so
//! the centre sees each payment **at least once** and deduplicates by `txn_id` (unique
//! per terminal). `settle.day` wakes the uploader at once.

use crate::config::UploadConfig;
use crate::journal::{AuditHead, Payment};
use crate::state::State;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What `system.health` reports about uploads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadStatus {
    /// When the last batch was acknowledged (RFC 3339).
    pub last_success: Option<String>,
    /// Why the last request failed, while failures go on (cleared by a success).
    pub last_error: Option<String>,
    /// Failed requests in a row.
    pub failures: u32,
    /// Payments acknowledged since the daemon started.
    pub acknowledged: u64,
}

/// Why one request failed; every kind is retried.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("settlement centre unreachable: {0}")]
    Unreachable(String),
    #[error("settlement centre answered HTTP {0}")]
    Status(u16),
    #[error("settlement centre's answer is not understood: {0}")]
    BadAnswer(String),
    #[error("settlement centre acknowledged none of the {0} payments sent")]
    NothingAcknowledged(usize),
    #[error("upload.token_file {0}: unreadable or empty")]
    Token(String),
    #[error("journal: {0}")]
    Journal(String),
}

/// The wait before the next try after `failures` failed requests in a row:
/// `min`, doubled for each further failure, at most `max`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    min.saturating_mul(1u32 << doublings)
        .min(max)
        .max(min.min(max))
}

/// The request body for a batch.
pub fn batch_body(
    terminal_id: &str,
    sent: &str,
    head: Option<&AuditHead>,
    payments: &[Payment],
) -> Value {
    json!({
        "terminal_id": terminal_id,
        "sent": sent,
        "audit_head": head,
        "payments": payments.iter().map(Payment::to_json).collect::<Vec<_>>(),
    })
}

/// The acknowledged `txn_id`s of an answer, keeping only those of the batch.
pub fn parse_ack(answer: &str, batch: &[Payment]) -> Result<Vec<String>, UploadError> {
    let v: Value =
        serde_json::from_str(answer).map_err(|e| UploadError::BadAnswer(e.to_string()))?;
    let list = v
        .get("acknowledged")
        .and_then(Value::as_array)
        .ok_or_else(|| UploadError::BadAnswer("no \"acknowledged\" list".into()))?;
    let sent: HashSet<&str> = batch.iter().map(|p| p.txn_id.as_str()).collect();
    let mut acked = Vec::new();
    for id in list {
        let id = id
            .as_str()
            .ok_or_else(|| UploadError::BadAnswer("\"acknowledged\" holds a non-string".into()))?;
        if sent.contains(id) && !acked.iter().any(|a: &String| a == id) {
            acked.push(id.to_string());
        }
    }
    Ok(acked)
}

/// Send one batch and return the acknowledged `txn_id`s (blocking: run it off the
/// runtime's threads).
pub fn send_batch(
    cfg: &UploadConfig,
    terminal_id: &str,
    head: Option<&AuditHead>,
    batch: &[Payment],
) -> Result<Vec<String>, UploadError> {
    let token = match &cfg.token_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| UploadError::Token(p.display().to_string()))?;
            Some(zeroize::Zeroizing::new(t))
        }
    };
    let t = Duration::from_secs(cfg.timeout_seconds);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(t)
        .timeout(t)
        .redirects(0)
        .build();
    let sent = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let body = batch_body(terminal_id, &sent, head, batch).to_string();
    let mut req = agent
        .post(&cfg.endpoint)
        .set("Content-Type", "application/json");
    if let Some(t) = &token {
        req = req.set("Authorization", &format!("Bearer {}", t.as_str()));
    }
    let answer = match req.send_string(&body) {
        Ok(r) if (200..300).contains(&r.status()) => r
            .into_string()
            .map_err(|e| UploadError::BadAnswer(e.to_string()))?,
        Ok(r) => return Err(UploadError::Status(r.status())),
        Err(ureq::Error::Status(code, _)) => return Err(UploadError::Status(code)),
        Err(ureq::Error::Transport(e)) => return Err(UploadError::Unreachable(e.to_string())),
    };
    let acked = parse_ack(&answer, batch)?;
    if acked.is_empty() {
        return Err(UploadError::NothingAcknowledged(batch.len()));
    }
    Ok(acked)
}

/// One round: batches until nothing waits or a request fails. Returns how many
/// payments were acknowledged.
pub async fn round(st: &Arc<State>, cfg: &UploadConfig) -> Result<usize, UploadError> {
    let terminal = st.config().terminal_id.to_string();
    let mut total = 0;
    loop {
        let n = cfg.batch_size;
        let (batch, head) = st
            .journal
            .call(move |j| Ok((j.to_upload(n)?, j.audit_head()?)))
            .await
            .map_err(|e| UploadError::Journal(e.to_string()))?;
        if batch.is_empty() {
            return Ok(total);
        }
        let (c, t, b) = (cfg.clone(), terminal.clone(), batch.clone());
        let acked = tokio::task::spawn_blocking(move || send_batch(&c, &t, head.as_ref(), &b))
            .await
            .map_err(|e| UploadError::Unreachable(format!("upload thread: {e}")))??;
        let ids = acked.clone();
        let marked = st
            .journal
            .call(move |j| j.mark_uploaded(&ids))
            .await
            .map_err(|e| UploadError::Journal(e.to_string()))?;
        total += marked;
        let _ = st
            .audit(
                "sscardd",
                "upload",
                "",
                "",
                &format!(
                    "{} of {} payments acknowledged by the settlement centre",
                    acked.len(),
                    batch.len()
                ),
            )
            .await;
        if acked.len() < batch.len() {
            // the rest stay queued for the next round; do not loop on a batch the
            // centre keeps refusing
            return Ok(total);
        }
    }
}

/// The schedule: a round at start and every interval; after a failure, the next try
/// comes after [`backoff`]. `settle.day` (through [`State::upload_wake`]) starts a round
/// at once. The configuration is re-read each time, so `SIGHUP` applies.
pub async fn run(st: Arc<State>) {
    loop {
        let Some(cfg) = st.config().upload.clone() else {
            // not configured: look again after a reload or a wake-up
            tokio::select! {
                _ = st.upload_wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(60)) => {},
            }
            continue;
        };
        let wait = match round(&st, &cfg).await {
            Ok(n) => {
                let mut s = st.upload_status();
                if n > 0 || s.failures > 0 {
                    tracing::info!("upload: {n} payments acknowledged");
                }
                s.failures = 0;
                s.last_error = None;
                s.acknowledged += n as u64;
                s.last_success =
                    Some(chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false));
                st.set_upload_status(s);
                cfg.interval()
            }
            Err(e) => {
                let mut s = st.upload_status();
                s.failures = s.failures.saturating_add(1);
                s.last_error = Some(e.to_string());
                let w = backoff(
                    s.failures,
                    Duration::from_secs(cfg.retry_min_seconds),
                    cfg.interval(),
                );
                tracing::warn!(
                    "upload failed ({} in a row): {e}; next try in {} s",
                    s.failures,
                    w.as_secs()
                );
                st.set_upload_status(s);
                w
            }
        };
        tokio::select! {
            _ = st.upload_wake.notified() => {},
            _ = tokio::time::sleep(wait) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(txn: &str) -> Payment {
        Payment {
            order_id: format!("o-{txn}"),
            txn_id: txn.into(),
            kind: crate::journal::PaymentKind::Debit,
            status: crate::journal::PaymentStatus::Completed,
            card_id: "00".repeat(16),
            card_number: "A00000001".into(),
            amount_fen: 100,
            balance_before_fen: 1000,
            balance_after_fen: 900,
            counter: 1,
            terminal_id: "650200000001".into(),
            terminal_seq: 1,
            time: "2026-11-23T10:00:00+08:00".into(),
            tac: "01020304".into(),
            operator: "li.na".into(),
        }
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_interval() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(1200));
        let w: Vec<u64> = (1..=8).map(|f| backoff(f, min, max).as_secs()).collect();
        assert_eq!(w, [30, 60, 120, 240, 480, 960, 1200, 1200]);
        assert_eq!(backoff(u32::MAX, min, max), max);
        // an interval shorter than the minimum wins
        assert_eq!(
            backoff(1, min, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn acknowledgements_count_only_payments_of_the_batch_once() {
        let b = [p("T-1"), p("T-2"), p("T-3")];
        let a = parse_ack(r#"{"acknowledged":["T-3","T-1","T-1","X-9"]}"#, &b).unwrap();
        assert_eq!(a, ["T-3", "T-1"]);
        for bad in [
            "",
            "[]",
            "{\"ok\":true}",
            "{\"acknowledged\":[1]}",
            "<html>",
        ] {
            assert!(
                matches!(parse_ack(bad, &b), Err(UploadError::BadAnswer(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_body_carries_payment_objects() {
        let head = AuditHead {
            seq: 412,
            hash: "ab".repeat(32),
        };
        let b = batch_body(
            "650200000001",
            "2026-11-23T10:20:00+08:00",
            Some(&head),
            &[p("T-1")],
        );
        assert_eq!(b["terminal_id"], "650200000001");
        assert_eq!(
            b["audit_head"],
            json!({"seq": 412, "hash": "ab".repeat(32)})
        );
        assert_eq!(batch_body("t", "s", None, &[])["audit_head"], Value::Null);
        assert_eq!(b["payments"][0]["txn_id"], "T-1");
        assert_eq!(b["payments"][0]["amount_fen"], 100);
        assert_eq!(b["payments"][0]["tac"], "01020304");
    }
}
