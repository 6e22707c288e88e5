//! The card image: everything a card keeps across power cycles, as JSON, written
//! atomically (`crate::persist`). It is a *test* card's image: keys are stored in hex.

use crate::persist::write_atomic;
use crate::perso::{record_len, IssuedData};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sscard_driver::keys::{CardKeys, Key16, KeyPurpose};
use sscard_driver::personalize::bcd_date;
use sscard_driver::testkeys::test_master_keys;
use sscard_driver::types::{is_bcd, CardId, Region};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why an image could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("card image {0} does not exist")]
    Missing(PathBuf),
    #[error("card image {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("card image {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid personalization: {0}")]
    Invalid(String),
}

/// The holder and card data a card is issued with (card profile §3), plus its chip
/// serial, initial PIN and balance.
#[derive(Clone, Serialize, Deserialize)]
pub struct Personalization {
    pub region: String,
    /// 16 hex digits.
    pub chip_serial: String,
    pub card_number: String,
    pub ssn: String,
    pub name: String,
    pub gender: String,
    pub nation: String,
    pub birthplace: String,
    pub birth_date: NaiveDate,
    pub issue_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub insured_category: String,
    pub pooling_region: String,
    pub insured_status: String,
    pub pin: String,
    pub balance: u32,
}

impl std::fmt::Debug for Personalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Personalization")
            .field("card_number", &self.card_number)
            .field("chip_serial", &self.chip_serial)
            .finish_non_exhaustive()
    }
}

impl Personalization {
    /// The default test card of the brief: the vectors' card id, PIN 123456, 100000 fen.
    pub fn default_test_card() -> Self {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap_or_default();
        Personalization {
            region: "650200".into(),
            chip_serial: "0011223344556677".into(),
            card_number: "A65020001".into(),
            ssn: "650102199001011234".into(),
            name: "张三".into(),
            gender: "1".into(),
            nation: "01".into(),
            birthplace: "650102".into(),
            birth_date: d(1990, 1, 1),
            issue_date: d(2026, 1, 1),
            expiry_date: d(2036, 1, 1),
            insured_category: "01".into(),
            pooling_region: "650200".into(),
            insured_status: "01".into(),
            pin: "123456".into(),
            balance: 100_000,
        }
    }

    fn card_id(&self) -> Result<CardId, ImageError> {
        let region: Region = self
            .region
            .parse()
            .map_err(|e| ImageError::Invalid(format!("{e}")))?;
        let mut serial = [0u8; 8];
        hex::decode_to_slice(&self.chip_serial, &mut serial)
            .map_err(|_| ImageError::Invalid("chip_serial: 16 hex digits".into()))?;
        Ok(CardId::new(region, serial))
    }

    /// The records by tag (card profile §3), checked against the record lengths.
    fn records(&self, card_id: &CardId) -> Result<BTreeMap<u8, Vec<u8>>, ImageError> {
        let bad = |w: &str| ImageError::Invalid(w.to_string());
        let bcd = |w: &str, s: &str, n: usize| -> Result<Vec<u8>, ImageError> {
            let b = hex::decode(s).map_err(|_| bad(w))?;
            if b.len() != n || !is_bcd(&b) {
                return Err(bad(w));
            }
            Ok(b)
        };
        let (gbk, _, unmappable) = encoding_rs::GBK.encode(&self.name);
        if unmappable || gbk.len() > 30 {
            return Err(bad("name: at most 30 GBK bytes"));
        }
        let mut name = gbk.to_vec();
        name.resize(30, 0);
        let mut r = BTreeMap::new();
        r.insert(0x01, card_id.as_bytes().to_vec());
        r.insert(0x02, b"1".to_vec());
        r.insert(0x03, b"3.00".to_vec());
        r.insert(0x05, bcd_date(self.issue_date).to_vec());
        r.insert(0x06, bcd_date(self.expiry_date).to_vec());
        r.insert(0x07, self.card_number.as_bytes().to_vec());
        r.insert(0x08, self.ssn.as_bytes().to_vec());
        r.insert(0x09, name);
        r.insert(0x0A, self.gender.as_bytes().to_vec());
        r.insert(0x0B, bcd("nation", &self.nation, 1)?);
        r.insert(0x0C, bcd("birthplace", &self.birthplace, 3)?);
        r.insert(0x0D, bcd_date(self.birth_date).to_vec());
        r.insert(0x20, bcd("insured_category", &self.insured_category, 1)?);
        r.insert(0x21, bcd("pooling_region", &self.pooling_region, 3)?);
        r.insert(0x22, bcd("insured_status", &self.insured_status, 1)?);
        for (tag, v) in &r {
            if record_len(*tag) != Some(v.len()) {
                return Err(ImageError::Invalid(format!(
                    "record {tag:02X}: {} bytes, the profile says {:?}",
                    v.len(),
                    record_len(*tag)
                )));
            }
        }
        Ok(r)
    }
}

/// The proof of the last purchase, for GET TRANSACTION PROOF (§6 step 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofRecord {
    pub counter: u16,
    pub tac: String,
    pub mac2: String,
}

/// Everything a card keeps.
#[derive(Clone, Serialize, Deserialize)]
pub struct CardImage {
    pub version: u32,
    /// Record values by tag, hex.
    pub records: BTreeMap<String, String>,
    /// Kc by purpose name, hex.
    pub keys: BTreeMap<String, String>,
    pub pin: String,
    pub pin_tries: u8,
    pub ext_tries: u8,
    pub blocked: bool,
    pub balance: u32,
    pub counter: u16,
    pub online_counter: u16,
    /// Log records, newest first, hex.
    pub log: Vec<String>,
    pub last_proof: Option<ProofRecord>,
}

impl std::fmt::Debug for CardImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardImage")
            .field("balance", &self.balance)
            .field("counter", &self.counter)
            .field("pin_tries", &self.pin_tries)
            .finish_non_exhaustive()
    }
}

impl CardImage {
    /// Issue a card from a personalization record, keys from the test master keys.
    pub fn issue(p: &Personalization) -> Result<Self, ImageError> {
        let keys = test_master_keys().card_keys(&p.card_id()?);
        Self::issue_with_keys(p, &keys)
    }

    /// Issue a card from a personalization record with its seven card keys Kc given.
    pub fn issue_with_keys(p: &Personalization, keys: &CardKeys) -> Result<Self, ImageError> {
        let id = p.card_id()?;
        let records = p.records(&id)?;
        if !(4..=12).contains(&p.pin.len()) || !p.pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ImageError::Invalid("pin: 4 to 12 digits".into()));
        }
        if p.balance > i32::MAX as u32 {
            return Err(ImageError::Invalid("balance above 2^31 - 1".into()));
        }
        Ok(Self::build(records, keys, p.pin.clone(), p.balance))
    }

    /// The image of a card that personalization produced.
    pub fn from_issued(d: &IssuedData) -> Result<Self, ImageError> {
        Ok(Self::build(
            d.records.clone(),
            &d.keys,
            d.pin.to_string(),
            0,
        ))
    }

    fn build(records: BTreeMap<u8, Vec<u8>>, keys: &CardKeys, pin: String, balance: u32) -> Self {
        CardImage {
            version: 1,
            records: records
                .into_iter()
                .map(|(t, v)| (format!("{t:02X}"), hex::encode_upper(v)))
                .collect(),
            keys: KeyPurpose::ALL
                .iter()
                .map(|p| {
                    (
                        p.name().to_string(),
                        hex::encode_upper(keys.get(*p).expose()),
                    )
                })
                .collect(),
            pin,
            pin_tries: super::PIN_TRIES,
            ext_tries: super::EXT_TRIES,
            blocked: false,
            balance,
            counter: 0,
            online_counter: 0,
            log: Vec::new(),
            last_proof: None,
        }
    }

    /// Read an image file.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::Missing(path.to_path_buf()),
            _ => ImageError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let corrupt = |reason: String| ImageError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let img: CardImage = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        img.card_keys().map_err(|e| corrupt(e.to_string()))?;
        img.card_id().map_err(|e| corrupt(e.to_string()))?;
        if img
            .log
            .iter()
            .any(|r| hex::decode(r).map(|b| b.len()) != Ok(23))
        {
            return Err(corrupt("log records must be 23 bytes".into()));
        }
        Ok(img)
    }

    /// Write the image atomically.
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        write_atomic(path, &bytes).map_err(io)
    }

    pub fn card_keys(&self) -> Result<CardKeys, ImageError> {
        let mut ks = Vec::new();
        for p in KeyPurpose::ALL {
            let k = self
                .keys
                .get(p.name())
                .and_then(|h| Key16::from_hex(h).ok())
                .ok_or_else(|| ImageError::Invalid(format!("key {} missing or bad", p.name())))?;
            ks.push(k);
        }
        Ok(CardKeys::new(|p| ks[p.id() as usize - 1].clone()))
    }

    pub fn card_id(&self) -> Result<CardId, ImageError> {
        let b = self
            .record(0x01)
            .ok_or_else(|| ImageError::Invalid("record 01 (card id) missing".into()))?;
        CardId::from_bytes(&b).map_err(|e| ImageError::Invalid(e.to_string()))
    }

    /// A record's value.
    pub fn record(&self, tag: u8) -> Option<Vec<u8>> {
        self.records
            .get(&format!("{tag:02X}"))
            .and_then(|h| hex::decode(h).ok())
    }

    pub fn set_record(&mut self, tag: u8, value: &[u8]) {
        self.records
            .insert(format!("{tag:02X}"), hex::encode_upper(value));
    }

    /// Log record `i` (0 = newest).
    pub fn log_record(&self, i: usize) -> Option<Vec<u8>> {
        self.log.get(i).and_then(|h| hex::decode(h).ok())
    }

    /// Add a log record as the newest; the log keeps ten (§3).
    pub fn push_log(&mut self, rec: &[u8]) {
        self.log.insert(0, hex::encode_upper(rec));
        self.log.truncate(super::LOG_RECORDS);
    }
}
