//! What every connection and card job shares.

use crate::config::Config;
use crate::events::Event;
use crate::journal::{parse_blacklist, JournalHandle};
use crate::keys::KeySource;
use crate::readers::Readers;
use crate::throttle::Throttle;
use crate::upload::UploadStatus;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// The daemon's shared state.
pub struct State {
    config: RwLock<Arc<Config>>,
    pub journal: JournalHandle,
    pub readers: Arc<Readers>,
    pub keys: Arc<KeySource>,
    pub events: broadcast::Sender<Event>,
    pub started: Instant,
    upload: Mutex<UploadStatus>,
    /// Wakes the uploader for a round now (`settle.day`).
    pub upload_wake: tokio::sync::Notify,
    /// Failed logins by peer.
    pub throttle: Throttle,
    /// Bumped by every configuration reload: connections re-check their operator.
    pub reloaded: watch::Sender<u64>,
}

impl State {
    pub fn new(
        config: Config,
        journal: JournalHandle,
        readers: Arc<Readers>,
        keys: KeySource,
        events: broadcast::Sender<Event>,
    ) -> State {
        State {
            config: RwLock::new(Arc::new(config)),
            journal,
            readers,
            keys: Arc::new(keys),
            events,
            started: Instant::now(),
            upload: Mutex::new(UploadStatus::default()),
            upload_wake: tokio::sync::Notify::new(),
            throttle: Throttle::default(),
            reloaded: watch::channel(0).0,
        }
    }

    /// The uploader's last news.
    pub fn upload_status(&self) -> UploadStatus {
        match self.upload.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set_upload_status(&self, s: UploadStatus) {
        match self.upload.lock() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// How long a request waits for its reader.
    pub fn reader_wait(&self) -> Duration {
        Duration::from_millis(self.config().reader_wait_ms)
    }

    /// Apply a re-read configuration (`SIGHUP`): operators, limits, waits and the
    /// blacklist file take effect now; what needs a restart is kept and a warning
    /// names it.
    pub async fn reload(&self, mut new: Config) -> Result<(), String> {
        let old = self.config();
        let mut kept = Vec::new();
        if new.socket != old.socket || new.socket_mode != old.socket_mode || new.tcp != old.tcp {
            kept.push("socket, socket_mode, tcp");
            new.socket = old.socket.clone();
            new.socket_mode = old.socket_mode;
            new.tcp = old.tcp;
        }
        if new.journal != old.journal {
            kept.push("journal");
            new.journal = old.journal.clone();
        }
        if new.keys != old.keys
            || new.terminal_id != old.terminal_id
            || new.region != old.region
            || new.test_mode != old.test_mode
        {
            kept.push("keys, terminal_id, region, test_mode");
            new.keys = old.keys.clone();
            new.terminal_id = old.terminal_id;
            new.region = old.region;
            new.test_mode = old.test_mode;
        }
        if new.max_connections != old.max_connections
            || new.max_unauthenticated != old.max_unauthenticated
        {
            // the listeners' slots are sized at start
            kept.push("max_connections, max_unauthenticated");
            new.max_connections = old.max_connections;
            new.max_unauthenticated = old.max_unauthenticated;
        }
        if new.serial != old.serial {
            // the serial readers are opened at start
            kept.push("serial");
            new.serial = old.serial.clone();
        }
        if !kept.is_empty() {
            tracing::warn!("reload: {} changed; restart to apply", kept.join("; "));
        }
        self.import_blacklist(&new).await?;
        match self.config.write() {
            Ok(mut c) => *c = Arc::new(new),
            Err(p) => *p.into_inner() = Arc::new(new),
        }
        self.reloaded.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Import the configuration's blacklist file (replacing what it imported before).
    pub async fn import_blacklist(&self, config: &Config) -> Result<(), String> {
        let Some(path) = &config.blacklist_file else {
            return Ok(());
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("blacklist_file {}: {e}", path.display()))?;
        let entries = parse_blacklist(&text)
            .map_err(|e| format!("blacklist_file {}: {e}", path.display()))?;
        let n = entries.len();
        self.journal
            .call(move |j| j.blacklist_import(&entries))
            .await
            .map_err(|e| format!("blacklist import: {e}"))?;
        tracing::info!("blacklist file {}: {n} entries", path.display());
        Ok(())
    }

    /// Append to the audit log. A failure is logged here and returned: the dispatcher
    /// decides what it means for the call.
    pub async fn audit(
        &self,
        operator: &str,
        method: &str,
        reader: &str,
        card: &str,
        outcome: &str,
    ) -> Result<(), crate::journal::JournalError> {
        self.audit_settling(operator, method, reader, card, outcome, None)
            .await
            .map(|_| ())
    }

    /// [`State::audit`] with the outcome of the call's payment in the same commit;
    /// whether the payment was still pending.
    pub async fn audit_settling(
        &self,
        operator: &str,
        method: &str,
        reader: &str,
        card: &str,
        outcome: &str,
        settle: Option<crate::journal::Payment>,
    ) -> Result<bool, crate::journal::JournalError> {
        let (op, m, r, c, o) = (
            operator.to_string(),
            method.to_string(),
            reader.to_string(),
            card.to_string(),
            outcome.to_string(),
        );
        let t = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        self.journal
            .call(move |j| j.audit_settling(&t, &op, &m, &r, &c, &o, settle.as_ref()))
            .await
            .inspect_err(|e| {
                tracing::error!("audit log write failed ({method} by {operator}): {e}")
            })
    }
}
