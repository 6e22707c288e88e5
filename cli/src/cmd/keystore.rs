//! `sscard keystore create`: derive a city's K3 keys from master keys and write them
//! to an encrypted keystore file (`docs/key-hierarchy.md`).

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::testkeys::test_master_keys;
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Create a keystore from master keys K1 and a region.
    Create {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Region (6 digits) whose city keys to derive.
        #[arg(long)]
        region: String,
        /// Terminal id (12 hex digits).
        #[arg(long)]
        terminal_id: String,
        /// Purposes: a terminal EXT,INT,PURCHASE; an office all (EXT,…,TAC).
        #[arg(long, default_value = "EXT,INT,PURCHASE")]
        purposes: String,
        /// JSON file {"EXT": "<32 hex>", …} with the master keys K1.
        #[arg(long, conflicts_with = "test_keys")]
        master_keys: Option<PathBuf>,
        /// Use the test master keys of vectors.json (tests and demos only).
        #[arg(long)]
        test_keys: bool,
        /// File holding the passphrase (first line), or a 32-byte credential.
        #[arg(long)]
        secret_file: PathBuf,
    },
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let Sub::Create {
        out: path,
        region,
        terminal_id,
        purposes,
        master_keys,
        test_keys,
        secret_file,
    } = a.cmd;
    let region = region
        .parse()
        .map_err(|e| CliError::usage(format!("--region: {e}")))?;
    let tid = terminal_id
        .parse()
        .map_err(|e| CliError::usage(format!("--terminal-id: {e}")))?;
    let purposes: Vec<KeyPurpose> = if purposes.eq_ignore_ascii_case("all") {
        KeyPurpose::ALL.to_vec()
    } else {
        purposes
            .split(',')
            .map(|p| {
                KeyPurpose::from_name(p.trim())
                    .ok_or_else(|| CliError::usage(format!("unknown purpose {p:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    let masters: Vec<(KeyPurpose, Key16)> = if test_keys {
        let m = test_master_keys();
        purposes.iter().map(|p| (*p, m.get(*p).clone())).collect()
    } else {
        let f = master_keys.ok_or_else(|| CliError::usage("--master-keys FILE or --test-keys"))?;
        let text = Zeroizing::new(
            std::fs::read_to_string(&f)
                .map_err(|e| CliError::new(5, format!("{}: {e}", f.display())))?,
        );
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CliError::new(5, format!("{}: not JSON: {e}", f.display())))?;
        purposes
            .iter()
            .map(|p| {
                v[p.name()]
                    .as_str()
                    .and_then(|h| Key16::from_hex(h).ok())
                    .map(|k| (*p, k))
                    .ok_or_else(|| {
                        CliError::new(5, format!("{}: no valid key {}", f.display(), p.name()))
                    })
            })
            .collect::<Result<_, _>>()?
    };
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
            purposes
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]);
    Ok(())
}
