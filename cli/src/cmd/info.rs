//! `sscard info`: what a technician or a clerk wants to know of the card in the reader,
//! in one transaction: its records, the application's state, PIN tries left (VERIFY with
//! Lc = 0, which uses no try; card profile §5), the purse balance, the last
//! transactions of its log (§3), and, given keys, whether it is genuine (INTERNAL
//! AUTHENTICATE, §5). What the card refuses (the balance of a blocked card) is shown
//! as such; the rest still is.

use crate::exit::CliError;
use crate::print::Printer;
use serde_json::{json, Value};
use sscard_driver::app::{self, AppError};
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keyprovider::{KeyProvider, MemorySequence, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::Transaction;
use sscard_driver::TerminalId;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard info                                     records, state, tries, balance, log
  sscard info --test-keys                         and whether the card is genuine
  sscard --json info --serial /dev/ttyUSB0:GemPCPinPad")]
pub struct Args {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// A keystore holding the INT key (a terminal's or an office's), to check that the
    /// card is genuine; with --secret-file.
    #[arg(long, requires = "secret_file", conflicts_with = "test_keys")]
    keystore: Option<PathBuf>,
    /// The keystore's secret (passphrase) file.
    #[arg(long, requires = "keystore")]
    secret_file: Option<PathBuf>,
    /// Check genuineness with the test keys of vectors.json (emulated cards only).
    #[arg(long)]
    test_keys: bool,
}

fn keys(a: &Args, region: sscard_driver::Region) -> Result<Option<Box<dyn KeyProvider>>, CliError> {
    if a.test_keys {
        let tid: TerminalId = "000000000000"
            .parse()
            .map_err(|e| CliError::failed(format!("{e}")))?;
        return Ok(Some(Box::new(SoftwareKeys::test_keys(
            region,
            tid,
            &[KeyPurpose::Int],
        ))));
    }
    let (Some(ks), Some(sf)) = (&a.keystore, &a.secret_file) else {
        return Ok(None);
    };
    let secret =
        KeystoreSecret::from_credential(sf).map_err(|e| CliError::new(5, e.to_string()))?;
    let store = Keystore::open(ks, &secret, false).map_err(|e| CliError::new(5, e.to_string()))?;
    if !store.purposes().contains(&KeyPurpose::Int) {
        return Err(CliError::usage(format!(
            "{}: the keystore has no INT key, which the genuineness check needs",
            ks.display()
        )));
    }
    Ok(Some(Box::new(
        store.into_provider(Box::new(MemorySequence::default())),
    )))
}

/// A value the card gave, or what it said instead.
fn or_refusal<T>(r: Result<T, AppError>, f: impl FnOnce(T) -> Value) -> (Value, String) {
    match r {
        Ok(v) => {
            let j = f(v);
            let t = match &j {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (j, t)
        }
        Err(e) => (
            json!({"unavailable": e.to_string()}),
            format!("unavailable ({e})"),
        ),
    }
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let mut card = a.reader.open()?;
    let mut tx = Transaction::begin(card.as_mut())?;
    let rec = app::read_card(&mut tx)?;
    let mut keys = keys(&a, rec.card_id.region())?;
    let (tries, tries_t) = or_refusal(app::pin_tries_left(&mut tx), |n| json!(n));
    let (balance, balance_t) = or_refusal(app::balance(&mut tx), |b| json!(b));
    let (log, log_t) = match app::transaction_log(&mut tx) {
        Ok(l) => {
            let j: Vec<Value> = l
                .iter()
                .map(|r| {
                    json!({"counter": r.counter, "amount_fen": r.amount,
                           "kind": if r.kind == 0x02 { "load" } else if r.kind == 0x06 { "purchase" } else { "other" },
                           "terminal_id": r.terminal_id, "date": r.date, "time": r.time})
                })
                .collect();
            let t: Vec<String> = l
                .iter()
                .map(|r| {
                    format!(
                        "  #{:<5} {} {} {:>8} fen  {}  terminal {}",
                        r.counter,
                        r.date,
                        r.time,
                        r.amount,
                        if r.kind == 0x02 {
                            "load    "
                        } else {
                            "purchase"
                        },
                        r.terminal_id
                    )
                })
                .collect();
            (json!(j), t)
        }
        Err(e) => (
            json!({"unavailable": e.to_string()}),
            vec![format!("  unavailable ({e})")],
        ),
    };
    let (genuine, genuine_t) = match keys.as_mut() {
        None => (
            Value::Null,
            "not checked (no keys: --keystore or --test-keys)".to_string(),
        ),
        Some(k) => match app::internal_authenticate(&mut tx, k.as_mut(), &rec.card_id) {
            Ok(true) => (json!(true), "yes (internal authentication)".into()),
            Ok(false) => (json!(false), "NO: internal authentication failed".into()),
            Err(e) => (
                json!({"unavailable": e.to_string()}),
                format!("unavailable ({e})"),
            ),
        },
    };
    drop(tx);
    let mut v = serde_json::to_value(&rec).map_err(|e| CliError::failed(e.to_string()))?;
    v["state"] = json!(if rec.blocked { "blocked" } else { "issued" });
    v["pin_tries_left"] = tries;
    v["balance_fen"] = balance;
    v["log"] = log;
    v["genuine"] = genuine;
    if out.is_json() {
        out.value(&v, "");
        return Ok(());
    }
    let fields = [
        ("card id", rec.card_id.to_hex()),
        ("card number", rec.card_number.clone()),
        ("name", rec.name.clone()),
        ("ssn", rec.ssn.clone()),
        ("expires", rec.expiry_date.to_string()),
        ("insured status", rec.insured_status.clone()),
        (
            "state",
            if rec.blocked { "blocked" } else { "issued" }.to_string(),
        ),
        ("PIN tries left", tries_t),
        ("balance (fen)", balance_t),
        ("genuine", genuine_t),
    ];
    out.record(&fields);
    println!("last transactions:");
    if log_t.is_empty() {
        println!("  none");
    }
    for l in log_t {
        println!("{l}");
    }
    Ok(())
}
