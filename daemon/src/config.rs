//! Configuration (TOML, `/etc/sscard/sscardd.toml` by default). Bad config is refused at
//! start with a message naming the key and line.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A staff role (api.md "Sessions and roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Cashier,
    Supervisor,
    Auditor,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Cashier => "cashier",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Whether the role may call `method` (api.md role table).
    pub fn may(self, method: &str) -> bool {
        use Role::*;
        match method {
            "system.health" | "session.login" | "reader.list" | "events.subscribe" => true,
            "card.read" | "card.verify_pin" | "card.change_pin" | "card.balance" | "pay.debit" => {
                matches!(self, Cashier | Supervisor)
            }
            "pay.query" | "settle.day" => {
                matches!(self, Cashier | Supervisor | Auditor)
                    && (method != "settle.day" || self != Cashier)
            }
            "pay.refund" => self == Supervisor,
            "audit.query" => matches!(self, Auditor | Admin),
            _ => false,
        }
    }
}

/// An operator: name, SHA-256 of the token (hex), role, enabled.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub name: String,
    pub token_sha256: String,
    pub role: Role,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Limits in fen.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "per_txn")]
    pub per_transaction_fen: u64,
    #[serde(default = "per_day")]
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

/// The daemon's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "socket")]
    pub socket: PathBuf,
    #[serde(default = "journal")]
    pub journal: PathBuf,
    /// 12 hex digits.
    pub terminal_id: String,
    /// The terminal's city.
    pub region: String,
    #[serde(default)]
    pub limits: Limits,
    /// Milliseconds a request may wait for its reader before READER_BUSY.
    #[serde(default = "wait")]
    pub reader_wait_ms: u64,
    #[serde(default)]
    pub operators: Vec<Operator>,
    /// Use the test keys of vectors.json (tests, demos; refused unless `test_mode`).
    #[serde(default)]
    pub test_keys: bool,
    #[serde(default)]
    pub test_mode: bool,
}

fn socket() -> PathBuf {
    PathBuf::from("/run/sscard/sscard.sock")
}
fn journal() -> PathBuf {
    PathBuf::from("/var/lib/sscard/journal.db")
}
fn wait() -> u64 {
    10_000
}

/// SHA-256 of a token, hex: what the config stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Config {
    /// Parse TOML text; errors name the key and the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            format!("line {line}: {}", e.message())
        })?;
        c.terminal_id
            .parse::<sscard_driver::TerminalId>()
            .map_err(|e| format!("terminal_id: {e}"))?;
        c.region
            .parse::<sscard_driver::Region>()
            .map_err(|e| format!("region: {e}"))?;
        if c.test_keys && !c.test_mode {
            return Err("test_keys: the test master keys are refused outside test_mode".into());
        }
        for o in &c.operators {
            if o.token_sha256.len() != 64 || hex::decode(&o.token_sha256).is_err() {
                return Err(format!("operators.{}.token_sha256: 64 hex digits", o.name));
            }
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The operator a token belongs to.
    pub fn operator_by_token(&self, token: &str) -> Option<&Operator> {
        let h = token_hash(token);
        self.operators
            .iter()
            .find(|o| sscard_driver::crypto::ct_eq(o.token_sha256.as_bytes(), h.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_key_and_line() {
        let e = Config::parse("terminal_id = \"650200000001\"\nregion = \"650200\"\nlimits = { per_transaction_fen = \"x\" }\n").unwrap_err();
        assert!(e.starts_with("line 3"), "{e}");
        let e = Config::parse("terminal_id = \"zz\"\nregion = \"650200\"\n").unwrap_err();
        assert!(e.contains("terminal_id"), "{e}");
        let e = Config::parse(
            "terminal_id = \"650200000001\"\nregion = \"650200\"\ntest_keys = true\n",
        )
        .unwrap_err();
        assert!(e.contains("test_mode"), "{e}");
    }

    #[test]
    fn roles() {
        assert!(Role::Cashier.may("pay.debit"));
        assert!(!Role::Cashier.may("pay.refund"));
        assert!(!Role::Cashier.may("settle.day"));
        assert!(Role::Supervisor.may("pay.refund"));
        assert!(!Role::Auditor.may("card.read"));
        assert!(Role::Auditor.may("audit.query"));
        assert!(!Role::Admin.may("pay.debit"));
    }
}
