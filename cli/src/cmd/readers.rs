//! `sscard readers`: the PC/SC readers, whether a card is in each, and its ATR.

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::transport::pcsc::PcscContext;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: Args, out: &Printer) -> Result<(), CliError> {
    let ctx = PcscContext::establish()?;
    let readers = ctx.reader_states()?;
    let json: Vec<_> = readers
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "backend": "pcsc", "card_present": r.card_present,
                "atr": hex::encode_upper(&r.atr),
            })
        })
        .collect();
    let mut text = String::new();
    for r in &readers {
        text.push_str(&format!(
            "{}\t{}\n",
            r.name,
            if r.card_present {
                format!("card {}", hex::encode_upper(&r.atr))
            } else {
                "empty".into()
            }
        ));
    }
    if readers.is_empty() {
        text.push_str("no readers\n");
    }
    out.value(&serde_json::Value::Array(json), text.trim_end());
    Ok(())
}
