//! `sscard sw XXXX`: what a status word means (card profile §5).

use crate::exit::CliError;
use crate::print::Printer;
use sscard_driver::StatusWord;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard sw 63C1                                  wrong PIN, 1 try left
  sscard --json sw 9401")]
pub struct Args {
    /// Four hex digits, e.g. 6A82.
    code: String,
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let raw = u16::from_str_radix(a.code.trim(), 16)
        .ok()
        .filter(|_| a.code.trim().len() == 4)
        .ok_or_else(|| CliError::usage(format!("not a status word: {:?}", a.code)))?;
    let sw = StatusWord::from(raw);
    out.record(&[
        ("sw", format!("{:04X}", sw.code())),
        ("meaning", sw.to_string()),
        ("kind", format!("{:?}", sw.kind())),
    ]);
    Ok(())
}
