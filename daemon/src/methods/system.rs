//! `system.health`, `session.login`, `reader.list`, `events.subscribe`.

use super::params::{LoginParams, NoParams};
use super::{Call, Connection, Method};
use crate::error::{ApiError, ErrorKind};
use crate::state::State;
use crate::throttle::MAX_FAILURES_PER_CONNECTION;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// `system.health`: `version`, `readers`, `journal` (`ok` | `unavailable`: it cannot
/// be read or cannot be written), and beyond api.md `pending` (payments waiting for
/// their card), `keys` (`test` | `keystore` | `psam`), `uptime_s`, and `upload` (null
/// when no settlement centre is configured: `backlog` payments not yet acknowledged,
/// `last_success`, `last_error`, `failures` in a row, `acknowledged` since start).
/// Needs no login.
pub async fn health(c: &mut Call<'_>, _: NoParams) -> Result<Value, ApiError> {
    let st = c.st;
    let counts = st
        .journal
        .call(|j| {
            // the probe's write also proves the journal can be read
            j.probe_write()?;
            Ok((j.pending()?.len(), j.upload_backlog()?, j.durable_commits()))
        })
        .await;
    let (journal, pending, backlog, commits) = match counts {
        Ok((p, b, n)) => ("ok", json!(p), json!(b), json!(n)),
        Err(_) => ("unavailable", Value::Null, Value::Null, Value::Null),
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
        "journal_commits": commits,
        "keys": st.keys.origin(),
        "uptime_s": st.started.elapsed().as_secs(),
        "upload": upload,
    }))
}

/// `session.login {"token"}`. Failures go through [`login_failed`].
pub async fn login(c: &mut Call<'_>, p: LoginParams) -> Result<Value, ApiError> {
    let config = c.st.config();
    let op = c.conn.session.login(&config, &p.token.0)?;
    // a successful login ends the connection's burst of failures, if any
    flush_failures(c.st, c.conn).await;
    c.conn.login_failures = 0;
    c.note.detail = Some(format!("ok {} from {}", op.role.name(), c.conn.peer));
    Ok(json!({"operator": op.name, "role": op.role.name()}))
}

/// A failed login: counted by the peer's throttle, answered after its delay, audited
/// as the first of a burst or counted into the burst's entry; the connection is closed
/// after [`MAX_FAILURES_PER_CONNECTION`] failures.
pub async fn login_failed(st: &Arc<State>, conn: &mut Connection, e: ApiError) -> ApiError {
    let f = st.throttle.failed(&conn.peer, Instant::now());
    if f.ended > 0 {
        burst_entry(st, conn, f.ended).await;
    }
    if f.record {
        let text = format!("{} (from {})", super::error_outcome(&e), conn.peer);
        let _ = st
            .audit("", Method::SessionLogin.name(), "", "", &text)
            .await;
    }
    conn.login_failures += 1;
    if conn.login_failures >= MAX_FAILURES_PER_CONNECTION {
        conn.close = true;
    }
    tokio::time::sleep(f.delay).await;
    e
}

/// Write the count of the peer's failed logins not yet audited (when a connection that
/// failed closes or logs in).
pub async fn flush_failures(st: &Arc<State>, conn: &Connection) {
    if conn.login_failures == 0 {
        return;
    }
    let n = st.throttle.take_unrecorded(&conn.peer);
    if n > 0 {
        burst_entry(st, conn, n).await;
    }
}

async fn burst_entry(st: &State, conn: &Connection, n: u32) {
    let text = format!(
        "{}: {n} more failed logins from {}",
        ErrorKind::Unauthenticated,
        conn.peer
    );
    let _ = st
        .audit("", Method::SessionLogin.name(), "", "", &text)
        .await;
}

/// `reader.list`: `[{"name", "backend", "card_present", "atr", "pin_pad"}]`, ATR in
/// hex, and `slot` for a slot of a multi-slot (serial) reader (api.md 1.1).
pub async fn reader_list(c: &mut Call<'_>, _: NoParams) -> Result<Value, ApiError> {
    Ok(Value::Array(
        c.st.readers
            .list()
            .iter()
            .map(|r| {
                let (present, atr) = r.presence();
                let mut v = json!({"name": r.name, "backend": r.backend, "card_present": present,
                                   "atr": hex::encode_upper(atr), "pin_pad": r.pin_pad()});
                if let Some(s) = r.slot {
                    v["slot"] = json!(s);
                }
                v
            })
            .collect(),
    ))
}

/// `events.subscribe`: this connection gets the daemon's events as notifications for
/// as long as its operator stays valid (a reload that disables them ends it).
pub async fn subscribe(c: &mut Call<'_>, _: NoParams) -> Result<Value, ApiError> {
    c.conn.events = Some(c.st.events.subscribe());
    Ok(json!({
        "subscribed": true,
        "events": ["reader.added", "reader.removed", "card.inserted", "card.removed", "payment.settled"],
    }))
}
