//! The socket server: one task per connection, JSON-RPC 2.0 framed one object a line
//! (64 KiB at most), sessions, and the error objects of api.md.

use crate::config::Operator;
use crate::error::ApiError;
use crate::methods::{self, State};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;

/// The longest request line.
pub const MAX_LINE: usize = 64 * 1024;

/// Accept connections until `shutdown` resolves.
pub async fn run(
    listener: UnixListener,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let Ok(permit) = sem.clone().acquire_owned().await else { break };
                let st = state.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve(stream, st).await;
                });
            }
        }
    }
}

/// Serve one connection (any byte stream) until it closes.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, st: Arc<State>) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let mut discarding = false;
    let mut session: Option<String> = None;
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if discarding {
                discarding = false;
                continue;
            }
            let resp = if line.len() > MAX_LINE + 1 {
                Some(
                    json!({"jsonrpc": "2.0", "id": null, "error": ApiError::invalid_request("line over 64 KiB").to_json()}),
                )
            } else {
                handle_line(&line[..line.len() - 1], &st, &mut session).await
            };
            if let Some(resp) = resp {
                let mut out = resp.to_string();
                out.push('\n');
                if wr.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        if buf.len() > MAX_LINE {
            buf.clear();
            if !discarding {
                discarding = true;
                let e = json!({"jsonrpc": "2.0", "id": null, "error": ApiError::invalid_request("line over 64 KiB").to_json()});
                if wr.write_all(format!("{e}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn reply(id: &Value, r: Result<Value, ApiError>) -> Value {
    match r {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

/// Handle one request line; `None` for notifications.
async fn handle_line(line: &[u8], st: &Arc<State>, session: &mut Option<String>) -> Option<Value> {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim_end_matches('\r'),
        Err(_) => return Some(reply(&Value::Null, Err(ApiError::parse("invalid UTF-8")))),
    };
    if text.trim().is_empty() {
        return None;
    }
    let req: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Some(reply(
                &Value::Null,
                Err(ApiError::parse(format!("invalid JSON: {e}"))),
            ))
        }
    };
    let id = req.get("id").cloned();
    let reply_id = id.clone().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return Some(reply(
            &reply_id,
            Err(ApiError::invalid_request("a request needs a method")),
        ));
    };
    let params = match req.get("params") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Some(reply(
                &reply_id,
                Err(ApiError::params("params: must be an object")),
            ))
        }
    };
    let r = dispatch(st, session, method, &params).await;
    id.map(|id| reply(&id, r))
}

fn current_operator(st: &State, session: &Option<String>) -> Result<Operator, ApiError> {
    let name = session
        .as_ref()
        .ok_or_else(|| ApiError::kind("UNAUTHENTICATED", "session.login first"))?;
    let op = st
        .config
        .operators
        .iter()
        .find(|o| &o.name == name)
        .ok_or_else(|| ApiError::kind("UNAUTHENTICATED", "operator no longer exists"))?;
    if !op.enabled {
        return Err(ApiError::kind(
            "OPERATOR_DISABLED",
            format!("operator {} is disabled", op.name),
        ));
    }
    Ok(op.clone())
}

async fn dispatch(
    st: &Arc<State>,
    session: &mut Option<String>,
    method: &str,
    p: &Value,
) -> Result<Value, ApiError> {
    match method {
        "system.health" => Ok(methods::health(st)),
        "session.login" => {
            let token = p
                .get("token")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::params("token: a string is required"))?;
            let op = st
                .config
                .operator_by_token(token)
                .ok_or_else(|| ApiError::kind("UNAUTHENTICATED", "unknown token"))?;
            if !op.enabled {
                return Err(ApiError::kind(
                    "OPERATOR_DISABLED",
                    format!("operator {} is disabled", op.name),
                ));
            }
            *session = Some(op.name.clone());
            Ok(json!({"operator": op.name, "role": op.role.name()}))
        }
        m => {
            let op = current_operator(st, session)?;
            methods::call(st, &op, m, p).await
        }
    }
}
