//! `sscard personalize`: an issuing office's batch. For each personalization record,
//! wait for a blank card, take it to ISSUED, print the outcome, wait for its removal.
//! The issuance journal makes a restarted batch skip what was issued
//! (`docs/personalization.md`).

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keys::Key16;
use sscard_driver::personalize::{IssuanceJournal, IssuerKeys, Outcome, PersoRecord};
use sscard_driver::transport::pcsc::{PcscContext, ShareMode};
use sscard_driver::transport::{CardTransport, Transaction};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// JSON file: an array of personalization records.
    #[arg(long)]
    records: PathBuf,
    /// Issuance journal (SQLite), created if missing.
    #[arg(long)]
    journal: PathBuf,
    /// Reader holding the cards.
    #[arg(long)]
    reader: String,
    /// Office keystore (all seven purposes) and its secret file.
    #[arg(long, requires = "secret_file", conflicts_with = "test_keys")]
    keystore: Option<PathBuf>,
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// File with the manufacturer's batch key K_MANUF (32 hex digits).
    #[arg(long, conflicts_with = "test_keys")]
    manufacturer_key: Option<PathBuf>,
    /// Test keys of vectors.json (tests and demos only).
    #[arg(long)]
    test_keys: bool,
    /// Region of the test keys.
    #[arg(long, default_value = "650200")]
    region: String,
    /// How long to wait for each card, in seconds.
    #[arg(long, default_value_t = 120)]
    wait: u64,
}

fn keys(a: &Args) -> Result<IssuerKeys, CliError> {
    issuer_keys(
        a.test_keys,
        &a.region,
        a.keystore.as_deref(),
        a.secret_file.as_deref(),
        a.manufacturer_key.as_deref(),
    )
}

/// The issuer's keys: the test keys of `region`, or an office keystore, its secret and
/// the manufacturer's batch key (also `sscard card replace`'s).
pub(crate) fn issuer_keys(
    test_keys: bool,
    region: &str,
    keystore: Option<&std::path::Path>,
    secret_file: Option<&std::path::Path>,
    manufacturer_key: Option<&std::path::Path>,
) -> Result<IssuerKeys, CliError> {
    if test_keys {
        let region = region
            .parse()
            .map_err(|e| CliError::usage(format!("--region: {e}")))?;
        return Ok(IssuerKeys::test_keys(region));
    }
    let (Some(ks), Some(sf), Some(mk)) = (keystore, secret_file, manufacturer_key) else {
        return Err(CliError::usage(
            "--keystore, --secret-file and --manufacturer-key, or --test-keys",
        ));
    };
    let secret =
        KeystoreSecret::from_credential(sf).map_err(|e| CliError::new(5, e.to_string()))?;
    let store = Keystore::open(ks, &secret, true).map_err(|e| CliError::new(5, e.to_string()))?;
    let region = store.region;
    let text = std::fs::read_to_string(mk)
        .map_err(|e| CliError::new(5, format!("{}: {e}", mk.display())))?;
    let k_manuf = Key16::from_hex(text.trim())
        .map_err(|e| CliError::new(5, format!("{}: {e}", mk.display())))?;
    IssuerKeys::new(region, store.into_keys(), k_manuf).map_err(|e| CliError::new(5, e.to_string()))
}

fn wait_card(
    ctx: &PcscContext,
    reader: &str,
    present: bool,
    wait: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + wait;
    loop {
        let now = ctx
            .reader_states()?
            .into_iter()
            .find(|r| r.name == reader)
            .map(|r| r.card_present)
            .unwrap_or(false);
        if now == present {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::new(
                3,
                format!(
                    "no card {} in {reader}",
                    if present { "inserted" } else { "removed" }
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&a.records)
        .map_err(|e| CliError::new(5, format!("{}: {e}", a.records.display())))?;
    let records: Vec<PersoRecord> = serde_json::from_str(&text)
        .map_err(|e| CliError::new(5, format!("{}: {e}", a.records.display())))?;
    let keys = keys(&a)?;
    let journal = IssuanceJournal::open(&a.journal).map_err(|e| CliError::new(5, e.to_string()))?;
    let ctx = PcscContext::establish()?;
    let mut failed = 0;
    for (i, rec) in records.iter().enumerate() {
        if let Ok(Some((_, id, state))) = journal.get(&rec.card_number) {
            if state == "issued" {
                let o = Outcome::AlreadyIssued {
                    card_number: rec.card_number.clone(),
                    card_id: id,
                };
                out.value(
                    &serde_json::to_value(&o).unwrap_or_default(),
                    &format!("{}: already issued", rec.card_number),
                );
                continue;
            }
        }
        if !out.is_json() {
            eprintln!(
                "[{}/{}] insert a blank card for {} in {}",
                i + 1,
                records.len(),
                rec.card_number,
                a.reader
            );
        }
        wait_card(&ctx, &a.reader, true, Duration::from_secs(a.wait))?;
        let outcome = {
            let mut card = ctx.connect(&a.reader, ShareMode::Exclusive, None)?;
            let outcome = {
                let mut tx = Transaction::begin(&mut card)?;
                journal.issue(&mut tx, &keys, rec)
            };
            // a card written here ends with a reset, so that every program sharing the
            // reader (a daemon's presentation cache) sees a new presentation
            if let Err(e) = card.reset() {
                tracing::debug!("reset after personalization: {e}");
            }
            outcome
        };
        let text = match &outcome {
            Outcome::Issued {
                card_number,
                card_id,
            } => format!("{card_number}: issued as {card_id}"),
            Outcome::AlreadyIssued { card_number, .. } => format!("{card_number}: already issued"),
            Outcome::Failed {
                card_number,
                reason,
            } => {
                failed += 1;
                format!("{card_number}: FAILED: {reason}")
            }
        };
        out.value(&serde_json::to_value(&outcome).unwrap_or_default(), &text);
        if i + 1 < records.len() {
            wait_card(&ctx, &a.reader, false, Duration::from_secs(a.wait))?;
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} card(s) failed")));
    }
    Ok(())
}
