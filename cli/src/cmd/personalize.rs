//! `sscard personalize`: the issuing office's cards. One card from flags, or a batch
//! of records from a CSV file (columns in docs/office.md) or a JSON array. For each
//! record: wait for a blank card, take it to ISSUED, print the outcome, wait for its
//! removal; a progress bar on a terminal, a summary at the end (and in `--report`).
//! The issuance journal makes a restarted batch skip what was issued and resume a card
//! left part-way (`docs/personalization.md`); each card's outcome is also an entry of
//! the office journal (same file).

use crate::exit::CliError;
use crate::office::JournalArgs;
use crate::print::Printer;
use serde_json::{json, Value};
use sscard_driver::keyprovider::keystore::{Keystore, KeystoreSecret};
use sscard_driver::keys::Key16;
use sscard_driver::personalize::{read_status, IssuanceJournal, IssuerKeys, Outcome, PersoRecord};
use sscard_driver::transport::pcsc::{PcscContext, ShareMode};
use sscard_driver::transport::{CardTransport, Transaction};
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard personalize --records batch-2026-12-04.csv --journal office.db --reader 'ACS ACR39U 00 00' \\
      --keystore office.keystore --secret-file pass --manufacturer-key kmanuf --report day.json
  echo 135790 | sscard personalize --card-number A65020123 --ssn 650102199212123456 --name 王五 \\
      --gender 1 --birth-date 1992-12-12 --region 650200 --insured-category 01 --pin-stdin \\
      --journal office.db --test-keys")]
pub struct Args {
    /// Records: a CSV file with a header row (docs/office.md lists the columns) or a
    /// JSON array of records.
    #[arg(long, required_unless_present = "card_number")]
    records: Option<PathBuf>,
    #[command(flatten)]
    one: OneCard,
    #[command(flatten)]
    office: JournalArgs,
    /// Reader holding the cards (default: the only PC/SC reader).
    #[arg(long)]
    reader: Option<String>,
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
    #[arg(long = "test-region", default_value = "650200")]
    test_region: String,
    /// How long to wait for each card, in seconds.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Write the batch's summary report (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// One card from flags (instead of --records); its initial PIN from the terminal (no
/// echo) or --pin-stdin.
#[derive(clap::Args)]
struct OneCard {
    /// Card number (9 characters).
    #[arg(long, conflicts_with = "records")]
    card_number: Option<String>,
    /// Social security number (18 characters).
    #[arg(long, requires = "card_number")]
    ssn: Option<String>,
    /// The holder's name (UTF-8; written in GBK).
    #[arg(long, requires = "card_number")]
    name: Option<String>,
    /// 1 male, 2 female, 9 unstated.
    #[arg(long, requires = "card_number")]
    gender: Option<String>,
    /// Nation (2 digits; default 01).
    #[arg(long, requires = "card_number")]
    nation: Option<String>,
    /// Birthplace (6 digits; default the region).
    #[arg(long, requires = "card_number")]
    birthplace: Option<String>,
    /// YYYY-MM-DD.
    #[arg(long, requires = "card_number")]
    birth_date: Option<String>,
    /// YYYY-MM-DD (default today).
    #[arg(long, requires = "card_number")]
    issue_date: Option<String>,
    /// YYYY-MM-DD (default ten years after the issue date).
    #[arg(long, requires = "card_number")]
    expiry_date: Option<String>,
    /// 01 employee, 02 resident.
    #[arg(long, requires = "card_number")]
    insured_category: Option<String>,
    /// Pooling region (6 digits; default the region).
    #[arg(long, requires = "card_number")]
    pooling_region: Option<String>,
    /// 01 active (default), 02 suspended.
    #[arg(long, requires = "card_number")]
    insured_status: Option<String>,
    /// The issuing city's region code (6 digits).
    #[arg(long, requires = "card_number")]
    region: Option<String>,
    /// Read the initial PIN from standard input (else asked on the terminal, twice).
    #[arg(long, requires = "card_number")]
    pin_stdin: bool,
}

/// The columns of a records file, in the order of `PersoRecord`.
pub const COLUMNS: [&str; 14] = [
    "card_number",
    "ssn",
    "name",
    "gender",
    "nation",
    "birthplace",
    "birth_date",
    "issue_date",
    "expiry_date",
    "insured_category",
    "pooling_region",
    "insured_status",
    "region",
    "pin",
];

/// A record from named fields; the error names the record and the field, never a value.
fn record(fields: serde_json::Map<String, Value>, what: &str) -> Result<PersoRecord, CliError> {
    let rec: PersoRecord =
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            let field = e.path().to_string();
            let why = e.into_inner().to_string();
            // serde's "invalid value" messages can quote the value (a PIN): name the field
            let why = if why.starts_with("missing field") || why.starts_with("unknown field") {
                why
            } else {
                "invalid value".into()
            };
            CliError::new(5, format!("{what}: {field}: {why}"))
        })?;
    rec.records()
        .and_then(|_| rec.region())
        .map_err(|e| CliError::new(5, format!("{what}: {e}")))?;
    Ok(rec)
}

/// The records of a file: CSV with a header row, a JSON array, or one JSON object.
pub(crate) fn read_records(path: &std::path::Path) -> Result<Vec<PersoRecord>, CliError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| CliError::new(5, format!("{}: {e}", path.display())))?,
    );
    if text.trim_start().starts_with('{') {
        let row: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .map_err(|_| CliError::new(5, format!("{}: not a JSON record", path.display())))?;
        return Ok(vec![record(row, &path.display().to_string())?]);
    }
    if text.trim_start().starts_with('[') {
        let rows: Vec<serde_json::Map<String, Value>> =
            serde_json::from_str(&text).map_err(|_| {
                CliError::new(
                    5,
                    format!("{}: not a JSON array of records", path.display()),
                )
            })?;
        return rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| record(r, &format!("{} record {}", path.display(), i + 1)))
            .collect();
    }
    let mut rdr = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| CliError::new(5, format!("{}: {e}", path.display())))?
        .iter()
        .map(str::to_string)
        .collect();
    if let Some(h) = header.iter().find(|h| !COLUMNS.contains(&h.as_str())) {
        return Err(CliError::new(
            5,
            format!(
                "{}: unknown column {h:?} (columns: {})",
                path.display(),
                COLUMNS.join(",")
            ),
        ));
    }
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.map_err(|e| CliError::new(5, format!("{}: {e}", path.display())))?;
        let line = row.position().map_or(0, |p| p.line());
        let fields = header
            .iter()
            .zip(row.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        out.push(record(fields, &format!("{} line {line}", path.display()))?);
    }
    Ok(out)
}

fn one_card(o: &OneCard) -> Result<PersoRecord, CliError> {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    };
    put("card_number", &o.card_number);
    put("ssn", &o.ssn);
    put("name", &o.name);
    put("gender", &o.gender);
    put("birth_date", &o.birth_date);
    put("insured_category", &o.insured_category);
    put("insured_status", &o.insured_status);
    put("region", &o.region);
    let region = o.region.clone().unwrap_or_default();
    m.insert(
        "nation".into(),
        o.nation.clone().unwrap_or("01".into()).into(),
    );
    m.insert(
        "birthplace".into(),
        o.birthplace.clone().unwrap_or(region.clone()).into(),
    );
    m.insert(
        "pooling_region".into(),
        o.pooling_region.clone().unwrap_or(region).into(),
    );
    let issue = match &o.issue_date {
        Some(d) => chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|_| CliError::usage("--issue-date: YYYY-MM-DD"))?,
        None => chrono::Local::now().date_naive(),
    };
    let expiry = match &o.expiry_date {
        Some(d) => d.clone(),
        None => issue
            .checked_add_months(chrono::Months::new(120))
            .unwrap_or(issue)
            .to_string(),
    };
    m.insert("issue_date".into(), issue.to_string().into());
    m.insert("expiry_date".into(), expiry.into());
    let pin = read_pin(o.pin_stdin)?;
    m.insert("pin".into(), Value::String(pin.to_string()));
    record(m, "the card's flags")
        .map_err(|e| CliError::usage(e.message().replace("the card's flags: ", "--")))
}

fn read_pin(stdin: bool) -> Result<Zeroizing<String>, CliError> {
    let check = |p: Zeroizing<String>| {
        if (4..=12).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) {
            Ok(p)
        } else {
            Err(CliError::usage("the initial PIN is 4 to 12 digits"))
        }
    };
    if stdin {
        let mut s = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut s)
            .map_err(|e| CliError::new(5, format!("standard input: {e}")))?;
        return check(Zeroizing::new(s.trim_end_matches(['\r', '\n']).to_string()));
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| {
                CliError::usage(format!(
                    "no terminal to type the initial PIN on ({e}): use --pin-stdin"
                ))
            })
    };
    let p = ask("Initial PIN: ")?;
    if *ask("Initial PIN again: ")? != *p {
        return Err(CliError::usage("the two PINs differ"));
    }
    check(p)
}

fn keys(a: &Args) -> Result<IssuerKeys, CliError> {
    issuer_keys(
        a.test_keys,
        &a.test_region,
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

/// The reader for the batch: `--reader`, else the only PC/SC reader.
fn pick_reader(ctx: &PcscContext, reader: &Option<String>) -> Result<String, CliError> {
    if let Some(r) = reader {
        return Ok(r.clone());
    }
    let all = ctx.reader_states()?;
    match all.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(CliError::new(
            3,
            "no PC/SC reader: plug one in (sscard readers)",
        )),
        _ => Err(CliError::usage(format!(
            "several readers; choose the one for the blank cards with --reader: {}",
            all.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Connect to the card in `reader`, exclusively. A reader busy for a moment (pcscd
/// still finishing with a program killed mid-command) is waited for, up to `wait`.
fn connect(
    ctx: &PcscContext,
    reader: &str,
    wait: Duration,
) -> Result<sscard_driver::transport::pcsc::PcscCard, CliError> {
    let deadline = Instant::now() + wait;
    loop {
        match ctx.connect(reader, ShareMode::Exclusive, None) {
            Err(sscard_driver::TransportError::Busy) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            r => return r.map_err(|e| CliError::from(e).context(format!("reader {reader}"))),
        }
    }
}

/// What came of one record.
enum Step {
    Done(Outcome),
    /// The card in the reader is another record's (issued): it must go first.
    Foreign(String),
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let records = match &a.records {
        Some(path) => read_records(path)?,
        None => vec![one_card(&a.one)?],
    };
    let keys = keys(&a)?;
    let journal =
        IssuanceJournal::open(&a.office.journal).map_err(|e| CliError::new(5, e.to_string()))?;
    let mut office = a.office.open()?;
    let ctx = PcscContext::establish()?;
    let reader = pick_reader(&ctx, &a.reader)?;
    let started = chrono::Utc::now();
    let bar = (!out.is_json() && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(records.len() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{pos}/{len} [{bar:30}] {elapsed} {msg}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b
    });
    let say = |m: String| match &bar {
        Some(b) => b.set_message(m),
        None if !out.is_json() => eprintln!("{m}"),
        None => {}
    };
    let mut outcomes: Vec<Value> = Vec::new();
    let (mut issued, mut already, mut failed) = (0usize, 0usize, 0usize);
    for (i, rec) in records.iter().enumerate() {
        let outcome = loop {
            if let Ok(Some((_, id, state))) = journal.get(&rec.card_number) {
                if state == "issued" {
                    break Outcome::AlreadyIssued {
                        card_number: rec.card_number.clone(),
                        card_id: id,
                    };
                }
            }
            say(format!(
                "[{}/{}] insert a blank card for {} in {reader}",
                i + 1,
                records.len(),
                rec.card_number
            ));
            wait_card(&ctx, &reader, true, Duration::from_secs(a.wait))?;
            let step = {
                let mut card = connect(&ctx, &reader, Duration::from_secs(a.wait))?;
                let step = {
                    let mut tx = Transaction::begin(&mut card)?;
                    // a card this journal issued to another record is not this record's
                    // blank: it is to be taken out, not refused as a failure
                    let bound = read_status(&mut tx)
                        .ok()
                        .and_then(|(serial, _)| {
                            journal
                                .card_number_of_chip(&hex::encode_upper(serial))
                                .ok()
                                .flatten()
                        })
                        .filter(|n| {
                            *n != rec.card_number
                                && matches!(journal.get(n), Ok(Some((_, _, s))) if s == "issued")
                        });
                    match bound {
                        Some(other) => Step::Foreign(other),
                        None => Step::Done(journal.issue(&mut tx, &keys, rec)),
                    }
                };
                // a card written here ends with a reset, so that every program sharing the
                // reader (a daemon's presentation cache) sees a new presentation
                if let Err(e) = card.reset() {
                    tracing::debug!("reset after personalization: {e}");
                }
                step
            };
            match step {
                Step::Done(o) => break o,
                Step::Foreign(other) => {
                    say(format!(
                        "the card in {reader} is {other}'s (issued): take it out"
                    ));
                    wait_card(&ctx, &reader, false, Duration::from_secs(a.wait))?;
                }
            }
        };
        let (text, entry) = match &outcome {
            Outcome::Issued {
                card_number,
                card_id,
            } => {
                issued += 1;
                (
                    format!("{card_number}: issued as {card_id}"),
                    Some(("issued", json!({"card_id": card_id}))),
                )
            }
            Outcome::AlreadyIssued { card_number, .. } => {
                already += 1;
                (format!("{card_number}: already issued"), None)
            }
            Outcome::Failed {
                card_number,
                reason,
            } => {
                failed += 1;
                (
                    format!("{card_number}: FAILED: {reason}"),
                    Some(("failed", json!({"reason": reason}))),
                )
            }
        };
        if let Some((o, detail)) = entry {
            office.log("personalize", &rec.card_number, o, None, detail)?;
        }
        let v = serde_json::to_value(&outcome).unwrap_or_default();
        match &bar {
            Some(b) => {
                b.suspend(|| out.value(&v, &text));
                b.inc(1);
            }
            None => out.value(&v, &text),
        }
        outcomes.push(v);
        if i + 1 < records.len() && !matches!(outcome, Outcome::AlreadyIssued { .. }) {
            say(format!(
                "take the card of {} out of {reader}",
                rec.card_number
            ));
            wait_card(&ctx, &reader, false, Duration::from_secs(a.wait))?;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let summary = json!({
        "summary": {
            "records": records.len(), "issued": issued, "already_issued": already, "failed": failed,
            "reader": reader, "operator": office.operator,
            "started": started.to_rfc3339(), "finished": chrono::Utc::now().to_rfc3339(),
        }
    });
    if let Some(path) = &a.report {
        let mut report = summary.clone();
        report["cards"] = Value::Array(outcomes);
        std::fs::write(path, format!("{report:#}\n"))
            .map_err(|e| CliError::new(5, format!("report {}: {e}", path.display())))?;
    }
    out.value(
        &summary,
        &format!(
            "{} records: {issued} issued, {already} already issued, {failed} failed",
            records.len()
        ),
    );
    if failed > 0 {
        return Err(CliError::reported(1, format!("{failed} card(s) failed")));
    }
    Ok(())
}
