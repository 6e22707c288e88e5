//! `sscard atr`: parse and explain an ATR, from a card in a reader or given in hex.

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::transport::CardTransport;
use sscard_driver::Atr;

#[derive(clap::Args)]
pub struct Args {
    /// Reader name (default: the only reader holding a card).
    #[arg(long)]
    reader: Option<String>,
    /// An ATR in hex to explain instead of reading one.
    hex: Option<String>,
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let bytes = match &a.hex {
        Some(h) => hex::decode(h.replace([' ', ':'], ""))
            .map_err(|_| CliError::usage(format!("not hex: {h:?}")))?,
        None => super::connect(a.reader.as_deref())?.status()?.atr,
    };
    let atr = Atr::parse(&bytes).map_err(|e| CliError::failed(format!("invalid ATR: {e}")))?;
    let protocols: Vec<String> = atr
        .protocol_numbers()
        .iter()
        .map(|t| format!("T={t}"))
        .collect();
    out.value(
        &serde_json::json!({
            "atr": hex::encode_upper(&bytes),
            "protocols": protocols,
            "fi": atr.fi(), "di": atr.di(),
            "baud_rate": atr.baud_rate(sscard_driver::atr::DEFAULT_CLOCK_HZ),
            "historical": hex::encode_upper(&atr.historical),
        }),
        &atr.describe(),
    );
    Ok(())
}
