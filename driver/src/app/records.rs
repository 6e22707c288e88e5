//! EF05 (card), EF06 (holder) and EF15 (insurance) read into one typed record
//! (card profile §3).

use super::{apdu, select_application, select_ef, AppError};
use crate::status::StatusWord;
use crate::tlv::SimpleTlv;
use crate::transport::Transaction;
use crate::types::{is_bcd, CardId, Region};
use chrono::NaiveDate;
use serde::Serialize;

/// The card's data as the terminal reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CardRecord {
    #[serde(serialize_with = "ser_card_id")]
    pub card_id: CardId,
    pub card_type: String,
    pub spec_version: String,
    pub issue_date: NaiveDate,
    pub expiry_date: NaiveDate,
    pub card_number: String,
    pub ssn: String,
    pub name: String,
    pub gender: String,
    pub nation: String,
    pub birthplace: String,
    pub birth_date: NaiveDate,
    pub insured_category: String,
    pub pooling_region: String,
    pub insured_status: String,
    pub blocked: bool,
}

fn ser_card_id<S: serde::Serializer>(id: &CardId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// The records that policy and a payment need (card profile §3): who the card is (EF05
/// 01 and 07), until when it is valid (EF05 06), whether its holder is insured (EF15 22),
/// and SELECT's word on whether the application is blocked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecords {
    pub card_id: CardId,
    pub card_number: String,
    pub expiry_date: NaiveDate,
    /// Empty on a blocked application (its EF15 is not readable).
    pub insured_status: String,
    pub blocked: bool,
}

impl CardRecord {
    /// The part of the records that policy and a payment need.
    pub fn policy(&self) -> PolicyRecords {
        PolicyRecords {
            card_id: self.card_id,
            card_number: self.card_number.clone(),
            expiry_date: self.expiry_date,
            insured_status: self.insured_status.clone(),
            blocked: self.blocked,
        }
    }
}

/// Read one record by identifier (`00 B2 <tag> 00 00`, whole record) and check it.
fn read(tx: &mut Transaction<'_>, ef: u16, tag: u8, len: usize) -> Result<Vec<u8>, AppError> {
    let bad = |reason: String| AppError::BadRecord { ef, tag, reason };
    let r = tx.transmit(&apdu(0x00, 0xB2, tag, 0x00, &[], 256)?)?;
    match r.sw {
        StatusWord::Ok => {}
        StatusWord::RecordNotFound => return Err(bad("record not found".into())),
        sw => return Err(AppError::Card(sw)),
    }
    let t = SimpleTlv::parse_exact(&r.data).map_err(|e| bad(e.to_string()))?;
    if t.tag != tag {
        return Err(bad(format!("tag {:02X} in its place", t.tag)));
    }
    if t.value.len() != len {
        return Err(bad(format!(
            "{} bytes, the profile says {len}",
            t.value.len()
        )));
    }
    Ok(t.value)
}

fn ascii(ef: u16, tag: u8, v: Vec<u8>) -> Result<String, AppError> {
    if !v.iter().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::BadRecord {
            ef,
            tag,
            reason: "not printable ASCII".into(),
        });
    }
    Ok(String::from_utf8_lossy(&v).into_owned())
}

fn bcd(ef: u16, tag: u8, v: &[u8]) -> Result<String, AppError> {
    if !is_bcd(v) {
        return Err(AppError::BadRecord {
            ef,
            tag,
            reason: format!("{} is not BCD", hex::encode_upper(v)),
        });
    }
    Ok(hex::encode(v))
}

/// A BCD date `YYYYMMDD` (card profile §1).
pub fn bcd_date(ef: u16, tag: u8, v: &[u8]) -> Result<NaiveDate, AppError> {
    let s = bcd(ef, tag, v)?;
    NaiveDate::parse_from_str(&s, "%Y%m%d").map_err(|_| AppError::BadRecord {
        ef,
        tag,
        reason: format!("{s} is not a date"),
    })
}

/// A GBK name, right-padded with 00, 20 or FF (card profile §1).
pub fn gbk_name(ef: u16, tag: u8, v: &[u8]) -> Result<String, AppError> {
    let end = v
        .iter()
        .rposition(|b| !matches!(b, 0x00 | 0x20 | 0xFF))
        .map_or(0, |i| i + 1);
    let (s, _, bad) = encoding_rs::GBK.decode(&v[..end]);
    if bad {
        return Err(AppError::BadRecord {
            ef,
            tag,
            reason: "name is not valid GBK".into(),
        });
    }
    Ok(s.into_owned())
}

fn card_id(tx: &mut Transaction<'_>) -> Result<CardId, AppError> {
    let id_bytes = read(tx, 0xEF05, 0x01, 16)?;
    CardId::from_bytes(&id_bytes).map_err(|e| AppError::BadRecord {
        ef: 0xEF05,
        tag: 0x01,
        reason: e.to_string(),
    })
}

/// Select the application and read only what policy and a payment need (card profile
/// §3): EF05 records 01, 06 and 07 and EF15 record 22, seven commands where the whole
/// read takes nineteen.
pub fn read_policy(tx: &mut Transaction<'_>) -> Result<PolicyRecords, AppError> {
    let sel = select_application(tx)?;
    select_ef(tx, 0xEF05)?;
    let card_id = card_id(tx)?;
    let expiry_date = bcd_date(0xEF05, 0x06, &read(tx, 0xEF05, 0x06, 4)?)?;
    let card_number = ascii(0xEF05, 0x07, read(tx, 0xEF05, 0x07, 9)?)?;
    let insured_status = if sel.blocked {
        String::new()
    } else {
        select_ef(tx, 0xEF15)?;
        bcd(0xEF15, 0x22, &read(tx, 0xEF15, 0x22, 1)?)?
    };
    Ok(PolicyRecords {
        card_id,
        card_number,
        expiry_date,
        insured_status,
        blocked: sel.blocked,
    })
}

/// EF06, the holder (card profile §3): selected and read whole.
struct Holder {
    ssn: String,
    name: String,
    gender: String,
    nation: String,
    birthplace: String,
    birth_date: NaiveDate,
}

fn read_holder(tx: &mut Transaction<'_>) -> Result<Holder, AppError> {
    select_ef(tx, 0xEF06)?;
    let h = Holder {
        ssn: ascii(0xEF06, 0x08, read(tx, 0xEF06, 0x08, 18)?)?,
        name: gbk_name(0xEF06, 0x09, &read(tx, 0xEF06, 0x09, 30)?)?,
        gender: ascii(0xEF06, 0x0A, read(tx, 0xEF06, 0x0A, 1)?)?,
        nation: bcd(0xEF06, 0x0B, &read(tx, 0xEF06, 0x0B, 1)?)?,
        birthplace: bcd(0xEF06, 0x0C, &read(tx, 0xEF06, 0x0C, 3)?)?,
        birth_date: bcd_date(0xEF06, 0x0D, &read(tx, 0xEF06, 0x0D, 4)?)?,
    };
    // the region codes must be valid regions
    let _: Region = h.birthplace.parse().map_err(|_| AppError::BadRecord {
        ef: 0xEF06,
        tag: 0x0C,
        reason: "not a region code".into(),
    })?;
    Ok(h)
}

/// What a whole read adds to [`PolicyRecords`].
struct Rest {
    card_type: String,
    spec_version: String,
    issue_date: NaiveDate,
    holder: Holder,
    insured_category: String,
    pooling_region: String,
}

impl Rest {
    fn with(self, p: PolicyRecords) -> CardRecord {
        let h = self.holder;
        CardRecord {
            card_id: p.card_id,
            card_type: self.card_type,
            spec_version: self.spec_version,
            issue_date: self.issue_date,
            expiry_date: p.expiry_date,
            card_number: p.card_number,
            ssn: h.ssn,
            name: h.name,
            gender: h.gender,
            nation: h.nation,
            birthplace: h.birthplace,
            birth_date: h.birth_date,
            insured_category: self.insured_category,
            pooling_region: self.pooling_region,
            insured_status: p.insured_status,
            blocked: p.blocked,
        }
    }
}

/// EF05 records 02, 03 and 05 (EF05 selected).
fn card_details(tx: &mut Transaction<'_>) -> Result<(String, String, NaiveDate), AppError> {
    Ok((
        ascii(0xEF05, 0x02, read(tx, 0xEF05, 0x02, 1)?)?,
        ascii(0xEF05, 0x03, read(tx, 0xEF05, 0x03, 4)?)?,
        bcd_date(0xEF05, 0x05, &read(tx, 0xEF05, 0x05, 4)?)?,
    ))
}

/// EF15 records 20 and 21 (EF15 selected).
fn insurance(tx: &mut Transaction<'_>) -> Result<(String, String), AppError> {
    Ok((
        bcd(0xEF15, 0x20, &read(tx, 0xEF15, 0x20, 1)?)?,
        bcd(0xEF15, 0x21, &read(tx, 0xEF15, 0x21, 3)?)?,
    ))
}

/// Select the application and read EF05, EF06 and EF15 (card profile §3), nineteen
/// commands in the national order. A blocked application still identifies itself
/// (EF05, EF06); its EF15 is then unreadable and reported as empty fields.
pub fn read_card(tx: &mut Transaction<'_>) -> Result<CardRecord, AppError> {
    let sel = select_application(tx)?;
    select_ef(tx, 0xEF05)?;
    let card_id = card_id(tx)?;
    let (card_type, spec_version, issue_date) = card_details(tx)?;
    let expiry_date = bcd_date(0xEF05, 0x06, &read(tx, 0xEF05, 0x06, 4)?)?;
    let card_number = ascii(0xEF05, 0x07, read(tx, 0xEF05, 0x07, 9)?)?;
    let holder = read_holder(tx)?;
    let ((insured_category, pooling_region), insured_status) = if sel.blocked {
        ((String::new(), String::new()), String::new())
    } else {
        select_ef(tx, 0xEF15)?;
        (
            insurance(tx)?,
            bcd(0xEF15, 0x22, &read(tx, 0xEF15, 0x22, 1)?)?,
        )
    };
    let rest = Rest {
        card_type,
        spec_version,
        issue_date,
        holder,
        insured_category,
        pooling_region,
    };
    Ok(rest.with(PolicyRecords {
        card_id,
        card_number,
        expiry_date,
        insured_status,
        blocked: sel.blocked,
    }))
}

/// The records [`read_policy`] left out (EF05 02, 03, 05; EF06; EF15 20, 21), read in
/// the same card session to complete `p` into the whole [`CardRecord`] (fourteen
/// commands).
pub fn read_rest(tx: &mut Transaction<'_>, p: &PolicyRecords) -> Result<CardRecord, AppError> {
    select_ef(tx, 0xEF05)?;
    let (card_type, spec_version, issue_date) = card_details(tx)?;
    let holder = read_holder(tx)?;
    let (insured_category, pooling_region) = if p.blocked {
        (String::new(), String::new())
    } else {
        select_ef(tx, 0xEF15)?;
        insurance(tx)?
    };
    let rest = Rest {
        card_type,
        spec_version,
        issue_date,
        holder,
        insured_category,
        pooling_region,
    };
    Ok(rest.with(p.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbk_names_strip_padding() {
        let (g, _, _) = encoding_rs::GBK.encode("张三");
        for pad in [0x00u8, 0x20, 0xFF] {
            let mut v = g.to_vec();
            v.resize(30, pad);
            assert_eq!(gbk_name(0xEF06, 9, &v).unwrap(), "张三");
        }
        // a lead byte with no trail byte is not GBK
        assert!(gbk_name(0xEF06, 9, &[0x81]).is_err());
    }

    #[test]
    fn dates_and_bcd_are_checked() {
        assert_eq!(
            bcd_date(0xEF05, 5, &[0x20, 0x26, 0x01, 0x31]).unwrap(),
            NaiveDate::from_ymd_opt(2026, 1, 31).unwrap()
        );
        let e = bcd_date(0xEF05, 5, &[0x20, 0x26, 0x02, 0x31]).unwrap_err();
        assert!(e.to_string().contains("EF05 record 05"), "{e}");
        assert!(bcd(0xEF15, 0x21, &[0x65, 0x0A, 0x00]).is_err());
    }
}
