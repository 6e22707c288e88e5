//! `sscardd` as a process: spawned with `--simulate` or `--dev`, on a directory holding
//! its `sscardd.toml` or with none, with its socket and journal beside it, killed on
//! drop; and a blocking line client for its socket.

use serde_json::{json, Value};
use sscard_daemon::config::token_hash;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `[[operators]]` for cashier, super, audit and admin (token `tok-<name>`), and "gone",
/// a cashier enabled or not.
pub fn operators_toml(gone_enabled: bool) -> String {
    let mut s = String::new();
    for (name, role) in [
        ("cashier", "cashier"),
        ("super", "supervisor"),
        ("audit", "auditor"),
        ("admin", "admin"),
    ] {
        s.push_str(&format!(
            "[[operators]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nrole = \"{role}\"\n",
            token_hash(&format!("tok-{name}"))
        ));
    }
    s.push_str(&format!(
        "[[operators]]\nname = \"gone\"\ntoken_sha256 = \"{}\"\nrole = \"cashier\"\nenabled = {gone_enabled}\n",
        token_hash("tok-gone")
    ));
    s
}

/// A running `sscardd`.
pub struct Sscardd {
    pub child: Child,
    /// Holds `sscardd.toml`, `s.sock` and `journal.db`.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub journal: PathBuf,
    /// The demo supervisor's token that `--simulate` and `--dev` print.
    pub token: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Sscardd {
    /// Start `sscardd <mode>` (`--simulate` or `--dev`) on `dir/sscardd.toml` and wait
    /// for the `socket:` and `token:` lines those modes print.
    pub fn spawn(mode: &str, dir: &Path) -> Sscardd {
        Self::launch(mode, dir, true)
    }

    /// Start `sscardd <mode>` with no configuration file, in a temporary directory.
    pub fn bare(mode: &str) -> Sscardd {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Self::launch(mode, tmp.path(), false);
        d._tmp = Some(tmp);
        d
    }

    fn launch(mode: &str, dir: &Path, with_config: bool) -> Sscardd {
        let socket = dir.join("s.sock");
        let journal = dir.join("journal.db");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sscardd"));
        cmd.env(
            "SSCARD_LOG",
            std::env::var("SSCARD_TEST_DAEMON_LOG").unwrap_or("warn".into()),
        )
        .arg(mode);
        if with_config {
            cmd.arg("--config").arg(dir.join("sscardd.toml"));
        }
        let mut child = cmd
            .arg("--socket")
            .arg(&socket)
            .arg("--journal")
            .arg(&journal)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("socket: {}", socket.display()));
        line.clear();
        out.read_line(&mut line).unwrap();
        let token = line.trim().strip_prefix("token: ").map(str::to_string);
        Sscardd {
            child,
            dir: dir.to_path_buf(),
            socket,
            journal,
            token,
            _tmp: None,
        }
    }

    /// Start in a new temporary directory (removed on drop) with this configuration.
    pub fn in_temp(mode: &str, config: &str) -> Sscardd {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("sscardd.toml"), config).unwrap();
        let mut d = Self::spawn(mode, tmp.path());
        d._tmp = Some(tmp);
        d
    }

    /// Send a signal (`-HUP`, `-TERM`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sscardd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking JSON-RPC client: one request line, one response line.
pub struct LineClient {
    pub s: BufReader<UnixStream>,
    id: u64,
}

impl LineClient {
    pub fn new(d: &Sscardd) -> LineClient {
        Self::connect(&d.socket)
    }

    pub fn connect(socket: &Path) -> LineClient {
        let s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        LineClient {
            s: BufReader::new(s),
            id: 0,
        }
    }

    /// Send raw bytes, read one line back as JSON.
    pub fn raw(&mut self, line: &[u8]) -> Value {
        self.s.get_mut().write_all(line).unwrap();
        let mut l = String::new();
        self.s.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params});
        let r = self.raw(format!("{req}\n").as_bytes());
        assert_eq!(r["id"], self.id);
        match r.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"].clone()),
        }
    }

    /// Whether the daemon closes this connection within `wait` (nothing is sent).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let _ = self.s.get_ref().set_read_timeout(Some(wait));
        let mut l = String::new();
        let r = self.s.read_line(&mut l);
        let _ = self
            .s
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(60)));
        match r {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// A client logged in as `tok-<who>`.
    pub fn login(d: &Sscardd, who: &str) -> LineClient {
        let mut c = LineClient::new(d);
        c.call("session.login", json!({"token": format!("tok-{who}")}))
            .unwrap();
        c
    }
}
