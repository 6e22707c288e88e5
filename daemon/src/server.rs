//! The socket server: one task per connection (a semaphore caps how many), JSON-RPC 2.0
//! one object a line ([`crate::frame`]), sessions, event notifications.
//!
//! Requests on one connection are answered in order, each to the end: a client that
//! disconnects mid-call does not cut the card operation short (its answer is simply
//! not delivered). At shutdown the listeners stop accepting, each connection finishes
//! the request it is in, and [`run`] returns when every connection has ended.

use crate::error::ApiError;
use crate::events::Event;
use crate::frame::{Frame, LineReader};
use crate::methods::{self, params::Params};
use crate::session::Session;
use crate::state::State;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tracing::Instrument;

/// How long writing one answer may take before the client is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening socket.
pub enum Listener {
    Unix(UnixListener),
    /// Loopback TCP (the configuration refuses any other address).
    Tcp(TcpListener),
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Serve `listeners` until `shutdown` resolves, then wait for every connection to
/// finish the request it is in.
pub async fn run(listeners: Vec<Listener>, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let sem = Arc::new(Semaphore::new(state.config().max_connections));
    let mut accepting = Vec::new();
    for l in listeners {
        accepting.push(tokio::spawn(accept_loop(
            l,
            state.clone(),
            sem.clone(),
            stop_rx.clone(),
            done_tx.clone(),
        )));
    }
    drop(done_tx);
    shutdown.await;
    tracing::info!("shutting down: no new connections");
    let _ = stop_tx.send(true);
    for a in accepting {
        let _ = a.await;
    }
    // every connection task holds a sender: recv() ends when the last one is gone
    let _ = done_rx.recv().await;
}

async fn accept_loop(
    l: Listener,
    state: Arc<State>,
    sem: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut stop) => return,
        };
        let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let (st, stop2, done2) = (state.clone(), stop.clone(), done.clone());
        let accepted = tokio::select! {
            r = accept(&l) => r,
            _ = stopped(&mut stop) => return,
        };
        match accepted {
            Ok(Conn::Unix(s)) => {
                tokio::spawn(
                    async move {
                        let _permit = permit;
                        let _done = done2;
                        serve(s, st, stop2).await;
                    }
                    .instrument(tracing::info_span!("conn", id)),
                );
            }
            Ok(Conn::Tcp(s)) => {
                tokio::spawn(
                    async move {
                        let _permit = permit;
                        let _done = done2;
                        serve(s, st, stop2).await;
                    }
                    .instrument(tracing::info_span!("conn", id, tcp = true)),
                );
            }
            Err(e) => {
                // out of file descriptors and the like: do not spin
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Resolves once the server is stopping.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<Conn> {
    match l {
        Listener::Unix(u) => u.accept().await.map(|(s, _)| Conn::Unix(s)),
        Listener::Tcp(t) => t.accept().await.map(|(s, _)| Conn::Tcp(s)),
    }
}

/// The next event for a subscribed connection; never resolves for the others.
async fn next_event(rx: &mut Option<broadcast::Receiver<Event>>) -> Option<Event> {
    match rx {
        None => std::future::pending().await,
        Some(r) => loop {
            match r.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("a slow subscriber missed {n} events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
    }
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, v: &Value) -> bool {
    let mut out = v.to_string();
    out.push('\n');
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(out.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// Serve one connection (any byte stream: a Unix or TCP socket, or a duplex pipe in
/// tests) until it closes or the server stops.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    st: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = LineReader::new(rd, Duration::from_millis(st.config().line_timeout_ms));
    let mut conn = Connection::default();
    loop {
        let frame = tokio::select! {
            f = lines.next() => f,
            ev = next_event(&mut conn.events) => {
                match ev {
                    Some(e) => if !send(&mut wr, &e.to_notification()).await { return },
                    None => conn.events = None,
                }
                continue;
            }
            _ = stopped(&mut stop) => return,
        };
        let resp = match frame {
            Frame::Line(l) => handle_line(&st, &mut conn, &l).await,
            Frame::TooLong => Some(reply(
                &Value::Null,
                Err(ApiError::invalid_request(format!(
                    "a line over {} bytes; it was skipped",
                    crate::frame::MAX_LINE
                ))),
            )),
            Frame::Stalled => {
                tracing::debug!("a client stalled mid-line; closing");
                let _ = send(
                    &mut wr,
                    &reply(
                        &Value::Null,
                        Err(ApiError::parse("line not finished in time; closing")),
                    ),
                )
                .await;
                return;
            }
            Frame::Closed => return,
        };
        if let Some(r) = resp {
            if !send(&mut wr, &r).await {
                return;
            }
        }
    }
}

/// Per-connection state.
#[derive(Default)]
struct Connection {
    session: Session,
    events: Option<broadcast::Receiver<Event>>,
}

fn reply(id: &Value, r: Result<Value, ApiError>) -> Value {
    match r {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

/// Handle one request line; `None` for a notification (a request without `id`).
async fn handle_line(st: &Arc<State>, conn: &mut Connection, line: &[u8]) -> Option<Value> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(reply(&Value::Null, Err(ApiError::parse("invalid UTF-8"))));
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
    let Some(obj) = req.as_object() else {
        let m = if req.is_array() {
            "batches are not supported: send one request a line"
        } else {
            "a request is a JSON object"
        };
        return Some(reply(&Value::Null, Err(ApiError::invalid_request(m))));
    };
    let id = obj.get("id").cloned();
    if let Some(i) = &id {
        if !(i.is_string() || i.is_number() || i.is_null()) {
            return Some(reply(
                &Value::Null,
                Err(ApiError::invalid_request("id: a string, a number or null")),
            ));
        }
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(reply(
            &reply_id,
            Err(ApiError::invalid_request("jsonrpc: must be \"2.0\"")),
        ));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return Some(reply(
            &reply_id,
            Err(ApiError::invalid_request("method: a string is required")),
        ));
    };
    let r = dispatch(st, conn, method, obj.get("params"))
        .instrument(tracing::debug_span!("request", method))
        .await;
    if let Err(e) = &r {
        tracing::debug!(
            code = e.code,
            kind = e.kind.map(|k| k.name()),
            "{method}: {}",
            e.message
        );
    }
    id.map(|i| reply(&i, r))
}

async fn dispatch(
    st: &Arc<State>,
    conn: &mut Connection,
    name: &str,
    params: Option<&Value>,
) -> Result<Value, ApiError> {
    let m = methods::method(name).ok_or_else(|| ApiError::method_not_found(name))?;
    let p = Params::new(params)?;
    let config = st.config();
    match m.name {
        "system.health" => return methods::system::health(st, &p).await,
        "session.login" => {
            p.only(&["token"])?;
            let token = p.str("token")?;
            let r = conn.session.login(&config, token);
            let (who, out) = match &r {
                Ok(op) => (op.name.clone(), format!("ok {}", op.role.name())),
                Err(e) => (
                    String::new(),
                    methods::outcome::<()>(&Err(e.clone()), |_| String::new()),
                ),
            };
            st.audit(&who, "session.login", "", "", &out).await;
            let op = r?;
            return Ok(json!({"operator": op.name, "role": op.role.name()}));
        }
        _ => {}
    }
    let op = conn.session.operator(&config)?;
    if let Err(e) = methods::authorize(m, &op) {
        if m.name.starts_with("card.") || m.name.starts_with("pay.") {
            st.audit(
                &op.name,
                m.name,
                "",
                "",
                &methods::outcome::<()>(&Err(e.clone()), |_| String::new()),
            )
            .await;
        }
        return Err(e);
    }
    if m.name == "events.subscribe" {
        p.only(&[])?;
        conn.events = Some(st.events.subscribe());
        return Ok(json!({
            "subscribed": true,
            "events": ["reader.added", "reader.removed", "card.inserted", "card.removed", "payment.settled"],
        }));
    }
    methods::call(st, &op, m, &p).await
}
