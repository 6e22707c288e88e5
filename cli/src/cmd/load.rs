//! `sscard load --amount FEN`: the issuing office puts money on a card's purse (card
//! profile §7) with the LOAD key, the holder's PIN verified first.
//!
//! The office journal holds every load as a pending entry written after INITIALIZE
//! FOR LOAD (card id, amount, the card's online counter and balance before) and before
//! CREDIT goes to the card, closed `completed` (TAC, balance after) or `failed`. A card
//! pulled during CREDIT leaves the entry open: `sscard load --resume` (and any later
//! `sscard load` of that card, first) settles it from the card itself, so that money is
//! never loaded twice (docs/office.md, "Loading money").

use crate::exit::CliError;
use crate::office::Office;
use crate::print::Printer;
use serde_json::{json, Value};
use sscard_driver::app::{self, AppError, LogRecord, Pin};
use sscard_driver::crypto::TXN_LOAD;
use sscard_driver::keyprovider::KeyProvider;
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::Transaction;
use sscard_driver::CardId;
use sscard_journal::office::OfficeEntry;

/// The office's default ceiling of one load, in fen (5,000 yuan): a typing slip of a
/// few zeros is refused; `--max-amount` raises it for the odd large load.
pub const DEFAULT_MAX_FEN: u32 = 500_000;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// The amount to load, in fen (1 yuan = 100 fen).
    #[arg(long, value_name = "FEN", required_unless_present = "resume")]
    amount: Option<u32>,
    /// The largest amount accepted, in fen (the office's ceiling, 500000 = 5,000 yuan,
    /// unless raised here).
    #[arg(long, value_name = "FEN", default_value_t = DEFAULT_MAX_FEN)]
    max_amount: u32,
    /// Only settle the card's unfinished loads (a card pulled during CREDIT) from the
    /// card itself; loads nothing.
    #[arg(long, conflicts_with = "amount")]
    resume: bool,
    /// Read the holder's PIN from standard input instead of the PIN pad or the
    /// terminal.
    #[arg(long)]
    pin_stdin: bool,
    #[command(flatten)]
    keys: crate::office::KeyArgs,
    #[command(flatten)]
    office: crate::office::JournalArgs,
}

/// How an open load was settled.
struct Settled {
    pending: i64,
    seq: i64,
    amount: u64,
    outcome: &'static str,
    how: String,
}

impl Settled {
    fn json(&self) -> Value {
        json!({"pending_seq": self.pending, "journal_seq": self.seq, "amount_fen": self.amount,
               "outcome": self.outcome, "settled_from": self.how})
    }
}

/// Does `l` record the load of `p` (its online counter, amount and terminal)?
fn is_ours(l: &LogRecord, counter: u64, amount: u64, tid: &str) -> bool {
    l.kind == TXN_LOAD
        && u64::from(l.counter) == counter
        && u64::from(l.amount) == amount
        && l.terminal_id == tid
}

/// Decide one open load from the card: its log holding the load (same online counter,
/// amount, terminal) ⇒ completed; another load with that counter, or a log that still
/// reaches back to the card's first transaction (fewer than ten records) without it ⇒
/// failed; else the card's online counter (a fresh INITIALIZE FOR LOAD, never
/// credited) moved past the pending one ⇒ completed, still at it ⇒ failed. `None`: the
/// card cannot tell (the entry stays open).
fn decide(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    id: &CardId,
    p: &OfficeEntry,
) -> Result<Option<(&'static str, String)>, CliError> {
    let (Some(counter), Some(amount), Some(tid)) = (
        p.detail["online_counter"].as_u64(),
        p.detail["amount_fen"].as_u64(),
        p.detail["terminal_id"].as_str(),
    ) else {
        return Ok(None);
    };
    let log = app::transaction_log(tx)?;
    if log.iter().any(|l| is_ours(l, counter, amount, tid)) {
        return Ok(Some(("completed", "the card's transaction log".into())));
    }
    if log
        .iter()
        .any(|l| l.kind == TXN_LOAD && u64::from(l.counter) == counter)
    {
        return Ok(Some((
            "failed",
            "the card's transaction log (another load used that counter)".into(),
        )));
    }
    if log.len() < 10 {
        return Ok(Some((
            "failed",
            "the card's transaction log (it holds every transaction, not this one)".into(),
        )));
    }
    let when = chrono::Local::now().naive_local();
    match app::initialize_load(tx, keys, id, 1, when) {
        // dropped, never credited: only its online counter was wanted
        Ok(probe) if u64::from(probe.online_counter) == counter => Ok(Some((
            "failed",
            "the card's online counter (still at the pending load's)".into(),
        ))),
        Ok(probe) => Ok(Some((
            "completed",
            format!(
                "the card's online counter ({} past the pending load's {counter})",
                probe.online_counter
            ),
        ))),
        Err(e) => {
            tracing::debug!("online counter probe: {e}");
            Ok(None)
        }
    }
}

/// Settle the open loads of card `id` (PIN verified in this selection).
fn settle(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    office: &mut Office,
    id: &CardId,
) -> Result<(Vec<Settled>, usize), CliError> {
    let open = office
        .journal
        .open_items_of("load", &id.to_hex())
        .map_err(|e| office.error(e))?;
    let mut done = Vec::new();
    let mut undecided = 0;
    for p in open {
        let amount = p.detail["amount_fen"].as_u64().unwrap_or_default();
        match decide(tx, keys, id, &p)? {
            Some((outcome, how)) => {
                let balance = app::balance(tx).ok();
                let seq = office.log(
                    "load",
                    &p.card,
                    outcome,
                    Some(p.seq),
                    json!({"amount_fen": amount, "settled_from": how, "balance_now": balance}),
                )?;
                done.push(Settled {
                    pending: p.seq,
                    seq,
                    amount,
                    outcome,
                    how,
                });
            }
            None => undecided += 1,
        }
    }
    Ok((done, undecided))
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let amount = match a.amount {
        None => None,
        Some(0) => return Err(CliError::usage("--amount: a load is at least 1 fen")),
        Some(n) if n > a.max_amount => {
            return Err(CliError::usage(format!(
                "--amount {n} fen is above the office's ceiling of {} fen: check the amount, or raise the ceiling with --max-amount",
                a.max_amount
            )))
        }
        Some(n) => Some(n),
    };
    let mut office = a.office.open()?;
    let mut card = a.reader.open()?;
    let pad = card.capabilities().pin_pad;
    let mut src = super::pin::Source::choose(a.pin_stdin, pad)?;
    // the PIN is asked before the card is taken: nothing waits on the holder mid-transaction
    let pin: Option<Pin> = match &src {
        super::pin::Source::Pad => None,
        _ => Some(src.read("PIN: ")?),
    };
    let mut tx = Transaction::begin(card.as_mut())?;
    if app::select_application(&mut tx)?.blocked {
        return Err(CliError::new(
            4,
            "the application is blocked: no load on a blocked card (sscard card unblock first)",
        ));
    }
    let rec = app::read_card(&mut tx)?;
    let id = rec.card_id;
    let mut keys = a.keys.provider(id.region(), &[KeyPurpose::Load], "load")?;
    // read_card selected the application again: the PIN is verified in that selection
    match &pin {
        Some(p) => app::verify_pin(&mut tx, p),
        None => {
            eprintln!("sscard: the holder types the PIN on the reader's pad now");
            app::verify_pin_on_pad(&mut tx, 30)
        }
    }
    .map_err(super::pin::pin_error)?;
    let (settled, undecided) = settle(&mut tx, keys.as_mut(), &mut office, &id)?;
    for s in &settled {
        eprintln!(
            "sscard: the unfinished load of {} fen (journal entry {}) is settled {} from {}",
            s.amount, s.pending, s.outcome, s.how
        );
    }
    if undecided > 0 {
        return Err(CliError::failed(format!(
            "{undecided} unfinished load(s) of card {} cannot be settled from the card: see docs/office.md, \"Loading money\"; nothing loaded",
            rec.card_number
        )));
    }
    let settled_j: Vec<Value> = settled.iter().map(Settled::json).collect();
    let Some(amount) = amount else {
        let balance = app::balance(&mut tx).ok();
        tx.end_with_reset()?;
        let text = if settled.is_empty() {
            format!("card {}: no unfinished load", rec.card_number)
        } else {
            settled
                .iter()
                .map(|s| {
                    format!(
                        "card {}: load of {} fen (entry {}) {} ({})",
                        rec.card_number, s.amount, s.pending, s.outcome, s.how
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        out.value(
            &json!({"result": "resumed", "card_id": id.to_hex(), "card_number": rec.card_number,
                    "settled": settled_j, "balance_fen": balance}),
            &text,
        );
        return Ok(());
    };
    let when = chrono::Local::now().naive_local();
    let prepared = app::initialize_load(&mut tx, keys.as_mut(), &id, amount, when)?;
    let card_hex = id.to_hex();
    let pending = office.log(
        "load",
        &card_hex,
        "pending",
        None,
        json!({
            "card_number": rec.card_number,
            "amount_fen": amount,
            "online_counter": prepared.online_counter,
            "balance_before": prepared.balance_before,
            "terminal_id": prepared.terminal_id.to_hex(),
            "date": hex::encode(prepared.date),
            "time": hex::encode(prepared.time),
        }),
    )?;
    match prepared.credit(&mut tx) {
        Ok(proof) => {
            let seq = office.log(
                "load",
                &card_hex,
                "completed",
                Some(pending),
                json!({"amount_fen": amount, "tac": proof.tac, "balance_after": proof.balance_after,
                       "online_counter": proof.online_counter}),
            )?;
            tx.end_with_reset()?;
            let j = json!({
                "result": "loaded", "card_id": card_hex, "card_number": rec.card_number,
                "amount_fen": amount, "balance_before": proof.balance_before,
                "balance_after": proof.balance_after, "online_counter": proof.online_counter,
                "tac": proof.tac, "journal_seq": seq, "settled": settled_j,
            });
            if out.is_json() {
                out.value(&j, "");
            } else {
                out.record(&[
                    ("card", format!("{} ({card_hex})", rec.card_number)),
                    ("loaded (fen)", amount.to_string()),
                    ("balance before", proof.balance_before.to_string()),
                    ("balance after", proof.balance_after.to_string()),
                    ("TAC", proof.tac.clone()),
                    ("journal entry", seq.to_string()),
                ]);
            }
            Ok(())
        }
        Err(e @ AppError::Uncertain { .. }) => {
            let msg = format!(
                "the card left during CREDIT ({e}): whether {amount} fen were loaded is unknown, the load stays open (journal entry {pending}). Put the card back and run sscard load --resume; do not load again before"
            );
            if out.is_json() {
                out.value(
                    &json!({"result": "uncertain", "card_id": card_hex, "amount_fen": amount,
                            "journal_seq": pending, "error": msg, "exit_code": 3,
                            "next": "sscard load --resume"}),
                    "",
                );
                return Err(CliError::reported(3, msg));
            }
            Err(CliError::new(3, msg))
        }
        Err(e) => {
            let err = CliError::from(e);
            office.log(
                "load",
                &card_hex,
                "failed",
                Some(pending),
                json!({"amount_fen": amount, "error": err.message()}),
            )?;
            Err(err.context("CREDIT FOR LOAD refused, nothing loaded"))
        }
    }
}
