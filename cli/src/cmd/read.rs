//! `sscard read`: read the card's records (EF05, EF06, EF15) through the reader.

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::app;
use sscard_driver::transport::Transaction;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard read                      the card in the only reader holding one
  sscard --json read --reader 'Gemalto PC Twin Reader 00 00'
  sscard read --serial /dev/ttyUSB0:GemPCTwin")]
pub struct Args {
    #[command(flatten)]
    reader: super::ReaderArgs,
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let mut card = a.reader.open()?;
    let mut tx = Transaction::begin(card.as_mut())?;
    let rec = app::read_card(&mut tx)?;
    let v = serde_json::to_value(&rec).map_err(|e| CliError::failed(e.to_string()))?;
    let fields = [
        ("card id", rec.card_id.to_hex()),
        ("card number", rec.card_number.clone()),
        ("card type", rec.card_type.clone()),
        ("spec version", rec.spec_version.clone()),
        ("issued", rec.issue_date.to_string()),
        ("expires", rec.expiry_date.to_string()),
        ("name", rec.name.clone()),
        ("ssn", rec.ssn.clone()),
        ("gender", rec.gender.clone()),
        ("nation", rec.nation.clone()),
        ("birthplace", rec.birthplace.clone()),
        ("birth date", rec.birth_date.to_string()),
        ("insured category", rec.insured_category.clone()),
        ("pooling region", rec.pooling_region.clone()),
        ("insured status", rec.insured_status.clone()),
        ("blocked", rec.blocked.to_string()),
    ];
    if out.is_json() {
        out.value(&v, "");
    } else {
        out.record(&fields);
    }
    Ok(())
}
