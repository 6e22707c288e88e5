//! `sscard card update|block|unblock|replace`: the issuing office's changes to a card it
//! holds (card profile §5, §9), each written to the office journal (docs/office.md).
//!
//! - `update` rewrites EF15 (insured status, category, pooling region) with UPDATE
//!   RECORD and the MAINT key; the old values are read first, the new ones checked
//!   before anything goes to the card.
//! - `block` / `unblock`: APPLICATION BLOCK / UNBLOCK with the MAINT key, the loss
//!   report on a card the office holds and its reversal.
//! - `replace`: a new blank card personalized with the holder's record and, once it is
//!   ISSUED, the old card number on the office blacklist, as one office-journal
//!   operation (`card.replace` pending, then completed together with the blacklist row).
//!
//! Every command that writes a card ends its transaction with a card reset, so that a
//! daemon sharing the reader reads the card again.

use crate::exit::CliError;
use crate::office::{JournalArgs, KeyArgs};
use crate::print::Printer;
use serde_json::{json, Value};
use sscard_driver::app::{self, AppError, CardRecord};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::personalize::{IssuanceJournal, Outcome, PersoRecord};
use sscard_driver::transport::{CardTransport, Transaction};
use sscard_driver::Region;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum CardCommand {
    /// Rewrite the card's insurance (EF15) with the MAINT key. Example: `sscard card
    /// update --insured-status 02 --keystore office.ks --secret-file office.secret
    /// --journal office.db`
    Update(UpdateArgs),
    /// Block the card's application (a loss report on a card the office holds), with
    /// the MAINT key. Example: `sscard card block --reason "reported lost" --keystore
    /// office.ks --secret-file office.secret --journal office.db`
    Block(BlockArgs),
    /// Unblock the card's application (the loss report reversed), with the MAINT key.
    /// Example: `sscard card unblock --reason "found by the holder" --keystore office.ks
    /// --secret-file office.secret --journal office.db`
    Unblock(BlockArgs),
    /// Personalize a new blank card for a holder and put the old card number on the
    /// office blacklist, as one journaled operation; `--resume` finishes an interrupted
    /// one. Example: `sscard card replace --old A65020001 --records new.json --keystore
    /// office.ks --secret-file office.secret --manufacturer-key kmanuf --journal
    /// office.db`
    Replace(ReplaceArgs),
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// The insured status: 01 active, 02 suspended.
    #[arg(long, value_name = "01|02")]
    insured_status: String,
    /// The insured category: 01 employee, 02 resident.
    #[arg(long, value_name = "CC")]
    insured_category: Option<String>,
    /// The pooling region (6-digit region code).
    #[arg(long, value_name = "NNNNNN")]
    pooling_region: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    office: JournalArgs,
}

#[derive(clap::Args)]
pub struct BlockArgs {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// Why, for the office journal (e.g. "reported lost by the holder").
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    office: JournalArgs,
}

#[derive(clap::Args)]
pub struct ReplaceArgs {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// The card number of the card being replaced (lost, damaged); it goes on the
    /// office blacklist once the new card is issued.
    #[arg(long, value_name = "CARDNO", required_unless_present = "resume")]
    old: Option<String>,
    /// JSON file with the new card's personalization record (one record, as an object
    /// or an array of one; the format of `sscard personalize`).
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    records: Option<PathBuf>,
    /// Finish the unfinished replacement of the office journal (the new card back in
    /// the reader; --records again if its personalization had not finished).
    #[arg(long)]
    resume: bool,
    /// With --resume: give the unfinished replacement up (its new card not issued);
    /// the old card stays off the blacklist.
    #[arg(long, requires = "resume")]
    cancel: bool,
    #[command(flatten)]
    keys: KeyArgs,
    /// With --keystore: the manufacturer's batch key K_MANUF file (32 hex digits).
    #[arg(long, value_name = "PATH", conflicts_with = "test_keys")]
    manufacturer_key: Option<PathBuf>,
    #[command(flatten)]
    office: JournalArgs,
}

pub fn run(c: CardCommand, out: &Printer) -> Result<(), CliError> {
    match c {
        CardCommand::Update(a) => update(a, out),
        CardCommand::Block(a) => block(a, true, out),
        CardCommand::Unblock(a) => block(a, false, out),
        CardCommand::Replace(a) => replace(a, out),
    }
}

/// `digits` decimal digits (BCD on the card), or a usage error naming `flag`.
fn digits(flag: &str, v: &str, n: usize) -> Result<Vec<u8>, CliError> {
    if v.len() != n || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CliError::usage(format!(
            "{flag} {v:?}: {n} digits expected"
        )));
    }
    hex::decode(v).map_err(|_| CliError::usage(format!("{flag} {v:?}: {n} digits expected")))
}

/// One EF15 record to write: tag, field name, old and new value, BCD bytes.
struct Change {
    tag: u8,
    field: &'static str,
    old: String,
    new: String,
    value: Vec<u8>,
}

/// The card's records (a blank or foreign card said so).
fn read_card(tx: &mut Transaction<'_>) -> Result<CardRecord, CliError> {
    app::read_card(tx).map_err(|e| match e {
        AppError::NotSupported(m) => {
            CliError::failed(format!("{m}: this is not an issued social-security card"))
        }
        other => CliError::from(other),
    })
}

fn update(a: UpdateArgs, out: &Printer) -> Result<(), CliError> {
    // everything checked before the card is touched
    let status = match a.insured_status.as_str() {
        "01" | "02" => digits("--insured-status", &a.insured_status, 2)?,
        other => {
            return Err(CliError::usage(format!(
                "--insured-status {other:?}: 01 (active) or 02 (suspended)"
            )))
        }
    };
    let category = match a.insured_category.as_deref() {
        None => None,
        Some(c @ ("01" | "02")) => Some((c.to_string(), digits("--insured-category", c, 2)?)),
        Some(other) => {
            return Err(CliError::usage(format!(
                "--insured-category {other:?}: 01 (employee) or 02 (resident)"
            )))
        }
    };
    let region = match a.pooling_region.as_deref() {
        None => None,
        Some(r) => {
            let bcd = digits("--pooling-region", r, 6)?;
            let _: Region = r
                .parse()
                .map_err(|e| CliError::usage(format!("--pooling-region {r:?}: {e}")))?;
            Some((r.to_string(), bcd))
        }
    };
    let mut office = a.office.open()?;
    let mut card = a.reader.open()?;
    let mut tx = Transaction::begin(card.as_mut())?;
    let rec = read_card(&mut tx)?;
    if rec.blocked {
        return Err(CliError::new(
            4,
            format!(
                "card {} is blocked, its insurance cannot be changed: unblock it first (sscard card unblock)",
                rec.card_number
            ),
        ));
    }
    let mut wanted = vec![(
        0x22,
        "insured_status",
        rec.insured_status.clone(),
        a.insured_status.clone(),
        status,
    )];
    if let Some((c, v)) = category {
        wanted.push((0x20, "insured_category", rec.insured_category.clone(), c, v));
    }
    if let Some((r, v)) = region {
        wanted.push((0x21, "pooling_region", rec.pooling_region.clone(), r, v));
    }
    let (changes, same): (Vec<Change>, Vec<Change>) = wanted
        .into_iter()
        .map(|(tag, field, old, new, value)| Change {
            tag,
            field,
            old,
            new,
            value,
        })
        .partition(|c| c.old != c.new);
    let id = rec.card_id;
    let fields = |cs: &[Change]| -> Value {
        cs.iter()
            .map(|c| (c.field.to_string(), json!({"old": c.old, "new": c.new})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let unchanged: Vec<&str> = same.iter().map(|c| c.field).collect();
    let mut written: Vec<&str> = Vec::new();
    let done = if changes.is_empty() {
        Ok(())
    } else {
        let mut keys = a
            .keys
            .provider(id.region(), &[KeyPurpose::Maint], "card update")?;
        app::select_ef(&mut tx, 0xEF15)
            .map_err(CliError::from)
            .and_then(|_| {
                for c in &changes {
                    app::update_record(&mut tx, keys.as_mut(), &id, c.tag, &c.value).map_err(
                        |e| CliError::from(e).context(format!("UPDATE RECORD {}", c.field)),
                    )?;
                    written.push(c.field);
                }
                Ok(())
            })
    };
    // what the card holds now, read back
    let after = match &done {
        Ok(()) if !changes.is_empty() => Some(read_card(&mut tx)),
        _ => None,
    };
    let done = match (done, after) {
        (Ok(()), Some(Ok(r))) => {
            let now = [
                ("insured_status", r.insured_status),
                ("insured_category", r.insured_category),
                ("pooling_region", r.pooling_region),
            ];
            match changes
                .iter()
                .find(|c| now.iter().any(|(f, v)| *f == c.field && *v != c.new))
            {
                Some(c) => Err(CliError::failed(format!(
                    "the card reads back {} different from {} after UPDATE RECORD",
                    c.field, c.new
                ))),
                None => Ok(()),
            }
        }
        (Ok(()), Some(Err(e))) => Err(e.context("reading the card back")),
        (r, _) => r,
    };
    let outcome = match (&done, changes.is_empty()) {
        (Ok(()), true) => "unchanged",
        (Ok(()), false) => "completed",
        (Err(_), _) => "failed",
    };
    let mut detail = json!({
        "card_number": rec.card_number,
        "changes": fields(&changes),
        "unchanged": unchanged,
    });
    if let Err(e) = &done {
        detail["error"] = json!(e.message());
        detail["written"] = json!(written);
    }
    let command = "card.update";
    let seq = office.log(command, &id.to_hex(), outcome, None, detail)?;
    if let Err(e) = done {
        // a card written in part is reset all the same
        if let Err(r) = tx.end_with_reset() {
            tracing::debug!("reset after a failed {command}: {r}");
        }
        return Err(e);
    }
    tx.end_with_reset()?;
    let j = json!({
        "result": if changes.is_empty() { "unchanged" } else { "updated" },
        "card_id": id.to_hex(),
        "card_number": rec.card_number,
        "changes": fields(&changes),
        "unchanged": unchanged,
        "journal_seq": seq,
    });
    if out.is_json() {
        out.value(&j, "");
        return Ok(());
    }
    if changes.is_empty() {
        println!(
            "card {}: nothing to change (the card already holds these values)",
            rec.card_number
        );
        return Ok(());
    }
    println!("card {} ({}) updated:", rec.card_number, id.to_hex());
    let w = changes.iter().map(|c| c.field.len()).max().unwrap_or(0);
    for c in &changes {
        println!("  {:<w$}  {} -> {}", c.field, c.old, c.new);
    }
    Ok(())
}

fn block(a: BlockArgs, blocking: bool, out: &Printer) -> Result<(), CliError> {
    let (command, verb, state) = if blocking {
        ("card.block", "blocked", "blocked")
    } else {
        ("card.unblock", "unblocked", "issued")
    };
    if a.reason.trim().is_empty() {
        return Err(CliError::usage("--reason: say why, for the office journal"));
    }
    let mut office = a.office.open()?;
    let mut card = a.reader.open()?;
    let mut tx = Transaction::begin(card.as_mut())?;
    let rec = read_card(&mut tx)?;
    let id = rec.card_id;
    let detail = json!({"card_number": rec.card_number, "reason": a.reason});
    if rec.blocked == blocking {
        let seq = office.log(command, &id.to_hex(), "unchanged", None, detail)?;
        drop(tx);
        let text = format!(
            "card {} is already {verb}: nothing sent to the card (journaled)",
            rec.card_number
        );
        out.value(
            &json!({"result": format!("already {verb}"), "changed": false, "state": state,
                    "card_id": id.to_hex(), "card_number": rec.card_number, "journal_seq": seq}),
            &text,
        );
        return Ok(());
    }
    let mut keys = a.keys.provider(
        id.region(),
        &[KeyPurpose::Maint],
        if blocking {
            "card block"
        } else {
            "card unblock"
        },
    )?;
    let done = if blocking {
        app::block_application(&mut tx, keys.as_mut(), &id)
    } else {
        app::unblock_application(&mut tx, keys.as_mut(), &id)
    };
    // the card's own word on its state afterwards
    let now = done
        .as_ref()
        .ok()
        .map(|_| app::select_application(&mut tx).map(|s| s.blocked));
    let done: Result<(), CliError> = match (done, now) {
        (Ok(()), Some(Ok(b))) if b == blocking => Ok(()),
        (Ok(()), Some(Ok(_))) => Err(CliError::failed(format!(
            "the card answered 9000 but is not {verb} when selected again"
        ))),
        (Ok(()), Some(Err(e))) => Err(CliError::from(e).context("selecting the card again")),
        (Ok(()), None) => Ok(()),
        (Err(e), _) => Err(CliError::from(e)),
    };
    let mut detail = detail;
    let outcome = match &done {
        Ok(()) => "completed",
        Err(e) => {
            detail["error"] = json!(e.message());
            "failed"
        }
    };
    let seq = office.log(command, &id.to_hex(), outcome, None, detail)?;
    if let Err(e) = done {
        // a card written in part is reset all the same
        if let Err(r) = tx.end_with_reset() {
            tracing::debug!("reset after a failed {command}: {r}");
        }
        return Err(e);
    }
    tx.end_with_reset()?;
    out.value(
        &json!({"result": verb, "changed": true, "state": state, "card_id": id.to_hex(),
                "card_number": rec.card_number, "journal_seq": seq}),
        &format!("card {} ({}) {verb}", rec.card_number, id.to_hex()),
    );
    Ok(())
}

/// A card number (card profile §3, EF05 07): 9 printable ASCII characters.
fn card_number(flag: &str, v: &str) -> Result<String, CliError> {
    if v.len() != 9 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CliError::usage(format!(
            "{flag} {v:?}: a card number is 9 letters and digits (e.g. A65020001)"
        )));
    }
    Ok(v.to_string())
}

/// The one record of a records file (as `sscard personalize` reads them: CSV, a JSON
/// array, or one JSON object).
fn one_record(path: &std::path::Path) -> Result<PersoRecord, CliError> {
    let mut recs = super::personalize::read_records(path)?;
    if recs.len() != 1 {
        return Err(CliError::usage(format!(
            "{}: a replacement takes one record, the file has {}",
            path.display(),
            recs.len()
        )));
    }
    Ok(recs.remove(0))
}

fn replace(a: ReplaceArgs, out: &Printer) -> Result<(), CliError> {
    let rec = a.records.as_deref().map(one_record).transpose()?;
    let mut office = a.office.open()?;
    let open = office
        .journal
        .open_items("card.replace")
        .map_err(|e| office.error(e))?;
    let mut card: Option<Box<dyn CardTransport>> = None;
    let (pending, old, new) = if a.resume {
        let mine: Vec<_> = open
            .iter()
            .filter(|e| a.old.is_none() || a.old.as_deref() == Some(e.card.as_str()))
            .collect();
        let p = match mine.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(CliError::failed(match &a.old {
                    Some(o) => format!("no unfinished replacement of {o} in the office journal"),
                    None => {
                        "no unfinished replacement in the office journal: nothing to resume".into()
                    }
                }))
            }
            many => {
                return Err(CliError::usage(format!(
                    "several unfinished replacements ({}): choose one with --old",
                    many.iter()
                        .map(|e| e.card.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let new = p.detail["new"].as_str().unwrap_or_default().to_string();
        if let Some(r) = &rec {
            if r.card_number != new {
                return Err(CliError::usage(format!(
                    "--records holds card number {}, the unfinished replacement of {} is by {new}",
                    r.card_number, p.card
                )));
            }
        }
        (p.seq, p.card.clone(), new)
    } else {
        let old = card_number("--old", a.old.as_deref().unwrap_or_default())?;
        let Some(r) = &rec else {
            return Err(CliError::usage("--records FILE: the new card's record"));
        };
        if let Some(p) = open.first() {
            return Err(CliError::failed(format!(
                "the replacement of {} by {} (office journal entry {}) is unfinished: put its new card in the reader and run sscard card replace --resume",
                p.card,
                p.detail["new"].as_str().unwrap_or("?"),
                p.seq
            )));
        }
        if r.card_number == old {
            return Err(CliError::usage(
                "the new card needs a card number of its own: --records holds the old one",
            ));
        }
        let issuance = IssuanceJournal::open(&a.office.journal)
            .map_err(|e| CliError::new(5, e.to_string()))?;
        if let Ok(Some((_, id, state))) = issuance.get(&r.card_number) {
            if state == "issued" {
                return Err(CliError::failed(format!(
                    "card number {} is already issued (card {id}): a replacement gets a new card number",
                    r.card_number
                )));
            }
        }
        // the new card must be there before the replacement begins
        card = Some(a.reader.open()?);
        let seq = office.log(
            "card.replace",
            &old,
            "pending",
            None,
            json!({"old": old, "new": r.card_number}),
        )?;
        (seq, old, r.card_number.clone())
    };
    let issuance =
        IssuanceJournal::open(&a.office.journal).map_err(|e| CliError::new(5, e.to_string()))?;
    let issued = match issuance.get(&new) {
        Ok(Some((_, id, state))) if state == "issued" => Some(id),
        Ok(_) => None,
        Err(e) => return Err(CliError::new(5, e.to_string())),
    };
    if a.cancel {
        if let Some(id) = issued {
            return Err(CliError::failed(format!(
                "the new card {new} is already issued (card {id}): the replacement cannot be given up; run --resume without --cancel to finish it"
            )));
        }
        let seq = office.log(
            "card.replace",
            &old,
            "failed",
            Some(pending),
            json!({"old": old, "new": new, "error": "given up by the operator"}),
        )?;
        out.value(
            &json!({"result": "cancelled", "old": old, "new": new, "journal_seq": seq}),
            &format!(
                "the replacement of {old} by {new} is given up; {old} stays off the blacklist"
            ),
        );
        return Ok(());
    }
    let card_id = match issued {
        // issued by the interrupted run: only the blacklist is left
        Some(id) => id,
        None => {
            let Some(rec) = &rec else {
                return Err(CliError::usage(format!(
                    "the new card {new} is not issued yet: give --records FILE again to finish its personalization"
                )));
            };
            let region = rec.region.clone();
            let keys = super::personalize::issuer_keys(
                a.keys.test_keys,
                &region,
                a.keys.keystore.as_deref(),
                a.keys.secret_file.as_deref(),
                a.manufacturer_key.as_deref(),
            )?;
            let mut card = match card.take() {
                Some(c) => c,
                None => a.reader.open()?,
            };
            let outcome = {
                let mut tx = Transaction::begin(card.as_mut())?;
                let o = issuance.issue(&mut tx, &keys, rec);
                if let Err(e) = tx.end_with_reset() {
                    tracing::debug!("reset after personalization: {e}");
                }
                o
            };
            match outcome {
                Outcome::Issued { card_id, .. } | Outcome::AlreadyIssued { card_id, .. } => card_id,
                Outcome::Failed { reason, .. } => {
                    return Err(replace_failed(card.as_mut(), &new, &reason))
                }
            }
        }
    };
    let seq = office
        .journal
        .replace_completed(
            &office.operator.clone(),
            pending,
            &old,
            &new,
            json!({"card_id": card_id}),
        )
        .map_err(|e| {
            office.error(e).context(format!(
                "{new} is issued (card {card_id}) but {old} is not on the blacklist yet: fix the journal's problem and run sscard card replace --resume"
            ))
        })?;
    let text = format!(
        "card {old} replaced by {new} (card {card_id}): {new} issued, {old} on the office blacklist"
    );
    out.value(
        &json!({"result": "replaced", "old": old, "new": new, "card_id": card_id,
                "blacklisted": old, "journal_seq": seq, "resumed": a.resume}),
        &text,
    );
    Ok(())
}

/// A personalization that did not reach ISSUED: the replacement stays open, to be
/// finished with `--resume` (the same card put back, or another blank card when this
/// one refused) or given up with `--resume --cancel`.
fn replace_failed(card: &mut dyn CardTransport, new: &str, reason: &str) -> CliError {
    let still_there = Transaction::begin(card)
        .ok()
        .and_then(|mut tx| app::chip_serial(&mut tx).ok())
        .is_some();
    if still_there {
        CliError::failed(format!(
            "personalizing {new} failed: {reason}. The replacement stays open: put another blank card in the reader and run sscard card replace --resume --records FILE (or give it up with --resume --cancel)"
        ))
    } else {
        CliError::new(
            3,
            format!(
                "personalizing {new} was interrupted ({reason}): put the new card back in the reader and run sscard card replace --resume --records FILE"
            ),
        )
    }
}
