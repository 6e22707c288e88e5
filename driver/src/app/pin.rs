//! PIN, authentication and line-protected maintenance commands (card profile §5).

use super::{apdu, AppError};
use crate::keyprovider::KeyProvider;
use crate::keys::KeyPurpose;
use crate::status::StatusWord;
use crate::transport::pinpad::PadRequest;
use crate::transport::Transaction;
use crate::types::CardId;
use std::fmt;
use zeroize::Zeroizing;

/// A PIN: 4 to 12 digits, sent as packed BCD with an `F` pad (card profile §1). Never
/// printed.
#[derive(Clone)]
pub struct Pin(Zeroizing<Vec<u8>>);

impl Pin {
    /// From digits; anything else is `BadInput` (which never echoes the PIN).
    pub fn new(digits: &str) -> Result<Pin, AppError> {
        if !(4..=12).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AppError::BadInput("a PIN is 4 to 12 digits".into()));
        }
        let mut nibbles: Zeroizing<Vec<u8>> =
            Zeroizing::new(digits.bytes().map(|b| b - b'0').collect());
        if nibbles.len() % 2 == 1 {
            nibbles.push(0x0F);
        }
        Ok(Pin(Zeroizing::new(
            nibbles.chunks(2).map(|c| (c[0] << 4) | c[1]).collect(),
        )))
    }

    /// The packed BCD bytes.
    pub fn bcd(&self) -> &[u8] {
        &self.0
    }

    /// The fixed 6-byte block a PIN pad fills (card profile 1.1 §1): the packed digits,
    /// right-padded with `F` nibbles (`123456` = `12 34 56 FF FF FF`). `None` for a PIN
    /// of more than 12 digits, which does not fit.
    pub fn fixed_block(&self) -> Option<Zeroizing<[u8; 6]>> {
        let b = self.bcd();
        if b.len() > 6 {
            return None;
        }
        let mut out = Zeroizing::new([0xFF; 6]);
        out[..b.len()].copy_from_slice(b);
        Some(out)
    }

    /// CHANGE PIN's data in the fixed layout of card profile 1.1 §1 (Lc = 13):
    /// `old (6, F-padded) ‖ FF ‖ new (6, F-padded)`.
    pub fn change_block(old: &Pin, new: &Pin) -> Option<Zeroizing<Vec<u8>>> {
        let (o, n) = (old.fixed_block()?, new.fixed_block()?);
        let mut v = Zeroizing::new(Vec::with_capacity(13));
        v.extend_from_slice(&o[..]);
        v.push(0xFF);
        v.extend_from_slice(&n[..]);
        Some(v)
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(REDACTED)")
    }
}

/// Map the PIN status words (§5).
fn pin_status(sw: StatusWord) -> AppError {
    match sw {
        StatusWord::WrongPin { tries_left: 0 } | StatusWord::AuthMethodBlocked => {
            AppError::PinBlocked
        }
        StatusWord::WrongPin { tries_left } => AppError::PinWrong { tries_left },
        StatusWord::ConditionsNotSatisfied | StatusWord::ApplicationBlocked => AppError::Blocked,
        StatusWord::PinEntry(p) => AppError::PinEntry(p),
        sw => AppError::Card(sw),
    }
}

/// PIN tries left, without using one (VERIFY with Lc = 0).
pub fn pin_tries_left(tx: &mut Transaction<'_>) -> Result<u8, AppError> {
    let r = tx.transmit(&apdu(0x00, 0x20, 0, 0, &[], 0)?)?;
    match r.sw {
        StatusWord::WrongPin { tries_left } => Ok(tries_left),
        StatusWord::AuthMethodBlocked => Ok(0),
        StatusWord::Ok => Ok(3),
        sw => Err(pin_status(sw)),
    }
}

/// VERIFY (§5).
pub fn verify_pin(tx: &mut Transaction<'_>, pin: &Pin) -> Result<(), AppError> {
    let c = apdu(0x00, 0x20, 0, 0, pin.bcd(), 0)?.sensitive();
    match tx.transmit(&c)?.sw {
        StatusWord::Ok => Ok(()),
        sw => Err(pin_status(sw)),
    }
}

/// CHANGE PIN `80 5E 01 00 Lc <old> FF <new>` (§5).
pub fn change_pin(tx: &mut Transaction<'_>, old: &Pin, new: &Pin) -> Result<(), AppError> {
    let mut data = Zeroizing::new(old.bcd().to_vec());
    data.push(0xFF);
    data.extend_from_slice(new.bcd());
    let c = apdu(0x80, 0x5E, 0x01, 0x00, &data, 0)?.sensitive();
    match tx.transmit(&c)?.sw {
        StatusWord::Ok => Ok(()),
        sw => Err(pin_status(sw)),
    }
}

/// VERIFY with the PIN typed on the reader's keypad (card profile 1.1 §1: the pad fills
/// the fixed 6-byte block). `timeout_s` is how long the holder has.
pub fn verify_pin_on_pad(tx: &mut Transaction<'_>, timeout_s: u8) -> Result<(), AppError> {
    match tx.pin_pad(&PadRequest::verify(timeout_s))?.sw {
        StatusWord::Ok => Ok(()),
        sw => Err(pin_status(sw)),
    }
}

/// CHANGE PIN with the current PIN, the new one and its confirmation typed on the
/// reader's keypad (card profile 1.1 §1, Lc = 13).
pub fn change_pin_on_pad(tx: &mut Transaction<'_>, timeout_s: u8) -> Result<(), AppError> {
    match tx.pin_pad(&PadRequest::change(timeout_s))?.sw {
        StatusWord::Ok => Ok(()),
        sw => Err(pin_status(sw)),
    }
}

fn challenge(tx: &mut Transaction<'_>) -> Result<[u8; 8], AppError> {
    let d = tx.transmit_ok(&apdu(0x00, 0x84, 0, 0, &[], 8)?)?;
    d.try_into()
        .map_err(|_| AppError::Card(StatusWord::WrongLength))
}

/// Send a line-protected command (§5): GET CHALLENGE, MAC from the provider.
fn protected(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
    purpose: KeyPurpose,
    header: [u8; 4],
    data: &[u8],
    sensitive: bool,
) -> Result<StatusWord, AppError> {
    if !keys.supports(purpose) {
        return Err(AppError::KeyUnavailable(purpose.name()));
    }
    let ch = challenge(tx)?;
    let mac = keys
        .line_mac(purpose, card_id, &ch, header, data)
        .map_err(AppError::Key)?;
    let mut body = Zeroizing::new(data.to_vec());
    body.extend_from_slice(&mac);
    let mut c = apdu(header[0], header[1], header[2], header[3], &body, 0)?;
    if sensitive {
        c = c.sensitive();
    }
    Ok(tx.transmit(&c)?.sw)
}

fn expect_ok(sw: StatusWord) -> Result<(), AppError> {
    match sw {
        StatusWord::Ok => Ok(()),
        StatusWord::MacInvalid => Err(AppError::MacMismatch("card refused the line MAC")),
        StatusWord::ConditionsNotSatisfied => Err(AppError::Blocked),
        StatusWord::SecurityStatusNotSatisfied => Err(AppError::SecurityNotSatisfied),
        sw => Err(AppError::Card(sw)),
    }
}

/// RELOAD PIN (issuing office): new PIN, counter back to 3; MAC with Kc[PIN].
pub fn reload_pin(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
    new: &Pin,
) -> Result<(), AppError> {
    expect_ok(protected(
        tx,
        keys,
        card_id,
        KeyPurpose::Pin,
        [0x84, 0x5E, 0, 0],
        new.bcd(),
        true,
    )?)
}

/// APPLICATION BLOCK, MAC with Kc[MAINT].
pub fn block_application(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
) -> Result<(), AppError> {
    expect_ok(protected(
        tx,
        keys,
        card_id,
        KeyPurpose::Maint,
        [0x84, 0x1E, 0, 0],
        &[],
        false,
    )?)
}

/// APPLICATION UNBLOCK, MAC with Kc[MAINT].
pub fn unblock_application(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
) -> Result<(), AppError> {
    expect_ok(protected(
        tx,
        keys,
        card_id,
        KeyPurpose::Maint,
        [0x84, 0x18, 0, 0],
        &[],
        false,
    )?)
}

/// UPDATE RECORD of the currently selected EF with a `tag ‖ len ‖ value` record.
pub fn update_record(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
    tag: u8,
    value: &[u8],
) -> Result<(), AppError> {
    let len =
        u8::try_from(value.len()).map_err(|_| AppError::BadInput("record too long".into()))?;
    let mut tlv = vec![tag, len];
    tlv.extend_from_slice(value);
    expect_ok(protected(
        tx,
        keys,
        card_id,
        KeyPurpose::Maint,
        [0x04, 0xDC, tag, 0],
        &tlv,
        false,
    )?)
}

/// INTERNAL AUTHENTICATE with a fresh random: is this card genuine? (§5)
pub fn internal_authenticate(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
) -> Result<bool, AppError> {
    let r: [u8; 8] = rand::random();
    let resp = tx.transmit(&apdu(0x00, 0x88, 0x00, KeyPurpose::Int.id(), &r, 16)?)?;
    match resp.sw {
        StatusWord::Ok => keys
            .verify_internal_auth(card_id, &r, &resp.data)
            .map_err(AppError::Key),
        StatusWord::ConditionsNotSatisfied => Err(AppError::Blocked),
        sw => Err(AppError::Card(sw)),
    }
}

/// EXTERNAL AUTHENTICATE: the terminal proves itself (§5).
pub fn external_authenticate(
    tx: &mut Transaction<'_>,
    keys: &mut dyn KeyProvider,
    card_id: &CardId,
) -> Result<(), AppError> {
    let ch = challenge(tx)?;
    let c = keys
        .external_auth_cryptogram(card_id, &ch)
        .map_err(AppError::Key)?;
    match tx
        .transmit(&apdu(0x00, 0x82, 0x00, KeyPurpose::Ext.id(), &c, 0)?)?
        .sw
    {
        StatusWord::Ok => Ok(()),
        StatusWord::AuthenticationFailed => Err(AppError::AuthFailed),
        StatusWord::AuthMethodBlocked => Err(AppError::AuthFailed),
        sw => Err(AppError::Card(sw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_encoding_and_redaction() {
        assert_eq!(Pin::new("123456").unwrap().bcd(), &[0x12, 0x34, 0x56]);
        assert_eq!(Pin::new("12345").unwrap().bcd(), &[0x12, 0x34, 0x5F]);
        assert!(Pin::new("123").is_err());
        assert!(Pin::new("12a456").is_err());
        let e = Pin::new("99").unwrap_err().to_string();
        assert!(!e.contains("99"), "{e}");
        assert_eq!(
            format!("{:?}", Pin::new("123456").unwrap()),
            "Pin(REDACTED)"
        );
    }
}
