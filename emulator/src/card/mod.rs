//! The SSC-AES card emulator: the card side of card profile §1 to §7.
//!
//! [`EmulatedCard`] implements [`VirtualCard`]: files and records (GBK names), every
//! command and status word of §5, PIN and key tries, application block, the purse
//! (purchase, load, transaction proof, log) committed atomically, a persistent image
//! file, and behaviour knobs for tests (T=0, ATR, delays, tear, mute).

mod image;
mod knobs;

pub use image::{CardImage, ImageError, Personalization, ProofRecord};
pub use knobs::{t1_atr, AtrChoice, Knobs, Tear, T0_ATR};

use crate::perso::{Chip, IssueFactory, IssuedData};
use crate::{Reply, VirtualCard};
use sscard_driver::apdu::CommandApdu;
use sscard_driver::crypto::{self, LoadContext, PurchaseContext};
use sscard_driver::keys::{CardKeys, Key16, KeyPurpose};
use sscard_driver::status::StatusWord;
use sscard_driver::types::{CardId, TerminalId};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The application identifier: `"sx1.sh."` ‖ GBK("社会保障") (card profile §3).
pub const AID: [u8; 15] = [
    0x73, 0x78, 0x31, 0x2E, 0x73, 0x68, 0x2E, 0xC9, 0xE7, 0xBB, 0xE1, 0xB1, 0xA3, 0xD5, 0xCF,
];
/// PIN tries (card profile §5).
pub const PIN_TRIES: u8 = 3;
/// EXTERNAL AUTHENTICATE failures before the key blocks (§5).
pub const EXT_TRIES: u8 = 5;
/// Transaction log records (§3).
pub const LOG_RECORDS: usize = 10;

/// Which EF a record tag lives in (§3).
pub fn ef_of_tag(tag: u8) -> Option<u16> {
    match tag {
        0x01..=0x07 => Some(0xEF05),
        0x08..=0x0D => Some(0xEF06),
        0x20..=0x22 => Some(0xEF15),
        _ => None,
    }
}

/// A purchase between INITIALIZE FOR PURCHASE and DEBIT.
struct PurchaseSession {
    amount: u32,
    terminal_id: TerminalId,
    counter: u16,
    random: [u8; 4],
}

/// A load between INITIALIZE FOR LOAD and CREDIT.
struct LoadSession {
    ctx: LoadContext,
}

/// What a card forgets on reset.
#[derive(Default)]
struct Volatile {
    app_selected: bool,
    ef: Option<u16>,
    pin_verified: bool,
    challenge: Option<[u8; 8]>,
    purchase: Option<PurchaseSession>,
    load: Option<LoadSession>,
    /// T=0: response data held for GET RESPONSE.
    pending: Option<Vec<u8>>,
}

/// The emulated social-security card.
pub struct EmulatedCard {
    image: CardImage,
    keys: CardKeys,
    card_id: CardId,
    path: Option<PathBuf>,
    knobs: Knobs,
    v: Volatile,
    /// Commands seen with the tear knob's INS.
    tear_seen: u32,
    /// Commands received, by INS (for tests that check what a terminal sent).
    by_ins: Box<[u32; 256]>,
}

type Answer = Result<Vec<u8>, StatusWord>;

impl EmulatedCard {
    /// A card issued from a personalization record, with keys derived from the test
    /// master keys.
    pub fn new(p: &Personalization, knobs: Knobs) -> Result<Self, ImageError> {
        let image = CardImage::issue(p)?;
        Self::from_image(image, None, knobs)
    }

    /// A card issued from a personalization record with its seven card keys Kc given.
    pub fn with_keys(
        p: &Personalization,
        keys: &CardKeys,
        knobs: Knobs,
    ) -> Result<Self, ImageError> {
        let image = CardImage::issue_with_keys(p, keys)?;
        Self::from_image(image, None, knobs)
    }

    /// A blank chip (card profile §9): only the MF, its chip serial and the transport key
    /// `K_T = transport_key(k_manuf, chip_serial)`. The personalization protocol is
    /// `crate::perso::Chip`'s; at FINALIZE the chip becomes an `EmulatedCard` with
    /// `knobs` (in memory: use `perso::Chip::open_image` with a factory calling
    /// [`EmulatedCard::open_or_issue`] for a persistent one).
    pub fn blank(chip_serial: [u8; 8], k_manuf: &Key16, knobs: Knobs) -> Chip {
        let factory: IssueFactory = Box::new(move |data| {
            match EmulatedCard::from_issued(data, knobs.clone()) {
                Ok(c) => Box::new(c),
                // personalization hands over complete data; should it not, the chip
                // answers every command with 6F00 rather than panic
                Err(_) => Box::new(BrokenCard),
            }
        });
        Chip::blank(chip_serial, k_manuf, factory)
    }

    /// The default test card: region 650200, chip serial 0011223344556677, PIN 123456,
    /// balance 100000 fen, name 张三, test keys.
    pub fn default_test_card() -> Self {
        // the default record is valid by construction (and tested)
        Self::new(&Personalization::default_test_card(), Knobs::default())
            .unwrap_or_else(|e| unreachable!("default test card: {e}"))
    }

    /// The card a personalization session produced (`perso::Chip` factory).
    pub fn from_issued(data: IssuedData, knobs: Knobs) -> Result<Self, ImageError> {
        let image = CardImage::from_issued(&data)?;
        Self::from_image(image, None, knobs)
    }

    fn from_image(
        image: CardImage,
        path: Option<PathBuf>,
        knobs: Knobs,
    ) -> Result<Self, ImageError> {
        let keys = image.card_keys()?;
        let card_id = image.card_id()?;
        Ok(EmulatedCard {
            image,
            keys,
            card_id,
            path,
            knobs,
            v: Volatile::default(),
            tear_seen: 0,
            by_ins: Box::new([0; 256]),
        })
    }

    /// Open a card image; create it from `default` when the file does not exist.
    pub fn open_image(
        path: &Path,
        knobs: Knobs,
        default: impl FnOnce() -> Personalization,
    ) -> Result<Self, ImageError> {
        let image = match CardImage::load(path) {
            Ok(i) => i,
            Err(ImageError::Missing(_)) => {
                let i = CardImage::issue(&default())?;
                i.save(path)?;
                i
            }
            Err(e) => return Err(e),
        };
        Self::from_image(image, Some(path.to_path_buf()), knobs)
    }

    /// The card of a chip personalized earlier: its image if it exists, else a new
    /// card from the personalization data, saved there.
    pub fn open_or_issue(path: &Path, knobs: Knobs, data: IssuedData) -> Result<Self, ImageError> {
        match CardImage::load(path) {
            Ok(i) => Self::from_image(i, Some(path.to_path_buf()), knobs),
            Err(ImageError::Missing(_)) => {
                let mut c = Self::from_issued(data, knobs)?;
                c.attach_image(path)?;
                Ok(c)
            }
            Err(e) => Err(e),
        }
    }

    /// Save the image to `path` now and on every later change.
    pub fn attach_image(&mut self, path: &Path) -> Result<(), ImageError> {
        self.image.save(path)?;
        self.path = Some(path.to_path_buf());
        Ok(())
    }

    /// The card identification code (§2).
    pub fn card_id(&self) -> CardId {
        self.card_id
    }
    /// The persistent state as it is now.
    pub fn image(&self) -> &CardImage {
        &self.image
    }
    /// The image file this card saves to, if any.
    pub fn image_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// The knobs in force.
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }
    /// How many commands the card has received, by INS byte (malformed ones included;
    /// GET RESPONSE is `C0`). Tests compare two of these to see what a terminal sent.
    pub fn commands_by_ins(&self) -> [u32; 256] {
        *self.by_ins
    }
    /// Change the knobs at run time (arming a tear resets its count).
    pub fn set_knobs(&mut self, knobs: Knobs) {
        self.knobs = knobs;
        self.tear_seen = 0;
    }

    /// Apply a persistent change as one step: in memory and, with an image, on disk
    /// before the answer leaves. A failed save rolls back and answers `6581`.
    fn commit(&mut self, change: impl FnOnce(&mut CardImage)) -> Result<(), StatusWord> {
        let before = self.image.clone();
        change(&mut self.image);
        if let Some(p) = &self.path {
            if self.image.save(p).is_err() {
                self.image = before;
                return Err(StatusWord::Other(0x6581));
            }
        }
        Ok(())
    }

    fn blocked(&self) -> bool {
        self.image.blocked
    }

    fn dispatch(&mut self, c: &CommandApdu) -> Answer {
        let challenge = if (c.cla, c.ins) == (0x00, 0x84) {
            None
        } else {
            self.v.challenge.take()
        };
        if !matches!(c.cla, 0x00 | 0x04 | 0x80 | 0x84) {
            return Err(StatusWord::ClaNotSupported);
        }
        // GET DATA chip serial works in every state (§5)
        if (c.cla, c.ins) == (0x80, 0xCA) {
            return self.get_data(c);
        }
        if (c.cla, c.ins) == (0x00, 0xA4) {
            return self.select(c);
        }
        if (c.cla, c.ins) == (0x00, 0x84) {
            return self.get_challenge(c);
        }
        if !self.v.app_selected {
            return match (c.cla, c.ins) {
                (
                    _,
                    0xB2 | 0x20 | 0x82 | 0x88 | 0x5E | 0xDC | 0x1E | 0x18 | 0x5C | 0x50 | 0x54
                    | 0x52 | 0x5A,
                ) => Err(StatusWord::ConditionsNotSatisfied),
                _ => Err(StatusWord::InsNotSupported),
            };
        }
        if self.blocked() {
            return match (c.cla, c.ins) {
                (0x00, 0xB2) if matches!(self.v.ef, Some(0xEF05 | 0xEF06)) && c.p2 == 0x00 => {
                    self.read_record(c)
                }
                (0x84, 0x18) => self.unblock(c, challenge),
                _ => Err(StatusWord::ConditionsNotSatisfied),
            };
        }
        match (c.cla, c.ins) {
            (0x00, 0xB2) => self.read_record(c),
            (0x00, 0x82) => self.external_authenticate(c, challenge),
            (0x00, 0x88) => self.internal_authenticate(c),
            (0x00, 0x20) => self.verify(c),
            (0x80, 0x5E) => self.change_pin(c),
            (0x84, 0x5E) => self.reload_pin(c, challenge),
            (0x04, 0xDC) => self.update_record(c, challenge),
            (0x84, 0x1E) => self.block(c, challenge),
            (0x84, 0x18) => Err(StatusWord::ConditionsNotSatisfied),
            (0x80, 0x5C) => self.get_balance(c),
            (0x80, 0x50) => match c.p1 {
                0x01 => self.init_purchase(c),
                0x00 => self.init_load(c),
                _ => Err(StatusWord::IncorrectP1P2),
            },
            (0x80, 0x54) => self.debit(c),
            (0x80, 0x52) => self.credit(c),
            (0x80, 0x5A) => self.transaction_proof(c),
            _ => Err(StatusWord::InsNotSupported),
        }
    }

    fn get_data(&mut self, c: &CommandApdu) -> Answer {
        match (c.p1, c.p2) {
            (0x00, 0x01) => Ok(self.card_id.chip_serial().to_vec()),
            (0x00, 0x02) => Ok(vec![2, 0x0F, 0xFF, 0]), // PERSO STATUS: issued
            _ => Err(StatusWord::IncorrectP1P2),
        }
    }

    /// SELECT (§3): the application by name, EFs by FID inside it.
    fn select(&mut self, c: &CommandApdu) -> Answer {
        let d = c.data();
        match c.p1 {
            0x04 => {
                self.v = Volatile {
                    pending: None,
                    ..Volatile::default()
                };
                if d != AID {
                    return Err(StatusWord::FileNotFound);
                }
                self.v.app_selected = true;
                if self.blocked() {
                    return Err(StatusWord::ApplicationBlocked);
                }
                if c.le.is_some() {
                    // FCI: 6F { 84 AID, A5 { 9F08 01 <version 01> } }
                    let mut fci = vec![0x84, AID.len() as u8];
                    fci.extend_from_slice(&AID);
                    fci.extend_from_slice(&[0xA5, 0x04, 0x9F, 0x08, 0x01, 0x01]);
                    let mut out = vec![0x6F, fci.len() as u8];
                    out.extend_from_slice(&fci);
                    Ok(out)
                } else {
                    Ok(Vec::new())
                }
            }
            0x00 | 0x02 => {
                if d.len() != 2 {
                    return Err(StatusWord::WrongLength);
                }
                if d == [0x3F, 0x00] {
                    self.v = Volatile::default();
                    return Ok(Vec::new());
                }
                if !self.v.app_selected {
                    return Err(StatusWord::FileNotFound);
                }
                let fid = u16::from_be_bytes([d[0], d[1]]);
                if !matches!(fid, 0xEF05 | 0xEF06 | 0xEF15) {
                    return Err(StatusWord::FileNotFound);
                }
                self.v.ef = Some(fid);
                Ok(Vec::new())
            }
            _ => Err(StatusWord::IncorrectP1P2),
        }
    }

    fn get_challenge(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0, 0) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if c.le != Some(8) {
            return Err(StatusWord::WrongLength);
        }
        let r: [u8; 8] = rand::random();
        self.v.challenge = Some(r);
        Ok(r.to_vec())
    }

    /// READ RECORD by identifier (`00 B2 <tag> 00`) or a log record (`00 B2 <n> C4`).
    fn read_record(&mut self, c: &CommandApdu) -> Answer {
        let (body, le) = match c.p2 {
            0x00 => {
                let ef = self.v.ef.ok_or(StatusWord::ConditionsNotSatisfied)?;
                if ef_of_tag(c.p1) != Some(ef) {
                    return Err(StatusWord::RecordNotFound);
                }
                let v = self.image.record(c.p1).ok_or(StatusWord::RecordNotFound)?;
                let mut out = vec![c.p1, v.len() as u8];
                out.extend_from_slice(&v);
                (out, c.le)
            }
            0xC4 => {
                let n = c.p1 as usize;
                if n == 0 || n > LOG_RECORDS {
                    return Err(StatusWord::RecordNotFound);
                }
                let rec = self
                    .image
                    .log_record(n - 1)
                    .ok_or(StatusWord::RecordNotFound)?;
                (rec, c.le)
            }
            _ => return Err(StatusWord::IncorrectP1P2),
        };
        match le {
            None | Some(256) => Ok(body),
            Some(n) if n == body.len() => Ok(body),
            Some(_) => Err(StatusWord::WrongLe(body.len() as u8)),
        }
    }

    fn external_authenticate(&mut self, c: &CommandApdu, challenge: Option<[u8; 8]>) -> Answer {
        if c.p2 != KeyPurpose::Ext.id() {
            return Err(StatusWord::KeyIndexNotSupported);
        }
        if self.image.ext_tries == 0 {
            return Err(StatusWord::AuthMethodBlocked);
        }
        if c.data().len() != 16 {
            return Err(StatusWord::WrongLength);
        }
        let ch = challenge.ok_or(StatusWord::ConditionsNotSatisfied)?;
        let ok = crypto::ct_eq(
            &crypto::auth_cryptogram(self.keys.get(KeyPurpose::Ext), &ch),
            c.data(),
        );
        if ok {
            if self.image.ext_tries != EXT_TRIES {
                self.commit(|i| i.ext_tries = EXT_TRIES)?;
            }
            Ok(Vec::new())
        } else {
            self.commit(|i| i.ext_tries = i.ext_tries.saturating_sub(1))?;
            Err(if self.image.ext_tries == 0 {
                StatusWord::AuthMethodBlocked
            } else {
                StatusWord::AuthenticationFailed
            })
        }
    }

    fn internal_authenticate(&mut self, c: &CommandApdu) -> Answer {
        if c.p2 != KeyPurpose::Int.id() {
            return Err(StatusWord::KeyIndexNotSupported);
        }
        let r: [u8; 8] = c.data().try_into().map_err(|_| StatusWord::WrongLength)?;
        Ok(crypto::auth_cryptogram(self.keys.get(KeyPurpose::Int), &r).to_vec())
    }

    fn pin_failed(&mut self) -> StatusWord {
        match self.commit(|i| i.pin_tries = i.pin_tries.saturating_sub(1)) {
            Err(sw) => sw,
            Ok(()) if self.image.pin_tries == 0 => StatusWord::AuthMethodBlocked,
            Ok(()) => StatusWord::WrongPin {
                tries_left: self.image.pin_tries,
            },
        }
    }

    fn pin_ok(&mut self) -> Result<(), StatusWord> {
        if self.image.pin_tries != PIN_TRIES {
            self.commit(|i| i.pin_tries = PIN_TRIES)?;
        }
        Ok(())
    }

    /// VERIFY (§5): 3 tries, `63Cx`, `6983`; Lc = 0 asks without using a try.
    fn verify(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0, 0) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if self.image.pin_tries == 0 {
            return Err(StatusWord::AuthMethodBlocked);
        }
        if c.data().is_empty() {
            return Err(StatusWord::WrongPin {
                tries_left: self.image.pin_tries,
            });
        }
        let given = decode_pin(c.data()).ok_or(StatusWord::IncorrectData)?;
        if crypto::ct_eq(given.as_bytes(), self.image.pin.as_bytes()) {
            self.pin_ok()?;
            self.v.pin_verified = true;
            Ok(Vec::new())
        } else {
            self.v.pin_verified = false;
            Err(self.pin_failed())
        }
    }

    /// CHANGE PIN `80 5E 01 00 Lc <old> FF <new>` (§5).
    fn change_pin(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0x01, 0x00) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if self.image.pin_tries == 0 {
            return Err(StatusWord::AuthMethodBlocked);
        }
        let d = c.data();
        // Lc = 13: the fixed layout of a PIN pad, old (6) ‖ FF ‖ new (6) (1.1); else the
        // two PINs as they are, split at the first FF
        let sep = if d.len() == 13 && d[6] == 0xFF {
            6
        } else {
            d.iter()
                .position(|b| *b == 0xFF)
                .ok_or(StatusWord::IncorrectData)?
        };
        let old = decode_pin(&d[..sep]).ok_or(StatusWord::IncorrectData)?;
        let new = decode_pin(&d[sep + 1..]).ok_or(StatusWord::IncorrectData)?;
        if !crypto::ct_eq(old.as_bytes(), self.image.pin.as_bytes()) {
            return Err(self.pin_failed());
        }
        let new = new.to_string();
        self.commit(|i| {
            i.pin = new;
            i.pin_tries = PIN_TRIES;
        })?;
        Ok(Vec::new())
    }

    /// Check a line-protection MAC (§5) and return the data without it.
    fn line_mac_data<'c>(
        &self,
        c: &'c CommandApdu,
        challenge: Option<[u8; 8]>,
        key: KeyPurpose,
    ) -> Result<&'c [u8], StatusWord> {
        let d = c.data();
        if d.len() < 4 {
            return Err(StatusWord::WrongLength);
        }
        let ch = challenge.ok_or(StatusWord::SecurityStatusNotSatisfied)?;
        let (data, mac) = d.split_at(d.len() - 4);
        let want = crypto::line_mac(self.keys.get(key), &ch, [c.cla, c.ins, c.p1, c.p2], data);
        if crypto::ct_eq(&want, mac) {
            Ok(data)
        } else {
            Err(StatusWord::MacInvalid)
        }
    }

    fn reload_pin(&mut self, c: &CommandApdu, challenge: Option<[u8; 8]>) -> Answer {
        let data = self.line_mac_data(c, challenge, KeyPurpose::Pin)?;
        let new = decode_pin(data)
            .ok_or(StatusWord::IncorrectData)?
            .to_string();
        self.commit(|i| {
            i.pin = new;
            i.pin_tries = PIN_TRIES;
        })?;
        Ok(Vec::new())
    }

    fn update_record(&mut self, c: &CommandApdu, challenge: Option<[u8; 8]>) -> Answer {
        let data = self.line_mac_data(c, challenge, KeyPurpose::Maint)?;
        let tag = c.p1;
        let len = crate::perso::record_len(tag).filter(|_| tag != 0x01);
        match (len, data) {
            (Some(n), [t, l, v @ ..]) if *t == tag && *l as usize == n && v.len() == n => {
                let v = v.to_vec();
                self.commit(|i| i.set_record(tag, &v))?;
                Ok(Vec::new())
            }
            _ => Err(StatusWord::IncorrectData),
        }
    }

    fn block(&mut self, c: &CommandApdu, challenge: Option<[u8; 8]>) -> Answer {
        self.line_mac_data(c, challenge, KeyPurpose::Maint)?;
        self.commit(|i| i.blocked = true)?;
        self.v.pin_verified = false;
        Ok(Vec::new())
    }

    fn unblock(&mut self, c: &CommandApdu, challenge: Option<[u8; 8]>) -> Answer {
        self.line_mac_data(c, challenge, KeyPurpose::Maint)?;
        self.commit(|i| i.blocked = false)?;
        Ok(Vec::new())
    }

    fn get_balance(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0x00, 0x02) {
            return Err(StatusWord::IncorrectP1P2);
        }
        Ok(self.image.balance.to_be_bytes().to_vec())
    }

    /// INITIALIZE FOR PURCHASE (§6 step 1).
    fn init_purchase(&mut self, c: &CommandApdu) -> Answer {
        if c.p2 != 0x02 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let d = c.data();
        if d.len() != 11 {
            return Err(StatusWord::WrongLength);
        }
        if !self.v.pin_verified {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        if d[0] != KeyPurpose::Purchase.id() {
            return Err(StatusWord::KeyIndexNotSupported);
        }
        let amount = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
        if amount == 0 {
            return Err(StatusWord::IncorrectData);
        }
        if amount > self.image.balance {
            return Err(StatusWord::InsufficientFunds);
        }
        let random: [u8; 4] = rand::random();
        let mut tid = [0u8; 6];
        tid.copy_from_slice(&d[5..11]);
        let counter = self.image.counter;
        self.v.purchase = Some(PurchaseSession {
            amount,
            terminal_id: TerminalId(tid),
            counter,
            random,
        });
        let mut out = self.image.balance.to_be_bytes().to_vec();
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0x01, 0x01]);
        out.extend_from_slice(&random);
        Ok(out)
    }

    /// DEBIT (§6 step 3): MAC1 checked, then balance, counter, log and proof in one step.
    fn debit(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0x01, 0x00) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let d = c.data();
        if d.len() != 15 {
            return Err(StatusWord::WrongLength);
        }
        let s = self
            .v
            .purchase
            .take()
            .ok_or(StatusWord::ConditionsNotSatisfied)?;
        let mut date = [0u8; 4];
        date.copy_from_slice(&d[4..8]);
        let mut time = [0u8; 3];
        time.copy_from_slice(&d[8..11]);
        let ctx = PurchaseContext {
            card_id: self.card_id,
            amount: s.amount,
            counter: s.counter,
            random: s.random,
            terminal_id: s.terminal_id,
            terminal_seq: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
            date,
            time,
        };
        let sk = ctx.session_key(self.keys.get(KeyPurpose::Purchase));
        if !crypto::ct_eq(&ctx.mac1(&sk), &d[11..15]) {
            return Err(StatusWord::MacInvalid);
        }
        let tac = ctx.tac(self.keys.get(KeyPurpose::Tac));
        let mac2 = ctx.mac2(&sk);
        let rec = log_record(
            s.counter,
            s.amount,
            crypto::TXN_PURCHASE,
            &s.terminal_id,
            &date,
            &time,
        );
        self.commit(|i| {
            i.balance -= s.amount;
            i.counter = s.counter.wrapping_add(1);
            i.push_log(&rec);
            i.last_proof = Some(ProofRecord {
                counter: s.counter,
                tac: hex::encode_upper(tac),
                mac2: hex::encode_upper(mac2),
            });
        })?;
        let mut out = tac.to_vec();
        out.extend_from_slice(&mac2);
        Ok(out)
    }

    /// GET TRANSACTION PROOF (§6 step 4).
    fn transaction_proof(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0x00, 0x06) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let d = c.data();
        if d.len() != 2 {
            return Err(StatusWord::WrongLength);
        }
        let counter = u16::from_be_bytes([d[0], d[1]]);
        match &self.image.last_proof {
            Some(p) if p.counter == counter => {
                let mut out = hex::decode(&p.tac).map_err(|_| StatusWord::Other(0x6581))?;
                out.extend(hex::decode(&p.mac2).map_err(|_| StatusWord::Other(0x6581))?);
                Ok(out)
            }
            _ => Err(StatusWord::MacNotAvailable),
        }
    }

    /// INITIALIZE FOR LOAD (§7 step 1).
    fn init_load(&mut self, c: &CommandApdu) -> Answer {
        if c.p2 != 0x02 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let d = c.data();
        if d.len() != 11 {
            return Err(StatusWord::WrongLength);
        }
        if !self.v.pin_verified {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        if d[0] != KeyPurpose::Load.id() {
            return Err(StatusWord::KeyIndexNotSupported);
        }
        let amount = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
        let mut tid = [0u8; 6];
        tid.copy_from_slice(&d[5..11]);
        let ctx = LoadContext {
            card_id: self.card_id,
            amount,
            balance: self.image.balance,
            online_counter: self.image.online_counter,
            random: rand::random(),
            terminal_id: TerminalId(tid),
            date: [0; 4],
            time: [0; 3],
        };
        if amount == 0 || ctx.new_balance().is_none() {
            return Err(StatusWord::IncorrectData);
        }
        let skl = ctx.session_key(self.keys.get(KeyPurpose::Load));
        let mut out = ctx.balance.to_be_bytes().to_vec();
        out.extend_from_slice(&ctx.online_counter.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x01]);
        out.extend_from_slice(&ctx.random);
        out.extend_from_slice(&ctx.mac1(&skl));
        self.v.load = Some(LoadSession { ctx });
        Ok(out)
    }

    /// CREDIT FOR LOAD (§7 step 2).
    fn credit(&mut self, c: &CommandApdu) -> Answer {
        if (c.p1, c.p2) != (0x00, 0x00) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let d = c.data();
        if d.len() != 11 {
            return Err(StatusWord::WrongLength);
        }
        let mut ctx = self
            .v
            .load
            .take()
            .ok_or(StatusWord::ConditionsNotSatisfied)?
            .ctx;
        ctx.date.copy_from_slice(&d[0..4]);
        ctx.time.copy_from_slice(&d[4..7]);
        let skl = ctx.session_key(self.keys.get(KeyPurpose::Load));
        if !crypto::ct_eq(&ctx.mac2(&skl), &d[7..11]) {
            return Err(StatusWord::MacInvalid);
        }
        let new_balance = ctx.new_balance().ok_or(StatusWord::IncorrectData)?;
        let tac = ctx
            .tac(self.keys.get(KeyPurpose::Tac))
            .ok_or(StatusWord::IncorrectData)?;
        let rec = log_record(
            ctx.online_counter,
            ctx.amount,
            crypto::TXN_LOAD,
            &ctx.terminal_id,
            &ctx.date,
            &ctx.time,
        );
        self.commit(|i| {
            i.balance = new_balance;
            i.online_counter = ctx.online_counter.wrapping_add(1);
            i.push_log(&rec);
        })?;
        Ok(tac.to_vec())
    }
}

/// A transaction log record (§3): `counter ‖ overdraft ‖ amount ‖ type ‖ terminal id ‖
/// date ‖ time`, 23 bytes.
fn log_record(
    counter: u16,
    amount: u32,
    kind: u8,
    tid: &TerminalId,
    date: &[u8; 4],
    time: &[u8; 3],
) -> Vec<u8> {
    let mut r = counter.to_be_bytes().to_vec();
    r.extend_from_slice(&[0, 0, 0]);
    r.extend_from_slice(&amount.to_be_bytes());
    r.push(kind);
    r.extend_from_slice(&tid.0);
    r.extend_from_slice(date);
    r.extend_from_slice(time);
    r
}

/// A PIN in packed BCD with `F` padding (§1), 4 to 12 digits.
/// A PIN field (card profile §1): packed BCD digits, then `F` nibbles that pad it (one
/// for an odd count, or up to a fixed 6-byte block, 1.1); a digit after an `F` is not
/// a PIN.
fn decode_pin(b: &[u8]) -> Option<zeroize::Zeroizing<String>> {
    let mut s = zeroize::Zeroizing::new(String::new());
    let mut padding = false;
    for byte in b {
        for nib in [byte >> 4, byte & 0x0F] {
            match nib {
                0..=9 if !padding => s.push((b'0' + nib) as char),
                0x0F => padding = true,
                _ => return None,
            }
        }
    }
    (4..=12).contains(&s.len()).then_some(s)
}

impl VirtualCard for EmulatedCard {
    fn atr(&self) -> Vec<u8> {
        self.knobs.atr_bytes()
    }
    fn power_on(&mut self) {
        self.v = Volatile::default();
    }
    fn power_off(&mut self) {
        self.v = Volatile::default();
    }
    fn reset(&mut self) {
        self.v = Volatile::default();
    }

    fn process(&mut self, command: &[u8]) -> Reply {
        if let Some(&ins) = command.get(1) {
            let n = &mut self.by_ins[usize::from(ins)];
            *n = n.saturating_add(1);
        }
        if self.knobs.mute {
            return Reply::Mute;
        }
        if self.knobs.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.knobs.delay_ms));
        }
        let c = match CommandApdu::parse(command) {
            Ok(c) => c,
            Err(_) => {
                // a command, even a malformed one, uses up the challenge
                self.v.challenge = None;
                return Reply::Answer(StatusWord::WrongLength.to_bytes().to_vec());
            }
        };
        // the tear knob: after the Nth command of a kind, commit or not, then leave
        let mut tear_after = false;
        if let Some(t) = self.knobs.tear {
            if c.ins == t.ins {
                self.tear_seen += 1;
                if self.tear_seen == t.nth {
                    self.knobs.tear = None;
                    if !t.commit {
                        self.v = Volatile::default();
                        return Reply::Tear;
                    }
                    tear_after = true;
                }
            }
        }
        // GET RESPONSE of a T=0 answer held back
        if c.ins == 0xC0 && c.cla & 0xFC == 0 {
            let Some(data) = self.v.pending.take() else {
                return Reply::Answer(StatusWord::ConditionsNotSatisfied.to_bytes().to_vec());
            };
            return match c.le {
                Some(n) if n == data.len() || n == 256 => {
                    let mut out = data;
                    out.extend_from_slice(&StatusWord::Ok.to_bytes());
                    Reply::Answer(out)
                }
                _ => {
                    let sw = StatusWord::WrongLe(data.len() as u8).to_bytes();
                    self.v.pending = Some(data);
                    Reply::Answer(sw.to_vec())
                }
            };
        }
        self.v.pending = None;
        let result = self.dispatch(&c);
        if tear_after {
            self.v = Volatile::default();
            return Reply::Tear;
        }
        let out = match result {
            Ok(data) if self.knobs.t0 && !data.is_empty() && !c.data().is_empty() => {
                let sw = StatusWord::MoreData(data.len() as u8).to_bytes();
                self.v.pending = Some(data);
                sw.to_vec()
            }
            Ok(mut data) => {
                data.extend_from_slice(&StatusWord::Ok.to_bytes());
                data
            }
            Err(sw) => sw.to_bytes().to_vec(),
        };
        Reply::Answer(out)
    }
}

/// What a chip becomes if personalization ever handed over unusable data: a card that
/// answers `6F00` (no precise diagnosis) to everything.
struct BrokenCard;

impl VirtualCard for BrokenCard {
    fn atr(&self) -> Vec<u8> {
        T0_ATR.to_vec()
    }
    fn power_on(&mut self) {}
    fn power_off(&mut self) {}
    fn reset(&mut self) {}
    fn process(&mut self, _command: &[u8]) -> Reply {
        Reply::Answer(vec![0x6F, 0x00])
    }
}

#[cfg(test)]
mod tests;
