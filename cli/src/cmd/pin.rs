//! `sscard pin verify|change|reload`: the holder's PIN at the counter (card profile §5).
//!
//! A PIN never comes from the command line. It is typed on the reader's PIN pad where
//! the reader has one (PC/SC part 10 or a serial GemPC PinPad: it never reaches this
//! program), else read from the terminal without echo, or, with `--pin-stdin`, from
//! standard input, one PIN a line (verify: the PIN; change: the current PIN, the new one
//! and the new one again; reload: the new one and again). RELOAD PIN is the issuing
//! office's: it resets a forgotten or blocked PIN with the PIN key (`--keystore` with
//! the PIN purpose, or `--test-keys` for emulated cards).

use crate::exit::CliError;
use crate::print::Printer;
use serde_json::json;
use sscard_driver::app::{self, AppError, Pin};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::transport::Transaction;
use std::io::BufRead;
use zeroize::Zeroizing;

#[derive(clap::Subcommand)]
pub enum PinCommand {
    /// The holder proves the PIN (VERIFY); a wrong one says the tries left.
    #[command(after_help = "Examples:
  sscard pin verify                      typed on the reader's pad, or on this terminal
  echo 123456 | sscard pin verify --pin-stdin --serial /dev/ttyUSB0:GemPCTwin")]
    Verify(PinArgs),
    /// The holder changes the PIN (CHANGE PIN: current, then new twice).
    #[command(after_help = "Examples:
  sscard pin change
  printf '123456\\n246810\\n246810\\n' | sscard pin change --pin-stdin")]
    Change(PinArgs),
    /// The office sets a new PIN on a card whose PIN is forgotten or blocked (RELOAD
    /// PIN, MAC with the PIN key); the tries are back to 3. In the office journal.
    #[command(after_help = "Example:
  sscard pin reload --journal office.db --keystore office.keystore --secret-file pass")]
    Reload(ReloadArgs),
}

#[derive(clap::Args)]
pub struct PinArgs {
    #[command(flatten)]
    reader: super::ReaderArgs,
    /// Read the PINs from standard input, one a line, instead of the PIN pad or the
    /// terminal.
    #[arg(long)]
    pin_stdin: bool,
}

#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pin: PinArgs,
    #[command(flatten)]
    keys: crate::office::KeyArgs,
    #[command(flatten)]
    office: crate::office::JournalArgs,
}

/// Where the PINs come from (also `sscard load`'s).
pub(crate) enum Source {
    Pad,
    Terminal,
    Stdin(std::io::StdinLock<'static>),
}

impl Source {
    pub(crate) fn choose(pin_stdin: bool, pad: bool) -> Result<Source, CliError> {
        if pin_stdin {
            return Ok(Source::Stdin(std::io::stdin().lock()));
        }
        if pad {
            return Ok(Source::Pad);
        }
        Ok(Source::Terminal)
    }

    /// One PIN, asked with `prompt` on the terminal.
    pub(crate) fn read(&mut self, prompt: &str) -> Result<Pin, CliError> {
        let text: Zeroizing<String> = match self {
            Source::Pad => return Err(CliError::failed("the PIN is typed on the pad")),
            Source::Stdin(lines) => {
                let mut s = Zeroizing::new(String::new());
                match lines.read_line(&mut s) {
                    Ok(0) => return Err(CliError::usage("--pin-stdin: standard input ended before the PIN")),
                    Ok(_) => {}
                    Err(e) => return Err(CliError::new(5, format!("standard input: {e}"))),
                }
                Zeroizing::new(s.trim_end_matches(['\r', '\n']).to_string())
            }
            Source::Terminal => Zeroizing::new(rpassword::prompt_password(prompt).map_err(|e| {
                CliError::usage(format!(
                    "no terminal to type the PIN on ({e}): use --pin-stdin, or a reader with a PIN pad"
                ))
            })?),
        };
        Pin::new(&text).map_err(|_| CliError::usage("a PIN is 4 to 12 digits"))
    }

    /// A new PIN, typed twice; the two must agree.
    fn read_new(&mut self) -> Result<Pin, CliError> {
        let new = self.read("New PIN: ")?;
        let again = self.read("New PIN again: ")?;
        if new.bcd() != again.bcd() {
            return Err(CliError::usage("the two new PINs differ"));
        }
        Ok(new)
    }
}

/// The exit code of a PIN failure: 4 (security) for a wrong or blocked PIN.
pub(crate) fn pin_error(e: AppError) -> CliError {
    match &e {
        AppError::PinWrong { .. } | AppError::PinBlocked => CliError::new(4, e.to_string()),
        AppError::PinEntry(_) => CliError::failed(e.to_string()),
        _ => CliError::from(e),
    }
}

pub fn run(c: PinCommand, out: &Printer) -> Result<(), CliError> {
    let (args, what) = match &c {
        PinCommand::Verify(a) => (a, "verify"),
        PinCommand::Change(a) => (a, "change"),
        PinCommand::Reload(r) => (&r.pin, "reload"),
    };
    let mut card = args.reader.open()?;
    let pad = card.capabilities().pin_pad;
    let mut src = Source::choose(args.pin_stdin, pad && what != "reload")?;
    // PINs are asked before the card is taken: nothing waits on the holder mid-transaction
    let pins: Vec<Pin> = match (&src, what) {
        (Source::Pad, _) => Vec::new(),
        (_, "verify") => vec![src.read("PIN: ")?],
        (_, "change") => vec![src.read("Current PIN: ")?, src.read_new()?],
        _ => vec![src.read_new()?],
    };
    if matches!(src, Source::Pad) {
        eprintln!("sscard: the holder types the PIN on the reader's pad now");
    }
    let mut tx = Transaction::begin(card.as_mut())?;
    let sel = app::select_application(&mut tx)?;
    if sel.blocked {
        return Err(CliError::new(
            4,
            "the application is blocked: unblock it first (sscard card unblock)",
        ));
    }
    let done = match (&c, pins.as_slice()) {
        (PinCommand::Verify(_), []) => app::verify_pin_on_pad(&mut tx, 30).map(|_| "PIN verified"),
        (PinCommand::Verify(_), [p]) => app::verify_pin(&mut tx, p).map(|_| "PIN verified"),
        (PinCommand::Change(_), []) => app::change_pin_on_pad(&mut tx, 30).map(|_| "PIN changed"),
        (PinCommand::Change(_), [old, new]) => {
            app::change_pin(&mut tx, old, new).map(|_| "PIN changed")
        }
        (PinCommand::Reload(r), [new]) => {
            let id = app::read_card(&mut tx)?.card_id;
            let mut keys = r
                .keys
                .provider(id.region(), &[KeyPurpose::Pin], "RELOAD PIN")?;
            let mut office = r.office.open()?;
            let card = id.to_hex();
            let done = app::reload_pin(&mut tx, keys.as_mut(), &id, new);
            let (outcome, detail) = match &done {
                Ok(()) => ("completed", json!({})),
                Err(e) => ("failed", json!({"error": e.to_string()})),
            };
            office.log("pin.reload", &card, outcome, None, detail)?;
            if done.is_ok() {
                tx.end_with_reset()?;
                out.value(
                    &json!({"result": "PIN reloaded, 3 tries", "pin_pad": false}),
                    "PIN reloaded, 3 tries",
                );
                return Ok(());
            }
            done.map(|_| "PIN reloaded, 3 tries")
        }
        _ => return Err(CliError::failed("unexpected PINs")),
    }
    .map_err(pin_error)?;
    out.value(&json!({"result": done, "pin_pad": pins.is_empty()}), done);
    Ok(())
}
