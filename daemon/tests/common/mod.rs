//! Test fixtures: the daemon started in-process on a temporary Unix socket with
//! simulated readers (stopped on drop), an async JSON-RPC client over the real socket,
//! and cards shared between the test and the reader.
#![allow(dead_code)]

pub mod centre;
pub mod process;

use serde_json::{json, Value};
use sscard_daemon::config::{token_hash, Config, Operator};
use sscard_daemon::keys::KeySource;
use sscard_daemon::readers::sim::SimControl;
use sscard_daemon::session::Role;
use sscard_daemon::{Daemon, Options, State};
use sscard_firmware_tests::card::{EmulatedCard, Knobs, Personalization};
use sscard_firmware_tests::{Reply, VirtualCard};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The operators every fixture has: token `tok-<name>`.
pub const OPERATORS: [(&str, Role); 4] = [
    ("cashier", Role::Cashier),
    ("super", Role::Supervisor),
    ("audit", Role::Auditor),
    ("admin", Role::Admin),
];

pub fn operators() -> Vec<Operator> {
    let mut v: Vec<Operator> = OPERATORS
        .iter()
        .map(|(n, r)| Operator {
            name: n.to_string(),
            token_sha256: token_hash(&format!("tok-{n}")),
            role: *r,
            enabled: true,
        })
        .collect();
    v.push(Operator {
        name: "gone".into(),
        token_sha256: token_hash("tok-gone"),
        role: Role::Cashier,
        enabled: false,
    });
    v
}

/// A card the test keeps a handle on while a reader holds it.
#[derive(Clone)]
pub struct SharedCard(pub Arc<Mutex<EmulatedCard>>);

impl SharedCard {
    pub fn new(c: EmulatedCard) -> Self {
        SharedCard(Arc::new(Mutex::new(c)))
    }
    pub fn default_card() -> Self {
        Self::new(EmulatedCard::default_test_card())
    }
    pub fn with(p: &Personalization) -> Self {
        Self::new(EmulatedCard::new(p, Knobs::default()).unwrap())
    }
    pub fn knobs(&self, k: Knobs) {
        self.0.lock().unwrap().set_knobs(k);
    }
    pub fn balance(&self) -> u32 {
        self.0.lock().unwrap().image().balance
    }
    pub fn boxed(&self) -> Box<dyn VirtualCard> {
        Box::new(self.clone())
    }
}

impl VirtualCard for SharedCard {
    fn atr(&self) -> Vec<u8> {
        self.0.lock().unwrap().atr()
    }
    fn power_on(&mut self) {
        self.0.lock().unwrap().power_on()
    }
    fn power_off(&mut self) {
        self.0.lock().unwrap().power_off()
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().reset()
    }
    fn process(&mut self, command: &[u8]) -> Reply {
        self.0.lock().unwrap().process(command)
    }
}

/// The daemon, in-process.
pub struct InProc {
    pub dir: Option<tempfile::TempDir>,
    pub socket: PathBuf,
    pub journal: PathBuf,
    pub sim: SimControl,
    pub state: Arc<State>,
    /// The loopback TCP address, when the configuration asked for one.
    pub tcp: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProc {
    /// Start with `edit` applied to the test configuration, `keys` (None: the test keys)
    /// and the readers already in `sim`.
    pub async fn start_with(
        sim: SimControl,
        edit: impl FnOnce(&mut Config),
        keys: Option<KeySource>,
    ) -> InProc {
        Self::start_serial(sim, edit, keys, Vec::new()).await
    }

    /// [`InProc::start_with`] with serial readers opened before the start (a PSAM's).
    pub async fn start_serial(
        sim: SimControl,
        edit: impl FnOnce(&mut Config),
        keys: Option<KeySource>,
        serial: Vec<std::sync::Arc<sscard_driver::transport::serial::reader::SerialReader>>,
    ) -> InProc {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::test("650200".parse().unwrap(), "650200000001".parse().unwrap());
        c.socket = dir.path().join("s.sock");
        c.journal = dir.path().join("journal.db");
        c.operators = operators();
        c.reader_wait_ms = 5_000;
        edit(&mut c);
        let keys = keys.unwrap_or_else(|| KeySource::test(c.region, c.terminal_id));
        let d = Daemon::start(Options {
            config: c.clone(),
            readers: Box::new(sim.source()),
            keys,
            serial,
        })
        .await
        .unwrap();
        let state = d.state();
        let tcp = d.tcp_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(d.serve(async {
            let _ = rx.await;
        }));
        InProc {
            socket: c.socket.clone(),
            journal: c.journal.clone(),
            dir: Some(dir),
            sim,
            state,
            tcp,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// One reader "r0" holding `card`.
    pub async fn with_card(card: &SharedCard) -> InProc {
        let sim = SimControl::new();
        sim.add_reader_with_card("r0", card.boxed());
        Self::start_with(sim, |_| {}, None).await
    }

    /// Shut down (as SIGTERM would) and wait until done; the temporary directory
    /// (journal and all) is handed over.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("shutdown within 30 s")
                .unwrap();
        }
        self.dir.take()
    }

    /// The audit log as the journal holds it (of one operator, or all), oldest first.
    pub async fn audit_log(&self, operator: Option<&str>) -> Vec<Value> {
        let op = operator.map(str::to_string);
        self.state
            .journal
            .call(move |j| j.audit_query(None, None, op.as_deref(), 100_000))
            .await
            .unwrap()
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }

    pub async fn login(&self, who: &str) -> Client {
        let mut c = self.client().await;
        c.call("session.login", json!({"token": format!("tok-{who}")}))
            .await
            .unwrap();
        c
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A JSON-RPC client over the Unix socket.
pub struct Client {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
    id: u64,
    /// Notifications read while waiting for a response.
    pub notifications: Vec<Value>,
}

impl Client {
    pub async fn connect(path: &std::path::Path) -> Client {
        let s = UnixStream::connect(path).await.unwrap();
        let (rd, wr) = s.into_split();
        Client {
            rd: BufReader::new(rd),
            wr,
            id: 0,
            notifications: Vec::new(),
        }
    }

    /// The next line the daemon sends, as JSON.
    pub async fn read(&mut self) -> Value {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.rd.read_line(&mut l))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&l).unwrap()
    }

    /// Send one line as it is.
    pub async fn wr_line(&mut self, line: &str) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
    }

    /// The next line as the daemon sent it.
    pub async fn read_line(&mut self) -> String {
        self.try_read_line()
            .await
            .expect("the daemon closed the connection")
    }

    /// The next line, or `None` when the daemon closed the connection.
    pub async fn try_read_line(&mut self) -> Option<String> {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.rd.read_line(&mut l))
            .await
            .expect("a line within 30 s");
        match n {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end().to_string()),
        }
    }

    /// Send bytes, return the next response (notifications are kept aside).
    pub async fn raw(&mut self, bytes: &[u8]) -> Value {
        self.wr.write_all(bytes).await.unwrap();
        loop {
            let v = self.read().await;
            if v.get("id").is_none() && v.get("method").is_some() {
                self.notifications.push(v);
                continue;
            }
            return v;
        }
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        let r = self.raw(format!("{req}\n").as_bytes()).await;
        assert_eq!(r["id"], self.id, "{r}");
        match r.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"].clone()),
        }
    }

    /// Whether the daemon closes the connection within `wait` (lines it sends before
    /// closing are kept in `notifications`).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut l = String::new();
            match tokio::time::timeout_at(deadline, self.rd.read_line(&mut l)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {
                    if let Ok(v) = serde_json::from_str(&l) {
                        self.notifications.push(v);
                    }
                }
            }
        }
    }

    /// The next notification of `method` (waiting up to 10 s).
    pub async fn notification(&mut self, method: &str) -> Value {
        if let Some(i) = self
            .notifications
            .iter()
            .position(|n| n["method"] == method)
        {
            return self.notifications.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = tokio::time::timeout_at(deadline, self.read())
                .await
                .unwrap_or_else(|_| panic!("no {method} notification"));
            if v["method"] == method {
                return v;
            }
            self.notifications.push(v);
        }
    }
}

/// `error.data.kind`.
pub fn kind(e: &Value) -> &str {
    e["data"]["kind"].as_str().unwrap_or("")
}

/// Wait until `f` holds (the simulated readers are looked at every few ms).
pub async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 4 s");
}

pub fn today() -> String {
    chrono::Local::now().date_naive().to_string()
}
