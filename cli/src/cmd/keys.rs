//! `sscard keys create|show|derive` (alias `sscard keystore`): the office's and the
//! terminals' keystores and the key hierarchy of card profile §4
//! (`docs/key-hierarchy.md`).
//!
//! A keystore is written 0600 whatever the umask. Keys are shown by their check values
//! (`AES-ECB(K, 01 × 16)[0..3]`, §4); a key itself is printed only with `--reveal`, and
//! only when standard output is a terminal (never into a file or a pipe, where it would
//! stay).

use crate::exit::CliError;
use crate::print::Printer;
use serde_json::json;
use sscard_driver::crypto;
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::{CardId, Region};
use std::io::IsTerminal;
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

/// Where the master keys K1 come from.
#[derive(clap::Args)]
struct MasterArgs {
    /// JSON file {"EXT": "<32 hex>", …} with the national master keys K1.
    #[arg(long, conflicts_with = "test_keys", value_name = "FILE")]
    master_keys: Option<PathBuf>,
    /// Use the test master keys of vectors.json (tests and demos only).
    #[arg(long)]
    test_keys: bool,
    /// Purposes: a terminal EXT,INT,PURCHASE; an office `all` (EXT,…,TAC).
    #[arg(long, default_value = "EXT,INT,PURCHASE")]
    purposes: String,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Create a keystore of a city's K3 keys, derived from master keys K1.
    ///
    /// Example: `sscard keys create --out office.keystore --region 650200
    /// --terminal-id 650200000009 --purposes all --master-keys k1.json --secret-file pass`
    Create {
        /// Output file (written 0600).
        #[arg(long)]
        out: PathBuf,
        /// Region (6 digits) whose city keys to derive.
        #[arg(long)]
        region: String,
        /// Terminal id (12 hex digits).
        #[arg(long)]
        terminal_id: String,
        #[command(flatten)]
        masters: MasterArgs,
        /// File holding the passphrase (first line), or a 32-byte credential.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// Show a keystore: region, terminal id, purposes and their check values.
    ///
    /// Example: `sscard keys show --keystore office.keystore --secret-file pass`
    Show {
        #[arg(long)]
        keystore: PathBuf,
        #[arg(long)]
        secret_file: PathBuf,
        /// Print the keys themselves too (only onto a terminal).
        #[arg(long)]
        reveal: bool,
    },
    /// Derive K2 (province) and K3 (city) of a region, and Kc of a card, from master
    /// keys; shows their check values (to compare with a keystore's or a card
    /// vendor's).
    ///
    /// Example: `sscard keys derive --region 650200 --master-keys k1.json --purposes all
    /// --card-id 650200D1560000050011223344556677`
    Derive {
        #[arg(long)]
        region: String,
        #[command(flatten)]
        masters: MasterArgs,
        /// Also derive the card keys Kc of this card id (32 hex digits).
        #[arg(long)]
        card_id: Option<String>,
        /// Print the keys themselves too (only onto a terminal).
        #[arg(long)]
        reveal: bool,
    },
}

fn purposes(list: &str) -> Result<Vec<KeyPurpose>, CliError> {
    if list.eq_ignore_ascii_case("all") {
        return Ok(KeyPurpose::ALL.to_vec());
    }
    list.split(',')
        .map(|p| {
            KeyPurpose::from_name(p.trim()).ok_or_else(|| {
                CliError::usage(format!(
                    "unknown purpose {p:?}: EXT, INT, MAINT, PIN, PURCHASE, LOAD, TAC or all"
                ))
            })
        })
        .collect()
}

fn masters(a: &MasterArgs) -> Result<Vec<(KeyPurpose, Key16)>, CliError> {
    let purposes = purposes(&a.purposes)?;
    if a.test_keys {
        let m = test_master_keys();
        return Ok(purposes.iter().map(|p| (*p, m.get(*p).clone())).collect());
    }
    let f = a
        .master_keys
        .as_ref()
        .ok_or_else(|| CliError::usage("--master-keys FILE or --test-keys"))?;
    let text = Zeroizing::new(
        std::fs::read_to_string(f)
            .map_err(|e| CliError::new(5, format!("{}: {e}", f.display())))?,
    );
    // no serde error text: it could quote the file
    let v: std::collections::HashMap<String, Zeroizing<String>> = serde_json::from_str(&text)
        .map_err(|_| CliError::new(5, format!("{}: not a JSON object of hex keys", f.display())))?;
    purposes
        .iter()
        .map(|p| {
            v.get(p.name())
                .and_then(|h| Key16::from_hex(h).ok())
                .map(|k| (*p, k))
                .ok_or_else(|| {
                    CliError::new(
                        5,
                        format!("{}: no valid key {} (32 hex digits)", f.display(), p.name()),
                    )
                })
        })
        .collect()
}

fn region(s: &str) -> Result<Region, CliError> {
    s.parse()
        .map_err(|e| CliError::usage(format!("--region: {e}")))
}

fn kcv(k: &Key16) -> String {
    hex::encode_upper(crypto::kcv(k))
}

/// `--reveal` is honoured only onto a terminal.
fn may_reveal(reveal: bool) -> Result<bool, CliError> {
    if reveal && !std::io::stdout().is_terminal() {
        return Err(CliError::usage(
            "--reveal prints keys only onto a terminal, not into a file or a pipe",
        ));
    }
    Ok(reveal)
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    match a.cmd {
        Sub::Create {
            out: path,
            region: r,
            terminal_id,
            masters: m,
            secret_file,
        } => {
            let region = region(&r)?;
            let tid = terminal_id
                .parse()
                .map_err(|e| CliError::usage(format!("--terminal-id: {e}")))?;
            let masters = masters(&m)?;
            let secret = KeystoreSecret::from_credential(&secret_file)
                .map_err(|e| CliError::new(5, e.to_string()))?;
            let ks = Keystore::from_master_keys(region, tid, &masters);
            ks.save(&path, &secret)
                .map_err(|e| CliError::new(5, e.to_string()))?;
            out.record(&[
                ("keystore", path.display().to_string()),
                ("region", region.to_string()),
                (
                    "purposes",
                    masters
                        .iter()
                        .map(|(p, _)| p.name())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]);
            Ok(())
        }
        Sub::Show {
            keystore,
            secret_file,
            reveal,
        } => {
            let reveal = may_reveal(reveal)?;
            let secret = KeystoreSecret::from_credential(&secret_file)
                .map_err(|e| CliError::new(5, e.to_string()))?;
            let store = Keystore::open(&keystore, &secret, false)
                .map_err(|e| CliError::new(5, e.to_string()))?;
            let (region, tid) = (store.region, store.terminal_id.to_hex());
            let keys = store.into_keys();
            let rows: Vec<serde_json::Value> = keys
                .iter()
                .map(|(p, k)| {
                    let mut r = json!({"purpose": p.name(), "level": "K3", "kcv": kcv(k)});
                    if reveal {
                        r["key"] = hex::encode_upper(k.expose()).into();
                    }
                    r
                })
                .collect();
            let text = table(&rows, reveal);
            out.value(
                &json!({"keystore": keystore.display().to_string(), "region": region.to_string(),
                        "terminal_id": tid, "keys": rows}),
                &format!(
                    "keystore     {}\nregion       {region}\nterminal id  {tid}\n{text}",
                    keystore.display()
                ),
            );
            Ok(())
        }
        Sub::Derive {
            region: r,
            masters: m,
            card_id,
            reveal,
        } => {
            let reveal = may_reveal(reveal)?;
            let region = region(&r)?;
            let card: Option<CardId> = card_id
                .map(|c| {
                    c.parse()
                        .map_err(|e| CliError::usage(format!("--card-id: {e}")))
                })
                .transpose()?;
            if let Some(c) = &card {
                if c.region() != region {
                    return Err(CliError::usage(format!(
                        "--card-id {} is of region {}, not {region}",
                        c.to_hex(),
                        c.region()
                    )));
                }
            }
            let mut rows = Vec::new();
            for (p, k1) in masters(&m)? {
                let k2 = crypto::derive_k2(&k1, region);
                let k3 = crypto::derive_k3(&k2, region);
                let mut levels = vec![("K1", k1.clone()), ("K2", k2), ("K3", k3.clone())];
                if let Some(c) = &card {
                    levels.push(("Kc", crypto::derive_card_key(&k3, c)));
                }
                for (level, k) in levels {
                    let mut r = json!({"purpose": p.name(), "level": level, "kcv": kcv(&k)});
                    if reveal {
                        r["key"] = hex::encode_upper(k.expose()).into();
                    }
                    rows.push(r);
                }
            }
            let text = table(&rows, reveal);
            let mut doc = json!({"region": region.to_string(), "keys": rows});
            if let Some(c) = &card {
                doc["card_id"] = c.to_hex().into();
            }
            out.value(&doc, &format!("region  {region}\n{text}"));
            Ok(())
        }
    }
}

fn table(rows: &[serde_json::Value], reveal: bool) -> String {
    let mut s = format!(
        "{:<9} {:<5} {:<6}{}",
        "purpose",
        "level",
        "kcv",
        if reveal { " key" } else { "" }
    );
    for r in rows {
        s.push_str(&format!(
            "\n{:<9} {:<5} {:<6}",
            r["purpose"].as_str().unwrap_or_default(),
            r["level"].as_str().unwrap_or_default(),
            r["kcv"].as_str().unwrap_or_default()
        ));
        if let Some(k) = r["key"].as_str() {
            s.push(' ');
            s.push_str(k);
        }
    }
    s
}
