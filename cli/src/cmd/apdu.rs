//! `sscard apdu HEX…` and `sscard script FILE`: raw command APDUs to the card, with the
//! T=0 rules applied (`61xx` answered with GET RESPONSE, `6Cxx` resent with the right
//! Le) and each status word explained.
//!
//! The data of VERIFY (`00 20`), CHANGE PIN (`80 5E`) and RELOAD PIN (`84 5E`) is never
//! printed or logged: those lines show `<PIN redacted, N bytes>`.
//!
//! A script file (docs/technician.md, "Scripts") holds one command a line:
//!
//! ```text
//! # comments start with '#', anywhere on a line
//! 00A4 0400 0F 7378312E73682EC9E7BBE1B1A3D5CF   = 9000
//! 00B2 0100 00                                  = 9000
//! 0020 0000 00                                  = 63CX   # X: any hex digit
//! 0084 0000 08                                         # no expectation: any answer
//! ```
//!
//! The APDU's hex bytes (spaces allowed), then optionally `=` and the status word
//! expected, four hex digits of which `X` or `?` match any. The script stops at the
//! first answer that does not match and says on which line; the exit code is then 1.

use crate::exit::CliError;
use crate::print::Printer;
use serde_json::{json, Value};
use sscard_driver::apdu::{CommandApdu, ResponseApdu};
use sscard_driver::transport::Transaction;
use sscard_driver::StatusWord;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard apdu 00A404000F7378312E73682EC9E7BBE1B1A3D5CF 00B2010000
  sscard apdu --serial /dev/ttyUSB0:GemPCTwin 0084000008")]
pub struct ApduArgs {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// Command APDUs in hex (spaces inside one APDU: quote it), sent in order in one
    /// transaction.
    #[arg(required = true, value_name = "HEX")]
    apdus: Vec<String>,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  sscard script check-card.apdu        (docs/technician.md: the script format)
  sscard --json script --reader 'ACS ACR39U 00 00' check-card.apdu")]
pub struct ScriptArgs {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// The script: one APDU a line, optionally `= SW` (X or ? for any digit); `#` comments.
    file: PathBuf,
}

/// An expected status word: four hex digits, `X` / `?` matching any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwMask {
    value: u16,
    care: u16,
}

impl SwMask {
    pub fn parse(s: &str) -> Option<SwMask> {
        let s = s.trim();
        if s.len() != 4 {
            return None;
        }
        let (mut value, mut care) = (0u16, 0u16);
        for c in s.chars() {
            value <<= 4;
            care <<= 4;
            match c {
                'X' | 'x' | '?' => {}
                c => {
                    value |= c.to_digit(16)? as u16;
                    care |= 0xF;
                }
            }
        }
        Some(SwMask { value, care })
    }

    pub fn matches(self, sw: StatusWord) -> bool {
        sw.code() & self.care == self.value
    }
}

impl std::fmt::Display for SwMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in (0..4).rev() {
            let shift = 4 * i;
            if (self.care >> shift) & 0xF == 0 {
                f.write_str("X")?;
            } else {
                write!(f, "{:X}", (self.value >> shift) & 0xF)?;
            }
        }
        Ok(())
    }
}

/// One line of a script.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub apdu: Vec<u8>,
    pub expect: Option<SwMask>,
}

/// Parse a script; an error names its line.
pub fn parse_script(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let (cmd, expect) = match body.split_once('=') {
            Some((c, e)) => (
                c,
                Some(SwMask::parse(e).ok_or_else(|| {
                    format!(
                        "line {line}: expected status word {:?}: four hex digits, X or ? for any",
                        e.trim()
                    )
                })?),
            ),
            None => (body, None),
        };
        let apdu = parse_hex(cmd).map_err(|e| format!("line {line}: {e}"))?;
        CommandApdu::parse(&apdu).map_err(|e| format!("line {line}: {e}"))?;
        steps.push(Step { line, apdu, expect });
    }
    if steps.is_empty() {
        return Err("the script holds no command".into());
    }
    Ok(steps)
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&compact).map_err(|_| format!("not hex: {:?}", s.trim()))
}

/// Whether a command carries a PIN (VERIFY, CHANGE PIN, RELOAD PIN; card profile §5).
fn carries_pin(apdu: &CommandApdu) -> bool {
    matches!(
        (apdu.cla, apdu.ins),
        (0x00, 0x20) | (0x80, 0x5E) | (0x84, 0x5E)
    )
}

/// The command as printed: its data redacted when it carries a PIN.
fn shown(apdu: &CommandApdu, bytes: &[u8]) -> String {
    if carries_pin(apdu) && !apdu.data().is_empty() {
        format!(
            "{} <PIN redacted, {} bytes>",
            hex::encode_upper(&bytes[..4.min(bytes.len())]),
            apdu.data().len()
        )
    } else {
        hex::encode_upper(bytes)
    }
}

/// Send one command; its answer as JSON and as text.
fn exchange(
    tx: &mut Transaction<'_>,
    bytes: &[u8],
) -> Result<(ResponseApdu, Value, String), CliError> {
    let mut apdu = CommandApdu::parse(bytes).map_err(|e| CliError::usage(e.to_string()))?;
    if carries_pin(&apdu) {
        apdu = apdu.sensitive();
    }
    let cmd = shown(&apdu, bytes);
    let r = tx.transmit(&apdu)?;
    let sw = r.sw;
    let j = json!({"command": cmd, "data": hex::encode_upper(&r.data),
                   "sw": format!("{:04X}", sw.code()), "meaning": sw.to_string()});
    let t = format!(
        "> {cmd}\n< {}{sw}",
        if r.data.is_empty() {
            String::new()
        } else {
            format!("{} ", hex::encode_upper(&r.data))
        }
    );
    Ok((r, j, t))
}

pub fn run_apdu(a: ApduArgs, out: &Printer) -> Result<(), CliError> {
    let apdus = a
        .apdus
        .iter()
        .map(|h| {
            let b = parse_hex(h).map_err(CliError::usage)?;
            CommandApdu::parse(&b).map_err(|e| CliError::usage(format!("{h:?}: {e}")))?;
            Ok(b)
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let mut card = a.reader.open()?;
    let mut tx = Transaction::begin(card.as_mut())?;
    let (mut js, mut ts) = (Vec::new(), Vec::new());
    for b in &apdus {
        let (_, j, t) = exchange(&mut tx, b)?;
        js.push(j);
        ts.push(t);
    }
    out.value(&Value::Array(js), &ts.join("\n"));
    Ok(())
}

pub fn run_script(a: ScriptArgs, out: &Printer) -> Result<(), CliError> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| CliError::new(5, format!("{}: {e}", a.file.display())))?;
    let steps =
        parse_script(&text).map_err(|e| CliError::usage(format!("{}: {e}", a.file.display())))?;
    let mut card = a.reader.open()?;
    let mut tx = Transaction::begin(card.as_mut())?;
    let (mut js, mut ts) = (Vec::new(), Vec::new());
    let mut failed = None;
    for s in &steps {
        let (r, mut j, t) = exchange(&mut tx, &s.apdu)?;
        j["line"] = s.line.into();
        js.push(j);
        ts.push(t);
        if let Some(m) = s.expect.filter(|m| !m.matches(r.sw)) {
            failed = Some(format!(
                "{} line {}: expected {m}, the card answered {}",
                a.file.display(),
                s.line,
                r.sw
            ));
            break;
        }
    }
    let summary = format!(
        "{} of {} commands sent{}",
        js.len(),
        steps.len(),
        if failed.is_some() {
            "; stopped"
        } else {
            ", every answer as expected"
        }
    );
    ts.push(summary.clone());
    let v = json!({"steps": js, "complete": failed.is_none(), "summary": summary});
    match failed {
        None => {
            out.value(&v, &ts.join("\n"));
            Ok(())
        }
        Some(why) if out.is_json() => {
            let mut v = v;
            v["error"] = why.clone().into();
            v["exit_code"] = 1.into();
            out.value(&v, "");
            Err(CliError::reported(1, why))
        }
        Some(why) => {
            out.value(&v, &ts.join("\n"));
            Err(CliError::failed(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let m = SwMask::parse("63CX").unwrap();
        assert!(m.matches(StatusWord::from(0x63C2)));
        assert!(!m.matches(StatusWord::from(0x6983)));
        assert_eq!(m.to_string(), "63CX");
        assert!(SwMask::parse("????")
            .unwrap()
            .matches(StatusWord::from(0x1234)));
        assert!(SwMask::parse("9000").unwrap().matches(StatusWord::Ok));
        for bad in ["900", "90000", "90G0", ""] {
            assert_eq!(SwMask::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn scripts_and_their_errors_name_the_line() {
        let s = parse_script("# head\n\n00A4 0400 00 = 9000 # select\n0084000008\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].line, s[1].line), (3, 4));
        assert_eq!(s[0].expect, SwMask::parse("9000"));
        assert_eq!(s[1].expect, None);
        let e = parse_script("00A40400\n00ZZ\n").unwrap_err();
        assert!(e.starts_with("line 2: not hex"), "{e}");
        let e = parse_script("00A40400 = 9O00\n").unwrap_err();
        assert!(e.starts_with("line 1: expected status word"), "{e}");
        let e = parse_script("00A4 04 = 9000").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(parse_script("# nothing\n").is_err());
    }

    #[test]
    fn pins_are_redacted() {
        let b = hex::decode("0020000003123456").unwrap();
        let c = CommandApdu::parse(&b).unwrap();
        let s = shown(&c, &b);
        assert_eq!(s, "00200000 <PIN redacted, 3 bytes>");
        let b = hex::decode("805E01000D123456FFFFFFFF999999FFFFFF").unwrap();
        let c = CommandApdu::parse(&b).unwrap();
        assert!(!shown(&c, &b).contains("123456"));
        // the tries-left question carries no PIN and is shown whole
        let b = hex::decode("0020000000").unwrap();
        assert_eq!(shown(&CommandApdu::parse(&b).unwrap(), &b), "0020000000");
    }
}
