//! Conformance suite for card READERS (issue 10): what a reader must carry between the
//! host and a card of this project's profile (`shared/spec/card-profile.md`) for
//! `sscardd` to work with it, checked with such a card in the reader.
//!
//! The suite is parameterised by the reader it runs against, a [`ReaderTarget`]: its
//! card slot as a [`CardTransport`], its SAM slot if it has one with a PSAM in it, who
//! can move the card ([`Hands`]), whether it has a PIN pad and who types on it
//! ([`Keypad`]). CI builds targets on the
//! emulator (`tests/reader_conformance.rs`: the project's serial backend on
//! `sscard-vcard --serial-reader`, and pcscd with libccid on the test bed's emulated
//! serial readers); a technician qualifies a real reader model by naming it in
//! `SSCARD_CONFORMANCE_READER`, the variable the card suite reads ([`ReaderSpec`],
//! [`open_target`]):
//!
//! - `serial:/dev/ttyUSB0:GemCorePOSPro`: the project's own serial backend; the model
//!   is split off at the last colon, as `sscardd --serial` does (device paths may hold
//!   colons), and a path with no model is a GemPC Twin;
//! - `pcsc:<reader name>`: a PC/SC reader through pcscd (a bare name, as the card suite
//!   takes it, is read as a PC/SC name too).
//!
//! [`run`] runs every check of [`CHECKS`] and returns a [`Report`]: per check, passed
//! (with notes), skipped (and why) or failed (and why), and per command the round trip
//! of every APDU (median, p90, recorded, never asserted), written as text and JSON by
//! [`Report::write`].
//!
//! What a run does to the card: it pays [`SuiteConfig::amount`] with the test keys and
//! loads it back (net zero; the purse counters and the transaction log move on), and
//! it uses no PIN try (VERIFY with Lc = 0 is the tries query). It needs a card of this
//! project's profile personalised with the test master keys (`vectors.json`) and the
//! PIN of [`SuiteConfig::pin`].
#![forbid(unsafe_code)]

use crate::card::Personalization;
use crate::clearing::purchase_tac;
use sscard_driver::apdu::{CommandApdu, ResponseApdu};
use sscard_driver::app::{self, Pin};
use sscard_driver::atr::Atr;
use sscard_driver::keyprovider::{KeyProvider, SoftwareKeys};
use sscard_driver::keys::KeyPurpose;
use sscard_driver::status::{PinEntry, StatusWord};
use sscard_driver::transport::pcsc::{PcscContext, ReaderEvent, ShareMode};
use sscard_driver::transport::pinpad::{self, PadRequest};
use sscard_driver::transport::serial::model::{split_spec, Model};
use sscard_driver::transport::serial::reader::SerialReader;
use sscard_driver::transport::{
    Capabilities, CardStatus, CardTransport, Protocol, RawTransaction, Transaction, TransportError,
};
use sscard_driver::types::TerminalId;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable naming the reader under test (shared with the card suite).
pub const READER_ENV: &str = "SSCARD_CONFORMANCE_READER";
/// Optional: the PC/SC reader name of the SAM slot (with a PSAM in it) of a `pcsc:`
/// reader.
pub const SAM_READER_ENV: &str = "SSCARD_CONFORMANCE_SAM_READER";
/// `1`: ask the technician at the terminal to take the card out and put it back.
pub const INTERACTIVE_ENV: &str = "SSCARD_CONFORMANCE_INTERACTIVE";
/// The card's PIN, when it is not the default test card's.
pub const PIN_ENV: &str = "SSCARD_CONFORMANCE_PIN";
/// The directory the report is written to.
pub const REPORT_ENV: &str = "SSCARD_CONFORMANCE_REPORT";

// ---------------------------------------------------------------------------------
// The reader under test

/// A reader named by `SSCARD_CONFORMANCE_READER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderSpec {
    /// A serial reader on `path`, driven by the project's serial backend.
    Serial { path: String, model: Model },
    /// A PC/SC reader, through pcscd.
    Pcsc { reader: String },
}

impl ReaderSpec {
    /// `serial:PATH[:MODEL]` or `pcsc:NAME`; anything else is a PC/SC reader name, as
    /// the card suite reads the variable.
    pub fn parse(s: &str) -> Result<ReaderSpec, String> {
        if let Some(rest) = s.strip_prefix("serial:") {
            if rest.is_empty() {
                return Err(
                    "serial: needs a device path (serial:/dev/ttyUSB0:GemCorePOSPro)".into(),
                );
            }
            let (path, model) = split_spec(rest);
            return Ok(ReaderSpec::Serial {
                path: path.to_string(),
                model,
            });
        }
        let name = s.strip_prefix("pcsc:").unwrap_or(s);
        if name.is_empty() {
            return Err("pcsc: needs a reader name (pcsc:<name as pcsc_scan shows it>)".into());
        }
        Ok(ReaderSpec::Pcsc {
            reader: name.to_string(),
        })
    }

    /// The reader `SSCARD_CONFORMANCE_READER` names, if it is set.
    pub fn from_env() -> Option<Result<ReaderSpec, String>> {
        std::env::var(READER_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| Self::parse(&s))
    }
}

impl fmt::Display for ReaderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderSpec::Serial { path, model } => write!(f, "serial:{path}:{model}"),
            ReaderSpec::Pcsc { reader } => write!(f, "pcsc:{reader}"),
        }
    }
}

/// Who can take the card out of the reader and put it back.
pub enum Hands<'a> {
    /// The test: closures that take the card out and put it back (each returns once
    /// done, e.g. after signalling the emulator).
    Driven {
        remove: Box<dyn FnMut() + 'a>,
        insert: Box<dyn FnMut() + 'a>,
    },
    /// A technician at the reader, asked on the terminal (stderr) and given `timeout`
    /// for each move.
    Technician { timeout: Duration },
    /// Nobody: the check is skipped with this note.
    Nobody(String),
}

/// What the holder does at the PIN pad's next prompt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PadAction<'s> {
    /// Type these digits, then OK.
    Type(&'s str),
    /// Press Cancel.
    Cancel,
}

impl fmt::Debug for PadAction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // the digits are the card's PIN
            PadAction::Type(_) => f.write_str("Type(..)"),
            PadAction::Cancel => f.write_str("Cancel"),
        }
    }
}

/// Who types on the reader's keypad.
pub enum Keypad<'a> {
    /// The test: a closure that sets what the holder does at the next prompt (and
    /// returns at once; the pad then waits for it), e.g. the emulator's keypad file.
    Driven(Box<dyn FnMut(PadAction<'_>) + 'a>),
    /// A technician at the reader, asked on the terminal (stderr) before each prompt;
    /// the pad's own timeout bounds the wait.
    Technician,
    /// Nobody: the check is skipped with this note.
    Nobody(String),
}

/// The reader the suite runs against.
pub struct ReaderTarget<'a> {
    /// What the report calls it (`serial:/dev/ttyUSB0:GemCorePOSPro`, …).
    pub label: String,
    /// The card slot, with a card of the profile in it.
    pub card: Box<dyn CardTransport + 'a>,
    /// The SAM slot with a PSAM in it, or why there is none (the SAM check is then
    /// skipped with that note).
    pub sam: Result<Box<dyn CardTransport + 'a>, String>,
    /// Whether the reader has a PIN pad.
    pub pin_pad: bool,
    /// Who types on it.
    pub keypad: Keypad<'a>,
    pub hands: Hands<'a>,
    /// The card slot's PC/SC reader name, to see pcscd's card events too.
    pub pcsc_events: Option<String>,
}

/// Open the reader a [`ReaderSpec`] names: the card slot (slot 0 of a serial reader),
/// the SAM slot (slot 1 of a serial reader with several, or the PC/SC reader
/// `SSCARD_CONFORMANCE_SAM_READER`) if a card is in it, and the technician's hands if
/// `SSCARD_CONFORMANCE_INTERACTIVE=1`.
pub fn open_target(spec: &ReaderSpec) -> Result<ReaderTarget<'static>, String> {
    let interactive = std::env::var(INTERACTIVE_ENV).as_deref() == Ok("1");
    let keypad = if interactive {
        Keypad::Technician
    } else {
        Keypad::Nobody(format!(
            "nobody to type on the keypad: set {INTERACTIVE_ENV}=1 (and run the test with \
             --nocapture) to be asked to type the PIN and press Cancel"
        ))
    };
    let hands = if interactive {
        Hands::Technician {
            timeout: Duration::from_secs(60),
        }
    } else {
        Hands::Nobody(format!(
            "nobody to move the card: set {INTERACTIVE_ENV}=1 (and run the test with \
             --nocapture) to be asked to take it out and put it back"
        ))
    };
    match spec {
        ReaderSpec::Serial { path, model } => {
            let reader =
                SerialReader::open(path, *model).map_err(|e| format!("open {path}: {e}"))?;
            let card = reader
                .connect(0)
                .map_err(|e| format!("{model} {path} slot 0: {e}"))?;
            let sam: Result<Box<dyn CardTransport>, String> = if model.slots() < 2 {
                Err(format!("a {model} has no SAM slot"))
            } else {
                reader
                    .connect(1)
                    .map(|s| Box::new(s) as Box<dyn CardTransport>)
                    .map_err(|e| format!("slot 1 (the first SAM slot): {e}"))
            };
            Ok(ReaderTarget {
                label: format!("{spec} (firmware {:?})", reader.firmware()),
                card: Box::new(card),
                sam,
                pin_pad: model.pin_pad(),
                keypad,
                hands,
                pcsc_events: None,
            })
        }
        ReaderSpec::Pcsc { reader } => {
            let ctx = PcscContext::establish().map_err(|e| format!("pcscd: {e}"))?;
            let card = ctx
                .connect(reader, ShareMode::Shared, None)
                .map_err(|e| format!("{reader}: {e}"))?;
            let sam = match std::env::var(SAM_READER_ENV) {
                Ok(name) if !name.is_empty() => ctx
                    .connect(&name, ShareMode::Shared, None)
                    .map(|s| Box::new(s) as Box<dyn CardTransport>)
                    .map_err(|e| format!("{name}: {e}")),
                _ => Err(format!(
                    "no SAM slot named: set {SAM_READER_ENV} to the PC/SC name of the slot \
                     holding the PSAM"
                )),
            };
            let pin_pad = card.capabilities().pin_pad;
            Ok(ReaderTarget {
                label: spec.to_string(),
                card: Box::new(card),
                sam,
                pin_pad,
                keypad,
                hands,
                pcsc_events: Some(reader.clone()),
            })
        }
    }
}

/// What the suite needs to know of the card, and how hard to push.
#[derive(Clone)]
pub struct SuiteConfig {
    /// The card's PIN (the purchase verifies it once).
    pub pin: String,
    /// Fen paid and loaded back by the purchase check.
    pub amount: u32,
    /// Terminal id of the purchase and the load.
    pub terminal_id: TerminalId,
    /// Power cycles of the reset check.
    pub resets: usize,
    /// How long a removal or an insertion may take to be seen once done.
    pub seen_within: Duration,
}

impl Default for SuiteConfig {
    /// The default test card (PIN from `SSCARD_CONFORMANCE_PIN` if set), 1.00 yuan.
    fn default() -> Self {
        SuiteConfig {
            pin: std::env::var(PIN_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| Personalization::default_test_card().pin),
            amount: 100,
            terminal_id: TerminalId([0x65, 0x02, 0x00, 0x00, 0x00, 0x01]),
            resets: 5,
            seen_within: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for SuiteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuiteConfig")
            .field("amount", &self.amount)
            .field("terminal_id", &self.terminal_id)
            .field("resets", &self.resets)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------
// Outcomes and the report

/// What became of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; the notes say what was seen (lengths, timings, how the reader did it).
    Passed(Vec<String>),
    /// Not run, and why (no SAM slot, nobody to move the card, not supported yet…).
    Skipped(String),
    /// Failed, and why.
    Failed(String),
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Passed(_) => "passed",
            Outcome::Skipped(_) => "skipped",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Outcome,
    pub took: Duration,
}

/// Round-trip times of one command (from the host's call to its answer, through the
/// whole stack: pcscd or the serial backend, the line, the reader, the card).
#[derive(Clone, Debug, PartialEq)]
pub struct TimingStats {
    pub command: String,
    pub count: usize,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub max: Duration,
}

fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[i]
}

impl TimingStats {
    fn of(command: &str, samples: &[Duration]) -> Option<TimingStats> {
        let mut s = samples.to_vec();
        s.sort();
        Some(TimingStats {
            command: command.to_string(),
            count: s.len(),
            min: *s.first()?,
            median: nearest_rank(&s, 0.5),
            p90: nearest_rank(&s, 0.9),
            max: *s.last()?,
        })
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The reader as the target named it.
    pub reader: String,
    /// The card's ATR and protocol at the start.
    pub atr: String,
    pub protocol: Option<Protocol>,
    /// When the run started (local time).
    pub started: String,
    pub results: Vec<CheckResult>,
    /// Per command (and `APDU (all)`, `reset`), sorted by name.
    pub timings: Vec<TimingStats>,
}

fn protocol_name(p: Option<Protocol>) -> &'static str {
    match p {
        Some(Protocol::T0) => "T=0",
        Some(Protocol::T1) => "T=1",
        None => "none",
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Report {
    /// The checks that failed, as `name: why`.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed(why) => Some(format!("{}: {why}", r.name)),
                _ => None,
            })
            .collect()
    }

    /// The outcome of the check `name`.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|r| r.name == name)
            .map(|r| &r.outcome)
    }

    /// The report as text: a header, one line per check (notes and reasons indented
    /// below it), a summary and the timings table.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "sscard reader conformance report");
        let _ = writeln!(t, "reader:   {}", self.reader);
        let _ = writeln!(
            t,
            "card:     ATR {}, {}",
            self.atr,
            protocol_name(self.protocol)
        );
        let _ = writeln!(t, "started:  {}", self.started);
        let _ = writeln!(t);
        for r in &self.results {
            let _ = writeln!(
                t,
                "{:<8} {} ({} ms)",
                r.outcome.word().to_uppercase(),
                r.name,
                ms(r.took).round()
            );
            match &r.outcome {
                Outcome::Passed(notes) => {
                    for n in notes {
                        let _ = writeln!(t, "         - {n}");
                    }
                }
                Outcome::Skipped(why) | Outcome::Failed(why) => {
                    let _ = writeln!(t, "         - {why}");
                }
            }
        }
        let count = |w: &str| {
            self.results
                .iter()
                .filter(|r| r.outcome.word() == w)
                .count()
        };
        let _ = writeln!(
            t,
            "\n{} passed, {} skipped, {} failed\n",
            count("passed"),
            count("skipped"),
            count("failed")
        );
        let _ = writeln!(
            t,
            "round trips (ms; recorded, not asserted)\n{:<34} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "command", "n", "min", "median", "p90", "max"
        );
        for s in &self.timings {
            let _ = writeln!(
                t,
                "{:<34} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                s.command,
                s.count,
                ms(s.min),
                ms(s.median),
                ms(s.p90),
                ms(s.max)
            );
        }
        t
    }

    /// The report as JSON (the same content; durations in milliseconds).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let checks: Vec<_> = self
            .results
            .iter()
            .map(|r| {
                let (notes, reason) = match &r.outcome {
                    Outcome::Passed(n) => (n.clone(), None),
                    Outcome::Skipped(w) | Outcome::Failed(w) => (Vec::new(), Some(w.clone())),
                };
                json!({
                    "name": r.name,
                    "outcome": r.outcome.word(),
                    "notes": notes,
                    "reason": reason,
                    "ms": ms(r.took),
                })
            })
            .collect();
        let timings: Vec<_> = self
            .timings
            .iter()
            .map(|s| {
                json!({
                    "command": s.command,
                    "count": s.count,
                    "min_ms": ms(s.min),
                    "median_ms": ms(s.median),
                    "p90_ms": ms(s.p90),
                    "max_ms": ms(s.max),
                })
            })
            .collect();
        json!({
            "reader": self.reader,
            "atr": self.atr,
            "protocol": protocol_name(self.protocol),
            "started": self.started,
            "passed": self.results.iter().filter(|r| matches!(r.outcome, Outcome::Passed(_))).count(),
            "skipped": self.results.iter().filter(|r| matches!(r.outcome, Outcome::Skipped(_))).count(),
            "failed": self.results.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count(),
            "checks": checks,
            "timings": timings,
        })
    }

    /// Write `reader-conformance-<reader>.txt` and `.json` into `dir` (created if
    /// need be); returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let stem: String = self
            .reader
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let stem = format!("reader-conformance-{stem}");
        let text = dir.join(format!("{stem}.txt"));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&text, self.to_text())?;
        let mut j = serde_json::to_string_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        j.push('\n');
        std::fs::write(&json, j)?;
        Ok((text, json))
    }
}

// ---------------------------------------------------------------------------------
// Timing every APDU

#[derive(Clone, Default)]
struct Clock(Arc<Mutex<BTreeMap<String, Vec<Duration>>>>);

impl Clock {
    fn record(&self, what: String, d: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(what).or_default().push(d);
    }

    fn stats(&self) -> Vec<TimingStats> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        let mut out: Vec<TimingStats> = m
            .iter()
            .filter_map(|(k, v)| {
                if k != "reset" && !k.starts_with("SAM ") {
                    all.extend_from_slice(v);
                }
                TimingStats::of(k, v)
            })
            .collect();
        out.extend(TimingStats::of("APDU (all, card slot)", &all));
        out.sort_by(|a, b| a.command.cmp(&b.command));
        out
    }
}

/// The command's name, from its header (card profile §5 to §7; PSAM commands as INS).
fn command_name(c: &[u8]) -> String {
    let (cla, ins, p1) = (
        c.first().copied().unwrap_or(0),
        c.get(1).copied().unwrap_or(0),
        c.get(2).copied().unwrap_or(0),
    );
    let n = match ins {
        0xA4 => "SELECT",
        0xB2 => "READ RECORD",
        0xB0 => "READ BINARY",
        0xCA => "GET DATA",
        0x84 => "GET CHALLENGE",
        0x82 => "EXTERNAL AUTHENTICATE",
        0x88 => "INTERNAL AUTHENTICATE",
        0x20 => "VERIFY",
        0xC0 => "GET RESPONSE",
        0x5C => "GET BALANCE",
        0x50 if p1 == 0x01 => "INITIALIZE FOR PURCHASE",
        0x50 => "INITIALIZE FOR LOAD",
        0x54 => "DEBIT",
        0x52 => "CREDIT FOR LOAD",
        0x5A => "GET TRANSACTION PROOF",
        0x5E if cla & 0x04 != 0 => "RELOAD PIN",
        0x5E => "CHANGE PIN",
        0xDC => "UPDATE RECORD",
        _ => return format!("CLA {cla:02X} INS {ins:02X}"),
    };
    n.to_string()
}

/// A slot whose every APDU and reset is timed.
struct Timed<'t> {
    inner: &'t mut dyn CardTransport,
    clock: Clock,
    prefix: &'static str,
}

struct TimedTx<'b> {
    raw: Box<dyn RawTransaction + 'b>,
    clock: Clock,
    prefix: &'static str,
}

impl RawTransaction for TimedTx<'_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let t = Instant::now();
        let r = self.raw.transmit_raw(command);
        if r.is_ok() {
            self.clock.record(
                format!("{}{}", self.prefix, command_name(command)),
                t.elapsed(),
            );
        }
        r
    }

    fn new_presentation(&self) -> bool {
        self.raw.new_presentation()
    }

    fn pin_pad(&mut self, request: &PadRequest) -> Result<Vec<u8>, TransportError> {
        // the holder's time is in it: not an APDU's round trip
        self.raw.pin_pad(request)
    }
}

impl CardTransport for Timed<'_> {
    fn reader_name(&self) -> String {
        self.inner.reader_name()
    }

    fn begin(&mut self) -> Result<Box<dyn RawTransaction + '_>, TransportError> {
        let raw = self.inner.begin()?;
        Ok(Box::new(TimedTx {
            raw,
            clock: self.clock.clone(),
            prefix: self.prefix,
        }))
    }

    fn status(&mut self) -> Result<CardStatus, TransportError> {
        self.inner.status()
    }

    fn reset(&mut self) -> Result<Vec<u8>, TransportError> {
        let t = Instant::now();
        let r = self.inner.reset();
        if r.is_ok() {
            self.clock
                .record(format!("{}reset", self.prefix), t.elapsed());
        }
        r
    }

    fn reattach(&mut self) -> Result<Vec<u8>, TransportError> {
        self.inner.reattach()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

// ---------------------------------------------------------------------------------
// Helpers of the checks

/// Why a check cannot pass, or is not to be run.
enum Stop {
    Fail(String),
    Skip(String),
}

impl<E: fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Fail(e.to_string())
    }
}

type CheckOut = Result<Vec<String>, Stop>;

fn fail<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Fail(why.into()))
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), Stop> {
    if ok {
        Ok(())
    } else {
        Err(Stop::Fail(why()))
    }
}

fn hex(b: &[u8]) -> String {
    hex::encode_upper(b)
}

fn show(r: &ResponseApdu) -> String {
    if r.data.is_empty() {
        hex(&r.sw.to_bytes())
    } else {
        format!("{} bytes then {}", r.data.len(), hex(&r.sw.to_bytes()))
    }
}

fn apdu(h: [u8; 4], data: &[u8], le: usize) -> Result<CommandApdu, Stop> {
    Ok(CommandApdu::new(h[0], h[1], h[2], h[3])
        .with_data(data.to_vec())?
        .with_le(le)?)
}

/// Send `cmd` as is and parse the answer.
fn raw(tx: &mut dyn RawTransaction, what: &str, cmd: &CommandApdu) -> Result<ResponseApdu, Stop> {
    let b = tx
        .transmit_raw(&cmd.to_bytes())
        .map_err(|e| Stop::Fail(format!("{what}: {e}")))?;
    ResponseApdu::parse(&b).map_err(|_| Stop::Fail(format!("{what}: answer {} too short", hex(&b))))
}

/// Send with the driver's T=0 rules (GET RESPONSE, Le resend).
fn send(tx: &mut Transaction<'_>, what: &str, cmd: &CommandApdu) -> Result<ResponseApdu, Stop> {
    tx.transmit(cmd)
        .map_err(|e| Stop::Fail(format!("{what}: {e}")))
}

/// Require `9000` with `n` bytes (any length for `None`).
fn want_ok(what: &str, r: &ResponseApdu, n: Option<usize>) -> Result<(), Stop> {
    ensure(
        r.sw == StatusWord::Ok && n.is_none_or(|n| r.data.len() == n),
        || match n {
            Some(n) => format!("{what}: expected {n} bytes then 9000, got {}", show(r)),
            None => format!("{what}: expected 9000, got {}", show(r)),
        },
    )
}

fn aid() -> Vec<u8> {
    crate::conformance::aid()
}

const EF05: u16 = 0xEF05;
const EF06: u16 = 0xEF06;

fn select_app() -> Result<CommandApdu, Stop> {
    apdu([0x00, 0xA4, 0x04, 0x00], &aid(), 0)
}

fn select_ef(fid: u16) -> Result<CommandApdu, Stop> {
    apdu([0x00, 0xA4, 0x02, 0x00], &fid.to_be_bytes(), 0)
}

fn read_record(tag: u8, le: usize) -> Result<CommandApdu, Stop> {
    apdu([0x00, 0xB2, tag, 0x00], &[], le)
}

/// SELECT the application then `ef`, raw, `9000` each.
fn select_path(tx: &mut dyn RawTransaction, ef: u16) -> Result<(), Stop> {
    want_ok(
        "SELECT application",
        &raw(tx, "SELECT application", &select_app()?)?,
        Some(0),
    )?;
    let what = format!("SELECT {ef:04X}");
    want_ok(&what, &raw(tx, &what, &select_ef(ef)?)?, Some(0))
}

fn wait_until<T>(
    within: Duration,
    mut f: impl FnMut() -> Result<Option<T>, Stop>,
) -> Result<Option<(T, Duration)>, Stop> {
    let t = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(Some((v, t.elapsed())));
        }
        if t.elapsed() > within {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tell(line: &str) {
    // straight to the process's stderr: the test harness captures only print macros
    let _ = writeln!(std::io::stderr(), "\n>>> reader conformance: {line}");
}

// ---------------------------------------------------------------------------------
// The checks

/// What a check gets: the timed card slot, the rest of the target, the configuration.
struct Ctx<'c, 'a> {
    card: Timed<'c>,
    sam: Option<Timed<'c>>,
    sam_absent: Option<String>,
    pin_pad: bool,
    keypad: &'c mut Keypad<'a>,
    hands: &'c mut Hands<'a>,
    pcsc_events: Option<String>,
    cfg: &'c SuiteConfig,
    atr: Vec<u8>,
    protocol: Option<Protocol>,
}

type Check = fn(&mut Ctx<'_, '_>) -> CheckOut;

/// Every check, in the order [`run`] runs them.
const CHECKS: &[(&str, Check)] = &[
    ("card present, ATR and protocol", check_identify),
    ("case 1: VERIFY with Lc = 0", check_case1),
    (
        "case 2: GET DATA, GET CHALLENGE, READ RECORD, GET BALANCE",
        check_case2,
    ),
    ("case 3: SELECT", check_case3),
    ("case 4: INTERNAL AUTHENTICATE, SELECT with Le", check_case4),
    ("longest answer", check_longest),
    ("61xx chain and GET RESPONSE", check_61xx),
    ("6Cxx and the resend with the right Le", check_6c),
    ("power cycling (reset)", check_reset),
    ("removal and insertion", check_events),
    (
        "SAM slot while the card slot is in a transaction",
        check_sam,
    ),
    ("PIN pad entry", check_pin_pad),
    ("purchase end to end", check_purchase),
];

/// The names of the checks, in order.
pub fn check_names() -> Vec<&'static str> {
    CHECKS.iter().map(|(n, _)| *n).collect()
}

/// Run every check against `target` and report.
pub fn run(target: &mut ReaderTarget<'_>, cfg: &SuiteConfig) -> Report {
    let clock = Clock::default();
    let started = chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S %z")
        .to_string();
    let (sam, sam_absent) = match &mut target.sam {
        Ok(s) => (
            Some(Timed {
                inner: s.as_mut(),
                clock: clock.clone(),
                prefix: "SAM ",
            }),
            None,
        ),
        Err(why) => (None, Some(why.clone())),
    };
    let mut ctx = Ctx {
        card: Timed {
            inner: target.card.as_mut(),
            clock: clock.clone(),
            prefix: "",
        },
        sam,
        sam_absent,
        pin_pad: target.pin_pad,
        keypad: &mut target.keypad,
        hands: &mut target.hands,
        pcsc_events: target.pcsc_events.clone(),
        cfg,
        atr: Vec::new(),
        protocol: None,
    };
    let mut results = Vec::new();
    for (name, check) in CHECKS {
        let t = Instant::now();
        let outcome = match check(&mut ctx) {
            Ok(notes) => Outcome::Passed(notes),
            Err(Stop::Skip(why)) => Outcome::Skipped(why),
            Err(Stop::Fail(why)) => Outcome::Failed(why),
        };
        results.push(CheckResult {
            name,
            outcome,
            took: t.elapsed(),
        });
    }
    Report {
        reader: target.label.clone(),
        atr: hex(&ctx.atr),
        protocol: ctx.protocol,
        started,
        results,
        timings: clock.stats(),
    }
}

/// The card is there, its ATR parses and names the protocol in use.
fn check_identify(c: &mut Ctx<'_, '_>) -> CheckOut {
    let st = c.card.status()?;
    ensure(st.present, || "no card in the card slot".into())?;
    let atr = Atr::parse(&st.atr).map_err(|e| Stop::Fail(format!("ATR {}: {e}", hex(&st.atr))))?;
    c.atr = st.atr.clone();
    c.protocol = st.protocol;
    let offered = atr.protocols();
    ensure(st.protocol.is_some_and(|p| offered.contains(&p)), || {
        format!(
            "protocol in use {:?}, the ATR offers {offered:?}",
            st.protocol
        )
    })?;
    Ok(vec![
        format!("ATR {}", hex(&st.atr)),
        format!(
            "protocol {} (the ATR offers {})",
            protocol_name(st.protocol),
            offered
                .iter()
                .map(|p| protocol_name(Some(*p)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ])
}

/// Case 1 (no data, no Le): VERIFY with no PIN, the tries query, answers `63Cx`
/// without using a try (card profile §5).
fn check_case1(c: &mut Ctx<'_, '_>) -> CheckOut {
    let mut tx = c.card.begin()?;
    want_ok(
        "SELECT application",
        &raw(tx.as_mut(), "SELECT application", &select_app()?)?,
        Some(0),
    )?;
    let q = CommandApdu::new(0x00, 0x20, 0x00, 0x00);
    let bytes = q.to_bytes();
    ensure(bytes.len() == 4, || "VERIFY query is not 4 bytes".into())?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = raw(tx.as_mut(), "VERIFY (Lc = 0)", &q)?;
        let [sw1, sw2] = r.sw.to_bytes();
        ensure(
            r.data.is_empty() && sw1 == 0x63 && sw2 & 0xF0 == 0xC0,
            || format!("VERIFY (Lc = 0): expected 63Cx, got {}", show(&r)),
        )?;
        seen.push(sw2 & 0x0F);
    }
    ensure(seen[0] == seen[1], || {
        format!("the tries query used a try: {} then {}", seen[0], seen[1])
    })?;
    Ok(vec![format!(
        "00 20 00 00 answered 63C{:X} twice ({} tries left, none used)",
        seen[0], seen[0]
    )])
}

/// Case 2 (Le only), exact Le so no T=0 rule applies: the chip serial (8), two
/// challenges (8, different), EF05 record 01 (18: tag, length, the card id), the
/// balance (4).
fn check_case2(c: &mut Ctx<'_, '_>) -> CheckOut {
    let mut tx = c.card.begin()?;
    let tx = tx.as_mut();
    let serial = raw(
        tx,
        "GET DATA chip serial",
        &apdu([0x80, 0xCA, 0x00, 0x01], &[], 8)?,
    )?;
    want_ok("GET DATA chip serial", &serial, Some(8))?;
    select_path(tx, EF05)?;
    let ch = apdu([0x00, 0x84, 0x00, 0x00], &[], 8)?;
    let a = raw(tx, "GET CHALLENGE", &ch)?;
    want_ok("GET CHALLENGE", &a, Some(8))?;
    let b = raw(tx, "GET CHALLENGE", &ch)?;
    want_ok("GET CHALLENGE", &b, Some(8))?;
    ensure(a.data != b.data, || "two challenges are the same".into())?;
    let id = raw(tx, "READ RECORD 01", &read_record(0x01, 18)?)?;
    want_ok("READ RECORD 01", &id, Some(18))?;
    ensure(id.data[..2] == [0x01, 0x10], || {
        format!(
            "READ RECORD 01: expected 01 10 ‖ card id, got {}",
            hex(&id.data)
        )
    })?;
    ensure(id.data[10..] == serial.data[..], || {
        "the card id's chip serial is not GET DATA's".into()
    })?;
    let bal = raw(tx, "GET BALANCE", &apdu([0x80, 0x5C, 0x00, 0x02], &[], 4)?)?;
    want_ok("GET BALANCE", &bal, Some(4))?;
    Ok(vec![
        format!("chip serial {}", hex(&serial.data)),
        format!("card id {}", hex(&id.data[2..])),
        format!(
            "balance {} fen",
            u32::from_be_bytes([bal.data[0], bal.data[1], bal.data[2], bal.data[3]])
        ),
    ])
}

/// Case 3 (data, no Le): SELECT of the application and of EFs, and an EF that is not
/// there (`6A82`).
fn check_case3(c: &mut Ctx<'_, '_>) -> CheckOut {
    let mut tx = c.card.begin()?;
    let tx = tx.as_mut();
    select_path(tx, EF05)?;
    select_path(tx, EF06)?;
    let p1_00 = raw(
        tx,
        "SELECT EF15 (P1 00)",
        &apdu([0x00, 0xA4, 0x00, 0x00], &0xEF15u16.to_be_bytes(), 0)?,
    )?;
    want_ok("SELECT EF15 (P1 00)", &p1_00, Some(0))?;
    let none = raw(tx, "SELECT EF99", &select_ef(0xEF99)?)?;
    ensure(
        none.sw == StatusWord::FileNotFound && none.data.is_empty(),
        || format!("SELECT EF99: expected 6A82, got {}", show(&none)),
    )?;
    Ok(vec![
        "SELECT application, EF05, EF06, EF15: 9000 with no data".into(),
        "SELECT EF99: 6A82".into(),
    ])
}

/// Case 4 (data and Le), with the driver's T=0 rules: INTERNAL AUTHENTICATE (16
/// bytes, checked with the test keys: the card is genuine, so every byte came
/// through), three times; and SELECT of the application with Le `00`, which answers
/// no data or an FCI template `6F` holding the AID (the profile does not say which;
/// over T=0 a case 4 goes out as case 3, so a card sees no Le).
fn check_case4(c: &mut Ctx<'_, '_>) -> CheckOut {
    let mut tx = Transaction::begin(&mut c.card)?;
    let rec = app::read_card(&mut tx)?;
    let mut keys = pharmacy(c.cfg, &rec.card_id);
    for _ in 0..3 {
        ensure(
            app::internal_authenticate(&mut tx, &mut keys, &rec.card_id)?,
            || {
                "INTERNAL AUTHENTICATE: the cryptogram is not the test keys' (bytes lost or changed, or not a test card)".into()
            },
        )?;
    }
    let mut notes = vec!["INTERNAL AUTHENTICATE: 3 cryptograms right".to_string()];
    let fci = send(
        &mut tx,
        "SELECT with Le 00",
        &apdu([0x00, 0xA4, 0x04, 0x00], &aid(), 256)?,
    )?;
    want_ok("SELECT with Le 00", &fci, None)?;
    let aid = aid();
    if fci.data.is_empty() {
        notes.push("SELECT with Le 00: 9000, no FCI".into());
    } else {
        ensure(
            fci.data.first() == Some(&0x6F) && fci.data.windows(aid.len()).any(|w| w == aid),
            || {
                format!(
                    "SELECT with Le 00: no 6F template with the AID in {}",
                    hex(&fci.data)
                )
            },
        )?;
        notes.push(format!(
            "SELECT with Le 00: FCI {} ({} bytes)",
            hex(&fci.data),
            fci.data.len()
        ));
    }
    Ok(notes)
}

/// The longest answer the card profile has. No command of the profile answers 256
/// bytes; the longest is READ RECORD 09 (the holder's name: tag, length, 30 bytes),
/// 32 bytes, read with Le `00` (256 on the wire: "all there is") and with Le `20`.
fn check_longest(c: &mut Ctx<'_, '_>) -> CheckOut {
    let mut tx = Transaction::begin(&mut c.card)?;
    want_ok(
        "SELECT application",
        &send(&mut tx, "SELECT application", &select_app()?)?,
        Some(0),
    )?;
    want_ok(
        "SELECT EF06",
        &send(&mut tx, "SELECT EF06", &select_ef(EF06)?)?,
        Some(0),
    )?;
    let all = send(&mut tx, "READ RECORD 09 (Le 00)", &read_record(0x09, 256)?)?;
    want_ok("READ RECORD 09 (Le 00)", &all, Some(32))?;
    ensure(all.data[..2] == [0x09, 0x1E], || {
        format!(
            "READ RECORD 09: expected 09 1E ‖ name, got {}",
            hex(&all.data)
        )
    })?;
    let exact = send(&mut tx, "READ RECORD 09 (Le 20)", &read_record(0x09, 32)?)?;
    want_ok("READ RECORD 09 (Le 20)", &exact, Some(32))?;
    ensure(exact.data == all.data, || {
        "Le 00 and Le 20 read different names".into()
    })?;
    Ok(vec![
        "the card profile has no command answering 256 bytes: the longest answer is READ \
         RECORD 09 (the name), 32 bytes"
            .into(),
        "32 bytes with Le 00 and with Le 20, the same".into(),
    ])
}

/// `61xx` (T=0): a case 4 command sent as is answers `61 10`, and GET RESPONSE
/// `00 C0 00 00 10` fetches the 16 bytes. A reader that runs GET RESPONSE itself
/// (APDU-level readers) answers the 16 bytes at once: passed, with a note. A card in
/// T=1 has no `61xx`: skipped.
fn check_61xx(c: &mut Ctx<'_, '_>) -> CheckOut {
    if c.protocol == Some(Protocol::T1) {
        return Err(Stop::Skip(
            "the card speaks T=1 in this reader: no 61xx chains".into(),
        ));
    }
    let mut tx = c.card.begin()?;
    let tx = tx.as_mut();
    select_path(tx, EF05)?;
    let id = raw(tx, "READ RECORD 01", &read_record(0x01, 18)?)?;
    want_ok("READ RECORD 01", &id, Some(18))?;
    let card_id = sscard_driver::CardId::from_bytes(&id.data[2..])?;
    let mut keys = pharmacy(c.cfg, &card_id);
    let mut notes = Vec::new();
    for round in 0..3 {
        let r: [u8; 8] = rand::random();
        let first = raw(
            tx,
            "INTERNAL AUTHENTICATE",
            &apdu([0x00, 0x88, 0x00, 0x02], &r, 16)?,
        )?;
        let answer = match first.sw {
            StatusWord::MoreData(n) if first.data.is_empty() => {
                ensure(n == 0x10, || {
                    format!("INTERNAL AUTHENTICATE: expected 6110, got 61{n:02X}")
                })?;
                let gr = raw(
                    tx,
                    "GET RESPONSE",
                    &apdu([0x00, 0xC0, 0x00, 0x00], &[], 16)?,
                )?;
                want_ok("GET RESPONSE", &gr, Some(16))?;
                if round == 0 {
                    notes.push(
                        "INTERNAL AUTHENTICATE answers 6110; GET RESPONSE 10: 16 bytes then 9000"
                            .into(),
                    );
                }
                gr.data
            }
            StatusWord::Ok if first.data.len() == 16 => {
                if round == 0 {
                    notes.push(
                        "the reader runs the GET RESPONSE itself (16 bytes then 9000 at once)"
                            .into(),
                    );
                }
                first.data
            }
            _ => {
                return fail(format!(
                    "INTERNAL AUTHENTICATE: expected 6110, got {}",
                    show(&first)
                ))
            }
        };
        ensure(keys.verify_internal_auth(&card_id, &r, &answer)?, || {
            "the cryptogram fetched by GET RESPONSE is not the test keys'".into()
        })?;
    }
    notes.push("3 chains, each cryptogram right".into());
    Ok(notes)
}

/// `6Cxx`: READ RECORD 01 with a wrong Le (`01`) answers `6C12`, and the resend with
/// Le `12` the 18 bytes (card profile §3); the driver's rules do the same in one call.
fn check_6c(c: &mut Ctx<'_, '_>) -> CheckOut {
    let mut tx = c.card.begin()?;
    select_path(tx.as_mut(), EF05)?;
    let wrong = raw(
        tx.as_mut(),
        "READ RECORD 01 (Le 01)",
        &read_record(0x01, 1)?,
    )?;
    let mut notes = Vec::new();
    match wrong.sw {
        StatusWord::WrongLe(0x12) if wrong.data.is_empty() => {
            let again = raw(
                tx.as_mut(),
                "READ RECORD 01 (Le 12)",
                &read_record(0x01, 0x12)?,
            )?;
            want_ok("READ RECORD 01 (Le 12)", &again, Some(18))?;
            notes.push("Le 01: 6C12; Le 12: 18 bytes then 9000".into());
        }
        StatusWord::Ok if wrong.data.len() == 18 => {
            notes.push("the reader resent with the right Le itself (18 bytes at once)".into());
        }
        _ => {
            return fail(format!(
                "READ RECORD 01 (Le 01): expected 6C12, got {}",
                show(&wrong)
            ))
        }
    }
    drop(tx);
    let mut tx = Transaction::begin(&mut c.card)?;
    want_ok(
        "SELECT application",
        &send(&mut tx, "SELECT application", &select_app()?)?,
        Some(0),
    )?;
    want_ok(
        "SELECT EF05",
        &send(&mut tx, "SELECT EF05", &select_ef(EF05)?)?,
        Some(0),
    )?;
    for (tag, le, n) in [(0x07u8, 3usize, 11usize), (0x02, 9, 3)] {
        let what = format!("READ RECORD {tag:02X} (Le {le:02X}, driver rules)");
        want_ok(
            &what,
            &send(&mut tx, &what, &read_record(tag, le)?)?,
            Some(n),
        )?;
    }
    notes.push("through the driver's rules: records 07 and 02 read with wrong Le".into());
    Ok(notes)
}

/// Power cycling: `resets` resets, each giving the same ATR, the card's state gone
/// after each (READ RECORD before any SELECT is refused) and the card usable again.
fn check_reset(c: &mut Ctx<'_, '_>) -> CheckOut {
    let first = c.atr.clone();
    let mut took = Vec::new();
    for i in 0..c.cfg.resets {
        // a selected EF before the reset
        {
            let mut tx = c.card.begin()?;
            select_path(tx.as_mut(), EF05)?;
        }
        let t = Instant::now();
        let atr = c
            .card
            .reset()
            .map_err(|e| Stop::Fail(format!("reset {}: {e}", i + 1)))?;
        took.push(t.elapsed());
        ensure(atr == first, || {
            format!(
                "reset {}: ATR {} (it was {})",
                i + 1,
                hex(&atr),
                hex(&first)
            )
        })?;
        let st = c.card.status()?;
        ensure(st.present && st.atr == first, || {
            format!("reset {}: status after it {:?}", i + 1, st)
        })?;
        let mut tx = c.card.begin()?;
        let r = raw(
            tx.as_mut(),
            "READ RECORD 07 after the reset",
            &read_record(0x07, 11)?,
        )?;
        ensure(!r.sw.is_ok(), || {
            format!(
                "reset {}: READ RECORD 07 before any SELECT answered 9000: the card was not reset",
                i + 1
            )
        })?;
        select_path(tx.as_mut(), EF05)?;
        let r = raw(tx.as_mut(), "READ RECORD 07", &read_record(0x07, 11)?)?;
        want_ok("READ RECORD 07 after the reset", &r, Some(11))?;
    }
    took.sort();
    Ok(vec![
        format!(
            "{} resets, the same ATR each time, the card's state lost and the card usable",
            took.len()
        ),
        format!(
            "reset took {:.1} to {:.1} ms",
            ms(*took.first().unwrap_or(&Duration::ZERO)),
            ms(*took.last().unwrap_or(&Duration::ZERO))
        ),
    ])
}

enum Move {
    Out,
    In,
}

/// Have the card moved: by the test, or by the technician (asked on stderr); a skip
/// if nobody can.
fn move_card(hands: &mut Hands<'_>, m: Move, reader: &str) -> Result<(), Stop> {
    match hands {
        Hands::Driven { remove, insert } => {
            match m {
                Move::Out => remove(),
                Move::In => insert(),
            }
            Ok(())
        }
        Hands::Technician { .. } => {
            tell(&match m {
                Move::Out => format!("take the card out of {reader} now"),
                Move::In => format!("put the card back into {reader} now"),
            });
            Ok(())
        }
        Hands::Nobody(why) => Err(Stop::Skip(why.clone())),
    }
}

/// Removal and insertion: the card taken out is seen gone (status, and pcscd's event
/// for a PC/SC reader), a transaction then finds no card; put back, it is seen
/// (event), the next transaction is on a new presentation and the card answers.
fn check_events(c: &mut Ctx<'_, '_>) -> CheckOut {
    if let Hands::Nobody(why) = &c.hands {
        return Err(Stop::Skip(why.clone()));
    }
    let within = match c.hands {
        Hands::Technician { timeout } => *timeout,
        _ => c.cfg.seen_within,
    };
    let name = c.card.reader_name();
    let mut monitor = match &c.pcsc_events {
        Some(_) => {
            let mut m = PcscContext::establish()?.monitor()?;
            m.wait(Duration::ZERO)?;
            Some(m)
        }
        None => None,
    };
    let reader = c.pcsc_events.clone().unwrap_or_default();
    let mut wait_event = |inserted: bool| -> Result<Option<Duration>, Stop> {
        let Some(m) = monitor.as_mut() else {
            return Ok(None);
        };
        let seen = wait_until(within, || {
            Ok(m.wait(Duration::from_millis(200))?
                .into_iter()
                .any(|e| match e {
                    ReaderEvent::CardInserted { reader: r, .. } => inserted && r == reader,
                    ReaderEvent::CardRemoved { reader: r } => !inserted && r == reader,
                    _ => false,
                })
                .then_some(()))
        })?;
        match seen {
            Some((_, d)) => Ok(Some(d)),
            None => fail(format!(
                "pcscd reported no card {} event for {reader:?}",
                if inserted { "inserted" } else { "removed" }
            )),
        }
    };
    let mut notes = Vec::new();

    move_card(c.hands, Move::Out, &name)?;
    let gone = wait_until(within, || Ok((!c.card.status()?.present).then_some(())))?;
    let Some((_, d)) = gone else {
        return fail(format!(
            "the card still present {} s after its removal",
            within.as_secs()
        ));
    };
    notes.push(format!("removal seen by status after {:.0} ms", ms(d)));
    if let Some(d) = wait_event(false)? {
        notes.push(format!(
            "pcscd's card removed event after {:.0} ms more",
            ms(d)
        ));
    }
    match c.card.begin() {
        Err(TransportError::NoCard | TransportError::CardRemoved) => {
            notes.push("a transaction with the card out: no card".into())
        }
        Err(e) => {
            return fail(format!(
                "a transaction with the card out: {e} (expected no card)"
            ))
        }
        Ok(_) => return fail("a transaction began with the card out"),
    }

    move_card(c.hands, Move::In, &name)?;
    let back = wait_until(within, || match c.card.begin() {
        Ok(tx) => Ok(Some(tx.new_presentation())),
        Err(TransportError::NoCard | TransportError::CardRemoved) => Ok(None),
        Err(e) => Err(Stop::Fail(format!(
            "a transaction after the insertion: {e}"
        ))),
    })?;
    let Some((new, d)) = back else {
        return fail(format!(
            "no card {} s after its insertion",
            within.as_secs()
        ));
    };
    ensure(new, || {
        "the transaction after the insertion is not on a new presentation".into()
    })?;
    notes.push(format!(
        "insertion seen by a transaction after {:.0} ms, on a new presentation",
        ms(d)
    ));
    if let Some(d) = wait_event(true)? {
        notes.push(format!(
            "pcscd's card inserted event within {:.0} ms",
            ms(d)
        ));
    }
    let mut tx = c.card.begin()?;
    select_path(tx.as_mut(), EF05)?;
    let r = raw(tx.as_mut(), "READ RECORD 07", &read_record(0x07, 11)?)?;
    want_ok("READ RECORD 07 after the insertion", &r, Some(11))?;
    drop(tx);
    let st = c.card.status()?;
    ensure(st.present && st.atr == c.atr, || {
        format!("status after the insertion: {st:?}")
    })?;
    notes.push("the card answers again, with the same ATR".into());
    Ok(notes)
}

/// The SAM slot used while the card slot is in a transaction: three rounds of, with
/// the card's transaction open (application selected, EF05 record 07 read), the
/// PSAM's application selected and its terminal id read (`00 B0 96 00 06`), then the
/// card's record read again in the same transaction.
fn check_sam(c: &mut Ctx<'_, '_>) -> CheckOut {
    let Some(sam) = c.sam.as_mut() else {
        return Err(Stop::Skip(
            c.sam_absent.clone().unwrap_or_else(|| "no SAM slot".into()),
        ));
    };
    let mut tx = c.card.begin()?;
    select_path(tx.as_mut(), EF05)?;
    let first = raw(tx.as_mut(), "READ RECORD 07", &read_record(0x07, 11)?)?;
    want_ok("READ RECORD 07", &first, Some(11))?;
    let psam_aid = sscard_driver::keyprovider::psam::PSAM_AID;
    let mut tid = Vec::new();
    for round in 0..3 {
        let mut stx = Transaction::begin(sam)
            .map_err(|e| Stop::Fail(format!("a SAM transaction while the card's is open: {e}")))?;
        want_ok(
            "SAM: SELECT PSAM",
            &send(
                &mut stx,
                "SAM: SELECT PSAM",
                &apdu([0x00, 0xA4, 0x04, 0x00], &psam_aid, 0)?,
            )?,
            None,
        )?;
        let t = send(
            &mut stx,
            "SAM: READ BINARY 96",
            &apdu([0x00, 0xB0, 0x96, 0x00], &[], 6)?,
        )?;
        want_ok("SAM: READ BINARY 96 (terminal id)", &t, Some(6))?;
        if round > 0 {
            ensure(t.data == tid, || "the PSAM's terminal id changed".into())?;
        }
        tid = t.data;
        drop(stx);
        let again = raw(tx.as_mut(), "READ RECORD 07", &read_record(0x07, 11)?)?;
        ensure(again == first, || {
            format!(
                "round {}: the card's record 07 after the SAM's commands: {}",
                round + 1,
                show(&again)
            )
        })?;
    }
    Ok(vec![
        format!("PSAM terminal id {}", hex(&tid)),
        "3 rounds of SAM commands inside the card's transaction; the card kept its selection"
            .into(),
    ])
}

/// PIN entry on the reader's own keypad (PC/SC part 10 `FEATURE_VERIFY_PIN_DIRECT`,
/// CCID `PC_to_RDR_Secure`) with the card profile's VERIFY (1.1 §1): the card's PIN
/// typed is `9000`; Cancel pressed is the pad's `6401` and spends no try.
fn check_pin_pad(c: &mut Ctx<'_, '_>) -> CheckOut {
    if !c.pin_pad {
        return Err(Stop::Skip("the reader has no PIN pad".into()));
    }
    if let Keypad::Nobody(why) = &*c.keypad {
        return Err(Stop::Skip(why.clone()));
    }
    let pin = c.cfg.pin.clone();
    let mut tx = c.card.begin()?;
    want_ok(
        "SELECT application",
        &raw(tx.as_mut(), "SELECT application", &select_app()?)?,
        Some(0),
    )?;
    let mut type_on_pad = |action: PadAction<'_>,
                           ask: &str|
     -> Result<(ResponseApdu, Duration), Stop> {
        match c.keypad {
            Keypad::Driven(f) => f(action),
            Keypad::Technician => tell(ask),
            Keypad::Nobody(_) => {}
        }
        let t = Instant::now();
        let b = tx
            .pin_pad(&PadRequest::verify(pinpad::DEFAULT_TIMEOUT_S))
            .map_err(|e| Stop::Fail(format!("VERIFY on the pad: {e}")))?;
        let r = ResponseApdu::parse(&b)
            .map_err(|_| Stop::Fail(format!("VERIFY on the pad: answer {} too short", hex(&b))))?;
        Ok((r, t.elapsed()))
    };
    let (ok, took) = type_on_pad(
        PadAction::Type(&pin),
        "type the card's PIN on the reader's keypad, then OK",
    )?;
    want_ok("VERIFY typed on the pad", &ok, Some(0))?;
    let (cancel, _) = type_on_pad(PadAction::Cancel, "press Cancel on the reader's keypad")?;
    ensure(
        cancel.sw == StatusWord::PinEntry(PinEntry::Cancelled),
        || format!("Cancel on the pad: expected 6401, got {}", show(&cancel)),
    )?;
    let q = raw(
        tx.as_mut(),
        "VERIFY (Lc = 0)",
        &CommandApdu::new(0x00, 0x20, 0x00, 0x00),
    )?;
    ensure(q.sw == StatusWord::WrongPin { tries_left: 3 }, || {
        format!(
            "after the PIN and a Cancel the tries query answered {}",
            show(&q)
        )
    })?;
    Ok(vec![
        format!(
            "the card's PIN typed on the pad: 9000 ({} ms, the holder's time included)",
            took.as_millis()
        ),
        "Cancel: the pad answered 6401, no try spent (63C3)".into(),
    ])
}

fn pharmacy(cfg: &SuiteConfig, id: &sscard_driver::CardId) -> SoftwareKeys {
    SoftwareKeys::test_keys(
        id.region(),
        cfg.terminal_id,
        &[KeyPurpose::Ext, KeyPurpose::Int, KeyPurpose::Purchase],
    )
}

/// A purchase end to end with the test keys (card profile §6), as a pharmacy does it
/// (read, INTERNAL and EXTERNAL AUTHENTICATE, VERIFY, INITIALIZE FOR PURCHASE, DEBIT),
/// the TAC checked as the clearing centre does and the log record read; then the
/// amount loaded back with the issuing office's test keys (§7).
fn check_purchase(c: &mut Ctx<'_, '_>) -> CheckOut {
    let cfg = c.cfg;
    let pin = Pin::new(&cfg.pin).map_err(|e| Stop::Fail(format!("the configured PIN: {e}")))?;
    let when = chrono::Local::now().naive_local();
    let mut tx = Transaction::begin(&mut c.card)?;
    let rec = app::read_card(&mut tx)?;
    ensure(!rec.blocked, || "the card's application is blocked".into())?;
    let mut keys = pharmacy(cfg, &rec.card_id);
    ensure(
        app::internal_authenticate(&mut tx, &mut keys, &rec.card_id)?,
        || "not a test card: INTERNAL AUTHENTICATE does not match the test keys".into(),
    )?;
    app::external_authenticate(&mut tx, &mut keys, &rec.card_id)?;
    app::verify_pin(&mut tx, &pin)?;
    let before = app::balance(&mut tx)?;
    if before < cfg.amount {
        return Err(Stop::Skip(format!(
            "the card holds {before} fen, less than the {} the check pays",
            cfg.amount
        )));
    }
    let t = Instant::now();
    let p = app::initialize_purchase(&mut tx, &mut keys, &rec.card_id, cfg.amount, when)?;
    let proof = p.debit(&mut tx, &mut keys)?;
    let paid = t.elapsed();
    ensure(proof.balance_after == before - cfg.amount, || {
        format!(
            "balance after the debit {} (before {before})",
            proof.balance_after
        )
    })?;
    ensure(app::balance(&mut tx)? == before - cfg.amount, || {
        "GET BALANCE after the debit".into()
    })?;
    let tac = purchase_tac(rec.card_id, keys.terminal_id(), &proof, when);
    ensure(proof.tac == tac, || {
        format!("TAC {} (the centre computes {tac})", proof.tac)
    })?;
    let log = app::transaction_log(&mut tx)?;
    ensure(
        log.first()
            .is_some_and(|l| (l.counter, l.amount, l.kind) == (proof.counter, cfg.amount, 0x06)),
        || format!("the newest log record {:?}", log.first()),
    )?;
    let mut office =
        SoftwareKeys::test_keys(rec.card_id.region(), cfg.terminal_id, &KeyPurpose::ALL);
    app::verify_pin(&mut tx, &pin)?;
    let l = app::load(&mut tx, &mut office, &rec.card_id, cfg.amount, when)?;
    ensure(
        l.balance_after == before && app::balance(&mut tx)? == before,
        || {
            format!(
                "balance after loading back {} (before {before})",
                l.balance_after
            )
        },
    )?;
    Ok(vec![
        format!(
            "paid {} fen (counter {}, TAC {} as the centre computes it) in {:.0} ms",
            cfg.amount,
            proof.counter,
            proof.tac,
            ms(paid)
        ),
        format!("loaded back: the balance is {before} fen again"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            ReaderSpec::parse("serial:/dev/ttyUSB0:GemCorePOSPro").unwrap(),
            ReaderSpec::Serial {
                path: "/dev/ttyUSB0".into(),
                model: Model::GemCorePosPro
            }
        );
        let p = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0";
        assert_eq!(
            ReaderSpec::parse(&format!("serial:{p}")).unwrap(),
            ReaderSpec::Serial {
                path: p.into(),
                model: Model::GemPcTwin
            }
        );
        assert_eq!(
            ReaderSpec::parse("pcsc:Gemalto PC Twin Reader 00 00").unwrap(),
            ReaderSpec::Pcsc {
                reader: "Gemalto PC Twin Reader 00 00".into()
            }
        );
        assert_eq!(
            ReaderSpec::parse("sscard 0 00 00").unwrap(),
            ReaderSpec::Pcsc {
                reader: "sscard 0 00 00".into()
            }
        );
        assert!(ReaderSpec::parse("serial:").is_err());
        assert!(ReaderSpec::parse("pcsc:").is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let s = TimingStats::of("x", &v).unwrap();
        assert_eq!(s.median, Duration::from_millis(5));
        assert_eq!(s.p90, Duration::from_millis(9));
        assert_eq!(
            (s.min, s.max),
            (Duration::from_millis(1), Duration::from_millis(10))
        );
        assert!(TimingStats::of("x", &[]).is_none());
    }

    #[test]
    fn command_names() {
        assert_eq!(
            command_name(&[0x80, 0x50, 0x01, 0x02]),
            "INITIALIZE FOR PURCHASE"
        );
        assert_eq!(command_name(&[0x84, 0x5E, 0x00, 0x00]), "RELOAD PIN");
        assert_eq!(command_name(&[0x80, 0x70, 0x00, 0x00]), "CLA 80 INS 70");
    }
}
