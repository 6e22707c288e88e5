//! A serial CCID reader (GemPC Twin / GemCore family) holding [`VirtualCard`]s in its
//! slots, on a pseudo-terminal pair: what libccid's `libccidtwin` (and the project's own
//! serial backend) drive. `sscard-vcard --serial-reader` serves it; `docs/emulator.md`.
//!
//! The protocol is the one of LudovicRousseau/CCID `src/ccid_serial.c` (frames in
//! [`sscard_driver::transport::serial::frame`], CCID messages in
//! [`sscard_driver::transport::serial::ccid`]). What this reader does, as libccid
//! expects it (`src/commands.c`, `src/ifdhandler.c`, `src/ccid_serial.c` of libccid
//! 1.5.2, the version Debian ships here):
//!
//! - every command frame is answered by one answer frame carrying the command's `bSlot`
//!   and `bSeq`; a reader with echo (GemPC Twin, GemPC PinPad) first sends the command
//!   frame back as it got it; a card movement notification (`50 02` / `50 03`, slot 0
//!   only, once the escape `01 01 01` asked for them) goes after the echo and before the
//!   answer, the "synchronous" mode libccid sets;
//! - a frame with a wrong LRC is answered with the NAK frame `03 15 16` (and nothing
//!   else); a NAK from the host makes the reader send its last answer frame again;
//!   bytes that start no frame are skipped;
//! - the escapes libccid sends at start: `02` (firmware version, an ASCII string that
//!   must fit libccid's 50-byte buffer with its NUL) and `01 01 01` (card movement
//!   notification mode, answered with no data); other escapes fail with "command not
//!   supported";
//! - IccPowerOn: the card's ATR in a DataBlock (no card: failed, `ICC_MUTE`, ICC
//!   absent); IccPowerOff and GetSlotStatus: a SlotStatus whose ICC status is
//!   `00` (present and powered), `01` (present, not powered) or `02` (absent). libccid
//!   reads "present, not powered" after a power-on as "the card was swapped", so a
//!   powered card stays `00` until powered off or pulled;
//! - Get/SetParameters: the protocol data structure (§6.1.7): at power-on T=0
//!   `11 00 00 0A 00`, or for a card whose ATR names T=1 first T=1 `11 10 00 4D 00 IFSC
//!   00`; whatever SetParameters set afterwards (protocol 0 with 5 bytes, 1 with 7);
//! - XfrBlock: these readers declare TPDU-level exchange (`dwFeatures` 0x00010230 in
//!   libccid), and libccid sends a T=0 TPDU as one XfrBlock and takes the card's answer
//!   (data and SW1 SW2, or `61xx` / `6Cxx`) from one DataBlock: the procedure bytes stay
//!   between reader and card and GET RESPONSE is the host's business (libccid passes
//!   `61xx` up; the driver's `Transaction::transmit` sends GET RESPONSE). The emulated
//!   cards already answer as T=0 cards (`--t0`: case 4 answers `61xx`). A case-4
//!   command (header, Lc data, Le) is not a T=0 TPDU; this reader drops the Le and sends
//!   the card the case-3 TPDU, as a tolerant reader does. A PPS request (`FF …`) is
//!   answered with itself (accepted). A card that stays mute fails the command with
//!   `ICC_MUTE`; a card that tears itself out leaves the slot (absent, then back
//!   after [`ReaderOptions::reinsert_after`]);
//! - XfrBlock in T=1 (the slot's protocol 1: after SetParameters T=1, or from power-on
//!   for a card whose ATR names T=1 first): the data are one T=1 block and the answer
//!   the card's block ([`crate::serial_t1`]: I-blocks chained both ways by IFSC and
//!   IFSD, R-blocks, S(IFS), S(RESYNCH), S(ABORT), S(WTX) asked by the card; LRC only),
//!   what libccid's `openct/proto-t1.c` sends one block an XfrBlock (first S(IFS
//!   request) IFSD 254, `00 C1 01 FE 3E`). The command APDU reaches the card whole,
//!   Le and all;
//! - Secure (PIN pad, the GemPC PinPad model only): PIN verification and modification
//!   ([`SerialReader::secure`] says how), the holder's keys taken from a file
//!   ([`ReaderOptions::keypad`], [`Keys`]); and the escape `B2 A0 00 4D 4C` with ten
//!   16-byte strings that libccid sends to load the pad's prompts, answered with no
//!   data. libccid 1.5.2 reads an echo into the buffer of the answer it expects and
//!   gives up when the echo is longer ("Wrong value for frame size: 175" for that
//!   escape's echo in its 30-byte buffer), so a GemPC PinPad for libccid runs with
//!   [`ReaderOptions::echo_limit`] (docs/emulator.md).
//!
//! Fault injection, for the project's own serial backend's tests ([`Faults`], and
//! `sscard-vcard --serial-reader`'s fault flags): answer frames with a byte corrupted
//! or dropped, command frames NAKed, answers delayed or preceded by bursts of T=0 time
//! requests, echo forced on or off, the card pulled mid-APDU, the reader unplugged and
//! plugged in again; in T=1, a block of the card's with a bad EDC, and an S(WTX
//! request) before an answer. [`SerialReader::receive_timed`] says what to do on the line
//! (bytes, waits, unplugging), [`serve`] does it on a pty, [`Served`] in a thread.

use crate::serial_t1::{CardT1, Step};
use crate::{Reply, VirtualCard};
use sscard_driver::status::StatusWord;
use sscard_driver::transport::pinpad::{self, PadRequest};
use sscard_driver::transport::serial::ccid::{
    error, CcidError, Command, CommandBody, CommandStatus, IccStatus, Response, ResponseBody,
    Status, RDR_TO_PC_ESCAPE, RDR_TO_PC_PARAMETERS, RDR_TO_PC_SLOT_STATUS,
};
use sscard_driver::transport::serial::frame::{self, Decoder, Event, NAK_FRAME};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::{Zeroize, Zeroizing};

/// The reader models libccid knows by the name after the colon in `DEVICENAME`
/// (`set_ccid_descriptor` in `ccid_serial.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// One slot, echo on.
    GemPcTwin,
    /// Five slots (`bMaxSlotIndex` 4) on one port, echo off; libccid keeps one `bSeq`
    /// counter for the port.
    GemCorePosPro,
    /// One slot, echo on, a keypad (`bPINSupport` 3): PIN verification and
    /// modification (`PC_to_RDR_Secure`), the holder's keys read from
    /// [`ReaderOptions::keypad`].
    GemPcPinPad,
}

impl Model {
    /// Every model.
    pub const ALL: [Model; 3] = [Model::GemPcTwin, Model::GemCorePosPro, Model::GemPcPinPad];

    /// The name libccid takes in `DEVICENAME <tty>:<name>` (compared case-insensitively).
    pub fn name(self) -> &'static str {
        match self {
            Model::GemPcTwin => "GemPCTwin",
            Model::GemCorePosPro => "GemCorePOSPro",
            Model::GemPcPinPad => "GemPCPinPad",
        }
    }

    /// Parse a model name (case-insensitive, as libccid does).
    pub fn parse(s: &str) -> Option<Model> {
        Model::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
    }

    /// Whether the reader echoes each command frame before its answer.
    pub fn echo(self) -> bool {
        !matches!(self, Model::GemCorePosPro)
    }

    /// Number of slots (`bMaxSlotIndex` + 1).
    pub fn slots(self) -> usize {
        match self {
            Model::GemCorePosPro => 5,
            Model::GemPcTwin | Model::GemPcPinPad => 1,
        }
    }

    /// The firmware string answered to the escape `02` (libccid logs it).
    pub fn firmware(self) -> &'static str {
        match self {
            Model::GemPcTwin => "sscard emulated GemPC Twin 1.0",
            Model::GemCorePosPro => "sscard emulated GemCore POS Pro 1.0",
            Model::GemPcPinPad => "sscard emulated GemPC PinPad 1.0",
        }
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which frames a fault hits, counted from 1 since the reader was made or its faults
/// last set ([`SerialReader::set_faults`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hit {
    /// None.
    #[default]
    Never,
    /// The Nth only.
    Nth(u32),
    /// Every Nth (the Nth, the 2Nth, …); `Every(1)` is every one.
    Every(u32),
}

impl Hit {
    /// Whether the `n`th frame is hit.
    pub fn hits(self, n: u32) -> bool {
        match self {
            Hit::Never => false,
            Hit::Nth(k) => n == k,
            Hit::Every(k) => k > 0 && n.is_multiple_of(k),
        }
    }

    /// `N` (the Nth only) or `every:N`.
    pub fn parse(s: &str) -> Result<Hit, String> {
        let (every, n) = match s.strip_prefix("every:") {
            Some(n) => (true, n),
            None => (false, s),
        };
        let n: u32 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?}: N or every:N, N from 1"))?;
        Ok(if every { Hit::Every(n) } else { Hit::Nth(n) })
    }
}

/// A burst of T=0 time requests before an answer: `count` bytes `80`, each after
/// `interval` of silence, and the answer `interval` after the last one (the answer
/// comes `(count + 1) × interval` late, and the line is never quiet longer than
/// `interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRequests {
    pub hit: Hit,
    pub count: u32,
    pub interval: Duration,
}

/// Something that happens on the Nth XfrBlock (counted over every slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnXfr {
    /// Which XfrBlock, from 1.
    pub nth: u32,
    /// Whether the card runs the command first (its answer is then lost): with
    /// `false` the command never reaches it.
    pub card_runs: bool,
}

/// The card asks for a waiting time extension (S(WTX request) with `multiplier`)
/// before these answers (APDUs answered in T=1, counted from 1), and, once the host
/// answered it, holds its answer back `hold` (in silence: longer than the host's
/// normal timeout, within the extended one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T1Wtx {
    pub hit: Hit,
    pub multiplier: u8,
    pub hold: Duration,
}

/// Fault injection, for the project's own serial backend's tests. Every field defaults
/// to "no fault"; libccid's cross-check runs without faults (libccid resends on a NAK
/// without a bound and pcscd never reopens a reader from reader.conf).
///
/// Answer frames are counted once each: a frame sent again on the host's NAK is sent
/// intact and not counted, so a damaged answer always has a good copy to resend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// Flip a bit (`^ 0x20`) of the last byte before the LRC of these answer frames:
    /// the frame keeps its length and its LRC fails.
    pub corrupt: Hit,
    /// Leave out the middle byte of these answer frames: a frame cut short.
    pub drop_byte: Hit,
    /// Answer these command frames (counted over intact command frames) with the NAK
    /// frame `03 15 16` alone, as if they had come damaged: no echo, the command not
    /// run.
    pub nak: Hit,
    /// Hold these answer frames back this long, in silence (after the echo and any
    /// card movement notice).
    pub delay: Option<(Hit, Duration)>,
    /// Time requests before these answer frames (after any [`Faults::delay`]).
    pub time_requests: Option<TimeRequests>,
    /// Echo the command frames (`Some(true)`) or not (`Some(false)`), whatever the
    /// model does.
    pub echo: Option<bool>,
    /// Pull the card out of the slot on this XfrBlock: the answer is a failure with
    /// the slot empty (`ICC_MUTE`, and `50 02` first for slot 0), and the card comes
    /// back after [`ReaderOptions::reinsert_after`].
    pub pull: Option<OnXfr>,
    /// Unplug the reader on this XfrBlock, leaving the command unanswered: the serving
    /// loop closes the pty (and removes the link), and after `down` opens a new one
    /// (behind the same link). The reader comes back as from a power cycle: cards
    /// unpowered, card movement notices off.
    pub unplug: Option<(OnXfr, Duration)>,
    /// T=1: flip a bit of the EDC of these blocks the card sends (counted over every
    /// block the card sends, resends included: `Nth` hits one only).
    pub t1_corrupt: Hit,
    /// T=1: an S(WTX request) before these answers.
    pub t1_wtx: Option<T1Wtx>,
}

/// How the reader behaves.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    /// After a card tore itself out, how long it stays out of the reader.
    pub reinsert_after: Duration,
    /// Fault injection (none by default).
    pub faults: Faults,
    /// The PSAM in slot 1 leaves and comes back with the card in slot 0 ([`SerialReader::move_card`]):
    /// a test bed's reader then holds no PSAM while no test uses it.
    pub sam_follows_card: bool,
    /// What the holder types on the keypad (the PIN pad model): the file's first line,
    /// read at each `PC_to_RDR_Secure` ([`Keys::parse`]); no file, or no line, is a
    /// holder who types nothing (the pad times out).
    pub keypad: Option<PathBuf>,
    /// How long the holder takes to type: the Secure's answer is held back this long,
    /// in silence, as a real pad is silent while it prompts.
    pub keypad_typing: Duration,
    /// Echo a command frame whose message is longer than this as its 10-byte header
    /// alone (dwLength 0). libccid reads the echo into the buffer of the answer it
    /// expects and gives up when the echo is longer; the GemPC PinPad's 165-byte
    /// escape that loads its prompts then fails (docs/emulator.md).
    pub echo_limit: Option<usize>,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions {
            reinsert_after: Duration::from_millis(300),
            faults: Faults::default(),
            sam_follows_card: false,
            keypad: None,
            keypad_typing: Duration::ZERO,
            echo_limit: None,
        }
    }
}

/// What the holder does at one PIN prompt: type PINs (each a PIN's digits, values 0 to
/// 9, in the order the pad asks for them), press Cancel, or type nothing.
#[derive(Clone, PartialEq, Eq)]
pub enum Keys {
    Pins(Vec<Zeroizing<Vec<u8>>>),
    Cancel,
    Timeout,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // the digits are PINs, even in an emulator
            Keys::Pins(p) => write!(f, "Pins({} entries)", p.len()),
            Keys::Cancel => f.write_str("Cancel"),
            Keys::Timeout => f.write_str("Timeout"),
        }
    }
}

impl Keys {
    /// A keypad line: `cancel`, `timeout`, or PINs separated by spaces (a PIN change
    /// is `current new new-again`). A key that is no digit makes the entry's length
    /// wrong, as a pad refuses it; an empty line is a timeout.
    pub fn parse(line: &str) -> Keys {
        let line = line.trim();
        match line {
            "" | "timeout" => Keys::Timeout,
            "cancel" => Keys::Cancel,
            _ => Keys::Pins(
                line.split_whitespace()
                    .map(|t| {
                        Zeroizing::new(
                            t.bytes()
                                .map(|b| if b.is_ascii_digit() { b - b'0' } else { 0xFF })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// The first line of `path` (what the holder types next); no file is a timeout.
    pub fn read(path: Option<&Path>) -> Keys {
        let Some(path) = path else {
            return Keys::Timeout;
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Keys::parse(text.lines().next().unwrap_or(""))
            }
            Err(e) => {
                tracing::debug!("keypad file {}: {e}", path.display());
                Keys::Timeout
            }
        }
    }
}

/// The T=0 protocol data structure the reader starts with (§6.1.7): Fi/Di 11, no
/// inverse convention, no extra guard time, WI 10, no clock stop.
pub const T0_DEFAULT_PARAMETERS: [u8; 5] = [0x11, 0x00, 0x00, 0x0A, 0x00];

/// One slot of the reader.
struct Slot {
    card: Option<Box<dyn VirtualCard>>,
    /// The card is in the slot (the slot has a card and it was not pulled).
    inserted: bool,
    powered: bool,
    protocol: u8,
    parameters: Vec<u8>,
    /// The card's T=1 state while the slot's protocol is T=1.
    t1: Option<CardT1>,
    /// A torn card comes back at this time.
    reinsert_at: Option<Instant>,
}

impl Slot {
    fn new(card: Option<Box<dyn VirtualCard>>) -> Slot {
        Slot {
            inserted: card.is_some(),
            card,
            powered: false,
            protocol: 0,
            parameters: T0_DEFAULT_PARAMETERS.to_vec(),
            t1: None,
            reinsert_at: None,
        }
    }

    fn icc(&self) -> IccStatus {
        match (self.inserted, self.powered) {
            (false, _) => IccStatus::Absent,
            (true, true) => IccStatus::PresentActive,
            (true, false) => IccStatus::PresentInactive,
        }
    }

    /// The card, when it is in the slot.
    fn card(&mut self) -> Option<&mut Box<dyn VirtualCard>> {
        if self.inserted {
            self.card.as_mut()
        } else {
            None
        }
    }

    fn pull(&mut self) {
        if let Some(c) = self.card.as_mut() {
            c.power_off();
        }
        self.inserted = false;
        self.powered = false;
        self.protocol = 0;
        self.parameters = T0_DEFAULT_PARAMETERS.to_vec();
        self.t1 = None;
    }
}

/// The reader: feed it the bytes the host writes ([`SerialReader::receive`]), send
/// the host what it returns. No I/O of its own, so tests drive it in process.
pub struct SerialReader {
    model: Model,
    opts: ReaderOptions,
    slots: Vec<Slot>,
    decoder: Decoder,
    /// Card movement notifications asked for (escape `01 01 01`).
    notify: bool,
    /// Slot 0's movements not yet notified (true = inserted).
    pending: Vec<bool>,
    /// The last answer frame, sent again on a NAK.
    last_answer: Option<Vec<u8>>,
    /// Intact command frames, answer frames and XfrBlocks so far (for [`Faults`]).
    commands: u32,
    answers: u32,
    xfrs: u32,
    /// T=1 blocks the card sent and APDUs it answered in T=1 (for [`Faults`]).
    t1_blocks: u32,
    t1_answers: u32,
    /// Silence before the next answer frame (a T=1 answer held after a WTX), and a
    /// hold waiting for the card's next I-block.
    hold: Option<Duration>,
    t1_hold: Option<Duration>,
    /// PIN entries the pad ran (`PC_to_RDR_Secure` commands it took up).
    secures: u32,
}

/// What the reader does on the line, in order ([`SerialReader::receive_timed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Send these bytes.
    Bytes(Vec<u8>),
    /// Stay silent this long.
    Wait(Duration),
    /// Close the port; open a new one after this long (the reader was reset: see
    /// [`Faults::unplug`]). Nothing follows it.
    Unplug(Duration),
}

/// Out, with consecutive bytes merged.
#[derive(Default)]
struct Outs(Vec<Out>);

impl Outs {
    fn bytes(&mut self, b: &[u8]) {
        if let Some(Out::Bytes(last)) = self.0.last_mut() {
            last.extend_from_slice(b);
        } else if !b.is_empty() {
            self.0.push(Out::Bytes(b.to_vec()));
        }
    }

    fn wait(&mut self, d: Duration) {
        if !d.is_zero() {
            self.0.push(Out::Wait(d));
        }
    }
}

impl SerialReader {
    /// A reader of `model` with `cards` in its first slots (at most
    /// [`Model::slots`]; `None` leaves a slot empty).
    pub fn new(
        model: Model,
        cards: Vec<Option<Box<dyn VirtualCard>>>,
        opts: ReaderOptions,
    ) -> Result<SerialReader, String> {
        if cards.len() > model.slots() {
            return Err(format!(
                "{model} has {} slot(s), {} cards given",
                model.slots(),
                cards.len()
            ));
        }
        let mut slots: Vec<Slot> = cards.into_iter().map(Slot::new).collect();
        slots.resize_with(model.slots(), || Slot::new(None));
        Ok(SerialReader {
            model,
            opts,
            slots,
            decoder: Decoder::new(),
            notify: false,
            pending: Vec::new(),
            last_answer: None,
            commands: 0,
            answers: 0,
            xfrs: 0,
            t1_blocks: 0,
            t1_answers: 0,
            hold: None,
            t1_hold: None,
            secures: 0,
        })
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// The faults in force.
    pub fn faults(&self) -> &Faults {
        &self.opts.faults
    }

    /// Change the faults; the frames and XfrBlocks they count are counted anew from
    /// here.
    pub fn set_faults(&mut self, faults: Faults) {
        self.opts.faults = faults;
        self.commands = 0;
        self.answers = 0;
        self.xfrs = 0;
        self.t1_blocks = 0;
        self.t1_answers = 0;
    }

    /// XfrBlocks received since the faults were last set.
    pub fn xfr_blocks(&self) -> u32 {
        self.xfrs
    }

    /// How long the holder takes to type from here ([`ReaderOptions::keypad_typing`]).
    pub fn set_keypad_typing(&mut self, typing: Duration) {
        self.opts.keypad_typing = typing;
    }

    /// PIN entries the pad ran so far (a Secure it refused is none).
    pub fn pin_entries(&self) -> u32 {
        self.secures
    }

    /// Whether the reader echoes command frames (the model's way, or the fault's).
    pub fn echoes(&self) -> bool {
        self.opts.faults.echo.unwrap_or(self.model.echo())
    }

    /// Power lost (unplugged): the cards stay in their slots unpowered, the state the
    /// host set up is gone (card movement notices, parameters, the last answer, a
    /// frame half received).
    pub fn power_loss(&mut self) {
        for s in &mut self.slots {
            if s.powered {
                if let Some(c) = s.card.as_mut() {
                    c.power_off();
                }
            }
            s.powered = false;
            s.protocol = 0;
            s.parameters = T0_DEFAULT_PARAMETERS.to_vec();
            s.t1 = None;
        }
        self.decoder = Decoder::new();
        self.notify = false;
        self.pending.clear();
        self.last_answer = None;
    }

    /// Whether a card is in `slot`.
    pub fn is_present(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.inserted)
    }

    /// The holder's card (slot 0) out (`present` false) or back in, as SIGUSR1 / SIGUSR2
    /// do; with [`ReaderOptions::sam_follows_card`] the PSAM in slot 1 too.
    pub fn move_card(&mut self, present: bool) {
        self.set_present(0, present);
        if self.opts.sam_follows_card {
            self.set_present(1, present);
        }
    }

    /// Take the card out of `slot` (`present` false) or put it back; false when the
    /// slot has no card to put back or does not exist.
    pub fn set_present(&mut self, slot: usize, present: bool) -> bool {
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        if present && s.card.is_none() {
            return false;
        }
        if s.inserted != present {
            if present {
                s.inserted = true;
                s.powered = false;
            } else {
                s.pull();
            }
            s.reinsert_at = None;
            if slot == 0 {
                self.pending.push(present);
            }
        }
        true
    }

    /// Let time pass: a torn card whose time out of the reader is over comes back.
    pub fn tick(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.slots[i].reinsert_at.is_some_and(|t| now >= t) {
                self.set_present(i, true);
            }
        }
    }

    /// Bytes from the host in; the bytes to send back out, the [`Faults`]' waits left
    /// out (and nothing after an unplug).
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for o in self.receive_timed(bytes) {
            if let Out::Bytes(b) = o {
                out.extend_from_slice(&b);
            }
        }
        out
    }

    /// Bytes from the host in; what to do on the line, waits and unplugging included.
    pub fn receive_timed(&mut self, bytes: &[u8]) -> Vec<Out> {
        self.decoder.push(bytes);
        let mut out = Outs::default();
        while let Some(ev) = self.decoder.next_event() {
            match ev {
                Event::Message(m) => {
                    if let Some(down) = self.command(&m, &mut out) {
                        self.power_loss();
                        out.0.push(Out::Unplug(down));
                        break;
                    }
                }
                Event::BadLrc(m) => {
                    tracing::debug!("bad LRC on a {}-byte message: NAK", m.len());
                    out.bytes(&NAK_FRAME);
                }
                Event::Nak => match &self.last_answer {
                    Some(a) => out.bytes(a),
                    None => tracing::debug!("NAK before any answer: ignored"),
                },
                other => tracing::debug!("skipped from the host: {other:?}"),
            }
        }
        out.0
    }

    /// Answer one command frame; `Some(down)` when the reader is unplugged instead.
    fn command(&mut self, message: &[u8], out: &mut Outs) -> Option<Duration> {
        let f = self.opts.faults.clone();
        self.commands = self.commands.saturating_add(1);
        if f.nak.hits(self.commands) {
            tracing::debug!("fault: command frame {} NAKed", self.commands);
            out.bytes(&NAK_FRAME);
            return None;
        }
        if self.echoes() {
            match self.opts.echo_limit {
                Some(limit) if message.len() > limit && message.len() >= 10 => {
                    let mut header = message[..10].to_vec();
                    header[1..5].fill(0);
                    out.bytes(&frame::encode(&header));
                }
                _ => out.bytes(&Zeroizing::new(frame::encode(message))),
            }
        }
        let answer = match Command::decode(message) {
            Ok(c) => {
                if matches!(c.body, CommandBody::XfrBlock { .. }) {
                    self.xfrs = self.xfrs.saturating_add(1);
                    if let Some((u, down)) = f.unplug.filter(|(u, _)| u.nth == self.xfrs) {
                        tracing::debug!("fault: unplugged on XfrBlock {}", self.xfrs);
                        if u.card_runs {
                            let _ = self.answer(&c);
                        }
                        return Some(down);
                    }
                    if let Some(p) = f.pull.filter(|p| p.nth == self.xfrs) {
                        tracing::debug!("fault: card pulled on XfrBlock {}", self.xfrs);
                        if p.card_runs {
                            let _ = self.answer(&c);
                        }
                        self.pull_mid_apdu(&c)
                    } else {
                        self.answer(&c)
                    }
                } else {
                    self.answer(&c)
                }
            }
            Err(e) => Self::undecodable(message, &e),
        };
        if self.notify {
            for present in self.pending.drain(..) {
                out.bytes(&frame::notification(present));
            }
        } else {
            self.pending.clear();
        }
        let bytes = match answer.encode() {
            Ok(b) => frame::encode(&b),
            Err(e) => {
                tracing::warn!("answer not encodable: {e}");
                return None;
            }
        };
        self.last_answer = Some(bytes.clone());
        self.answers = self.answers.saturating_add(1);
        let n = self.answers;
        if let Some((hit, by)) = f.delay {
            if hit.hits(n) {
                out.wait(by);
            }
        }
        if let Some(by) = self.hold.take() {
            out.wait(by);
        }
        if let Some(t) = f.time_requests.filter(|t| t.hit.hits(n)) {
            for _ in 0..t.count {
                out.wait(t.interval);
                out.bytes(&[0x80]);
            }
            out.wait(t.interval);
        }
        let mut sent = bytes;
        if f.corrupt.hits(n) {
            let i = sent.len() - 2;
            sent[i] ^= 0x20;
        }
        if f.drop_byte.hits(n) {
            sent.remove(sent.len() / 2);
        }
        out.bytes(&sent);
        None
    }

    /// The card leaves the slot of `c` while `c` is in the reader: a failure with the
    /// slot empty.
    fn pull_mid_apdu(&mut self, c: &Command) -> Response {
        let i = usize::from(c.slot);
        let Some(slot) = self.slots.get_mut(i) else {
            return reply(c, Status::new(IccStatus::Absent, CommandStatus::Failed), 5);
        };
        if slot.inserted {
            slot.pull();
            slot.reinsert_at = Some(Instant::now() + self.opts.reinsert_after);
            if i == 0 {
                self.pending.push(false);
            }
        }
        let s = &self.slots[i];
        reply(
            c,
            Status::new(s.icc(), CommandStatus::Failed),
            error::ICC_MUTE,
        )
    }

    /// A message that is no command: "command not supported", in the answer type a
    /// command of that type would get (a DataBlock when the type is unknown).
    fn undecodable(message: &[u8], e: &CcidError) -> Response {
        tracing::debug!("undecodable command: {e}");
        let slot = message.get(5).copied().unwrap_or(0);
        let seq = message.get(6).copied().unwrap_or(0);
        let failed = Status::new(IccStatus::PresentInactive, CommandStatus::Failed);
        Response {
            slot,
            seq,
            status: failed,
            error: error::CMD_NOT_SUPPORTED,
            body: ResponseBody::DataBlock {
                chain: 0,
                data: Vec::new(),
            },
        }
    }

    fn answer(&mut self, c: &Command) -> Response {
        if let CommandBody::Secure { data, .. } = &c.body {
            return self.secure(c, data);
        }
        let Some(slot) = self.slots.get_mut(usize::from(c.slot)) else {
            // bError: the offset of the bad field, bSlot
            return reply(c, Status::new(IccStatus::Absent, CommandStatus::Failed), 5);
        };
        let ok = |s: &Slot| Status::new(s.icc(), CommandStatus::Ok);
        let failed = |s: &Slot| Status::new(s.icc(), CommandStatus::Failed);
        match &c.body {
            CommandBody::Escape { data } => {
                let status = Status::new(slot.icc(), CommandStatus::Ok);
                match data.as_slice() {
                    [0x02] => with_data(c, status, self.model.firmware().as_bytes().to_vec()),
                    [0x01, 0x01, 0x01] => {
                        self.notify = true;
                        with_data(c, status, Vec::new())
                    }
                    // the pad's prompts (libccid's `ccid_open_hack_post`: B2 A0 00 4D
                    // 4C, then ten 16-byte strings): taken, not shown
                    [0xB2, 0xA0, 0x00, 0x4D, 0x4C, strings @ ..]
                        if self.model == Model::GemPcPinPad && strings.len() == 160 =>
                    {
                        with_data(c, status, Vec::new())
                    }
                    other => {
                        tracing::debug!("escape {} not supported", hex::encode_upper(other));
                        reply(c, failed(slot), error::CMD_NOT_SUPPORTED)
                    }
                }
            }
            CommandBody::IccPowerOn { .. } => match slot.card() {
                None => reply(c, failed(slot), error::ICC_MUTE),
                Some(card) => {
                    card.power_on();
                    let atr = card.atr();
                    slot.powered = true;
                    // the protocol the ATR names first, with its default parameters
                    match t1_first(&atr) {
                        Some(ifsc) => {
                            slot.protocol = 1;
                            slot.parameters = vec![0x11, 0x10, 0x00, 0x4D, 0x00, ifsc, 0x00];
                            slot.t1 = Some(CardT1::new(ifsc));
                        }
                        None => {
                            slot.protocol = 0;
                            slot.parameters = T0_DEFAULT_PARAMETERS.to_vec();
                            slot.t1 = None;
                        }
                    }
                    with_data(c, ok(slot), atr)
                }
            },
            CommandBody::IccPowerOff => {
                if let Some(card) = slot.card() {
                    card.power_off();
                }
                slot.powered = false;
                reply(c, ok(slot), 0)
            }
            CommandBody::GetSlotStatus => reply(c, ok(slot), 0),
            CommandBody::GetParameters => {
                if !slot.inserted {
                    return reply(c, failed(slot), error::ICC_MUTE);
                }
                parameters(c, ok(slot), slot.protocol, slot.parameters.clone())
            }
            CommandBody::SetParameters { protocol, data } => {
                let want = match protocol {
                    0 => 5,
                    1 => 7,
                    // bError: the offset of bProtocolNum
                    _ => return reply(c, failed(slot), 7),
                };
                if data.len() != want {
                    // the offset of dwLength
                    return reply(c, failed(slot), 1);
                }
                if !slot.inserted {
                    return reply(c, failed(slot), error::ICC_MUTE);
                }
                slot.protocol = *protocol;
                slot.parameters = data.clone();
                if *protocol == 1 {
                    // the card's state goes on if it already talked T=1
                    let ifsc = data.get(5).copied().unwrap_or(0x20);
                    slot.t1.get_or_insert_with(|| CardT1::new(ifsc));
                } else {
                    slot.t1 = None;
                }
                parameters(c, ok(slot), slot.protocol, slot.parameters.clone())
            }
            CommandBody::XfrBlock { data, .. } => {
                if !slot.powered {
                    return reply(c, failed(slot), error::ICC_MUTE);
                }
                if data.first() == Some(&0xFF) && is_pps(data) {
                    return with_data(c, ok(slot), data.clone());
                }
                if slot.protocol == 1 {
                    let (Some(card), true) = (slot.card.as_mut(), slot.inserted) else {
                        return reply(c, failed(slot), error::ICC_MUTE);
                    };
                    let t1 = slot.t1.get_or_insert_with(|| CardT1::new(0x20));
                    let mut block = match t1.receive(data) {
                        Step::Send(b) => b,
                        Step::Apdu(apdu) => match card.process(&apdu) {
                            Reply::Answer(r) => {
                                self.t1_answers = self.t1_answers.saturating_add(1);
                                let n = self.t1_answers;
                                let wtx = self.opts.faults.t1_wtx.filter(|w| w.hit.hits(n));
                                if let Some(w) = wtx {
                                    tracing::debug!("fault: S(WTX) before T=1 answer {n}");
                                    self.t1_hold = Some(w.hold);
                                }
                                t1.answer(r, wtx.map(|w| w.multiplier))
                            }
                            Reply::Mute => return reply(c, failed(slot), error::ICC_MUTE),
                            Reply::Tear => {
                                slot.pull();
                                slot.reinsert_at = Some(Instant::now() + self.opts.reinsert_after);
                                if c.slot == 0 {
                                    self.pending.push(false);
                                }
                                let s = &self.slots[usize::from(c.slot)];
                                return reply(c, failed(s), error::ICC_MUTE);
                            }
                        },
                    };
                    // a hold after a WTX is for the card's next I-block
                    if block.get(1).is_some_and(|p| p & 0x80 == 0) {
                        if let Some(h) = self.t1_hold.take() {
                            self.hold = Some(h);
                        }
                    }
                    self.t1_blocks = self.t1_blocks.saturating_add(1);
                    if self.opts.faults.t1_corrupt.hits(self.t1_blocks) {
                        tracing::debug!("fault: T=1 block {} with a bad EDC", self.t1_blocks);
                        if let Some(e) = block.last_mut() {
                            *e ^= 0x01;
                        }
                    }
                    let s = &self.slots[usize::from(c.slot)];
                    return with_data(c, Status::new(s.icc(), CommandStatus::Ok), block);
                }
                let Some(card) = slot.card() else {
                    return reply(c, failed(slot), error::ICC_MUTE);
                };
                let Some(tpdu) = t0_tpdu(data) else {
                    // the TPDU's length does not match its P3: the offset of dwLength
                    return reply(c, failed(slot), 1);
                };
                match card.process(&tpdu) {
                    Reply::Answer(r) => with_data(c, ok(slot), r),
                    Reply::Mute => reply(c, failed(slot), error::ICC_MUTE),
                    Reply::Tear => {
                        slot.pull();
                        slot.reinsert_at = Some(Instant::now() + self.opts.reinsert_after);
                        if c.slot == 0 {
                            self.pending.push(false);
                        }
                        let s = &self.slots[usize::from(c.slot)];
                        reply(c, failed(s), error::ICC_MUTE)
                    }
                }
            }
            // answered by [`SerialReader::secure`]
            CommandBody::Secure { .. } => reply(c, failed(slot), error::CMD_NOT_SUPPORTED),
        }
    }

    /// `PC_to_RDR_Secure` (CCID §6.1.11): the pad prompts, reads the holder's keys
    /// ([`ReaderOptions::keypad`]), fills the APDU's PIN blocks and sends it to the
    /// card: its answer, or the pad's own (bError `EF` cancelled, `F0` timeout; the
    /// status words `6402` and `6403` for PINs that differ or have a wrong length, as
    /// 2 bytes in the DataBlock whatever the protocol, which libccid passes on).
    /// For a T=1 card the reader puts the block prologue the host sent
    /// (bTeoPrologue) and an EDC around the APDU and answers the card's whole block.
    fn secure(&mut self, c: &Command, data: &[u8]) -> Response {
        let Some(slot) = self.slots.get(usize::from(c.slot)) else {
            return reply(c, Status::new(IccStatus::Absent, CommandStatus::Failed), 5);
        };
        let failed = Status::new(slot.icc(), CommandStatus::Failed);
        if self.model != Model::GemPcPinPad {
            return reply(c, failed, error::CMD_NOT_SUPPORTED);
        }
        if !slot.powered || !slot.inserted {
            return reply(c, failed, error::ICC_MUTE);
        }
        let request = match PadRequest::parse_ccid(data) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("Secure refused: {e}");
                // bError: the offset of abData
                return reply(c, failed, 10);
            }
        };
        let protocol = slot.protocol;
        self.secures = self.secures.saturating_add(1);
        let keys = Keys::read(self.opts.keypad.as_deref());
        tracing::debug!(purpose = ?request.purpose(), "PIN pad: {keys:?}");
        if !self.opts.keypad_typing.is_zero() {
            self.hold = Some(self.opts.keypad_typing);
        }
        let pins = match keys {
            Keys::Cancel => return reply(c, failed, pinpad::CCID_PIN_CANCELLED),
            Keys::Timeout => return reply(c, failed, pinpad::CCID_PIN_TIMEOUT),
            Keys::Pins(p) => p,
        };
        let entries: Vec<&[u8]> = pins.iter().map(|p| p.as_slice()).collect();
        let apdu = match request.fill(&entries) {
            Ok(a) => a,
            Err(e) => {
                let sw = StatusWord::PinEntry(e).code().to_be_bytes();
                let ok = Status::new(slot.icc(), CommandStatus::Ok);
                return with_data(c, ok, sw.to_vec());
            }
        };
        let mut tpdu = Zeroizing::new(Vec::with_capacity(apdu.len() + 4));
        if protocol == 1 {
            tpdu.extend_from_slice(&request.teo_prologue);
            tpdu.extend_from_slice(&apdu);
            let edc = tpdu.iter().fold(0u8, |a, b| a ^ b);
            tpdu.push(edc);
        } else {
            tpdu.extend_from_slice(&apdu);
        }
        // the card sees an exchange as from XfrBlock; the answer keeps the Secure's seq
        let mut xfr = Command {
            slot: c.slot,
            seq: c.seq,
            body: CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: tpdu.to_vec(),
            },
        };
        let r = self.answer(&xfr);
        if let CommandBody::XfrBlock { data, .. } = &mut xfr.body {
            data.zeroize();
        }
        r
    }
}

/// The answer to `c` with no data (a SlotStatus, or an empty answer of `c`'s type).
fn reply(c: &Command, status: Status, err: u8) -> Response {
    let body = match c.answer_type() {
        RDR_TO_PC_SLOT_STATUS => ResponseBody::SlotStatus { clock_status: 0 },
        RDR_TO_PC_PARAMETERS => ResponseBody::Parameters {
            protocol: 0,
            data: Vec::new(),
        },
        RDR_TO_PC_ESCAPE => ResponseBody::Escape {
            rfu: 0,
            data: Vec::new(),
        },
        _ => ResponseBody::DataBlock {
            chain: 0,
            data: Vec::new(),
        },
    };
    Response {
        slot: c.slot,
        seq: c.seq,
        status,
        error: err,
        body,
    }
}

/// A DataBlock or Escape answer to `c` carrying `data`.
fn with_data(c: &Command, status: Status, data: Vec<u8>) -> Response {
    let body = match c.answer_type() {
        RDR_TO_PC_ESCAPE => ResponseBody::Escape { rfu: 0, data },
        _ => ResponseBody::DataBlock { chain: 0, data },
    };
    Response {
        slot: c.slot,
        seq: c.seq,
        status,
        error: 0,
        body,
    }
}

fn parameters(c: &Command, status: Status, protocol: u8, data: Vec<u8>) -> Response {
    Response {
        slot: c.slot,
        seq: c.seq,
        status,
        error: 0,
        body: ResponseBody::Parameters { protocol, data },
    }
}

/// For an ATR whose first protocol is T=1, its IFSC (TA3, default 32).
fn t1_first(atr: &[u8]) -> Option<u8> {
    let a = sscard_driver::atr::Atr::parse(atr).ok()?;
    (a.protocol_numbers().first() == Some(&1)).then(|| a.ifsc())
}

/// A PPS request (ISO 7816-3 §9): `FF PPS0 [PPS1] [PPS2] [PPS3] PCK`, the PCK making
/// the XOR of all its bytes zero.
fn is_pps(b: &[u8]) -> bool {
    let Some(&pps0) = b.get(1) else {
        return false;
    };
    let optional = (pps0 >> 4 & 0x07).count_ones() as usize;
    b.len() == 3 + optional && frame::lrc(b) == 0
}

/// The T=0 TPDU the reader sends the card for `command`: as it is when it is one
/// (header with P3, and P3 data bytes or none), a 4-byte case 1 with P3 = 00, and a
/// case-4 command without its Le. `None` when the length matches no case.
fn t0_tpdu(command: &[u8]) -> Option<Vec<u8>> {
    match command.len() {
        0..=3 => None,
        4 => {
            let mut t = command.to_vec();
            t.push(0);
            Some(t)
        }
        5 => Some(command.to_vec()),
        n => {
            let lc = usize::from(command[4]);
            if n == 5 + lc {
                Some(command.to_vec())
            } else if n == 6 + lc {
                Some(command[..5 + lc].to_vec())
            } else {
                None
            }
        }
    }
}

/// The master side of a pseudo-terminal pair; the reader's end of the serial line.
pub struct Pty {
    master: File,
    /// Held open so that the master never reads EIO (hang-up) while no host has the
    /// tty open.
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Create a pair in raw mode (no echo, no signals, no line editing: libccid sets
    /// the same when it opens the tty, but bytes may come before that).
    pub fn open() -> io::Result<Pty> {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        // SAFETY: openpty writes two descriptors into the two live c_ints; the name,
        // termios and winsize pointers may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openpty succeeded: both descriptors are open and now owned here only.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        raw_mode(&slave)?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))?;
        Ok(Pty {
            master: File::from(master),
            _slave: slave,
            path,
        })
    }

    /// The host side's path (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait up to `timeout` for bytes from the host; `Ok(0)` when none came.
    pub fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let mut p = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(0);
        }
        match self.master.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            other => other,
        }
    }

    pub fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.master.write_all(b)
    }

    /// Close the pair (the host's side reads end of file or EIO, as when a USB-serial
    /// bridge is pulled); reads then find nothing and writes go nowhere.
    pub fn hang_up(&mut self) -> io::Result<()> {
        self.master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        self._slave = OwnedFd::from(File::open("/dev/null")?);
        Ok(())
    }
}

fn raw_mode(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it for a live descriptor.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a live descriptor and a pointer to a live termios.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as for tcgetattr.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Point `link` at `target`, replacing what was there (through a rename, so that a
/// reader of the link never sees it missing).
pub fn update_link(link: &Path, target: &Path) -> io::Result<()> {
    let tmp = link.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// What a control channel wants of the card in slot 0, set from signal handlers.
static PULL: AtomicBool = AtomicBool::new(false);
static PUSH: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    PULL.store(true, Ordering::SeqCst);
}

extern "C" fn on_usr2(_: libc::c_int) {
    PUSH.store(true, Ordering::SeqCst);
}

/// SIGUSR1 pulls the card in slot 0 out, SIGUSR2 puts it back (taken by [`serve`]).
pub fn install_presence_signals() {
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR2, on_usr2 as *const () as libc::sighandler_t);
    }
}

/// Sleep `d`, or less when `stop` is set meanwhile.
fn pause(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Serve `reader` on `pty` until `stop` is set: read the host's bytes, answer them (the
/// [`Faults`]' waits kept), and apply the presence signals and the torn cards' return
/// between reads. On a [`Faults::unplug`] the pty is closed (and `link` removed), and
/// after the time down a new one is opened (and `link` pointed at it) and handed to
/// `plugged`.
pub fn serve(
    reader: &Mutex<SerialReader>,
    pty: &mut Pty,
    link: Option<&Path>,
    stop: &AtomicBool,
    mut plugged: impl FnMut(&Path),
) -> io::Result<()> {
    let lock = || reader.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        {
            let mut r = lock();
            if PULL.swap(false, Ordering::SeqCst) {
                r.move_card(false);
            }
            if PUSH.swap(false, Ordering::SeqCst) {
                r.move_card(true);
            }
            r.tick(Instant::now());
        }
        let n = pty.read_timeout(&mut buf, Duration::from_millis(50))?;
        if n == 0 {
            continue;
        }
        let outs = lock().receive_timed(&buf[..n]);
        for o in outs {
            match o {
                Out::Bytes(b) => pty.write_all(&b)?,
                Out::Wait(d) => pause(d, stop),
                Out::Unplug(down) => {
                    if let Some(l) = link {
                        let _ = std::fs::remove_file(l);
                    }
                    pty.hang_up()?;
                    pause(down, stop);
                    *pty = Pty::open()?;
                    if let Some(l) = link {
                        update_link(l, pty.path())?;
                    }
                    plugged(pty.path());
                }
            }
        }
    }
    Ok(())
}

/// A reader served on a pty by a thread of this process (for tests that change its
/// faults as they go); stopped on drop.
pub struct Served {
    reader: Arc<Mutex<SerialReader>>,
    path: Arc<Mutex<PathBuf>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Served {
    /// Serve `reader` on a new pty, with a symbolic link to it at `link` if given.
    pub fn start(reader: SerialReader, link: Option<PathBuf>) -> io::Result<Served> {
        let mut pty = Pty::open()?;
        if let Some(l) = &link {
            update_link(l, pty.path())?;
        }
        let path = Arc::new(Mutex::new(pty.path().to_path_buf()));
        let reader = Arc::new(Mutex::new(reader));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, p, s) = (reader.clone(), path.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            serve(&r, &mut pty, link.as_deref(), &s, |new| {
                *p.lock().unwrap_or_else(|e| e.into_inner()) = new.to_path_buf();
            })
        });
        Ok(Served {
            reader,
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The host side of the current pty.
    pub fn path(&self) -> PathBuf {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Change the reader's faults (counted anew from here).
    pub fn set_faults(&self, faults: Faults) {
        self.with_reader(|r| r.set_faults(faults));
    }

    /// Do something with the reader, between two of its answers.
    pub fn with_reader<T>(&self, f: impl FnOnce(&mut SerialReader) -> T) -> T {
        f(&mut self.reader.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::{EmulatedCard, Knobs, Personalization, T0_ATR};
    use crate::psam::{Psam, PSAM_ATR};
    use sscard_driver::transport::serial::ccid::{
        PC_TO_RDR_GET_SLOT_STATUS, PC_TO_RDR_ICC_POWER_ON, RDR_TO_PC_DATA_BLOCK,
    };

    fn card() -> Box<dyn VirtualCard> {
        Box::new(
            EmulatedCard::new(
                &Personalization::default_test_card(),
                Knobs {
                    t0: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    }

    fn psam() -> Box<dyn VirtualCard> {
        let mut p = Psam::test_psam("650200".parse().unwrap(), "650200000001".parse().unwrap());
        p.set_t0(true);
        Box::new(p)
    }

    /// A host that frames commands as libccid does, with one bSeq for the port.
    struct Host {
        seq: u8,
        echo: bool,
    }

    impl Host {
        fn send(
            &mut self,
            r: &mut SerialReader,
            slot: u8,
            body: CommandBody,
        ) -> (Response, Vec<Event>) {
            let c = Command {
                slot,
                seq: self.seq,
                body,
            };
            self.seq = self.seq.wrapping_add(1);
            let msg = c.encode().unwrap();
            let out = r.receive(&frame::encode(&msg));
            let mut d = Decoder::new();
            d.push(&out);
            let mut ev = d.drain_events();
            assert_eq!(d.buffered(), 0);
            if self.echo {
                assert_eq!(ev.remove(0), Event::Message(msg), "the echo first");
            }
            let Some(Event::Message(last)) = ev.pop() else {
                panic!("no answer in {out:02X?}");
            };
            let resp = Response::decode(&last).unwrap();
            assert_eq!((resp.slot, resp.seq), (c.slot, c.seq));
            assert_eq!(resp.body_type(), c.answer_type());
            (resp, ev)
        }

        fn xfr(&mut self, r: &mut SerialReader, slot: u8, apdu: &str) -> Vec<u8> {
            let (resp, _) = self.send(
                r,
                slot,
                CommandBody::XfrBlock {
                    bwi: 0,
                    level_parameter: 0,
                    data: hex::decode(apdu).unwrap(),
                },
            );
            assert!(!resp.failed(), "{resp:?}");
            resp.data().to_vec()
        }
    }

    trait BodyType {
        fn body_type(&self) -> u8;
    }
    impl BodyType for Response {
        fn body_type(&self) -> u8 {
            match self.body {
                ResponseBody::DataBlock { .. } => RDR_TO_PC_DATA_BLOCK,
                ResponseBody::SlotStatus { .. } => RDR_TO_PC_SLOT_STATUS,
                ResponseBody::Parameters { .. } => RDR_TO_PC_PARAMETERS,
                ResponseBody::Escape { .. } => RDR_TO_PC_ESCAPE,
            }
        }
    }

    fn start(r: &mut SerialReader, h: &mut Host) {
        let (fw, _) = h.send(r, 0, CommandBody::Escape { data: vec![0x02] });
        assert_eq!(fw.data(), r.model().firmware().as_bytes());
        assert!(fw.data().len() < 50, "fits libccid's buffer with its NUL");
        let (n, _) = h.send(
            r,
            0,
            CommandBody::Escape {
                data: vec![1, 1, 1],
            },
        );
        assert!(!n.failed());
        assert!(n.data().is_empty());
    }

    /// libccidtwin's first frame, byte for byte, gets the firmware string, echoed first
    /// on a GemPC Twin.
    #[test]
    fn answers_libccids_first_frame() {
        let mut r = SerialReader::new(
            Model::GemPcTwin,
            vec![Some(card())],
            ReaderOptions::default(),
        )
        .unwrap();
        let first = [
            0x03, 0x06, 0x6B, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x6D,
        ];
        let out = r.receive(&first);
        assert_eq!(&out[..14], first, "echo");
        let mut d = Decoder::new();
        d.push(&out[14..]);
        let Some(Event::Message(m)) = d.next_event() else {
            panic!("{out:02X?}")
        };
        assert_eq!(m[0], RDR_TO_PC_ESCAPE);
        assert_eq!(&m[10..], Model::GemPcTwin.firmware().as_bytes());
        assert_eq!(d.next_event(), None);
    }

    #[test]
    fn power_on_status_parameters_and_a_t0_exchange() {
        let mut r = SerialReader::new(
            Model::GemPcTwin,
            vec![Some(card())],
            ReaderOptions::default(),
        )
        .unwrap();
        let mut h = Host { seq: 0, echo: true };
        start(&mut r, &mut h);
        let (s, _) = h.send(&mut r, 0, CommandBody::GetSlotStatus);
        assert_eq!(s.status.icc(), IccStatus::PresentInactive);
        let (atr, _) = h.send(&mut r, 0, CommandBody::IccPowerOn { power_select: 0 });
        assert_eq!(atr.data(), T0_ATR);
        let (s, _) = h.send(&mut r, 0, CommandBody::GetSlotStatus);
        assert_eq!(s.status, Status(0x00), "present and active");
        let (p, _) = h.send(&mut r, 0, CommandBody::GetParameters);
        assert_eq!(p.data(), T0_DEFAULT_PARAMETERS);
        // what libccid sends for this ATR (no TA1, no TC1, no TC2)
        let (p, _) = h.send(
            &mut r,
            0,
            CommandBody::SetParameters {
                protocol: 0,
                data: vec![0x11, 0x00, 0x00, 0x0A, 0x00],
            },
        );
        assert!(!p.failed());
        assert_eq!(
            p.body,
            ResponseBody::Parameters {
                protocol: 0,
                data: T0_DEFAULT_PARAMETERS.to_vec()
            }
        );
        // GET DATA (case 2) answers its data; a case-4 command answers 61xx, whatever
        // its Le, and GET RESPONSE gets the data
        let d = h.xfr(&mut r, 0, "80CA000108");
        assert_eq!(d, hex::decode("00112233445566779000").unwrap());
        let aid = "00A404000F7378312E73682EC9E7BBE1B1A3D5CF";
        assert_eq!(h.xfr(&mut r, 0, aid), [0x90, 0x00]);
        let int_auth = "008800020801020304050607 08";
        let int_auth = int_auth.replace(' ', "");
        let sel = h.xfr(&mut r, 0, &int_auth);
        assert_eq!(sel, [0x61, 0x10], "{sel:02X?}");
        let with_le = h.xfr(&mut r, 0, &format!("{int_auth}10"));
        assert_eq!(with_le, sel);
        let gr = h.xfr(&mut r, 0, &format!("00C00000{:02X}", sel[1]));
        assert_eq!(gr.len(), usize::from(sel[1]) + 2);
        assert_eq!(&gr[gr.len() - 2..], [0x90, 0x00]);
        // a TPDU whose P3 does not match its length fails
        let (bad, _) = h.send(
            &mut r,
            0,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: hex::decode("00A4040009A000").unwrap(),
            },
        );
        assert!(bad.failed());
        // a PPS is accepted
        assert_eq!(
            h.xfr(&mut r, 0, "FF1011FE"),
            hex::decode("FF1011FE").unwrap()
        );
        // power off: present, not active; the card then answers nothing
        let (off, _) = h.send(&mut r, 0, CommandBody::IccPowerOff);
        assert_eq!(off.status.icc(), IccStatus::PresentInactive);
        let (x, _) = h.send(
            &mut r,
            0,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: hex::decode("80CA000108").unwrap(),
            },
        );
        assert!(x.failed());
        assert_eq!(x.error, error::ICC_MUTE);
    }

    #[test]
    fn five_slots_without_echo_psam_in_slot_1() {
        let mut r = SerialReader::new(
            Model::GemCorePosPro,
            vec![Some(card()), Some(psam())],
            ReaderOptions::default(),
        )
        .unwrap();
        let mut h = Host {
            seq: 0xFE,
            echo: false,
        };
        start(&mut r, &mut h);
        let (a0, _) = h.send(&mut r, 0, CommandBody::IccPowerOn { power_select: 0 });
        let (a1, _) = h.send(&mut r, 1, CommandBody::IccPowerOn { power_select: 0 });
        assert_eq!((a0.data(), a1.data()), (&T0_ATR[..], &PSAM_ATR[..]));
        for slot in 2..5 {
            let (s, _) = h.send(&mut r, slot, CommandBody::GetSlotStatus);
            assert_eq!(s.status.icc(), IccStatus::Absent);
            let (p, _) = h.send(&mut r, slot, CommandBody::IccPowerOn { power_select: 0 });
            assert_eq!((p.status.0, p.error), (0x42, error::ICC_MUTE));
        }
        let (bad, _) = h.send(&mut r, 5, CommandBody::GetSlotStatus);
        assert_eq!((bad.status.0, bad.error), (0x42, 5));
        assert_eq!(h.xfr(&mut r, 0, "80CA000108").len(), 10);
        assert!(SerialReader::new(
            Model::GemPcTwin,
            vec![Some(card()), Some(psam())],
            ReaderOptions::default()
        )
        .is_err());
    }

    #[test]
    fn card_movements_are_notified_before_the_answer() {
        let mut r = SerialReader::new(
            Model::GemPcTwin,
            vec![Some(card())],
            ReaderOptions::default(),
        )
        .unwrap();
        let mut h = Host { seq: 0, echo: true };
        // before the notification mode is set: none sent
        r.set_present(0, false);
        let (s, ev) = h.send(&mut r, 0, CommandBody::GetSlotStatus);
        assert!(ev.is_empty());
        assert_eq!(s.status.icc(), IccStatus::Absent);
        start(&mut r, &mut h);
        r.set_present(0, true);
        let (s, ev) = h.send(&mut r, 0, CommandBody::GetSlotStatus);
        assert_eq!(ev, vec![Event::SlotChange(frame::SlotChange::Present)]);
        assert_eq!(s.status.icc(), IccStatus::PresentInactive);
        h.send(&mut r, 0, CommandBody::IccPowerOn { power_select: 0 });
        r.set_present(0, false);
        let (x, ev) = h.send(
            &mut r,
            0,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: hex::decode("80CA000108").unwrap(),
            },
        );
        assert_eq!(ev, vec![Event::SlotChange(frame::SlotChange::Absent)]);
        assert_eq!((x.status.0, x.error), (0x42, error::ICC_MUTE));
        assert!(!r.set_present(3, true), "no such slot");
    }

    #[test]
    fn bad_lrc_gets_a_nak_and_a_nak_the_last_answer_again() {
        let mut r = SerialReader::new(
            Model::GemCorePosPro,
            vec![Some(card())],
            ReaderOptions::default(),
        )
        .unwrap();
        let msg = [PC_TO_RDR_GET_SLOT_STATUS, 0, 0, 0, 0, 0, 7, 0, 0, 0];
        let mut f = frame::encode(&msg);
        let last = f.len() - 1;
        f[last] ^= 0xFF;
        assert_eq!(r.receive(&f), NAK_FRAME);
        // a NAK before any answer: nothing
        assert!(r.receive(&NAK_FRAME).is_empty());
        // garbage, then the frame again, cut in two
        let good = frame::encode(&msg);
        assert!(r.receive(&[0x00, 0x42]).is_empty());
        assert!(r.receive(&good[..4]).is_empty());
        let answer = r.receive(&good[4..]);
        let mut d = Decoder::new();
        d.push(&answer);
        let Some(Event::Message(m)) = d.next_event() else {
            panic!()
        };
        assert_eq!(Response::decode(&m).unwrap().seq, 7);
        assert_eq!(r.receive(&NAK_FRAME), answer);
    }

    #[test]
    fn unknown_commands_and_escapes_fail_cleanly() {
        let mut r = SerialReader::new(
            Model::GemPcPinPad,
            vec![Some(card())],
            ReaderOptions::default(),
        )
        .unwrap();
        let mut h = Host { seq: 0, echo: true };
        let (e, _) = h.send(&mut r, 0, CommandBody::Escape { data: vec![0x6A] });
        assert_eq!((e.failed(), e.error), (true, error::CMD_NOT_SUPPORTED));
        h.send(&mut r, 0, CommandBody::IccPowerOn { power_select: 0 });
        // a PIN structure cut short: bError names abData
        let (s, _) = h.send(&mut r, 0, secure(vec![0x00]));
        assert_eq!((s.failed(), s.error), (true, 10));
        // a reader without a keypad has no Secure
        let mut twin = SerialReader::new(
            Model::GemPcTwin,
            vec![Some(card())],
            ReaderOptions::default(),
        )
        .unwrap();
        let mut h = Host { seq: 0, echo: true };
        h.send(&mut twin, 0, CommandBody::IccPowerOn { power_select: 0 });
        let (s, _) = h.send(&mut twin, 0, secure(PadRequest::verify(30).ccid_bytes()));
        assert_eq!((s.failed(), s.error), (true, error::CMD_NOT_SUPPORTED));
        assert_eq!(twin.pin_entries(), 0);
        // an unknown message type, and a header whose dwLength lies: failed answers
        for msg in [
            vec![0x99, 0, 0, 0, 0, 0, 3, 0, 0, 0],
            vec![PC_TO_RDR_ICC_POWER_ON, 1, 0, 0, 0, 0, 4, 0, 0, 0, 9],
        ] {
            let out = r.receive(&frame::encode(&msg));
            let mut d = Decoder::new();
            d.push(&out);
            let ev = d.drain_events();
            let Some(Event::Message(m)) = ev.last() else {
                panic!()
            };
            let resp = Response::decode(m).unwrap();
            assert!(resp.failed());
            assert_eq!(resp.seq, msg[6]);
        }
    }

    fn secure(data: Vec<u8>) -> CommandBody {
        CommandBody::Secure {
            bwi: 0,
            level_parameter: 0,
            data,
        }
    }

    /// A PIN pad reader holding the test card (T=0 or T=1), its keypad a file.
    fn pad(t0: bool, opts: ReaderOptions) -> (SerialReader, Host) {
        let card = EmulatedCard::new(
            &Personalization::default_test_card(),
            Knobs {
                t0,
                ..Default::default()
            },
        )
        .unwrap();
        let mut r =
            SerialReader::new(Model::GemPcPinPad, vec![Some(Box::new(card))], opts).unwrap();
        let mut h = Host { seq: 0, echo: true };
        start(&mut r, &mut h);
        h.send(&mut r, 0, CommandBody::IccPowerOn { power_select: 0 });
        // the application selected (card profile §3), in the card's protocol
        let select = "00A404000F7378312E73682EC9E7BBE1B1A3D5CF";
        let answer = if t0 {
            h.xfr(&mut r, 0, select)
        } else {
            let mut block = hex::decode(format!("000014{select}")).unwrap();
            block.push(block.iter().fold(0, |x, y| x ^ y));
            let b = h.xfr(&mut r, 0, &hex::encode(block));
            assert_eq!(&b[..2], &[0x00, 0x00], "the card's first I-block");
            b[3..b.len() - 1].to_vec()
        };
        assert!(matches!(answer.first(), Some(0x61 | 0x90)), "{answer:02X?}");
        (r, h)
    }

    fn keypad_opts(dir: &tempfile::TempDir) -> (ReaderOptions, PathBuf) {
        let path = dir.path().join("keypad");
        let opts = ReaderOptions {
            keypad: Some(path.clone()),
            ..Default::default()
        };
        (opts, path)
    }

    #[test]
    fn the_pad_fills_the_card_profiles_pin_blocks_and_answers_for_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (opts, keys) = keypad_opts(&dir);
        let (mut r, mut h) = pad(true, opts);
        let verify = PadRequest::verify(30).ccid_bytes();
        let change = PadRequest::change(30).ccid_bytes();
        let mut run = |r: &mut SerialReader, typed: Option<&str>, data: &[u8]| {
            match typed {
                Some(t) => std::fs::write(&keys, format!("{t}\nignored\n")).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&keys);
                }
            }
            let (a, _) = h.send(r, 0, secure(data.to_vec()));
            (a.failed(), a.error, hex::encode_upper(a.data()))
        };
        let ok = (false, 0, "9000".to_string());
        assert_eq!(run(&mut r, Some("123456"), &verify), ok);
        assert_eq!(
            run(&mut r, Some("000000"), &verify),
            (false, 0, "63C2".into()),
            "the card's own answer"
        );
        // the pad's own answers: the card sees nothing, no try is spent
        for (typed, want) in [
            (
                Some("cancel"),
                (true, pinpad::CCID_PIN_CANCELLED, String::new()),
            ),
            (
                Some("timeout"),
                (true, pinpad::CCID_PIN_TIMEOUT, String::new()),
            ),
            (Some(""), (true, pinpad::CCID_PIN_TIMEOUT, String::new())),
            (None, (true, pinpad::CCID_PIN_TIMEOUT, String::new())),
            (Some("123"), (false, 0, "6403".into())),
            (Some("1234567890123"), (false, 0, "6403".into())),
            (Some("12a456"), (false, 0, "6403".into())),
            (Some("123456 123456"), (false, 0, "6403".into())),
        ] {
            assert_eq!(run(&mut r, typed, &verify), want, "{typed:?}");
        }
        assert_eq!(run(&mut r, Some("000000"), &verify).2, "63C1");
        assert_eq!(run(&mut r, Some("123456"), &verify), ok);
        // a change: current, new, new again
        assert_eq!(
            run(&mut r, Some("123456 2468 2469"), &change),
            (false, 0, "6402".into())
        );
        assert_eq!(run(&mut r, Some("123456 2468"), &change).2, "6403");
        assert_eq!(run(&mut r, Some("123456 2468 2468"), &change), ok);
        assert_eq!(run(&mut r, Some("123456"), &verify).2, "63C2");
        assert_eq!(run(&mut r, Some("2468"), &verify), ok);
        assert_eq!(r.pin_entries(), 17);
    }

    #[test]
    fn a_t1_card_gets_the_hosts_prologue_and_answers_a_whole_block() {
        let dir = tempfile::tempdir().unwrap();
        let (opts, keys) = keypad_opts(&dir);
        let (mut r, mut h) = pad(false, opts);
        std::fs::write(&keys, "123456\n").unwrap();
        for (ns, pcb) in [(0x40, 0x40), (0x00, 0x00)] {
            let mut req = PadRequest::verify(30);
            // NAD 0, an I-block with N(S), LEN: the APDU's 11 bytes
            req.teo_prologue = [0x00, ns, 0x0B];
            let (a, _) = h.send(&mut r, 0, secure(req.ccid_bytes()));
            assert!(!a.failed(), "{a:?}");
            let b = a.data();
            assert_eq!(&b[..3], &[0x00, pcb, 0x02], "the card's I-block");
            assert_eq!(&b[3..5], &[0x90, 0x00]);
            assert_eq!(b[5], b[..5].iter().fold(0, |x, y| x ^ y), "its LRC");
        }
        // the pad's own status word is 2 bytes, no block, as libccid expects
        std::fs::write(&keys, "12\n").unwrap();
        let (a, _) = h.send(&mut r, 0, secure(PadRequest::verify(30).ccid_bytes()));
        assert_eq!(a.data(), &[0x64, 0x03]);
    }

    #[test]
    fn libccids_prompt_strings_are_taken_and_a_long_echo_is_cut_to_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let (mut opts, keys) = keypad_opts(&dir);
        opts.keypad_typing = Duration::from_millis(1500);
        let (mut r, mut h) = pad(true, opts);
        r.opts.echo_limit = Some(20);
        let mut l10n = vec![0xB2, 0xA0, 0x00, 0x4D, 0x4C];
        l10n.extend(std::iter::repeat_n(b' ', 160));
        let c = Command {
            slot: 0,
            seq: 0x33,
            body: CommandBody::Escape { data: l10n },
        };
        let msg = c.encode().unwrap();
        assert_eq!(msg.len(), 175);
        let out = r.receive(&frame::encode(&msg));
        let mut d = Decoder::new();
        d.push(&out);
        let ev = d.drain_events();
        let [Event::Message(echo), Event::Message(answer)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(echo.len(), 10, "the header alone");
        assert_eq!(&echo[..1], &msg[..1]);
        assert_eq!(&echo[1..5], &[0, 0, 0, 0], "dwLength 0");
        assert_eq!(&echo[5..], &msg[5..10]);
        let a = Response::decode(answer).unwrap();
        assert!(!a.failed(), "{a:?}");
        assert_eq!(a.seq, 0x33);
        // the holder takes 1.5 s to type: the answer comes after that silence
        std::fs::write(&keys, "123456\n").unwrap();
        let c = Command {
            slot: 0,
            seq: 0x34,
            body: secure(PadRequest::verify(30).ccid_bytes()),
        };
        let outs = r.receive_timed(&frame::encode(&c.encode().unwrap()));
        let waits: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Out::Wait(d) => Some(*d),
                _ => None,
            })
            .collect();
        assert_eq!(waits, [Duration::from_millis(1500)]);
        assert!(matches!(outs.last(), Some(Out::Bytes(_))));
        // a short command is echoed whole
        let (s, _) = h.send(&mut r, 0, CommandBody::GetSlotStatus);
        assert!(!s.failed());
    }

    #[test]
    fn keypad_lines() {
        assert_eq!(Keys::parse("  cancel "), Keys::Cancel);
        assert_eq!(Keys::parse("timeout"), Keys::Timeout);
        assert_eq!(Keys::parse(""), Keys::Timeout);
        let Keys::Pins(p) = Keys::parse("1234 5x") else {
            panic!()
        };
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].as_slice(), &[1, 2, 3, 4]);
        assert_eq!(p[1].as_slice(), &[5, 0xFF]);
        assert_eq!(format!("{:?}", Keys::parse("123456")), "Pins(1 entries)");
        assert_eq!(
            Keys::read(Some(Path::new("/nonexistent/keypad"))),
            Keys::Timeout
        );
        assert_eq!(Keys::read(None), Keys::Timeout);
    }

    #[test]
    fn a_torn_card_leaves_then_comes_back() {
        let card = EmulatedCard::new(
            &Personalization::default_test_card(),
            Knobs {
                t0: true,
                tear: Some(crate::card::Tear {
                    ins: 0xCA,
                    nth: 1,
                    commit: false,
                }),
                ..Default::default()
            },
        )
        .unwrap();
        let opts = ReaderOptions {
            reinsert_after: Duration::from_millis(10),
            ..Default::default()
        };
        let mut r =
            SerialReader::new(Model::GemCorePosPro, vec![Some(Box::new(card))], opts).unwrap();
        let mut h = Host {
            seq: 0,
            echo: false,
        };
        h.send(&mut r, 0, CommandBody::IccPowerOn { power_select: 0 });
        let (x, _) = h.send(
            &mut r,
            0,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: hex::decode("80CA000108").unwrap(),
            },
        );
        assert_eq!((x.status.0, x.error), (0x42, error::ICC_MUTE));
        assert!(!r.is_present(0));
        r.tick(Instant::now() + Duration::from_millis(20));
        assert!(r.is_present(0));
    }

    #[test]
    fn t0_tpdu_cases() {
        assert_eq!(t0_tpdu(&[0, 1, 2]), None);
        assert_eq!(t0_tpdu(&[0, 1, 2, 3]), Some(vec![0, 1, 2, 3, 0]));
        assert_eq!(t0_tpdu(&[0, 1, 2, 3, 0]), Some(vec![0, 1, 2, 3, 0]));
        assert_eq!(t0_tpdu(&[0, 1, 2, 3, 1, 9]), Some(vec![0, 1, 2, 3, 1, 9]));
        assert_eq!(
            t0_tpdu(&[0, 1, 2, 3, 1, 9, 0]),
            Some(vec![0, 1, 2, 3, 1, 9])
        );
        assert_eq!(t0_tpdu(&[0, 1, 2, 3, 1, 9, 0, 0]), None);
        assert!(is_pps(&[0xFF, 0x00, 0xFF]));
        assert!(is_pps(&[0xFF, 0x10, 0x11, 0xFE]));
        assert!(!is_pps(&[0xFF, 0x10, 0x11]));
        assert!(!is_pps(&[0xFF]));
        assert_eq!(Model::parse("gemcorepospro"), Some(Model::GemCorePosPro));
        assert_eq!(Model::parse("x"), None);
    }

    /// The pty pair carries bytes both ways.
    #[test]
    fn pty_pair() {
        let mut pty = Pty::open().unwrap();
        assert!(pty.path().starts_with("/dev/pts"));
        let mut host = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .unwrap();
        host.write_all(&[0x03, 0x06, 0x0A, 0x0D]).unwrap();
        let mut b = [0u8; 16];
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = pty.read_timeout(&mut b, Duration::from_secs(2)).unwrap();
            assert!(n > 0, "timeout");
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(
            got,
            [0x03, 0x06, 0x0A, 0x0D],
            "raw: no CR/LF mapping, no signals"
        );
        pty.write_all(&[0x50, 0x03, 0x0D]).unwrap();
        let mut r = [0u8; 3];
        host.read_exact(&mut r).unwrap();
        assert_eq!(r, [0x50, 0x03, 0x0D]);
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyS-emu");
        update_link(&link, pty.path()).unwrap();
        update_link(&link, pty.path()).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), pty.path());
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;
    use crate::card::{EmulatedCard, Knobs, Personalization};
    use std::sync::atomic::AtomicU32;

    /// A T=0 test card that counts the commands it runs.
    struct Counting {
        inner: EmulatedCard,
        runs: Arc<AtomicU32>,
    }

    impl VirtualCard for Counting {
        fn atr(&self) -> Vec<u8> {
            self.inner.atr()
        }
        fn power_on(&mut self) {
            self.inner.power_on()
        }
        fn power_off(&mut self) {
            self.inner.power_off()
        }
        fn reset(&mut self) {
            self.inner.reset()
        }
        fn process(&mut self, command: &[u8]) -> Reply {
            self.runs.fetch_add(1, Ordering::SeqCst);
            self.inner.process(command)
        }
    }

    fn reader(model: Model, faults: Faults) -> (SerialReader, Arc<AtomicU32>) {
        let runs = Arc::new(AtomicU32::new(0));
        let inner = EmulatedCard::new(
            &Personalization::default_test_card(),
            Knobs {
                t0: true,
                ..Default::default()
            },
        )
        .unwrap();
        let card = Counting {
            inner,
            runs: runs.clone(),
        };
        let opts = ReaderOptions {
            reinsert_after: Duration::from_millis(10),
            faults,
            ..Default::default()
        };
        let r = SerialReader::new(model, vec![Some(Box::new(card))], opts).unwrap();
        (r, runs)
    }

    fn frame_of(seq: u8, body: CommandBody) -> (Vec<u8>, Vec<u8>) {
        let msg = Command { slot: 0, seq, body }.encode().unwrap();
        (frame::encode(&msg), msg)
    }

    fn power_on(seq: u8) -> Vec<u8> {
        frame_of(seq, CommandBody::IccPowerOn { power_select: 0 }).0
    }

    fn status(seq: u8) -> Vec<u8> {
        frame_of(seq, CommandBody::GetSlotStatus).0
    }

    fn get_data(seq: u8) -> Vec<u8> {
        frame_of(
            seq,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data: hex::decode("80CA000108").unwrap(),
            },
        )
        .0
    }

    fn events(bytes: &[u8]) -> (Vec<Event>, usize) {
        let mut d = Decoder::new();
        d.push(bytes);
        let ev = d.drain_events();
        (ev, d.buffered())
    }

    /// The answers (messages of type ≥ 80) in `bytes`, decoded.
    fn answers(bytes: &[u8]) -> Vec<Response> {
        events(bytes)
            .0
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) if m[0] >= 0x80 => Some(Response::decode(&m).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn xfr(seq: u8, data: Vec<u8>) -> Vec<u8> {
        frame_of(
            seq,
            CommandBody::XfrBlock {
                bwi: 0,
                level_parameter: 0,
                data,
            },
        )
        .0
    }

    /// The data of the one DataBlock in `out`'s bytes, and the waits before it.
    fn t1_answer(out: &[Out]) -> (Vec<u8>, Vec<Duration>) {
        let mut waits = Vec::new();
        let mut data = Vec::new();
        for o in out {
            match o {
                Out::Wait(d) => waits.push(*d),
                Out::Bytes(b) => {
                    for a in answers(b) {
                        data = a.data().to_vec();
                    }
                }
                Out::Unplug(_) => panic!("unplugged"),
            }
        }
        (data, waits)
    }

    #[test]
    fn t1_after_set_parameters_with_libccids_blocks_and_the_faults() {
        use sscard_driver::transport::serial::t1::{decode, encode, Block, RError, SKind};
        let card =
            EmulatedCard::new(&Personalization::default_test_card(), Knobs::default()).unwrap();
        let f = Faults {
            t1_corrupt: Hit::Nth(4),
            t1_wtx: Some(T1Wtx {
                hit: Hit::Nth(2),
                multiplier: 3,
                hold: Duration::from_millis(900),
            }),
            ..Default::default()
        };
        let opts = ReaderOptions {
            faults: f,
            ..Default::default()
        };
        let mut r =
            SerialReader::new(Model::GemCorePosPro, vec![Some(Box::new(card))], opts).unwrap();
        r.receive(&power_on(0));
        let set = frame_of(
            1,
            CommandBody::SetParameters {
                protocol: 1,
                data: vec![0x11, 0x10, 0xFF, 0x45, 0, 0xFE, 0],
            },
        )
        .0;
        assert_eq!(answers(&r.receive(&set))[0].error, 0);
        // libccid's first block: S(IFS request) IFSD 254
        let (d, _) = t1_answer(&r.receive_timed(&xfr(2, hex::decode("00C101FE3E").unwrap())));
        assert_eq!(d, hex::decode("00E101FE1E").unwrap());
        let i = |ns, inf: &str| {
            encode(
                0,
                &Block::I {
                    ns,
                    more: false,
                    inf: hex::decode(inf).unwrap(),
                },
            )
        };
        // GET DATA (case 2) whole: the answer directly, no 61xx
        let (d, w) = t1_answer(&r.receive_timed(&xfr(3, i(false, "80CA000108"))));
        let Ok((
            0,
            Block::I {
                ns: false,
                more: false,
                inf,
            },
        )) = decode(&d)
        else {
            panic!("{d:02X?}")
        };
        assert_eq!(hex::encode_upper(&inf), "00112233445566779000");
        assert!(w.is_empty());
        // the 2nd answer: S(WTX request) first, then the answer held 900 ms (the 3rd
        // block the card sends, with a bad EDC: the 4th)
        let (d, _) = t1_answer(&r.receive_timed(&xfr(4, i(true, "80CA000108"))));
        assert_eq!(
            decode(&d).unwrap().1,
            Block::S {
                kind: SKind::Wtx,
                response: false,
                inf: vec![3]
            }
        );
        let resp = encode(
            0,
            &Block::S {
                kind: SKind::Wtx,
                response: true,
                inf: vec![3],
            },
        );
        let (d, w) = t1_answer(&r.receive_timed(&xfr(5, resp)));
        assert_eq!(w, [Duration::from_millis(900)]);
        assert!(decode(&d).is_err(), "the EDC is bad");
        // the host's R-block with the EDC error bit: the block again, intact
        let rb = encode(
            0,
            &Block::R {
                nr: true,
                error: RError::Edc,
            },
        );
        let (d, w) = t1_answer(&r.receive_timed(&xfr(6, rb)));
        assert!(w.is_empty());
        let Ok((0, Block::I { ns: true, .. })) = decode(&d) else {
            panic!("{d:02X?}")
        };
        // a power-on starts over in T=1 (the ATR names T=1 first)
        r.receive(&power_on(7));
        let (d, _) = t1_answer(&r.receive_timed(&xfr(8, i(false, "80CA000108"))));
        assert!(matches!(decode(&d), Ok((0, Block::I { ns: false, .. }))));
    }

    #[test]
    fn hits_and_their_syntax() {
        assert!(!Hit::Never.hits(1));
        assert!(Hit::Nth(2).hits(2) && !Hit::Nth(2).hits(4));
        assert!(Hit::Every(2).hits(2) && Hit::Every(2).hits(4) && !Hit::Every(2).hits(3));
        assert!(!Hit::Every(0).hits(0));
        assert_eq!(Hit::parse("3"), Ok(Hit::Nth(3)));
        assert_eq!(Hit::parse("every:5"), Ok(Hit::Every(5)));
        for bad in ["0", "every:0", "every:", "x", "-1"] {
            assert!(Hit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn corrupt_hits_the_nth_answer_and_the_resend_is_intact() {
        let f = Faults {
            corrupt: Hit::Nth(2),
            ..Default::default()
        };
        let (mut r, _) = reader(Model::GemCorePosPro, f);
        assert_eq!(answers(&r.receive(&status(0))).len(), 1);
        let out = r.receive(&status(1));
        let (ev, left) = events(&out);
        assert_eq!(left, 0, "same length");
        assert!(matches!(ev.as_slice(), [Event::BadLrc(_)]), "{ev:?}");
        let again = r.receive(&NAK_FRAME);
        assert_eq!(answers(&again)[0].seq, 1);
        assert_eq!(answers(&r.receive(&status(2)))[0].seq, 2, "the 3rd intact");
        // every 2nd
        r.set_faults(Faults {
            corrupt: Hit::Every(2),
            ..Default::default()
        });
        let hit: Vec<bool> = (3..7)
            .map(|s| answers(&r.receive(&status(s))).is_empty())
            .collect();
        assert_eq!(hit, [false, true, false, true]);
    }

    #[test]
    fn drop_byte_cuts_the_answer_short() {
        let f = Faults {
            drop_byte: Hit::Every(1),
            ..Default::default()
        };
        let (mut r, _) = reader(Model::GemPcTwin, f);
        let (msg_frame, msg) = frame_of(4, CommandBody::GetSlotStatus);
        let out = r.receive(&msg_frame);
        assert_eq!(
            out.len(),
            2 * msg_frame.len() - 1,
            "echo, then one byte short"
        );
        let (ev, left) = events(&out);
        assert_eq!(ev, vec![Event::Message(msg)], "the echo intact");
        assert_eq!(
            left,
            msg_frame.len() - 1,
            "a frame waiting for its last byte"
        );
        assert_eq!(answers(&r.receive(&NAK_FRAME))[0].seq, 4);
    }

    #[test]
    fn nak_refuses_the_command_unrun() {
        let f = Faults {
            nak: Hit::Nth(1),
            ..Default::default()
        };
        let (mut r, _) = reader(Model::GemPcTwin, f);
        assert_eq!(r.receive(&power_on(0)), NAK_FRAME, "alone: no echo");
        let s = answers(&r.receive(&status(1)));
        assert_eq!(s[0].status.icc(), IccStatus::PresentInactive, "not powered");
        let on = answers(&r.receive(&power_on(0)));
        assert!(!on[0].failed());
    }

    #[test]
    fn delay_and_time_requests_come_before_the_answer_after_the_echo() {
        let f = Faults {
            delay: Some((Hit::Nth(1), Duration::from_millis(700))),
            time_requests: Some(TimeRequests {
                hit: Hit::Every(1),
                count: 2,
                interval: Duration::from_millis(300),
            }),
            ..Default::default()
        };
        let (mut r, _) = reader(Model::GemPcTwin, f);
        let (cmd, _) = frame_of(0, CommandBody::GetSlotStatus);
        let out = r.receive_timed(&cmd);
        let ms = |m| Out::Wait(Duration::from_millis(m));
        let Out::Bytes(answer) = out.last().unwrap().clone() else {
            panic!("{out:?}")
        };
        assert_eq!(
            out,
            vec![
                Out::Bytes(cmd.clone()),
                ms(700),
                ms(300),
                Out::Bytes(vec![0x80]),
                ms(300),
                Out::Bytes(vec![0x80]),
                ms(300),
                Out::Bytes(answer.clone()),
            ]
        );
        assert_eq!(answers(&answer)[0].seq, 0);
        let (ev, _) = events(&r.receive(&status(1)));
        assert_eq!(
            ev[1..3],
            [Event::TimeExtension(0x80), Event::TimeExtension(0x80)],
            "the delay hit the 1st answer only, the burst every one"
        );
        assert_eq!(ev.len(), 4);
    }

    #[test]
    fn echo_forced_on_and_off() {
        let (cmd, msg) = frame_of(0, CommandBody::GetSlotStatus);
        for (model, echo) in [(Model::GemPcTwin, false), (Model::GemCorePosPro, true)] {
            let f = Faults {
                echo: Some(echo),
                ..Default::default()
            };
            let (mut r, _) = reader(model, f);
            assert_eq!(r.echoes(), echo);
            let (ev, _) = events(&r.receive(&cmd));
            assert_eq!(ev.len(), if echo { 2 } else { 1 }, "{model}");
            assert_eq!(ev[0] == Event::Message(msg.clone()), echo);
        }
    }

    #[test]
    fn the_card_pulled_mid_apdu() {
        for card_runs in [false, true] {
            let f = Faults {
                pull: Some(OnXfr { nth: 2, card_runs }),
                ..Default::default()
            };
            let (mut r, runs) = reader(Model::GemPcTwin, f);
            // card movement notices on
            let (n, _) = frame_of(
                0,
                CommandBody::Escape {
                    data: vec![1, 1, 1],
                },
            );
            r.receive(&n);
            r.receive(&power_on(1));
            assert!(!answers(&r.receive(&get_data(2)))[0].failed());
            let out = r.receive(&get_data(3));
            let (ev, _) = events(&out);
            assert!(ev.contains(&Event::SlotChange(frame::SlotChange::Absent)));
            let x = &answers(&out)[0];
            assert_eq!((x.status.0, x.error), (0x42, error::ICC_MUTE));
            assert_eq!(runs.load(Ordering::SeqCst), if card_runs { 2 } else { 1 });
            assert!(!r.is_present(0));
            r.tick(Instant::now() + Duration::from_millis(20));
            assert!(r.is_present(0), "back after reinsert_after");
        }
    }

    #[test]
    fn unplug_on_the_nth_xfr_block_resets_the_reader() {
        for card_runs in [false, true] {
            let down = Duration::from_millis(250);
            let f = Faults {
                unplug: Some((OnXfr { nth: 1, card_runs }, down)),
                ..Default::default()
            };
            let (mut r, runs) = reader(Model::GemPcTwin, f);
            r.receive(&power_on(0));
            // the XfrBlock and a command behind it in the same read
            let mut both = get_data(1);
            both.extend(status(2));
            let out = r.receive_timed(&both);
            assert_eq!(
                out,
                vec![Out::Bytes(get_data(1)), Out::Unplug(down)],
                "the echo, then nothing"
            );
            assert_eq!(runs.load(Ordering::SeqCst), u32::from(card_runs));
            // back: the card is in, unpowered; no resend of an answer from before
            assert!(r.receive(&NAK_FRAME).is_empty());
            let s = answers(&r.receive(&status(3)));
            assert_eq!(s[0].status.icc(), IccStatus::PresentInactive);
            // the Nth XfrBlock is past: the next one is answered
            r.receive(&power_on(4));
            assert!(!answers(&r.receive(&get_data(5)))[0].failed());
        }
    }

    /// [`serve`] closes the pty, removes the link, and after the time down opens a new
    /// pty behind the same link.
    #[test]
    fn unplugged_and_back_behind_the_link() {
        use sscard_driver::transport::serial::port::{Port, ReadOutcome, SerialPortIo};
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyEMU");
        let f = Faults {
            unplug: Some((
                OnXfr {
                    nth: 1,
                    card_runs: false,
                },
                Duration::from_millis(300),
            )),
            ..Default::default()
        };
        let (r, _) = reader(Model::GemCorePosPro, f);
        let served = Served::start(r, Some(link.clone())).unwrap();
        let first = served.path();
        assert_eq!(std::fs::read_link(&link).unwrap(), first);
        let open = || SerialPortIo::open(&link.to_string_lossy(), 115_200).unwrap();
        let read_answer = |p: &mut SerialPortIo| -> io::Result<Vec<Response>> {
            let mut got = Vec::new();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let mut b = [0u8; 256];
                if let ReadOutcome::Data(n) = p.read_some(&mut b, Duration::from_millis(50))? {
                    got.extend_from_slice(&b[..n]);
                    let a = answers(&got);
                    if !a.is_empty() {
                        return Ok(a);
                    }
                }
            }
            panic!("no answer");
        };
        let mut host = open();
        host.write_all(&power_on(0)).unwrap();
        assert!(!read_answer(&mut host).unwrap()[0].failed());
        host.write_all(&get_data(1)).unwrap();
        let t = Instant::now();
        assert!(read_answer(&mut host).is_err(), "the port went away");
        drop(host);
        // the link went before the pty (the new pty may well get the old one's number)
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(&link).is_err() {
            assert!(Instant::now() < until, "the link came back");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), served.path());
        let mut host = open();
        host.write_all(&status(2)).unwrap();
        let s = read_answer(&mut host).unwrap();
        assert_eq!(s[0].status.icc(), IccStatus::PresentInactive, "power lost");
        host.write_all(&power_on(3)).unwrap();
        read_answer(&mut host).unwrap();
        host.write_all(&get_data(4)).unwrap();
        assert!(!read_answer(&mut host).unwrap()[0].failed());
    }
}
