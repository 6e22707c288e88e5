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
use crate::methods::{self, Connection, Method};
use crate::rpc;
use crate::state::State;
use crate::throttle::Peer;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
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

/// A connection's claim on the server's slots: one of its listener's
/// `max_unauthenticated` slots until it logs in, then one of the `max_connections`
/// slots of logged-in clients (shared by all listeners). Unauthenticated clients never
/// take a logged-in client's slot, and one listener's never take another's.
pub struct Slots {
    unauthenticated: Option<OwnedSemaphorePermit>,
    logged_in: Option<OwnedSemaphorePermit>,
    pool: Arc<Semaphore>,
}

impl Slots {
    /// Move to a logged-in slot; false when all are taken.
    fn log_in(&mut self) -> bool {
        if self.logged_in.is_none() {
            match self.pool.clone().try_acquire_owned() {
                Ok(p) => self.logged_in = Some(p),
                Err(_) => return false,
            }
        }
        self.unauthenticated = None;
        true
    }
}

/// Serve `listeners` until `shutdown` resolves, then wait for every connection to
/// finish the request it is in.
pub async fn run(listeners: Vec<Listener>, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let config = state.config();
    let logged_in = Arc::new(Semaphore::new(config.max_connections));
    let mut accepting = Vec::new();
    for l in listeners {
        let waiting = Arc::new(Semaphore::new(config.max_unauthenticated));
        accepting.push(tokio::spawn(accept_loop(
            l,
            state.clone(),
            waiting,
            logged_in.clone(),
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
    waiting: Arc<Semaphore>,
    logged_in: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        // accepting never waits for a slot: a full server answers at once
        let accepted = tokio::select! {
            r = accept(&l) => r,
            _ = stopped(&mut stop) => return,
        };
        let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let (st, stop2, done2) = (state.clone(), stop.clone(), done.clone());
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // out of file descriptors and the like: do not spin
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = waiting.clone().try_acquire_owned().ok();
        let slots = Slots {
            unauthenticated: slot,
            logged_in: None,
            pool: logged_in.clone(),
        };
        let full = slots.unauthenticated.is_none();
        let task = async move {
            let _done = done2;
            match stream {
                Conn::Unix(s) if full => refuse_busy(s).await,
                Conn::Tcp(s) if full => refuse_busy(s).await,
                Conn::Unix(s) => serve(s, peer, slots, st, stop2).await,
                Conn::Tcp(s) => serve(s, peer, slots, st, stop2).await,
            }
        };
        tokio::spawn(task.instrument(tracing::info_span!("conn", id)));
    }
}

/// Answer a connection the server has no slot for, and close it.
async fn refuse_busy<S: AsyncWrite + Unpin>(mut s: S) {
    tracing::warn!("too many connections waiting to log in: one refused");
    let e = ApiError::busy("too many connections are waiting to log in; try again");
    let _ = send(&mut s, &rpc::reply(None, &Err(e))).await;
    let _ = s.shutdown().await;
}

/// Resolves once the server is stopping.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Conn, Peer)> {
    match l {
        Listener::Unix(u) => u.accept().await.map(|(s, _)| {
            let peer = s.peer_cred().map_or(Peer::Unknown, |c| Peer::Uid(c.uid()));
            (Conn::Unix(s), peer)
        }),
        Listener::Tcp(t) => t
            .accept()
            .await
            .map(|(s, a)| (Conn::Tcp(s), Peer::Ip(a.ip()))),
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

/// Sleep until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, line: &str) -> bool {
    let mut out = String::with_capacity(line.len() + 1);
    out.push_str(line);
    out.push('\n');
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(out.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// Serve one connection (any byte stream: a Unix or TCP socket, or a duplex pipe in
/// tests) until it closes, times out, or the server stops.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: Peer,
    mut slots: Slots,
    st: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let (rd, mut wr) = tokio::io::split(stream);
    let config = st.config();
    let mut lines = LineReader::new(rd, Duration::from_millis(config.line_timeout_ms));
    let mut conn = Connection::new(peer);
    let login_by = Instant::now() + Duration::from_millis(config.login_timeout_ms);
    let idle = (config.idle_timeout_ms > 0).then(|| Duration::from_millis(config.idle_timeout_ms));
    let mut last_request = Instant::now();
    let mut reloaded = st.reloaded.subscribe();
    loop {
        let logged_in = conn.session.name().is_some();
        let deadline = if logged_in {
            idle.map(|d| last_request + d)
        } else {
            Some(login_by)
        };
        let frame = tokio::select! {
            f = lines.next() => f,
            ev = next_event(&mut conn.events) => {
                match ev {
                    // every event goes only to an operator who is still valid
                    Some(e) if conn.session.operator(&st.config()).is_ok() => {
                        if !send(&mut wr, &e.to_notification().to_string()).await { break }
                    }
                    Some(_) => break,
                    None => conn.events = None,
                }
                continue;
            }
            _ = reloaded.changed() => {
                if logged_in && conn.session.operator(&st.config()).is_err() {
                    tracing::info!("operator {} disabled or changed: closing", conn.session.name().unwrap_or_default());
                    break;
                }
                continue;
            }
            _ = until(deadline) => {
                let why = if logged_in { "idle too long" } else { "not logged in in time" };
                tracing::debug!("{why}; closing");
                let _ = send(&mut wr, &rpc::reply(None, &Err(ApiError::invalid_request(format!("{why}; closing"))))).await;
                break;
            }
            _ = stopped(&mut stop) => break,
        };
        let resp = match frame {
            Frame::Line(l) => {
                last_request = Instant::now();
                handle_line(&st, &mut conn, &mut slots, &l).await
            }
            Frame::TooLong => Some(rpc::reply(
                None,
                &Err(ApiError::invalid_request(format!(
                    "a line over {} bytes; it was skipped",
                    crate::frame::MAX_LINE
                ))),
            )),
            Frame::Stalled => {
                tracing::debug!("a client stalled mid-line; closing");
                let e = ApiError::parse("line not finished in time; closing");
                let _ = send(&mut wr, &rpc::reply(None, &Err(e))).await;
                break;
            }
            Frame::Closed => break,
        };
        if let Some(r) = resp {
            if !send(&mut wr, &r).await {
                break;
            }
        }
        if conn.close {
            break;
        }
    }
    methods::system::flush_failures(&st, &conn).await;
}

/// Handle one request line; `None` when nothing is to be answered (a blank line or a
/// notification).
async fn handle_line(
    st: &Arc<State>,
    conn: &mut Connection,
    slots: &mut Slots,
    line: &[u8],
) -> Option<String> {
    let req = match rpc::parse_line(line) {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(refused) => return Some(rpc::reply(refused.id, &Err(refused.error))),
    };
    let notification = req.id.is_none();
    let name = req.method.as_str();
    let mut r = methods::dispatch(st, conn, name, req.params, notification)
        .instrument(tracing::debug_span!("request", method = name))
        .await;
    if r.is_ok() && Method::from_name(name) == Some(Method::SessionLogin) && !slots.log_in() {
        let who = conn.session.name().unwrap_or_default().to_string();
        conn.session = Default::default();
        conn.close = true;
        let e = ApiError::busy("every slot for logged-in connections is taken; try again");
        // the login's own entry said ok: say that it did not stand
        let text = methods::error_outcome(&e);
        let _ = st.audit(&who, name, "", "", &text).await;
        r = Err(e);
    }
    if let Err(e) = &r {
        tracing::debug!(
            code = e.code,
            kind = e.kind.map(|k| k.name()),
            "{name}: {}",
            e.message
        );
    }
    if notification {
        return None;
    }
    Some(rpc::reply(req.id, &r))
}
