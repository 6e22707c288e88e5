//! Putting it together: [`Daemon::start`] opens the journal (listing the payments left
//! pending by a crash), imports the blacklist file, starts the readers and binds the
//! sockets; [`Daemon::serve`] serves until its shutdown future resolves, then lets the
//! card operations in flight finish and closes the journal cleanly.
//!
//! Pending payments are settled when their card is seen: each card inserted in any
//! reader is checked against the journal's pending payments. Beside the connections
//! and readers run the uploader ([`crate::upload`]) and the backup schedule
//! ([`crate::backup`]).

use crate::config::Config;
use crate::events::Event;
use crate::journal::{Journal, JournalHandle};
use crate::keys::KeySource;
use crate::methods;
use crate::ops;
use crate::readers::source::ReaderSource;
use crate::readers::Readers;
use crate::server::{self, Listener};
use crate::state::State;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How long shutdown waits for card operations in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// What the daemon runs with.
pub struct Options {
    pub config: Config,
    pub readers: Box<dyn ReaderSource>,
    pub keys: KeySource,
    /// Serial readers opened before the start (the port of a PSAM in a SAM slot,
    /// [`crate::readers::serial::psam_port`]), shared with the serial readers' source.
    pub serial: Vec<Arc<sscard_driver::transport::serial::reader::SerialReader>>,
}

/// A started daemon, not yet serving.
pub struct Daemon {
    state: Arc<State>,
    listeners: Vec<Listener>,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
    journal_thread: Option<std::thread::JoinHandle<()>>,
    /// Settlement on insert, the uploader and the backup schedule: stopped at shutdown
    /// (what they had not finished is redone at the next start).
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Bind the Unix socket. An existing path is replaced only when it is a socket and no
/// daemon answers on it (connecting is refused); a regular file, a directory, a link or
/// a live daemon's socket makes start-up fail, naming the path. Then set the mode.
fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, String> {
    let at = || format!("socket {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("socket directory {}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", at())),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "{}: the path holds something that is not a socket; not replacing it",
                at()
            ))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(format!("{}: another daemon is serving there", at())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // a stale socket left by a daemon that died
                std::fs::remove_file(path).map_err(|e| format!("{}: {e}", at()))?;
            }
            Err(e) => {
                return Err(format!(
                    "{}: a socket is there and cannot be checked ({e}); not replacing it",
                    at()
                ))
            }
        },
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| format!("{}: {e}", at()))?;
    // until this chmod the umask's mode applies, which never grants others write access
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", at()))?;
    Ok(l)
}

impl Daemon {
    /// Open everything; any failure is a message for the operator.
    pub async fn start(opts: Options) -> Result<Daemon, String> {
        let config = opts.config;
        if let Some(dir) = config
            .journal
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("journal directory {}: {e}", dir.display()))?;
        }
        let journal = Journal::open(&config.journal)
            .map_err(|e| format!("journal {}: {e}", config.journal.display()))?;
        let pending = journal
            .pending()
            .map_err(|e| format!("journal {}: {e}", config.journal.display()))?;
        for p in &pending {
            tracing::warn!(
                order = %p.order_id, kind = %p.kind, card = %p.card_number, amount_fen = p.amount_fen,
                "pending payment from before the restart: it settles when its card is seen"
            );
        }
        let (journal, journal_thread) =
            JournalHandle::spawn(journal).map_err(|e| format!("journal thread: {e}"))?;
        let (events, _) = broadcast::channel(256);
        let readers = Readers::new(events.clone());
        let state = Arc::new(State::new(
            config.clone(),
            journal,
            readers.clone(),
            opts.keys,
            events.clone(),
        ));
        state.import_blacklist(&config).await?;
        let background = vec![
            tokio::spawn(on_insert(state.clone(), events.subscribe())),
            tokio::spawn(crate::upload::run(state.clone())),
            tokio::spawn(crate::backup::run(state.clone())),
        ];
        readers.start(opts.readers).await;
        if !config.serial.is_empty() {
            // the PSAM's slot is the keys', not a reader to pay on
            let ignore = match &config.keys {
                Some(crate::config::KeysConfig::Psam { reader }) => vec![reader.clone()],
                _ => Vec::new(),
            };
            readers
                .start(Box::new(crate::readers::serial::SerialSource::new(
                    &config.serial,
                    &opts.serial,
                    ignore,
                )))
                .await;
        }
        let mut listeners = vec![Listener::Unix(bind_unix(
            &config.socket,
            config.socket_mode,
        )?)];
        let mut tcp = None;
        if let Some(addr) = config.tcp {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("tcp {addr}: {e}"))?;
            tcp = l.local_addr().ok();
            listeners.push(Listener::Tcp(l));
        }
        Ok(Daemon {
            state,
            listeners,
            socket: config.socket.clone(),
            tcp,
            journal_thread: Some(journal_thread),
            background,
        })
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// The Unix socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The TCP listener's address (its real port when the configuration said 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// Serve until `shutdown` resolves; then finish the requests in flight and the card
    /// operations queued, close the journal and remove the socket.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) {
        let listeners = std::mem::take(&mut self.listeners);
        server::run(listeners, self.state.clone(), shutdown).await;
        for t in &self.background {
            t.abort();
        }
        self.state.readers.shutdown(SHUTDOWN_GRACE).await;
        self.state.journal.close().await;
        if let Some(t) = self.journal_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("stopped");
    }
}

/// Whenever a card is inserted: read it into the reader's presentation cache (in the
/// background), and settle its pending payments.
async fn on_insert(st: Arc<State>, mut events: broadcast::Receiver<Event>) {
    loop {
        let reader = match events.recv().await {
            Ok(Event::CardInserted { reader, .. }) => reader,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(r) = st.readers.get(&reader) else {
            continue;
        };
        // the presentation cache: the card is read now, before anyone asks
        let c = methods::ctx(&st);
        r.background(move |card, waiting| ops::prefetch(card, &c, waiting));
        let any = st
            .journal
            .call(|j| j.pending().map(|p| !p.is_empty()))
            .await
            .unwrap_or(false);
        if !any {
            continue;
        }
        let c = methods::ctx(&st);
        let res = r
            .run(st.reader_wait(), move |t| {
                Ok(ops::settle_pending(t, &c, None))
            })
            .await;
        if let Ok((card, Ok(done))) = res {
            for p in done {
                let _ = st
                    .audit(
                        "sscardd",
                        "settle",
                        &reader,
                        &card,
                        &format!(
                            "{} {} {} {} fen",
                            p.status, p.kind, p.order_id, p.amount_fen
                        ),
                    )
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bind_unix;

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_kept_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal-copy.db");
        std::fs::write(&path, b"SQLite format 3\0 and 172 KB more").unwrap();
        let e = bind_unix(&path, 0o660).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"SQLite format 3\0 and 172 KB more"
        );
        // nor a directory, nor a link to a socket
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        assert!(bind_unix(&sub, 0o660).is_err());
        assert!(sub.is_dir());
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&stale, &link).unwrap();
        assert!(bind_unix(&link, 0o660).is_err());
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    }

    #[tokio::test]
    async fn a_live_daemons_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = bind_unix(&path, 0o660).unwrap_err();
        assert!(e.contains("another daemon"), "{e}");
        // the live one still answers
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(live.accept().is_ok());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a closed listener leaves its file");
        let l = bind_unix(&path, 0o660).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(l.accept().await.is_ok());
    }
}
