//! Configuration: one TOML file, `/etc/sscard/sscardd.toml` by default (`--config`).
//!
//! Bad configuration is refused at start with a message naming the line and the key
//! (`line 7, key limits.per_transaction_fen: invalid type: string "x", expected u64`).
//! A `SIGHUP` re-reads the file: operators, limits, the reader wait limit and the
//! blacklist file take effect at once (a disabled operator's next call is refused);
//! the socket, journal, keys and terminal identity need a restart.
//!
//! ```toml
//! terminal_id = "650200000001"        # 12 hex digits
//! region = "650200"                   # the terminal's city
//! socket = "/run/sscard/sscard.sock"  # default
//! socket_mode = 0o660                 # default
//! tcp = "127.0.0.1:7878"              # optional, loopback only
//! journal = "/var/lib/sscard/journal.db"
//! reader_wait_ms = 10000              # queue wait for a reader before READER_BUSY
//! login_timeout_ms = 10000            # a connection must log in within it (>= 100)
//! max_unauthenticated = 16            # not yet logged in at once (1..=max_connections)
//! idle_timeout_ms = 0                 # idle between lines; 0 = never
//! require_pin_pad = false             # true: on a reader with a PIN pad, refuse PINs sent over the socket
//! pin_pad_timeout_s = 30              # how long the holder has to type on a pad (5..=120)
//! blacklist_file = "/etc/sscard/blacklist.csv"   # optional: card,reason,until
//! [keys]                              # exactly one of:
//! keystore = { path = "/etc/sscard/terminal.keystore", passphrase_file = "/etc/sscard/pass" }
//! # keystore = { path = "…", credential = "sscard-keystore" }   # systemd credential
//! # psam = { reader = "ACS ACR39U SAM 0" }
//! # test = true                       # the test master keys: refused unless test_mode
//! [limits]
//! per_transaction_fen = 500000
//! per_card_per_day_fen = 2000000
//! [[operators]]
//! name = "li.na"
//! token_sha256 = "<SHA-256 of the token, 64 hex digits>"
//! role = "cashier"                    # cashier | supervisor | auditor | admin
//! enabled = true
//! ```

use crate::session::Role;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sscard_driver::transport::serial::model::{split_spec, Model};
use sscard_driver::{Region, TerminalId};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The default configuration file, the journal's default path and the `[backup]`
/// section are shared with `sscard backup` from `sscard-journal`.
pub use sscard_journal::config::{BackupConfig, DEFAULT_JOURNAL, DEFAULT_PATH};

/// An operator. Tokens are stored as their SHA-256 (hex), never in clear: tokens are
/// random secrets of at least 128 bits handed out by the admin, so a fast hash cannot
/// be searched back, and every call's re-check stays cheap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub token_sha256: String,
    pub role: Role,
    pub enabled: bool,
}

/// Limits in fen (api.md "Policy").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "per_txn", deserialize_with = "positive")]
    pub per_transaction_fen: u64,
    #[serde(default = "per_day", deserialize_with = "positive")]
    pub per_card_per_day_fen: u64,
}

fn per_txn() -> u64 {
    500_000
}
fn per_day() -> u64 {
    2_000_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_transaction_fen: per_txn(),
            per_card_per_day_fen: per_day(),
        }
    }
}

/// Where the keystore's secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeystoreSecretSource {
    /// A file holding the passphrase (or 32 raw bytes of file key).
    PassphraseFile(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

/// Where the terminal's keys are (card profile §4, §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeysConfig {
    /// An encrypted keystore file (`sscard keystore create`).
    Keystore {
        path: PathBuf,
        secret: KeystoreSecretSource,
    },
    /// A PSAM in the named PC/SC reader (that reader is not offered for payments).
    Psam { reader: String },
    /// The test master keys of `vectors.json` (only with `test_mode`).
    Test,
}

/// Upload of completed payments to the settlement centre (carried out by the upload
/// module).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// `https://…` (or `http://` for a local test centre).
    #[serde(deserialize_with = "url")]
    pub endpoint: String,
    /// Minutes between uploads (default 20).
    #[serde(default = "interval", deserialize_with = "positive")]
    pub interval_minutes: u64,
    /// Seconds between uploads: overrides `interval_minutes` (tests, tuning).
    #[serde(default, deserialize_with = "positive_opt")]
    pub interval_seconds: Option<u64>,
    /// Payments in one request.
    #[serde(default = "batch", deserialize_with = "positive_usize")]
    pub batch_size: usize,
    /// First wait after a failed request; doubled after each further failure, never
    /// beyond the interval.
    #[serde(default = "retry_min", deserialize_with = "positive")]
    pub retry_min_seconds: u64,
    /// Connect and read timeout of one request.
    #[serde(default = "upload_timeout", deserialize_with = "positive")]
    pub timeout_seconds: u64,
    /// A file holding the bearer token the centre issued to this terminal (optional).
    pub token_file: Option<PathBuf>,
}

impl UploadConfig {
    /// The time between scheduled uploads.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.interval_seconds
                .unwrap_or(self.interval_minutes.saturating_mul(60)),
        )
    }
}

fn interval() -> u64 {
    20
}
fn batch() -> usize {
    100
}
fn retry_min() -> u64 {
    30
}
fn upload_timeout() -> u64 {
    30
}

/// A serial card reader (api.md 1.1 `[[serial]]`; the GemPC Twin / GemCore protocol of
/// libccid's serial driver, docs/serial-readers.md): each of its slots is a reader
/// named `<model> <path> <slot>`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The port: `/dev/ttyS0`, `/dev/ttyUSB0`, or a stable `/dev/serial/by-id/…` link.
    pub path: PathBuf,
    #[serde(default, deserialize_with = "serial_model")]
    pub model: Model,
    #[serde(default = "serial_baud", deserialize_with = "baud")]
    pub baud: u32,
}

fn serial_model<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Model, D::Error> {
    String::deserialize(d)?.parse().map_err(
        |e: sscard_driver::transport::serial::model::UnknownModel| serde::de::Error::custom(e),
    )
}

fn serial_baud() -> u32 {
    115_200
}

fn baud<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let b = u32::deserialize(d)?;
    match b {
        9600 | 19200 | 38400 | 57600 | 115_200 => Ok(b),
        _ => Err(serde::de::Error::custom(
            "9600, 19200, 38400, 57600 or 115200 (bit/s)",
        )),
    }
}

impl SerialConfig {
    /// `PATH[:MODEL]` (`--serial`): split at the last colon, since device paths may
    /// hold colons; what follows it is the model if it names one, else part of the path
    /// (the model is then libccid's default, the GemPC Twin).
    pub fn from_arg(arg: &str) -> Result<SerialConfig, String> {
        let (path, model) = split_spec(arg);
        if path.is_empty() {
            return Err("--serial: a port path, e.g. /dev/ttyUSB0:GemCorePOSPro".into());
        }
        Ok(SerialConfig {
            path: PathBuf::from(path),
            model,
            baud: serial_baud(),
        })
    }
}

/// The daemon's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Optional TCP listener, always on a loopback address.
    pub tcp: Option<SocketAddr>,
    pub journal: PathBuf,
    pub terminal_id: TerminalId,
    pub region: Region,
    /// Allows the test master keys (tests, demos).
    pub test_mode: bool,
    /// `None` when the file has no `[keys]` (accepted only by `--simulate` / `--dev`).
    pub keys: Option<KeysConfig>,
    pub limits: Limits,
    /// CSV `card,reason,until` imported into the blacklist table at start and reload.
    pub blacklist_file: Option<PathBuf>,
    /// How long a request waits for its reader before `READER_BUSY`.
    pub reader_wait_ms: u64,
    /// How long a client may take to finish a line it began (then it is disconnected).
    pub line_timeout_ms: u64,
    /// Logged-in connections served at once (all listeners together).
    pub max_connections: usize,
    /// How long a connection may take to log in; at least 100 (api.md 1.1).
    pub login_timeout_ms: u64,
    /// Connections of one listener that have not logged in yet; 1 to `max_connections`
    /// (api.md 1.1).
    pub max_unauthenticated: usize,
    /// How long a logged-in connection may stay silent; 0 = never (api.md 1.1).
    pub idle_timeout_ms: u64,
    /// On a reader with a PIN pad, refuse a `pin` sent over the socket: the holder
    /// types on the pad (api.md 1.1).
    pub require_pin_pad: bool,
    /// Seconds the holder has to type on a PIN pad (bTimerOut of the PIN structures).
    pub pin_pad_timeout_s: u8,
    pub backup: BackupConfig,
    pub upload: Option<UploadConfig>,
    pub operators: Vec<Operator>,
    /// Serial card readers (`[[serial]]`).
    pub serial: Vec<SerialConfig>,
}

// ---- the file as written; spans kept where a later check needs a line ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "socket")]
    socket: PathBuf,
    #[serde(default = "mode", deserialize_with = "socket_mode")]
    socket_mode: u32,
    #[serde(default, deserialize_with = "loopback")]
    tcp: Option<SocketAddr>,
    #[serde(default = "journal")]
    journal: PathBuf,
    #[serde(deserialize_with = "parsed")]
    terminal_id: TerminalId,
    #[serde(deserialize_with = "parsed")]
    region: Region,
    #[serde(default)]
    test_mode: bool,
    keys: Option<toml::Spanned<RawKeys>>,
    #[serde(default)]
    limits: Limits,
    blacklist_file: Option<PathBuf>,
    #[serde(default = "wait")]
    reader_wait_ms: u64,
    #[serde(default = "line_timeout")]
    line_timeout_ms: u64,
    #[serde(default = "max_conn", deserialize_with = "positive_usize")]
    max_connections: usize,
    #[serde(default = "login_timeout", deserialize_with = "login_timeout_min")]
    login_timeout_ms: u64,
    max_unauthenticated: Option<toml::Spanned<usize>>,
    #[serde(default)]
    idle_timeout_ms: u64,
    #[serde(default)]
    require_pin_pad: bool,
    #[serde(
        default = "pin_pad_timeout",
        deserialize_with = "pin_pad_timeout_range"
    )]
    pin_pad_timeout_s: u8,
    #[serde(default)]
    backup: BackupConfig,
    upload: Option<UploadConfig>,
    #[serde(default)]
    operators: Vec<RawOperator>,
    #[serde(default)]
    serial: Vec<SerialConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    keystore: Option<RawKeystore>,
    psam: Option<RawPsam>,
    #[serde(default)]
    test: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeystore {
    path: PathBuf,
    passphrase_file: Option<PathBuf>,
    credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPsam {
    reader: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: toml::Spanned<String>,
    #[serde(deserialize_with = "sha256_hex")]
    token_sha256: String,
    role: Role,
    #[serde(default = "yes")]
    enabled: bool,
}

fn socket() -> PathBuf {
    PathBuf::from("/run/sscard/sscard.sock")
}
fn mode() -> u32 {
    0o660
}
fn journal() -> PathBuf {
    PathBuf::from(DEFAULT_JOURNAL)
}
fn wait() -> u64 {
    10_000
}
fn line_timeout() -> u64 {
    30_000
}
fn max_conn() -> usize {
    64
}
fn login_timeout() -> u64 {
    10_000
}
fn max_unauth() -> usize {
    16
}
fn yes() -> bool {
    true
}

fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be positive")),
        v => Ok(v),
    }
}

fn positive_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be positive")),
        v => Ok(v),
    }
}

fn pin_pad_timeout() -> u8 {
    sscard_driver::transport::pinpad::DEFAULT_TIMEOUT_S
}

fn pin_pad_timeout_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    match u64::deserialize(d)? {
        v @ 5..=120 => Ok(v as u8),
        v => Err(serde::de::Error::custom(format!("{v} s: from 5 to 120 s"))),
    }
}

fn login_timeout_min<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        v if v < 100 => Err(serde::de::Error::custom(format!("{v} ms: at least 100 ms"))),
        v => Ok(v),
    }
}

fn positive_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    positive(d).map(Some)
}

fn socket_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Int(u32),
        Text(String),
    }
    let m = match Repr::deserialize(d)? {
        Repr::Int(m) => m,
        Repr::Text(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is not an octal mode like \"0660\""))
        })?,
    };
    if m > 0o777 {
        return Err(serde::de::Error::custom("a mode is at most 0o777"));
    }
    Ok(m)
}

fn loopback<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    let a: SocketAddr = s
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an address:port")))?;
    if !a.ip().is_loopback() {
        return Err(serde::de::Error::custom(format!(
            "{a} is not a loopback address: the API is for this machine only"
        )));
    }
    Ok(Some(a))
}

fn sha256_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(serde::de::Error::custom(
            "64 hex digits (the SHA-256 of the token) are required",
        ));
    }
    Ok(s.to_ascii_lowercase())
}

fn url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !(s.starts_with("https://") || s.starts_with("http://")) {
        return Err(serde::de::Error::custom(format!(
            "{s:?} is not an http(s) URL"
        )));
    }
    Ok(s)
}

/// SHA-256 of a token, lowercase hex: what the configuration stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The 1-based line of a byte offset of `text` (toml's spans are byte ranges).
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The dotted key of a `serde_path_to_error` path (`operators[1].name`), leaving out the
/// private fields through which `toml::Spanned` is deserialized.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if k.starts_with("$__") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// `line N, key K: message`, leaving out what is not known.
fn located(text: &str, span: Option<std::ops::Range<usize>>, key: &str, message: &str) -> String {
    match (span.map(|s| line_of(text, s.start)), key.is_empty()) {
        (Some(l), false) => format!("line {l}, key {key}: {message}"),
        (Some(l), true) => format!("line {l}: {message}"),
        (None, false) => format!("key {key}: {message}"),
        (None, true) => message.to_string(),
    }
}

impl Config {
    /// Parse TOML text; every error names the line and, where it can, the key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = dotted(e.path());
                let e = e.into_inner();
                located(text, e.span(), &key, e.message())
            })?;
        let at = |s: std::ops::Range<usize>, key: &str, message: &str| {
            located(text, Some(s), key, message)
        };
        let keys = match raw.keys {
            None => None,
            Some(k) => {
                let span = k.span();
                let k = k.into_inner();
                let chosen = k.keystore.is_some() as u8 + k.psam.is_some() as u8 + k.test as u8;
                if chosen != 1 {
                    return Err(at(
                        span,
                        "keys",
                        "exactly one of keystore, psam or test = true",
                    ));
                }
                if k.test && !raw.test_mode {
                    return Err(at(
                        span,
                        "keys.test",
                        "the test master keys are refused unless test_mode = true",
                    ));
                }
                Some(match (k.keystore, k.psam) {
                    (Some(ks), _) => {
                        let secret = match (ks.passphrase_file, ks.credential) {
                            (Some(p), None) => KeystoreSecretSource::PassphraseFile(p),
                            (None, Some(c)) => KeystoreSecretSource::Credential(c),
                            _ => {
                                return Err(at(
                                    span,
                                    "keys.keystore",
                                    "exactly one of passphrase_file or credential",
                                ))
                            }
                        };
                        KeysConfig::Keystore {
                            path: ks.path,
                            secret,
                        }
                    }
                    (None, Some(p)) => KeysConfig::Psam { reader: p.reader },
                    (None, None) => KeysConfig::Test,
                })
            }
        };
        let mut operators: Vec<Operator> = Vec::new();
        for (i, o) in raw.operators.into_iter().enumerate() {
            let span = o.name.span();
            let name = o.name.into_inner();
            let fail = |field: &str, message: &str| {
                at(span.clone(), &format!("operators[{i}].{field}"), message)
            };
            if name.trim().is_empty() {
                return Err(fail("name", "must not be empty"));
            }
            if operators.iter().any(|x| x.name == name) {
                return Err(fail("name", &format!("operator {name:?} appears twice")));
            }
            if operators.iter().any(|x| x.token_sha256 == o.token_sha256) {
                return Err(fail(
                    "token_sha256",
                    &format!("operator {name:?} shares a token with another"),
                ));
            }
            operators.push(Operator {
                name,
                token_sha256: o.token_sha256,
                role: o.role,
                enabled: o.enabled,
            });
        }
        let max_unauthenticated = match raw.max_unauthenticated {
            // The default never exceeds the connections served.
            None => max_unauth().min(raw.max_connections),
            Some(m) => {
                let (span, m) = (m.span(), m.into_inner());
                if m == 0 || m > raw.max_connections {
                    return Err(at(
                        span,
                        "max_unauthenticated",
                        &format!("{m}: from 1 to max_connections ({})", raw.max_connections),
                    ));
                }
                m
            }
        };
        Ok(Config {
            socket: raw.socket,
            socket_mode: raw.socket_mode,
            tcp: raw.tcp,
            journal: raw.journal,
            terminal_id: raw.terminal_id,
            region: raw.region,
            test_mode: raw.test_mode,
            keys,
            limits: raw.limits,
            blacklist_file: raw.blacklist_file,
            reader_wait_ms: raw.reader_wait_ms,
            line_timeout_ms: raw.line_timeout_ms,
            max_connections: raw.max_connections,
            login_timeout_ms: raw.login_timeout_ms,
            max_unauthenticated,
            idle_timeout_ms: raw.idle_timeout_ms,
            require_pin_pad: raw.require_pin_pad,
            pin_pad_timeout_s: raw.pin_pad_timeout_s,
            backup: raw.backup,
            upload: raw.upload,
            operators,
            serial: raw.serial,
        })
    }

    /// Read and parse a file; errors start with its path.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A configuration for tests and demos: test mode, test keys, no scheduled backups,
    /// defaults elsewhere.
    pub fn test(region: Region, terminal_id: TerminalId) -> Config {
        Config {
            socket: socket(),
            socket_mode: mode(),
            tcp: None,
            journal: journal(),
            terminal_id,
            region,
            test_mode: true,
            keys: Some(KeysConfig::Test),
            limits: Limits::default(),
            blacklist_file: None,
            reader_wait_ms: wait(),
            line_timeout_ms: line_timeout(),
            max_connections: max_conn(),
            login_timeout_ms: login_timeout(),
            max_unauthenticated: max_unauth(),
            idle_timeout_ms: 0,
            require_pin_pad: false,
            pin_pad_timeout_s: pin_pad_timeout(),
            backup: BackupConfig {
                schedule: "off".into(),
                ..BackupConfig::default()
            },
            upload: None,
            operators: Vec::new(),
            serial: Vec::new(),
        }
    }

    /// The operator a token belongs to (compared in constant time).
    pub fn operator_by_token(&self, token: &str) -> Option<&Operator> {
        let h = token_hash(token);
        self.operators
            .iter()
            .find(|o| sscard_driver::crypto::ct_eq(o.token_sha256.as_bytes(), h.as_bytes()))
    }

    /// The operator of that name.
    pub fn operator(&self, name: &str) -> Option<&Operator> {
        self.operators.iter().find(|o| o.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "terminal_id = \"650200000001\"\nregion = \"650200\"\n";

    fn err(extra: &str) -> String {
        Config::parse(&format!("{BASE}{extra}")).unwrap_err()
    }

    #[test]
    fn serial_readers_are_declared_with_their_model_and_speed() {
        let c = Config::parse(&format!(
            "{BASE}[[serial]]\npath = \"/dev/ttyS0\"\n\
             [[serial]]\npath = \"/dev/serial/by-id/usb-Gemalto:x\"\nmodel = \"GemCorePOSPro\"\nbaud = 38400\n"
        ))
        .unwrap();
        assert_eq!(c.serial.len(), 2);
        assert_eq!(
            (c.serial[0].model, c.serial[0].baud),
            (Model::GemPcTwin, 115_200)
        );
        assert_eq!(c.serial[1].model, Model::GemCorePosPro);
        assert_eq!(c.serial[1].baud, 38400);
        assert!(Config::parse(BASE).unwrap().serial.is_empty());
        let e = err("[[serial]]\npath = \"/dev/ttyS0\"\nmodel = \"GemPC\"\n");
        assert!(e.contains("serial") && e.contains("GemPC"), "{e}");
        let e = err("[[serial]]\npath = \"/dev/ttyS0\"\nbaud = 1234\n");
        assert!(e.contains("baud"), "{e}");
        let e = err("[[serial]]\nport = \"/dev/ttyS0\"\n");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn a_serial_argument_splits_at_its_last_colon() {
        let s = SerialConfig::from_arg("/dev/ttyUSB0:GemCorePOSPro").unwrap();
        assert_eq!(
            (s.path, s.model),
            (PathBuf::from("/dev/ttyUSB0"), Model::GemCorePosPro)
        );
        let p = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0";
        let s = SerialConfig::from_arg(&format!("{p}:GemPCTwin")).unwrap();
        assert_eq!(s.path, PathBuf::from(p));
        let s = SerialConfig::from_arg(p).unwrap();
        assert_eq!((s.path, s.model), (PathBuf::from(p), Model::GemPcTwin));
        assert!(SerialConfig::from_arg("").is_err());
    }

    #[test]
    fn minimal_config_has_the_documented_defaults() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/sscard/sscard.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.tcp, None);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.backup.schedule, "weekly");
        assert_eq!(c.backup.retention_weeks, 26);
        assert_eq!(c.keys, None);
        assert_eq!(c.reader_wait_ms, 10_000);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = err("[limits]\nper_transaction_fen = \"x\"\n");
        assert!(
            e.starts_with("line 4, key limits.per_transaction_fen:"),
            "{e}"
        );
        let e = Config::parse("terminal_id = \"zz\"\nregion = \"650200\"\n").unwrap_err();
        assert!(e.starts_with("line 1, key terminal_id:"), "{e}");
        let e = err("reader_wait = 5\n");
        assert!(e.starts_with("line 3") && e.contains("reader_wait"), "{e}");
        let e = err("[limits]\nper_card_per_day_fen = 0\n");
        assert!(
            e.contains("limits.per_card_per_day_fen") && e.contains("positive"),
            "{e}"
        );
        let e = err("[[operators]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nrole = \"cashier\"\n");
        assert!(
            e.starts_with("line 5, key operators[0].token_sha256"),
            "{e}"
        );
        let e = err("[[operators]]\nname = \"a\"\ntoken_sha256 = \"\"\nrole = \"boss\"\n");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn test_keys_need_test_mode_and_one_key_source() {
        let e = err("[keys]\ntest = true\n");
        assert!(e.contains("keys.test") && e.contains("test_mode"), "{e}");
        let e = err("[keys]\npsam = { reader = \"r\" }\ntest = true\n");
        assert!(e.contains("exactly one"), "{e}");
        let c = Config::parse(&format!("{BASE}test_mode = true\n[keys]\ntest = true\n")).unwrap();
        assert_eq!(c.keys, Some(KeysConfig::Test));
        let c = Config::parse(&format!(
            "{BASE}[keys]\nkeystore = {{ path = \"/k\", credential = \"ks\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.keys,
            Some(KeysConfig::Keystore {
                path: "/k".into(),
                secret: KeystoreSecretSource::Credential("ks".into())
            })
        );
        let e = err("[keys]\nkeystore = { path = \"/k\" }\n");
        assert!(e.contains("passphrase_file or credential"), "{e}");
    }

    #[test]
    fn tcp_only_on_loopback_and_modes_in_octal() {
        let c = Config::parse(&format!(
            "{BASE}tcp = \"127.0.0.1:7878\"\nsocket_mode = \"0600\"\n"
        ))
        .unwrap();
        assert_eq!(c.tcp, Some("127.0.0.1:7878".parse().unwrap()));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(
            Config::parse(&format!("{BASE}socket_mode = 0o640\n"))
                .unwrap()
                .socket_mode,
            0o640
        );
        let e = err("tcp = \"0.0.0.0:7878\"\n");
        assert!(e.contains("key tcp") && e.contains("loopback"), "{e}");
        assert!(Config::parse(&format!("{BASE}tcp = \"[::1]:7878\"\n")).is_ok());
        assert!(err("socket_mode = 0o1777\n").contains("socket_mode"));
    }

    #[test]
    fn operators_are_unique_and_found_by_token() {
        let op = |n: &str, t: &str| {
            format!(
                "[[operators]]\nname = \"{n}\"\ntoken_sha256 = \"{}\"\nrole = \"cashier\"\n",
                token_hash(t)
            )
        };
        let e = err(&format!("{}{}", op("a", "t1"), op("a", "t2")));
        assert!(
            e.starts_with("line 8, key operators[1].name") && e.contains("twice"),
            "{e}"
        );
        let e = err(&format!("{}{}", op("a", "t1"), op("b", "t1")));
        assert!(e.contains("shares a token"), "{e}");
        let c = Config::parse(&format!("{BASE}{}{}", op("a", "t1"), op("b", "t2"))).unwrap();
        assert_eq!(
            c.operator_by_token("t2").map(|o| o.name.as_str()),
            Some("b")
        );
        assert!(c.operator_by_token("t3").is_none());
        assert!(c.operators.iter().all(|o| o.enabled));
    }

    #[test]
    fn upload_and_backup_sections_are_checked() {
        let e = err("[upload]\nendpoint = \"ftp://x\"\n");
        assert!(e.contains("upload.endpoint"), "{e}");
        let c = Config::parse(&format!(
            "{BASE}[upload]\nendpoint = \"https://c.example/api\"\n"
        ))
        .unwrap();
        let u = c.upload.unwrap();
        assert_eq!((u.interval_minutes, u.batch_size), (20, 100));
        assert_eq!(u.interval(), std::time::Duration::from_secs(1200));
        assert_eq!((u.retry_min_seconds, u.timeout_seconds), (30, 30));
        let c = Config::parse(&format!(
            "{BASE}[upload]\nendpoint = \"http://127.0.0.1:9/\"\ninterval_seconds = 2\n"
        ))
        .unwrap();
        assert_eq!(
            c.upload.unwrap().interval(),
            std::time::Duration::from_secs(2)
        );
        let e = err("[upload]\nendpoint = \"https://c\"\nbatch_size = 0\n");
        assert!(
            e.contains("upload.batch_size") && e.contains("positive"),
            "{e}"
        );
        assert!(err("[backup]\nschedule = \"hourly\"\n").contains("backup.schedule"));
        assert!(err("[backup]\nretention = 26\n").contains("retention"));
        let e = err("[backup]\nretention_weeks = 0\n");
        assert!(e.contains("backup.retention_weeks"), "{e}");
    }

    #[test]
    fn unknown_key_in_a_nested_table_names_its_line_and_table() {
        let e = err("[keys]\npsam = { reader = \"r\", slot = 1 }\n");
        assert!(e.starts_with("line 4, key keys.psam.slot:"), "{e}");
        assert!(e.contains("unknown field `slot`"), "{e}");
        let e = err("[upload]\nendpoint = \"https://c\"\n\nbatch = 5\n");
        assert!(e.starts_with("line 6, key upload.batch:"), "{e}");
        assert!(e.contains("unknown field `batch`"), "{e}");
    }

    #[test]
    fn wrong_type_names_its_line_and_dotted_key() {
        let e = err("[keys]\npsam = { reader = 7 }\n");
        assert!(e.starts_with("line 4, key keys.psam.reader:"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
        let op = format!(
            "[[operators]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nrole = \"cashier\"\n",
            token_hash("t1")
        );
        let e = err(&format!("{op}{op}")
            .replacen("name = \"a\"", "name = \"b\"", 1)
            .replace(
                "role = \"cashier\"\n[[",
                "role = \"cashier\"\nenabled = \"yes\"\n[[",
            ));
        assert!(e.starts_with("line 7, key operators[0].enabled:"), "{e}");
        let e = err("idle_timeout_ms = -1\n");
        assert!(e.starts_with("line 3, key idle_timeout_ms:"), "{e}");
    }

    #[test]
    fn custom_validation_names_its_line_and_key() {
        let e = err("pin_pad_timeout_s = 200\n");
        assert!(
            e.starts_with("line 3, key pin_pad_timeout_s:") && e.contains("from 5 to 120"),
            "{e}"
        );
        let c = Config::parse(&format!(
            "{BASE}require_pin_pad = true\npin_pad_timeout_s = 45\n"
        ))
        .unwrap();
        assert!(c.require_pin_pad);
        assert_eq!(c.pin_pad_timeout_s, 45);
        let c = Config::parse(BASE).unwrap();
        assert!(!c.require_pin_pad);
        assert_eq!(c.pin_pad_timeout_s, 30);
        let e = err("\n\nlogin_timeout_ms = 99\n");
        assert!(
            e.starts_with("line 5, key login_timeout_ms:") && e.contains("at least 100"),
            "{e}"
        );
        let e = err("[backup]\ndir = \"/b\"\nschedule = \"hourly\"\n");
        assert!(e.starts_with("line 5, key backup.schedule:"), "{e}");
        let e = err("[upload]\nendpoint = \"https://c\"\ninterval_seconds = 0\n");
        assert!(
            e.starts_with("line 5, key upload.interval_seconds:") && e.contains("positive"),
            "{e}"
        );
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!(
            (c.login_timeout_ms, c.max_unauthenticated, c.idle_timeout_ms),
            (10_000, 16, 0)
        );
        let c = Config::parse(&format!(
            "{BASE}login_timeout_ms = 100\nmax_unauthenticated = 64\nidle_timeout_ms = 600000\n"
        ))
        .unwrap();
        assert_eq!(
            (c.login_timeout_ms, c.max_unauthenticated, c.idle_timeout_ms),
            (100, 64, 600_000)
        );
        // The default follows a smaller max_connections.
        let c = Config::parse(&format!("{BASE}max_connections = 4\n")).unwrap();
        assert_eq!(c.max_unauthenticated, 4);
        let e = err("max_connections = 8\nmax_unauthenticated = 9\n");
        assert!(
            e.starts_with("line 4, key max_unauthenticated:") && e.contains("max_connections (8)"),
            "{e}"
        );
        let e = err("max_unauthenticated = 0\n");
        assert!(e.starts_with("line 3, key max_unauthenticated:"), "{e}");
        let t = Config::test("650200".parse().unwrap(), "650200000001".parse().unwrap());
        assert_eq!(
            (t.login_timeout_ms, t.max_unauthenticated, t.idle_timeout_ms),
            (10_000, 16, 0)
        );
    }

    #[test]
    fn post_parse_checks_name_their_line() {
        let e = err("\n[keys]\npsam = { reader = \"r\" }\ntest = true\n");
        assert!(e.starts_with("line 4, key keys:"), "{e}");
        let e = err("[keys]\nkeystore = { path = \"/k\" }\n");
        assert!(e.starts_with("line 3, key keys.keystore:"), "{e}");
        let e = err("[[operators]]\nname = \" \"\n");
        assert!(e.contains("operators[0]"), "{e}");
    }
}
