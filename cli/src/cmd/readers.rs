//! `sscard readers`: the PC/SC readers, and the serial readers named with `--serial`,
//! whether a card is in each (every slot of a serial reader), its ATR, and whether the
//! reader has a PIN pad (PC/SC part 10 `FEATURE_VERIFY_PIN_DIRECT`, asked on the
//! card's connection, so unknown for an empty PC/SC reader; or the serial model's).

use crate::exit::CliError;
use crate::print::Printer;
use serde_json::{json, Value};
use sscard_driver::transport::pcsc::PcscContext;
use sscard_driver::transport::serial::model::split_spec;
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{CardTransport, TransportError};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard readers                                  every PC/SC reader, card, ATR, PIN pad
  sscard readers --serial /dev/ttyS0:GemCorePOSPro   and the slots of a serial reader
  sscard --json readers")]
pub struct Args {
    /// A serial reader `PATH[:MODEL]` to look at too (GemPCTwin, GemPCPinPad,
    /// GemCorePOSPro, GemCoreSIMPro; split at the last colon), repeatable. A port
    /// sscardd is using is busy.
    #[arg(long = "serial", value_name = "PATH[:MODEL]")]
    serial: Vec<String>,
}

/// One line of the listing.
fn entry(
    name: &str,
    backend: &str,
    present: bool,
    atr: &[u8],
    pin_pad: Option<bool>,
) -> (Value, String) {
    let v = json!({"name": name, "backend": backend, "card_present": present,
                   "atr": hex::encode_upper(atr), "pin_pad": pin_pad});
    let t = format!(
        "{name}\t{}{}",
        if present {
            format!("card {}", hex::encode_upper(atr))
        } else {
            "empty".into()
        },
        if pin_pad == Some(true) {
            "\tPIN pad"
        } else {
            ""
        }
    );
    (v, t)
}

/// Every slot of the serial reader `spec`: (entries, or the reason it could not be
/// looked at).
fn serial(spec: &str) -> Result<Vec<(Value, String)>, TransportError> {
    let (path, model) = split_spec(spec);
    let r = SerialReader::open(path, model)?;
    let mut out = Vec::new();
    for p in r.poll()? {
        let name = format!("{} {path} {}", model.name(), p.slot);
        // a card present is powered to show its ATR
        let atr = if p.present && p.atr.is_empty() {
            r.connect(p.slot)
                .and_then(|mut s| s.status())
                .map(|s| s.atr)
                .unwrap_or_default()
        } else {
            p.atr
        };
        let (mut v, t) = entry(&name, "serial", p.present, &atr, Some(model.pin_pad()));
        v["slot"] = json!(p.slot);
        v["firmware"] = json!(r.firmware());
        out.push((v, t));
    }
    Ok(out)
}

pub fn run(a: Args, out: &Printer) -> Result<(), CliError> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    // without pcscd the serial readers are still listed
    let pcsc = PcscContext::establish().and_then(|ctx| Ok((ctx.reader_states()?, ctx)));
    match pcsc {
        Ok((readers, ctx)) => rows.extend(readers.iter().map(|r| {
            // asked on the card's connection: unknown (null) without a card
            let pad = if r.card_present {
                ctx.reader_features(&r.name).map(|f| f.pin_pad())
            } else {
                None
            };
            entry(&r.name, "pcsc", r.card_present, &r.atr, pad)
        })),
        Err(e) if a.serial.is_empty() => return Err(e.into()),
        Err(e) => notes.push(format!("PC/SC: {e}")),
    }
    for spec in &a.serial {
        match serial(spec) {
            Ok(r) => rows.extend(r),
            Err(e) => return Err(CliError::from(e).context(format!("serial reader {spec}"))),
        }
    }
    let json: Vec<Value> = rows.iter().map(|(v, _)| v.clone()).collect();
    let mut text: Vec<String> = rows.into_iter().map(|(_, t)| t).collect();
    if text.is_empty() {
        text.push("no readers".into());
    }
    text.extend(notes);
    out.value(&Value::Array(json), &text.join("\n"));
    Ok(())
}
