//! The card side of personalization (`docs/personalization.md`): a chip that starts
//! BLANK, is authenticated with its transport key K_T, receives its application, keys
//! (encrypted under K_T), records and PIN in a MAC-protected session, and at FINALIZE
//! becomes an issued card for good.
//!
//! [`Chip`] is the [`VirtualCard`] a reader holds: while not issued it answers the
//! personalization protocol itself; at FINALIZE it builds the issued card through a
//! factory (the card emulator) from an [`IssuedData`] and hands every later command to it.

use crate::persist::write_atomic;
use crate::{Reply, VirtualCard};
use serde::{Deserialize, Serialize};
use sscard_driver::apdu::CommandApdu;
use sscard_driver::crypto;
use sscard_driver::keys::{CardKeys, Key16, KeyPurpose};
pub use sscard_driver::personalize::pin_block;
use sscard_driver::status::StatusWord;
use sscard_driver::types::{CardId, Region};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Life-cycle states as PERSO STATUS reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifeCycle {
    Blank = 0,
    Personalizing = 1,
    Issued = 2,
}

/// Records of each EF that personalization must write (tag 01, the card id, is the
/// card's own). Card profile §3.
pub const EF05_TAGS: [u8; 5] = [0x02, 0x03, 0x05, 0x06, 0x07];
pub const EF06_TAGS: [u8; 6] = [0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D];
pub const EF15_TAGS: [u8; 3] = [0x20, 0x21, 0x22];

/// The value length of each record tag (card profile §3).
pub fn record_len(tag: u8) -> Option<usize> {
    Some(match tag {
        0x01 => 16,
        0x02 => 1,
        0x03 => 4,
        0x05 | 0x06 => 4,
        0x07 => 9,
        0x08 => 18,
        0x09 => 30,
        0x0A | 0x0B => 1,
        0x0C => 3,
        0x0D => 4,
        0x20 => 1,
        0x21 => 3,
        0x22 => 1,
        _ => return None,
    })
}

/// Steps bitmap bits (`docs/personalization.md`).
pub mod step {
    pub const APPLICATION: u16 = 1 << 0;
    /// Bit of a key purpose (1..=7).
    pub const fn key(purpose_id: u8) -> u16 {
        1 << purpose_id
    }
    pub const EF05: u16 = 1 << 8;
    pub const EF06: u16 = 1 << 9;
    pub const EF15: u16 = 1 << 10;
    pub const PIN: u16 = 1 << 11;
    pub const ALL: u16 = 0x0FFF;
}

/// Consecutive transport-authentication failures before K_T is blocked for good.
pub const TRANSPORT_TRIES: u8 = 5;

/// What the card holds when FINALIZE succeeds: everything the issued card is made of.
pub struct IssuedData {
    pub card_id: CardId,
    /// Record values by tag (without tag and length), including tag 01.
    pub records: BTreeMap<u8, Vec<u8>>,
    pub keys: CardKeys,
    /// PIN digits.
    pub pin: zeroize::Zeroizing<String>,
}

/// Persistent state of a chip being personalized (its image file).
#[derive(Clone, Serialize, Deserialize)]
pub struct PersoState {
    pub chip_serial: String,
    /// K_T while not issued, hex; erased at FINALIZE.
    pub transport_key: Option<String>,
    pub life_cycle: LifeCycle,
    pub failures_left: u8,
    pub region: Option<String>,
    /// Installed Kc by purpose id, hex (a test chip's image).
    pub keys: BTreeMap<u8, String>,
    /// Record values by tag, hex.
    pub records: BTreeMap<u8, String>,
    pub pin: Option<String>,
}

impl std::fmt::Debug for PersoState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersoState")
            .field("chip_serial", &self.chip_serial)
            .field("life_cycle", &self.life_cycle)
            .field("steps", &format_args!("{:04X}", self.steps()))
            .finish_non_exhaustive()
    }
}

impl PersoState {
    /// The steps bitmap.
    pub fn steps(&self) -> u16 {
        let mut s = 0;
        if self.region.is_some() {
            s |= step::APPLICATION;
        }
        for id in self.keys.keys() {
            s |= step::key(*id);
        }
        let has = |tags: &[u8]| tags.iter().all(|t| self.records.contains_key(t));
        if has(&EF05_TAGS) {
            s |= step::EF05;
        }
        if has(&EF06_TAGS) {
            s |= step::EF06;
        }
        if has(&EF15_TAGS) {
            s |= step::EF15;
        }
        if self.pin.is_some() {
            s |= step::PIN;
        }
        s
    }
}

struct Session {
    s_mac: Key16,
    n: u16,
}

/// Builds the issued card at FINALIZE.
pub type IssueFactory = Box<dyn Fn(IssuedData) -> Box<dyn VirtualCard> + Send>;

/// A chip through its whole life: BLANK, PERSONALIZING, then the issued card.
pub struct Chip {
    state: PersoState,
    serial: [u8; 8],
    image: Option<PathBuf>,
    challenge: Option<[u8; 8]>,
    session: Option<Session>,
    factory: IssueFactory,
    issued: Option<Box<dyn VirtualCard>>,
    atr: Vec<u8>,
}

/// The blank chip's ATR: T=1 with historical bytes "SSC-BLANK".
fn blank_atr() -> Vec<u8> {
    // TS T0(Y1=8: TD1, K=9) TD1(T=1) hist… TCK
    let mut a = vec![0x3B, 0x89, 0x01];
    a.extend_from_slice(b"SSC-BLANK");
    let tck = a[1..].iter().fold(0u8, |x, b| x ^ b);
    a.push(tck);
    a
}

impl Chip {
    /// A new blank chip: serial and K_T from the manufacturer's batch key (§9).
    pub fn blank(chip_serial: [u8; 8], k_manuf: &Key16, factory: IssueFactory) -> Self {
        let kt = crypto::transport_key(k_manuf, &chip_serial);
        let state = PersoState {
            chip_serial: hex::encode_upper(chip_serial),
            transport_key: Some(hex::encode_upper(kt.expose())),
            life_cycle: LifeCycle::Blank,
            failures_left: TRANSPORT_TRIES,
            region: None,
            keys: BTreeMap::new(),
            records: BTreeMap::new(),
            pin: None,
        };
        Chip {
            state,
            serial: chip_serial,
            image: None,
            challenge: None,
            session: None,
            factory,
            issued: None,
            atr: blank_atr(),
        }
    }

    /// Open a chip image, or create it blank if the file does not exist. An image of an
    /// issued chip is rebuilt through the factory.
    pub fn open_image(
        path: &Path,
        chip_serial: [u8; 8],
        k_manuf: &Key16,
        factory: IssueFactory,
    ) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: PersoState = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("chip image {}: {e}", path.display()))?;
                let mut serial = [0u8; 8];
                hex::decode_to_slice(&state.chip_serial, &mut serial)
                    .map_err(|_| format!("chip image {}: bad chip_serial", path.display()))?;
                let mut chip = Chip::blank(serial, k_manuf, factory);
                chip.state = state;
                chip.image = Some(path.to_path_buf());
                if chip.state.life_cycle == LifeCycle::Issued {
                    let data = chip
                        .issued_data()
                        .map_err(|e| format!("chip image {}: {e}", path.display()))?;
                    chip.issued = Some((chip.factory)(data));
                }
                Ok(chip)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut chip = Chip::blank(chip_serial, k_manuf, factory);
                chip.image = Some(path.to_path_buf());
                chip.save()
                    .map_err(|e| format!("chip image {}: {e}", path.display()))?;
                Ok(chip)
            }
            Err(e) => Err(format!("chip image {}: {e}", path.display())),
        }
    }

    pub fn state(&self) -> &PersoState {
        &self.state
    }

    fn save(&self) -> std::io::Result<()> {
        match &self.image {
            Some(p) => write_atomic(
                p,
                &serde_json::to_vec_pretty(&self.state).map_err(std::io::Error::other)?,
            ),
            None => Ok(()),
        }
    }

    /// Apply a change to the persistent state; on a failed save roll back and answer an
    /// error, so the card never acknowledges what it did not keep.
    fn commit(&mut self, change: impl FnOnce(&mut PersoState)) -> Result<(), StatusWord> {
        let before = self.state.clone();
        change(&mut self.state);
        if self.save().is_err() {
            self.state = before;
            return Err(StatusWord::Other(0x6581));
        }
        Ok(())
    }

    fn transport_key(&self) -> Result<Key16, StatusWord> {
        self.state
            .transport_key
            .as_deref()
            .and_then(|h| Key16::from_hex(h).ok())
            .ok_or(StatusWord::ConditionsNotSatisfied)
    }

    fn issued_data(&self) -> Result<IssuedData, String> {
        let region: Region = self
            .state
            .region
            .as_deref()
            .ok_or("no application")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let card_id = CardId::new(region, self.serial);
        let mut records = BTreeMap::new();
        for (tag, v) in &self.state.records {
            records.insert(
                *tag,
                hex::decode(v).map_err(|_| format!("record {tag:02X}"))?,
            );
        }
        records.insert(0x01, card_id.as_bytes().to_vec());
        let mut keys = Vec::new();
        for p in KeyPurpose::ALL {
            let h = self
                .state
                .keys
                .get(&p.id())
                .ok_or(format!("key {}", p.name()))?;
            keys.push(Key16::from_hex(h).map_err(|_| format!("key {}", p.name()))?);
        }
        let keys = CardKeys::new(|p| keys[p.id() as usize - 1].clone());
        let pin = zeroize::Zeroizing::new(self.state.pin.clone().ok_or("no PIN")?);
        Ok(IssuedData {
            card_id,
            records,
            keys,
            pin,
        })
    }

    fn status_bytes(&self) -> Vec<u8> {
        let mut v = vec![self.state.life_cycle as u8];
        v.extend_from_slice(&self.state.steps().to_be_bytes());
        v.push(self.state.failures_left);
        v
    }

    /// Check the session MAC of a CLA-84 command and return its data without the MAC.
    fn open_secured<'c>(&mut self, c: &'c CommandApdu) -> Result<&'c [u8], StatusWord> {
        let d = c.data();
        if d.len() < 4 {
            return Err(StatusWord::WrongLength);
        }
        let (data, mac) = d.split_at(d.len() - 4);
        let s = self
            .session
            .as_mut()
            .ok_or(StatusWord::SecurityStatusNotSatisfied)?;
        let expect = crypto::mac4(
            &s.s_mac,
            &[
                &s.n.to_be_bytes(),
                &[c.cla, c.ins, c.p1, c.p2, d.len() as u8],
                data,
            ],
        );
        if !crypto::ct_eq(&expect, mac) {
            self.session = None;
            return Err(StatusWord::MacInvalid);
        }
        s.n = s.n.wrapping_add(1);
        Ok(data)
    }

    fn dispatch(&mut self, c: &CommandApdu) -> Result<Vec<u8>, StatusWord> {
        let challenge = self.challenge.take();
        match (c.cla, c.ins, c.p1, c.p2) {
            (0x80, 0xCA, 0x00, 0x01) => Ok(self.serial.to_vec()),
            (0x80, 0xCA, 0x00, 0x02) => Ok(self.status_bytes()),
            (0x00, 0x84, 0x00, 0x00) => {
                let r: [u8; 8] = rand::random();
                self.challenge = Some(r);
                Ok(r.to_vec())
            }
            (0x00, 0xA4, 0x04, _) => Err(StatusWord::FileNotFound),
            (0x84, 0x82, 0x00, 0x00) => self.transport_authenticate(c, challenge),
            (0x84, ins, _, _) => self.secured(c, ins),
            (0x00 | 0x80, _, _, _) => Err(StatusWord::ConditionsNotSatisfied),
            _ => Err(StatusWord::ClaNotSupported),
        }
    }

    fn transport_authenticate(
        &mut self,
        c: &CommandApdu,
        challenge: Option<[u8; 8]>,
    ) -> Result<Vec<u8>, StatusWord> {
        if self.state.failures_left == 0 {
            return Err(StatusWord::AuthMethodBlocked);
        }
        if c.data().len() != 16 {
            return Err(StatusWord::WrongLength);
        }
        let rc = challenge.ok_or(StatusWord::ConditionsNotSatisfied)?;
        let kt = self.transport_key()?;
        if !crypto::ct_eq(&crypto::auth_cryptogram(&kt, &rc), c.data()) {
            self.session = None;
            self.commit(|s| s.failures_left = s.failures_left.saturating_sub(1))?;
            return Err(if self.state.failures_left == 0 {
                StatusWord::AuthMethodBlocked
            } else {
                StatusWord::AuthenticationFailed
            });
        }
        self.commit(|s| {
            s.failures_left = TRANSPORT_TRIES;
            s.life_cycle = LifeCycle::Personalizing;
        })?;
        self.session = Some(Session {
            s_mac: crypto::kdf(&kt, b"SSC-PERSO", &rc),
            n: 0,
        });
        Ok(Vec::new())
    }

    fn secured(&mut self, c: &CommandApdu, ins: u8) -> Result<Vec<u8>, StatusWord> {
        if !matches!(ins, 0xE0 | 0xD8 | 0xDC | 0x24 | 0xF0 | 0xE4) {
            return Err(StatusWord::InsNotSupported);
        }
        let data = self.open_secured(c)?.to_vec();
        let data = zeroize::Zeroizing::new(data);
        match ins {
            0xE0 => {
                let region = <[u8; 3]>::try_from(&data[..])
                    .ok()
                    .and_then(|b| Region::from_bcd(b).ok())
                    .ok_or(StatusWord::IncorrectData)?;
                match &self.state.region {
                    Some(r) if *r != region.to_string() => Err(StatusWord::ConditionsNotSatisfied),
                    _ => self
                        .commit(|s| s.region = Some(region.to_string()))
                        .map(|_| Vec::new()),
                }
            }
            0xD8 => {
                let purpose = KeyPurpose::from_id(c.p2).ok_or(StatusWord::IncorrectP1P2)?;
                if data.len() != 19 {
                    return Err(StatusWord::WrongLength);
                }
                let kt = self.transport_key()?;
                let mut block = [0u8; 16];
                block.copy_from_slice(&data[..16]);
                let kc = Key16::from_bytes(crypto::aes_decrypt_block(&kt, &block));
                if !crypto::ct_eq(&crypto::kcv(&kc), &data[16..]) {
                    return Err(StatusWord::IncorrectData);
                }
                let h = hex::encode_upper(kc.expose());
                self.commit(|s| {
                    s.keys.insert(purpose.id(), h);
                })
                .map(|_| Vec::new())
            }
            0xDC => {
                let tag = c.p1;
                let want = record_len(tag).filter(|_| tag != 0x01);
                match (want, data.first(), data.get(1)) {
                    (Some(n), Some(t), Some(l))
                        if *t == tag && *l as usize == n && data.len() == n + 2 =>
                    {
                        let v = hex::encode_upper(&data[2..]);
                        self.commit(|s| {
                            s.records.insert(tag, v);
                        })
                        .map(|_| Vec::new())
                    }
                    _ => Err(StatusWord::IncorrectData),
                }
            }
            0x24 => {
                if data.len() != 16 {
                    return Err(StatusWord::WrongLength);
                }
                let kt = self.transport_key()?;
                let mut block = [0u8; 16];
                block.copy_from_slice(&data);
                let plain = zeroize::Zeroizing::new(crypto::aes_decrypt_block(&kt, &block));
                let pin = decode_pin_block(&plain).ok_or(StatusWord::IncorrectData)?;
                self.commit(|s| s.pin = Some(pin.to_string()))
                    .map(|_| Vec::new())
            }
            0xF0 => {
                if self.state.steps() != step::ALL {
                    return Err(StatusWord::ConditionsNotSatisfied);
                }
                let issued = self
                    .issued_data()
                    .map_err(|_| StatusWord::ConditionsNotSatisfied)?;
                self.commit(|s| {
                    s.life_cycle = LifeCycle::Issued;
                    s.transport_key = None;
                })?;
                self.session = None;
                self.issued = Some((self.factory)(issued));
                Ok(Vec::new())
            }
            _ => self
                .commit(|s| {
                    s.region = None;
                    s.keys.clear();
                    s.records.clear();
                    s.pin = None;
                })
                .map(|_| Vec::new()),
        }
    }
}

fn decode_pin_block(b: &[u8; 16]) -> Option<zeroize::Zeroizing<String>> {
    let n = b[0] as usize;
    if !(4..=12).contains(&n) {
        return None;
    }
    let mut s = zeroize::Zeroizing::new(String::new());
    for i in 0..n {
        let byte = b[1 + i / 2];
        let v = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
        if v > 9 {
            return None;
        }
        s.push((b'0' + v) as char);
    }
    Some(s)
}

impl VirtualCard for Chip {
    fn atr(&self) -> Vec<u8> {
        match &self.issued {
            Some(c) => c.atr(),
            None => self.atr.clone(),
        }
    }
    fn power_on(&mut self) {
        self.reset();
        if let Some(c) = &mut self.issued {
            c.power_on();
        }
    }
    fn power_off(&mut self) {
        self.reset();
        if let Some(c) = &mut self.issued {
            c.power_off();
        }
    }
    fn reset(&mut self) {
        self.challenge = None;
        self.session = None;
        if let Some(c) = &mut self.issued {
            c.reset();
        }
    }
    fn process(&mut self, command: &[u8]) -> Reply {
        let c = match CommandApdu::parse(command) {
            Ok(c) => c,
            Err(_) => return Reply::Answer(StatusWord::WrongLength.to_bytes().to_vec()),
        };
        if let Some(card) = &mut self.issued {
            // ISSUED is final: the personalization commands are refused (§9)
            let perso = matches!(
                (c.cla, c.ins),
                (0x84, 0x82 | 0xE0 | 0xD8 | 0x24 | 0xF0 | 0xE4)
            ) || (c.cla, c.ins) == (0x84, 0xDC);
            if perso {
                return Reply::Answer(StatusWord::ConditionsNotSatisfied.to_bytes().to_vec());
            }
            if (c.cla, c.ins, c.p1) == (0x80, 0xCA, 0x00) && matches!(c.p2, 0x01 | 0x02) {
                let mut v = if c.p2 == 0x01 {
                    self.serial.to_vec()
                } else {
                    self.status_bytes()
                };
                v.extend_from_slice(&StatusWord::Ok.to_bytes());
                return Reply::Answer(v);
            }
            return card.process(command);
        }
        let mut out = match self.dispatch(&c) {
            Ok(d) => d,
            Err(sw) => return Reply::Answer(sw.to_bytes().to_vec()),
        };
        out.extend_from_slice(&StatusWord::Ok.to_bytes());
        Reply::Answer(out)
    }
}
