//! PSAM emulator (card profile §8): the terminal security module in a reader's SAM
//! slot. It holds its city's K3 keys for EXT, INT and PURCHASE, a 6-byte terminal id and
//! a 4-byte terminal sequence number, so that the host never sees a key.
//!
//! State that must survive (keys, terminal id, sequence) lives in an optional JSON image
//! written atomically; the sequence is raised and saved *before* the MAC1 answer leaves
//! the PSAM, so a crash can skip a number but never reuse one.

use crate::persist::write_atomic;
use crate::{Reply, VirtualCard};
use serde::{Deserialize, Serialize};
use sscard_driver::apdu::CommandApdu;
use sscard_driver::crypto::{self, PurchaseContext};
use sscard_driver::keys::{Key16, KeyPurpose};
use sscard_driver::status::StatusWord;
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::types::{CardId, Region, TerminalId};
use std::path::{Path, PathBuf};

/// The PSAM application identifier `D1 56 00 00 05 ‖ "PSAM"` (§8).
pub const PSAM_AID: [u8; 9] = [0xD1, 0x56, 0x00, 0x00, 0x05, b'P', b'S', b'A', b'M'];

/// The PSAM's ATR: T=0, historical bytes "SSC-PSAM".
pub const PSAM_ATR: [u8; 12] = [
    0x3B, 0x68, 0x00, 0x00, b'S', b'S', b'C', b'-', b'P', b'S', b'A', b'M',
];

/// Errors opening or saving a PSAM image.
#[derive(Debug, thiserror::Error)]
pub enum PsamError {
    #[error("PSAM image {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PSAM image {path} is not valid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// What a PSAM keeps across power cycles.
#[derive(Clone, Serialize, Deserialize)]
pub struct PsamState {
    /// Region whose city keys the PSAM holds (6 digits).
    pub region: String,
    /// 12 hex digits.
    pub terminal_id: String,
    /// Next terminal sequence number to hand out.
    pub terminal_seq: u32,
    /// K3 of EXT, INT and PURCHASE, 32 hex digits each (a test PSAM's image).
    pub k3_ext: String,
    pub k3_int: String,
    pub k3_purchase: String,
}

impl std::fmt::Debug for PsamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsamState")
            .field("region", &self.region)
            .field("terminal_id", &self.terminal_id)
            .field("terminal_seq", &self.terminal_seq)
            .finish_non_exhaustive()
    }
}

struct Keys {
    ext: Key16,
    int: Key16,
    purchase: Key16,
}

/// A purchase between INIT SAM FOR PURCHASE and VERIFY MAC2.
struct Session {
    sk: Key16,
    ctx: PurchaseContext,
}

/// The emulated PSAM.
pub struct Psam {
    state: PsamState,
    region: Region,
    terminal_id: TerminalId,
    keys: Keys,
    image: Option<PathBuf>,
    selected: bool,
    session: Option<Session>,
    t0: bool,
    pending: Option<Vec<u8>>,
}

impl Psam {
    /// A PSAM holding the test K3 keys of `region`'s city.
    pub fn test_psam(region: Region, terminal_id: TerminalId) -> Self {
        let m = test_master_keys();
        let hexk = |p| hex::encode_upper(m.k3(p, region).expose());
        let state = PsamState {
            region: region.to_string(),
            terminal_id: terminal_id.to_hex(),
            terminal_seq: 1,
            k3_ext: hexk(KeyPurpose::Ext),
            k3_int: hexk(KeyPurpose::Int),
            k3_purchase: hexk(KeyPurpose::Purchase),
        };
        // the state was just built from valid values
        Self::from_state(state, None).unwrap_or_else(|_| unreachable!("test PSAM state is valid"))
    }

    fn from_state(state: PsamState, image: Option<PathBuf>) -> Result<Self, String> {
        let region: Region = state.region.parse().map_err(|e| format!("region: {e}"))?;
        let terminal_id: TerminalId = state
            .terminal_id
            .parse()
            .map_err(|e| format!("terminal_id: {e}"))?;
        let key =
            |name: &str, h: &str| Key16::from_hex(h).map_err(|_| format!("{name}: not a key"));
        let keys = Keys {
            ext: key("k3_ext", &state.k3_ext)?,
            int: key("k3_int", &state.k3_int)?,
            purchase: key("k3_purchase", &state.k3_purchase)?,
        };
        Ok(Psam {
            state,
            region,
            terminal_id,
            keys,
            image,
            selected: false,
            session: None,
            t0: false,
            pending: None,
        })
    }

    /// Open a PSAM image; if the file does not exist, create it from `default`.
    pub fn open_image(path: &Path, default: impl FnOnce() -> Psam) -> Result<Self, PsamError> {
        let io = |source| PsamError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let corrupt = |reason: String| PsamError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                };
                let state: PsamState =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                Self::from_state(state, Some(path.to_path_buf())).map_err(corrupt)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut p = default();
                p.image = Some(path.to_path_buf());
                p.save().map_err(io)?;
                Ok(p)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Answer case-4 commands with `61xx` and GET RESPONSE (T=0).
    pub fn set_t0(&mut self, t0: bool) {
        self.t0 = t0;
    }

    /// The next terminal sequence number the PSAM will use.
    pub fn terminal_seq(&self) -> u32 {
        self.state.terminal_seq
    }

    pub fn terminal_id(&self) -> TerminalId {
        self.terminal_id
    }

    fn save(&self) -> std::io::Result<()> {
        match &self.image {
            Some(p) => {
                let bytes =
                    serde_json::to_vec_pretty(&self.state).map_err(std::io::Error::other)?;
                write_atomic(p, &bytes)
            }
            None => Ok(()),
        }
    }

    /// Card id of a command, refused (`6A80`) unless it is of the PSAM's city (§8).
    fn card_id_of(&self, b: &[u8]) -> Result<CardId, StatusWord> {
        let id = CardId::from_bytes(b).map_err(|_| StatusWord::IncorrectData)?;
        if id.region().city() != self.region.city() {
            return Err(StatusWord::IncorrectData);
        }
        Ok(id)
    }

    fn dispatch(&mut self, c: &CommandApdu) -> Result<Vec<u8>, StatusWord> {
        let d = c.data();
        match (c.cla, c.ins) {
            (0x00, 0xA4) => {
                if (c.p1, c.p2) != (0x04, 0x00) {
                    return Err(StatusWord::IncorrectP1P2);
                }
                if d != PSAM_AID {
                    self.selected = false;
                    return Err(StatusWord::FileNotFound);
                }
                self.selected = true;
                self.session = None;
                Ok(Vec::new())
            }
            (0x00 | 0x80, _) if !self.selected => Err(StatusWord::ConditionsNotSatisfied),
            (0x00, 0xB0) => {
                if (c.p1, c.p2) != (0x96, 0x00) {
                    return Err(StatusWord::IncorrectP1P2);
                }
                match c.le {
                    Some(6) | Some(256) => Ok(self.terminal_id.0.to_vec()),
                    _ => Err(StatusWord::WrongLe(6)),
                }
            }
            (0x80, 0x70) => self.init_for_purchase(c),
            (0x80, 0x72) => {
                if d.len() != 4 {
                    return Err(StatusWord::WrongLength);
                }
                let s = self
                    .session
                    .take()
                    .ok_or(StatusWord::ConditionsNotSatisfied)?;
                if crypto::ct_eq(&s.ctx.mac2(&s.sk), d) {
                    Ok(Vec::new())
                } else {
                    Err(StatusWord::MacInvalid)
                }
            }
            (0x80, 0x7A) => {
                if (c.p1, c.p2) != (0x01, 0x00) {
                    return Err(StatusWord::IncorrectP1P2);
                }
                if d.len() != 24 {
                    return Err(StatusWord::WrongLength);
                }
                let id = self.card_id_of(&d[..16])?;
                let mut ch = [0u8; 8];
                ch.copy_from_slice(&d[16..]);
                let kc = crypto::derive_card_key(&self.keys.ext, &id);
                Ok(crypto::auth_cryptogram(&kc, &ch).to_vec())
            }
            (0x80, 0x7C) => {
                if (c.p1, c.p2) != (0x02, 0x00) {
                    return Err(StatusWord::IncorrectP1P2);
                }
                if d.len() != 40 {
                    return Err(StatusWord::WrongLength);
                }
                let id = self.card_id_of(&d[..16])?;
                let mut r = [0u8; 8];
                r.copy_from_slice(&d[16..24]);
                let kc = crypto::derive_card_key(&self.keys.int, &id);
                if crypto::ct_eq(&crypto::auth_cryptogram(&kc, &r), &d[24..]) {
                    Ok(Vec::new())
                } else {
                    Err(StatusWord::AuthenticationFailed)
                }
            }
            (0x00 | 0x80, 0xC0) => Err(StatusWord::ConditionsNotSatisfied),
            (0x00 | 0x80, _) => Err(StatusWord::InsNotSupported),
            _ => Err(StatusWord::ClaNotSupported),
        }
    }

    /// INIT SAM FOR PURCHASE (§8): `random ‖ counter ‖ amount ‖ 06 ‖ date ‖ time ‖
    /// key version ‖ alg ‖ card id` → `terminal seq ‖ MAC1`.
    fn init_for_purchase(&mut self, c: &CommandApdu) -> Result<Vec<u8>, StatusWord> {
        let d = c.data();
        if (c.p1, c.p2) != (0, 0) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if d.len() != 0x24 {
            return Err(StatusWord::WrongLength);
        }
        if d[10] != crypto::TXN_PURCHASE {
            return Err(StatusWord::IncorrectData);
        }
        if d[18] != 0x01 || d[19] != 0x01 {
            return Err(StatusWord::KeyIndexNotSupported);
        }
        let card_id = self.card_id_of(&d[20..36])?;
        let mut random = [0u8; 4];
        random.copy_from_slice(&d[0..4]);
        let mut date = [0u8; 4];
        date.copy_from_slice(&d[11..15]);
        let mut time = [0u8; 3];
        time.copy_from_slice(&d[15..18]);
        let seq = self.state.terminal_seq;
        let ctx = PurchaseContext {
            card_id,
            amount: u32::from_be_bytes([d[6], d[7], d[8], d[9]]),
            counter: u16::from_be_bytes([d[4], d[5]]),
            random,
            terminal_id: self.terminal_id,
            terminal_seq: seq,
            date,
            time,
        };
        // raise and persist the sequence before the MAC1 leaves: never reused
        self.state.terminal_seq = seq.wrapping_add(1);
        if self.save().is_err() {
            self.state.terminal_seq = seq;
            return Err(StatusWord::Other(0x6581)); // memory failure
        }
        let kc = crypto::derive_card_key(&self.keys.purchase, &card_id);
        let sk = ctx.session_key(&kc);
        let mac1 = ctx.mac1(&sk);
        self.session = Some(Session { sk, ctx });
        let mut out = seq.to_be_bytes().to_vec();
        out.extend_from_slice(&mac1);
        Ok(out)
    }
}

impl VirtualCard for Psam {
    fn atr(&self) -> Vec<u8> {
        PSAM_ATR.to_vec()
    }
    fn power_on(&mut self) {
        self.reset();
    }
    fn power_off(&mut self) {
        self.reset();
    }
    fn reset(&mut self) {
        self.selected = false;
        self.session = None;
        self.pending = None;
    }
    fn process(&mut self, command: &[u8]) -> Reply {
        let c = match CommandApdu::parse(command) {
            Ok(c) => c,
            Err(_) => return Reply::Answer(StatusWord::WrongLength.to_bytes().to_vec()),
        };
        // GET RESPONSE of a T=0 answer held back
        if self.t0 && c.ins == 0xC0 && c.cla & 0xFC == 0 {
            let Some(data) = self.pending.take() else {
                return Reply::Answer(StatusWord::ConditionsNotSatisfied.to_bytes().to_vec());
            };
            let le = c.le.unwrap_or(0);
            if le != data.len() && le != 256 {
                let sw = StatusWord::WrongLe(data.len() as u8).to_bytes();
                self.pending = Some(data);
                return Reply::Answer(sw.to_vec());
            }
            let mut out = data;
            out.extend_from_slice(&StatusWord::Ok.to_bytes());
            return Reply::Answer(out);
        }
        self.pending = None;
        let mut out = match self.dispatch(&c) {
            Ok(data) if self.t0 && !data.is_empty() && !c.data().is_empty() => {
                let n = data.len() as u8;
                self.pending = Some(data);
                return Reply::Answer(StatusWord::MoreData(n).to_bytes().to_vec());
            }
            Ok(data) => {
                let mut d = data;
                d.extend_from_slice(&StatusWord::Ok.to_bytes());
                d
            }
            Err(sw) => sw.to_bytes().to_vec(),
        };
        out.shrink_to_fit();
        Reply::Answer(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psam() -> Psam {
        Psam::test_psam("650200".parse().unwrap(), "650200000001".parse().unwrap())
    }
    fn send(p: &mut Psam, hex_apdu: &str) -> (Vec<u8>, u16) {
        let Reply::Answer(r) = p.process(&hex::decode(hex_apdu.replace(' ', "")).unwrap()) else {
            panic!("no answer")
        };
        let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
        (r[..r.len() - 2].to_vec(), sw)
    }
    fn select(p: &mut Psam) {
        assert_eq!(send(p, "00A4040009D1560000055053414D").1, 0x9000);
    }

    #[test]
    fn terminal_id_and_selection() {
        let mut p = psam();
        assert_eq!(send(&mut p, "00B0960006").1, 0x6985);
        select(&mut p);
        let (d, sw) = send(&mut p, "00B0960006");
        assert_eq!((hex::encode_upper(d), sw), ("650200000001".into(), 0x9000));
        assert_eq!(send(&mut p, "00B0960004").1, 0x6C06);
        assert_eq!(send(&mut p, "80EE000000").1, 0x6D00);
        assert_eq!(send(&mut p, "A0B0960006").1, 0x6E00);
    }

    #[test]
    fn purchase_mac1_matches_the_formula_and_sequence_advances() {
        let mut p = psam();
        select(&mut p);
        let id = "650200D1560000050011223344556677";
        let cmd = format!("8070000024 CAFEBABE 0007 000004D2 06 20261122 093015 01 01 {id}");
        let (d, sw) = send(&mut p, &cmd);
        assert_eq!(sw, 0x9000);
        assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 1);
        assert_eq!(p.terminal_seq(), 2);
        let card_id: CardId = id.parse().unwrap();
        let ctx = PurchaseContext {
            card_id,
            amount: 1234,
            counter: 7,
            random: [0xCA, 0xFE, 0xBA, 0xBE],
            terminal_id: "650200000001".parse().unwrap(),
            terminal_seq: 1,
            date: [0x20, 0x26, 0x11, 0x22],
            time: [0x09, 0x30, 0x15],
        };
        let kc = test_master_keys()
            .card_keys(&card_id)
            .get(KeyPurpose::Purchase)
            .clone();
        let sk = ctx.session_key(&kc);
        assert_eq!(&d[4..], &ctx.mac1(&sk));
        // a wrong MAC2 is refused and consumes the session; a right one is accepted
        assert_eq!(send(&mut p, "8072000004 00000000").1, 0x9302);
        assert_eq!(send(&mut p, "8072000004 00000000").1, 0x6985);
        send(&mut p, &cmd);
        let mac2 = hex::encode(ctx_with_seq(&ctx, 2).mac2(&ctx_with_seq(&ctx, 2).session_key(&kc)));
        assert_eq!(send(&mut p, &format!("8072000004{mac2}")).1, 0x9000);
    }

    fn ctx_with_seq(c: &PurchaseContext, seq: u32) -> PurchaseContext {
        PurchaseContext {
            terminal_seq: seq,
            ..c.clone()
        }
    }

    #[test]
    fn other_city_is_refused() {
        let mut p = psam();
        select(&mut p);
        let cmd = "8070000024 CAFEBABE 0007 000004D2 06 20261122 093015 01 01 110100D1560000050011223344556677";
        assert_eq!(send(&mut p, cmd).1, 0x6A80);
        assert_eq!(
            p.terminal_seq(),
            1,
            "a refused command uses no sequence number"
        );
    }

    #[test]
    fn authentication_cryptograms() {
        let mut p = psam();
        select(&mut p);
        let id: CardId = "650200D1560000050011223344556677".parse().unwrap();
        let keys = test_master_keys().card_keys(&id);
        let ch = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let (d, sw) = send(&mut p, &format!("807A010018{id}0102030405060708"));
        assert_eq!(sw, 0x9000);
        assert_eq!(d, crypto::auth_cryptogram(keys.get(KeyPurpose::Ext), &ch));
        let ans = hex::encode(crypto::auth_cryptogram(keys.get(KeyPurpose::Int), &ch));
        assert_eq!(
            send(&mut p, &format!("807C020028{id}0102030405060708{ans}")).1,
            0x9000
        );
        let bad = "00".repeat(16);
        assert_eq!(
            send(&mut p, &format!("807C020028{id}0102030405060708{bad}")).1,
            0x6300
        );
    }

    #[test]
    fn image_keeps_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psam.json");
        let mut p = Psam::open_image(&path, psam).unwrap();
        select(&mut p);
        let cmd = "8070000024 CAFEBABE 0007 000004D2 06 20261122 093015 01 01 650200D1560000050011223344556677";
        send(&mut p, cmd);
        send(&mut p, cmd);
        drop(p);
        let p = Psam::open_image(&path, psam).unwrap();
        assert_eq!(p.terminal_seq(), 3);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Psam::open_image(&path, psam),
            Err(PsamError::Corrupt { .. })
        ));
    }

    #[test]
    fn t0_answers_with_get_response() {
        let mut p = psam();
        p.set_t0(true);
        select(&mut p);
        let id = "650200D1560000050011223344556677";
        let (d, sw) = send(&mut p, &format!("807A010018{id}0102030405060708"));
        assert!(d.is_empty());
        assert_eq!(sw, 0x6110);
        let (d, sw) = send(&mut p, "00C0000010");
        assert_eq!((d.len(), sw), (16, 0x9000));
    }

    #[test]
    fn state_debug_hides_keys() {
        let s = format!("{:?}", psam().state);
        assert!(!s.contains(&psam().state.k3_ext), "{s}");
    }
}
