//! `sscard atr`: parse and explain an ATR, from a card in a reader or given in hex. A
//! malformed ATR is decoded as far as it goes and what is wrong is named
//! ([`Atr::analyse`], as pcsc-tools' `ATR_analysis`); the exit code is then 1.

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::Atr;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard atr                                   the ATR of the card in the reader
  sscard atr 3B6A00005353432D4145532076 31     explain one given in hex
  sscard atr --serial /dev/ttyS0:GemCorePOSPro --slot 1   a PSAM's")]
pub struct Args {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// An ATR in hex to explain instead of reading one.
    hex: Option<String>,
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let bytes = match &a.hex {
        Some(h) => hex::decode(h.replace([' ', ':'], ""))
            .map_err(|_| CliError::usage(format!("not hex: {h:?}")))?,
        None => a.reader.open()?.status()?.atr,
    };
    let analysis =
        Atr::analyse(&bytes).map_err(|e| CliError::failed(format!("invalid ATR: {e}")))?;
    let atr = &analysis.atr;
    let protocols: Vec<String> = atr
        .protocol_numbers()
        .iter()
        .map(|t| format!("T={t}"))
        .collect();
    let problems: Vec<String> = analysis.problems.iter().map(|p| p.to_string()).collect();
    let mut v = serde_json::json!({
        "atr": hex::encode_upper(&bytes),
        "valid": analysis.is_valid(),
        "protocols": protocols,
        "fi": atr.fi(), "di": atr.di(),
        "baud_rate": atr.baud_rate(sscard_driver::atr::DEFAULT_CLOCK_HZ),
        "historical": hex::encode_upper(&atr.historical),
        "problems": problems,
    });
    if analysis.is_valid() {
        out.value(&v, &analysis.describe());
        return Ok(());
    }
    let why = format!(
        "invalid ATR: {}",
        problems.first().map_or("malformed", String::as_str)
    );
    if out.is_json() {
        v["error"] = why.clone().into();
        v["exit_code"] = 1.into();
        out.value(&v, "");
        return Err(CliError::reported(1, why));
    }
    out.value(&v, &analysis.describe());
    Err(CliError::failed(why))
}
