//! Conformance suite for the card side of the SSC-AES card profile
//! (`shared/spec/card-profile.md`), over any [`CardTransport`].
//!
//! The suite is an independent reading of the profile, not of the emulator: every
//! check builds its APDUs here, computes cryptograms and MACs with
//! [`sscard_driver::crypto`] and compares what the card answers with what the profile
//! requires. The same checks run against the in-process emulator
//! (`tests/conformance_sim.rs`), against the emulator through the real pcscd, and
//! against a real card: they need only a [`CardTransport`] and a [`ConformanceCard`]
//! describing what the card should hold.
//!
//! Each `check_*` function covers one area of the profile. It begins with a warm reset,
//! so checks do not depend on each other's leftovers, and it fails with a
//! [`ConformanceError`] naming the command, what the profile expects and what came
//! back. The error never carries a PIN or a key. [`run_all`] runs every check in
//! [`CHECKS`] and then puts the card back the way it was: application unblocked,
//! PIN reloaded to the description's PIN with 3 tries, balance and insured-status
//! record as before the run.
//!
//! What a run costs the card: one failed EXTERNAL AUTHENTICATE. The profile says
//! 5 failures block Kc\[EXT\] but not whether a success clears the count, so on a card
//! that never clears it, the fifth run blocks that key for good. A run also makes
//! purchases and loads (net zero after the restore step) and advances the purse
//! counters and the transaction log.
//!
//! Where the profile is silent, the suite takes these readings (each check's doc says
//! which it relies on):
//! - a correct VERIFY (or CHANGE PIN) restores the PIN tries to 3 (ISO 7816-4 practice);
//! - the third wrong PIN may answer `63C0` or `6983`, and the tries query on a blocked
//!   PIN `63C0` or `6983`;
//! - a blocked application still answers GET CHALLENGE, which APPLICATION UNBLOCK needs;
//! - on a blocked application, EF15 fails with `6985` either at its SELECT or at READ RECORD;
//! - READ RECORD of an identifier the current EF does not hold answers `6A83`, and
//!   log record 11 answers `6A83` or `6A86`;
//! - a line-MAC command whose challenge was not the last command's answer is refused
//!   (any status but `9000`) and changes nothing;
//! - a load past 2^31 − 1 is refused with `6A80` at INITIALIZE FOR LOAD or at CREDIT;
//! - GET TRANSACTION PROOF needs no VERIFY (§6 step 4 recovers after a reset), and
//!   UPDATE RECORD needs only its MAC;
//! - reading the transaction log happens after VERIFY (§3 lists only EF05, EF06 and
//!   EF15 as readable without authentication).
#![forbid(unsafe_code)]

use sscard_driver::apdu::{CommandApdu, ResponseApdu};
use sscard_driver::crypto::{self, LoadContext, PurchaseContext};
use sscard_driver::keys::{CardKeys, Key16, KeyPurpose};
use sscard_driver::status::StatusWord;
use sscard_driver::tlv::{BerTlv, SimpleTlv};
use sscard_driver::transport::{CardTransport, RawTransaction, Transaction, TransportError};
use sscard_driver::types::{is_bcd, CardId, TerminalId};
use std::fmt;
use zeroize::Zeroizing;

/// Amount in fen of each purchase and load the checks make, unless the description
/// says otherwise.
pub const DEFAULT_AMOUNT: u32 = 123;

/// What the card under test should hold, and how to talk to it.
pub struct ConformanceCard {
    /// Card identification code (EF05 record 01, the key diversification input).
    pub card_id: CardId,
    /// EF05 record 07 (ASCII).
    pub card_number: String,
    /// EF06 record 09, as text; the record is its GBK bytes right-padded with `00`.
    pub name: String,
    pin: Zeroizing<String>,
    /// The card's seven keys Kc.
    pub keys: CardKeys,
    /// Balance in fen before the suite runs.
    pub balance: u32,
    /// Terminal id sent in purchases and loads.
    pub terminal_id: TerminalId,
    /// Amount in fen of each purchase and load the checks make.
    pub amount: u32,
}

impl ConformanceCard {
    /// Describe a card. The PIN must be 4 to 12 digits (card profile §1).
    pub fn new(
        card_id: CardId,
        card_number: impl Into<String>,
        name: impl Into<String>,
        pin: &str,
        keys: CardKeys,
        balance: u32,
        terminal_id: TerminalId,
    ) -> Result<Self, ConformanceError> {
        pin_bcd(pin)?;
        Ok(ConformanceCard {
            card_id,
            card_number: card_number.into(),
            name: name.into(),
            pin: Zeroizing::new(pin.to_string()),
            keys,
            balance,
            terminal_id,
            amount: DEFAULT_AMOUNT,
        })
    }

    /// Use another amount (fen, at least 1) for the purchases and loads of the checks.
    pub fn with_amount(mut self, amount: u32) -> Self {
        self.amount = amount.max(1);
        self
    }

    fn key(&self, p: KeyPurpose) -> &Key16 {
        self.keys.get(p)
    }
}

impl fmt::Debug for ConformanceCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConformanceCard")
            .field("card_id", &self.card_id)
            .field("card_number", &self.card_number)
            .field("balance", &self.balance)
            .field("terminal_id", &self.terminal_id)
            .field("amount", &self.amount)
            .finish_non_exhaustive()
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// The card answered something other than what the profile requires.
    #[error("{command}: expected {expected}, got {got}")]
    Mismatch {
        command: String,
        expected: String,
        got: String,
    },
    /// The reader or link failed while the command was under way.
    #[error("{command}: transport failed: {source}")]
    Transport {
        command: String,
        #[source]
        source: TransportError,
    },
    /// The description cannot be used (a PIN that is not 4 to 12 digits…).
    #[error("card description: {0}")]
    Description(String),
}

fn mismatch(
    command: impl Into<String>,
    expected: impl fmt::Display,
    got: impl fmt::Display,
) -> ConformanceError {
    ConformanceError::Mismatch {
        command: command.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

fn ensure(
    ok: bool,
    command: &str,
    expected: impl fmt::Display,
    got: impl fmt::Display,
) -> Result<(), ConformanceError> {
    if ok {
        Ok(())
    } else {
        Err(mismatch(command, expected, got))
    }
}

fn hex(b: &[u8]) -> String {
    hex::encode_upper(b)
}

/// A response as the error messages show it.
fn show(r: &ResponseApdu) -> String {
    if r.data.is_empty() {
        r.sw.to_string()
    } else {
        format!("{} with data {}", r.sw, hex(&r.data))
    }
}

/// A check: one area of the profile.
pub type Check = fn(&mut dyn CardTransport, &ConformanceCard) -> Result<(), ConformanceError>;

/// Every check, in the order [`run_all`] runs them.
pub const CHECKS: &[(&str, Check)] = &[
    ("select application", check_select_application),
    ("balance", check_balance),
    ("records", check_records),
    ("chip serial", check_chip_serial),
    ("get challenge", check_get_challenge),
    ("transaction log", check_transaction_log),
    ("external authenticate", check_external_authenticate),
    ("internal authenticate", check_internal_authenticate),
    ("verify and reload pin", check_verify_and_reload_pin),
    ("change pin", check_change_pin),
    ("purchase", check_purchase),
    ("transaction proof", check_transaction_proof),
    ("load", check_load),
    ("update record", check_update_record),
    ("application block", check_application_block),
    ("unknown ins", check_unknown_ins),
    ("unknown cla", check_unknown_cla),
];

/// Run every check of [`CHECKS`], then a `"restore"` step that leaves the card usable:
/// unblocked, PIN reloaded to the description's with 3 tries, the balance and EF15
/// record 22 as they were before the run.
pub fn run_all(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Vec<(&'static str, Result<(), ConformanceError>)> {
    let before = snapshot(card).ok();
    let mut out: Vec<_> = CHECKS
        .iter()
        .map(|(name, check)| (*name, check(card, desc)))
        .collect();
    out.push(("restore", restore(card, desc, before.as_ref())));
    out
}

// ---------------------------------------------------------------------------------
// Talking to the card

/// Lends a raw transaction to a driver [`Transaction`] for one command.
struct Borrowed<'b, 'a>(&'b mut (dyn RawTransaction + 'a));

impl RawTransaction for Borrowed<'_, '_> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit_raw(command)
    }
}

/// One transaction on the card: commands with the driver's T=0 rules ([`Session::send`])
/// or exactly as the card answers them ([`Session::raw`]).
struct Session<'a> {
    raw: Box<dyn RawTransaction + 'a>,
}

fn transport(command: &str, source: TransportError) -> ConformanceError {
    ConformanceError::Transport {
        command: command.to_string(),
        source,
    }
}

impl<'a> Session<'a> {
    fn begin(card: &'a mut dyn CardTransport) -> Result<Self, ConformanceError> {
        let raw = card
            .begin()
            .map_err(|e| transport("begin transaction", e))?;
        Ok(Session { raw })
    }

    /// Send with the T=0 rules (`61xx` GET RESPONSE, `6Cxx` resend) applied.
    fn send(&mut self, what: &str, cmd: &CommandApdu) -> Result<ResponseApdu, ConformanceError> {
        let mut tx = Transaction::from_raw(Box::new(Borrowed(self.raw.as_mut())));
        tx.transmit(cmd).map_err(|e| transport(what, e))
    }

    /// Send and return the card's answer as is.
    fn raw(&mut self, what: &str, cmd: &CommandApdu) -> Result<ResponseApdu, ConformanceError> {
        let bytes = self
            .raw
            .transmit_raw(&cmd.to_bytes())
            .map_err(|e| transport(what, e))?;
        ResponseApdu::parse(&bytes)
            .map_err(|_| mismatch(what, "a response APDU (at least SW1 SW2)", hex(&bytes)))
    }

    /// Send and require the status word `want`; returns the data.
    fn expect(
        &mut self,
        what: &str,
        cmd: &CommandApdu,
        want: StatusWord,
    ) -> Result<Vec<u8>, ConformanceError> {
        let r = self.send(what, cmd)?;
        ensure(r.sw == want, what, want, show(&r))?;
        Ok(r.data)
    }

    /// Send and require one of `wants`; returns the status word.
    fn expect_any(
        &mut self,
        what: &str,
        cmd: &CommandApdu,
        wants: &[StatusWord],
    ) -> Result<StatusWord, ConformanceError> {
        let r = self.send(what, cmd)?;
        let list = wants
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join(" or ");
        ensure(wants.contains(&r.sw), what, list, show(&r))?;
        Ok(r.sw)
    }

    /// Send and require a refusal (anything but `9000`).
    fn refused(&mut self, what: &str, cmd: &CommandApdu) -> Result<StatusWord, ConformanceError> {
        let r = self.send(what, cmd)?;
        ensure(!r.sw.is_ok(), what, "a refusal (not 9000)", show(&r))?;
        Ok(r.sw)
    }

    /// Send and require `9000` with exactly `n` data bytes.
    fn ok_len(
        &mut self,
        what: &str,
        cmd: &CommandApdu,
        n: usize,
    ) -> Result<Vec<u8>, ConformanceError> {
        let r = self.send(what, cmd)?;
        ensure(
            r.sw.is_ok() && r.data.len() == n,
            what,
            format_args!("9000 with {n} data bytes"),
            show(&r),
        )?;
        Ok(r.data)
    }

    fn ok(&mut self, what: &str, cmd: &CommandApdu) -> Result<Vec<u8>, ConformanceError> {
        self.expect(what, cmd, StatusWord::Ok)
    }
}

/// Warm reset, begin a transaction and select the application (`9000` required).
fn fresh(card: &mut dyn CardTransport) -> Result<Session<'_>, ConformanceError> {
    card.reset().map_err(|e| transport("reset", e))?;
    let mut s = Session::begin(card)?;
    s.ok("SELECT application", &apdu::select_application()?)?;
    Ok(s)
}

// ---------------------------------------------------------------------------------
// Commands of card profile §5 to §7, built from the profile's tables

/// The application identifier: `"sx1.sh."` ‖ GBK("社会保障") (card profile §3).
pub fn aid() -> Vec<u8> {
    let (gbk, _, _) = encoding_rs::GBK.encode("社会保障");
    let mut a = b"sx1.sh.".to_vec();
    a.extend_from_slice(&gbk);
    a
}

/// A line-protected command (card profile §5): `data ‖ MAC4` where
/// `MAC4 = AES-CMAC(key, challenge ‖ CLA ‖ INS ‖ P1 ‖ P2 ‖ Lc ‖ data)` and Lc counts the
/// MAC.
pub fn mac_command(
    key: &Key16,
    challenge: &[u8; 8],
    header: [u8; 4],
    data: &[u8],
) -> Result<CommandApdu, ConformanceError> {
    let mac = crypto::line_mac(key, challenge, header, data);
    let mut body = Zeroizing::new(data.to_vec());
    body.extend_from_slice(&mac);
    apdu::build(header, &body, 0)
}

mod apdu {
    use super::*;

    pub(super) fn build(
        h: [u8; 4],
        data: &[u8],
        le: usize,
    ) -> Result<CommandApdu, ConformanceError> {
        CommandApdu::new(h[0], h[1], h[2], h[3])
            .with_data(data.to_vec())
            .and_then(|c| c.with_le(le))
            .map_err(|e| ConformanceError::Description(format!("cannot build an APDU: {e}")))
    }

    /// `00 A4 04 00 0F <AID>` (§3).
    pub(super) fn select_application() -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0xA4, 0x04, 0x00], &aid(), 0)
    }

    /// `00 A4 04 00 Lc <name> 00`: select by name asking for the FCI.
    pub(super) fn select_name_fci(name: &[u8]) -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0xA4, 0x04, 0x00], name, 256)
    }

    /// `00 A4 <p1> 00 02 <FID>` (§3; P1 `02`, or `00`).
    pub(super) fn select_ef(p1: u8, fid: u16) -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0xA4, p1, 0x00], &fid.to_be_bytes(), 0)
    }

    /// `00 B2 <tag> 00 <Le>` (§3).
    pub(super) fn read_record(tag: u8, le: usize) -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0xB2, tag, 0x00], &[], le)
    }

    /// `00 B2 <n> C4 17`: transaction log record n (§3).
    pub(super) fn read_log(n: u8) -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0xB2, n, 0xC4], &[], LOG_RECORD_LEN)
    }

    /// `80 CA 00 01 08` (§5).
    pub(super) fn get_chip_serial() -> Result<CommandApdu, ConformanceError> {
        build([0x80, 0xCA, 0x00, 0x01], &[], 8)
    }

    /// `00 84 00 00 08` (§5).
    pub(super) fn get_challenge() -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0x84, 0x00, 0x00], &[], 8)
    }

    /// `00 82 00 01 10 <C>` (§5).
    pub(super) fn external_authenticate(c: &[u8; 16]) -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0x82, 0x00, 0x01], c, 0)
    }

    /// `00 88 00 02 08 <R>` Le `10` (§5).
    pub(super) fn internal_authenticate(r: &[u8; 8]) -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0x88, 0x00, 0x02], r, 16)
    }

    /// `00 20 00 00 Lc <PIN>` (§5).
    pub(super) fn verify(pin: &str) -> Result<CommandApdu, ConformanceError> {
        Ok(build([0x00, 0x20, 0x00, 0x00], &pin_bcd(pin)?, 0)?.sensitive())
    }

    /// VERIFY with no PIN (Lc = 0): the tries query (§5).
    pub(super) fn verify_query() -> Result<CommandApdu, ConformanceError> {
        build([0x00, 0x20, 0x00, 0x00], &[], 0)
    }

    /// `80 5E 01 00 Lc <old> FF <new>` (§5).
    pub(super) fn change_pin(old: &str, new: &str) -> Result<CommandApdu, ConformanceError> {
        let mut d = pin_bcd(old)?;
        d.push(0xFF);
        d.extend_from_slice(&pin_bcd(new)?);
        Ok(build([0x80, 0x5E, 0x01, 0x00], &d, 0)?.sensitive())
    }

    /// `84 5E 00 00 Lc <new> ‖ MAC4`, MAC with Kc\[PIN\] (§5).
    pub(super) fn reload_pin(
        key: &Key16,
        challenge: &[u8; 8],
        new: &str,
    ) -> Result<CommandApdu, ConformanceError> {
        Ok(mac_command(key, challenge, [0x84, 0x5E, 0x00, 0x00], &pin_bcd(new)?)?.sensitive())
    }

    /// `04 DC <tag> 00 Lc <TLV> ‖ MAC4`, MAC with Kc\[MAINT\] (§5).
    pub(super) fn update_record(
        key: &Key16,
        challenge: &[u8; 8],
        tag: u8,
        value: &[u8],
    ) -> Result<CommandApdu, ConformanceError> {
        let tlv = SimpleTlv::new(tag, value.to_vec())
            .to_bytes()
            .map_err(|e| ConformanceError::Description(format!("record {tag:02X}: {e}")))?;
        mac_command(key, challenge, [0x04, 0xDC, tag, 0x00], &tlv)
    }

    /// `84 1E 00 00 04 MAC4` (§5).
    pub(super) fn application_block(
        key: &Key16,
        challenge: &[u8; 8],
    ) -> Result<CommandApdu, ConformanceError> {
        mac_command(key, challenge, [0x84, 0x1E, 0x00, 0x00], &[])
    }

    /// `84 18 00 00 04 MAC4` (§5).
    pub(super) fn application_unblock(
        key: &Key16,
        challenge: &[u8; 8],
    ) -> Result<CommandApdu, ConformanceError> {
        mac_command(key, challenge, [0x84, 0x18, 0x00, 0x00], &[])
    }

    /// `80 5C 00 02 04` (§5).
    pub(super) fn get_balance() -> Result<CommandApdu, ConformanceError> {
        build([0x80, 0x5C, 0x00, 0x02], &[], 4)
    }

    /// `80 50 01 02 0B <key> ‖ amount ‖ terminal id` Le `0F` (§6 step 1).
    pub(super) fn initialize_purchase(
        key_index: u8,
        amount: u32,
        tid: &TerminalId,
    ) -> Result<CommandApdu, ConformanceError> {
        let mut d = vec![key_index];
        d.extend_from_slice(&amount.to_be_bytes());
        d.extend_from_slice(&tid.0);
        build([0x80, 0x50, 0x01, 0x02], &d, 15)
    }

    /// `80 54 01 00 0F <seq> ‖ date ‖ time ‖ MAC1` Le `08` (§6 step 3).
    pub(super) fn debit(
        ctx: &PurchaseContext,
        mac1: &[u8; 4],
    ) -> Result<CommandApdu, ConformanceError> {
        let mut d = ctx.terminal_seq.to_be_bytes().to_vec();
        d.extend_from_slice(&ctx.date);
        d.extend_from_slice(&ctx.time);
        d.extend_from_slice(mac1);
        build([0x80, 0x54, 0x01, 0x00], &d, 8)
    }

    /// `80 5A 00 06 02 <counter>` Le `08` (§6 step 4).
    pub(super) fn transaction_proof(counter: u16) -> Result<CommandApdu, ConformanceError> {
        build([0x80, 0x5A, 0x00, 0x06], &counter.to_be_bytes(), 8)
    }

    /// `80 50 00 02 0B <key> ‖ amount ‖ terminal id` Le `10` (§7 step 1).
    pub(super) fn initialize_load(
        key_index: u8,
        amount: u32,
        tid: &TerminalId,
    ) -> Result<CommandApdu, ConformanceError> {
        let mut d = vec![key_index];
        d.extend_from_slice(&amount.to_be_bytes());
        d.extend_from_slice(&tid.0);
        build([0x80, 0x50, 0x00, 0x02], &d, 16)
    }

    /// `80 52 00 00 0B date ‖ time ‖ MAC2` Le `04` (§7 step 2).
    pub(super) fn credit(
        ctx: &LoadContext,
        mac2: &[u8; 4],
    ) -> Result<CommandApdu, ConformanceError> {
        let mut d = ctx.date.to_vec();
        d.extend_from_slice(&ctx.time);
        d.extend_from_slice(mac2);
        build([0x80, 0x52, 0x00, 0x00], &d, 4)
    }
}

/// PIN as packed BCD, an odd count padded with `F` (card profile §1).
fn pin_bcd(pin: &str) -> Result<Zeroizing<Vec<u8>>, ConformanceError> {
    if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConformanceError::Description(
            "a PIN is 4 to 12 decimal digits".into(),
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(6));
    for pair in pin.as_bytes().chunks(2) {
        let hi = pair.first().map_or(0, |c| c - b'0');
        let lo = pair.get(1).map_or(0x0F, |c| c - b'0');
        out.push(hi << 4 | lo);
    }
    Ok(out)
}

/// A PIN of the same length that differs from `pin` in every digit.
fn shifted_pin(pin: &str) -> Zeroizing<String> {
    Zeroizing::new(
        pin.bytes()
            .map(|c| char::from(b'0' + (c.wrapping_sub(b'0') + 5) % 10))
            .collect(),
    )
}

/// A 5-digit PIN (odd length, so its BCD ends in `F`) other than `pin`.
fn odd_pin(pin: &str) -> &'static str {
    if pin == "24680" {
        "13579"
    } else {
        "24680"
    }
}

/// Today's date and time as the terminal sends them: BCD `YYYYMMDD`, `hhmmss` (§1).
fn now_bcd() -> ([u8; 4], [u8; 3]) {
    let now = chrono::Local::now();
    let mut date = [0u8; 4];
    let mut time = [0u8; 3];
    // both strings are decimal digits of the right length, so these cannot fail
    let _ = hex::decode_to_slice(now.format("%Y%m%d").to_string(), &mut date);
    let _ = hex::decode_to_slice(now.format("%H%M%S").to_string(), &mut time);
    (date, time)
}

fn be32(b: &[u8]) -> u32 {
    b.iter().take(4).fold(0, |a, x| (a << 8) | u32::from(*x))
}

fn be16(b: &[u8]) -> u16 {
    b.iter().take(2).fold(0, |a, x| (a << 8) | u16::from(*x))
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    a
}

// ---------------------------------------------------------------------------------
// Small steps shared by the checks

fn challenge(s: &mut Session<'_>) -> Result<[u8; 8], ConformanceError> {
    let d = s.ok_len("GET CHALLENGE", &apdu::get_challenge()?, 8)?;
    Ok(arr(&d))
}

fn verify_pin(s: &mut Session<'_>, pin: &str, what: &str) -> Result<(), ConformanceError> {
    s.ok(what, &apdu::verify(pin)?).map(|_| ())
}

fn tries_query(s: &mut Session<'_>, want: &[StatusWord]) -> Result<StatusWord, ConformanceError> {
    s.expect_any(
        "VERIFY with Lc=0 (tries query)",
        &apdu::verify_query()?,
        want,
    )
}

fn pin_tries(n: u8) -> StatusWord {
    StatusWord::WrongPin { tries_left: n }
}

fn balance(s: &mut Session<'_>) -> Result<u32, ConformanceError> {
    let d = s.ok_len("GET BALANCE", &apdu::get_balance()?, 4)?;
    Ok(be32(&d))
}

fn expect_balance(s: &mut Session<'_>, want: u32, after: &str) -> Result<(), ConformanceError> {
    let b = balance(s)?;
    ensure(
        b == want,
        &format!("GET BALANCE after {after}"),
        format_args!("{want} fen"),
        format_args!("{b} fen"),
    )
}

/// Log record 1 (the newest), or `None` when the card answers `6A83`.
fn newest_log(s: &mut Session<'_>) -> Result<Option<Vec<u8>>, ConformanceError> {
    let what = "READ RECORD log 1";
    let r = s.send(what, &apdu::read_log(1)?)?;
    match r.sw {
        StatusWord::Ok if r.data.len() == LOG_RECORD_LEN => Ok(Some(r.data)),
        StatusWord::RecordNotFound => Ok(None),
        _ => Err(mismatch(
            what,
            "9000 with 23 bytes or 6A83 (record not found)",
            show(&r),
        )),
    }
}

/// What INITIALIZE FOR PURCHASE answers (§6 step 1).
struct PurchaseInit {
    balance: u32,
    counter: u16,
    random: [u8; 4],
}

fn initialize_purchase(
    s: &mut Session<'_>,
    desc: &ConformanceCard,
    amount: u32,
) -> Result<PurchaseInit, ConformanceError> {
    let what = format!("INITIALIZE FOR PURCHASE of {amount} fen");
    let d = s.ok_len(
        &what,
        &apdu::initialize_purchase(0x05, amount, &desc.terminal_id)?,
        15,
    )?;
    ensure(
        d[6..9] == [0, 0, 0] && d[9] == 0x01 && d[10] == 0x01,
        &what,
        "balance ‖ counter ‖ overdraft 000000 ‖ key version 01 ‖ alg 01 ‖ random",
        hex(&d),
    )?;
    Ok(PurchaseInit {
        balance: be32(&d[0..4]),
        counter: be16(&d[4..6]),
        random: arr(&d[11..15]),
    })
}

fn purchase_context(desc: &ConformanceCard, amount: u32, init: &PurchaseInit) -> PurchaseContext {
    let (date, time) = now_bcd();
    PurchaseContext {
        card_id: desc.card_id,
        amount,
        counter: init.counter,
        random: init.random,
        terminal_id: desc.terminal_id,
        terminal_seq: rand::random(),
        date,
        time,
    }
}

/// A purchase that went through, with what the card answered.
struct Purchased {
    ctx: PurchaseContext,
    mac1: [u8; 4],
    tac: [u8; 4],
    mac2: [u8; 4],
}

/// INITIALIZE FOR PURCHASE and DEBIT with a right MAC1; MAC2 and TAC checked (§6).
/// The PIN must be verified.
fn purchase(
    s: &mut Session<'_>,
    desc: &ConformanceCard,
    amount: u32,
) -> Result<Purchased, ConformanceError> {
    let init = initialize_purchase(s, desc, amount)?;
    let ctx = purchase_context(desc, amount, &init);
    let sk = ctx.session_key(desc.key(KeyPurpose::Purchase));
    let mac1 = ctx.mac1(&sk);
    let what = "DEBIT FOR PURCHASE";
    let d = s.ok_len(what, &apdu::debit(&ctx, &mac1)?, 8)?;
    let (tac, mac2) = (arr::<4>(&d[..4]), arr::<4>(&d[4..]));
    let want_mac2 = ctx.mac2(&sk);
    ensure(
        mac2 == want_mac2,
        what,
        format_args!("MAC2 = MAC4(SK, amount) = {}", hex(&want_mac2)),
        hex(&mac2),
    )?;
    let want_tac = ctx.tac(desc.key(KeyPurpose::Tac));
    ensure(
        tac == want_tac,
        what,
        format_args!("TAC {} (§6 step 3)", hex(&want_tac)),
        hex(&tac),
    )?;
    Ok(Purchased {
        ctx,
        mac1,
        tac,
        mac2,
    })
}

/// INITIALIZE FOR LOAD with the card's MAC1 checked (§7 step 1); returns the context
/// (dated now) and SKL.
fn initialize_load(
    s: &mut Session<'_>,
    desc: &ConformanceCard,
    amount: u32,
) -> Result<(LoadContext, Key16), ConformanceError> {
    let what = format!("INITIALIZE FOR LOAD of {amount} fen");
    let d = s.ok_len(
        &what,
        &apdu::initialize_load(0x06, amount, &desc.terminal_id)?,
        16,
    )?;
    load_context(desc, amount, &d, &what)
}

fn load_context(
    desc: &ConformanceCard,
    amount: u32,
    d: &[u8],
    what: &str,
) -> Result<(LoadContext, Key16), ConformanceError> {
    ensure(
        d.len() == 16 && d[7] == 0x01,
        what,
        "balance ‖ online counter ‖ key version ‖ alg 01 ‖ random ‖ MAC1",
        hex(d),
    )?;
    let (date, time) = now_bcd();
    let ctx = LoadContext {
        card_id: desc.card_id,
        amount,
        balance: be32(&d[0..4]),
        online_counter: be16(&d[4..6]),
        random: arr(&d[8..12]),
        terminal_id: desc.terminal_id,
        date,
        time,
    };
    let skl = ctx.session_key(desc.key(KeyPurpose::Load));
    let want = ctx.mac1(&skl);
    ensure(
        d[12..16] == want,
        what,
        format_args!(
            "MAC1 = MAC4(SKL, balance ‖ amount ‖ 02 ‖ terminal id) = {}",
            hex(&want)
        ),
        hex(&d[12..16]),
    )?;
    Ok((ctx, skl))
}

/// A whole load (§7) with MAC1 and TAC checked; returns the context. The PIN must be
/// verified.
fn load(
    s: &mut Session<'_>,
    desc: &ConformanceCard,
    amount: u32,
) -> Result<LoadContext, ConformanceError> {
    let (ctx, skl) = initialize_load(s, desc, amount)?;
    let what = "CREDIT FOR LOAD";
    let d = s.ok_len(what, &apdu::credit(&ctx, &ctx.mac2(&skl))?, 4)?;
    let want = ctx.tac(desc.key(KeyPurpose::Tac));
    ensure(
        want.is_some_and(|t| t[..] == d[..]),
        what,
        format_args!(
            "TAC {} (§7 step 2)",
            want.map(|t| hex(&t)).unwrap_or_default()
        ),
        hex(&d),
    )?;
    Ok(ctx)
}

// ---------------------------------------------------------------------------------
// Records (card profile §3)

/// Transaction log record length (§3).
const LOG_RECORD_LEN: usize = 23;

/// One record of the table of card profile §3.
struct RecordSpec {
    ef: u16,
    tag: u8,
    len: usize,
    field: &'static str,
}

const fn rec(ef: u16, tag: u8, len: usize, field: &'static str) -> RecordSpec {
    RecordSpec {
        ef,
        tag,
        len,
        field,
    }
}

const RECORDS: [RecordSpec; 15] = [
    rec(0xEF05, 0x01, 16, "card identification code"),
    rec(0xEF05, 0x02, 1, "card type"),
    rec(0xEF05, 0x03, 4, "specification version"),
    rec(0xEF05, 0x05, 4, "issue date"),
    rec(0xEF05, 0x06, 4, "expiry date"),
    rec(0xEF05, 0x07, 9, "card number"),
    rec(0xEF06, 0x08, 18, "social-security number"),
    rec(0xEF06, 0x09, 30, "name"),
    rec(0xEF06, 0x0A, 1, "gender"),
    rec(0xEF06, 0x0B, 1, "nation"),
    rec(0xEF06, 0x0C, 3, "birthplace"),
    rec(0xEF06, 0x0D, 4, "birth date"),
    rec(0xEF15, 0x20, 1, "insured category"),
    rec(0xEF15, 0x21, 3, "pooling region"),
    rec(0xEF15, 0x22, 1, "insured status"),
];

fn bcd_date_ok(b: &[u8]) -> bool {
    b.len() == 4 && is_bcd(b) && {
        let s = hex::encode(b);
        let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
        match (n(0..4), n(4..6), n(6..8)) {
            (Some(y), Some(m), Some(d)) => {
                chrono::NaiveDate::from_ymd_opt(y as i32, m, d).is_some()
            }
            _ => false,
        }
    }
}

fn bcd_time_ok(b: &[u8]) -> bool {
    b.len() == 3 && is_bcd(b) && b[0] <= 0x23 && b[1] <= 0x59 && b[2] <= 0x59
}

/// The name record: GBK, right-padded to 30 bytes with `00` (§1).
fn name_record(name: &str) -> Option<Vec<u8>> {
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(name);
    if unmappable || gbk.len() > 30 {
        return None;
    }
    let mut v = gbk.to_vec();
    v.resize(30, 0);
    Some(v)
}

/// Whether a record's value is what §3 says; `Err(expected)` if not.
fn record_value_ok(desc: &ConformanceCard, tag: u8, v: &[u8]) -> Result<(), String> {
    let ok = match tag {
        0x01 => v == desc.card_id.as_bytes(),
        0x02 => v == b"1",
        0x03 => v == b"3.00",
        0x05 | 0x06 | 0x0D => bcd_date_ok(v),
        0x07 => v == desc.card_number.as_bytes(),
        0x08 => {
            v.len() == 18
                && v[..17].iter().all(u8::is_ascii_digit)
                && (v[17].is_ascii_digit() || v[17] == b'X')
        }
        0x09 => name_record(&desc.name).is_some_and(|n| n == v),
        0x0A => matches!(v, b"1" | b"2" | b"9"),
        0x0B | 0x0C | 0x21 => is_bcd(v),
        0x20 | 0x22 => matches!(v, [0x01] | [0x02]),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match tag {
        0x01 => format!("card id {}", desc.card_id),
        0x02 => "ASCII \"1\"".into(),
        0x03 => "ASCII \"3.00\"".into(),
        0x05 | 0x06 | 0x0D => "a BCD date YYYYMMDD".into(),
        0x07 => format!("ASCII {:?}", desc.card_number),
        0x08 => "17 ASCII digits and a digit or X".into(),
        0x09 => format!("GBK {:?} padded with 00 to 30 bytes", desc.name),
        0x0A => "ASCII 1, 2 or 9".into(),
        0x20 | 0x22 => "BCD 01 or 02".into(),
        _ => "BCD".into(),
    })
}

/// Read one record with Le = 00 and check its SIMPLE-TLV and value.
fn read_record_checked(
    s: &mut Session<'_>,
    desc: &ConformanceCard,
    r: &RecordSpec,
) -> Result<Vec<u8>, ConformanceError> {
    let what = format!(
        "READ RECORD {:02X} ({}, EF{:04X}) Le=00",
        r.tag, r.field, r.ef
    );
    let data = s.ok(&what, &apdu::read_record(r.tag, 256)?)?;
    let shape = format!("SIMPLE-TLV {:02X} {:02X} + {} bytes", r.tag, r.len, r.len);
    let tlv = SimpleTlv::parse_exact(&data)
        .map_err(|e| mismatch(&what, &shape, format_args!("{} ({e})", hex(&data))))?;
    ensure(
        tlv.tag == r.tag && tlv.value.len() == r.len,
        &what,
        &shape,
        hex(&data),
    )?;
    record_value_ok(desc, r.tag, &tlv.value).map_err(|e| mismatch(&what, e, hex(&tlv.value)))?;
    Ok(data)
}

// ---------------------------------------------------------------------------------
// The checks

/// Card profile §3: SELECT by name answers `9000`; asked for it (Le = 00), the FCI, if
/// the card sends one, is a BER-TLV `6F` template whose `84` (if present) is the AID.
/// An unknown name and an unknown EF answer `6A82`.
pub fn check_select_application(
    card: &mut dyn CardTransport,
    _desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    let aid = aid();
    let what = "SELECT application with Le=00";
    let fci = s.ok(what, &apdu::select_name_fci(&aid)?)?;
    if !fci.is_empty() {
        let expected = "no data, or an FCI template 6F (with 84 = the AID)";
        let t = BerTlv::parse_all(&fci)
            .map_err(|e| mismatch(what, expected, format_args!("{} ({e})", hex(&fci))))?;
        let ok = match t.as_slice() {
            [fci_t] if fci_t.tag == 0x6F => match fci_t.find(&[0x6F, 0x84]) {
                Some(df) => df.bytes() == Some(&aid[..]),
                None => true,
            },
            _ => false,
        };
        ensure(ok, what, expected, hex(&fci))?;
    }
    let mut other = aid.clone();
    if let Some(last) = other.last_mut() {
        *last ^= 0x01;
    }
    s.expect(
        "SELECT an unknown application name",
        &apdu::select_name_fci(&other)?,
        StatusWord::FileNotFound,
    )?;
    s.ok("SELECT application again", &apdu::select_application()?)?;
    s.expect(
        "SELECT EF 0099 (absent)",
        &apdu::select_ef(0x02, 0x0099)?,
        StatusWord::FileNotFound,
    )?;
    Ok(())
}

/// Card profile §5: GET BALANCE needs no PIN and answers the description's balance.
pub fn check_balance(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    let b = balance(&mut s)?;
    ensure(
        b == desc.balance,
        "GET BALANCE (no PIN)",
        format_args!("{} fen", desc.balance),
        format_args!("{b} fen"),
    )
}

/// Card profile §3: every record of EF05, EF06 and EF15, read without authentication,
/// is `tag ‖ len ‖ value` with the table's length and encoding and the description's
/// card id, card number and name. A wrong non-zero Le (shorter and longer) gets
/// `6C <right Le>` with no data, and the resend with that Le gets the record. EF
/// selection with P1 `00` works too; an identifier the current EF does not hold
/// answers `6A83`.
pub fn check_records(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    for ef in [0xEF05u16, 0xEF06, 0xEF15] {
        s.ok(&format!("SELECT EF{ef:04X}"), &apdu::select_ef(0x02, ef)?)?;
        for r in RECORDS.iter().filter(|r| r.ef == ef) {
            let whole = read_record_checked(&mut s, desc, r)?;
            let full = whole.len();
            for wrong in [full - 1, full + 1] {
                let what = format!("READ RECORD {:02X} (EF{ef:04X}) Le={wrong:02X}", r.tag);
                let resp = s.raw(&what, &apdu::read_record(r.tag, wrong)?)?;
                ensure(
                    resp.sw == StatusWord::WrongLe(full as u8) && resp.data.is_empty(),
                    &what,
                    format_args!("6C{full:02X} and no data"),
                    show(&resp),
                )?;
            }
            let what = format!("READ RECORD {:02X} (EF{ef:04X}) Le={full:02X}", r.tag);
            let resp = s.raw(&what, &apdu::read_record(r.tag, full)?)?;
            ensure(
                resp.sw.is_ok() && resp.data == whole,
                &what,
                format_args!("{} 9000", hex(&whole)),
                show(&resp),
            )?;
        }
    }
    s.expect(
        "READ RECORD 01 while EF15 is selected",
        &apdu::read_record(0x01, 256)?,
        StatusWord::RecordNotFound,
    )?;
    s.ok("SELECT EF05 with P1=00", &apdu::select_ef(0x00, 0xEF05)?)?;
    read_record_checked(&mut s, desc, &RECORDS[0])?;
    s.expect(
        "READ RECORD 04 (no such identifier in EF05)",
        &apdu::read_record(0x04, 256)?,
        StatusWord::RecordNotFound,
    )?;
    Ok(())
}

/// Card profile §5: GET DATA `80 CA 00 01` answers the chip serial (the last 8 bytes of
/// the card id), before and after the application is selected.
pub fn check_chip_serial(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    card.reset().map_err(|e| transport("reset", e))?;
    let mut s = Session::begin(card)?;
    let want = desc.card_id.chip_serial();
    for what in ["GET DATA chip serial (after reset)", "GET DATA chip serial"] {
        let d = s.ok_len(what, &apdu::get_chip_serial()?, 8)?;
        ensure(d == want, what, hex(&want), hex(&d))?;
        s.ok("SELECT application", &apdu::select_application()?)?;
    }
    Ok(())
}

/// Card profile §5: GET CHALLENGE answers 8 bytes, different each time.
pub fn check_get_challenge(
    card: &mut dyn CardTransport,
    _desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    let a = challenge(&mut s)?;
    let b = challenge(&mut s)?;
    ensure(
        a != b,
        "GET CHALLENGE twice",
        "two different challenges",
        format_args!("{} twice", hex(&a)),
    )
}

/// Card profile §3: after VERIFY, log records `00 B2 n C4 17` for n = 1..10 are either
/// 23 bytes or `6A83`, present ones first; each has overdraft `000000`, type `06` or
/// `02`, a BCD date and time; purchase records (type `06`) have counters falling from
/// the newest (record 1). Record 11 answers `6A83` (or `6A86`).
pub fn check_transaction_log(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    verify_pin(&mut s, &desc.pin, "VERIFY")?;
    let mut absent_from = None;
    let mut last_purchase_counter: Option<u16> = None;
    for n in 1..=10u8 {
        let what = format!("READ RECORD log {n}");
        let r = s.send(&what, &apdu::read_log(n)?)?;
        match (r.sw, absent_from) {
            (StatusWord::RecordNotFound, _) => {
                absent_from.get_or_insert(n);
            }
            (StatusWord::Ok, None) if r.data.len() == LOG_RECORD_LEN => {
                let d = &r.data;
                let shape = "counter ‖ overdraft 000000 ‖ amount ‖ type 06/02 ‖ terminal id ‖ BCD date ‖ BCD time";
                ensure(
                    d[2..5] == [0, 0, 0]
                        && matches!(d[9], 0x06 | 0x02)
                        && bcd_date_ok(&d[16..20])
                        && bcd_time_ok(&d[20..23]),
                    &what,
                    shape,
                    hex(d),
                )?;
                if d[9] == 0x06 {
                    let c = be16(&d[0..2]);
                    if let Some(newer) = last_purchase_counter {
                        ensure(
                            c < newer,
                            &what,
                            format_args!(
                                "a purchase counter below {newer} (record 1 is the newest)"
                            ),
                            c,
                        )?;
                    }
                    last_purchase_counter = Some(c);
                }
            }
            (_, Some(first_absent)) => {
                return Err(mismatch(
                    &what,
                    format_args!("6A83, as record {first_absent} is absent"),
                    show(&r),
                ))
            }
            _ => {
                return Err(mismatch(
                    &what,
                    "9000 with 23 bytes or 6A83 (record not found)",
                    show(&r),
                ))
            }
        }
    }
    s.expect_any(
        "READ RECORD log 11",
        &apdu::read_log(11)?,
        &[StatusWord::RecordNotFound, StatusWord::IncorrectP1P2],
    )?;
    Ok(())
}

/// Card profile §5: EXTERNAL AUTHENTICATE with `AES-ECB(Kc[EXT], challenge ‖ 80 0…)`
/// answers `9000`; a wrong cryptogram `6300` (one failure, of the 5 that block the
/// key); the right one still works after it.
pub fn check_external_authenticate(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    let key = desc.key(KeyPurpose::Ext);
    let c = challenge(&mut s)?;
    s.ok(
        "EXTERNAL AUTHENTICATE (right cryptogram)",
        &apdu::external_authenticate(&crypto::auth_cryptogram(key, &c))?,
    )?;
    let c = challenge(&mut s)?;
    let mut wrong = crypto::auth_cryptogram(key, &c);
    wrong[15] ^= 0x01;
    s.expect(
        "EXTERNAL AUTHENTICATE (wrong cryptogram)",
        &apdu::external_authenticate(&wrong)?,
        StatusWord::AuthenticationFailed,
    )?;
    let c = challenge(&mut s)?;
    s.ok(
        "EXTERNAL AUTHENTICATE (right cryptogram after a failure)",
        &apdu::external_authenticate(&crypto::auth_cryptogram(key, &c))?,
    )?;
    Ok(())
}

/// Card profile §5: INTERNAL AUTHENTICATE answers `AES-ECB(Kc[INT], R ‖ 80 0…)` for
/// random R.
pub fn check_internal_authenticate(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    for _ in 0..2 {
        let r: [u8; 8] = rand::random();
        let what = format!("INTERNAL AUTHENTICATE R={}", hex(&r));
        let d = s.ok_len(&what, &apdu::internal_authenticate(&r)?, 16)?;
        let want = crypto::auth_cryptogram(desc.key(KeyPurpose::Int), &r);
        ensure(d == want, &what, hex(&want), hex(&d))?;
    }
    Ok(())
}

/// Card profile §5, VERIFY and RELOAD PIN: the Lc = 0 query answers `63Cx` without using
/// a try; the right PIN `9000` (tries back to 3); wrong ones `63C2`, `63C1`, then
/// `63C0` or `6983`; a blocked PIN refuses even the right one with `6983`. RELOAD PIN
/// with a wrong MAC gets `9302` and leaves it blocked; with the right Kc\[PIN\] MAC it
/// sets the new PIN with 3 tries. Ends with the description's PIN reloaded.
pub fn check_verify_and_reload_pin(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let pin: &str = &desc.pin;
    let wrong = shifted_pin(pin);
    let mut s = fresh(card)?;
    let first = tries_query(&mut s, &[pin_tries(1), pin_tries(2), pin_tries(3)])?;
    tries_query(&mut s, &[first])?;
    verify_pin(&mut s, pin, "VERIFY (right PIN)")?;
    tries_query(&mut s, &[pin_tries(3)])?;
    for left in [2, 1] {
        s.expect(
            "VERIFY (wrong PIN)",
            &apdu::verify(&wrong)?,
            pin_tries(left),
        )?;
        tries_query(&mut s, &[pin_tries(left)])?;
    }
    let blocked = [pin_tries(0), StatusWord::AuthMethodBlocked];
    s.expect_any("VERIFY (third wrong PIN)", &apdu::verify(&wrong)?, &blocked)?;
    s.expect(
        "VERIFY (right PIN, PIN blocked)",
        &apdu::verify(pin)?,
        StatusWord::AuthMethodBlocked,
    )?;
    tries_query(&mut s, &blocked)?;

    let key = desc.key(KeyPurpose::Pin);
    let c = challenge(&mut s)?;
    let mut bad = apdu::reload_pin(key, &c, pin)?.data().to_vec();
    if let Some(last) = bad.last_mut() {
        *last ^= 0x01;
    }
    let bad = apdu::build([0x84, 0x5E, 0x00, 0x00], &bad, 0)?.sensitive();
    s.expect("RELOAD PIN (wrong MAC)", &bad, StatusWord::MacInvalid)?;
    s.expect(
        "VERIFY (right PIN, after a refused RELOAD PIN)",
        &apdu::verify(pin)?,
        StatusWord::AuthMethodBlocked,
    )?;

    // reload to another PIN: the old one must stop working
    let c = challenge(&mut s)?;
    s.ok(
        "RELOAD PIN (to a new PIN)",
        &apdu::reload_pin(key, &c, &wrong)?,
    )?;
    tries_query(&mut s, &[pin_tries(3)])?;
    s.expect(
        "VERIFY (the PIN before RELOAD)",
        &apdu::verify(pin)?,
        pin_tries(2),
    )?;
    verify_pin(&mut s, &wrong, "VERIFY (the reloaded PIN)")?;
    let c = challenge(&mut s)?;
    s.ok(
        "RELOAD PIN (back to the description's PIN)",
        &apdu::reload_pin(key, &c, pin)?,
    )?;
    verify_pin(&mut s, pin, "VERIFY (right PIN after RELOAD)")?;
    tries_query(&mut s, &[pin_tries(3)])?;
    Ok(())
}

/// Card profile §5, CHANGE PIN `80 5E 01 00 <old> FF <new>`: with the right old PIN the
/// new PIN (here of odd length, `F`-padded) replaces it; a wrong old PIN costs a try
/// (`63C2`) and changes nothing. Ends with the description's PIN and 3 tries.
pub fn check_change_pin(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let pin: &str = &desc.pin;
    let alt = odd_pin(pin);
    let mut s = fresh(card)?;
    verify_pin(&mut s, pin, "VERIFY (right PIN)")?;
    s.ok(
        "CHANGE PIN (to a 5-digit PIN)",
        &apdu::change_pin(pin, alt)?,
    )?;
    s.expect(
        "VERIFY (the PIN before CHANGE PIN)",
        &apdu::verify(pin)?,
        pin_tries(2),
    )?;
    verify_pin(&mut s, alt, "VERIFY (the new 5-digit PIN)")?;
    s.expect(
        "CHANGE PIN (wrong old PIN)",
        &apdu::change_pin(&shifted_pin(alt), pin)?,
        pin_tries(2),
    )?;
    tries_query(&mut s, &[pin_tries(2)])?;
    verify_pin(
        &mut s,
        alt,
        "VERIFY (the 5-digit PIN, after a refused CHANGE PIN)",
    )?;
    s.ok("CHANGE PIN (back)", &apdu::change_pin(alt, pin)?)?;
    verify_pin(&mut s, pin, "VERIFY (the description's PIN again)")?;
    tries_query(&mut s, &[pin_tries(3)])?;
    Ok(())
}

/// Card profile §6, purchase: without VERIFY `6982`; amount 0 `6A80`; above the balance
/// `9401`; key index other than 05 `9403`. INITIALIZE FOR PURCHASE answers the balance,
/// counter, overdraft 000000, key version 01, alg 01 and a fresh random. A wrong MAC1
/// gets `9302` and changes nothing (balance, counter, log). A right one: MAC2 and TAC
/// match the formulas, the balance falls by the amount, the counter rises by one, log
/// record 1 holds the purchase with the old counter, and replaying DEBIT is refused.
pub fn check_purchase(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let amount = desc.amount;
    let tid = &desc.terminal_id;
    let mut s = fresh(card)?;
    s.expect(
        "INITIALIZE FOR PURCHASE without VERIFY",
        &apdu::initialize_purchase(0x05, amount, tid)?,
        StatusWord::SecurityStatusNotSatisfied,
    )?;
    verify_pin(&mut s, &desc.pin, "VERIFY")?;
    let b0 = balance(&mut s)?;
    ensure(
        b0 >= amount,
        "GET BALANCE",
        format_args!("at least {amount} fen for the purchase checks"),
        format_args!("{b0} fen"),
    )?;
    let log0 = newest_log(&mut s)?;
    s.expect(
        "INITIALIZE FOR PURCHASE of 0 fen",
        &apdu::initialize_purchase(0x05, 0, tid)?,
        StatusWord::IncorrectData,
    )?;
    s.expect(
        "INITIALIZE FOR PURCHASE of balance + 1 fen",
        &apdu::initialize_purchase(0x05, b0.saturating_add(1), tid)?,
        StatusWord::InsufficientFunds,
    )?;
    for key in [0x06, 0x01] {
        s.expect(
            &format!("INITIALIZE FOR PURCHASE with key index {key:02X}"),
            &apdu::initialize_purchase(key, amount, tid)?,
            StatusWord::KeyIndexNotSupported,
        )?;
    }

    // a wrong MAC1 changes nothing
    let init = initialize_purchase(&mut s, desc, amount)?;
    ensure(
        init.balance == b0,
        "INITIALIZE FOR PURCHASE",
        format_args!("balance {b0} (as GET BALANCE)"),
        init.balance,
    )?;
    let ctx = purchase_context(desc, amount, &init);
    let mut bad = ctx.mac1(&ctx.session_key(desc.key(KeyPurpose::Purchase)));
    bad[0] ^= 0x80;
    s.expect(
        "DEBIT FOR PURCHASE with a wrong MAC1",
        &apdu::debit(&ctx, &bad)?,
        StatusWord::MacInvalid,
    )?;
    expect_balance(&mut s, b0, "a refused DEBIT")?;
    let log = newest_log(&mut s)?;
    ensure(
        log == log0,
        "READ RECORD log 1 after a refused DEBIT",
        format_args!(
            "unchanged: {}",
            log0.as_deref().map(hex).unwrap_or_else(|| "6A83".into())
        ),
        log.as_deref().map(hex).unwrap_or_else(|| "6A83".into()),
    )?;
    let again = initialize_purchase(&mut s, desc, amount)?;
    ensure(
        again.counter == init.counter,
        "INITIALIZE FOR PURCHASE after a refused DEBIT",
        format_args!("counter {} (unchanged)", init.counter),
        again.counter,
    )?;
    ensure(
        again.random != init.random,
        "INITIALIZE FOR PURCHASE twice",
        "a fresh random each time",
        format_args!("{} twice", hex(&init.random)),
    )?;

    // the purchase
    let p = purchase(&mut s, desc, amount)?;
    ensure(
        p.ctx.counter == init.counter,
        "INITIALIZE FOR PURCHASE",
        format_args!("counter {}", init.counter),
        p.ctx.counter,
    )?;
    expect_balance(&mut s, b0 - amount, "a purchase")?;
    let mut want = p.ctx.counter.to_be_bytes().to_vec();
    want.extend_from_slice(&[0, 0, 0]);
    want.extend_from_slice(&amount.to_be_bytes());
    want.push(crypto::TXN_PURCHASE);
    want.extend_from_slice(&tid.0);
    want.extend_from_slice(&p.ctx.date);
    want.extend_from_slice(&p.ctx.time);
    let log = newest_log(&mut s)?;
    ensure(
        log.as_deref() == Some(&want[..]),
        "READ RECORD log 1 after a purchase",
        hex(&want),
        log.as_deref().map(hex).unwrap_or_else(|| "6A83".into()),
    )?;
    s.refused(
        "DEBIT FOR PURCHASE replayed",
        &apdu::debit(&p.ctx, &p.mac1)?,
    )?;
    expect_balance(&mut s, b0 - amount, "a replayed DEBIT")?;
    let next = initialize_purchase(&mut s, desc, amount)?;
    ensure(
        next.counter == p.ctx.counter.wrapping_add(1) && next.balance == b0 - amount,
        "INITIALIZE FOR PURCHASE after a purchase",
        format_args!(
            "counter {} and balance {}",
            p.ctx.counter.wrapping_add(1),
            b0 - amount
        ),
        format_args!("counter {} and balance {}", next.counter, next.balance),
    )?;
    Ok(())
}

/// Card profile §6 step 4: GET TRANSACTION PROOF with the last purchase's counter
/// answers its `TAC ‖ MAC2`, also after a reset and re-select without VERIFY (the
/// recovery path); any other counter `9406`.
pub fn check_transaction_proof(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut want = Vec::new();
    let counter;
    {
        let mut s = fresh(card)?;
        verify_pin(&mut s, &desc.pin, "VERIFY")?;
        let p = purchase(&mut s, desc, desc.amount)?;
        counter = p.ctx.counter;
        want.extend_from_slice(&p.tac);
        want.extend_from_slice(&p.mac2);
        let what = format!("GET TRANSACTION PROOF counter {counter}");
        let d = s.ok_len(&what, &apdu::transaction_proof(counter)?, 8)?;
        ensure(
            d == want,
            &what,
            format_args!("TAC ‖ MAC2 = {}", hex(&want)),
            hex(&d),
        )?;
        let mut others = vec![counter.wrapping_add(1)];
        if counter > 0 {
            others.push(counter - 1);
        }
        for other in others {
            s.expect(
                &format!("GET TRANSACTION PROOF counter {other} (not the last purchase)"),
                &apdu::transaction_proof(other)?,
                StatusWord::MacNotAvailable,
            )?;
        }
    }
    let mut s = fresh(card)?;
    let what = format!("GET TRANSACTION PROOF counter {counter} after a reset, no VERIFY");
    let d = s.ok_len(&what, &apdu::transaction_proof(counter)?, 8)?;
    ensure(
        d == want,
        &what,
        format_args!("TAC ‖ MAC2 = {}", hex(&want)),
        hex(&d),
    )?;
    Ok(())
}

/// Card profile §7, load: without VERIFY `6982`. INITIALIZE FOR LOAD answers the
/// balance, online counter, alg 01, random and a MAC1 that matches the formula; CREDIT
/// with a wrong MAC2 gets `9302` and changes nothing; with the right one it answers the
/// TAC of the formula, the balance rises and the online counter goes up by one. A load
/// past 2^31 − 1 gets `6A80` (at INITIALIZE or at CREDIT) and changes nothing.
pub fn check_load(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let amount = desc.amount;
    let tid = &desc.terminal_id;
    let mut s = fresh(card)?;
    s.expect(
        "INITIALIZE FOR LOAD without VERIFY",
        &apdu::initialize_load(0x06, amount, tid)?,
        StatusWord::SecurityStatusNotSatisfied,
    )?;
    verify_pin(&mut s, &desc.pin, "VERIFY")?;
    let b0 = balance(&mut s)?;

    let (ctx, skl) = initialize_load(&mut s, desc, amount)?;
    ensure(
        ctx.balance == b0,
        "INITIALIZE FOR LOAD",
        format_args!("balance {b0} (as GET BALANCE)"),
        ctx.balance,
    )?;
    let mut bad = ctx.mac2(&skl);
    bad[3] ^= 0x01;
    s.expect(
        "CREDIT FOR LOAD with a wrong MAC2",
        &apdu::credit(&ctx, &bad)?,
        StatusWord::MacInvalid,
    )?;
    expect_balance(&mut s, b0, "a refused CREDIT")?;

    let done = load(&mut s, desc, amount)?;
    ensure(
        done.online_counter == ctx.online_counter,
        "INITIALIZE FOR LOAD after a refused CREDIT",
        format_args!("online counter {} (unchanged)", ctx.online_counter),
        done.online_counter,
    )?;
    let b1 = b0.saturating_add(amount);
    expect_balance(&mut s, b1, "a load")?;
    let (next, _) = initialize_load(&mut s, desc, amount)?;
    ensure(
        next.online_counter == ctx.online_counter.wrapping_add(1),
        "INITIALIZE FOR LOAD after a load",
        format_args!("online counter {}", ctx.online_counter.wrapping_add(1)),
        next.online_counter,
    )?;

    // past 2^31 − 1
    let limit = i32::MAX as u32;
    if let Some(over) = (limit - b1.min(limit)).checked_add(1) {
        let what = format!("INITIALIZE FOR LOAD of {over} fen (balance past 2^31 - 1)");
        let r = s.send(&what, &apdu::initialize_load(0x06, over, tid)?)?;
        match r.sw {
            StatusWord::IncorrectData => {}
            StatusWord::Ok => {
                let (ctx, skl) = load_context(desc, over, &r.data, &what)?;
                s.expect(
                    "CREDIT FOR LOAD past 2^31 - 1",
                    &apdu::credit(&ctx, &ctx.mac2(&skl))?,
                    StatusWord::IncorrectData,
                )?;
            }
            _ => {
                return Err(mismatch(
                    &what,
                    "6A80 (or 9000 then 6A80 at CREDIT)",
                    show(&r),
                ))
            }
        }
        expect_balance(&mut s, b1, "a refused load past 2^31 - 1")?;
    }
    Ok(())
}

fn expect_record_22(s: &mut Session<'_>, v: u8, after: &str) -> Result<(), ConformanceError> {
    let what = format!("READ RECORD 22 after {after}");
    let d = s.ok(&what, &apdu::read_record(0x22, 256)?)?;
    ensure(
        d == [0x22, 0x01, v],
        &what,
        format_args!("2201{v:02X}"),
        hex(&d),
    )
}

/// Card profile §5, UPDATE RECORD with a Kc\[MAINT\] MAC (EF15 record 22): a wrong MAC
/// gets `9302`, a MAC over a challenge that was not the last command's answer is
/// refused, and neither changes the record; the right MAC writes it. Ends with the
/// record as it was.
pub fn check_update_record(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let key = desc.key(KeyPurpose::Maint);
    let spec = &RECORDS[14];
    let mut s = fresh(card)?;
    s.ok("SELECT EF15", &apdu::select_ef(0x02, 0xEF15)?)?;
    let original = read_record_checked(&mut s, desc, spec)?;
    let old = original.get(2).copied().unwrap_or(0x01);
    let new = if old == 0x01 { 0x02 } else { 0x01 };

    let c = challenge(&mut s)?;
    let mut cmd = apdu::update_record(key, &c, 0x22, &[new])?.data().to_vec();
    if let Some(last) = cmd.last_mut() {
        *last ^= 0x01;
    }
    s.expect(
        "UPDATE RECORD 22 (wrong MAC)",
        &apdu::build([0x04, 0xDC, 0x22, 0x00], &cmd, 0)?,
        StatusWord::MacInvalid,
    )?;
    expect_record_22(&mut s, old, "a wrong MAC")?;

    let c = challenge(&mut s)?;
    s.ok("GET DATA chip serial", &apdu::get_chip_serial()?)?;
    s.refused(
        "UPDATE RECORD 22 (MAC over a challenge used up by another command)",
        &apdu::update_record(key, &c, 0x22, &[new])?,
    )?;
    expect_record_22(&mut s, old, "a stale challenge")?;

    let c = challenge(&mut s)?;
    s.ok(
        "UPDATE RECORD 22 (right MAC)",
        &apdu::update_record(key, &c, 0x22, &[new])?,
    )?;
    expect_record_22(&mut s, new, "UPDATE RECORD")?;
    let c = challenge(&mut s)?;
    s.ok(
        "UPDATE RECORD 22 (back to the original)",
        &apdu::update_record(key, &c, 0x22, &[old])?,
    )?;
    expect_record_22(&mut s, old, "restoring it")?;
    Ok(())
}

/// Card profile §5, APPLICATION BLOCK / UNBLOCK with Kc\[MAINT\] MACs: a wrong MAC gets
/// `9302` and changes nothing. Blocked, SELECT answers `6283`; EF05 and EF06 stay
/// readable; EF15, the log, GET BALANCE, VERIFY and INITIALIZE FOR PURCHASE answer
/// `6985`. UNBLOCK with a wrong MAC gets `9302` (still blocked), with the right one
/// the application works again.
pub fn check_application_block(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let key = desc.key(KeyPurpose::Maint);
    {
        let mut s = fresh(card)?;
        let c = challenge(&mut s)?;
        let mut d = apdu::application_block(key, &c)?.data().to_vec();
        if let Some(first) = d.first_mut() {
            *first ^= 0x01;
        }
        s.expect(
            "APPLICATION BLOCK (wrong MAC)",
            &apdu::build([0x84, 0x1E, 0x00, 0x00], &d, 0)?,
            StatusWord::MacInvalid,
        )?;
        s.ok(
            "SELECT application after a refused BLOCK",
            &apdu::select_application()?,
        )?;
        let c = challenge(&mut s)?;
        s.ok(
            "APPLICATION BLOCK (right MAC)",
            &apdu::application_block(key, &c)?,
        )?;
    }
    card.reset().map_err(|e| transport("reset", e))?;
    let mut s = Session::begin(card)?;
    let blocked = StatusWord::ApplicationBlocked;
    s.expect(
        "SELECT a blocked application",
        &apdu::select_application()?,
        blocked,
    )?;
    let cond = StatusWord::ConditionsNotSatisfied;
    s.ok("SELECT EF05 (blocked)", &apdu::select_ef(0x02, 0xEF05)?)?;
    read_record_checked(&mut s, desc, &RECORDS[0])?;
    s.ok("SELECT EF06 (blocked)", &apdu::select_ef(0x02, 0xEF06)?)?;
    read_record_checked(&mut s, desc, &RECORDS[7])?;
    let what = "SELECT EF15 (blocked)";
    let r = s.send(what, &apdu::select_ef(0x02, 0xEF15)?)?;
    match r.sw {
        StatusWord::ConditionsNotSatisfied => {}
        StatusWord::Ok => {
            s.expect(
                "READ RECORD 20 (EF15, blocked)",
                &apdu::read_record(0x20, 256)?,
                cond,
            )?;
        }
        _ => {
            return Err(mismatch(
                what,
                "6985, or 9000 and 6985 at READ RECORD",
                show(&r),
            ))
        }
    }
    s.expect("READ RECORD log 1 (blocked)", &apdu::read_log(1)?, cond)?;
    s.expect("GET BALANCE (blocked)", &apdu::get_balance()?, cond)?;
    s.expect("VERIFY (blocked)", &apdu::verify(&desc.pin)?, cond)?;
    s.expect(
        "INITIALIZE FOR PURCHASE (blocked)",
        &apdu::initialize_purchase(0x05, desc.amount, &desc.terminal_id)?,
        cond,
    )?;

    let c = challenge(&mut s)?;
    let mut d = apdu::application_unblock(key, &c)?.data().to_vec();
    if let Some(first) = d.first_mut() {
        *first ^= 0x01;
    }
    s.expect(
        "APPLICATION UNBLOCK (wrong MAC)",
        &apdu::build([0x84, 0x18, 0x00, 0x00], &d, 0)?,
        StatusWord::MacInvalid,
    )?;
    s.expect(
        "SELECT after a refused UNBLOCK",
        &apdu::select_application()?,
        blocked,
    )?;
    let c = challenge(&mut s)?;
    s.ok(
        "APPLICATION UNBLOCK (right MAC)",
        &apdu::application_unblock(key, &c)?,
    )?;
    drop(s);
    let mut s = fresh(card)?;
    balance(&mut s)?;
    verify_pin(&mut s, &desc.pin, "VERIFY after UNBLOCK")?;
    Ok(())
}

/// Card profile §5: an instruction the profile does not define answers `6D00` (here
/// `EE` under CLA `00` and `80`).
pub fn check_unknown_ins(
    card: &mut dyn CardTransport,
    _desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    for cla in [0x00, 0x80] {
        s.expect(
            &format!("{cla:02X} EE 00 00 (unknown INS)"),
            &apdu::build([cla, 0xEE, 0x00, 0x00], &[], 0)?,
            StatusWord::InsNotSupported,
        )?;
    }
    Ok(())
}

/// Card profile §5: a class the profile does not use answers `6E00` (here `A0` and `B0`
/// with the INS of READ RECORD and GET CHALLENGE).
pub fn check_unknown_cla(
    card: &mut dyn CardTransport,
    _desc: &ConformanceCard,
) -> Result<(), ConformanceError> {
    let mut s = fresh(card)?;
    for (cla, ins, p1, p2, le) in [(0xA0, 0xB2, 0x01, 0x00, 256), (0xB0, 0x84, 0, 0, 8)] {
        s.expect(
            &format!("{cla:02X} {ins:02X} (unknown CLA)"),
            &apdu::build([cla, ins, p1, p2], &[], le)?,
            StatusWord::ClaNotSupported,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Leaving the card as it was

/// What [`run_all`] puts back.
struct Snapshot {
    balance: u32,
    insured_status: Vec<u8>,
}

fn snapshot(card: &mut dyn CardTransport) -> Result<Snapshot, ConformanceError> {
    let mut s = fresh(card)?;
    let balance = balance(&mut s)?;
    s.ok("SELECT EF15", &apdu::select_ef(0x02, 0xEF15)?)?;
    let d = s.ok("READ RECORD 22", &apdu::read_record(0x22, 256)?)?;
    Ok(Snapshot {
        balance,
        insured_status: d.get(2..).unwrap_or_default().to_vec(),
    })
}

/// Unblock if blocked, reload the PIN (3 tries), and put the balance and record 22 back.
fn restore(
    card: &mut dyn CardTransport,
    desc: &ConformanceCard,
    before: Option<&Snapshot>,
) -> Result<(), ConformanceError> {
    card.reset().map_err(|e| transport("reset", e))?;
    let mut s = Session::begin(card)?;
    let sel = apdu::select_application()?;
    if s.send("SELECT application", &sel)?.sw == StatusWord::ApplicationBlocked {
        let c = challenge(&mut s)?;
        s.ok(
            "APPLICATION UNBLOCK",
            &apdu::application_unblock(desc.key(KeyPurpose::Maint), &c)?,
        )?;
    }
    s.ok("SELECT application", &sel)?;
    let c = challenge(&mut s)?;
    s.ok(
        "RELOAD PIN",
        &apdu::reload_pin(desc.key(KeyPurpose::Pin), &c, &desc.pin)?,
    )?;
    verify_pin(&mut s, &desc.pin, "VERIFY")?;
    let Some(before) = before else {
        return Ok(());
    };
    let now = balance(&mut s)?;
    if now < before.balance {
        load(&mut s, desc, before.balance - now)?;
    } else if now > before.balance {
        purchase(&mut s, desc, now - before.balance)?;
    }
    expect_balance(&mut s, before.balance, "restoring it")?;
    s.ok("SELECT EF15", &apdu::select_ef(0x02, 0xEF15)?)?;
    let d = s.ok("READ RECORD 22", &apdu::read_record(0x22, 256)?)?;
    if d.get(2..) != Some(&before.insured_status[..]) {
        let c = challenge(&mut s)?;
        s.ok(
            "UPDATE RECORD 22 (restore)",
            &apdu::update_record(
                desc.key(KeyPurpose::Maint),
                &c,
                0x22,
                &before.insured_status,
            )?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_encoding() {
        assert_eq!(&pin_bcd("123456").unwrap()[..], &[0x12, 0x34, 0x56]);
        assert_eq!(&pin_bcd("24680").unwrap()[..], &[0x24, 0x68, 0x0F]);
        assert!(pin_bcd("123").is_err());
        assert!(pin_bcd("12a4").is_err());
        assert!(pin_bcd("1234567890123").is_err());
        assert_eq!(&*shifted_pin("123456"), "678901");
        assert_ne!(odd_pin("24680"), "24680");
    }

    #[test]
    fn aid_is_the_profiles() {
        assert_eq!(hex(&aid()), "7378312E73682EC9E7BBE1B1A3D5CF");
    }

    #[test]
    fn dates_and_times() {
        assert!(bcd_date_ok(&[0x20, 0x26, 0x02, 0x28]));
        assert!(!bcd_date_ok(&[0x20, 0x26, 0x02, 0x30]));
        assert!(!bcd_date_ok(&[0x20, 0x26, 0x1A, 0x01]));
        assert!(bcd_time_ok(&[0x23, 0x59, 0x59]));
        assert!(!bcd_time_ok(&[0x24, 0x00, 0x00]));
        let (d, t) = now_bcd();
        assert!(bcd_date_ok(&d) && bcd_time_ok(&t));
    }

    #[test]
    fn description_hides_the_pin() {
        let id: CardId = "650200D1560000050011223344556677".parse().unwrap();
        let keys = CardKeys::new(|_| Key16::from_bytes([7; 16]));
        let d = ConformanceCard::new(id, "A1", "x", "918273", keys, 5, TerminalId([1; 6])).unwrap();
        assert!(!format!("{d:?}").contains("918273"));
        let keys = CardKeys::new(|_| Key16::from_bytes([7; 16]));
        let e =
            ConformanceCard::new(id, "A1", "x", "91x273", keys, 5, TerminalId([1; 6])).unwrap_err();
        assert!(!e.to_string().contains("91x273"), "{e}");
    }
}
