//! Personalization, the issuing office's side (`docs/personalization.md`, card profile
//! §9): take a BLANK (or interrupted) card to ISSUED, and a batch API with an issuance
//! journal so a crash never issues a card twice.

use crate::apdu::CommandApdu;
use crate::crypto;
use crate::keys::{Key16, KeyPurpose};
use crate::status::StatusWord;
use crate::transport::{CommandError, Transaction, TransportError};
use crate::types::{CardId, Region};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

/// Why personalization stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersoError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The card refused a step; `step` names it.
    #[error("{step}: card answered {sw}")]
    Card { step: String, sw: StatusWord },
    #[error("transport key rejected: the card's batch key is not this office's ({failures_left} tries left)")]
    WrongTransportKey { failures_left: u8 },
    #[error("transport key blocked: the card cannot be personalized")]
    TransportKeyBlocked,
    #[error("card is already issued")]
    AlreadyIssued,
    #[error("invalid personalization record: {0}")]
    BadRecord(String),
    #[error("issuer keys: {0}")]
    Keys(String),
    #[error("issuance journal: {0}")]
    Journal(String),
}

impl From<CommandError> for PersoError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Transport(t) => PersoError::Transport(t),
            CommandError::Status(sw) => PersoError::Card {
                step: "command".into(),
                sw,
            },
        }
    }
}

/// One card's personalization record: holder data, card number, region, dates and
/// initial PIN. The card id is the card's own (region ‖ marker ‖ chip serial).
#[derive(Clone, Serialize, Deserialize)]
pub struct PersoRecord {
    pub card_number: String,
    pub ssn: String,
    pub name: String,
    /// `1` male, `2` female, `9` unstated.
    pub gender: String,
    /// Two digits, `01` = Han.
    pub nation: String,
    pub birthplace: String,
    pub birth_date: NaiveDate,
    pub issue_date: NaiveDate,
    pub expiry_date: NaiveDate,
    /// `01` employee, `02` resident.
    pub insured_category: String,
    pub pooling_region: String,
    /// `01` active, `02` suspended.
    #[serde(default = "active")]
    pub insured_status: String,
    /// The issuing city's region code (6 digits).
    pub region: String,
    /// Initial PIN, 4 to 12 digits.
    pub pin: Zeroizing<String>,
}

fn active() -> String {
    "01".into()
}

impl std::fmt::Debug for PersoRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersoRecord")
            .field("card_number", &self.card_number)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// 4 BCD bytes `YYYYMMDD` (card profile §1).
pub fn bcd_date(d: NaiveDate) -> [u8; 4] {
    let s = format!(
        "{:04}{:02}{:02}",
        d.year().clamp(0, 9999),
        d.month(),
        d.day()
    );
    let mut b = [0u8; 4];
    // eight ASCII digits always decode
    let _ = hex::decode_to_slice(s, &mut b);
    b
}

fn bcd_digits(what: &str, s: &str, n: usize) -> Result<Vec<u8>, PersoError> {
    if s.len() != 2 * n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PersoError::BadRecord(format!(
            "{what}: {} digits expected",
            2 * n
        )));
    }
    hex::decode(s).map_err(|_| PersoError::BadRecord(what.into()))
}

fn ascii(what: &str, s: &str, n: usize) -> Result<Vec<u8>, PersoError> {
    if s.len() != n || !s.is_ascii() {
        return Err(PersoError::BadRecord(format!(
            "{what}: {n} ASCII characters expected"
        )));
    }
    Ok(s.as_bytes().to_vec())
}

impl PersoRecord {
    /// The records of EF05, EF06 and EF15 as `(tag, value)` (card profile §3), checked.
    pub fn records(&self) -> Result<Vec<(u8, Vec<u8>)>, PersoError> {
        let (gbk, _, bad) = encoding_rs::GBK.encode(&self.name);
        if bad || gbk.is_empty() || gbk.len() > 30 {
            return Err(PersoError::BadRecord(
                "name: 1 to 30 GBK bytes expected".into(),
            ));
        }
        let mut name = gbk.to_vec();
        name.resize(30, 0);
        if !matches!(self.gender.as_str(), "1" | "2" | "9") {
            return Err(PersoError::BadRecord("gender: 1, 2 or 9".into()));
        }
        if self.expiry_date <= self.issue_date {
            return Err(PersoError::BadRecord(
                "expiry_date before issue_date".into(),
            ));
        }
        Ok(vec![
            (0x02, b"1".to_vec()),
            (0x03, b"3.00".to_vec()),
            (0x05, bcd_date(self.issue_date).to_vec()),
            (0x06, bcd_date(self.expiry_date).to_vec()),
            (0x07, ascii("card_number", &self.card_number, 9)?),
            (0x08, ascii("ssn", &self.ssn, 18)?),
            (0x09, name),
            (0x0A, self.gender.as_bytes().to_vec()),
            (0x0B, bcd_digits("nation", &self.nation, 1)?),
            (0x0C, bcd_digits("birthplace", &self.birthplace, 3)?),
            (0x0D, bcd_date(self.birth_date).to_vec()),
            (
                0x20,
                bcd_digits("insured_category", &self.insured_category, 1)?,
            ),
            (0x21, bcd_digits("pooling_region", &self.pooling_region, 3)?),
            (0x22, bcd_digits("insured_status", &self.insured_status, 1)?),
        ])
    }

    pub fn region(&self) -> Result<Region, PersoError> {
        self.region
            .parse()
            .map_err(|e| PersoError::BadRecord(format!("{e}")))
    }
}

/// The issuing office's keys: K3 of all seven purposes for its city and the
/// manufacturer's batch key. Card keys are derived per card and never stored.
pub struct IssuerKeys {
    pub region: Region,
    k3: Vec<(KeyPurpose, Key16)>,
    k_manuf: Key16,
}

impl IssuerKeys {
    /// From K3 keys (all seven purposes required) and K_MANUF.
    pub fn new(
        region: Region,
        k3: Vec<(KeyPurpose, Key16)>,
        k_manuf: Key16,
    ) -> Result<Self, PersoError> {
        for p in KeyPurpose::ALL {
            if !k3.iter().any(|(q, _)| *q == p) {
                return Err(PersoError::Keys(format!("no K3 for {}", p.name())));
            }
        }
        Ok(IssuerKeys {
            region,
            k3,
            k_manuf,
        })
    }

    /// The test keys of `vectors.json` (tests and demos only).
    pub fn test_keys(region: Region) -> Self {
        let m = crate::testkeys::test_master_keys();
        IssuerKeys {
            region,
            k3: KeyPurpose::ALL
                .iter()
                .map(|p| (*p, m.k3(*p, region)))
                .collect(),
            k_manuf: crate::testkeys::test_manufacturer_key(),
        }
    }

    fn card_key(&self, p: KeyPurpose, card_id: &CardId) -> Result<Key16, PersoError> {
        let k3 = self
            .k3
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, k)| k)
            .ok_or_else(|| PersoError::Keys(format!("no K3 for {}", p.name())))?;
        Ok(crypto::derive_card_key(k3, card_id))
    }
}

/// What PERSO STATUS reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PersoStatus {
    /// 0 blank, 1 personalizing, 2 issued.
    pub life_cycle: u8,
    pub steps: u16,
    pub failures_left: u8,
}

pub const STEP_APPLICATION: u16 = 1;
pub const STEP_EF05: u16 = 1 << 8;
pub const STEP_EF06: u16 = 1 << 9;
pub const STEP_EF15: u16 = 1 << 10;
pub const STEP_PIN: u16 = 1 << 11;
pub const STEPS_ALL: u16 = 0x0FFF;

fn step_of_tag(tag: u8) -> u16 {
    match tag {
        0x02..=0x07 => STEP_EF05,
        0x08..=0x0D => STEP_EF06,
        _ => STEP_EF15,
    }
}

/// Chip serial (GET DATA) and PERSO STATUS: readable in every state, no session.
pub fn read_status(tx: &mut Transaction<'_>) -> Result<([u8; 8], PersoStatus), PersoError> {
    let serial = tx.transmit_ok(
        &CommandApdu::new(0x80, 0xCA, 0, 1)
            .with_le(8)
            .map_err(TransportError::from)?,
    )?;
    let st = tx.transmit_ok(
        &CommandApdu::new(0x80, 0xCA, 0, 2)
            .with_le(4)
            .map_err(TransportError::from)?,
    )?;
    let serial: [u8; 8] = serial.try_into().map_err(|_| PersoError::Card {
        step: "GET DATA chip serial".into(),
        sw: StatusWord::WrongLength,
    })?;
    if st.len() != 4 {
        return Err(PersoError::Card {
            step: "PERSO STATUS".into(),
            sw: StatusWord::WrongLength,
        });
    }
    Ok((
        serial,
        PersoStatus {
            life_cycle: st[0],
            steps: u16::from_be_bytes([st[1], st[2]]),
            failures_left: st[3],
        },
    ))
}

/// An open personalization session: every command MAC'd with S_MAC and a counter.
struct Session<'t, 'a> {
    tx: &'t mut Transaction<'a>,
    s_mac: Key16,
    n: u16,
}

impl Session<'_, '_> {
    fn send(&mut self, step: &str, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Result<(), PersoError> {
        let lc = (data.len() + 4) as u8;
        let mac = crypto::mac4(
            &self.s_mac,
            &[&self.n.to_be_bytes(), &[0x84, ins, p1, p2, lc], data],
        );
        let mut body = Zeroizing::new(data.to_vec());
        body.extend_from_slice(&mac);
        let cmd = CommandApdu::new(0x84, ins, p1, p2)
            .with_data(body.to_vec())
            .map_err(TransportError::from)?
            .sensitive();
        let r = self.tx.transmit(&cmd)?;
        self.n = self.n.wrapping_add(1);
        if r.sw.is_ok() {
            Ok(())
        } else {
            Err(PersoError::Card {
                step: step.into(),
                sw: r.sw,
            })
        }
    }
}

/// How to treat a card found part-way through personalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Send only the steps not done yet (the default).
    Resume,
    /// Drop what was written and start over.
    Restart,
}

/// Personalize the card in `tx` with `rec`: transport authentication, then the steps
/// PERSO STATUS says are missing (or all, with [`Mode::Restart`]), then FINALIZE.
/// Returns the new card's id.
pub fn personalize(
    tx: &mut Transaction<'_>,
    keys: &IssuerKeys,
    rec: &PersoRecord,
    mode: Mode,
) -> Result<CardId, PersoError> {
    let records = rec.records()?;
    let region = rec.region()?;
    if region.city() != keys.region.city() {
        return Err(PersoError::BadRecord(format!(
            "region {region} is not this office's city ({})",
            keys.region
        )));
    }
    let pin_block =
        pin_block(&rec.pin).ok_or_else(|| PersoError::BadRecord("pin: 4 to 12 digits".into()))?;
    let (serial, status) = read_status(tx)?;
    match status.life_cycle {
        2 => return Err(PersoError::AlreadyIssued),
        _ if status.failures_left == 0 => return Err(PersoError::TransportKeyBlocked),
        _ => {}
    }
    let kt = crypto::transport_key(&keys.k_manuf, &serial);
    let rc: [u8; 8] = tx
        .transmit_ok(
            &CommandApdu::new(0, 0x84, 0, 0)
                .with_le(8)
                .map_err(TransportError::from)?,
        )?
        .try_into()
        .map_err(|_| PersoError::Card {
            step: "GET CHALLENGE".into(),
            sw: StatusWord::WrongLength,
        })?;
    let auth = CommandApdu::new(0x84, 0x82, 0, 0)
        .with_data(crypto::auth_cryptogram(&kt, &rc).to_vec())
        .map_err(TransportError::from)?;
    match tx.transmit(&auth)?.sw {
        StatusWord::Ok => {}
        StatusWord::AuthenticationFailed => {
            return Err(PersoError::WrongTransportKey {
                failures_left: status.failures_left.saturating_sub(1),
            })
        }
        StatusWord::AuthMethodBlocked => return Err(PersoError::TransportKeyBlocked),
        sw => {
            return Err(PersoError::Card {
                step: "TRANSPORT AUTHENTICATE".into(),
                sw,
            })
        }
    }
    let mut s = Session {
        tx,
        s_mac: crypto::kdf(&kt, b"SSC-PERSO", &rc),
        n: 0,
    };
    let mut done = if mode == Mode::Restart {
        0
    } else {
        status.steps
    };
    if mode == Mode::Restart {
        s.send("RESTART", 0xE4, 0, 0, &[])?;
    }
    let card_id = CardId::new(region, serial);
    if done & STEP_APPLICATION == 0 {
        s.send("CREATE APPLICATION", 0xE0, 0, 0, &region.bcd())?;
        done |= STEP_APPLICATION;
    }
    for p in KeyPurpose::ALL {
        let bit = 1u16 << p.id();
        if done & bit != 0 {
            continue;
        }
        let kc = keys.card_key(p, &card_id)?;
        let mut data = Zeroizing::new(crypto::aes_encrypt_block(&kt, kc.expose()).to_vec());
        data.extend_from_slice(&crypto::kcv(&kc));
        s.send(&format!("PUT KEY {}", p.name()), 0xD8, 0, p.id(), &data)?;
    }
    for (tag, value) in &records {
        if done & step_of_tag(*tag) != 0 {
            continue;
        }
        let mut tlv = vec![*tag, value.len() as u8];
        tlv.extend_from_slice(value);
        s.send(&format!("WRITE RECORD {tag:02X}"), 0xDC, *tag, 0, &tlv)?;
    }
    if done & STEP_PIN == 0 {
        let enc = Zeroizing::new(crypto::aes_encrypt_block(&kt, &pin_block));
        s.send("SET PIN", 0x24, 0, 0, &enc[..])?;
    }
    s.send("FINALIZE", 0xF0, 0, 0, &[])?;
    Ok(card_id)
}

/// The PIN block of SET PIN: `digit count ‖ packed BCD ‖ F…F`, 16 bytes.
pub fn pin_block(pin: &str) -> Option<Zeroizing<[u8; 16]>> {
    if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut b = Zeroizing::new([0xFFu8; 16]);
    b[0] = pin.len() as u8;
    for (i, d) in pin.bytes().enumerate() {
        let v = d - b'0';
        let byte = &mut b[1 + i / 2];
        *byte = if i % 2 == 0 {
            (v << 4) | 0x0F
        } else {
            (*byte & 0xF0) | v
        };
    }
    Some(b)
}

/// Outcome of one card in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Issued {
        card_number: String,
        card_id: String,
    },
    AlreadyIssued {
        card_number: String,
        card_id: String,
    },
    Failed {
        card_number: String,
        reason: String,
    },
}

/// The issuance journal: a SQLite file recording, for each card number, the chip it was
/// bound to and its state (`started`, `issued`, `failed`). A card number is issued at
/// most once and a chip carries at most one card number.
pub struct IssuanceJournal {
    db: rusqlite::Connection,
}

fn jerr(e: rusqlite::Error) -> PersoError {
    PersoError::Journal(e.to_string())
}

impl IssuanceJournal {
    pub fn open(path: &Path) -> Result<Self, PersoError> {
        let db = rusqlite::Connection::open(path).map_err(jerr)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS issuance(
                card_number TEXT PRIMARY KEY,
                chip_serial TEXT NOT NULL UNIQUE,
                card_id TEXT NOT NULL,
                state TEXT NOT NULL CHECK(state IN ('started','issued','failed')),
                reason TEXT,
                updated TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));",
        )
        .map_err(jerr)?;
        Ok(IssuanceJournal { db })
    }

    /// State of a card number: `(chip serial, card id, state)`.
    pub fn get(&self, card_number: &str) -> Result<Option<(String, String, String)>, PersoError> {
        use rusqlite::OptionalExtension;
        self.db
            .query_row(
                "SELECT chip_serial, card_id, state FROM issuance WHERE card_number=?1",
                [card_number],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(jerr)
    }

    /// The card number a chip (16 hex digits) is bound to, if any.
    pub fn card_number_of_chip(&self, serial: &str) -> Result<Option<String>, PersoError> {
        use rusqlite::OptionalExtension;
        self.db
            .query_row(
                "SELECT card_number FROM issuance WHERE chip_serial=?1",
                [serial],
                |r| r.get(0),
            )
            .optional()
            .map_err(jerr)
    }

    fn set(
        &self,
        card_number: &str,
        serial: &str,
        card_id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), PersoError> {
        self.db
            .execute(
                "INSERT INTO issuance(card_number, chip_serial, card_id, state, reason) VALUES(?1,?2,?3,?4,?5)
                 ON CONFLICT(card_number) DO UPDATE SET chip_serial=?2, card_id=?3, state=?4, reason=?5,
                 updated=strftime('%Y-%m-%dT%H:%M:%fZ','now')",
                rusqlite::params![card_number, serial, card_id, state, reason],
            )
            .map(|_| ())
            .map_err(jerr)
    }

    /// Personalize the card in `tx` with `rec`, journaled: `started` before the first
    /// command, `issued` or `failed` after. A card number already issued is skipped; a
    /// chip bound to another card number is refused; a card found issued by an earlier,
    /// interrupted run is recorded as issued.
    pub fn issue(&self, tx: &mut Transaction<'_>, keys: &IssuerKeys, rec: &PersoRecord) -> Outcome {
        let number = rec.card_number.clone();
        let failed = |reason: String| Outcome::Failed {
            card_number: number.clone(),
            reason,
        };
        match self.get(&number) {
            Ok(Some((_, id, state))) if state == "issued" => {
                return Outcome::AlreadyIssued {
                    card_number: number,
                    card_id: id,
                }
            }
            Ok(_) => {}
            Err(e) => return failed(e.to_string()),
        }
        let (serial, status) = match read_status(tx) {
            Ok(s) => s,
            Err(e) => return failed(e.to_string()),
        };
        let serial_hex = hex::encode_upper(serial);
        match self.card_number_of_chip(&serial_hex) {
            Ok(Some(other)) if other != number => {
                return failed(format!(
                    "chip {serial_hex} is already bound to card number {other}"
                ))
            }
            Ok(_) => {}
            Err(e) => return failed(e.to_string()),
        }
        let region = match rec.region() {
            Ok(r) => r,
            Err(e) => return failed(e.to_string()),
        };
        let card_id = CardId::new(region, serial).to_hex();
        if status.life_cycle == 2 {
            // issued by an earlier run whose journal update was lost
            return match self.get(&number) {
                Ok(Some((s, _, _))) if s == serial_hex => {
                    match self.set(&number, &serial_hex, &card_id, "issued", None) {
                        Ok(()) => Outcome::Issued {
                            card_number: number,
                            card_id,
                        },
                        Err(e) => failed(e.to_string()),
                    }
                }
                _ => failed(format!("chip {serial_hex} is already issued")),
            };
        }
        if let Err(e) = self.set(&number, &serial_hex, &card_id, "started", None) {
            return failed(e.to_string());
        }
        match personalize(tx, keys, rec, Mode::Resume) {
            Ok(id) => match self.set(&number, &serial_hex, &id.to_hex(), "issued", None) {
                Ok(()) => Outcome::Issued {
                    card_number: number,
                    card_id: id.to_hex(),
                },
                Err(e) => failed(e.to_string()),
            },
            Err(e) => {
                let reason = e.to_string();
                let _ = self.set(&number, &serial_hex, &card_id, "failed", Some(&reason));
                failed(reason)
            }
        }
    }
}
